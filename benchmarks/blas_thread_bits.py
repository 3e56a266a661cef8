"""Whether torch's two CPU GEMMs give the same bits at 1 and 2 threads, shape by shape, and what
each costs: the measurement behind ``lstm_fast/cpu/matmul.py``'s routing (on CPUs without AVX-512
every float32 product goes to oneDNN, since MKL's small products changed bits with the thread count
on the AMD EPYC measured).

    python benchmarks/blas_thread_bits.py --out benchmarks/results/blas-thread-bits-<machine>.json

For each (m, k, n) with m*k*n <= 3e8 over m in {1, 3, 7, 32, 132, 1024}, k in {3, 33, 256, 1120,
35000}, n in {3, 33, 132, 1024}: ``x (m, k) @ w (n, k)^T`` by MKL (``x @ w.t()``) and by oneDNN
(``torch.ops.mkldnn._linear_pointwise``, the op the CPU implementation calls), each at 1 and 2
threads on the same fresh random operands; ``thread_invariant`` is bitwise equality of the two
results. The time is the 2-thread call's, median and IQR over interleaved rounds.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from lstm_fast.d2l.bench import device_slug, environment, quartiles, write_json  # noqa: E402

MS, KS, NS = (1, 3, 7, 32, 132, 1024), (3, 33, 256, 1120, 35000), (3, 33, 132, 1024)
MAX_MACS = 3e8


def _onednn(x, w):
    return torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")


def _mkl(x, w):
    return x @ w.t()


LIBRARIES = {"mkl": _mkl, "onednn": _onednn}


def measure(rounds, shapes):
    rows = []
    for m, k, n in shapes:
        x, w = torch.randn(m, k), torch.randn(n, k)
        for name, f in LIBRARIES.items():
            outs = {}
            for threads in (1, 2):
                torch.set_num_threads(threads)
                outs[threads] = f(x, w)
            torch.set_num_threads(2)
            reps = max(1, min(200, int(2e7 / (m * k * n))))
            f(x, w)
            seconds = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                for _ in range(reps):
                    f(x, w)
                seconds.append((time.perf_counter() - t0) / reps)
            q1, med, q3 = quartiles(seconds)
            rows.append({"m": m, "k": k, "n": n, "library": name, "threads": 2,
                         "thread_invariant": bool(torch.equal(outs[1], outs[2])),
                         "seconds": med, "q1_seconds": q1, "q3_seconds": q3, "rounds": rounds})
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tiny", action="store_true", help="three shapes, to check the script")
    ap.add_argument("--out", help="JSON file (default: benchmarks/results/blas-thread-bits-<machine>.json)")
    a = ap.parse_args(argv)
    shapes = [(m, k, n) for m in MS for k in KS for n in NS if m * k * n <= MAX_MACS]
    if a.tiny:
        shapes = [(7, 33, 132), (1, 3, 3), (32, 256, 1024)]
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    env = environment("cpu")
    env["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    try:
        rows = measure(a.rounds, shapes)
    finally:
        torch.set_num_threads(threads)
    out = Path(a.out) if a.out else ROOT / "benchmarks" / "results" / f"blas-thread-bits-{device_slug(env, 'cpu')}.json"
    write_json(out, env, rows, {"kind": "blas-thread-bits"})
    for name in LIBRARIES:
        mine = [r for r in rows if r["library"] == name]
        bad = [(r["m"], r["k"], r["n"]) for r in mine if not r["thread_invariant"]]
        print(f"{name}: {len(mine) - len(bad)} of {len(mine)} shapes thread-invariant; differ at {bad}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
