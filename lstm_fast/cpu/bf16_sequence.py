"""The bfloat16 CPU path on the whole-sequence bf16 kernels (``bf16_sequence_kernels.c``).

Serves CPU autocast to bfloat16 and bfloat16 parameters (chosen by
:func:`lstm_fast.ops.plan.plan_layer`): matmul operands in bf16, float32 accumulation, float32
cell state and gate activations, outputs h_t in bf16 (the next step's operand, as nn.LSTM under
autocast). Weights may be float32 (autocast: the parameters themselves, converted to bf16 panels
as they are packed, once per call) or bf16; their gradients come back in their own dtype.
Forward and the backward through time are C calls that walk all T steps, on AMX tiles where the
CPU has AMX-BF16 (:func:`use_amx`), else on AVX512-BF16 ``vdpbf16ps``; ``dx`` and the weight
gradients (one GEMM, ``[X | h_prev]^T dG``) are oneDNN bf16 GEMMs (float32 accumulation) over the
bf16 gate gradients the backward kernel writes.

Which path bf16 CPU layers take is :func:`use_native` (env var ``LSTM_FAST_CPU_BF16``, or set
:data:`MODE` at run time): ``"auto"`` (these kernels where they beat the float32 kernels on
exactly upcast operands: with AMX, or where this core's ``vdpbf16ps`` does more multiply-adds per
second than its float32 FMAs, :func:`vdpbf16ps_gain`; else the float32 kernels), ``"native"``
(these kernels; an error without AVX512-BF16) or ``"upcast"`` (always the float32 kernels).

Saved for the backward: the activated gates and tanh(c_t) in bf16 (T, ceil(H/16), B, 5 x 16), the cell states
(T, B, H) in float32, the bf16 outputs and inputs, the weights.
"""
import functools
import os

import torch

from . import workspace
from ..layer_math import final_hidden

try:
    from . import _bf16_sequence_kernels
    _CPU_HAS_BF16 = bool(_bf16_sequence_kernels.available())
    _CPU_HAS_AMX = _CPU_HAS_BF16 and bool(_bf16_sequence_kernels.amx_available())
except ImportError:              # built without a C compiler
    _bf16_sequence_kernels, _CPU_HAS_BF16, _CPU_HAS_AMX = None, False, False

#: Whether the AMX tile variants run where the CPU has AMX-BF16 (env LSTM_FAST_CPU_AMX=0: never).
USE_AMX = os.environ.get("LSTM_FAST_CPU_AMX", "1") != "0"

MODES = ("auto", "native", "upcast")
#: Which path bf16 CPU layers take: "auto", "native" or "upcast" (see the module docstring).
MODE = os.environ.get("LSTM_FAST_CPU_BF16", "auto")


def cpu_supported() -> bool:
    """Whether the native kernels can run here (built, and the CPU has AVX512-BF16)."""
    return _CPU_HAS_BF16


#: In "auto" mode without AMX, the native kernels run where ``vdpbf16ps`` does at least this many
#: times the multiply-adds per second of float32 FMAs (:func:`vdpbf16ps_gain`).
NATIVE_MIN_GAIN = 1.25


@functools.lru_cache(maxsize=None)
def vdpbf16ps_gain() -> float:
    """Multiply-adds per second of ``vdpbf16ps`` (32 per zmm) over ``vfmadd231ps`` (16) on this
    core, measured once (~0.2 ms, best of 5 interleaved runs). Why measured: it is a property of
    the core, not of the ISA flags. On the Intel Xeon this project measures on (AMX switched
    off) it is 0.5: vdpbf16ps issues every ~2 cycles, so the bf16 vector kernels ran 1.4x slower
    than the float32 ones and no faster than oneDNN's bf16 RNN. A core whose vdpbf16ps
    out-multiplies its FMAs (reported for AMD Zen 4; no such core here to probe) gets the
    vdpbf16ps kernels."""
    dp_ns, fma_ns = _bf16_sequence_kernels.probe_dot_rates(4000)
    return (32 / dp_ns) / (16 / fma_ns)


@torch.compiler.assume_constant_result
def use_native() -> bool:
    """Whether bf16 CPU layers run on these kernels now, per :data:`MODE`."""
    if MODE not in MODES:
        raise ValueError(f"LSTM_FAST_CPU_BF16 must be one of {MODES}, got {MODE!r}")
    if MODE == "native" and not _CPU_HAS_BF16:
        raise RuntimeError("LSTM_FAST_CPU_BF16=native: the bf16 kernels need a CPU with AVX512-BF16 "
                           "(and a build with a C compiler)")
    if MODE != "auto":
        return MODE == "native"
    return _CPU_HAS_BF16 and (use_amx() or vdpbf16ps_gain() >= NATIVE_MIN_GAIN)


_BF16 = torch.bfloat16


def _is_f32(w):
    return w.dtype == torch.float32


def _up(n, m):
    return -(-n // m) * m


def use_amx() -> bool:
    """Whether the AMX tile variants run (CPU with AMX-BF16 and :data:`USE_AMX`)."""
    return _CPU_HAS_AMX and USE_AMX


SPLITS = ("auto", "batch", "hidden")
#: How the AMX kernels share a step among threads (env LSTM_FAST_CPU_SPLIT): "hidden" (each
#: thread a slice of the hidden units for every row: a barrier per step, each core reads only its
#: slice of the weights), "batch" (each thread whole 16-row blocks: no barrier, no h_t crossing
#: cores, but each core reads all the weights every step) or "auto" (:func:`split_batch`).
SPLIT = os.environ.get("LSTM_FAST_CPU_SPLIT", "auto")


def _l2_bytes() -> int:
    """One core's L2 cache in bytes (Linux sysfs), 1 MiB where it cannot be read."""
    try:
        for idx in sorted(os.listdir("/sys/devices/system/cpu/cpu0/cache")):
            d = f"/sys/devices/system/cpu/cpu0/cache/{idx}"
            if open(f"{d}/level").read().strip() == "2":
                size = open(f"{d}/size").read().strip().upper()
                mult = {"K": 1 << 10, "M": 1 << 20}.get(size[-1:], 1)
                return int(size.rstrip("KM")) * mult
    except (OSError, ValueError):
        pass
    return 1 << 20


_L2_BYTES = _l2_bytes()


def split_batch(Bp, weight_bytes, nthreads) -> bool:
    """Whether the AMX kernels split the batch among threads (see :data:`SPLIT`). "auto": where
    the 16-row blocks of the (padded) batch ``Bp`` divide evenly among the threads and the bf16
    weight panels a step reads (``weight_bytes``) fit in half of one core's L2, so that reading
    all of them on every core costs less than a barrier and h_t crossing cores every step (the d2l
    shape: 1.5x faster backward kernel at 2 threads; B64 H512's 2.6 MB of weights stay hidden-split)."""
    if SPLIT not in SPLITS:
        raise ValueError(f"LSTM_FAST_CPU_SPLIT must be one of {SPLITS}, got {SPLIT!r}")
    if nthreads <= 1 or SPLIT == "hidden":
        return False
    if SPLIT == "batch":
        return True
    return (Bp // 16) % nthreads == 0 and weight_bytes <= _L2_BYTES // 2


def pack_panels(w, k_pad=None):
    """W (4H, K) float32 or bf16 -> bf16 forward panels (ceil(H/16), ceil(k_pad/2), 128): panel j,
    pair row p holds, for gates i, f, g, o of units j*16.., W[., 2p] and W[., 2p+1] interleaved;
    zero past H and K (``k_pad``: K rounded up, 32 for the AMX tiles)."""
    G4, K = w.shape
    H = G4 // 4
    k_pad = K if k_pad is None else k_pad
    w = w.detach().contiguous()
    P = workspace.empty(((H + 15) // 16, (k_pad + 1) // 2, 128), _BF16)
    _bf16_sequence_kernels.pack_panels(w.data_ptr(), _is_f32(w), H, K, k_pad, P.data_ptr(), torch.get_num_threads())
    return P


def pack_backward_panels(w_hh, k_pad=None):
    """W_hh (4H, H) -> bf16 backward panels (ceil(H/64), k_pad/2, 128): 64 columns of rows 2p,
    2p+1 (zero rows past 4H up to ``k_pad``, default 4H)."""
    H = w_hh.shape[1]
    k_pad = 4 * H if k_pad is None else k_pad
    w_hh = w_hh.detach().contiguous()
    P = workspace.empty(((H + 63) // 64, k_pad // 2, 128), _BF16)
    _bf16_sequence_kernels.pack_backward_panels(w_hh.data_ptr(), _is_f32(w_hh), H, k_pad, P.data_ptr())
    return P


def float_bias(b_ih, b_hh):
    """b_ih + b_hh summed in float32 (None when both are None)."""
    parts = [b.detach().float() for b in (b_ih, b_hh) if b is not None]
    if not parts:
        return None
    return (parts[0] + parts[1] if len(parts) == 2 else parts[0]).contiguous()


def prepare(w_ih, w_hh, b_ih, b_hh):
    """What the forward kernel reads: bf16 panels of W_ih and W_hh and the float32 summed bias
    (K padded to 32 for the AMX variant). Prepared on every call (one pass over the weights),
    never cached, as in :mod:`.sequence`."""
    if use_amx():   # the bias as (4, H rounded up to 16): the accumulator tiles' starting value
        bias = float_bias(b_ih, b_hh)
        if bias is not None:
            H = w_hh.shape[1]
            bias = torch.nn.functional.pad(bias.view(4, H), (0, _up(H, 16) - H)).contiguous()
        return pack_panels(w_ih, _up(w_ih.shape[1], 32)), pack_panels(w_hh, _up(w_hh.shape[1], 32)), bias
    return pack_panels(w_ih), pack_panels(w_hh), float_bias(b_ih, b_hh)


def forward(x, h0, c0, prepared, save, lengths=None):
    """Run the recurrence on bf16 ``x`` (T, B, D) and ``h0`` (B, H), float32 ``c0``. Returns
    (Y (T, B, H) bf16, G (T, ceil(H/16), B, 80) bf16 or None, C (T, B, H) or c_T (1, B, H) float32)."""
    T, B, D = x.shape
    px, ph, bias = prepared
    H = h0.shape[1]
    x, h0, c0 = x.contiguous(), h0.contiguous(), c0.float().contiguous()
    Y = workspace.empty((T, B, H), _BF16)
    G = workspace.empty((T, (H + 15) // 16, B, 80), _BF16) if save else None
    C = workspace.empty((T if save else 2, B, H), torch.float32)
    if use_amx():   # operands in zero-padded buffers: 16-row, 32-column tiles
        Bp, Dp, Hp = _up(B, 16), _up(D, 32), _up(H, 32)
        if (Bp, Dp) != (B, D):
            xp = workspace.zeros((T, Bp, Dp), _BF16)
            xp[:, :B, :D] = x
            x = xp
        hb = workspace.zeros((2, Bp, Hp), _BF16)   # the h operand buffers (tile-blocked; h0 copied in by C)
        nt = torch.get_num_threads()
        weight_bytes = (px.numel() + ph.numel()) * 2
        by_batch = split_batch(Bp, weight_bytes, nt)
        per_thread = weight_bytes if by_batch else weight_bytes // nt
        _bf16_sequence_kernels.forward_seq_amx(
            x.data_ptr(), px.data_ptr(), None if bias is None else bias.data_ptr(), ph.data_ptr(), h0.data_ptr(),
            c0.data_ptr(), Y.data_ptr(), C.data_ptr(), None if G is None else G.data_ptr(), T, B, D, H,
            nt, None if lengths is None else lengths.data_ptr(), Bp, Dp, Hp,
            by_batch, hb.data_ptr(), per_thread > _L2_BYTES)   # prefetch where a thread's weights miss L2
        return Y, G, (C if save else C[(T - 1) % 2].unsqueeze(0))
    _bf16_sequence_kernels.forward_seq(
        x.data_ptr(), px.data_ptr(), None if bias is None else bias.data_ptr(), ph.data_ptr(), h0.data_ptr(),
        c0.data_ptr(), Y.data_ptr(), C.data_ptr(), None if G is None else G.data_ptr(), T, B, D, H,
        torch.get_num_threads(), None if lengths is None else lengths.data_ptr())
    return Y, G, (C if save else C[(T - 1) % 2].unsqueeze(0))


def forward_saving(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths=None):
    """Forward that keeps what the backward needs: (Y, h_n, c_n bf16, (G, C))."""
    Y, G, C = forward(x, h0, c0, prepare(w_ih, w_hh, b_ih, b_hh), save=True, lengths=lengths)
    return Y, final_hidden(Y, h0, lengths), C[-1].to(_BF16), (G, C)


def backward_saved(dY, dh_n, dc_n, x, h0, c0, w_ih, w_hh, Y, saved, needs, lengths=None):
    """Gradients (dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh), each in its tensor's dtype, from
    :func:`forward_saving`'s tensors; ``needs``: which of the seven are wanted."""
    G, C = saved
    n = needs
    T, B, H = C.shape
    D = x.shape[2]
    nt = torch.get_num_threads()
    dY = workspace.zeros((T, B, H), _BF16) if dY is None else dY.to(_BF16).contiguous()
    DH = torch.zeros(B, H) if dh_n is None else dh_n.float().contiguous().clone()
    DC = torch.zeros(B, H) if dc_n is None else dc_n.float().contiguous().clone()
    db = torch.zeros(4 * H) if n[5] or n[6] else None
    c0f = c0.float().contiguous()
    if use_amx():   # dG in a zero-padded (T, Bp, Kp) buffer: 16-row, 32-column tiles
        Bp, Kp = _up(B, 16), _up(4 * H, 32)
        dG = workspace.zeros((T, Bp, Kp), _BF16) if (Bp, Kp) != (B, 4 * H) else workspace.empty((T, B, 4 * H), _BF16)
        panels = pack_backward_panels(w_hh, Kp)   # held for the call
        _bf16_sequence_kernels.backward_seq_amx(
            dY.data_ptr(), panels.data_ptr(), G.data_ptr(), C.data_ptr(), c0f.data_ptr(),
            dG.data_ptr(), DH.data_ptr(), DC.data_ptr(), None if db is None else db.data_ptr(), T, B, H, nt,
            None if lengths is None else lengths.data_ptr(), Bp, Kp, split_batch(Bp, panels.numel() * 2, nt))
        dG = dG[:, :B, :4 * H]
    else:
        dG = workspace.empty((T, B, 4 * H), _BF16)
        panels = pack_backward_panels(w_hh)
        _bf16_sequence_kernels.backward_seq(
            dY.data_ptr(), panels.data_ptr(), G.data_ptr(), C.data_ptr(), c0f.data_ptr(),
            dG.data_ptr(), DH.data_ptr(), DC.data_ptr(), None if db is None else db.data_ptr(), T, B, H, nt,
            None if lengths is None else lengths.data_ptr())
    dG2 = dG.reshape(T * B, 4 * H)
    dx = dw_ih = dw_hh = None
    if n[0]:      # bf16 GEMMs (oneDNN, float32 accumulation), as autocast runs them
        dx = torch.mm(dG2, w_ih.detach().to(_BF16)).view(T, B, D).to(x.dtype)
    if n[3] or n[4]:   # [dW_ih | dW_hh]^T = [X | h_prev]^T dG in one GEMM, both operands row-major
        xht = workspace.empty((D + H, T * B), _BF16)   # [X | h_prev]^T: h_prev is h0, then Y[:-1]
        _transpose(x.to(_BF16).reshape(T * B, D), xht[:D], nt)
        _transpose(h0.to(_BF16), xht[D:, :B], nt)
        if T > 1:
            _transpose(Y[:-1].reshape((T - 1) * B, H), xht[D:, B:], nt)
        dwt = torch.mm(xht, dG2)
        if n[3]:
            dw_ih = _transpose(dwt[:D], torch.empty(4 * H, D, dtype=w_ih.dtype), nt)
        if n[4]:
            dw_hh = _transpose(dwt[D:], torch.empty(4 * H, H, dtype=w_hh.dtype), nt)
    db = None if db is None else db.to(w_hh.dtype)   # the biases' dtype (the custom op declares it so)
    # db_ih and db_hh are equal but distinct tensors (a custom op's outputs may not alias)
    return (dx, DH.to(h0.dtype) if n[1] else None, DC.to(c0.dtype) if n[2] else None, dw_ih, dw_hh,
            db if n[5] else None, (db.clone() if n[5] else db) if n[6] else None)


def _transpose(src, out, nthreads):
    """``out`` (N, R) = ``src`` (R, N)^T, by the kernels' blocked transpose: ``src`` bf16 and
    ``out`` float32 or bf16, each with unit column stride (any row stride: views of larger
    buffers); other dtypes or layouts by torch's copy. Returns ``out``."""
    R, N = src.shape
    if (out.dtype not in (torch.float32, _BF16) or src.dtype != _BF16 or src.stride(1) != 1
            or out.stride(1) != 1 or R == 0 or N == 0):
        return out.copy_(src.t())
    _bf16_sequence_kernels.transpose_bf16(src.data_ptr(), src.stride(0), R, N, out.data_ptr(), out.stride(0),
                                          out.dtype == torch.float32, nthreads)
    return out


def available_for(x: torch.Tensor, w_hh: torch.Tensor) -> bool:
    """Whether a layer whose operands are bf16 (``x`` bf16, or float32 under autocast to bf16) can
    run here: CPU tensors, a non-empty batch, W_hh (4H, H) in float32 or bf16, and
    :func:`use_native` says so."""
    return (x.device.type == "cpu" and x.shape[1] > 0 and w_hh.dtype in (torch.float32, _BF16)
            and w_hh.shape[1] * 4 == w_hh.shape[0] and use_native())


def forward_inference(x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, lengths=None):
    """One layer without autograd (saves nothing): ``x`` (T, B, D) and ``h0`` bf16, ``c0`` float32
    or bf16, weights and biases float32 or bf16. Returns (Y, (h_n, c_n)), all bf16 (nn.LSTM's
    dtypes under autocast)."""
    Y, _, C = forward(x, h0, c0, prepare(w_ih, w_hh, b_ih, b_hh), save=False, lengths=lengths)
    return Y, (final_hidden(Y, h0, lengths), C[-1].to(_BF16))


def saved_like(x, w_hh):
    """Shapes and dtypes of what :func:`forward_saving` saves, (G, C): gates and tanh(c_t) in bf16
    blocks of 16 units, float32 cell states (the compile-time fake's answer)."""
    T, B, _ = x.shape
    H = w_hh.shape[0] // 4
    return ((T, (H + 15) // 16, B, 80), _BF16), ((T, B, H), torch.float32)
