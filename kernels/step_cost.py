"""The per-step cost model of the hidden-split kernels on an H100, which the dispatcher
(:func:`.lstm_config.pick_plan`) uses to choose a partition and a step protocol, and which
``benchmarks/gpu_model.py`` prints (with the batch-tiled path, the GEMMs and cuDNN) into
``benchmarks/GPU_MODEL.md``.

Shape legend: B batch, H hidden, HS hidden units and BB batch rows per program, KP = H padded to a
power of two, n = programs in the grid; gates i, f, g, o.

Every constant is in :data:`H100` with its unit and source: a published measurement, NVIDIA's
documentation, or "assumption" where no source was found (those are what a GPU run must pin
down; ``benchmarks/gpu_check.py`` times every protocol so the first run tests them).

One step of one program on the critical path (all programs run the same step in parallel):

* **exchange**: from the last producer's store of step t-1 to this program holding its operand
  (h_{t-1}, or the four gates of dG_{t+1} in the backward):
  - ``"ll"``: the store reaches L2 (half a round trip) and the next poll sees it (one round trip,
    on average half a poll period late): 1.5 L2 latencies, plus the tagged words (twice the
    payload bytes) over the SM's share of L2 bandwidth, plus one CTA reduction per polled tile;
  - ``"counter"``: the release fence (the step's stores acknowledged: one round trip), the arrival
    atomic (one), the arrivals of the n_h programs of the batch block serialised on one L2 line,
    the acquire poll that sees the last one (one round trip), then the load of the payload (one
    round trip plus bytes over bandwidth), plus two CTA barriers;
  - the backward's partial-sum layout (``cfg.mc > 0``): each program *writes* its partial for all
    H columns (B x H values in W_hh's dtype, as words under "ll") and reads its HS columns of every
    producer's, PC producers a poll: the bytes both ways over the SM's L2 share, one extra round
    trip per further poll of the sequential poll loop, one CTA reduction per poll ("ll");
* **W stream** (the streamed variant only): the program's W_hh slice from L2 every step;
* **stage**: the operand through shared memory (the dot reads it from there);
* **dot**: the recurrent matmul at the padded tile sizes, at the tensor-core rate its instruction
  gets (wgmma for the 16-bit and tf32 forward with W on chip and for the partial-sum backward,
  whose W_S^T is a loop-invariant shared-memory operand too; mma.sync otherwise, FMA for exact fp32);
* **cell**: activations, the cell update and the stores of h, c and the gates.
"""

# name: (value, unit, source)
H100 = {
    "sm_count": (132, "SMs", "NVIDIA H100 Tensor Core GPU Architecture whitepaper (H100 SXM5: 132 SMs)"),
    "clock_ghz": (1.98, "GHz", "H100 SXM5 maximum boost clock (NVIDIA H100 datasheet); converts cycle latencies"),
    "l2_latency_cycles": (281, "cycles", "L2 hit latency of a Hopper SM (GH200) by pointer chasing: "
                                         "github.com/markdewing/AI_kernels, latency/README.md"),
    "sm_l2_bytes_per_clk": (64, "B/clk", "assumption: what one SM pulls from L2 when few SMs read "
                                         "(Hopper's L1 fill path; not found measured)"),
    "l2_total_gbps": (5500.0, "GB/s", "assumption: all SMs together from L2 (kept from the first model; "
                                      "not found measured for H100 SXM)"),
    "smem_bytes_per_clk": (128, "B/clk", "shared memory bandwidth per SM: 32 banks x 4 B per clock "
                                         "(CUDA C++ Programming Guide, compute capability 9.0 shared memory)"),
    "bf16_dense_tflops": (989.4, "TFLOPS", "H100 SXM5 datasheet, BF16/FP16 tensor core, dense"),
    "tf32_dense_tflops": (494.7, "TFLOPS", "H100 SXM5 datasheet, TF32 tensor core, dense"),
    "fp32_fma_tflops": (66.9, "TFLOPS", "H100 SXM5 datasheet, FP32 (non-tensor)"),
    "fp64_tc_tflops": (66.9, "TFLOPS", "H100 SXM5 datasheet, FP64 tensor core"),
    "small_mma_efficiency": (0.35, "fraction", "assumption: a one-warpgroup wgmma with N = 16-64 and K up to "
                                               "1024 reaches this fraction of the SM's peak (issue and "
                                               "accumulator-dependency bound; kept from the first model)"),
    "hmma_vs_wgmma": (0.5, "ratio", "assumption: mma.sync (HMMA) throughput against wgmma (HGMMA) on Hopper "
                                    "(kept from the first model)"),
    "same_line_atomic_ns": (1.0, "ns", "assumption: atomics on one L2 line serialise at about one per clock "
                                       "(NVIDIA Kepler GK110 whitepaper: same-address atomics at one per clock; "
                                       "not found measured for Hopper)"),
    "cta_sync_us": (0.05, "us", "assumption: one bar.sync plus a CTA-wide reduction through shared memory "
                                "(~100 cycles)"),
    "cell_us": (0.3, "us", "assumption: the cell's activations, gate split and stores per step "
                           "(kept from the first model)"),
    "chunk_us": (0.05, "us", "assumption: the dependent-issue cost of one K chunk of the streamed variant "
                             "(kept from the first model)"),
}


def value(name):
    return H100[name][0]


def l2_latency_us():
    return value("l2_latency_cycles") / (value("clock_ghz") * 1e3)


def per_sm_l2_bytes_per_us(n_programs):
    """An SM's share of L2 bandwidth with ``n_programs`` SMs reading at once (bytes/us)."""
    one = value("sm_l2_bytes_per_clk") * value("clock_ghz") * 1e3
    return min(one, value("l2_total_gbps") * 1e3 / max(n_programs, 1))


def ll_row_words(H, itemsize):
    """8-byte words one gate row of H values takes in the "ll" exchange (32 payload bits each)."""
    return (H * itemsize * 8 + 31) // 32


def dot_flops_per_us(itemsize, precision, wgmma):
    """One SM's rate for the recurrent dot (flop/us)."""
    sms = value("sm_count")
    if itemsize == 2:
        peak = value("bf16_dense_tflops")
    elif itemsize == 8:
        peak = value("fp64_tc_tflops")
    elif precision == "tf32":
        peak = value("tf32_dense_tflops")
    else:
        return value("fp32_fma_tflops") / sms * 1e6 * 0.5        # exact fp32: FMA units, operands from registers
    rate = peak / sms * 1e6 * value("small_mma_efficiency")
    return rate if wgmma else rate * value("hmma_vs_wgmma")


def exchange_us(cfg, B, H, itemsize, direction):
    """The exchange term of one step (see the module docstring)."""
    n_h, n_b = cfg.grid(B, H)
    lat = l2_latency_us()
    bw = per_sm_l2_bytes_per_us(n_h * n_b)
    gates = 4 if direction == "bwd" else 1
    rows = min(cfg.bb, B)
    if getattr(cfg, "mc", 0):
        polls = -(-n_h // cfg.pc)
        # the partials travel in W_hh's dtype: as words (two 16-bit values or one float32 a word, a
        # float64 in two), or as the values themselves
        row = 8 * ll_row_words(H, itemsize) if cfg.protocol == "ll" else H * itemsize
        both_ways = 2 * rows * row                            # its partial written, its columns of all partials read
        if cfg.protocol == "ll":
            return 1.5 * lat + (polls - 1) * lat + both_ways / bw + polls * value("cta_sync_us")
        return 4 * lat + (polls - 1) * lat + n_h * value("same_line_atomic_ns") * 1e-3 + both_ways / bw + \
            2 * value("cta_sync_us")
    if cfg.protocol == "ll":
        words = gates * rows * ll_row_words(H, itemsize) * 8
        return 1.5 * lat + words / bw + gates * value("cta_sync_us")
    payload = gates * rows * H * itemsize
    return 4 * lat + n_h * value("same_line_atomic_ns") * 1e-3 + payload / bw + 2 * value("cta_sync_us")


def step_terms(cfg, B, H, itemsize, precision, direction):
    """{term: us} of one hidden-split step (see the module docstring)."""
    n_h, n_b = cfg.grid(B, H)
    bw = per_sm_l2_bytes_per_us(n_h * n_b)
    gates = 4 if direction == "bwd" else 1
    partial = direction == "bwd" and getattr(cfg, "mc", 0) > 0
    terms = {"exchange": exchange_us(cfg, B, H, itemsize, direction)}
    terms["w_stream"] = 0.0 if cfg.stationary else 4 * cfg.hs * H * itemsize / bw + -(-H // cfg.bk) * value("chunk_us")
    smem = value("smem_bytes_per_clk") * value("clock_ghz") * 1e3
    # the dot's per-step operand through shared memory: h_{t-1} / the four dG tiles, or (partial-sum
    # layout) the program's own [4*HS, BB] dG
    terms["stage"] = (4 * cfg.hs * cfg.bb if partial else gates * cfg.kp * cfg.bb) * itemsize / smem
    # wgmma (HGMMA in the sm_90 SASS, benchmarks/sm90/*.json) where the stationary slice is the dot's A
    # operand with M >= 64: the 16-bit and tf32 forward at 4*HS >= 64, the partial-sum backward at
    # MC >= 64; the column-layout backward and smaller tiles get mma.sync (HMMA)
    m_rows = cfg.mc if partial else 4 * cfg.hs
    wgmma = cfg.stationary and (itemsize == 2 or precision == "tf32") and m_rows >= 64 and (direction == "fwd" or partial)
    terms["dot"] = 2 * 4 * cfg.hs * cfg.kp * cfg.bb / dot_flops_per_us(itemsize, precision, wgmma)
    terms["cell"] = value("cell_us")
    return terms


def step_us(cfg, B, H, itemsize, precision, direction):
    """Predicted microseconds of one hidden-split step."""
    return sum(step_terms(cfg, B, H, itemsize, precision, direction).values())
