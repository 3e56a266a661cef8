"""The GPU check in one command: run the GPU tests, then measure FusedLSTM against cuDNN
(``nn.LSTM``) on the benchmark grid, and write ``benchmarks/results/<gpu>.json``.

    python benchmarks/gpu_check.py                  # on a CUDA machine
    python benchmarks/gpu_check.py --smoke --out /tmp/x   # the same pipeline on the CPU, tiny

Grid: B in {1, 8, 32, 128, 512} x H in {256, 512, 1024} x T in {35, 512}, D = H, plus the d2l
shape (B32 T35 D28 H256) and B16 T1024 D768 H768 (a published cuDNN figure: 5.19 ms fwd+bwd in
fp16 on an H100). Modes: inference and training (forward + backward of every gradient). dtypes:
float32 (tf32 as cuDNN uses it by default) and float16.

Device time is scarce, so shapes run cheapest first (by B*T*H*H); once one call of an
implementation/mode/dtype takes longer than ``--slow-call`` seconds, its larger shapes are skipped
and listed under "skipped"; a total time limit stops the grid early and marks the file
incomplete rather than losing what was measured.
"""
import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from lstm_fast.bench import EXTRA_GPU_SHAPES, GRID, MODES, device_slug, environment, format_table, measure, write_json  # noqa: E402


def run_gpu_tests():
    """The Triton tests on the device (skipped parts say so); returns (exit code, summary line)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "tests/test_triton.py", "tests/test_module.py", "tests/test_functional.py"],
                       cwd=ROOT, capture_output=True, text=True, env=env)
    lines = [line for line in p.stdout.splitlines() if line.strip()]
    print("\n".join(lines[-25:]))
    return p.returncode, (lines[-1] if lines else "")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder for <device>.json")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU: checks the script, measures nothing useful")
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--dtypes", default="float32,float16")
    ap.add_argument("--budget", type=float, default=0.5, help="seconds of repeats per measurement")
    ap.add_argument("--time-limit", type=float, default=480, help="stop measuring after this many seconds")
    ap.add_argument("--slow-call", type=float, default=5.0,
                    help="after a call this slow, skip that implementation/mode/dtype's larger shapes")
    a = ap.parse_args(argv)

    if a.smoke:
        device, shapes, dtypes = "cpu", [(2, 3, 4, 8), (1, 2, 3, 5)], [torch.float32]
    elif not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; nothing to measure (use --smoke to exercise the script on the CPU)")
        return 0
    else:
        device, shapes = "cuda", EXTRA_GPU_SHAPES + GRID
        dtypes = [getattr(torch, d) for d in a.dtypes.split(",")]
    env = environment(device)
    extra = {}
    if device == "cuda" and not a.skip_tests:
        code, summary = run_gpu_tests()
        extra["gpu_tests"] = {"exit_code": code, "summary": summary}
    rows, start, complete = [], time.perf_counter(), True
    too_slow = set()   # (impl, mode, dtype) whose larger shapes are skipped
    shapes = sorted(shapes, key=lambda s: (s[0] * s[1] * s[3] * s[3], s))
    for dtype in dtypes:
        for (B, T, D, H) in shapes:
            for mode in MODES:
                for impl in ("torch", "fused"):
                    case = f"{impl} {mode} {str(dtype).replace('torch.', '')} B{B} T{T} D{D} H{H}"
                    if time.perf_counter() - start > a.time_limit:
                        complete = False
                        continue
                    if (impl, mode, dtype) in too_slow:
                        extra.setdefault("skipped", []).append(f"{case}: a smaller shape took > {a.slow_call} s per call")
                        continue
                    try:
                        row = measure(impl, B, T, D, H, mode, device, dtype, budget_s=a.budget)
                        rows.append(row)
                        if row.seconds > a.slow_call:
                            too_slow.add((impl, mode, dtype))
                    except Exception as e:  # one failing shape must not lose the rest
                        print(f"gpu_check: {case} failed: {e}", file=sys.stderr)
                        extra.setdefault("failures", []).append(f"{case}: {e}")
                    if device == "cuda":
                        torch.cuda.empty_cache()
    print(format_table(rows))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{device_slug(env, device)}.json"
    write_json(path, env, rows, {"complete": complete, "source": "benchmarks/gpu_check.py", **extra})
    print(f"gpu_check: wrote {path}{'' if complete else ' (time limit reached: incomplete)'}")
    return 0 if extra.get("gpu_tests", {}).get("exit_code", 0) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
