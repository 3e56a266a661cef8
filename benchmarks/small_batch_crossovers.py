"""Where the small-batch CPU kernels beat the whole-sequence ones: the measurements behind
``lstm_fast.cpu.small_batch.CROSSOVERS``.

For every (precision, threads, H, B, T) it times a FusedLSTM layer (D = H, one layer) two ways,
interleaved in one process (the starting one rotating each round): with the small-batch kernels
(``LSTM_FAST_CPU_SMALL_BATCH=1``) and without (``=0``: the whole-sequence float32 kernels, or under
CPU autocast bf16 the route the plan takes then: the native bf16 kernels where this CPU has them,
which convert the float32 weights on every call). Inference is a call under ``torch.no_grad``;
training (B <= 4) is forward plus backward of all outputs. Both arms pay the same module
overhead, so the per-call difference is the implementations'. Precisions: ``float32`` and
``autocast-bf16`` (float32 parameters under ``torch.autocast("cpu", torch.bfloat16)``, the rule 1a
route of lstm_fast/ops/plan.py against the bf16 one).

``--competitor``: the 2-thread T > 1 rows are measured once more with a busy process
(``python -c "while True: pass"``) on the machine, the case where the small-batch kernels'
per-step barrier waits on a descheduled thread; the crossovers take T > 1 at 2 threads only
where the small-batch kernels win that too.

Each shape's measurement holds ``/tmp/lstm-bench.lock`` (flock), so benchmarks of other checkouts
on a shared machine do not overlap it; the load average is recorded per row.

  python benchmarks/small_batch_crossovers.py            # the full grid (~20 min on a quiet machine)
  python benchmarks/small_batch_crossovers.py --smoke    # tiny, seconds
  python benchmarks/small_batch_crossovers.py --table    # the CROSSOVERS table from the JSON
"""
import argparse
import contextlib
import fcntl
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lstm_fast import FusedLSTM  # noqa: E402
from lstm_fast.cpu import small_batch  # noqa: E402
from lstm_fast.d2l.bench import COMPETITOR, busy_processes, environment, git_commit, quartiles  # noqa: E402
from lstm_fast.d2l.files import atomic_write_bytes  # noqa: E402
from lstm_fast.ops.plan import plan_layer  # noqa: E402

#: One file per kernel ISA (small_batch.ISA): the AVX-512 kernels' and the AVX2 kernels' crossovers
#: are measured on different CPUs, and CROSSOVERS holds both (the AVX2 keys prefixed "avx2-").
OUTS = {"avx512": "benchmarks/results/small-batch-crossovers.json",
        "avx2": "benchmarks/results/small-batch-crossovers-avx2.json"}
OUT = OUTS.get(small_batch.ISA, OUTS["avx512"])
LOCK = "/tmp/lstm-bench.lock"
HS, BS, TS = (256, 512, 1024), (1, 2, 4, 8), (1, 35, 1000)
PRECISIONS = ("float32", "autocast-bf16")
ARMS = {"small_batch": "1", "sequence": "0"}


@contextlib.contextmanager
def bench_lock():
    with open(LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def switch(value):
    old = os.environ.get(small_batch.SWITCH)
    os.environ[small_batch.SWITCH] = value
    try:
        yield
    finally:
        if old is None:
            del os.environ[small_batch.SWITCH]
        else:
            os.environ[small_batch.SWITCH] = old


def call(module, x, hx, precision, mode, upstream):
    """One timed unit: an inference call, or a training forward + backward."""
    ac = precision == "autocast-bf16"
    if mode == "inference":
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=ac):
            module(x, hx)
        return
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=ac):
        y, (h, c) = module(x, hx)
    torch.autograd.backward([y, h, c], upstream)
    module.zero_grad(set_to_none=True)


def implementation(module, x, precision, value):
    with switch(value), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "autocast-bf16"):
        return plan_layer(x, module.weight_hh_l0, "auto").implementation


def measure(H, B, T, threads, precision, mode, rounds, round_s):
    """Median and quartiles of seconds per unit for each arm, interleaved."""
    torch.manual_seed(H + B + T)
    module = FusedLSTM(H, H)
    x = torch.randn(T, B, H, requires_grad=mode == "training")
    hx = (torch.randn(1, B, H), torch.randn(1, B, H))
    upstream = [torch.randn(T, B, H), torch.randn(1, B, H), torch.randn(1, B, H)]
    if precision == "autocast-bf16":
        upstream = [u.bfloat16() for u in upstream]
    impls = {arm: implementation(module, x, precision, v) for arm, v in ARMS.items()}
    ks, times = {}, {arm: [] for arm in ARMS}
    for arm, v in ARMS.items():
        with switch(v):
            call(module, x, hx, precision, mode, upstream)   # warm-up
            t0 = time.perf_counter()
            call(module, x, hx, precision, mode, upstream)
            ks[arm] = max(1, int(round_s / max(time.perf_counter() - t0, 1e-7)))
    arms = list(ARMS)
    for r in range(rounds):
        for arm in arms[r % 2:] + arms[:r % 2]:
            with switch(ARMS[arm]):
                t0 = time.perf_counter()
                for _ in range(ks[arm]):
                    call(module, x, hx, precision, mode, upstream)
                times[arm].append((time.perf_counter() - t0) / ks[arm])
    row = {"precision": precision, "mode": mode, "threads": threads, "B": B, "T": T, "D": H, "H": H,
           "load_average": [round(v, 2) for v in os.getloadavg()]}
    for arm in arms:
        q1, med, q3 = quartiles(times[arm])
        row[arm] = {"implementation": impls[arm], "seconds": med, "q1_seconds": q1, "q3_seconds": q3,
                    "calls_per_round": ks[arm], "rounds": rounds}
    row["small_batch_over_sequence"] = row["small_batch"]["seconds"] / row["sequence"]["seconds"]
    return row


def crossovers(doc):
    """The CROSSOVERS table from the rows: (precision key, threads, mode) -> [(max_H, max_B at T=1,
    max_B at T>1)]. Small-batch is chosen for (H, B) at T == 1 where it wins that mode at T = 1 for
    that B and every smaller measured B; at T > 1 where it wins that mode at every measured T > 1
    and, at 2 threads where measured, inference with a competing process (its barrier)."""
    rows, comp = doc["rows"], doc.get("competitor_rows", [])
    prefix = "avx2-" if doc.get("isa") == "avx2" else ""
    keys = {"float32": prefix + "float32", "autocast-bf16": prefix + "autocast-bfloat16"}
    table = {}
    for (prec, threads, mode) in sorted({(r["precision"], r["threads"], r["mode"]) for r in rows}):
        entries = []
        for H in sorted({r["H"] for r in rows}):
            def wins(B, ts):
                sel = [r for r in rows if r["precision"] == prec and r["threads"] == threads and r["H"] == H
                       and r["B"] == B and r["T"] in ts and r["mode"] == mode]
                sel += [r for r in comp if r["precision"] == prec and r["threads"] == threads and r["H"] == H
                        and r["T"] in ts and r["T"] > 1]
                return bool(sel) and all(r["small_batch_over_sequence"] < 1 for r in sel)
            bs = sorted({r["B"] for r in rows if r["H"] == H and r["mode"] == mode})
            tseq = sorted({r["T"] for r in rows if r["T"] > 1})

            def max_b(ts):
                best = 0
                for B in bs:
                    if not wins(B, ts):
                        break
                    best = B
                return best
            entries.append((H, max_b([1]), max_b(tseq) if tseq else 0))
        table[(keys[prec], threads, mode)] = entries
    return table


def write(out, doc):
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(Path(out), (json.dumps(doc, indent=1) + "\n").encode())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, 1 round, 1 thread")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--round-seconds", type=float, default=0.05)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    ap.add_argument("--H", type=int, nargs="+", default=list(HS))
    ap.add_argument("--B", type=int, nargs="+", default=list(BS))
    ap.add_argument("--T", type=int, nargs="+", default=list(TS))
    ap.add_argument("--modes", nargs="+", default=["inference", "training"], choices=("inference", "training"))
    ap.add_argument("--competitor", action="store_true", help="also the 2-thread T > 1 B = 1 rows with a busy process")
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--table", action="store_true", help="print the CROSSOVERS table of --out and exit")
    a = ap.parse_args(argv)
    if a.table:
        doc = json.loads(Path(a.out).read_text())
        for k, v in crossovers(doc).items():
            print(f"    {k!r}: {v},")
        return 0
    if a.smoke:
        a.rounds, a.round_seconds, a.threads, a.H, a.B, a.T = 1, 0.001, [1], [16], [1, 2], [1, 3]
    env = environment("cpu")
    env["threads"] = " and ".join(map(str, a.threads))
    doc = {"kind": "small-batch-crossovers", "environment": env,
           "command": " ".join(["python", "benchmarks/small_batch_crossovers.py"] + list(sys.argv[1:] if argv is None else argv)),
           "commit": git_commit(), "isa": small_batch.ISA, "smoke": a.smoke, "rounds": a.rounds, "round_seconds": a.round_seconds,
           "rows": [], "competitor_rows": [], "complete": False}
    before = torch.get_num_threads()
    t_start = time.perf_counter()
    try:
        for threads in a.threads:
            torch.set_num_threads(threads)
            for precision in a.precisions:
                for H in a.H:
                    for T in a.T:
                        for B in a.B:
                            for mode in a.modes:
                                if mode == "training" and B > 4:
                                    continue
                                with bench_lock():
                                    row = measure(H, B, T, threads, precision, mode, a.rounds, a.round_seconds)
                                doc["rows"].append(row)
                                write(a.out, doc)   # after every row: a long run interrupted keeps its rows
                                print(f"{precision} {mode} {threads}t H{H} B{B} T{T}: small-batch "
                                      f"{row['small_batch']['seconds'] * 1e6:.0f} us, sequence "
                                      f"{row['sequence']['seconds'] * 1e6:.0f} us "
                                      f"({row['sequence']['implementation']}): x{row['small_batch_over_sequence']:.2f} "
                                      f"load {row['load_average'][0]}", flush=True)
            if a.competitor and threads == 2:
                for precision in a.precisions:
                    for H in a.H:
                        for T in [t for t in a.T if t > 1][:1]:
                            with bench_lock(), busy_processes(1):
                                row = measure(H, 1, T, threads, precision, "inference", a.rounds, a.round_seconds)
                            row["competitor"] = COMPETITOR
                            doc["competitor_rows"].append(row)
                            print(f"competitor {precision} 2t H{H} B1 T{T}: x{row['small_batch_over_sequence']:.2f}",
                                  flush=True)
    finally:
        torch.set_num_threads(before)
    doc["seconds"] = time.perf_counter() - t_start
    env["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    doc["complete"] = True
    write(a.out, doc)
    print(f"wrote {a.out} ({len(doc['rows'])} rows, {doc['seconds']:.0f} s)")
    for k, v in crossovers(doc).items():
        print(f"    {k!r}: {v},")
    return 0


if __name__ == "__main__":
    sys.exit(main())
