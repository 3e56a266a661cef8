"""Hidden-split backward: the same partition as :mod:`.lstm_fwd_hidden_split`, walking T in reverse.

Shape legend: B batch, T steps, H hidden, HS hidden units per program, BB batch rows per program,
KP = H padded to a power of two; gates i, f, g, o (d2l: I, F, C_tilda, O).

Program (n, m) owns hidden units S = [n*HS, (n+1)*HS) and batch rows [m*BB, (m+1)*BB). It keeps
the *column* slice W_hh[:, S] (4H x HS, as one [HS, KP] tile per gate) on chip for all T and its dc in
registers. Per step t (from T-1 down to 0):

* ``dh_t[:, S] = dY[t][:, S] + dG_{t+1} @ W_hh[:, S]``: every gate gradient of step t+1 (all
  programs wrote them, read from L2) against the program's columns, one dot per gate (K = KP);
* the cell backward for S from the saved activations G[t] and cell states C[t], C[t+1]: the four
  gate gradients into dG[t][:, gates of S] (stored in W_hh's dtype, the dot operand dtype: half
  the bytes per step for 16-bit models), and dc_{t-1} = dc_t * F;
* the grid barrier (or the kernel boundary in the step driver) before step t-1 reads dG[t].

The launcher folds dh_n into dY[T-1] and gives dG a zeroed slot T, so the first step needs no
special case; ``dh_0 = dG_0 @ W_hh`` and the weight gradients are GEMMs after the loop.
"""
import triton
import triton.language as tl

from .activations import tanh
from .grid_sync import grid_barrier, launch_persistent, program_slice


@triton.jit
def _load_w_cols(W, stride_w, H, pid_h, gate: tl.constexpr, HS: tl.constexpr, KP: tl.constexpr):
    """Columns S of one gate's rows of W_hh (4H, H) as [HS, KP]: (j, u) = W[gate*H + u, S_j]."""
    u = tl.arange(0, KP)
    units = pid_h * HS + tl.arange(0, HS)
    return tl.load(W + (gate * H + u)[None, :] * stride_w + units[:, None], mask=(u < H)[None, :] & (units < H)[:, None],
                   other=0.0, eviction_policy="evict_last")


@triton.jit
def _load_w_slices(W, stride_w, H, pid_h, STATIONARY: tl.constexpr, HS: tl.constexpr, KP: tl.constexpr):
    """The four gates' column slices when they stay on chip; placeholders when W_hh is streamed."""
    if STATIONARY:
        return (_load_w_cols(W, stride_w, H, pid_h, 0, HS, KP), _load_w_cols(W, stride_w, H, pid_h, 1, HS, KP),
                _load_w_cols(W, stride_w, H, pid_h, 2, HS, KP), _load_w_cols(W, stride_w, H, pid_h, 3, HS, KP))
    else:
        return 0, 0, 0, 0


@triton.jit
def _dgate_dot(Wc, DG_t1, stride_dg_b, H, rows, rmask, acc, gate: tl.constexpr, DOT_PRECISION: tl.constexpr,
               KP: tl.constexpr):
    """acc + W_hh[gate rows, S]^T @ dG_{t+1}[:, gate]^T: one gate's share of dh_t[:, S]^T."""
    u = tl.arange(0, KP)
    dg = tl.load(DG_t1 + rows[None, :] * stride_dg_b + (gate * H + u)[:, None],
                 mask=(u < H)[:, None] & rmask[None, :], other=0.0, cache_modifier=".cg")   # [KP, BB], from L2
    return tl.dot(Wc, dg.to(Wc.dtype), acc, input_precision=DOT_PRECISION)


@triton.jit
def _dh_streamed(W, stride_w, DG_t1, stride_dg_b, units, rows, rmask, H, dc,
                 DOT_PRECISION: tl.constexpr, BK: tl.constexpr):
    """``dG_{t+1} @ W_hh[:, S]`` (as [HS, BB]) with W_hh read from L2 in [HS, BK] chunks per gate
    (the streamed variant, where the column slice does not fit on chip)."""
    dh = tl.zeros(dc.shape, dtype=dc.dtype)
    umask = units < H
    for k0 in range(0, H, BK):
        u = k0 + tl.arange(0, BK)
        kmask = u < H
        for gate in tl.static_range(4):
            dg = tl.load(DG_t1 + rows[None, :] * stride_dg_b + (gate * H + u)[:, None],
                         mask=kmask[:, None] & rmask[None, :], other=0.0, cache_modifier=".cg")   # [BK, BB]
            w = tl.load(W + (gate * H + u)[None, :] * stride_w + units[:, None], mask=kmask[None, :] & umask[:, None],
                        other=0.0, eviction_policy="evict_last")                                 # [HS, BK]
            dh = tl.dot(w, dg.to(w.dtype), dh, input_precision=DOT_PRECISION)
    return dh


@triton.jit
def _hs_bwd_cell(Wi, Wf, Wg, Wo, W, stride_w, DG_t1, stride_dg_b, DY_t, stride_dy_b, G_t, stride_g_b, C_t, C_t1,
                 stride_c_b, dc, units, rows, rmask, m, H,
                 STATIONARY: tl.constexpr, DOT_PRECISION: tl.constexpr, KP: tl.constexpr, BK: tl.constexpr):
    """One reverse step for one program. Returns (dI, dF, dC_tilda, dO) pre-activation gradients
    and dc_{t-1}, each [HS, BB] in the accumulation dtype of dc. STATIONARY: the recurrent product
    runs gate by gate against the on-chip column slices (K = KP each, so only one [KP, BB] tile of
    dG_{t+1} is live at a time); else W_hh is streamed from L2."""
    ACC = dc.dtype
    if STATIONARY:
        dh = tl.zeros(dc.shape, dtype=ACC)
        dh = _dgate_dot(Wi, DG_t1, stride_dg_b, H, rows, rmask, dh, 0, DOT_PRECISION, KP)
        dh = _dgate_dot(Wf, DG_t1, stride_dg_b, H, rows, rmask, dh, 1, DOT_PRECISION, KP)
        dh = _dgate_dot(Wg, DG_t1, stride_dg_b, H, rows, rmask, dh, 2, DOT_PRECISION, KP)
        dh = _dgate_dot(Wo, DG_t1, stride_dg_b, H, rows, rmask, dh, 3, DOT_PRECISION, KP)
    else:
        dh = _dh_streamed(W, stride_w, DG_t1, stride_dg_b, units, rows, rmask, H, dc, DOT_PRECISION, BK)
    dh += tl.load(DY_t + rows[None, :] * stride_dy_b + units[:, None], mask=m, other=0.0).to(ACC)
    g = G_t + rows[None, :] * stride_g_b + units[:, None]
    I = tl.load(g, mask=m, other=0.0)
    F = tl.load(g + H, mask=m, other=0.0)
    C_tilda = tl.load(g + 2 * H, mask=m, other=0.0)
    O = tl.load(g + 3 * H, mask=m, other=0.0)
    c_off = rows[None, :] * stride_c_b + units[:, None]
    tc = tanh(tl.load(C_t1 + c_off, mask=m, other=0.0))
    c_prev = tl.load(C_t + c_off, mask=m, other=0.0)
    dct = dc + dh * O * (1.0 - tc * tc)
    return (dct * C_tilda * I * (1.0 - I), dct * c_prev * F * (1.0 - F), dct * I * (1.0 - C_tilda * C_tilda),
            dh * tc * O * (1.0 - O), dct * F)


@triton.jit
def _store_gate_grads(DG_t, stride_dg_b, H, units, rows, m, dI, dF, dC_tilda, dO):
    """The four gate gradients into dG[t] (in dG's dtype: the dot operand dtype)."""
    p = DG_t + rows[None, :] * stride_dg_b + units[:, None]
    ty = DG_t.dtype.element_ty
    tl.store(p, dI.to(ty), mask=m)
    tl.store(p + H, dF.to(ty), mask=m)
    tl.store(p + 2 * H, dC_tilda.to(ty), mask=m)
    tl.store(p + 3 * H, dO.to(ty), mask=m)


@triton.jit(do_not_specialize=["T"])
def _hs_bwd_persistent_kernel(
    DY, W, G, C, DG, DC, COUNTER, ERR,
    T, B, H, max_spins,
    stride_dy_t, stride_dy_b, stride_w, stride_g_t, stride_g_b, stride_c_t, stride_c_b, stride_dg_t, stride_dg_b,
    stride_dc,
    STATIONARY: tl.constexpr, DOT_PRECISION: tl.constexpr, HS: tl.constexpr, BB: tl.constexpr, KP: tl.constexpr,
    BK: tl.constexpr,
):
    pid_h, pid_b, n_h = tl.program_id(0), tl.program_id(1), tl.num_programs(0)
    units, rows, rmask, m = program_slice(B, H, HS, BB)
    Wi, Wf, Wg, Wo = _load_w_slices(W, stride_w, H, pid_h, STATIONARY, HS, KP)   # on chip for all T
    dc_ptr = DC + rows[None, :] * stride_dc + units[:, None]
    dc = tl.load(dc_ptr, mask=m, other=0.0)
    counter = COUNTER + pid_b
    failed = 0
    for s in range(T):
        t64 = tl.cast(T - 1 - s, tl.int64)
        dI, dF, dC_tilda, dO, dc = _hs_bwd_cell(
            Wi, Wf, Wg, Wo, W, stride_w, DG + (t64 + 1) * stride_dg_t, stride_dg_b, DY + t64 * stride_dy_t, stride_dy_b,
            G + t64 * stride_g_t, stride_g_b, C + t64 * stride_c_t, C + (t64 + 1) * stride_c_t, stride_c_b, dc,
            units, rows, rmask, m, H, STATIONARY, DOT_PRECISION, KP, BK)
        _store_gate_grads(DG + t64 * stride_dg_t, stride_dg_b, H, units, rows, m, dI, dF, dC_tilda, dO)
        failed = grid_barrier(counter, (s + 1) * n_h, ERR, failed, max_spins)
    tl.store(dc_ptr, dc, mask=m)


@triton.jit(do_not_specialize=["t"])
def _hs_bwd_step_kernel(
    DY, W, G, C, DG, DC,
    t, B, H,
    stride_dy_t, stride_dy_b, stride_w, stride_g_t, stride_g_b, stride_c_t, stride_c_b, stride_dg_t, stride_dg_b,
    stride_dc,
    STATIONARY: tl.constexpr, DOT_PRECISION: tl.constexpr, HS: tl.constexpr, BB: tl.constexpr, KP: tl.constexpr,
    BK: tl.constexpr,
):
    """Reverse step ``t`` only; dc is read from and written back to DC (each program its own slice)."""
    pid_h = tl.program_id(0)
    units, rows, rmask, m = program_slice(B, H, HS, BB)
    t64 = tl.cast(t, tl.int64)
    Wi, Wf, Wg, Wo = _load_w_slices(W, stride_w, H, pid_h, STATIONARY, HS, KP)
    dc_ptr = DC + rows[None, :] * stride_dc + units[:, None]
    dI, dF, dC_tilda, dO, dc = _hs_bwd_cell(
        Wi, Wf, Wg, Wo, W, stride_w, DG + (t64 + 1) * stride_dg_t, stride_dg_b, DY + t64 * stride_dy_t, stride_dy_b,
        G + t64 * stride_g_t, stride_g_b, C + t64 * stride_c_t, C + (t64 + 1) * stride_c_t, stride_c_b,
        tl.load(dc_ptr, mask=m, other=0.0), units, rows, rmask, m, H, STATIONARY, DOT_PRECISION, KP, BK)
    _store_gate_grads(DG + t64 * stride_dg_t, stride_dg_b, H, units, rows, m, dI, dF, dC_tilda, dO)
    tl.store(dc_ptr, dc, mask=m)


def lstm_bwd_hidden_split(dY, dh_n, dc_n, w_hh, G, C, cfg, precision, driver):
    """Launch the hidden-split backward (see the module docstring).

    Args: as :func:`lstm_fast.kernels.lstm_bwd` (w_hh square), plus ``cfg``, ``precision`` and
    ``driver`` as for the forward. Returns (dG (T, B, 4H) in W_hh's dtype, dh_0 (B, H), dc_0 (B, H) in G's dtype).
    """
    import torch

    T, B, H = C.shape[0] - 1, C.shape[1], C.shape[2]
    acc, dev = G.dtype, G.device
    DY = torch.zeros(T, B, H, dtype=acc, device=dev) if dY is None else dY.to(acc, copy=True).contiguous()
    if dh_n is not None:
        DY[T - 1] += dh_n            # dh_n enters with dY_{T-1}; dG[T] = 0 then needs no special step
    DG = torch.empty(T + 1, B, 4 * H, dtype=w_hh.dtype, device=dev)
    DG[T].zero_()
    DC = dc_n.to(acc).clone().contiguous() if dc_n is not None else torch.zeros(B, H, dtype=acc, device=dev)
    grid = cfg.grid(B, H)
    strides = (DY.stride(0), DY.stride(1), w_hh.stride(0), G.stride(0), G.stride(1), C.stride(0), C.stride(1),
               DG.stride(0), DG.stride(1), DC.stride(0))
    tiles = cfg.launch_options(precision)
    if driver == "persistent":
        launch_persistent(_hs_bwd_persistent_kernel, grid, (DY, w_hh, G, C, DG, DC), T, B, H, strides, tiles,
                          "lstm_bwd (hidden-split)")
    else:
        for t in range(T - 1, -1, -1):
            _hs_bwd_step_kernel[grid](DY, w_hh, G, C, DG, DC, t, B, H, *strides, **tiles)
    dG = DG[:T]
    dh0 = (dG[0] @ w_hh).to(acc)       # dh_0 = dG_0 W_hh
    return dG, dh0, DC
