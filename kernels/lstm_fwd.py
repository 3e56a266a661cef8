"""Forward LSTM kernel: one persistent launch walks the whole time loop of one layer/direction.

Shape legend: B batch, T steps, D input, H hidden, R recurrent input width (= H, or the projected
size P for the first step of a projected layer, where T = 1); gates i, f, g, o (d2l: I, F,
C_tilda, O).

Each program owns BLOCK_B rows of the batch and all of H, so no program waits on another: per
step and per hidden tile it computes the four gate pre-activations ``h_{t-1} @ W_hh^T`` as four
``tl.dot`` accumulators over the same h tile, adds the precomputed input projection ``XG`` (all
steps' ``X W_ih^T + b`` as one cuBLAS GEMM in the launcher), applies sigmoid/tanh, updates c and h
in registers and writes h_t (output dtype), c_t and, when the backward needs them, the activated
gates. Accumulation, state and saved gates are float32 (float64 for float64 inputs). A CTA
barrier separates steps: h_t is read back by other warps of the same program at step t+1.
"""
import triton
import triton.language as tl

from . import lstm_config
from .activations import sigmoid, tanh
from .lstm_config import H100_SM_COUNT, pick_plan
from .lstm_fwd_hidden_split import lstm_fwd_hidden_split


@triton.jit(do_not_specialize=["T"])
def _lstm_fwd_kernel(
    XG, W, H0, Y, C, G,
    T, B, H, R,
    stride_xg_t, stride_xg_b, stride_w, stride_h0, stride_y_t, stride_y_b, stride_c_t, stride_c_b,
    stride_g_t, stride_g_b,
    SAVE_GATES: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    ACC = C.dtype.element_ty          # float32 (float64 when the inputs are float64)
    pid = tl.program_id(0)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    rmask = rows < B
    for t in range(T):
        t64 = tl.cast(t, tl.int64)              # t * stride passes 2^31 at large T*B*4H
        # h_{t-1}: the caller's h_0 at t = 0, else this program's own output row block of step t-1.
        if t == 0:
            hp = H0 + rows[:, None] * stride_h0
        else:
            hp = Y + (t64 - 1) * stride_y_t + rows[:, None] * stride_y_b
        for j0 in range(0, H, BLOCK_H):
            cols = j0 + tl.arange(0, BLOCK_H)
            cmask = cols < H
            acc_i = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
            acc_f = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
            acc_g = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
            acc_o = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
            for k0 in range(0, R, BLOCK_K):
                ks = k0 + tl.arange(0, BLOCK_K)
                kmask = ks < R
                h = tl.load(hp + ks[None, :], mask=rmask[:, None] & kmask[None, :], other=0.0).to(W.dtype.element_ty)
                wmask = kmask[:, None] & cmask[None, :]
                w_ptr = W + cols[None, :] * stride_w + ks[:, None]          # W_hh^T tile [BLOCK_K, BLOCK_H]
                acc_i += tl.dot(h, tl.load(w_ptr, mask=wmask, other=0.0, eviction_policy="evict_last"), input_precision=DOT_PRECISION)
                acc_f += tl.dot(h, tl.load(w_ptr + H * stride_w, mask=wmask, other=0.0, eviction_policy="evict_last"), input_precision=DOT_PRECISION)
                acc_g += tl.dot(h, tl.load(w_ptr + 2 * H * stride_w, mask=wmask, other=0.0, eviction_policy="evict_last"), input_precision=DOT_PRECISION)
                acc_o += tl.dot(h, tl.load(w_ptr + 3 * H * stride_w, mask=wmask, other=0.0, eviction_policy="evict_last"), input_precision=DOT_PRECISION)
            m = rmask[:, None] & cmask[None, :]
            xg = XG + t64 * stride_xg_t + rows[:, None] * stride_xg_b + cols[None, :]
            I = sigmoid(acc_i + tl.load(xg, mask=m, other=0.0).to(ACC))
            F = sigmoid(acc_f + tl.load(xg + H, mask=m, other=0.0).to(ACC))
            C_tilda = tanh(acc_g + tl.load(xg + 2 * H, mask=m, other=0.0).to(ACC))
            O = sigmoid(acc_o + tl.load(xg + 3 * H, mask=m, other=0.0).to(ACC))
            c_off = rows[:, None] * stride_c_b + cols[None, :]
            c_prev = tl.load(C + t64 * stride_c_t + c_off, mask=m, other=0.0)      # C[0] holds c_0
            c = F * c_prev + I * C_tilda
            h_new = O * tanh(c)
            tl.store(C + (t64 + 1) * stride_c_t + c_off, c, mask=m)
            tl.store(Y + t64 * stride_y_t + rows[:, None] * stride_y_b + cols[None, :],
                     h_new.to(Y.dtype.element_ty), mask=m)
            if SAVE_GATES:
                g_ptr = G + t64 * stride_g_t + rows[:, None] * stride_g_b + cols[None, :]
                tl.store(g_ptr, I, mask=m)
                tl.store(g_ptr + H, F, mask=m)
                tl.store(g_ptr + 2 * H, C_tilda, mask=m)
                tl.store(g_ptr + 3 * H, O, mask=m)
        tl.debug_barrier()


def sm_count(device):
    """Programs that can be co-resident: the GPU's SM count (one program per SM); the H100's
    under the interpreter, so the dispatcher picks the partition a real launch would."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return H100_SM_COUNT


def hidden_split_driver(device):
    """"persistent" (one launch, grid barrier) on a GPU; "step" (one launch per step) under the
    interpreter, which runs programs one after another; ``lstm_config.forced_driver`` overrides."""
    import os

    if lstm_config.forced_driver:
        return lstm_config.forced_driver
    return "step" if device.type != "cuda" or os.environ.get("TRITON_INTERPRET") == "1" else "persistent"


def lstm_fwd(xg, h0, c0, w_hh, save_gates=True):
    """Launch the forward: the hidden-split path or the batch-tiled kernel, whichever
    :func:`.lstm_config.pick_plan` picks.

    Args:
        xg: (T, B, 4H) input projection incl. both biases (any float dtype).
        h0: (B, R) initial hidden state, dtype of w_hh; c0: (B, H) initial cell state.
        w_hh: (4H, R) recurrent weight, gate rows i, f, g, o. R must equal H unless T == 1.
        save_gates: also return the activated gates the backward needs.
    Returns:
        (Y (T, B, H) in w_hh's dtype, C (T+1, B, H) with C[0] = c0, G (T, B, 4H) or None), C and G
        in float32 (float64 for float64 weights).
    """
    import torch

    T, B, G4 = xg.shape
    H, R = G4 // 4, w_hh.shape[1]
    if T > 1 and R != H:
        raise RuntimeError(f"lstm_fwd: recurrent width {R} != hidden size {H} needs T == 1, got T={T}")
    xg, h0, w_hh = xg.contiguous(), h0.contiguous(), w_hh.contiguous()
    plan = pick_plan(B, H, w_hh.dtype, xg.device.type, sm_count(xg.device), square=R == H) if B else None
    if plan is not None and plan.path == "hidden_split":     # it allocates its own buffers
        return lstm_fwd_hidden_split(xg, h0, c0, w_hh, save_gates, plan.config, plan.precision,
                                     hidden_split_driver(xg.device))
    Y = torch.empty(T, B, H, dtype=w_hh.dtype, device=xg.device)
    acc = torch.float64 if w_hh.dtype == torch.float64 else torch.float32
    C = torch.empty(T + 1, B, H, dtype=acc, device=xg.device)
    C[0].copy_(c0)
    G = torch.empty(T, B, 4 * H, dtype=acc, device=xg.device) if save_gates else None
    if B == 0:
        return Y, C, G
    cfg, precision = plan.config, plan.precision
    grid = (triton.cdiv(B, cfg.block_b),)
    Gp = G if G is not None else C  # placeholder pointer when gates are not saved
    _lstm_fwd_kernel[grid](
        xg, w_hh, h0, Y, C, Gp, T, B, H, R,
        xg.stride(0), xg.stride(1), w_hh.stride(0), h0.stride(0), Y.stride(0), Y.stride(1),
        C.stride(0), C.stride(1), Gp.stride(0), Gp.stride(1),
        SAVE_GATES=save_gates, DOT_PRECISION=precision,
        BLOCK_B=cfg.block_b, BLOCK_H=cfg.block_h, BLOCK_K=cfg.block_k,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return Y, C, G
