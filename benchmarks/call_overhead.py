"""What a plain one-step call of FusedLSTM costs outside its kernel (issue 20 item 2: at most 10 us).

    flock /tmp/lstm-bench.lock python benchmarks/call_overhead.py --out benchmarks/results/call-overhead-cpu.json
    python benchmarks/call_overhead.py --smoke --out /tmp/call-overhead.json    # tiny, 1 round, seconds

The call: ``FusedLSTM(H, H)(x, (h, c))`` at B=1, T=1 (one generation / streaming step), D = H, float32,
H in 256, 512, 1024, at 1 and 2 torch threads, in four modes: ``no_grad``, ``inference_mode``,
``grad`` (grad enabled, the parameters requiring grad, x and the state not: the graph of each
call is built, then freed as its outputs are dropped) and ``autocast`` (``no_grad`` under CPU
autocast to bf16: float32 parameters and states in, bf16 outputs, the kernel alone on x and h_0
rounded to bf16 as autocast rounds them). Inputs are the same tensors every call (the state is
not fed back), so the kernel alone can run on exactly them.

Blocks, timed in the same interleaved rounds (``time_interleaved`` of benchmarks/peers.py: the
starting block rotating per round, each block about ``--round-seconds`` of calls, the mode's
context entered once per block):

* ``module``: the module call (``nn.Module.__call__``: hooks, then FusedLSTM.forward, which runs
  the plain call on :mod:`lstm_fast.ops.fast_path`);
* ``kernel``: the same C entry point the call reaches (``_small_batch_kernels.forward``) on the
  same input tensors and weights, with output buffers allocated once, its pointer arguments built
  once: no checks, no allocation, no autograd. In ``grad`` it is the saving variant (gates and cells
  written for the backward), as the module call in grad mode runs it;
* ``general``: the module call with the fast path switched off (``lstm_fast.module.plain_forward``
  replaced by one that declines): the general path, what the call cost before.

A row per (H, threads, mode): the median seconds per call of each block over the rounds with q1
and q3 (``seconds``, ``q1_seconds``, ``q3_seconds``: the module call's), and ``outside_seconds``: the module call minus the kernel, the median (q1, q3) of the
per-round differences (each round's two blocks ran back to back). ``--clock thread`` times with
the calling thread's CPU time instead of the wall clock (a busy machine's descheduled time left
out; meaningful at 1 thread only). Before timing, the module call
and the kernel call are checked to give bitwise the same output and state, and the call to take
the fast path and the small-batch kernels (``fast_path``, ``implementation``).
"""
import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import lstm_fast.module as module_mod  # noqa: E402
from lstm_fast import FusedLSTM  # noqa: E402
from lstm_fast.cpu import small_batch  # noqa: E402
from lstm_fast.d2l.bench import environment, git_commit, quartiles  # noqa: E402
from lstm_fast.d2l.files import atomic_write_bytes  # noqa: E402
from lstm_fast.ops import fast_path  # noqa: E402
from lstm_fast.ops.plan import plan_layer  # noqa: E402
from peers import time_interleaved  # noqa: E402

HS = (256, 512, 1024)
SMOKE_HS = (16,)
@contextlib.contextmanager
def _autocast_no_grad():
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        yield


MODES = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode, "grad": torch.enable_grad,
         "autocast": _autocast_no_grad}
SEED = 20


class Case:
    """One layer and its fixed inputs; the kernel's arguments built once on them."""

    def __init__(self, H, mode):
        torch.manual_seed(SEED)
        self.m = FusedLSTM(H, H)
        self.mode = mode
        self.x = torch.randn(1, 1, H)
        self.h = torch.randn(1, 1, H)
        self.c = torch.randn(1, 1, H)
        self.Y, self.hn, self.cn = torch.empty(1, 1, H), torch.empty(1, 1, H), torch.empty(1, 1, H)
        self.saved = torch.empty(5 * H)          # gates (4H) and cells (H) of the saving variant
        m = self.m
        g = self.saved.data_ptr() if mode == "grad" else None
        # autocast: the kernel alone runs on x and h_0 as autocast rounds them (c_0 as given)
        self.xk, self.hk = ((self.x.bfloat16().float(), self.h.bfloat16().float()) if mode == "autocast"
                            else (self.x, self.h))
        self.args = (self.xk.data_ptr(), m.weight_ih_l0.data_ptr(), m.weight_hh_l0.data_ptr(), m.bias_ih_l0.data_ptr(),
                     m.bias_hh_l0.data_ptr(), self.hk.data_ptr(), self.c.data_ptr(), self.Y.data_ptr(),
                     self.hn.data_ptr(), self.cn.data_ptr(), g, None if g is None else g + 16 * H, None, None,
                     1, 1, H, H, torch.get_num_threads(), None)

    def check(self):
        """The module call takes the fast path onto the small-batch kernels and gives bitwise the
        kernel call's numbers; returns the implementation's name."""
        impl = plan_layer(self.x, self.m.weight_hh_l0, self.m.backend).implementation
        if impl != "cpu_small_batch":
            raise RuntimeError(f"the plan runs this call on {impl}, not the small-batch kernels")
        with MODES[self.mode]():
            before = fast_path.calls
            y, (h, c) = self.m(self.x, (self.h, self.c))
            if fast_path.calls != before + 1:
                raise RuntimeError("the plain call did not take the fast path")
            small_batch._small_batch_kernels.forward(*self.args)
        if self.mode == "grad" and y.grad_fn is None:
            raise RuntimeError("grad mode built no graph")
        for a, b in ((y, self.Y), (h, self.hn), (c, self.cn)):
            if not torch.equal(a.detach(), b.to(a.dtype)):   # autocast: bf16 outputs, rounded to nearest even
                raise RuntimeError("the kernel call alone differs from the module call")
        return impl

    def blocks(self):
        m, x, hx, args, ctx = self.m, self.x, (self.h, self.c), self.args, MODES[self.mode]
        kernel = small_batch._small_batch_kernels.forward

        def module(k):
            with ctx():
                for _ in range(k):
                    m(x, hx)

        def kernel_alone(k):
            with ctx():
                for _ in range(k):
                    kernel(*args)

        def general(k):
            saved = module_mod.plain_forward
            module_mod.plain_forward = lambda *a: None
            try:
                with ctx():
                    for _ in range(k):
                        m(x, hx)
            finally:
                module_mod.plain_forward = saved
        return {"module": module, "kernel": kernel_alone, "general": general}


CLOCKS = {"wall": time.perf_counter, "thread": time.thread_time}


def measure(H, threads, mode, rounds, round_s, log, clock="wall"):
    case = Case(H, mode)
    impl = case.check()
    times = time_interleaved(case.blocks(), rounds, round_s, clock=CLOCKS[clock])
    dtype = "bf16 autocast" if mode == "autocast" else "float32"
    row = {"H": H, "D": H, "B": 1, "T": 1, "dtype": dtype, "threads": threads, "mode": mode,
           "implementation": impl, "fast_path": True, "rounds": rounds}
    for name, values in times.items():
        q1, med, q3 = quartiles(values)
        row[f"{name}_call_seconds"], row[f"{name}_call_q1_seconds"], row[f"{name}_call_q3_seconds"] = med, q1, q3
    # the row's own time (every results file's rows have one): the module call
    row["seconds"], row["q1_seconds"], row["q3_seconds"] = (row["module_call_seconds"], row["module_call_q1_seconds"],
                                                            row["module_call_q3_seconds"])
    diffs = [a - b for a, b in zip(times["module"], times["kernel"])]
    q1, med, q3 = quartiles(diffs)
    row["outside_seconds"], row["outside_q1_seconds"], row["outside_q3_seconds"] = med, q1, q3
    row["general_outside_seconds"] = quartiles([a - b for a, b in zip(times["general"], times["kernel"])])[1]
    log(f"H={H} threads={threads} {mode:14s} module {row['module_call_seconds'] * 1e6:7.1f} us  kernel "
        f"{row['kernel_call_seconds'] * 1e6:7.1f} us  outside {med * 1e6:5.1f} us (IQR {q1 * 1e6:.1f}-{q3 * 1e6:.1f})"
        f"  general path {row['general_call_seconds'] * 1e6:7.1f} us")
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="H=16, 1 round, 1 thread (seconds)")
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--round-seconds", type=float, default=0.02, help="time per block per round")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    ap.add_argument("--clock", default="wall", choices=list(CLOCKS),
                    help="wall: time.perf_counter (default); thread: time.thread_time, the calling thread's CPU "
                         "time (leaves out time descheduled on a busy machine; at 1 thread only meaningful)")
    ap.add_argument("--out", default="benchmarks/results/call-overhead-cpu.json", help="the JSON (written atomically)")
    a = ap.parse_args(argv)
    if a.smoke:
        a.rounds, a.round_seconds = 1, 0.001
        if a.threads == [1, 2]:
            a.threads = [1]
    if small_batch._small_batch_kernels is None:
        print("the small-batch kernels are not available here (no AVX-512 or no C build): nothing to measure")
        return 1
    log = lambda s: print(s, flush=True)  # noqa: E731
    env = environment("cpu")
    env["threads"] = " and ".join(map(str, a.threads))
    doc = {"kind": "call-overhead", "environment": env,
           "command": " ".join(["python", "benchmarks/call_overhead.py"] + list(sys.argv[1:] if argv is None else argv)),
           "commit": git_commit(), "smoke": a.smoke, "rounds": a.rounds, "round_seconds": a.round_seconds, "clock": a.clock,
           "target_outside_seconds": 10e-6, "rows": []}
    t0 = time.perf_counter()
    threads0 = torch.get_num_threads()
    try:
        for threads in a.threads:
            torch.set_num_threads(threads)
            for H in SMOKE_HS if a.smoke else HS:
                for mode in a.modes:
                    doc["rows"].append(measure(H, threads, mode, a.rounds, a.round_seconds, log, a.clock))
    finally:
        torch.set_num_threads(threads0)
    doc["seconds"] = time.perf_counter() - t0
    env["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(Path(a.out), (json.dumps(doc, indent=1) + "\n").encode())
    log(f"wrote {a.out} ({len(doc['rows'])} rows, {doc['seconds']:.0f} s; load {env['load_average']} -> "
        f"{env['load_average_end']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
