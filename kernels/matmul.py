"""A plain tiled GEMM for the input projection and the weight/input gradients in TF32.

Shape legend: C (M, N) = A (M, K) @ B (K, N), any strides; fp32 accumulation.

Why: cuDNN's LSTM runs its float32 GEMMs in TF32 when its RNN precision allows it (the default),
but ``torch.matmul`` follows the *matmul* setting, which is exact fp32 by default, and changing
that global for the user is not ours to do (and on current torch, setting the fp32_precision API
makes later reads of the legacy flags raise). So the float32 GEMMs of a layer whose recurrent dots
run in TF32 run here, in TF32 as well, with ``tl.dot(..., input_precision="tf32")``. Other dtypes
and precisions stay on torch (cuBLAS), which already matches cuDNN there.
"""
import triton
import triton.language as tl

MATMUL_TILES = (128, 128, 32, 8, 3)     # BM, BN, BK, warps, stages: compiled spill-free for sm_90


@triton.jit
def _matmul_kernel(A, B, C, M, N, K, stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
                   DOT_PRECISION: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                   GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    n_m, n_n = tl.cdiv(M, BM), tl.cdiv(N, BN)
    group = pid // (GROUP_M * n_n)                     # grouped order: neighbours share B tiles in L2
    first_m = group * GROUP_M
    size_m = min(n_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * n_n)) % size_m
    pid_n = (pid % (GROUP_M * n_n)) // size_m
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    a_ptr = A + rm.to(tl.int64)[:, None] * stride_am + rk[None, :] * stride_ak
    b_ptr = B + rk[:, None] * stride_bk + rn.to(tl.int64)[None, :] * stride_bn
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        a = tl.load(a_ptr, mask=(rm < M)[:, None] & (k0 + rk < K)[None, :], other=0.0)
        b = tl.load(b_ptr, mask=(k0 + rk < K)[:, None] & (rn < N)[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
        a_ptr += BK * stride_ak
        b_ptr += BK * stride_bk
    c_ptr = C + rm.to(tl.int64)[:, None] * stride_cm + rn[None, :] * stride_cn
    tl.store(c_ptr, acc.to(C.dtype.element_ty), mask=(rm < M)[:, None] & (rn < N)[None, :])


def _tile(n, cap):
    p = 16
    while p < n and p < cap:
        p *= 2
    return p


def matmul(a, b, precision="tf32", out_dtype=None):
    """``a @ b`` for 2-D float32 tensors, with the dots in ``precision`` ("tf32" or "ieee")."""
    import torch

    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
        raise RuntimeError(f"matmul: shapes {tuple(a.shape)} and {tuple(b.shape)} cannot be multiplied")
    M, K = a.shape
    N = b.shape[1]
    c = torch.empty(M, N, dtype=out_dtype or a.dtype, device=a.device)
    if M == 0 or N == 0:
        return c
    if K == 0:
        return c.zero_()
    bm, bn, bk, warps, stages = MATMUL_TILES
    bm, bn = _tile(M, bm), _tile(N, bn)
    grid = (triton.cdiv(M, bm) * triton.cdiv(N, bn),)
    _matmul_kernel[grid](a, b, c, M, N, K, a.stride(0), a.stride(1), b.stride(0), b.stride(1), c.stride(0), c.stride(1),
                         DOT_PRECISION=precision, BM=bm, BN=bn, BK=bk, GROUP_M=8, num_warps=warps, num_stages=stages)
    return c
