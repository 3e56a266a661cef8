"""Parent side of tests/lstm_case_driver.py: run case specs in child processes, restarting after a crash.

``run_cases(specs)`` returns ``{id: result}`` where a result is the driver's dict, or
``{"signal": n, "stderr": ..., "ref": nn.LSTM's outcome or None}`` / ``{"exit": rc, ...}`` for the case during which the child died.
After a crash the remaining cases run in a fresh child, so one crash names exactly one case.
"""
import json
import os
import subprocess
import sys

DRIVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lstm_case_driver.py")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cases(specs, timeout=300):
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    results, todo = {}, list(specs)
    while todo:
        proc = subprocess.run([sys.executable, DRIVER], input=json.dumps(todo), capture_output=True,
                              text=True, env=env, cwd=ROOT, timeout=timeout)
        started, ref = None, None
        for line in proc.stdout.splitlines():
            if line.startswith("START "):
                started, ref = line[6:], None
            elif line.startswith("REF "):
                ref = json.loads(line[4:])
            elif line.startswith("RESULT "):
                r = json.loads(line[7:])
                results[r["id"]] = r
                started = None
        done = set(results)
        if proc.returncode == 0 and started is None:
            break
        if started is None:         # died between cases (should not happen): blame the next one
            rest = [s for s in todo if s["id"] not in done]
            started = rest[0]["id"] if rest else "(after the last case)"
        key = "signal" if proc.returncode < 0 else "exit"
        results[started] = {"id": started, key: abs(proc.returncode), "stderr": proc.stderr[-1500:], "ref": ref}
        todo = [s for s in todo if s["id"] not in results]
    return results
