"""The float32 CPU path for small batches on ``small_batch_kernels.c``: batch 1..a few, one step
per call (serving, generation) or whole sequences.

Shapes: T steps, B batch, D input, H hidden; gates in nn.LSTM's order i, f, g, o.

Why a separate path: at small B a step is a matrix-vector product per weight matrix, bound by
the weight bytes over cache bandwidth. The whole-sequence kernels (:mod:`.sequence`) pack both
weight matrices into panels on every call, which at T = 1 costs more than the step itself. These
kernels read W_ih and W_hh in PyTorch's own layout (nothing packed or cached: every way of
changing a parameter is seen by the next call); each thread does its own slice of hidden units
first, so its slice of W_hh stays in its own L2; each step is a claimed phase (thread_team.h:
a thread also takes the slices of threads not yet there, so a call never waits at a step for a
descheduled thread). Results are bitwise independent of the thread count and of who computed
what (fixed reduction order per gate).

Saved for the backward: the activated gates (T, B, 4H) and cell states (T, B, H), the layout of
:mod:`.sequence`. The backward through time is a C call here too (one claimed phase per step:
dh_t = dG_{t+1} W_hh column block by column block, then the cell gradients of those units); the weight
gradients come from the packed weight-gradient GEMM (:mod:`.weight_gradient`) and ``dx`` from one GEMM.

Dispatch: :func:`use_for` (env ``LSTM_FAST_CPU_SMALL_BATCH``: ``auto`` (default, the measured
crossovers in :data:`CROSSOVERS`), ``1`` (always, where the kernels can run), ``0`` (never)).
"""
import os

import torch

from . import kernel_isa, workspace
from .matmul import linear
from .weight_gradient import available as weight_gradients_available, weight_gradients
from ..layer_math import final_hidden, padding_mask

#: The kernel module this CPU runs: ``_small_batch_kernels`` (AVX-512) or
#: ``_small_batch_avx2_kernels`` (AVX2 + FMA; same entry points), or None.
_small_batch_kernels, ISA = kernel_isa.load("_small_batch_kernels", "_small_batch_avx2_kernels")

_F32 = torch.float32
_I64 = torch.int64

#: From this many steps on, the AVX2 backward reads W_hh transposed (packed once per call into a
#: pooled (H, 4H) scratch: small_batch_avx2_kernels.c, pack_wt), not down its columns. Measured
#: on the AMD EPYC (training at B = 1, the two routes interleaved in one process, 9 rounds,
#: medians, us a step, columns -> transposed): 1 thread T1000 H256 61.1 -> 51.2 and 59.6 -> 52.4,
#: T300 H512 229 -> 189 and 221 -> 193, T35 H256 81.0 -> 74.6 and 77.8 -> 76.4, T16 H256
#: 98.9 -> 95.2 and 96.0 -> 100.3, T8 147 -> 177; 2 threads T1000 H256 32.6 -> 31.1, T300 H512
#: 138 -> 113, T35 H256 44.8 -> 42.3, T16 67.0 -> 69.5. Below ~32 steps the transpose does not
#: pay for itself.
PACK_MIN_STEPS = 32


def available_for(x: torch.Tensor, w_hh: torch.Tensor) -> bool:
    """Whether this layer can run here: float32 CPU tensors, a non-empty batch, W_hh (4H, H)."""
    return (_small_batch_kernels is not None and weight_gradients_available() and x.dtype == _F32
            and x.device.type == "cpu" and x.shape[1] > 0 and w_hh.dtype == _F32 and len(w_hh.shape) == 2
            and w_hh.shape[1] * 4 == w_hh.shape[0])


def _f32(t, shape, name):
    """t as a contiguous float32 CPU tensor of ``shape`` (a copy only if it is not one already).
    ``is_cpu``, not ``device.type``: this runs 7 times per call, and at batch 1 a step is ~30 us."""
    if t.dtype != _F32 or not t.is_cpu or t.shape != shape:
        raise RuntimeError(f"small_batch: {name} must be a float32 CPU tensor of shape {tuple(shape)}, "
                           f"got {t.dtype} {tuple(t.shape)} on {t.device}")
    return t if t.is_contiguous() else t.contiguous()


def _args(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths):
    """The checked operands (every shape, dtype, device and layout the C kernel relies on)."""
    T, B, D = x.shape
    G4 = w_hh.shape[0]
    H = G4 // 4
    x = _f32(x, (T, B, D), "x")
    w_ih = _f32(w_ih, (G4, D), "w_ih")
    w_hh = _f32(w_hh, (G4, H), "w_hh")
    h0 = _f32(h0, (B, H), "h0")
    c0 = _f32(c0, (B, H), "c0")
    if b_ih is not None:
        b_ih = _f32(b_ih, (G4,), "b_ih")
    if b_hh is not None:
        b_hh = _f32(b_hh, (G4,), "b_hh")
    if lengths is not None and (lengths.dtype != _I64 or lengths.device.type != "cpu" or lengths.shape != (B,)
                                or not lengths.is_contiguous()):
        raise RuntimeError(f"small_batch: lengths must be a contiguous CPU int64 tensor of shape ({B},)")
    return x, h0, c0, w_ih, w_hh, b_ih, b_hh, T, B, D, H


def _ptr(t):
    return None if t is None else t.data_ptr()


def _forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, save):
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, T, B, D, H = _args(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths)
    Y = torch.empty(T, B, H) if T * B * H < workspace.MIN_ELEMENTS else workspace.empty((T, B, H))
    hn = torch.empty(B, H)
    cn = torch.empty(B, H)
    G = C = P = S = None
    if save:
        G = workspace.empty((T, B, 4 * H))
        C = workspace.empty((T, B, H))
    elif T > 1:
        P = workspace.empty((T, B, 4 * H))
        S = torch.empty(B, H)
    _small_batch_kernels.forward(x.data_ptr(), w_ih.data_ptr(), w_hh.data_ptr(), _ptr(b_ih), _ptr(b_hh),
                                 h0.data_ptr(), c0.data_ptr(), Y.data_ptr(), hn.data_ptr(), cn.data_ptr(),
                                 _ptr(G), _ptr(C), _ptr(P), _ptr(S), T, B, D, H, torch.get_num_threads(),
                                 _ptr(lengths))
    return Y, hn, cn, G, C


def saved_like(x, w_hh):
    """Shapes and dtypes of what :func:`forward_saving` saves, (G, C) (the compile-time fake's answer)."""
    T, B, _ = x.shape
    H = w_hh.shape[0] // 4
    return ((T, B, 4 * H), x.dtype), ((T, B, H), x.dtype)


def forward_inference(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths=None):
    """The layer without autograd: (Y (T, B, H), (h_n, c_n)), each row's state at its length.
    ``lengths`` (B,) CPU int64 or None: from step lengths[b] on, row b is frozen and outputs 0."""
    Y, hn, cn, _, _ = _forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, save=False)
    return Y, (hn, cn)


def forward_saving(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths=None):
    """Forward that keeps what the backward needs: (Y, h_n, c_n, (G, C))."""
    Y, hn, cn, G, C = _forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, save=True)
    return Y, hn, cn, (G, C)


def backward_saved(dY, dh_n, dc_n, x, h0, c0, w_ih, w_hh, Y, saved, needs, lengths=None):
    """Gradients (dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh) from :func:`forward_saving`'s tensors;
    ``needs``: which of the seven are wanted (None for the others)."""
    G, C = saved
    n = needs
    T, B, H = C.shape
    D = x.shape[2]
    nt = torch.get_num_threads()
    w_hh = _f32(w_hh, (4 * H, H), "w_hh")
    c0 = _f32(c0, (B, H), "c0")
    if dY is not None:
        dY = _f32(dY, (T, B, H), "dY")
    DH = torch.zeros(B, H) if dh_n is None else _f32(dh_n, (B, H), "dh_n").clone()
    DC = torch.zeros(B, H) if dc_n is None else _f32(dc_n, (B, H), "dc_n").clone()
    db = torch.zeros(4 * H) if n[5] or n[6] else None
    dG = workspace.empty((T, B, 4 * H))
    args = (_ptr(dY), w_hh.data_ptr(), G.data_ptr(), C.data_ptr(), c0.data_ptr(), dG.data_ptr(), DH.data_ptr(),
            DC.data_ptr(), _ptr(db), T, B, H, nt, _ptr(lengths))
    if ISA == "avx2" and T >= PACK_MIN_STEPS:   # W_hh transposed, into a scratch alive through the call
        wt = workspace.empty((H, 4 * H))
        _small_batch_kernels.backward(*args, wt.data_ptr())
    else:
        _small_batch_kernels.backward(*args)
    dx = dw_ih = dw_hh = None
    if n[0]:
        dx = _input_grad(dG.view(T * B, 4 * H), w_ih, nt).view(T, B, D)
    if n[3] or n[4]:   # one packed GEMM: [dW_ih | dW_hh] = dG^T [X | h_0; Y[:-1]] (weight_gradient_gemm.h)
        if lengths is not None:   # dgates are 0 past each row's end, but 0 * NaN padding is NaN
            x = x.masked_fill(padding_mask(lengths, T, x.device), 0)
        h0c = _f32(h0, (B, H), "h0")
        a0 = [x.contiguous().view(T * B, D)]
        a1 = [h0c, Y[:-1].contiguous().view((T - 1) * B, H)] if T > 1 else [h0c]
        dw_ih, dw_hh = weight_gradients(dG.view(T * B, 4 * H), a0, a1, nt)
        dw_ih = dw_ih if n[3] else None
        dw_hh = dw_hh if n[4] else None
    return (dx, DH if n[1] else None, DC if n[2] else None, dw_ih, dw_hh,
            db if n[5] else None, (db.clone() if n[5] else db) if n[6] else None)


def _input_grad(dG, w_ih, nthreads):
    """dx = dG (R, 4H) W_ih (4H, D). With the AVX-512 kernels one GEMM (:func:`.matmul.linear`:
    oneDNN, or BLAS where its bits do not change with the thread count); with the AVX2 ones their
    fixed-order product (torch's GEMM did change its bits with the thread count on the AMD EPYC
    measured)."""
    if ISA != "avx2":
        return linear(dG, w_ih.t())
    w_ih = _f32(w_ih, tuple(w_ih.shape), "w_ih")
    R, D = dG.shape[0], w_ih.shape[1]
    out = torch.empty(R, D)
    _small_batch_kernels.input_grad(dG.data_ptr(), w_ih.data_ptr(), R, dG.shape[1], D, out.data_ptr(), nthreads)
    return out


# ---------------------------------------------------------------- dispatch
SWITCH = "LSTM_FAST_CPU_SMALL_BATCH"
#: "auto" (the measured crossovers), "1" (always where available), "0" (never). Read on every
#: call of :func:`use_for`, so a test or a server may set it at run time.
SWITCH_VALUES = ("auto", "1", "0")

#: Crossovers against the whole-sequence kernels (:mod:`.sequence`; under CPU autocast bf16 with
#: float32 weights, against the bf16 route): (key, threads, mode) -> list of (max_H, max_B for
#: T == 1 calls, max_B for T > 1 calls), first entry with max_H >= H wins (H below 256 takes the
#: 256 entry: not measured there); H beyond the last entry: not chosen. key "float32" or
#: "autocast-bfloat16"; mode "inference" or "training" (forward + backward).
#: From benchmarks/results/small-batch-crossovers.json (commit e00ed22, `python
#: benchmarks/small_batch_crossovers.py --competitor --rounds 3`, all 252 rows and the 6
#: competitor rows; `--table` prints this): small-batch chosen for (H, B) where its median beat
#: the other route's at that B and every smaller B, at T = 1, or at both T = 35 and T = 1000 and
#: (2 threads) also at B=1 T=35 with a busy competing process (float32 H=256 lost that, x3.7:
#: the per-step barrier waits on a descheduled thread). Measured on the shared 2-core VM at load
#: average 1.3-7.2 (other jobs ran): noisy, so entries are not monotone in H.
#: The "avx2-" entries: the AVX2 kernels against the AVX2 whole-sequence kernels (the route the
#: plan takes otherwise on such a CPU), from benchmarks/results/small-batch-crossovers-avx2.json
#: (commit 525c743, `python benchmarks/small_batch_crossovers.py --competitor --rounds 5`, an AMD
#: EPYC with AVX2 and no AVX-512, 2 cores, load average 0.2-2.1: this run alone on the machine,
#: after the backward's transposed W_hh from 32 steps on; the AVX2 kernels' steps are claimed
#: phases there, so the busy-competitor rows do not take the small-batch kernels out: small-batch
#: over sequence 0.19-0.64 in all 6).
#: The AVX-512 entries were measured with the per-step barrier those kernels had before e6d8980
#: (claimed phases since, as the AVX2 ones), on the Intel Xeon; not re-measured since, nor on the
#: AVX-512 AMD EPYC, which takes them too.
#: A call takes the small-batch kernels only where its 1- and 2-thread entries both say so
#: (:func:`use_for`), so the choice, and the bits, do not change with the thread count.
CROSSOVERS = {
    ("avx2-autocast-bfloat16", 1, "inference"): [(256, 8, 2), (512, 8, 2), (1024, 8, 4)],
    ("avx2-autocast-bfloat16", 1, "training"): [(256, 4, 1), (512, 4, 1), (1024, 4, 2)],
    ("avx2-autocast-bfloat16", 2, "inference"): [(256, 8, 2), (512, 8, 2), (1024, 8, 4)],
    ("avx2-autocast-bfloat16", 2, "training"): [(256, 4, 1), (512, 4, 1), (1024, 4, 2)],
    ("avx2-float32", 1, "inference"): [(256, 8, 1), (512, 8, 2), (1024, 8, 2)],
    ("avx2-float32", 1, "training"): [(256, 4, 1), (512, 4, 1), (1024, 4, 2)],
    ("avx2-float32", 2, "inference"): [(256, 8, 1), (512, 8, 2), (1024, 8, 4)],
    ("avx2-float32", 2, "training"): [(256, 4, 2), (512, 4, 1), (1024, 4, 2)],
    ("autocast-bfloat16", 1, "inference"): [(256, 8, 0), (512, 8, 0), (1024, 8, 0)],
    ("autocast-bfloat16", 1, "training"): [(256, 2, 0), (512, 0, 0), (1024, 1, 0)],
    ("autocast-bfloat16", 2, "inference"): [(256, 8, 1), (512, 8, 1), (1024, 8, 0)],
    ("autocast-bfloat16", 2, "training"): [(256, 2, 1), (512, 0, 0), (1024, 0, 0)],
    ("float32", 1, "inference"): [(256, 8, 2), (512, 8, 8), (1024, 8, 8)],
    ("float32", 1, "training"): [(256, 2, 2), (512, 1, 1), (1024, 4, 1)],
    ("float32", 2, "inference"): [(256, 8, 0), (512, 8, 8), (1024, 8, 8)],
    ("float32", 2, "training"): [(256, 4, 0), (512, 4, 1), (1024, 4, 1)],
}


#: The AVX2 kernels' entries carry this prefix on their key ("avx2-float32", ...): measured on
#: another CPU (benchmarks/results/small-batch-crossovers-avx2.json), another table.
_KEY_PREFIX = "avx2-" if ISA == "avx2" else ""


@torch.compiler.assume_constant_result
def _mode() -> str:
    """The switch's value now (a constant to torch.compile's tracing: a change needs a new compile)."""
    return os.environ.get(SWITCH, "auto")




def use_for(x, w_hh, lengths=None, autocast_dtype=None, training=False) -> bool:
    """Whether a float32 CPU layer call should run on these kernels (see :data:`SWITCH`).
    ``autocast_dtype`` bfloat16: the call is under CPU autocast with float32 weights (``x`` then
    stands for the float32 operand): the ``"autocast-bfloat16"`` crossovers. ``training``: a
    gradient will be wanted (forward and backward run here): the ``"training"`` crossovers."""
    mode = _mode()
    if mode == "0" or not available_for(x, w_hh):
        return False
    if mode == "1":
        return True
    if mode != "auto":
        raise ValueError(f"{SWITCH} must be one of {SWITCH_VALUES}, got {mode!r}")
    T, B = x.shape[0], x.shape[1]
    if type(T) is not int or type(B) is not int:
        # symbolic sizes (torch.export or torch.compile with dynamic shapes): one program serves
        # every T and B, so the plan must not depend on them; the whole-sequence route serves all
        return False
    H = w_hh.shape[1]
    key = "autocast-bfloat16" if autocast_dtype == torch.bfloat16 else str(x.dtype).replace("torch.", "")
    key = _KEY_PREFIX + key
    mode_key = "training" if training else "inference"

    def says(threads):
        for max_h, max_b1, max_bseq in CROSSOVERS.get((key, threads, mode_key), ()):
            if H <= max_h:
                return B <= (max_b1 if T == 1 else max_bseq)
        return False
    # the 1- and 2-thread entries must agree: a call then takes the same kernels, so the same
    # bits, at any thread count (the kernels' results are thread-count independent; a choice
    # that changed with the thread count would not be)
    return says(1) and says(2)
