"""The GPU check in one command: the GPU tests, then FusedLSTM against cuDNN (``nn.LSTM``) on the
benchmark grid, written to ``<out>/<gpu>.json`` after every row.

    python benchmarks/gpu_check.py --out DIR            # on a CUDA machine: under 10 minutes in all
    python benchmarks/gpu_check.py --smoke --out DIR    # the same pipeline on the CPU, tiny shapes

Why this shape: device time is scarce and a first run of new kernels can fail in any way, so

* one deadline (``--deadline``, default 570 s) covers the tests and every measurement;
* the JSON is rewritten (atomically) after every row: a kill keeps what was measured;
* the measurements run in a worker process; a sticky CUDA error (an illegal address poisons the
  context) kills only the worker, the failure is recorded against its shape, and a new worker
  goes on with the next shape;
* bf16 before float32, cheapest shapes first, the published shape B16 T1024 D768 H768 first of
  all (cuDNN's 5.19 ms fwd+bwd on an H100 in fp16); after a call slower than ``--slow-call``, an
  implementation/mode/dtype's larger shapes are skipped and listed under "skipped".

Per shape and mode the implementations are timed interleaved over several rounds (CUDA events
around forward and backward separately): nn.LSTM (cuDNN), FusedLSTM as the dispatcher plans it,
and FusedLSTM with each hidden-split step protocol forced ("fused-ll": tagged words, "fused-counter":
the counter barrier), so one run measures every protocol against cuDNN. Each row: implementation,
protocol, path (the dispatcher's forward/backward paths for FusedLSTM, "cudnn" for nn.LSTM),
config, dot precision, median seconds with quartiles, tokens/sec, ratio to cuDNN, peak memory,
forward and backward seconds. The record
holds the GPU, driver, torch/triton/CUDA/cuDNN versions and the TF32 settings.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from lstm_fast.d2l.bench import EXTRA_GPU_SHAPES, GRID, device_slug, environment, git_commit, quartiles  # noqa: E402
from lstm_fast.d2l.files import atomic_write_bytes  # noqa: E402

MODES = ("inference", "training")
IMPLS = ("torch", "fused", "fused-ll", "fused-counter")
# FusedLSTM as the dispatcher plans it, and with each hidden-split step protocol forced (where the
# plan keeps W_hh on chip; "counter" is the barrier the "ll" words replace): all timed in one run
PROTOCOL_OF = {"fused": None, "fused-ll": "ll", "fused-counter": "counter"}


def gpu_environment(device):
    env = environment(device)
    if device == "cuda":
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            env["driver"] = None
        env["sm_count"] = torch.cuda.get_device_properties(0).multi_processor_count
        from lstm_fast.kernels.lstm_config import cudnn_rnn_allows_tf32
        env["tf32"] = {"cudnn_rnn_allows_tf32": cudnn_rnn_allows_tf32(),
                       "cudnn_rnn_fp32_precision": getattr(getattr(torch.backends.cudnn, "rnn", None), "fp32_precision", None),
                       "matmul_fp32_precision": getattr(torch.backends.cuda.matmul, "fp32_precision", None)}
    return env


def cases(smoke, dtypes):
    """(dtype, B, T, D, H) in the order they run: bf16 first, the published shape first, then
    cheapest first (the smoke run: float32 only)."""
    shapes = [(2, 3, 4, 8), (1, 2, 3, 5)] if smoke else GRID + EXTRA_GPU_SHAPES
    dtypes = [torch.float32] if smoke else dtypes
    published = [] if smoke else [(16, 1024, 768, 768)]
    rest = sorted((s for s in shapes if s not in published), key=lambda s: (s[0] * s[1] * s[3] * s[3], s))
    return [(d, *s) for d in dtypes for s in published + rest]


def plan_of(B, H, dtype, device):
    """FusedLSTM's forward/backward paths, configs and dot precision at this shape."""
    if device != "cuda":
        return "cpu", {}, "ieee"
    from lstm_fast.kernels.lstm_config import pick_plan
    from lstm_fast.kernels.lstm_fwd import sm_count
    f = pick_plan(B, H, dtype, "cuda", sm_count(torch.device("cuda")))
    b = pick_plan(B, H, dtype, "cuda", sm_count(torch.device("cuda")), direction="bwd")
    return f"{f.path}/{b.path}", {"fwd": f.config.__dict__, "bwd": b.config.__dict__}, f.precision


def _timer(device):
    if device == "cuda":
        def span(fn):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            out = fn()
            b.record()
            return out, (a, b)

        def seconds(ev):
            torch.cuda.synchronize()
            return ev[0].elapsed_time(ev[1]) / 1e3
        return span, seconds

    def span_cpu(fn):
        t0 = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t0
    return span_cpu, lambda s: s


def measure_shape(dtype, B, T, D, H, mode, device, budget_s, rounds=7):
    """Both implementations at one shape and mode, interleaved over rounds; returns the rows."""
    from lstm_fast import FusedLSTM
    from torch import nn
    span, seconds = _timer(device)
    from lstm_fast.kernels import lstm_config
    mods = {"torch": nn.LSTM(D, H, device=device, dtype=dtype)}
    for k in IMPLS[1:]:
        mods[k] = FusedLSTM(D, H, device=device, dtype=dtype)
        mods[k].load_state_dict(mods["torch"].state_dict())
    x = torch.randn(T, B, D, device=device, dtype=dtype, requires_grad=mode == "training")

    def once(k):
        m = mods[k]
        lstm_config.forced_protocol = PROTOCOL_OF.get(k)
        try:
            if mode == "inference":
                with torch.no_grad():
                    _, fwd = span(lambda: m(x))
                return fwd, None
            (y, (h, c)), fwd = span(lambda: m(x))
            _, bwd = span(lambda: torch.autograd.backward((y, h, c), (torch.ones_like(y), torch.ones_like(h),
                                                                       torch.ones_like(c))))
            return fwd, bwd
        finally:
            lstm_config.forced_protocol = None

    times = {k: {"fwd": [], "bwd": [], "peak": 0} for k in mods}
    for k in mods:                # warm-up (Triton compiles, cuDNN plans)
        once(k)
    t_start = time.perf_counter()
    for r in range(rounds):
        order = list(mods)[r % len(mods):] + list(mods)[:r % len(mods)]
        for k in order:
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            fwd, bwd = once(k)
            times[k]["fwd"].append(seconds(fwd))
            times[k]["bwd"].append(seconds(bwd) if bwd is not None else 0.0)
            if device == "cuda":
                times[k]["peak"] = max(times[k]["peak"], torch.cuda.max_memory_allocated())
            x.grad = None
            for p in mods[k].parameters():
                p.grad = None
        if r >= 2 and time.perf_counter() - t_start > budget_s:
            break
    rows = []
    for k in IMPLS:
        lstm_config.forced_protocol = PROTOCOL_OF.get(k)
        try:
            path, config, precision = plan_of(B, H, dtype, device)
        finally:
            lstm_config.forced_protocol = None
        total = [f + b for f, b in zip(times[k]["fwd"], times[k]["bwd"], strict=True)]
        q1, med, q3 = quartiles(total)
        rows.append(dict(implementation=k, device=device, mode=mode, dtype=str(dtype).replace("torch.", ""),
                         B=B, T=T, D=D, H=H, seconds=med, q1_seconds=q1, q3_seconds=q3, tokens_per_sec=B * T / med,
                         repeats=len(total), fwd_seconds=statistics.median(times[k]["fwd"]),
                         bwd_seconds=statistics.median(times[k]["bwd"]), peak_memory_bytes=times[k]["peak"],
                         path="cudnn" if k == "torch" else path, config={} if k == "torch" else config,
                         dot_precision=None if k == "torch" else precision,
                         protocol=None if k == "torch" else PROTOCOL_OF[k] or "dispatcher"))
    for r in rows[1:]:
        r["ratio_to_cudnn"] = rows[0]["seconds"] / r["seconds"]
    return rows


def write_doc(path, doc):
    atomic_write_bytes(path, (json.dumps(doc, indent=1) + "\n").encode())


def worker(a):
    """Measure cases[start:] until the deadline, rewriting the JSON after every row."""
    path = Path(a.json)
    doc = json.loads(path.read_text())
    device = "cpu" if a.smoke else "cuda"
    too_slow = {tuple(s) for s in doc.get("too_slow", [])}
    todo = cases(a.smoke, [getattr(torch, d) for d in a.dtypes.split(",")])
    for i in range(a.start, len(todo)):
        dtype, B, T, D, H = todo[i]
        name = f"{str(dtype).replace('torch.', '')} B{B} T{T} D{D} H{H}"
        doc["next_case"] = i
        write_doc(path, doc)
        for mode in MODES:
            if time.time() > a.deadline_at:
                doc["complete"] = False
                write_doc(path, doc)
                return 0
            if (mode, str(dtype)) in too_slow:
                doc.setdefault("skipped", []).extend(f"{impl} {mode} {name}: a smaller shape took > {a.slow_call} s per call"
                                                     for impl in IMPLS)
                continue
            try:
                rows = measure_shape(dtype, B, T, D, H, mode, device, a.budget)
            except torch.cuda.OutOfMemoryError as e:
                doc.setdefault("failures", []).append(f"{mode} {name}: out of memory ({str(e)[:200]})")
                continue
            doc["rows"].extend(rows)
            if max(r["seconds"] for r in rows) > a.slow_call:
                too_slow.add((mode, str(dtype)))
                doc["too_slow"] = sorted(too_slow)
            write_doc(path, doc)
            if device == "cuda":
                torch.cuda.empty_cache()
    doc["next_case"] = len(todo)
    write_doc(path, doc)
    return 0


def run_gpu_tests(timeout_s):
    """The Triton tests on the device; returns (exit code, summary line)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    try:
        p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "tests/test_triton.py",
                            "tests/test_functional.py"], cwd=ROOT, capture_output=True, text=True, env=env,
                           timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return 124, f"GPU tests stopped at {timeout_s:.0f} s"
    lines = [line for line in p.stdout.splitlines() if line.strip()]
    print("\n".join(lines[-12:])[-2500:])
    return p.returncode, (lines[-1] if lines else "")


def summary(doc):
    """At most ~8,000 characters: one line per shape, training and inference ratios."""
    by = {}
    for r in doc["rows"]:
        if r["implementation"] != "torch":
            key = (r["dtype"], r["B"], r["T"], r["D"], r["H"])
            by.setdefault(key, {})[(r["mode"], r["implementation"])] = r
    lines = [f"{'dtype':9} {'B':>4} {'T':>5} {'D':>5} {'H':>5}  train x (plan/ll/counter)  infer x (plan/ll/counter)  path"]
    for (d, B, T, D, H), m in by.items():
        fmt = lambda mode: "/".join(f"{m[(mode, k)]['ratio_to_cudnn']:.2f}" if (mode, k) in m else "-"  # noqa: E731
                                    for k in IMPLS[1:])
        any_row = next(iter(m.values()))
        lines.append(f"{d:9} {B:4d} {T:5d} {D:5d} {H:5d}  {fmt('training'):>25}  {fmt('inference'):>25}  {any_row['path']}")
    for k in ("failures", "skipped"):
        if doc.get(k):
            lines.append(f"{k}: {len(doc[k])}: " + "; ".join(doc[k][:8]))
    return "\n".join(lines)[:7800]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder for <device>.json")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU: checks the pipeline only")
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--dtypes", default="bfloat16,float32")
    ap.add_argument("--budget", type=float, default=0.4, help="seconds of rounds per shape and mode")
    ap.add_argument("--deadline", type=float, default=570, help="seconds for everything, tests included")
    ap.add_argument("--slow-call", type=float, default=5.0,
                    help="after a call this slow, skip that mode/dtype's larger shapes")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json", help=argparse.SUPPRESS)
    ap.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--deadline-at", type=float, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        return worker(a)
    deadline_at = time.time() + a.deadline
    if not a.smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; nothing to measure (use --smoke to exercise the script on the CPU)")
        return 0
    device = "cpu" if a.smoke else "cuda"
    env = gpu_environment(device)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{device_slug(env, device)}.json"
    doc = {"environment": env, "command": "python benchmarks/gpu_check.py " + " ".join(argv or sys.argv[1:]),
           "commit": git_commit(ROOT), "source": "benchmarks/gpu_check.py", "complete": True, "rows": []}
    if device == "cuda" and not a.skip_tests:
        code, line = run_gpu_tests(max(30.0, min(240.0, (deadline_at - time.time()) * 0.4)))
        doc["gpu_tests"] = {"exit_code": code, "summary": line}
    write_doc(path, doc)
    n = len(cases(a.smoke, [getattr(torch, d) for d in a.dtypes.split(",")]))
    start = 0
    while start < n and time.time() < deadline_at:
        cmd = [sys.executable, __file__, "--worker", "--json", str(path), "--start", str(start), "--deadline-at",
               str(deadline_at), "--dtypes", a.dtypes, "--budget", str(a.budget), "--slow-call", str(a.slow_call)]
        p = subprocess.run(cmd + (["--smoke"] if a.smoke else []), capture_output=True, text=True,
                           timeout=max(1.0, deadline_at - time.time() + 30))
        doc = json.loads(path.read_text())
        if p.returncode == 0:
            break
        failed = doc.get("next_case", start)        # the worker died on this case: record it, go on
        doc.setdefault("failures", []).append(f"case {failed}: worker exited {p.returncode}: {p.stderr[-600:]}")
        write_doc(path, doc)
        start = failed + 1
    if time.time() >= deadline_at:
        doc = json.loads(path.read_text())
        doc["complete"] = False
        write_doc(path, doc)
    doc = json.loads(path.read_text())
    print(summary(doc))
    print(f"gpu_check: wrote {path}{'' if doc['complete'] else ' (deadline reached: incomplete)'}")
    return 0 if doc.get("gpu_tests", {}).get("exit_code", 0) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
