"""Hidden-split forward: the recurrent weight stays on chip, the hidden units are split across
programs.

Shape legend: B batch, T steps, H hidden, HS hidden units per program, BB batch rows per program,
KP = H padded to a power of two; gates i, f, g, o (d2l: I, F, C_tilda, O).

Why: the batch-tiled kernel (:mod:`.lstm_fwd`) gives each program a block of batch rows and all
of H, so at small B only a few SMs work and each re-reads all of W_hh from L2 every step. Here
program (n, m) owns hidden units [n*HS, (n+1)*HS) of all four gates and batch rows
[m*BB, (m+1)*BB): its slice of W_hh, the 4*HS rows [i | f | g | o] of those units (4*HS x H), is
loaded once before the time loop and stays on chip for all T, and its c stays in registers. Per
step it takes h_{t-1} (B x H) from the other programs by the plan's step protocol
(:mod:`.grid_sync`: "ll" polls the tagged exchange words until every one carries step t, which
is also the load of h; "counter" meets the batch block at the counter barrier after the step and
loads HB[t] from L2), computes ``W_slice @ h^T`` as one dot with the gate rows as M (4*HS >= 64:
Hopper's wgmma), adds the precomputed input projection XG[t] (prefetched before the wait), runs
the cell, writes its slice of h_t to HB[t+1] and ("ll") publishes it as tagged words.

Two drivers share one step body (:func:`_h_operand`, :func:`_hs_fwd_cell`, the publish):

* ``_hs_fwd_persistent_kernel``: one launch walks T, the protocol's wait between steps. Needs
  every program co-resident (the dispatcher keeps the grid <= the SM count).
* ``_hs_fwd_step_kernel``: one launch per step (the kernel boundary orders the steps; the waits
  find their words already there). Runs under Triton's interpreter with the real multi-program
  partition and data layout (which would deadlock the persistent driver there), and is a GPU
  fallback that CUDA graphs can capture.

Hidden states live in one buffer HB (T+1, B, H) with HB[0] = h_0: step t reads HB[t], writes
HB[t+1] (the output is HB[1:], and the backward's h_{t-1} is HB[:-1] with no concatenation).
Time offsets are 64-bit: t * stride passes 2^31 at large B*H*T.
"""
import triton
import triton.language as tl

from .activations import sigmoid, tanh
from . import grid_sync
from .grid_sync import (check_barrier_flag, grid_barrier, launch_persistent, ll_exchange, ll_publish,
                        ll_wait_read, payload_bits, program_slice)


@triton.jit
def split_gates(acc, HS: tl.constexpr, BB: tl.constexpr):
    """[4*HS, BB] rows (i | f | g | o, HS units each) -> four [HS, BB] tensors i, f, g, o."""
    a = tl.permute(tl.reshape(acc, (4, HS, BB)), (1, 2, 0))          # [HS, BB, 4]
    a = tl.reshape(a, (HS, BB, 2, 2))                                 # gate = 2 * p + q
    q0, q1 = tl.split(a)                                              # q = 0: gates i, g; q = 1: f, o
    i, g = tl.split(q0)
    f, o = tl.split(q1)
    return i, f, g, o


@triton.jit
def _load_w_rows(W, stride_w, H, pid_h, HS: tl.constexpr, KP: tl.constexpr):
    """This program's 4*HS gate rows of W_hh (4H, H): [4*HS, KP], zero past H."""
    r = tl.arange(0, 4 * HS)
    unit = pid_h * HS + r % HS
    row = (r // HS) * H + unit
    ks = tl.arange(0, KP)
    return tl.load(W + row[:, None] * stride_w + ks[None, :], mask=(unit < H)[:, None] & (ks < H)[None, :], other=0.0,
                   eviction_policy="evict_last")


@triton.jit
def _load_xg(XG_t, stride_xg_b, H, units, rows, m):
    """XG[t] for this program's units and rows, one [HS, BB] tile per gate."""
    p = XG_t + rows[None, :] * stride_xg_b + units[:, None]
    return (tl.load(p, mask=m, other=0.0), tl.load(p + H, mask=m, other=0.0),
            tl.load(p + 2 * H, mask=m, other=0.0), tl.load(p + 3 * H, mask=m, other=0.0))


@triton.jit
def _preact_streamed(W, stride_w, HB_t, stride_hb_b, units, rows, rmask, H, c_prev,
                     DOT_PRECISION: tl.constexpr, BK: tl.constexpr):
    """The four gate pre-activations ``W[gate rows of S] @ h_{t-1}^T`` with W_hh read from L2 in
    [HS, BK] chunks (the streamed variant, where the slice does not fit on chip)."""
    ACC = c_prev.dtype
    a_i = tl.zeros(c_prev.shape, dtype=ACC)
    a_f = tl.zeros(c_prev.shape, dtype=ACC)
    a_g = tl.zeros(c_prev.shape, dtype=ACC)
    a_o = tl.zeros(c_prev.shape, dtype=ACC)
    umask = units < H
    for k0 in range(0, H, BK):
        ks = k0 + tl.arange(0, BK)
        kmask = ks < H
        h = tl.load(HB_t + rows[None, :] * stride_hb_b + ks[:, None], mask=kmask[:, None] & rmask[None, :],
                    other=0.0, cache_modifier=".cg").to(W.dtype.element_ty)       # [BK, BB]
        wp = W + units[:, None] * stride_w + ks[None, :]
        wm = umask[:, None] & kmask[None, :]
        a_i = tl.dot(tl.load(wp, mask=wm, other=0.0, eviction_policy="evict_last"), h, a_i, input_precision=DOT_PRECISION)
        a_f = tl.dot(tl.load(wp + H * stride_w, mask=wm, other=0.0, eviction_policy="evict_last"), h, a_f,
                     input_precision=DOT_PRECISION)
        a_g = tl.dot(tl.load(wp + 2 * H * stride_w, mask=wm, other=0.0, eviction_policy="evict_last"), h, a_g,
                     input_precision=DOT_PRECISION)
        a_o = tl.dot(tl.load(wp + 3 * H * stride_w, mask=wm, other=0.0, eviction_policy="evict_last"), h, a_o,
                     input_precision=DOT_PRECISION)
    return a_i, a_f, a_g, a_o


@triton.jit
def _h_operand(X, stride_x_s, stride_x_b, HB_t, stride_hb_b, rows, rmask, H, HW, t, err, failed, max_spins,
               DT: tl.constexpr, PROTOCOL: tl.constexpr, KP: tl.constexpr, BITS: tl.constexpr):
    """h_{t-1}^T [KP, BB] (zero past H) in the dot dtype DT, the stationary dot's operand: "ll" polls
    slot t % 2 of the exchange words until all carry tag t; "counter" loads HB[t] from L2 (the
    barrier before this step already ordered it). Returns (h, failed)."""
    if PROTOCOL == "ll":
        hw, failed = ll_wait_read(X + (t % 2) * stride_x_s, stride_x_b, 0, rows, rmask, HW, t, err, failed, max_spins,
                                  KP * BITS // 32, DT, BITS)
        h = tl.trans(hw)
    else:
        ks = tl.arange(0, KP)
        h = tl.load(HB_t + rows[None, :] * stride_hb_b + ks[:, None], mask=(ks < H)[:, None] & rmask[None, :],
                    other=0.0, cache_modifier=".cg").to(DT)
    return h, failed


@triton.jit
def _hs_fwd_cell(Wt, W, stride_w, h, HB_t, stride_hb_b, xi, xf, xg, xo, c_prev, units, rows, rmask, H,
                 STATIONARY: tl.constexpr, DOT_PRECISION: tl.constexpr, HS: tl.constexpr, BB: tl.constexpr,
                 BK: tl.constexpr):
    """One step for one program: gate pre-activations ``W_slice @ h_{t-1}^T + XG[t]``, the cell.
    STATIONARY: one dot of the on-chip slice ``Wt`` [4*HS, KP] with ``h`` (:func:`_h_operand`);
    else W_hh streamed from L2 against h read from HB_t in chunks.
    Returns I, F, C_tilda, O, c_t, h_t, each [HS, BB] in the accumulation dtype of c_prev."""
    ACC = c_prev.dtype
    if STATIONARY:
        acc = tl.dot(Wt, h, tl.zeros((4 * HS, BB), dtype=ACC), input_precision=DOT_PRECISION)
        a_i, a_f, a_g, a_o = split_gates(acc, HS, BB)
    else:
        a_i, a_f, a_g, a_o = _preact_streamed(W, stride_w, HB_t, stride_hb_b, units, rows, rmask, H, c_prev,
                                              DOT_PRECISION, BK)
    I = sigmoid(a_i + xi.to(ACC))
    F = sigmoid(a_f + xf.to(ACC))
    C_tilda = tanh(a_g + xg.to(ACC))
    O = sigmoid(a_o + xo.to(ACC))
    c = F * c_prev + I * C_tilda
    return I, F, C_tilda, O, c, O * tanh(c)


@triton.jit
def _store_step(HB_t1, stride_hb_b, C_t1, stride_c_b, G_t, stride_g_b, H, units, rows, m,
                I, F, C_tilda, O, c, h, STORE_C: tl.constexpr, STORE_G: tl.constexpr):
    """h_t into HB[t+1]; c_t into C_t1 (STORE_C) and the activated gates into G[t] (STORE_G)."""
    tl.store(HB_t1 + rows[None, :] * stride_hb_b + units[:, None], h.to(HB_t1.dtype.element_ty), mask=m)
    if STORE_C:
        tl.store(C_t1 + rows[None, :] * stride_c_b + units[:, None], c, mask=m)
    if STORE_G:
        g = G_t + rows[None, :] * stride_g_b + units[:, None]
        tl.store(g, I, mask=m)
        tl.store(g + H, F, mask=m)
        tl.store(g + 2 * H, C_tilda, mask=m)
        tl.store(g + 3 * H, O, mask=m)


@triton.jit(do_not_specialize=["T"])
def _hs_fwd_persistent_kernel(
    XG, W, HB, C, G, X, COUNTER, ERR,
    T, B, H, max_spins,
    stride_xg_t, stride_xg_b, stride_w, stride_hb_t, stride_hb_b, stride_c_t, stride_c_b, stride_g_t, stride_g_b,
    stride_x_s, stride_x_b, HW,
    SAVE: tl.constexpr, STATIONARY: tl.constexpr, DOT_PRECISION: tl.constexpr, HS: tl.constexpr, BB: tl.constexpr,
    KP: tl.constexpr, BK: tl.constexpr, PROTOCOL: tl.constexpr, BITS: tl.constexpr,
):
    pid_h, pid_b, n_h = tl.program_id(0), tl.program_id(1), tl.num_programs(0)
    units, rows, rmask, m = program_slice(B, H, HS, BB)
    DT = W.dtype.element_ty
    Wt = 0
    if STATIONARY:
        Wt = _load_w_rows(W, stride_w, H, pid_h, HS, KP)                 # on chip for all T
    c = tl.load(C + rows[None, :] * stride_c_b + units[:, None], mask=m, other=0.0)   # C[0] = c_0
    xi, xf, xg, xo = _load_xg(XG, stride_xg_b, H, units, rows, m)
    counter = COUNTER + pid_b
    failed = 0
    for t in range(T):
        t64 = tl.cast(t, tl.int64)
        h = 0
        if STATIONARY:
            h, failed = _h_operand(X, stride_x_s, stride_x_b, HB + t64 * stride_hb_t, stride_hb_b, rows, rmask, H, HW, t,
                                   ERR, failed, max_spins, DT, PROTOCOL, KP, BITS)
        I, F, C_tilda, O, c, h_t = _hs_fwd_cell(Wt, W, stride_w, h, HB + t64 * stride_hb_t, stride_hb_b, xi, xf, xg, xo,
                                                c, units, rows, rmask, H, STATIONARY, DOT_PRECISION, HS, BB, BK)
        if PROTOCOL == "ll":
            ll_publish(X + ((t + 1) % 2) * stride_x_s, stride_x_b, 0, tl.where(m, h_t, 0.0).to(DT), rows, rmask, HW,
                       t + 1, HS, BB, BITS)
        _store_step(HB + (t64 + 1) * stride_hb_t, stride_hb_b, C + (t64 + 1) * stride_c_t, stride_c_b,
                    G + t64 * stride_g_t, stride_g_b, H, units, rows, m, I, F, C_tilda, O, c, h_t, SAVE, SAVE)
        if t + 1 < T:   # prefetch XG[t+1] before waiting on the other programs
            xi, xf, xg, xo = _load_xg(XG + (t64 + 1) * stride_xg_t, stride_xg_b, H, units, rows, m)
        if PROTOCOL == "counter":
            failed = grid_barrier(counter, (t + 1) * n_h, ERR, failed, max_spins)
    if not SAVE:        # C is (2, B, H): c_T into C[1]
        tl.store(C + stride_c_t + rows[None, :] * stride_c_b + units[:, None], c, mask=m)


@triton.jit(do_not_specialize=["t", "c_in", "c_out"])
def _hs_fwd_step_kernel(
    XG, W, HB, C, G, X, ERR,
    t, c_in, c_out, B, H, max_spins,
    stride_xg_t, stride_xg_b, stride_w, stride_hb_t, stride_hb_b, stride_c_t, stride_c_b, stride_g_t, stride_g_b,
    stride_x_s, stride_x_b, HW,
    SAVE: tl.constexpr, STATIONARY: tl.constexpr, DOT_PRECISION: tl.constexpr, HS: tl.constexpr, BB: tl.constexpr,
    KP: tl.constexpr, BK: tl.constexpr, PROTOCOL: tl.constexpr, BITS: tl.constexpr,
):
    """Step ``t`` only, with the persistent driver's read and publish: c_{t-1} from C[c_in], c_t
    into C[c_out] (the launcher ping-pongs two slots when nothing is saved)."""
    pid_h = tl.program_id(0)
    units, rows, rmask, m = program_slice(B, H, HS, BB)
    DT = W.dtype.element_ty
    t64 = tl.cast(t, tl.int64)
    Wt = 0
    h = 0
    failed = 0
    if STATIONARY:
        Wt = _load_w_rows(W, stride_w, H, pid_h, HS, KP)
        h, failed = _h_operand(X, stride_x_s, stride_x_b, HB + t64 * stride_hb_t, stride_hb_b, rows, rmask, H, HW, t,
                               ERR, failed, max_spins, DT, PROTOCOL, KP, BITS)
    c = tl.load(C + c_in.to(tl.int64) * stride_c_t + rows[None, :] * stride_c_b + units[:, None], mask=m, other=0.0)
    xi, xf, xg, xo = _load_xg(XG + t64 * stride_xg_t, stride_xg_b, H, units, rows, m)
    I, F, C_tilda, O, c, h_t = _hs_fwd_cell(Wt, W, stride_w, h, HB + t64 * stride_hb_t, stride_hb_b, xi, xf, xg, xo, c,
                                            units, rows, rmask, H, STATIONARY, DOT_PRECISION, HS, BB, BK)
    if PROTOCOL == "ll":
        ll_publish(X + ((t + 1) % 2) * stride_x_s, stride_x_b, 0, tl.where(m, h_t, 0.0).to(DT), rows, rmask, HW,
                   t + 1, HS, BB, BITS)
    _store_step(HB + (t64 + 1) * stride_hb_t, stride_hb_b, C + c_out.to(tl.int64) * stride_c_t, stride_c_b,
                G + t64 * stride_g_t, stride_g_b, H, units, rows, m, I, F, C_tilda, O, c, h_t, True, SAVE)


poison_steps = False    # tests: before each step of the step driver, NaN into HB[t+1:] and poison the
                        # exchange slot the step writes (tag -1: a read of it would time out)


def lstm_fwd_hidden_split(xg, h0, c0, w_hh, save_gates, cfg, precision, driver):
    """Launch the hidden-split forward (see the module docstring).

    Args: as :func:`lstm_fast.kernels.lstm_fwd` (w_hh square), plus the partition ``cfg``
    (:class:`.lstm_config.HiddenSplitConfig`, which names the step protocol), the dot
    ``precision`` and ``driver`` ("persistent" or "step").
    Returns: (Y (T, B, H) = HB[1:], C, G): C (T+1, B, H) with C[0] = c_0 when saving, else (2, B, H)
    whose last row is c_T; G (T, B, 4H) or None.
    """
    import torch

    T, B, G4 = xg.shape
    H = G4 // 4
    dev = xg.device
    acc = torch.float64 if w_hh.dtype == torch.float64 else torch.float32
    HB = torch.empty(T + 1, B, H, dtype=w_hh.dtype, device=dev)
    HB[0].copy_(h0)
    C = torch.empty(T + 1 if save_gates else 2, B, H, dtype=acc, device=dev)
    C[0].copy_(c0)
    G = torch.empty(T, B, 4 * H, dtype=acc, device=dev) if save_gates else None
    Gp = G if G is not None else C
    grid = cfg.grid(B, H)
    if cfg.protocol == "ll":
        X, hw, bits = ll_exchange(HB[0], B, H, 1, cfg, w_hh.dtype, dev)
    else:
        X, hw, bits = HB, 0, payload_bits(w_hh.dtype)       # placeholder pointer: nothing exchanged in words
    strides = (xg.stride(0), xg.stride(1), w_hh.stride(0), HB.stride(0), HB.stride(1), C.stride(0), C.stride(1),
               Gp.stride(0), Gp.stride(1), X.stride(0), X.stride(1), hw)
    tiles = dict(cfg.launch_options(precision), BITS=bits)
    if driver == "persistent":
        launch_persistent(_hs_fwd_persistent_kernel, grid, (xg, w_hh, HB, C, Gp, X), T, B, H, strides,
                          dict(SAVE=save_gates, **tiles), "lstm_fwd (hidden-split)")
    else:
        err = torch.zeros(1, dtype=torch.int32, device=dev)
        for t in range(T):
            if poison_steps:
                HB[t + 1:].fill_(float("nan"))
                if cfg.protocol == "ll":
                    X[(t + 1) % 2].fill_(-1)
            c_in, c_out = (t, t + 1) if save_gates else (t % 2, (t + 1) % 2)
            _hs_fwd_step_kernel[grid](xg, w_hh, HB, C, Gp, X, err, t, c_in, c_out, B, H, grid_sync.MAX_SPINS, *strides,
                                      SAVE=save_gates, **tiles)
        check_barrier_flag(err, "lstm_fwd (hidden-split, step driver)")
        if not save_gates and T % 2 == 0:
            C[1].copy_(C[0])      # c_T sits in slot T % 2; the caller reads C[-1]
    return HB[1:], C, G
