"""Backward LSTM kernel: one persistent launch walks time in reverse for one layer/direction.

Shape legend: B batch, T steps, H hidden, R recurrent input width (= H, or the projected size for a
projected layer's first step, where T = 1); gates i, f, g, o (d2l: I, F, C_tilda, O).

Each program owns BLOCK_B batch rows. Per step, phase 1 turns dh_t (= dY_t + the recurrent
gradient) and the carried dc into the four gate gradients from the saved activations and cell
states, writing dgates_t (the weight gradients need all steps) and the new dc; phase 2 computes
``dh_{t-1} = dgates_t @ W_hh`` with ``tl.dot`` into a per-row scratch that phase 1 of the next step
reads. CTA barriers order the phases. The weight and input gradients are then a few large GEMMs
over all steps in the caller.
"""
import triton
import triton.language as tl

from .activations import tanh
from .lstm_bwd_hidden_split import lstm_bwd_hidden_split
from .lstm_config import pick_plan
from .lstm_fwd import hidden_split_driver, sm_count


@triton.jit(do_not_specialize=["T"])
def _lstm_bwd_kernel(
    DY, W, G, C, DG, DH, DC,
    T, B, H, R,
    stride_dy_t, stride_dy_b, stride_w, stride_g_t, stride_g_b, stride_c_t, stride_c_b,
    stride_dg_t, stride_dg_b, stride_dh, stride_dc,
    DOT_PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    ACC = C.dtype.element_ty
    pid = tl.program_id(0)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    rmask = rows < B
    for s in range(T):
        t = T - 1 - s
        t64 = tl.cast(t, tl.int64)              # t * stride passes 2^31 at large T*B*4H
        # Phase 1: gate gradients of step t, tile by tile over H.
        for j0 in range(0, H, BLOCK_H):
            cols = j0 + tl.arange(0, BLOCK_H)
            m = rmask[:, None] & (cols < H)[None, :]
            dh = tl.load(DY + t64 * stride_dy_t + rows[:, None] * stride_dy_b + cols[None, :], mask=m, other=0.0).to(ACC)
            dh += tl.load(DH + rows[:, None] * stride_dh + cols[None, :], mask=m, other=0.0)
            dc_ptr = DC + rows[:, None] * stride_dc + cols[None, :]
            dc = tl.load(dc_ptr, mask=m, other=0.0)
            g_ptr = G + t64 * stride_g_t + rows[:, None] * stride_g_b + cols[None, :]
            I = tl.load(g_ptr, mask=m, other=0.0)
            F = tl.load(g_ptr + H, mask=m, other=0.0)
            C_tilda = tl.load(g_ptr + 2 * H, mask=m, other=0.0)
            O = tl.load(g_ptr + 3 * H, mask=m, other=0.0)
            c_off = rows[:, None] * stride_c_b + cols[None, :]
            c = tl.load(C + (t64 + 1) * stride_c_t + c_off, mask=m, other=0.0)
            c_prev = tl.load(C + t64 * stride_c_t + c_off, mask=m, other=0.0)
            tc = tanh(c)
            dct = dc + dh * O * (1.0 - tc * tc)
            dg_ptr = DG + t64 * stride_dg_t + rows[:, None] * stride_dg_b + cols[None, :]
            tl.store(dg_ptr, dct * C_tilda * I * (1.0 - I), mask=m)
            tl.store(dg_ptr + H, dct * c_prev * F * (1.0 - F), mask=m)
            tl.store(dg_ptr + 2 * H, dct * I * (1.0 - C_tilda * C_tilda), mask=m)
            tl.store(dg_ptr + 3 * H, dh * tc * O * (1.0 - O), mask=m)
            tl.store(dc_ptr, dct * F, mask=m)
        tl.debug_barrier()
        # Phase 2: dh_{t-1} = dgates_t @ W_hh, (BLOCK_B, 4H) @ (4H, R).
        for j0 in range(0, R, BLOCK_H):
            cols = j0 + tl.arange(0, BLOCK_H)
            cmask = cols < R
            acc = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
            for k0 in range(0, 4 * H, BLOCK_K):
                ks = k0 + tl.arange(0, BLOCK_K)
                kmask = ks < 4 * H
                dg = tl.load(DG + t64 * stride_dg_t + rows[:, None] * stride_dg_b + ks[None, :],
                             mask=rmask[:, None] & kmask[None, :], other=0.0).to(W.dtype.element_ty)
                w = tl.load(W + ks[:, None] * stride_w + cols[None, :], mask=kmask[:, None] & cmask[None, :], other=0.0,
                            eviction_policy="evict_last")
                acc += tl.dot(dg, w, input_precision=DOT_PRECISION)
            tl.store(DH + rows[:, None] * stride_dh + cols[None, :], acc, mask=rmask[:, None] & cmask[None, :])
        tl.debug_barrier()


def lstm_bwd(dY, dh_n, dc_n, w_hh, G, C):
    """Launch the backward: hidden-split or batch-tiled, as :func:`.lstm_config.pick_plan` picks
    for the backward (its own on-chip limit; the saved tensors are the same for both paths).

    Args:
        dY: (T, B, H) gradient of the outputs (or None); dh_n, dc_n: (B, H) or None.
        w_hh: (4H, R); G: saved activations (T, B, 4H); C: saved cell states (T+1, B, H), C[0] = c_0.
    Returns:
        (dG (T, B, 4H) gate pre-activation gradients, dh_0 (B, R), dc_0 (B, H)), in G's dtype
        (dG in w_hh's dtype on the hidden-split path: its dot operand dtype).
    """
    import torch

    T, B, H = C.shape[0] - 1, C.shape[1], C.shape[2]
    R = w_hh.shape[1]
    acc, dev = G.dtype, G.device
    plan = pick_plan(B, H, w_hh.dtype, dev.type, sm_count(dev), square=R == H, direction="bwd") if B else None
    if plan is not None and plan.path == "hidden_split":     # it allocates its own buffers
        return lstm_bwd_hidden_split(dY, dh_n, dc_n, w_hh, G, C, plan.config, plan.precision,
                                     hidden_split_driver(dev))
    if dY is None:
        dY = torch.zeros(T, B, H, dtype=acc, device=dev)
    dY = dY.contiguous()
    # One scratch serves both widths: phase 1 reads [:, :H] (dh_t), phase 2 writes [:, :R] (dh_{t-1}).
    DH = torch.zeros(B, max(H, R), dtype=acc, device=dev)
    if dh_n is not None:
        DH[:, :H].copy_(dh_n)
    DC = dc_n.to(acc).clone().contiguous() if dc_n is not None else torch.zeros(B, H, dtype=acc, device=dev)
    DG = torch.empty(T, B, 4 * H, dtype=acc, device=dev)
    if B > 0:
        cfg, precision = plan.config, plan.precision
        w = w_hh.contiguous()
        _lstm_bwd_kernel[(triton.cdiv(B, cfg.block_b),)](
            dY, w, G, C, DG, DH, DC, T, B, H, R,
            dY.stride(0), dY.stride(1), w.stride(0), G.stride(0), G.stride(1), C.stride(0), C.stride(1),
            DG.stride(0), DG.stride(1), DH.stride(0), DC.stride(0),
            DOT_PRECISION=precision,
            BLOCK_B=cfg.block_b, BLOCK_H=cfg.block_h, BLOCK_K=cfg.block_k,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
    return DG, DH[:, :R], DC
