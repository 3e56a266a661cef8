"""Matrix products for the CPU implementation: oneDNN where it is faster, BLAS otherwise.

Why this exists: on the CPUs we measured (AMD EPYC, AVX-512, torch 2.13 CPU wheel) ``torch.mm`` goes
to MKL and reaches ~200 GFLOP/s at the LSTM's shapes, while oneDNN's inner-product primitive with
prepacked weights reaches ~475 GFLOP/s on the same 2 cores (B32 H256 recurrent step: 47 us vs 126 us).
PyTorch's own CPU LSTM uses oneDNN, so to be at least as fast we use the same engine for the GEMMs
through ``torch.ops.mkldnn._linear_pointwise`` (the op inductor emits for CPU linears), and keep
the elementwise math and the algorithm our own.

oneDNN costs ~14 us per call whatever the size, so tiny products (and float64, which oneDNN does
not support, and every non-CPU tensor) go to ``torch.addmm`` -- on Intel CPUs with AVX-512, where
MKL's bits did not change with the thread count. Elsewhere every float32 product goes to oneDNN:
MKL's bits changed with the thread count on both AMD EPYCs measured (``benchmarks/blas_thread_bits.py``),
at the same 14 of 113 shapes probed, every one with 7 rows, from 7x3 @ 3x132 to 7x35000 @ 35000x1024:
with AVX2 (Zen 3; results/blas-thread-bits-cpu-amd-epyc.json; so did the stepwise layer's outputs)
and with AVX-512 (Zen 4; results/blas-thread-bits-cpu-amd-epyc-avx512.json; so did the
small-batch kernels' dx, computed here). oneDNN's did not at any on the AVX2 EPYC, and on the
AVX-512 one only where 35000 rows are summed into 3 or 33 columns (8 shapes: the K-split it takes
there; no LSTM call here sums that many rows into so few but the stepwise weight gradients of a
tiny layer). The cost is ~20 us per tiny product (8 -> 31 us at 7x33x132, AVX2 EPYC).
"""
import torch

from . import kernel_isa, workspace

try:
    from ._cell_kernel import transpose as _c_transpose
except ImportError:  # built without a C compiler
    _c_transpose = None


def cpu_vendor() -> str:
    """The CPU's vendor string ("GenuineIntel", "AuthenticAMD", ...), or "" where unknown."""
    return kernel_isa.cpu_info().get("vendor_id", "")


def _min_macs() -> int:
    """Products with fewer multiply-adds than this go to BLAS (below it oneDNN's fixed call cost
    wins); 0 where BLAS's results are not thread-count independent: every CPU but an Intel one
    with AVX-512 (see the module docstring). A property of the BLAS on the CPU, measured, not
    implied by the ISA: the AVX-512 AMD EPYC's MKL changed bits as the AVX2 one's did."""
    try:
        avx512 = torch.backends.cpu.get_cpu_capability().startswith("AVX512")
    except (AttributeError, RuntimeError):
        avx512 = False
    return 1 << 20 if avx512 and cpu_vendor() == "GenuineIntel" else 0


ONEDNN_MIN_MACS = _min_macs()


def _onednn_ops_present() -> bool:
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except (AttributeError, RuntimeError):
        return False


_ONEDNN = _onednn_ops_present()


def use_onednn(x: torch.Tensor, m: int, n: int, k: int) -> bool:
    """Whether an (m x k) @ (k x n) product on tensors like ``x`` should run on oneDNN."""
    return (_ONEDNN and x.device.type == "cpu" and x.dtype == torch.float32
            and m * n * k >= max(ONEDNN_MIN_MACS, 1))


def contiguous(t: torch.Tensor) -> torch.Tensor:
    """``t.contiguous()``, a copy into a reused buffer (:mod:`.workspace`: no page faults on a
    fresh multi-megabyte allocation) where one is needed. Only for operands used within a call."""
    if t.is_contiguous():
        return t
    if t.dim() == 2 and t.t().is_contiguous():      # a transposed view: the C transpose
        return transposed(t.t())
    return workspace.empty(tuple(t.shape), t.dtype).copy_(t)


def transposed(a: torch.Tensor) -> torch.Tensor:
    """``a.t().contiguous()`` for 2-D ``a`` (R, M), into a reused buffer; a contiguous float32
    ``a`` by the C transpose (8 x 8 register blocks: 0.3 ms for the d2l shape's (1120, 1024) dG
    on the AVX2 EPYC, torch's strided copy 0.85 ms)."""
    if _c_transpose is None or a.dtype != torch.float32 or not a.is_contiguous() or a.numel() == 0 \
            or not a.is_cpu:
        return workspace.empty((a.shape[1], a.shape[0]), a.dtype).copy_(a.t())
    out = workspace.empty((a.shape[1], a.shape[0]), a.dtype)
    _c_transpose(a.data_ptr(), a.shape[0], a.shape[1], out.data_ptr())
    return out


def linear(x: torch.Tensor, w: torch.Tensor, bias=None) -> torch.Tensor:
    """``x @ w.T + bias`` for 2-D ``x`` (M, K) and ``w`` (N, K)."""
    if use_onednn(x, x.shape[0], w.shape[0], w.shape[1]):
        return torch.ops.mkldnn._linear_pointwise(contiguous(x), contiguous(w), bias, "none", [], "")
    return torch.addmm(bias, x, w.t()) if bias is not None else x @ w.t()


def transpose_for_weight_grads(a: torch.Tensor) -> torch.Tensor:
    """``a`` (R, M) prepared as the left operand of :func:`matmul_tn`: a contiguous (M, R) copy
    when oneDNN will run the product (it needs the summed dimension innermost), else a view."""
    return transposed(a) if use_onednn(a, a.shape[1], a.shape[1], a.shape[0]) else a.t()


def matmul_tn(a: torch.Tensor, b: torch.Tensor, a_t=None) -> torch.Tensor:
    """``a.T @ b`` for a (R, M) and b (R, N): the weight-gradient product, summed over R = T*B rows.
    ``a_t``: :func:`transpose_for_weight_grads` of ``a`` when the caller already has it."""
    if use_onednn(a, a.shape[1], b.shape[1], a.shape[0]):
        a_t = transposed(a) if a_t is None or not a_t.is_contiguous() else a_t
        return linear(a_t, transposed(b))
    return a.t() @ b


class RecurrentMatmul:
    """``a @ w.T + add`` for one weight ``w`` (N, K) used at every step of a sequence.

    With oneDNN the weight is reordered into its blocked layout once, not once per step, and the
    addition runs in the GEMM's epilogue. ``add`` must be a contiguous (M, N) tensor.
    """

    def __init__(self, w: torch.Tensor, batch: int):
        self.onednn = use_onednn(w, batch, w.shape[0], w.shape[1])
        if self.onednn:
            self.packed = torch.ops.mkldnn._reorder_linear_weight(contiguous(w), batch)
        else:
            self.wt = w.t()

    def mm(self, a: torch.Tensor) -> torch.Tensor:
        """``a @ w.T``."""
        if self.onednn:
            return torch.ops.mkldnn._linear_pointwise(a, self.packed, None, "none", [], "")
        return a @ self.wt

    def __call__(self, a: torch.Tensor, add: torch.Tensor) -> torch.Tensor:
        if self.onednn:
            return torch.ops.mkldnn._linear_pointwise.binary(a, add, self.packed, None, "add")
        return torch.addmm(add, a, self.wt)
