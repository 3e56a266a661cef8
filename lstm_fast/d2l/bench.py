"""Throughput measurement shared by ``lstm-fast bench``, ``benchmarks/gpu_check.py`` and the
pytest-benchmark suites: tokens/sec (B*T per second) of the d2l scratch LSTM, nn.LSTM (cuDNN on
CUDA, oneDNN on CPU) and FusedLSTM, in inference (no grad) and training (forward + backward of
every gradient) mode.

Timing (:func:`measure_set`): the implementations compared are measured in the same process,
interleaved: after a warm-up call each, every round times a few calls of each implementation in
turn (the order rotating between rounds), so drift and noise on a shared machine fall on all of
them alike. A row reports the median seconds per call over the rounds and the interquartile range
(q1, q3); tokens/sec comes from the median. Calls are timed with ``perf_counter`` around a device
synchronize (CUDA work is asynchronous). Inputs are fresh random tensors, never zeros. Written
results carry the command that wrote them, the git commit and the machine (:func:`write_json`).
"""
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .. import reference
from ..cpu import kernel_isa
from ..module import FusedLSTM
from .files import atomic_write_bytes

IMPLEMENTATIONS = ("scratch", "torch", "fused")
MODES = ("inference", "training")
D2L_SHAPE = (32, 35, 28, 256)                           # B, T, D, H
GRID = [(B, T, H, H) for B in (1, 8, 32, 128, 512) for H in (256, 512, 1024) for T in (35, 512)]
EXTRA_GPU_SHAPES = [D2L_SHAPE, (16, 1024, 768, 768)]    # the last: a published cuDNN/FlashRNN figure
CPU_SHAPES = [D2L_SHAPE, (64, 100, 128, 512)]


def shape_set(name):
    """Named shape sets: tiny (smoke tests), d2l, cpu (d2l + B64 T100 D128 H512), grid."""
    sets = {"tiny": [(2, 3, 4, 5)], "d2l": [D2L_SHAPE], "cpu": CPU_SHAPES, "grid": GRID}
    if name not in sets:
        raise ValueError(f"shapes must be one of {sorted(sets)}, got {name!r}")
    return sets[name]


@dataclass
class Row:
    implementation: str
    device: str
    mode: str
    dtype: str
    B: int
    T: int
    D: int
    H: int
    seconds: float             # median seconds per call over the rounds
    tokens_per_sec: float      # B*T / seconds
    repeats: int               # rounds
    q1_seconds: float = None   # interquartile range of the per-round seconds per call
    q3_seconds: float = None
    gflops: float = None       # the call's GEMM FLOPs (lstm_flops) / median seconds, in 1e9 per second


def lstm_flops(B, T, D, H, mode):
    """The GEMM FLOPs of one call of a one-layer LSTM (2 per multiply-add): the forward's
    ``x W_ih^T`` and ``h W_hh^T`` over T*B rows, 2*T*B*4H*(D+H); training adds the backward's
    ``dG W`` products and the weight gradients ``dG^T [x | h]``, each as many, so 3x. The cell's
    elementwise work is left out: this is the count the FMA peak bounds."""
    forward = 2 * B * T * 4 * H * (D + H)
    return forward * (3 if mode == "training" else 1)


def matmul_peak(device="cpu", dtype=torch.float32, n=2048, repeats=5):
    """This machine's GEMM rate as ``torch.mm`` of two n x n matrices reaches it at the current
    thread count (GFLOP/s, the best of ``repeats`` after a warm-up): the peak the rows' ``gflops``
    are read against, measured in the same run because a shared machine's peak moves."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return {"device": str(device), "dtype": str(dtype).replace("torch.", ""), "n": n,
            "threads": torch.get_num_threads(), "gflops": 2 * n ** 3 / best / 1e9,
            "how": f"torch.mm of two {n}x{n} matrices, best of {repeats}"}


class ScratchLayer(nn.Module):
    """The d2l scratch LSTM as a layer: (T, B, D) -> outputs, (h, c)."""

    def __init__(self, D, H, device, dtype):
        super().__init__()
        init = nn.LSTM(D, H, device=device, dtype=dtype)
        self.params = nn.ParameterList(nn.Parameter(t) for t in reference.lstm_state_dict_to_scratch(init.state_dict()))

    def forward(self, x, state):
        y, (h, c) = reference.lstm(x, state, list(self.params))
        return y, (h, c)


def make_impl(name, D, H, device, dtype):
    """A callable (x) -> list of output tensors for implementation ``name``."""
    if name == "scratch":
        layer = ScratchLayer(D, H, device, dtype)
        return layer, lambda x: (lambda y, s: [y, *s])(*layer(x, reference.init_lstm_state(x.shape[1], H, device)))
    cls = {"torch": nn.LSTM, "fused": FusedLSTM}[name]
    layer = cls(D, H, device=device, dtype=dtype)
    return layer, lambda x: (lambda y, s: [y, *s])(*layer(x))


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def make_call(impl, B, T, D, H, mode, device="cpu", dtype=torch.float32):
    """A no-argument function running one inference or training call (synchronised on CUDA)."""
    layer, fn = make_impl(impl, D, H, device, dtype)
    x = torch.randn(T, B, D, device=device, dtype=dtype, requires_grad=(mode == "training"))
    grads = None

    def call():
        nonlocal grads
        if mode == "inference":
            with torch.no_grad():
                fn(x)
            return
        outs = fn(x)
        if grads is None:
            grads = [torch.randn_like(o) for o in outs]
        torch.autograd.backward(outs, grads)

    def synced():
        call()
        _sync(device)

    return synced


def quartiles(values):
    """(q1, median, q3) of a list of numbers (inclusive method; one value gives it thrice)."""
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def time_interleaved(calls, budget_s=1.0, rounds=7, clock=time.perf_counter):
    """Seconds per call of each of ``calls`` (name -> no-argument function), measured in turn.

    Each function is called once to warm up; one more call each sizes the rounds: every round
    runs ``k`` calls of each function (k from the budget, at least 1), rotating which goes first.
    Returns name -> list of per-round seconds per call. Stops early once the budget is spent and
    at least 3 rounds are done."""
    names = list(calls)
    for name in names:
        calls[name]()                       # warm-up: compilation, allocator, handles
    probe = {}
    for name in names:
        t0 = clock()
        calls[name]()
        probe[name] = clock() - t0
    per_round = max(budget_s / rounds, 1e-9)
    k = max(1, int(per_round / max(sum(probe.values()), 1e-9)))
    out = {name: [] for name in names}
    start = clock()
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            t0 = clock()
            for _ in range(k):
                calls[name]()
            out[name].append((clock() - t0) / k)
        if r >= 2 and clock() - start > budget_s:
            break
    return out


def measure_set(impls, B, T, D, H, mode, device="cpu", dtype=torch.float32, budget_s=1.0, rounds=7,
                clock=time.perf_counter):
    """Rows for several implementations at one shape and mode, timed interleaved
    (:func:`time_interleaved`): median and IQR of the seconds per call."""
    calls = {impl: make_call(impl, B, T, D, H, mode, device, dtype) for impl in impls}
    times = time_interleaved(calls, budget_s * len(impls), rounds, clock)
    rows = []
    for impl in impls:
        q1, med, q3 = quartiles(times[impl])
        rows.append(Row(impl, str(device), mode, str(dtype).replace("torch.", ""), B, T, D, H, med, B * T / med,
                        len(times[impl]), q1, q3, lstm_flops(B, T, D, H, mode) / med / 1e9))
    return rows


def measure(impl, B, T, D, H, mode, device="cpu", dtype=torch.float32, budget_s=1.0, max_repeats=7):
    """One implementation's row (see :func:`measure_set`); ``max_repeats``: the most rounds."""
    return measure_set([impl], B, T, D, H, mode, device, dtype, budget_s, rounds=max_repeats)[0]


def environment(device="cpu"):
    env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
           "cpu": _cpu_name(), "cpu_features": _cpu_features(), "threads": torch.get_num_threads(),
           "cores": os.cpu_count(),
           "load_average": _load_average()}   # a shared machine's load at the time, beside the IQR
    try:
        import triton
        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if torch.device(device).type == "cuda":
        env["device_name"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
    else:
        env["device_name"] = env["cpu"]
    return env


#: What a busy competing process runs (:func:`busy_processes`): one core's worth of pure Python;
#: COMPETITOR is its command as the JSON files record it.
_COMPETITOR_CODE = "while True: pass"
COMPETITOR = f"python -c '{_COMPETITOR_CODE}'"


class busy_processes:
    """``with busy_processes(n):`` n processes each keeping a core busy (:data:`COMPETITOR`), the
    oversubscribed machine a benchmark measures graceful degradation on; killed on exit."""

    def __init__(self, n):
        self.n, self.procs = n, []

    def __enter__(self):
        self.procs = [subprocess.Popen([sys.executable, "-c", _COMPETITOR_CODE]) for _ in range(self.n)]
        if self.procs:
            time.sleep(0.2)     # running before the first timed block
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.kill()
            p.wait()
        self.procs = []


def _load_average():
    """The 1, 5 and 15 minute load averages (runnable processes), or None where unknown."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


#: The /proc/cpuinfo flags a results file names: the ISAs the CPU kernels choose between
#: ("AMD EPYC" is the model name of CPUs with and without AVX-512 alike).
_FEATURE_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16")


def _cpu_features():
    """{vendor, family, model, flags (those of _FEATURE_FLAGS the CPU has)} from /proc/cpuinfo,
    or None where it cannot be read: which CPU a results file came from, beyond its name."""
    info = kernel_isa.cpu_info()
    if not info:
        return None
    flags = set(info.get("flags", "").split())
    return {"vendor": info.get("vendor_id"), "family": info.get("cpu family"), "model": info.get("model"),
            "flags": [f for f in _FEATURE_FLAGS if f in flags]}


def _cpu_name():
    return kernel_isa.cpu_info().get("model name") or platform.processor() or "unknown CPU"


def device_slug(env, device):
    name = env["device_name"] if torch.device(device).type == "cuda" else f"cpu-{env['cpu']}"
    return "".join(ch if ch.isalnum() else "-" for ch in name.lower()).strip("-").replace("--", "-")


def git_commit(root=None):
    """The checkout's commit and the tracked files that differ from it (measurements made with
    uncommitted changes say so), or None outside a git checkout."""
    root = root or Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return None
    return {"sha": sha, "modified": sorted(line[3:] for line in dirty)}


def invocation():
    """The command line that is running, as a user would type it."""
    prog = Path(sys.argv[0]).name
    head = ["lstm-fast"] if prog in ("lstm-fast", "__main__.py") else ["python", sys.argv[0]]
    return shlex.join(head + sys.argv[1:])


def write_json(path, env, rows, extra=None, command=None):
    """Write results atomically (a temporary file renamed into place), with the command that
    wrote them (``command``, default this process's), the git commit and the machine (``env``)."""
    doc = {"environment": env, "command": command or invocation(), "commit": git_commit(),
           "rows": [asdict(r) if isinstance(r, Row) else r for r in rows], **(extra or {})}
    atomic_write_bytes(path, (json.dumps(doc, indent=1) + "\n").encode())


def with_ratios(rows, peaks=()):
    """Each row as a dict with ``ratio_vs_torch``: its tokens/sec over nn.LSTM's at the same
    device, mode, dtype and shape; and, where ``peaks`` (:func:`matmul_peak` results) holds one
    for the row's device and dtype, ``percent_of_peak``: its ``gflops`` over that peak."""
    key = lambda r: (r["device"], r["mode"], r["dtype"], r["B"], r["T"], r["D"], r["H"])  # noqa: E731
    rows = [asdict(r) if isinstance(r, Row) else dict(r) for r in rows]
    base = {key(r): r["tokens_per_sec"] for r in rows if r["implementation"] == "torch"}
    peak = {(p["device"], p["dtype"]): p["gflops"] for p in peaks}
    for r in rows:
        b = base.get(key(r))
        r["ratio_vs_torch"] = r["tokens_per_sec"] / b if b else None
        top = peak.get((r["device"], r["dtype"]))
        if top and r.get("gflops"):
            r["percent_of_peak"] = 100 * r["gflops"] / top
    return rows


def tokens_per_sec_iqr(row):
    """(low, high) tokens/sec at the row's quartiles of seconds per call, or None if not recorded."""
    r = asdict(row) if isinstance(row, Row) else row
    if r.get("q1_seconds") is None or r.get("q3_seconds") is None:
        return None
    n = r["B"] * r["T"]
    return n / r["q3_seconds"], n / r["q1_seconds"]


def format_table(rows, peaks=()):
    rows = with_ratios(rows, peaks)
    head = (f"{'implementation':<16}{'device':<8}{'mode':<11}{'dtype':<10}{'shape (B,T,D,H)':<22}{'tokens/sec':>14}"
            f"{'IQR':>22}{'vs nn.LSTM':>12}{'% peak':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        ratio = f"{r['ratio_vs_torch']:.2f}x" if r["ratio_vs_torch"] else "-"
        shape = f"{r['B']},{r['T']},{r['D']},{r['H']}"
        iqr = tokens_per_sec_iqr(r)
        spread = f"{iqr[0]:,.0f}-{iqr[1]:,.0f}" if iqr else "-"
        pct = f"{r['percent_of_peak']:.1f}%" if r.get("percent_of_peak") else "-"
        lines.append(f"{r['implementation']:<16}{r['device']:<8}{r['mode']:<11}{r['dtype']:<10}{shape:<22}"
                     f"{r['tokens_per_sec']:>14,.0f}{spread:>22}{ratio:>12}{pct:>8}")
    return "\n".join(lines)


def plot(rows, path):
    """A bar chart of tokens/sec per shape and mode, one bar per implementation."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import io
    rows = with_ratios(rows)
    groups = sorted({(r["device"], r["mode"], r["dtype"], r["B"], r["T"], r["D"], r["H"]) for r in rows})
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(groups)), 3.6))
    width = 0.8 / len(IMPLEMENTATIONS)
    for k, impl in enumerate(IMPLEMENTATIONS):
        vals = [next((r["tokens_per_sec"] for r in rows if r["implementation"] == impl and
                      (r["device"], r["mode"], r["dtype"], r["B"], r["T"], r["D"], r["H"]) == g), 0) for g in groups]
        ax.bar([i + k * width for i in range(len(groups))], vals, width, label=impl)
    ax.set_xticks([i + width for i in range(len(groups))])
    ax.set_xticklabels([f"{g[0]} {g[1]}\nB{g[3]} T{g[4]} H{g[6]}" for g in groups], fontsize=7)
    ax.set_ylabel("tokens/sec")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
