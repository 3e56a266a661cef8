"""The LSTM weight gradients dW_ih = dG^T X and dW_hh = dG^T [h_0; Y[:-1]] as one packed GEMM
(``weight_gradient_gemm.h`` in ``_sequence_kernels``, AVX-512), bitwise independent of the thread
count. On CPUs with AVX2 and no AVX-512 (or with ``LSTM_FAST_CPU_ISA=avx2``): the same structure on
8-lane tiles (``weight_gradient_gemm_avx2.h`` in ``_small_batch_avx2_kernels``: same entry points,
its own summation order). At the d2l shape's products (dG (1120, 1024) against X (1120, 28) and
[h_0; Y[:-1]] (1120, 256)) on the AVX2 EPYC it took 8.1 ms at 1 thread and 4.2 ms at 2 (95% and 93%
of the torch.mm peak that CPU's throughput files record), the unpacked fixed-order product it
replaced 22.0 and 10.9 (both builds interleaved in one process; bitwise that product's results at
7 shapes), oneDNN on transposed operands 12.3 and 6.5 ms (an earlier run, same session).

Shapes: R = T*B rows (the reduction), dG (R, 4H) gate gradients; each right operand is given as
one or two row blocks (h_0 then Y[:-1], read in place: no concatenation)."""

import torch

from . import kernel_isa, workspace

_gemm, _ = kernel_isa.load("_sequence_kernels", "_small_batch_avx2_kernels")   # whose weight_grad runs here


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


def available() -> bool:
    return _gemm is not None
