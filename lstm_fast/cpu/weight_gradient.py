"""The LSTM weight gradients dW_ih = dG^T X and dW_hh = dG^T [h_0; Y[:-1]] as one packed GEMM
(``weight_gradient_gemm.h`` in ``_sequence_kernels``, AVX-512), bitwise independent of the thread
count. On CPUs with AVX2 and no AVX-512 (or with ``LSTM_FAST_CPU_ISA=avx2``): the fixed-order
GEMM of ``_small_batch_avx2_kernels`` (same entry points, its own summation order).

Shapes: R = T*B rows (the reduction), dG (R, 4H) gate gradients; each right operand is given as
one or two row blocks (h_0 then Y[:-1], read in place: no concatenation)."""
import os

import torch

from . import workspace
from .matmul import matmul_tn, transpose_for_weight_grads

def _gemm_module():
    if os.environ.get("LSTM_FAST_CPU_ISA") != "avx2":
        try:
            from . import _sequence_kernels
            if _sequence_kernels.available():
                return _sequence_kernels
        except ImportError:
            pass
    try:
        from . import _small_batch_avx2_kernels
        if _small_batch_avx2_kernels.available():
            return _small_batch_avx2_kernels
    except ImportError:
        pass
    return None


_gemm = _gemm_module()   # the module whose weight_grad runs here


def _part(blocks, R):
    """(p0, rows0, p1, cols) of a right operand given as 1 or 2 contiguous float32 (rows, cols)
    CPU row blocks whose rows add up to R."""
    if not 1 <= len(blocks) <= 2:
        raise ValueError("a right operand is one or two row blocks")
    cols = blocks[0].shape[1]
    for b in blocks:
        if b.dim() != 2 or b.shape[1] != cols or b.dtype != torch.float32 or b.device.type != "cpu" \
                or not b.is_contiguous():
            raise ValueError("row blocks must be contiguous float32 CPU (rows, cols) tensors of one width")
    if sum(b.shape[0] for b in blocks) != R:
        raise ValueError(f"the row blocks hold {sum(b.shape[0] for b in blocks)} rows, dG {R}")
    b0 = blocks[0]
    b1 = blocks[1] if len(blocks) == 2 else None
    return b0.data_ptr(), b0.shape[0], (b1.data_ptr() if b1 is not None else None), cols


def weight_gradients(dG, a0, a1=None, nthreads=None):
    """(dG^T A0, dG^T A1 or None): dG (R, N) contiguous float32 CPU; a0, a1: lists of 1 or 2 row
    blocks (rows summing to R) of one width each. Needs a kernel module (``available()``)."""
    if dG.dim() != 2 or dG.dtype != torch.float32 or dG.device.type != "cpu" or not dG.is_contiguous():
        raise ValueError("dG must be a contiguous float32 CPU (R, N) tensor")
    R, N = dG.shape
    p0 = _part(a0, R)
    p1 = _part(a1, R) if a1 else (None, 0, None, 0)
    M0, M1 = p0[3], p1[3]
    out0 = torch.empty(N, M0, dtype=dG.dtype)
    out1 = torch.empty(N, M1, dtype=dG.dtype) if a1 else None
    if M0 + M1 == 0 or N == 0:   # empty outputs
        return out0, out1
    nthreads = max(1, torch.get_num_threads() if nthreads is None else nthreads)
    scratch = workspace.empty((_gemm.weight_grad_scratch(N, M0 + M1, R, nthreads),), dG.dtype)
    _gemm.weight_grad(dG.data_ptr(), N, R, *p0, *p1, out0.data_ptr(),
                                  None if out1 is None else out1.data_ptr(), scratch.data_ptr(), nthreads)
    return out0, out1


def weight_gradients_onednn(dG, a0, a1=None):
    """:func:`weight_gradients` on oneDNN (``matmul.matmul_tn``: dG transposed once by the C
    transpose, each right operand joined and transposed in pooled buffers): for the AVX2
    whole-sequence route, where the fixed-order AVX2 product is 1.9x slower (d2l shape
    dW_ih + dW_hh: 23.0 vs 12.3 ms at 1 thread, 14.1 vs 6.5 ms at 2, AVX2 EPYC, interleaved).
    oneDNN's bits did not change with the thread count at any of the 113 shapes
    ``benchmarks/blas_thread_bits.py`` probed on that CPU (the weight-gradient shapes' sizes
    included); the stepwise route relies on the same."""
    dGT = transpose_for_weight_grads(dG)

    def product(blocks):
        b = blocks[0] if len(blocks) == 1 else torch.cat(
            blocks, out=workspace.empty((sum(x.shape[0] for x in blocks), blocks[0].shape[1]), dG.dtype))
        return matmul_tn(dG, b, a_t=dGT)

    return product(a0), (product(a1) if a1 else None)


def available() -> bool:
    return _gemm is not None
