"""Which kernel path runs a layer, and its tiles.

Two paths (see :func:`pick_plan`):

* ``"hidden_split"`` (:mod:`.lstm_fwd_hidden_split`, :mod:`.lstm_bwd_hidden_split`): W_hh split by
  hidden units across up to SM-count programs and kept on chip for all T; chosen wherever a
  program's slice fits the on-chip budget and the grid fits the SMs (small and medium batches).
  The partition (units and batch rows per program) and the step protocol ("ll" tagged words or
  the "counter" barrier, :mod:`.grid_sync`) are those with the lowest modelled step time
  (:mod:`.step_cost`) among the ones that compiled without spills on sm_90;
* ``"batch_tiled"`` (:mod:`.lstm_fwd`, :mod:`.lstm_bwd`): each program owns a block of batch rows
  and streams W_hh from L2 every step; everything else (large batches, very large H, the
  projected first step where W_hh is not square).

The batch-tiled tiles come from a small table keyed by (batch, hidden, dtype, dot precision),
cached per key.

Every entry was chosen from sm_90 compiles (registers and spills from triton's cuobjdump) with
triton 3.6 (the GPU image's) and 3.9: the test suite compiles every configuration this module can
return and fails if one needs local memory. Tiles that looked attractive but spill on sm_90, e.g. fp32 [32, 64] gate tiles (6 KB of
stack per thread), are not in the table.
"""
import dataclasses
import functools
from dataclasses import dataclass

# (block_b, block_h, block_k, num_warps): spill-free on sm_90 for both kernels.
_TABLE = {
    # fp32 with exact ("ieee") dots: FMA-based tl.dot holds more per thread; smaller K tile.
    ("fp32-ieee", "small_b"): (16, 32, 16, 8),   # 4 warps spilled 24 B once offsets were 64-bit
    ("fp32-ieee", "large_b"): (32, 32, 32, 8),
    # fp32 with tf32 tensor-core dots, and the 2-byte dtypes.
    ("fp32-tf32", "small_b"): (16, 64, 32, 8),
    ("fp32-tf32", "large_b"): (16, 64, 32, 8),
    ("16bit", "small_b"): (16, 32, 32, 4),   # (16, 64, 32, 8) spills for fp16 without saved gates
    ("16bit", "large_b"): (32, 32, 16, 8),      # block_k 32 spilled 24 B with triton 3.6 (64-bit offsets)
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
    """Every (config, dtype, precision) pick_config can return on sm_90, for the sm_90 report.
    float64 included: a float64 layer on a GPU (gradcheck) runs the batch-tiled kernels."""
    import torch

    seen = {}
    for dtype, precisions in ((torch.float32, ("ieee", "tf32")), (torch.bfloat16, ("ieee",)),
                              (torch.float16, ("ieee",)), (torch.float64, ("ieee",))):
        for precision in precisions:
            for B in (1, LARGE_BATCH + 1):
                for H in (1, 17, 33, 65, 1024):
                    seen.setdefault((pick_config(B, H, dtype, precision), dtype, precision), None)
    return list(seen)


def cudnn_rnn_allows_tf32():
    """Whether cuDNN's LSTM would use TF32 for float32 now. Reads the fp32_precision API where this
    torch has it (cudnn.rnn, then cudnn, then the generic setting; "none" inherits) and the legacy
    ``cudnn.allow_tf32`` only when none of them decides, tolerating the RuntimeError torch raises
    on a legacy read after the new API was used. Never sets anything."""
    import torch

    cudnn = torch.backends.cudnn
    for holder in (getattr(cudnn, "rnn", None), cudnn, torch.backends):
        precision = getattr(holder, "fp32_precision", None) if holder is not None else None
        if precision in ("tf32", "ieee"):
            return precision == "tf32"
    try:
        return bool(cudnn.allow_tf32)
    except RuntimeError:   # mixed legacy/new API state: torch's own default is TF32 for cuDNN
        return True


def dot_precision(dtype, device_type):
    """tf32 for float32 on CUDA when cuDNN's LSTM would use it too (:func:`cudnn_rnn_allows_tf32`),
    so FusedLSTM matches nn.LSTM's numerics and speed class; exact otherwise."""
    import torch

    if dtype == torch.float32 and device_type == "cuda" and cudnn_rnn_allows_tf32():
        return "tf32"
    return "ieee"


# ---------------------------------------------------------------- hidden-split partition
HS_MAX_BATCH = 64                 # batch rows per hidden-split program (the dot's N)
HS_MAX_UNITS = 64                 # hidden units per program
MAX_TILE = 1024                   # HS * BB: the [HS, BB] cell tiles (four gates, c, h) in registers;
                                  # 32 x 64 spilled on sm_90 with triton 3.6
# On-chip bytes a hidden-split program may use: its stationary W_hh slice (4*HS x KP; Triton
# keeps a loop-invariant dot operand in shared memory, loaded once) plus the per-step operand
# (h_{t-1}^T, or one gate of dG_{t+1}^T: KP x BB). 216 KB of the H100's 227 KB per block.
# Exact fp32 dots ("ieee") run on FMA units with both operands in registers, so their budget is
# what 4-8 warps hold without spilling. Both chosen from sm_90 compiles (benchmarks/sm90_report.py:
# no spills, shared memory within the limit).
SMEM_BUDGET = 216 * 1024
FMA_BUDGET = 48 * 1024
# The backward's stationary operand is W_hh's column slice as the A operand of mma.sync (HMMA),
# which lives in registers beside one gate's [KP, BB] tile of dG: what compiled without spills on
# sm_90 (benchmarks/sm90_report.py) is at most 128 KB of the two for 16-bit (8 warps) and 48 KB
# for tf32. Exact fp32 dots spilled even at 16 KB, so an "ieee" float32 backward is batch-tiled.
BWD_BUDGET = {2: 128 * 1024, 4: 48 * 1024, 8: 1 << 40}
H100_SM_COUNT = 132               # what the interpreter and the sm_90 report assume
# The "ll" protocol holds one polled tile of tagged words ([BB, KP/2] for 16-bit) in registers:
# 64 KB compiled without spills on sm_90 (8 warps), 128 KB spilled (benchmarks/sm90_report.py).
LL_TILE_BUDGET = 64 * 1024
# Where the W slice is an mma.sync A operand (the backward; a forward slice under 64 gate rows)
# it lives in registers beside that tile: W + words <= 64 KB compiled without spills (16-bit and
# tf32), 96 KB spilled; exact fp32 (FMA) dots spilled with any tile, so they never use "ll".
LL_REG_BUDGET = 64 * 1024
PARTIAL_MC = 256                  # rows of W_S^T per stationary chunk of the backward's partial-sum layout

forced_path = None                # tests: "hidden_split" or "batch_tiled" overrides pick_plan
forced_driver = None              # tests: "step" or "persistent" overrides the hidden-split driver
forced_streamed = False           # tests: with forced_path, stream W_hh instead of keeping it on chip
forced_protocol = None            # tests, gpu_check: "ll" or "counter" overrides the hidden-split step protocol
forced_mc = None                  # tests: (mc, pc) puts a forced stationary backward in the partial-sum layout
                                  # with chunks of min(mc, KP) rows (at least KP / 4), pc producers a poll


@dataclass(frozen=True)
class HiddenSplitConfig:
    hs: int           # hidden units per program (4*hs gate rows: the dot's M)
    bb: int           # batch rows per program (the dot's N, >= 16)
    kp: int           # H padded to a power of two (the dot's K)
    num_warps: int = 4
    stationary: bool = True   # W_hh slice on chip for all T; False: streamed from L2 in chunks
    bk: int = 32              # K chunk of the streamed variant
    protocol: str = "ll"      # step exchange (kernels/grid_sync.py): "ll" words (stationary only) or "counter"
    mc: int = 0               # backward only: 0 = column layout (dG exchanged); > 0 = partial-sum layout
                              # (kernels/lstm_bwd_hidden_split.py): the row slice held as KP // mc <= 4
                              # chunks of mc rows of W_S^T (the dot's M), partials exchanged in W_hh's dtype
    pc: int = 1               # partial-sum layout: producers whose partials one poll reads (power of two)

    def grid(self, B, H):
        return (-(-H // self.hs), -(-B // self.bb))

    def launch_options(self, precision):
        """The constexprs and launch options of the hidden-split kernels for this partition."""
        return dict(STATIONARY=self.stationary, DOT_PRECISION=precision, HS=self.hs, BB=self.bb, KP=self.kp,
                    BK=self.bk, PROTOCOL=self.protocol, num_warps=self.num_warps, num_stages=1)

    def on_chip_bytes(self, itemsize):
        """Stationary W_hh slice plus the per-step operand (see SMEM_BUDGET)."""
        return (4 * self.hs * self.kp + self.kp * self.bb) * itemsize


def _pow2(n, lo=16):
    p = lo
    while p < n:
        p *= 2
    return p


def _ll_tile_bytes(cfg, itemsize):
    """Bytes of the tagged words one "ll" poll holds in registers: [BB, KP * bits / 32] words."""
    return cfg.bb * (cfg.kp * itemsize * 8 // 32) * 8


def _partial_candidates(hs, bb, kp, B, H, itemsize):
    """The backward's partial-sum layout at this partition (see HiddenSplitConfig.mc), with each
    protocol: W_S^T [KP, 4HS] in shared memory within SMEM_BUDGET beside the staged dG operand,
    at most 4 chunks of MC = min(KP, 256) rows (the dot's M: wgmma's 64-row multiples), one
    chunk's published partial ([BB, MC] 8-byte words) within LL_TILE_BUDGET for both protocols
    (BB <= 32 at MC 256: with BB 64 the float32 counter variant spilled 64 B (bf16 HS16) and 24 B
    (tf32 HS8) in its persistent kernel with triton 3.9), and one poll ([BB, PC * HS] x 8 B, PC
    producers; x 4 B for 16-bit partials) within 32 KB of registers. The cell tiles are not held
    beside W in registers here (W is in shared memory), so the column layout's HS * BB <= 512 does
    not apply; MAX_TILE does."""
    mc = min(kp, PARTIAL_MC)
    if kp // mc > 4 or 4 * hs * kp * itemsize + 4 * hs * bb * itemsize > SMEM_BUDGET:
        return []
    n_h = -(-H // hs)
    # one poll's tile in registers: 8-byte words a value for 32/64-bit partials; 16-bit ones take half
    # a word under ll and are summed as float32 under counter (4 B a value either way), so twice the
    # producers a poll and half the sequential polls of a step
    value_bytes = 4 if itemsize == 2 else 8
    pc = 1
    while pc < n_h and 2 * pc * hs * bb * value_bytes <= 32 * 1024:
        pc *= 2
    warps = 4 if 4 * hs * kp * itemsize <= 32 * 1024 and mc * bb <= 2048 else 8
    if bb * mc * 8 > LL_TILE_BUDGET:
        return []
    return [HiddenSplitConfig(hs, bb, kp, num_warps=warps, protocol=p, mc=mc, pc=pc) for p in ("ll", "counter")]


def _candidates(B, H, itemsize, sm_count, precision, direction):
    """Every (stationary) partition and protocol whose grid fits ``sm_count``, whose W_hh slice fits
    on chip and whose tiles compiled without spills on sm_90; else the streamed ones."""
    kp = _pow2(H)
    fma = precision == "ieee" and itemsize == 4
    stationary, streamed = [], []
    hs = 16 if itemsize == 2 else 4   # 4*hs = 64 rows: wgmma's M for 16-bit; 16: tl.dot's minimum
    while hs <= HS_MAX_UNITS:
        bb = 16
        while bb <= _pow2(min(B, HS_MAX_BATCH)):
            if hs * bb <= MAX_TILE and -(-H // hs) * -(-B // bb) <= sm_count:
                w_bytes = 4 * hs * kp * itemsize
                if direction == "bwd":
                    # hs * bb <= 512: the cell's [HS, BB] tiles sit beside W in registers; 32 x 32
                    # (64 KB of W at H 256) spilled 56 B with triton 3.6 (benchmarks/sm90/triton-3.6.0.json)
                    fits = not fma and w_bytes + kp * bb * itemsize <= BWD_BUDGET[itemsize] and hs * bb <= 512
                    warps = 4 if w_bytes <= 16 * 1024 else 8
                else:
                    fits = (4 * hs * kp + kp * bb) * itemsize <= (FMA_BUDGET if fma else SMEM_BUDGET)
                    warps = 4 if w_bytes <= 32 * 1024 else 8
                if fits:
                    cfg = HiddenSplitConfig(hs, bb, kp, num_warps=warps, protocol="counter")
                    stationary.append(cfg)
                    ll = _ll_tile_bytes(cfg, itemsize)
                    w_in_registers = direction == "bwd" or 4 * hs < 64     # mma.sync A operand, not wgmma's smem
                    if not fma and ll <= LL_TILE_BUDGET and (not w_in_registers or ll + w_bytes <= LL_REG_BUDGET):
                        stationary.append(dataclasses.replace(
                            cfg, protocol="ll", num_warps=8 if ll > 32 * 1024 else warps))
                if direction == "bwd" and not fma:
                    stationary += _partial_candidates(hs, bb, kp, B, H, itemsize)
                if not fits and hs >= 16 and not fma:
                    # 8 warps and 32-wide K chunks: 4 warps or 64-wide chunks spilled on sm_90; so did
                    # slices under 16 units (a dot M below the MMA's 16 rows) and exact fp32 (FMA) dots
                    streamed.append(HiddenSplitConfig(hs, bb, kp, num_warps=8, stationary=False, bk=32,
                                                      protocol="counter"))
            bb *= 2
        hs *= 2
    return stationary or streamed


def _hidden_split_config(B, H, itemsize, sm_count, precision, direction="fwd", unlimited=False):
    """The partition and step protocol with the lowest modelled step time
    (:func:`.step_cost.step_us`; ties: fewer programs) among :func:`_candidates`: W_hh on chip where
    a slice fits, else streamed from L2 (each program still reads only its own slice, spread over
    n_h SMs, instead of every program reading all of W_hh as in the batch-tiled kernels; not for
    exact fp32 dots); None (batch-tiled) when nothing fits. ``unlimited`` (forced plans, tests):
    the smallest slice whose grid fits, on chip whatever its size, "ll"."""
    from . import step_cost

    if unlimited:
        kp, bb = _pow2(H), _pow2(min(B, HS_MAX_BATCH))
        hs = 16 if itemsize == 2 else 4
        while hs < HS_MAX_UNITS and (-(-H // hs) * -(-B // bb) > sm_count or hs * bb > MAX_TILE):
            hs *= 2
        return HiddenSplitConfig(hs, bb, kp, num_warps=4 if 4 * hs * kp * itemsize <= 32 * 1024 else 8)
    cands = _candidates(B, H, itemsize, sm_count, precision, direction)
    if not cands:
        return None
    return min(cands, key=lambda c: (round(step_cost.step_us(c, B, H, itemsize, precision, direction), 3),
                                     c.grid(B, H)[0] * c.grid(B, H)[1], c.protocol != "ll"))


@dataclass(frozen=True)
class LSTMPlan:
    path: str                     # "hidden_split" or "batch_tiled"
    config: object                # HiddenSplitConfig or LSTMKernelConfig
    precision: str                # tl.dot input_precision: "ieee" or "tf32"


def pick_plan(B, H, dtype, device_type, sm_count=H100_SM_COUNT, square=True, direction="fwd") -> LSTMPlan:
    """The path and tiles for one layer: hidden-split wherever a program's slice of W_hh fits on
    chip (``SMEM_BUDGET``) with the grid within ``sm_count`` programs (all co-resident) and W_hh
    is square; batch-tiled otherwise. ``direction`` "fwd" or "bwd": each has its own on-chip limit,
    and both read and write the same saved tensors, so they may take different paths. float64 (interpreter only) is batch-tiled unless forced
    (``forced_path``, for tests, also lifts the on-chip budget)."""
    import torch

    precision = dot_precision(dtype, device_type)
    hs = None
    if square and forced_path != "batch_tiled" and (dtype != torch.float64 or forced_path):
        itemsize = torch.empty(0, dtype=dtype).element_size()
        hs = _hidden_split_config(B, H, itemsize, sm_count, precision, direction, unlimited=forced_path is not None)
    if hs is not None and forced_path and forced_streamed:
        hs = dataclasses.replace(hs, stationary=False, num_warps=8, bk=32, protocol="counter")
    if hs is not None and forced_protocol and (hs.stationary or forced_protocol == "counter"):
        hs = dataclasses.replace(hs, protocol=forced_protocol)
    if hs is not None and forced_path and forced_mc and direction == "bwd" and hs.stationary:
        hs = dataclasses.replace(hs, mc=max(hs.kp // 4, min(forced_mc[0], hs.kp)), pc=forced_mc[1])
    if hs is not None:
        return LSTMPlan("hidden_split", hs, precision)
    return LSTMPlan("batch_tiled", pick_config(B, H, dtype, precision), precision)


def all_plans():
    """Every hidden-split (direction, config, dtype, precision) pick_plan can return on an H100 for
    the grid's and the published shapes' batch sizes, at each H in {256, 512, 768, 1024}, with the
    first B that picks it, for the sm_90 report."""
    import torch

    seen = {}
    for dtype, precisions in ((torch.bfloat16, ("ieee",)), (torch.float16, ("ieee",)),
                              (torch.float32, ("ieee", "tf32"))):
        itemsize = torch.empty(0, dtype=dtype).element_size()
        for B in (1, 8, 16, 32, 64, 128, 512):
            for H in (256, 512, 768, 1024):
                for precision in precisions:
                    for direction in ("fwd", "bwd"):
                        cfg = _hidden_split_config(B, H, itemsize, H100_SM_COUNT, precision, direction)
                        if cfg is not None:
                            seen.setdefault((direction, cfg, dtype, precision, H), B)
    return [(direction, cfg, dtype, precision, B, H) for (direction, cfg, dtype, precision, H), B in seen.items()]
