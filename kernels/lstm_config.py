"""Tile choice for the LSTM kernels: a small table keyed by (batch, hidden, dtype, dot precision),
cached per key.

Every entry was chosen from sm_90 compiles (registers and spills from triton's cuobjdump) with
triton 3.6 (the GPU image's) and 3.9: the test suite compiles every configuration this module can
return and fails if one needs local memory. Tiles that looked attractive but spill on sm_90, e.g. fp32 [32, 64] gate tiles (6 KB of
stack per thread), are not in the table.
"""
import functools
from dataclasses import dataclass

# (block_b, block_h, block_k, num_warps): spill-free on sm_90 for both kernels.
_TABLE = {
    # fp32 with exact ("ieee") dots: FMA-based tl.dot holds more per thread; smaller K tile.
    ("fp32-ieee", "small_b"): (16, 32, 16, 4),
    ("fp32-ieee", "large_b"): (32, 32, 32, 8),
    # fp32 with tf32 tensor-core dots, and the 2-byte dtypes.
    ("fp32-tf32", "small_b"): (16, 64, 32, 8),
    ("fp32-tf32", "large_b"): (16, 64, 32, 8),
    ("16bit", "small_b"): (16, 32, 32, 4),   # (16, 64, 32, 8) spills for fp16 without saved gates
    ("16bit", "large_b"): (32, 32, 32, 8),
}
LARGE_BATCH = 256


@dataclass(frozen=True)
class LSTMKernelConfig:
    block_b: int      # batch rows per program (>= 16: tl.dot's minimum)
    block_h: int      # hidden columns per tile (four gate accumulators of [block_b, block_h])
    block_k: int      # reduction tile of the recurrent matmul
    num_warps: int = 4
    num_stages: int = 1


def _fit(limit, n):
    """Smallest power of two >= n, at least 16 (tl.dot's minimum), at most ``limit``."""
    p = 16
    while p < n and p < limit:
        p *= 2
    return p


def _family(dtype, precision):
    import torch

    if dtype in (torch.float16, torch.bfloat16):
        return "16bit"
    return "fp32-tf32" if precision == "tf32" else "fp32-ieee"


@functools.lru_cache(maxsize=None)
def pick_config(B, H, dtype, precision="ieee") -> LSTMKernelConfig:
    """The table entry for this batch size and dtype, with tiles shrunk to a small H."""
    bb, bh, bk, warps = _TABLE[(_family(dtype, precision), "large_b" if B > LARGE_BATCH else "small_b")]
    bh, bk = _fit(bh, H), _fit(bk, H)
    if bh <= 16:   # a 16-wide tile (small H): 8 warps spread it too thin (spills seen on sm_90)
        warps = 4
    return LSTMKernelConfig(bb, bh, bk, num_warps=warps, num_stages=1)


def all_configs():
    """Every (config, dtype, precision) pick_config can return for sm_90 (float64 is for the
    interpreter only), for the compile test."""
    import torch

    seen = {}
    for dtype, precisions in ((torch.float32, ("ieee", "tf32")), (torch.bfloat16, ("ieee",)),
                              (torch.float16, ("ieee",))):
        for precision in precisions:
            for B in (1, LARGE_BATCH + 1):
                for H in (1, 17, 33, 65, 1024):
                    seen.setdefault((pick_config(B, H, dtype, precision), dtype, precision), None)
    return list(seen)


def dot_precision(dtype, device_type):
    """tf32 for float32 on CUDA when cuDNN's LSTM would use it too (torch.backends.cudnn.allow_tf32,
    on by default), so FusedLSTM matches nn.LSTM's numerics and speed class; exact otherwise."""
    import torch

    if dtype == torch.float32 and device_type == "cuda" and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return "ieee"
