"""Throughput measurement shared by ``lstm-fast bench``, ``benchmarks/gpu_check.py`` and the
pytest-benchmark suites: tokens/sec (B*T per second) of the d2l scratch LSTM, nn.LSTM (cuDNN on
CUDA, oneDNN on CPU) and FusedLSTM, in inference (no grad) and training (forward + backward of
every gradient) mode.

Timing: a warm-up call, then repeated calls timed with ``perf_counter`` around a device
synchronize (CUDA work is asynchronous), and the median. Inputs are fresh random tensors, never
zeros. Rows carry the environment (device, torch/triton versions, date) when written out.
"""
import datetime
import json
import platform
import statistics
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from . import reference
from .module import FusedLSTM

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
    seconds: float
    tokens_per_sec: float
    repeats: int


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


def measure(impl, B, T, D, H, mode, device="cpu", dtype=torch.float32, budget_s=1.0, max_repeats=50):
    """Median seconds per call and tokens/sec for one implementation, shape and mode."""
    call = make_call(impl, B, T, D, H, mode, device, dtype)
    call()                                  # warm-up: compilation, allocator, handles
    times = []
    start = time.perf_counter()
    while len(times) < max_repeats and (len(times) < 3 or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
        if times[0] > budget_s:             # one call already exceeds the budget: one is enough
            break
    sec = statistics.median(times)
    return Row(impl, str(device), mode, str(dtype).replace("torch.", ""), B, T, D, H, sec, B * T / sec, len(times))


def environment(device="cpu"):
    env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
           "cpu": _cpu_name(), "threads": torch.get_num_threads()}
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


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def device_slug(env, device):
    name = env["device_name"] if torch.device(device).type == "cuda" else f"cpu-{env['cpu']}"
    return "".join(ch if ch.isalnum() else "-" for ch in name.lower()).strip("-").replace("--", "-")


def write_json(path, env, rows, extra=None):
    """Write results atomically (a temporary file renamed into place)."""
    from .train import atomic_write_bytes
    doc = {"environment": env, "rows": [asdict(r) if isinstance(r, Row) else r for r in rows], **(extra or {})}
    atomic_write_bytes(path, (json.dumps(doc, indent=1) + "\n").encode())


def with_ratios(rows):
    """Each row as a dict with ``ratio_vs_torch``: its tokens/sec over nn.LSTM's at the same
    device, mode, dtype and shape."""
    key = lambda r: (r["device"], r["mode"], r["dtype"], r["B"], r["T"], r["D"], r["H"])  # noqa: E731
    rows = [asdict(r) if isinstance(r, Row) else dict(r) for r in rows]
    base = {key(r): r["tokens_per_sec"] for r in rows if r["implementation"] == "torch"}
    for r in rows:
        b = base.get(key(r))
        r["ratio_vs_torch"] = r["tokens_per_sec"] / b if b else None
    return rows


def format_table(rows):
    rows = with_ratios(rows)
    head = f"{'implementation':<16}{'device':<8}{'mode':<11}{'dtype':<10}{'shape (B,T,D,H)':<22}{'tokens/sec':>14}{'vs nn.LSTM':>12}"
    lines = [head, "-" * len(head)]
    for r in rows:
        ratio = f"{r['ratio_vs_torch']:.2f}x" if r["ratio_vs_torch"] else "-"
        shape = f"{r['B']},{r['T']},{r['D']},{r['H']}"
        lines.append(f"{r['implementation']:<16}{r['device']:<8}{r['mode']:<11}{r['dtype']:<10}{shape:<22}"
                     f"{r['tokens_per_sec']:>14,.0f}{ratio:>12}")
    return "\n".join(lines)


def plot(rows, path):
    """A bar chart of tokens/sec per shape and mode, one bar per implementation."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .train import atomic_write_bytes
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
