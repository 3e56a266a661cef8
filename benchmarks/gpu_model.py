"""A latency/bandwidth model of the Triton paths and of cuDNN under PyTorch on an H100, written before
any GPU run so that the first run tests the model, not only the code.

    python benchmarks/gpu_model.py > benchmarks/GPU_MODEL.md

The hidden-split step (both protocols) is :mod:`lstm_fast.kernels.step_cost`, the same model the
dispatcher uses to pick a partition and protocol; this script adds the batch-tiled path, the
GEMMs both implementations run, the fixed launches of a call, and cuDNN: which algorithm PyTorch
asks for at each shape (``aten/src/ATen/native/cudnn/RNN.cpp``, ``get_algo``) and, for the
standard algorithm, its per-step kernels as launches and GEMMs. Every constant is in a table with
its source (``H100`` in step_cost, ``HOST`` here); "assumption" marks the ones no source was found
for, which is what the first GPU run (``benchmarks/gpu_check.py``) pins down.
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lstm_fast.kernels import step_cost  # noqa: E402
from lstm_fast.kernels.step_cost import H100, l2_latency_us, per_sm_l2_bytes_per_us  # noqa: E402

# name: (value, unit, source)
HOST = {
    "launch_us": (2.5, "us", "assumption: host cost of one kernel launch issued in a loop (cudaLaunchKernel "
                             "plus the library's own work), so back-to-back short kernels run at this rate; "
                             "NVIDIA's 'Getting Started with CUDA Graphs' blog shows per-kernel launch overhead "
                             "of the same order (microseconds) for short kernels"),
    "kernel_floor_us": (2.0, "us", "assumption: GPU-side duration floor of a small GEMM or pointwise kernel "
                                   "(launch, prologue, one wave, drain)"),
    "gemm_efficiency": (0.5, "fraction", "assumption: the big GEMMs (input projection, dx, dW) at this fraction "
                                         "of the tensor-core peak (kept from the first model)"),
    "ours_fwd_launches": (7, "kernels", "counted in lstm_fast/triton_layer.py + kernels/lstm_fwd_hidden_split.py: "
                                        "projection GEMM, two state copies, exchange fill and init, the "
                                        "persistent kernel, the c_n cast"),
    "ours_bwd_launches": (13, "kernels", "counted in triton_layer.backward_saved + lstm_bwd_hidden_split: dY "
                                         "copy and dh_n add, dG[T] and dc setup, exchange fill and init, the "
                                         "persistent kernel, dh_0 GEMM and cast, dx, dW_ih, h_prev concat, dW_hh, "
                                         "db"),
    "cudnn_fwd_launches": (3, "kernels", "assumption: cuDNN's per-call kernels outside the time loop (input "
                                         "GEMM, state setup)"),
    "cudnn_bwd_launches": (4, "kernels", "assumption: backward data and weights outside the time loop (dx GEMM, "
                                         "weight GEMMs, bias reduction)"),
    "cudnn_standard_kernels_per_step": (2, "kernels", "assumption: STANDARD runs, per step, the recurrent GEMM "
                                                      "and the pointwise cell as separate kernels (forward; the "
                                                      "same two in backward data)"),
}
PUBLISHED_CUDNN_US_PER_STEP = {  # (dtype, B, T, D, H): us per step of forward + backward, cuDNN on an H100
    ("float16", 16, 1024, 768, 768): (5190.0 / 1024, "FlashRNN (Poeppel et al., 2024) comparison: cuDNN LSTM "
                                                     "fwd+bwd 5.19 ms at B16 T1024 D768 H768 fp16 on an H100"),
}
SHAPES_NOTE = "grid: B in {1, 8, 32, 128, 512}, H in {256, 512, 1024}, T in {35, 512}, D = H; plus d2l and B16 T1024 D768 H768"


def host(name):
    return HOST[name][0]


def itemsize(dtype):
    return 2 if dtype in ("bfloat16", "float16") else 4


def cudnn_algo(B, T, D, H, dtype, direction, sm_major=9, sm_count=132):
    """The algorithm PyTorch's get_algo asks cuDNN for (one layer, unidirectional, no projection,
    not packed): PERSIST_STATIC_SMALL_H when hidden_size <= 192 (forward) / <= 128 (backward);
    PERSIST_STATIC only for fp16 when num_layers == 1, H <= 1024, H % 128 == 0, D % 128 == 0 and
    (sm >= 8.0 with >= 98 SMs, not x.6) B % 8 == 0 and B <= 128; STANDARD otherwise."""
    if H <= (192 if direction == "fwd" else 128):
        return "PERSIST_STATIC_SMALL_H"
    if dtype == "float16" and H <= 1024 and H % 128 == 0 and D % 128 == 0 and sm_major >= 8 and sm_count >= 98 \
            and B % 8 == 0 and B <= 128:
        return "PERSIST_STATIC"
    return "STANDARD"


def _peak_tflops(dtype):
    return step_cost.value("bf16_dense_tflops") if itemsize(dtype) == 2 else step_cost.value("tf32_dense_tflops")


def _kernel_us(bytes_, flops, dtype):
    """A small kernel's GPU time: floor + bytes over the whole L2 + flops at the GEMM efficiency."""
    return host("kernel_floor_us") + bytes_ / (step_cost.value("l2_total_gbps") * 1e3) + \
        flops / (_peak_tflops(dtype) * host("gemm_efficiency") * 1e6)


def cudnn_standard_step_us(B, H, dtype, direction):
    """STANDARD per step: the recurrent GEMM (W_hh from L2) and the pointwise kernel, each taking
    the longer of its launch and its GPU time (launches issued from the host in a loop)."""
    gemm = _kernel_us(4 * H * H * itemsize(dtype), 2 * B * 4 * H * H, dtype)
    pointwise = _kernel_us(B * 4 * H * 4 * (2 if direction == "bwd" else 1), 0, dtype)
    kernels = [gemm, pointwise][:host("cudnn_standard_kernels_per_step")]
    return sum(max(host("launch_us"), k) for k in kernels)


def gemm_us_per_step(B, D, H, dtype, training):
    """Input projection (forward) plus dx, dW_ih, dW_hh (backward), per step: both implementations."""
    flops = 2 * B * 4 * H * (D + (D + D + H if training else 0))
    return flops / (_peak_tflops(dtype) * host("gemm_efficiency") * 1e6)


def batch_tiled_us(B, H, dtype, direction):
    """Every program streams all of W_hh from L2 each step, plus two round trips and the cell."""
    programs = -(-B // 16)
    w = 4 * H * H * itemsize(dtype)
    return w / per_sm_l2_bytes_per_us(programs) + 2 * l2_latency_us() + step_cost.value("cell_us") * \
        (2 if direction == "bwd" else 1)


def ours(B, H, dtype, direction, protocol=None):
    """(us per step, plan, terms) of the path the dispatcher picks; ``protocol`` forces the
    hidden-split protocol where that plan is stationary (the comparison columns)."""
    import dataclasses

    import torch

    from lstm_fast.kernels.lstm_config import pick_plan
    p = pick_plan(B, H, getattr(torch, dtype), "cuda", step_cost.value("sm_count"), direction=direction)
    prec = p.precision
    if p.path != "hidden_split":
        return batch_tiled_us(B, H, dtype, direction), p, {}
    cfg = p.config
    if protocol and cfg.stationary:
        cfg = dataclasses.replace(cfg, protocol=protocol)
    terms = step_cost.step_terms(cfg, B, H, itemsize(dtype), prec, direction)
    return sum(terms.values()), dataclasses.replace(p, config=cfg), terms


def row(dtype, B, T, D, H):
    f, pf, tf = ours(B, H, dtype, "fwd")
    b, pb, tb = ours(B, H, dtype, "bwd")
    f_counter = ours(B, H, dtype, "fwd", "counter")[0]
    b_counter = ours(B, H, dtype, "bwd", "counter")[0]
    g_train, g_inf = gemm_us_per_step(B, D, H, dtype, True), gemm_us_per_step(B, D, H, dtype, False)
    fixed_f = host("ours_fwd_launches") * host("launch_us") / T
    fixed_b = host("ours_bwd_launches") * host("launch_us") / T
    train = f + b + g_train + fixed_f + fixed_b
    infer = f + g_inf + fixed_f
    algo_f, algo_b = cudnn_algo(B, T, D, H, dtype, "fwd"), cudnn_algo(B, T, D, H, dtype, "bwd")
    published = PUBLISHED_CUDNN_US_PER_STEP.get((dtype, B, T, D, H))
    cu_f = cudnn_standard_step_us(B, H, dtype, "fwd") if algo_f == "STANDARD" else None
    cu_b = cudnn_standard_step_us(B, H, dtype, "bwd") if algo_b == "STANDARD" else None
    cu_fixed_f = host("cudnn_fwd_launches") * host("launch_us") / T
    cu_fixed_b = host("cudnn_bwd_launches") * host("launch_us") / T
    if published is not None:
        cu_train, cu_infer = published[0], None
    elif cu_f is not None and cu_b is not None:
        cu_train = cu_f + cu_b + g_train + cu_fixed_f + cu_fixed_b
        cu_infer = cu_f + g_inf + cu_fixed_f
    else:
        cu_train = cu_infer = None
    return dict(dtype=dtype, B=B, T=T, D=D, H=H, pf=pf, pb=pb, f=f, b=b, tf=tf, tb=tb, f_counter=f_counter,
                b_counter=b_counter, g=g_train, fixed=fixed_f + fixed_b, train=train, infer=infer,
                algo=f"{algo_f}/{algo_b}", cu_train=cu_train, cu_infer=cu_infer, published=published)


def target(B, T, D, H, grid):
    if (B, T, D, H) not in grid:
        return 1.0, None
    return (1.5 if B <= 32 else 1.0), (2.0 if B <= 8 else None)


def limiting_term(r):
    """The largest term of our step (forward + backward, by name) at this shape."""
    terms = {}
    for d, t in (("fwd", r["tf"]), ("bwd", r["tb"])):
        for k, v in t.items():
            terms[f"{d} {k}"] = v
    if not terms:
        return "batch-tiled W stream"
    k = max(terms, key=terms.get)
    return f"{k} {terms[k]:.1f}"


def _tag(p):
    if p.path != "hidden_split":
        return "batch_tiled"
    c = p.config
    return f"{c.protocol}{'' if c.stationary else '*'} hs{c.hs} bb{c.bb}" + (f" P{c.mc}" if c.mc else "")


def _table(name, t):
    print(f"| {name} constant | value | unit | source |\n|---|---|---|---|")
    for k, (v, unit, src) in t.items():
        print(f"| `{k}` | {v} | {unit} | {src} |")
    print()


def main():
    from lstm_fast.d2l.bench import EXTRA_GPU_SHAPES, GRID

    print("# GPU model: predicted microseconds per step on an H100 SXM, before any GPU run\n")
    print("Written by `python benchmarks/gpu_model.py > benchmarks/GPU_MODEL.md`. The hidden-split step is")
    print("`lstm_fast/kernels/step_cost.py` (the dispatcher's own model); this file adds the batch-tiled path,")
    print("the GEMMs, the launches of a call and cuDNN. Every constant, with its source (\"assumption\": no")
    print("source found; the first GPU run, `benchmarks/gpu_check.py`, measures the terms they feed):\n")
    _table("step_cost.H100", H100)
    _table("gpu_model.HOST", HOST)
    print(f"Derived: one L2 round trip = {l2_latency_us():.3f} us; an SM's L2 share = "
          f"{per_sm_l2_bytes_per_us(1) / 1e3:.0f} GB/s alone, {per_sm_l2_bytes_per_us(132) / 1e3:.0f} GB/s with "
          f"132 SMs reading.\n")
    print("## The step protocol: \"ll\" (tagged words) against the \"counter\" barrier\n")
    print("Per step the counter protocol costs (SASS of `_hs_fwd_persistent_kernel`, protocol counter, triton")
    print("3.9): `MEMBAR.ALL.GPU` (the release: every store of the step acknowledged, one L2 round trip), the")
    print("arrival `REDG.E.ADD.STRONG.GPU` on the batch block's one counter line (n_h arrivals serialise there),")
    print("the polls (ptxas already turns the `atomic_add(counter, 0, acquire)` polls into")
    print("`LDG.E.STRONG.GPU` + `CCTL.IVALL`, so the polls are loads, but every poll of every program hits")
    print("that one line and invalidates L1), then a separate `.cg` load of h / dG: about four dependent L2")
    print(f"round trips plus n_h x {step_cost.value('same_line_atomic_ns')} ns, ~0.6-0.8 us. The ll protocol's")
    print("SASS: the poll is the data load (`LDG.E.128.STRONG.SYS` of the tagged words, a CTA `REDUX` +")
    print("`BAR.SYNC` to agree that no word is stale, re-loads only of stale words), the publish is plain")
    print("`STG.E.64`; no fence, no atomic, no second load: 1.5 round trips (~0.2 us) plus the words. Its cost")
    print("is bytes: a word is half payload, so the polled operand doubles, and the words sit in registers")
    print("(the dispatcher allows ll only where the sm_90 build showed no spills: <= 64 KB of words, W plus")
    print("words <= 64 KB where W is an mma.sync register operand, never with exact-fp32 FMA dots). So the")
    print("model picks ll where the operand is small (B <= 32 at H <= 512, small B at H 1024) and the counter")
    print("where doubled bytes over a contended L2 cost more than the ~0.5 us it saves (B 32 at H 1024 with")
    print("128 programs reading: 64 KB of words at 42 GB/s each). Per-producer flags (one release store per")
    print("program, consumers polling N flags, then the data) would sit between the two: the release fence")
    print("and the second load remain, the shared line and the doubled bytes go. Not built: Triton has no")
    print("acquire load outside an atomic, so the consumer's poll would need inline PTX, which the")
    print("interpreter (this repository's only test bed without a GPU) cannot run.\n")
    print("What the ll words rely on: an aligned 8-byte store is never torn, the property NCCL's LL protocol")
    print("rests on (`src/device/prims_ll.h`: data and flag in one 8-byte half of a 16-byte line, stored with")
    print("`st.volatile`). Triton has no volatile store, so the publish is a plain (weak) `STG.E.64`; the")
    print("reader's loads are volatile (`.STRONG.SYS`). A program overwrites a ring slot only after reading")
    print("every program's next slice, which each publishes only after its loads of that slot returned (its")
    print("publish depends on them through the dot). tests/step_protocol_model.c checks the protocol with")
    print("real threads and C11 atomics (relaxed stores and loads, the GPU's plain store and volatile load).\n")
    print("## Per shape\n")
    print("Columns: our forward and backward step (us; `ll`/`counter` = the protocol the dispatcher picks,")
    print("`*` = W_hh streamed from L2, hs/bb = units and batch rows per program), the same steps with the")
    print("counter protocol forced (today's barrier), the GEMMs per step (both sides run them), our fixed")
    print("launches per step (a call's kernels outside the time loop, amortised over T), cuDNN's algorithm")
    print("(forward/backward, PyTorch's get_algo) and its modelled training step, the predicted ratios")
    print("(cuDNN time / ours: > 1 means faster than cuDNN) and the target. Inference = the forward only")
    print("(the same kernels, nothing saved).\n")
    print("| dtype | B | T | D | H | plan fwd / bwd | fwd | bwd | fwd, bwd counter | GEMMs | fixed | ours train "
          "| cuDNN algo | cuDNN train | train x | infer x | target | holds | largest term |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    shapes = [(16, 1024, 768, 768)] + [s for s in EXTRA_GPU_SHAPES + GRID if s != (16, 1024, 768, 768)]
    misses = []
    for dtype in ("bfloat16", "float32", "float16"):
        for (B, T, D, H) in shapes:
            if dtype == "float16" and (B, T, D, H) != (16, 1024, 768, 768):
                continue
            r = row(dtype, B, T, D, H)
            tt, ti = target(B, T, D, H, GRID)
            xt = r["cu_train"] / r["train"] if r["cu_train"] else None
            xi = r["cu_infer"] / r["infer"] if r["cu_infer"] else None
            ok = (xt is None or xt >= tt) and (ti is None or xi is None or xi >= ti)
            tgt = f"train >= {tt}" + (f", infer >= {ti}" if ti else "")
            fmt = lambda v: "-" if v is None else f"{v:.2f}"   # noqa: E731
            cu = f"{r['cu_train']:.1f}" + (" (published)" if r["published"] else "") if r["cu_train"] else "-"
            print(f"| {dtype} | {B} | {T} | {D} | {H} | {_tag(r['pf'])} / {_tag(r['pb'])} | {r['f']:.2f} | {r['b']:.2f} | "
                  f"{r['f_counter']:.2f}, {r['b_counter']:.2f} | {r['g']:.2f} | {r['fixed']:.2f} | {r['train']:.1f} | "
                  f"{r['algo']} | {cu} | {fmt(xt)} | {fmt(xi)} | {tgt} | {'yes' if ok else '**no**'} | "
                  f"{limiting_term(r)} |")
            if not ok:
                misses.append((dtype, B, T, D, H, xt, xi, tt, ti, limiting_term(r)))
    print()
    print("## Where a shape misses its target on paper\n")
    if not misses:
        print("None.\n")
    for dtype, B, T, D, H, xt, xi, tt, ti, term in misses:
        print(f"- {dtype} B{B} T{T} D{D} H{H}: train {xt:.2f}x (target {tt})"
              + (f", inference {xi:.2f}x (target {ti})" if ti else "") + f"; largest term: {term}.")
    print()
    print("What would remove them, by the term named:\n")
    print("- **bwd exchange** (fp32 B8/B32 H1024): the backward keeps its slice on")
    print("  chip in the partial-sum layout (`HiddenSplitConfig.mc > 0`, kernels/lstm_bwd_hidden_split.py):")
    print("  program n holds W_S^T [KP, 4HS] as <= 4 loop-invariant wgmma operands in shared memory (HGMMA, no W")
    print("  load in the time loop, no spill in benchmarks/sm90/*.json), computes its partial dh for all H from")
    print("  its own dG and sums the n_h partials of its HS columns in float32. What holds it now is the")
    print("  partials' bytes: each program writes BB x H and reads BB x H values per step, in W_hh's dtype")
    print("  (counter: 4 B a value for float32, 2 B for 16-bit models; ll words twice that) over an SM's L2 share")
    print("  (~42 GB/s with 128 programs). The 16-bit partials (one rounding of each partial before the float32")
    print("  sum; the interpreter test compares float16 against the column layout's error), with twice the")
    print("  producers a poll (half the sequential polls), took bf16 B32 H1024 and the fp16 published shape past")
    print("  their targets; float32 partials stay float32. What would remove the rest: summing the partials")
    print("  within a thread-block cluster over distributed shared memory (only cluster sums through L2:")
    print("  bytes / cluster size), which Triton does not expose today.")
    print("- **bwd w_stream** (B128 H1024): the slice fits shared memory only with batch blocks of 64 rows")
    print("  (bf16 HS16 x BB64: 128 KB), where the partial-sum kernel's [MC, BB] float32 partial beside the cell")
    print("  tiles spilled on sm_90 (64 B bf16, 24 B tf32 HS8 BB64, triton 3.9), so the dispatcher holds")
    print("  BB x MC x 8 B <= 64 KB and the backward streams W there. What would remove it: chunks of 128 rows")
    print("  (8 stationary chunks instead of 4) or a two-warpgroup split of the partial, then an sm_90 build.")
    print("- **fwd w_stream** (fp32 B32 H1024, in the same rows): the tf32 forward slice [4*HS, KP] x 4 B plus")
    print("  the staged h [KP, BB] pass the shared-memory budget at the grid the SMs allow; a K-chunked h operand or")
    print("  a 2-CTA cluster sharing the slice over distributed shared memory. fp32 B8 H1024 inference is held by")
    print("  the forward's exchange and its mma.sync dot (HS 8: 32 gate rows, below wgmma's 64).")
    print("- **batch-tiled W stream** (B 512 at H >= 512): too many batch blocks for the SMs at a slice that fits;")
    print("  batch blocks of 128 rows (two warpgroups of wgmma N) in both directions would keep it hidden-split.")
    print("- the published fp16 point is cuDNN's PERSIST_STATIC (fp16, B % 8 == 0), its 5.07 us per step")
    print("  published; bf16 and fp32 get STANDARD at that shape.\n")
    print("What would falsify the model: an ll step far above ~1-2 us at B <= 32, H <= 512 (the L2 round")
    print("trip or the poll's CTA reduction underestimated); the counter step not ~0.5 us slower than ll at")
    print("the same shape (gpu_check times both); cuDNN's STANDARD step far from 2 x max(launch, kernel) (the")
    print("launch cost is the assumption every ratio leans on: at 1.5 us per launch instead of 2.5 the")
    print("cuDNN side shrinks by 40% at small B); batch-tiled steps far from W_hh bytes / one SM's L2 share.")


if __name__ == "__main__":
    main()
