"""A latency/bandwidth model of both Triton paths on an H100, written before any GPU run so that the
first run tests the model, not only the code.

    python benchmarks/gpu_model.py > benchmarks/GPU_MODEL.md

Every input is an assumption, named in ``H100`` below; the per-step cost of each path is a sum of
named terms (bytes moved over an assumed bandwidth, dependent L2 round trips, barrier cost, matrix
work at an assumed fraction of the tensor-core rate). The path and tiles are the dispatcher's own
choice (:func:`lstm_fast.kernels.lstm_config.pick_plan`). cuDNN is not modelled: its one published
point (B16 T1024 D768 H768 fp16, 5.19 ms forward + backward, i.e. 5.07 us per step) anchors the ratio
column, which is therefore given only where a model of cuDNN is not needed.
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

H100 = dict(
    sms=132,
    l2_round_trip_us=0.25,        # one dependent L2 access (load or atomic)
    barrier_us=1.0,               # release add + acquire spin seen by the last arrival + CTA syncs
    sm_l2_gbps=100.0,             # what one SM streams from L2 when few SMs read
    l2_total_gbps=5500.0,         # what all SMs together stream from L2
    smem_gbps=1000.0,             # one SM's shared-memory store/load rate for operand staging
    tc_tflops={"bfloat16": 990.0 * 0.35, "float32": 495.0 * 0.35},   # dense tensor-core peak x achieved
    hmma_factor=0.5,              # mma.sync (HMMA) vs wgmma (HGMMA) throughput
    cell_us=0.3,                  # gate activations, cell update, stores of h, c and gates
    launch_us=3.0,                # per kernel launch (step driver only; not used for persistent)
    gemm_eff=0.5,                 # input projection and weight-gradient GEMMs: fraction of peak
)
PUBLISHED_CUDNN_US_PER_STEP = {(16, 1024, 768, 768): 5190.0 / 1024}
# cuDNN's standard algorithm launches ~2 kernels per forward step (recurrent GEMM, cell) and ~3 per
# backward step; each costs a fixed GPU-side overhead plus reading W_hh at full-chip L2 bandwidth and
# its flops at `gemm_eff` of peak. The fixed overhead is calibrated so the model reproduces the
# published point (B16 H768 fp16: 5.07 us per step forward + backward).
CUDNN_KERNELS = {"fwd": 2, "bwd": 3}


def _per_sm_bw(n_programs):
    return min(H100["sm_l2_gbps"], H100["l2_total_gbps"] / max(n_programs, 1)) * 1e3   # bytes/us


def hidden_split_us(B, H, dtype, direction):
    """Predicted us/step of the hidden-split path the dispatcher picks (None: it picks batch-tiled)."""
    import torch

    from lstm_fast.kernels.lstm_config import pick_plan
    p = pick_plan(B, H, getattr(torch, dtype), "cuda", H100["sms"], direction=direction)
    if p.path != "hidden_split":
        return None, p
    cfg = p.config
    n_h, n_b = cfg.grid(B, H)
    elt = 2 if dtype == "bfloat16" else 4
    bw = _per_sm_bw(n_h * n_b)
    operand = (4 if direction == "bwd" else 1) * cfg.kp * cfg.bb * elt      # h^T, or dG^T (all four gates)
    load = H100["l2_round_trip_us"] + operand / bw
    if not cfg.stationary:          # the W_hh slice from L2 every step, in K chunks
        load += 4 * cfg.hs * H * elt / bw + (-(-H // cfg.bk)) * 0.05
    stage = operand / (H100["smem_gbps"] * 1e3)
    flops = 2 * 4 * cfg.hs * cfg.kp * cfg.bb
    rate = H100["tc_tflops"][dtype] / H100["sms"] * 1e6                     # flop/us per SM
    wgmma = direction == "fwd" and elt == 2 and cfg.stationary
    dot = flops / (rate * (1.0 if wgmma else H100["hmma_factor"]))
    return H100["barrier_us"] + load + stage + dot + H100["cell_us"], p


def batch_tiled_us(B, H, dtype, direction):
    elt = 2 if dtype == "bfloat16" else 4
    programs = -(-B // 16)
    w = 4 * H * H * elt
    return w / _per_sm_bw(programs) + 2 * H100["l2_round_trip_us"] + H100["cell_us"] * (2 if direction == "bwd" else 1)


def _cudnn_variable_us(B, H, dtype, direction):
    elt = 2 if dtype == "bfloat16" else 4
    w = 4 * H * H * elt / (H100["l2_total_gbps"] * 1e3)
    flops = 2 * B * 4 * H * H / (H100["tc_tflops"][dtype] / 0.35 * H100["gemm_eff"] * 1e6)
    return w + flops


def _cudnn_kernel_overhead_us():
    B, T, D, H = 16, 1024, 768, 768
    rest = sum(_cudnn_variable_us(B, H, "bfloat16", d) for d in ("fwd", "bwd")) + gemm_us_per_step(B, D, H, "bfloat16")
    return (PUBLISHED_CUDNN_US_PER_STEP[(B, T, D, H)] - rest) / sum(CUDNN_KERNELS.values())


def cudnn_us(B, D, H, dtype, direction):
    """Modelled cuDNN us/step (the big GEMMs excluded: both implementations run those alike)."""
    return CUDNN_KERNELS[direction] * _cudnn_kernel_overhead_us() + _cudnn_variable_us(B, H, dtype, direction)


def gemm_us_per_step(B, D, H, dtype):
    """Input projection (forward) plus dx, dW_ih, dW_hh (backward), per step."""
    flops = 2 * B * 4 * H * (D + D + D + H)
    return flops / (H100["tc_tflops"][dtype] / 0.35 * H100["gemm_eff"] * 1e6)


def main():
    from lstm_fast.d2l.bench import EXTRA_GPU_SHAPES, GRID

    print("# GPU model: predicted microseconds per step on an H100, before any GPU run\n")
    print("Written by `python benchmarks/gpu_model.py > benchmarks/GPU_MODEL.md`; the assumptions are the")
    print("`H100` table in that script:\n")
    for k, v in H100.items():
        print(f"- `{k}` = {v}")
    print("\nPer step, hidden-split = barrier + one L2 round trip + the step's operand (h_{t-1}, or all")
    print("four gates of dG_{t+1} in the backward) over the per-SM share of L2 bandwidth + staging it in")
    print("shared memory + the dot (wgmma for the 16-bit forward, mma.sync otherwise) + the cell; the")
    print("streamed variant (marked *, where the slice does not fit on chip) adds its W_hh slice over")
    print("the same bandwidth and 0.05 us per K chunk.")
    print("Batch-tiled = all of W_hh over one SM's L2 bandwidth (every program streams it every step)")
    print("+ two round trips + the cell. Training adds the big GEMMs (input projection, dx, dW) at")
    print("`gemm_eff` of peak, spread per step. `-` = the dispatcher does not pick hidden-split there")
    print("(the slice does not fit on chip, or the grid would exceed the SMs).\n")
    print("cuDNN is modelled too (the `CUDNN_KERNELS` note in the script): a fixed cost per kernel launch")
    print(f"of {_cudnn_kernel_overhead_us():.2f} us, calibrated so the model reproduces the one published point")
    print("(B16 T1024 D768 H768 fp16: 5.19 ms forward + backward, 5.07 us per step), plus W_hh over the")
    print("whole L2 and the recurrent flops. The ratio columns are the predictions the first GPU run")
    print("tests against the targets: training >= 1.5x cuDNN at B <= 32 (H in 256/512/1024, T in 35/512),")
    print(">= 1.0x elsewhere; inference >= 2.0x at B <= 8.\n")
    print("| dtype | B | T | D | H | paths (fwd/bwd) | hidden-split fwd | hidden-split bwd | batch-tiled fwd | batch-tiled bwd "
          "| GEMMs | train us/step | cuDNN train us/step (model) | predicted train ratio | predicted inference ratio "
          "| target |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    shapes = [(16, 1024, 768, 768)] + [s for s in EXTRA_GPU_SHAPES + GRID if s != (16, 1024, 768, 768)]
    for dtype in ("bfloat16", "float32"):
        for (B, T, D, H) in shapes:
            hf, pf = hidden_split_us(B, H, dtype, "fwd")
            hb, pb = hidden_split_us(B, H, dtype, "bwd")
            tag = lambda p: p.path + ("*" if p.path == "hidden_split" and not p.config.stationary else "")  # noqa: E731
            tf, tb = batch_tiled_us(B, H, dtype, "fwd"), batch_tiled_us(B, H, dtype, "bwd")
            g = gemm_us_per_step(B, D, H, dtype)
            train = (hf if hf is not None else tf) + (hb if hb is not None else tb) + g
            fmt = lambda v: "-" if v is None else f"{v:.1f}"   # noqa: E731
            ours_fwd = hf if hf is not None else tf
            cu_fwd, cu_bwd = cudnn_us(B, D, H, dtype, "fwd"), cudnn_us(B, D, H, dtype, "bwd")
            cu_train = cu_fwd + cu_bwd + g
            g_fwd = g / 4                       # the forward's share: the input projection
            target = ("train >= 1.5" if B <= 32 and (B, T, D, H) in GRID else "train >= 1.0") + \
                (", infer >= 2.0" if B <= 8 else "")
            print(f"| {dtype} | {B} | {T} | {D} | {H} | {tag(pf)} / {tag(pb)} | {fmt(hf)} | {fmt(hb)} | {tf:.1f} | {tb:.1f} | "
                  f"{g:.2f} | {train:.1f} | {cu_train:.1f} | {cu_train / train:.2f} | "
                  f"{(cu_fwd + g_fwd) / (ours_fwd + g_fwd):.2f} | {target} |")
    print("\nWhat would falsify it: a hidden-split step far above ~2-4 us at B <= 64 (barrier or L2 latency")
    print("underestimated, or W_hh not really staying in shared memory: see benchmarks/sm90_report.py's")
    print("w_loads_in_time_loop), or batch-tiled steps far from W_hh bytes / ~100 GB/s.")


if __name__ == "__main__":
    main()
