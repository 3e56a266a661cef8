"""CPU bfloat16: FusedLSTM against nn.LSTM under the same ``torch.autocast("cpu", bfloat16)``,
float32 alongside (it must not regress), and ``lstm-fast train --precision bf16`` against the
float32 run (the bf16 speed goals: >= 1.5x nn.LSTM at the reference shapes, >= 1.2x everywhere,
training >= 1.5x the float32 run).

    flock /tmp/lstm-bench.lock python benchmarks/cpu_bf16.py --json benchmarks/results/cpu-bf16.json

Layer rows: for each shape of ``--shapes`` (cpu: d2l B32 T35 D28 H256 and B64 T100 D128 H512) and
mode (inference: no grad; training: forward plus backward of every gradient), the four
implementations (nn.LSTM and FusedLSTM, each in float32 and under bf16 autocast) are timed in the
same process, interleaved: every round runs a few calls of each in turn, the order rotating. A row
holds the median seconds per call over the rounds and the interquartile range (q1, q3); its dtype
is ``float32`` or ``autocast-bf16``, so ``benchmarks/readme_table.py`` puts each FusedLSTM row
next to nn.LSTM's in the same precision.

Train rows: ``lstm-fast train`` subprocesses, fp32 and bf16 alternating for ``--train-rounds``
rounds of ``--train-epochs`` epochs (tokens/sec as the command reports it), then one run of the
full default recipe (500 epochs) in bf16 for the final perplexity (``--full-epochs 0`` skips it).
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lstm_fast import FusedLSTM  # noqa: E402
from lstm_fast.d2l.bench import environment, git_commit, quartiles, shape_set  # noqa: E402
from lstm_fast.cpu import bf16_sequence  # noqa: E402
from lstm_fast.d2l.files import atomic_write_bytes  # noqa: E402

IMPLS = [("torch", "float32"), ("fused", "float32"), ("torch", "autocast-bf16"), ("fused", "autocast-bf16")]


def make_call(impl, precision, B, T, D, H, mode):
    """A no-argument function running one call of the layer (fresh random input and weights)."""
    layer = (nn.LSTM if impl == "torch" else FusedLSTM)(D, H)
    x = torch.randn(T, B, D, requires_grad=mode == "training")
    ac = precision == "autocast-bf16"
    grads = None

    def call():
        nonlocal grads
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=ac):
            if mode == "inference":
                with torch.no_grad():
                    layer(x)
                return
            y, (h, c) = layer(x)
        if grads is None:
            grads = [torch.randn_like(t) for t in (y, h, c)]
        torch.autograd.backward([y, h, c], grads)

    return call


def time_interleaved(calls, rounds, round_s):
    """name -> per-round seconds per call; each round runs k calls of each (k sized so a round of
    one implementation takes about ``round_s``), the starting implementation rotating."""
    names = list(calls)
    for name in names:
        calls[name]()
        calls[name]()
    ks = {}
    for name in names:
        t0 = time.perf_counter()
        calls[name]()
        ks[name] = max(1, int(round_s / max(time.perf_counter() - t0, 1e-6)))
    out = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            for _ in range(ks[name]):
                calls[name]()
            out[name].append((time.perf_counter() - t0) / ks[name])
    return out


def layer_rows(shapes, rounds, round_s, log):
    rows = []
    for (B, T, D, H) in shapes:
        for mode in ("inference", "training"):
            calls = {(i, p): make_call(i, p, B, T, D, H, mode) for i, p in IMPLS}
            times = time_interleaved(calls, rounds, round_s)
            for (impl, prec), ts in times.items():
                q1, med, q3 = quartiles(ts)
                rows.append({"implementation": impl, "device": "cpu", "mode": mode, "dtype": prec, "B": B, "T": T,
                             "D": D, "H": H, "seconds": med, "tokens_per_sec": B * T / med, "repeats": len(ts),
                             "q1_seconds": q1, "q3_seconds": q3})
            by = {(r["implementation"], r["dtype"]): r for r in rows[-4:]}
            log(f"B{B} T{T} D{D} H{H} {mode}: " + ", ".join(
                f"{p} fused/torch {by[('torch', p)]['seconds'] / by[('fused', p)]['seconds']:.2f}x"
                for p in ("float32", "autocast-bf16")))
    return rows


def path_settings():
    """The environment settings that change either side's path: ours (LSTM_FAST_*) and oneDNN's
    (ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 takes AMX away from nn.LSTM too: an AVX512-BF16-only
    CPU's instruction set), as NAME=value words for a reproducible command line."""
    return [f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith(("LSTM_FAST_", "ONEDNN_", "DNNL_"))]


def train_once(precision, epochs, out_dir, threads=None):
    """One ``lstm-fast train`` subprocess (``threads``: its OMP_NUM_THREADS, or inherited);
    returns (tokens/sec, perplexity, seconds, output lines)."""
    cmd = [sys.executable, "-m", "lstm_fast", "train", "--precision", precision, "--epochs", str(epochs),
           "--no-progress", "--out", str(out_dir)]
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True, env=env)
    wall = time.perf_counter() - t0
    m = re.search(r"perplexity ([0-9.]+), ([0-9.]+) tokens/sec", p.stdout)
    if not m:
        raise RuntimeError(f"unexpected train output: {p.stdout[-500:]} {p.stderr[-500:]}")
    return float(m.group(2)), float(m.group(1)), wall, p.stdout.strip().splitlines()


def train_rows(rounds, epochs, full_epochs, log, threads=None):
    rows = {"fp32": [], "bf16": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for prec in (("fp32", "bf16") if r % 2 == 0 else ("bf16", "fp32")):
                tps, ppl, wall, _ = train_once(prec, epochs, Path(tmp) / f"{prec}{r}", threads)
                rows[prec].append(tps)
                log(f"train {prec} round {r}: {tps:,.0f} tokens/sec, perplexity {ppl:.2f}, {wall:.1f} s")
        out = {"epochs_per_round": epochs, "rounds": rounds, "threads": threads or "default"}
        for prec, v in rows.items():
            q1, med, q3 = quartiles(v)
            out[prec] = {"tokens_per_sec_median": med, "q1": q1, "q3": q3, "per_round": v}
        out["bf16_over_fp32"] = out["bf16"]["tokens_per_sec_median"] / out["fp32"]["tokens_per_sec_median"]
        log(f"train bf16/fp32: {out['bf16_over_fp32']:.2f}x")
        if full_epochs:
            tps, ppl, wall, lines = train_once("bf16", full_epochs, Path(tmp) / "full", threads)
            prefix = " ".join(path_settings() + ([f"OMP_NUM_THREADS={threads}"] if threads else []) + [""])
            out["full_run"] = {"command": f"{prefix}lstm-fast train --precision bf16 --epochs {full_epochs}",
                               "epochs": full_epochs, "perplexity": ppl, "tokens_per_sec": tps, "seconds": wall,
                               "output": lines}
            log(f"full bf16 run: perplexity {ppl:.2f}, {tps:,.0f} tokens/sec, {wall:.1f} s")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="cpu", choices=("tiny", "d2l", "cpu"))
    ap.add_argument("--rounds", type=int, default=31)
    ap.add_argument("--round-seconds", type=float, default=0.02,
                    help="time per implementation per round (small: fine interleaving on a noisy machine)")
    ap.add_argument("--train-rounds", type=int, default=2)
    ap.add_argument("--train-epochs", type=int, default=50)
    ap.add_argument("--full-epochs", type=int, default=500, help="0: skip the full bf16 run")
    ap.add_argument("--threads", type=int, help="torch threads for the layer rows and the train runs "
                    "(their OMP_NUM_THREADS); default: torch's")
    ap.add_argument("--json", help="write the results here (atomically)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    log = lambda s: print(s, flush=True)  # noqa: E731
    env = environment("cpu")
    env.setdefault("load_average", list(os.getloadavg()))   # a shared machine: say how busy it was
    env.setdefault("cores", os.cpu_count())
    settings = path_settings()
    env.update(native_bf16=bf16_sequence.use_native(), amx=bf16_sequence.use_amx(),
               settings=dict(w.split("=", 1) for w in settings),
               vdpbf16ps_gain=bf16_sequence.vdpbf16ps_gain() if bf16_sequence.cpu_supported() else None,
               cpu_flags=sorted(f for f in open("/proc/cpuinfo").read().split("flags", 1)[1].split("\n", 1)[0].split()
                                if f.startswith(("avx512_bf16", "amx"))) if os.path.exists("/proc/cpuinfo") else [])
    command = settings + ["python", "benchmarks/cpu_bf16.py"] + (argv or sys.argv[1:])
    doc = {"kind": "cpu-bf16", "environment": env, "command": " ".join(command),
           "commit": git_commit(), "rows": layer_rows(shape_set(a.shapes), a.rounds, a.round_seconds, log)}
    if a.train_rounds:
        doc["train"] = train_rows(a.train_rounds, a.train_epochs, a.full_epochs, log, a.threads)
    env["load_average_end"] = list(os.getloadavg())
    if a.json:
        atomic_write_bytes(Path(a.json), (json.dumps(doc, indent=1) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
