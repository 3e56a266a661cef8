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
* the step protocol (:mod:`.grid_sync`) hands dG[t] to every program: "ll" publishes it as
  tagged words (dG[t] is also stored plainly for the weight GEMMs) and step t-1 polls them, gate
  by gate; "counter" meets at the counter barrier and step t-1 loads dG[t] from L2 (the step
  driver: the kernel boundary orders the steps).

Where the column slice does not fit on chip, ``cfg.mc > 0`` selects the **partial-sum layout**
(the dispatcher's choice from the step-cost model): program n keeps the forward's *row* slice, the
4*HS gate rows of its units, as its transpose W_S^T (KP x 4HS) in ``KP // MC`` stationary chunks
of MC rows (the dot's M: a loop-invariant wgmma A operand, which Triton keeps in shared memory, as
the forward's slice). Its own gate gradients dG_t[:, gates of S] never leave the program: it
computes its *partial* recurrent gradient for all of H, ``P_n^T = W_S^T @ dG_t[:, gates of S]^T``
(M = MC per chunk, K = 4*HS, N = BB; accumulated in float32, float64 for float64), publishes it in
W_hh's dtype (P for all H columns, chunk by chunk), and step t-1 sums the n_h partials of its own HS
columns in float32, ``dh_{t-1}[:, S] = dY[t-1][:, S] + sum_p P_p[:, S]``, before its cell. Exchange:
"ll" tagged words (a 32-bit payload per word: two 16-bit values, one float32, half a float64),
polled PC producers at a time; "counter": plain stores into a (2, B, n_h * H) buffer of W_hh's
dtype and the counter barrier. Two slots as for dG.

Why the partials travel in 16 bits for 16-bit models: their bytes, written and read by every
program at every step, are the largest term of this layout's step in the model
(benchmarks/GPU_MODEL.md, "bwd exchange"); in 16 bits they are half. The cost is one rounding of
each of the n_h partials before the float32 sum (a GEMM-per-step backward on 16-bit tensors rounds
each step's summed product once), the class of h and dG, which already cross between programs in
16 bits in the other layouts; tests/test_triton_hidden_split.py compares the two layouts' errors.

The launcher folds dh_n into dY[T-1] and gives dG a zeroed slot T, so the first step needs no
special case; ``dh_0 = dG_0 @ W_hh`` and the weight gradients are GEMMs after the loop.
"""
import triton
import triton.language as tl

from .activations import tanh
from . import grid_sync
from .grid_sync import (check_barrier_flag, grid_barrier, launch_persistent, ll_exchange, ll_pack, ll_poll,
                        ll_publish, ll_row_words, ll_wait_read, payload_bits, program_slice)


@triton.jit
def _load_w_cols(W, stride_w, H, pid_h, gate: tl.constexpr, HS: tl.constexpr, KP: tl.constexpr):
    """Columns S of one gate's rows of W_hh (4H, H) as [HS, KP]: (j, u) = W[gate*H + u, S_j]."""
    u = tl.arange(0, KP)
    units = pid_h * HS + tl.arange(0, HS)
    return tl.load(W + (gate * H + u)[None, :] * stride_w + units[:, None], mask=(u < H)[None, :] & (units < H)[:, None],
                   other=0.0, eviction_policy="evict_last")


@triton.jit
def _load_wt_chunk(W, stride_w, H, pid_h, c: tl.constexpr, HS: tl.constexpr, MC: tl.constexpr):
    """Chunk ``c`` of the transposed row slice (the partial-sum layout): [MC, 4*HS] with
    (j, r) = W_hh[(r // HS) * H + S_{r % HS}, c * MC + j], zero past H."""
    r = tl.arange(0, 4 * HS)
    unit = pid_h * HS + r % HS
    row = (r // HS) * H + unit
    k = c * MC + tl.arange(0, MC)
    return tl.load(W + row[None, :] * stride_w + k[:, None], mask=(unit < H)[None, :] & (k < H)[:, None], other=0.0,
                   eviction_policy="evict_last")


@triton.jit
def _load_w_slices(W, stride_w, H, pid_h, STATIONARY: tl.constexpr, HS: tl.constexpr, KP: tl.constexpr,
                   MC: tl.constexpr):
    """The four stationary tiles: the gates' column slices (MC == 0), or the KP // MC <= 4 chunks of
    the transposed row slice (MC > 0; unused chunks are placeholders); placeholders when W_hh is
    streamed."""
    if STATIONARY:
        if MC > 0:
            NC: tl.constexpr = KP // MC
            w0 = _load_wt_chunk(W, stride_w, H, pid_h, 0, HS, MC)
            w1 = 0
            w2 = 0
            w3 = 0
            if NC > 1:
                w1 = _load_wt_chunk(W, stride_w, H, pid_h, 1, HS, MC)
            if NC > 2:
                w2 = _load_wt_chunk(W, stride_w, H, pid_h, 2, HS, MC)
                w3 = _load_wt_chunk(W, stride_w, H, pid_h, 3, HS, MC)
            return w0, w1, w2, w3
        else:
            return (_load_w_cols(W, stride_w, H, pid_h, 0, HS, KP), _load_w_cols(W, stride_w, H, pid_h, 1, HS, KP),
                    _load_w_cols(W, stride_w, H, pid_h, 2, HS, KP), _load_w_cols(W, stride_w, H, pid_h, 3, HS, KP))
    else:
        return 0, 0, 0, 0


@triton.jit
def _partial_sum(X_slot, stride_x_b, HW, rows, rmask, tag, err, failed, max_spins, ACC: tl.constexpr,
                 PDT: tl.constexpr, PROTOCOL: tl.constexpr, HS: tl.constexpr, BB: tl.constexpr, PC: tl.constexpr,
                 BITS: tl.constexpr):
    """The partial-sum layout's recurrent dh for this program, ``sum_p P_p[:, S]`` as [HS, BB] in ACC,
    and ``failed``: PC producers' HS columns at a time, from the tagged words ("ll": polled until
    every one carries ``tag``) or the plain buffer ("counter": ordered by the barrier; one element
    per value, HW = H). The partials arrive in PDT (W_hh's dtype: BITS bits a value) and are summed in
    ACC. Producer p's partial starts at word p * HW of a row."""
    pid_h, n_h = tl.program_id(0), tl.num_programs(0)
    NWS: tl.constexpr = HS * BITS // 32
    j = tl.arange(0, PC * NWS)
    pj = j // NWS
    wj = pid_h * NWS + j % NWS
    dh = tl.zeros((BB, HS), dtype=ACC)
    failed = tl.zeros((), dtype=tl.int32) + failed       # a tensor: the poll loop carries it
    for p0 in range(0, n_h, PC):
        p = p0 + pj
        need = rmask[:, None] & ((p < n_h) & (wj < HW))[None, :]
        ptrs = X_slot + rows[:, None] * stride_x_b + (p.to(tl.int64) * HW + wj)[None, :]
        if PROTOCOL == "ll":
            vals, failed = ll_poll(ptrs, need, tag, err, failed, max_spins, PDT, BITS)      # [BB, PC * HS]
        else:
            vals = tl.load(ptrs, mask=need, other=0.0, cache_modifier=".cg")
        dh += tl.sum(tl.reshape(vals.to(ACC), (BB, PC, HS)), axis=1)
    return tl.trans(dh), failed


@triton.jit
def _publish_chunk(Wc, dg, X_out, stride_x_b, HW, H, rows, rmask, tag, c: tl.constexpr, DOT_PRECISION: tl.constexpr,
                   PROTOCOL: tl.constexpr, MC: tl.constexpr, BB: tl.constexpr, BITS: tl.constexpr):
    """Columns [c*MC, (c+1)*MC) of this program's partial ``P^T = W_S^T @ dg`` ([MC, BB], accumulated
    in float32 / float64, published in W_hh's dtype: 16 bits a value for 16-bit models, the bytes of
    the exchange halved) into its words of the exchange slot ``X_out`` (see :func:`_partial_sum`)."""
    ACC: tl.constexpr = tl.float64 if dg.dtype == tl.float64 else tl.float32
    acc = tl.dot(Wc, dg, tl.zeros((MC, BB), dtype=ACC), input_precision=DOT_PRECISION).to(Wc.dtype)
    base = X_out + tl.program_id(0).to(tl.int64) * HW
    if PROTOCOL == "ll":
        NWC: tl.constexpr = MC * BITS // 32
        wi = c * NWC + tl.arange(0, NWC)
        tl.store(base + rows[:, None] * stride_x_b + wi[None, :], ll_pack(tl.trans(acc), tag, BITS),
                 mask=rmask[:, None] & (wi < HW)[None, :])
    else:
        k = c * MC + tl.arange(0, MC)
        tl.store(base + rows[None, :] * stride_x_b + k[:, None], acc, mask=(k < H)[:, None] & rmask[None, :])


@triton.jit
def _publish_partials(w0, w1, w2, w3, dI, dF, dC_tilda, dO, m, X_out, stride_x_b, HW, H, rows, rmask, tag,
                      DOT_PRECISION: tl.constexpr, PROTOCOL: tl.constexpr, HS: tl.constexpr, BB: tl.constexpr,
                      KP: tl.constexpr, MC: tl.constexpr, BITS: tl.constexpr):
    """The partial-sum layout's publish: this program's four gate gradients as one [4*HS, BB] dot
    operand (rows i | f | g | o, as the row slice; W_hh's dtype), against each stationary chunk."""
    DT = w0.dtype
    q0 = tl.join(tl.where(m, dI, 0.0).to(DT), tl.where(m, dC_tilda, 0.0).to(DT))      # gates 0, 2
    q1 = tl.join(tl.where(m, dF, 0.0).to(DT), tl.where(m, dO, 0.0).to(DT))            # gates 1, 3
    a = tl.reshape(tl.join(q0, q1), (HS, BB, 4))                                      # gate = 2 * p + q
    dg = tl.reshape(tl.permute(a, (2, 0, 1)), (4 * HS, BB))
    NC: tl.constexpr = KP // MC
    _publish_chunk(w0, dg, X_out, stride_x_b, HW, H, rows, rmask, tag, 0, DOT_PRECISION, PROTOCOL, MC, BB, BITS)
    if NC > 1:
        _publish_chunk(w1, dg, X_out, stride_x_b, HW, H, rows, rmask, tag, 1, DOT_PRECISION, PROTOCOL, MC, BB, BITS)
    if NC > 2:
        _publish_chunk(w2, dg, X_out, stride_x_b, HW, H, rows, rmask, tag, 2, DOT_PRECISION, PROTOCOL, MC, BB, BITS)
        _publish_chunk(w3, dg, X_out, stride_x_b, HW, H, rows, rmask, tag, 3, DOT_PRECISION, PROTOCOL, MC, BB, BITS)


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
def _recurrent_dh(Wi, Wf, Wg, Wo, W, stride_w, DG_t1, stride_dg_b, X_slot, stride_x_b, units, rows, rmask, H, HW, tag,
                  err, failed, max_spins, dc, STATIONARY: tl.constexpr, DOT_PRECISION: tl.constexpr,
                  PROTOCOL: tl.constexpr, KP: tl.constexpr, BK: tl.constexpr, BITS: tl.constexpr,
                  MC: tl.constexpr, PC: tl.constexpr):
    """``dG_{t+1} @ W_hh[:, S]`` as [HS, BB] (the accumulation dtype of dc) and ``failed``.
    STATIONARY: gate by gate against the on-chip column slices (K = KP each, so one [KP, BB] tile
    of dG_{t+1} is live at a time), that tile from the exchange words ("ll": polled until every
    word carries ``tag``) or from DG_t1 in L2 ("counter": the barrier already ordered it); else
    W_hh and dG_{t+1} streamed from L2 in chunks. MC > 0: the sum of the partials (:func:`_partial_sum`)."""
    if MC > 0:
        dh, failed = _partial_sum(X_slot, stride_x_b, HW, rows, rmask, tag, err, failed, max_spins, dc.dtype, Wi.dtype,
                                  PROTOCOL, dc.shape[0], dc.shape[1], PC, BITS)
    elif STATIONARY:
        dh = tl.zeros(dc.shape, dtype=dc.dtype)
        if PROTOCOL == "ll":
            DT = Wi.dtype
            NWP: tl.constexpr = KP * BITS // 32
            dg, failed = ll_wait_read(X_slot, stride_x_b, 0, rows, rmask, HW, tag, err, failed, max_spins, NWP, DT, BITS)
            dh = tl.dot(Wi, tl.trans(dg), dh, input_precision=DOT_PRECISION)
            dg, failed = ll_wait_read(X_slot, stride_x_b, HW, rows, rmask, HW, tag, err, failed, max_spins, NWP, DT, BITS)
            dh = tl.dot(Wf, tl.trans(dg), dh, input_precision=DOT_PRECISION)
            dg, failed = ll_wait_read(X_slot, stride_x_b, 2 * HW, rows, rmask, HW, tag, err, failed, max_spins, NWP, DT,
                                      BITS)
            dh = tl.dot(Wg, tl.trans(dg), dh, input_precision=DOT_PRECISION)
            dg, failed = ll_wait_read(X_slot, stride_x_b, 3 * HW, rows, rmask, HW, tag, err, failed, max_spins, NWP, DT,
                                      BITS)
            dh = tl.dot(Wo, tl.trans(dg), dh, input_precision=DOT_PRECISION)
        else:
            dh = _dgate_dot(Wi, DG_t1, stride_dg_b, H, rows, rmask, dh, 0, DOT_PRECISION, KP)
            dh = _dgate_dot(Wf, DG_t1, stride_dg_b, H, rows, rmask, dh, 1, DOT_PRECISION, KP)
            dh = _dgate_dot(Wg, DG_t1, stride_dg_b, H, rows, rmask, dh, 2, DOT_PRECISION, KP)
            dh = _dgate_dot(Wo, DG_t1, stride_dg_b, H, rows, rmask, dh, 3, DOT_PRECISION, KP)
    else:
        dh = _dh_streamed(W, stride_w, DG_t1, stride_dg_b, units, rows, rmask, H, dc, DOT_PRECISION, BK)
    return dh, failed


@triton.jit
def _hs_bwd_cell(dh, DY_t, stride_dy_b, G_t, stride_g_b, C_t, C_t1, stride_c_b, dc, units, rows, m, H):
    """The cell backward of one step for one program from ``dh`` (the recurrent part of dh_t):
    (dI, dF, dC_tilda, dO) pre-activation gradients and dc_{t-1}, each [HS, BB] in dc's dtype."""
    ACC = dc.dtype
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
def _store_gate_grads(DG_t, stride_dg_b, X_slot, stride_x_b, HW, tag, H, units, rows, rmask, m, dI, dF, dC_tilda, dO,
                      PROTOCOL: tl.constexpr, HS: tl.constexpr, BB: tl.constexpr, BITS: tl.constexpr,
                      MC: tl.constexpr):
    """The four gate gradients into dG[t] (in dG's dtype: the dot operand dtype) for the weight
    GEMMs, and ("ll", column layout) as tagged words into the exchange slot the next step reads."""
    p = DG_t + rows[None, :] * stride_dg_b + units[:, None]
    ty = DG_t.dtype.element_ty
    tl.store(p, dI.to(ty), mask=m)
    tl.store(p + H, dF.to(ty), mask=m)
    tl.store(p + 2 * H, dC_tilda.to(ty), mask=m)
    tl.store(p + 3 * H, dO.to(ty), mask=m)
    if PROTOCOL == "ll" and MC == 0:
        ll_publish(X_slot, stride_x_b, 0, tl.where(m, dI, 0.0).to(ty), rows, rmask, HW, tag, HS, BB, BITS)
        ll_publish(X_slot, stride_x_b, HW, tl.where(m, dF, 0.0).to(ty), rows, rmask, HW, tag, HS, BB, BITS)
        ll_publish(X_slot, stride_x_b, 2 * HW, tl.where(m, dC_tilda, 0.0).to(ty), rows, rmask, HW, tag, HS, BB, BITS)
        ll_publish(X_slot, stride_x_b, 3 * HW, tl.where(m, dO, 0.0).to(ty), rows, rmask, HW, tag, HS, BB, BITS)


@triton.jit(do_not_specialize=["T"])
def _hs_bwd_persistent_kernel(
    DY, W, G, C, DG, DC, X, COUNTER, ERR,
    T, B, H, max_spins,
    stride_dy_t, stride_dy_b, stride_w, stride_g_t, stride_g_b, stride_c_t, stride_c_b, stride_dg_t, stride_dg_b,
    stride_dc, stride_x_s, stride_x_b, HW,
    STATIONARY: tl.constexpr, DOT_PRECISION: tl.constexpr, HS: tl.constexpr, BB: tl.constexpr, KP: tl.constexpr,
    BK: tl.constexpr, PROTOCOL: tl.constexpr, BITS: tl.constexpr, MC: tl.constexpr, PC: tl.constexpr,
):
    pid_h, pid_b, n_h = tl.program_id(0), tl.program_id(1), tl.num_programs(0)
    units, rows, rmask, m = program_slice(B, H, HS, BB)
    Wi, Wf, Wg, Wo = _load_w_slices(W, stride_w, H, pid_h, STATIONARY, HS, KP, MC)   # on chip for all T
    dc_ptr = DC + rows[None, :] * stride_dc + units[:, None]
    dc = tl.load(dc_ptr, mask=m, other=0.0)
    counter = COUNTER + pid_b
    failed = 0
    for s in range(T):          # step s is time t = T-1-s; it reads slot s % 2 (tag s), writes (s+1) % 2
        t64 = tl.cast(T - 1 - s, tl.int64)
        dh, failed = _recurrent_dh(Wi, Wf, Wg, Wo, W, stride_w, DG + (t64 + 1) * stride_dg_t, stride_dg_b,
                                   X + (s % 2) * stride_x_s, stride_x_b, units, rows, rmask, H, HW, s, ERR, failed,
                                   max_spins, dc, STATIONARY, DOT_PRECISION, PROTOCOL, KP, BK, BITS, MC, PC)
        dI, dF, dC_tilda, dO, dc = _hs_bwd_cell(dh, DY + t64 * stride_dy_t, stride_dy_b, G + t64 * stride_g_t,
                                                stride_g_b, C + t64 * stride_c_t, C + (t64 + 1) * stride_c_t,
                                                stride_c_b, dc, units, rows, m, H)
        _store_gate_grads(DG + t64 * stride_dg_t, stride_dg_b, X + ((s + 1) % 2) * stride_x_s, stride_x_b, HW, s + 1,
                          H, units, rows, rmask, m, dI, dF, dC_tilda, dO, PROTOCOL, HS, BB, BITS, MC)
        if MC > 0:
            _publish_partials(Wi, Wf, Wg, Wo, dI, dF, dC_tilda, dO, m, X + ((s + 1) % 2) * stride_x_s, stride_x_b, HW, H,
                              rows, rmask, s + 1, DOT_PRECISION, PROTOCOL, HS, BB, KP, MC, BITS)
        if PROTOCOL == "counter":
            failed = grid_barrier(counter, (s + 1) * n_h, ERR, failed, max_spins)
    tl.store(dc_ptr, dc, mask=m)


@triton.jit(do_not_specialize=["s"])
def _hs_bwd_step_kernel(
    DY, W, G, C, DG, DC, X, ERR,
    s, T, B, H, max_spins,
    stride_dy_t, stride_dy_b, stride_w, stride_g_t, stride_g_b, stride_c_t, stride_c_b, stride_dg_t, stride_dg_b,
    stride_dc, stride_x_s, stride_x_b, HW,
    STATIONARY: tl.constexpr, DOT_PRECISION: tl.constexpr, HS: tl.constexpr, BB: tl.constexpr, KP: tl.constexpr,
    BK: tl.constexpr, PROTOCOL: tl.constexpr, BITS: tl.constexpr, MC: tl.constexpr, PC: tl.constexpr,
):
    """Reverse step ``s`` (time T-1-s) only, with the persistent driver's read and publish; dc is
    read from and written back to DC (each program its own slice)."""
    pid_h = tl.program_id(0)
    units, rows, rmask, m = program_slice(B, H, HS, BB)
    t64 = tl.cast(T - 1 - s, tl.int64)
    Wi, Wf, Wg, Wo = _load_w_slices(W, stride_w, H, pid_h, STATIONARY, HS, KP, MC)
    dc_ptr = DC + rows[None, :] * stride_dc + units[:, None]
    dc = tl.load(dc_ptr, mask=m, other=0.0)
    dh, failed = _recurrent_dh(Wi, Wf, Wg, Wo, W, stride_w, DG + (t64 + 1) * stride_dg_t, stride_dg_b,
                               X + (s % 2) * stride_x_s, stride_x_b, units, rows, rmask, H, HW, s, ERR, 0,
                               max_spins, dc, STATIONARY, DOT_PRECISION, PROTOCOL, KP, BK, BITS, MC, PC)
    dI, dF, dC_tilda, dO, dc = _hs_bwd_cell(dh, DY + t64 * stride_dy_t, stride_dy_b, G + t64 * stride_g_t, stride_g_b,
                                            C + t64 * stride_c_t, C + (t64 + 1) * stride_c_t, stride_c_b, dc,
                                            units, rows, m, H)
    _store_gate_grads(DG + t64 * stride_dg_t, stride_dg_b, X + ((s + 1) % 2) * stride_x_s, stride_x_b, HW, s + 1,
                      H, units, rows, rmask, m, dI, dF, dC_tilda, dO, PROTOCOL, HS, BB, BITS, MC)
    if MC > 0:
        _publish_partials(Wi, Wf, Wg, Wo, dI, dF, dC_tilda, dO, m, X + ((s + 1) % 2) * stride_x_s, stride_x_b, HW, H,
                          rows, rmask, s + 1, DOT_PRECISION, PROTOCOL, HS, BB, KP, MC, BITS)
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
    if cfg.mc:     # partial-sum layout: producer p's partial P_p (B, H), W_hh's dtype, at words [p * hw, (p+1) * hw)
        if cfg.protocol == "ll":
            bits = payload_bits(w_hh.dtype)     # 16-bit: two values a word; float64: two words a value
            hw = ll_row_words(H, bits)
            X = torch.full((2, B, grid[0] * hw), -1, dtype=torch.int64, device=dev)
            X[0].zero_()                        # slot 0: the partials of dG_T = 0, tag 0
        else:     # one element a value: BITS 32 makes the kernels' word index the element index
            X, hw, bits = torch.zeros(2, B, grid[0] * H, dtype=w_hh.dtype, device=dev), H, 32
    elif cfg.protocol == "ll":
        X, hw, bits = ll_exchange(None, B, H, 4, cfg, w_hh.dtype, dev)     # slot 0: dG_T = 0, tag 0
    else:
        X, hw, bits = DG, 0, payload_bits(w_hh.dtype)       # placeholder pointer: nothing exchanged in words
    strides = (DY.stride(0), DY.stride(1), w_hh.stride(0), G.stride(0), G.stride(1), C.stride(0), C.stride(1),
               DG.stride(0), DG.stride(1), DC.stride(0), X.stride(0), X.stride(1), hw)
    tiles = dict(cfg.launch_options(precision), BITS=bits, MC=cfg.mc, PC=cfg.pc)
    if driver == "persistent":
        launch_persistent(_hs_bwd_persistent_kernel, grid, (DY, w_hh, G, C, DG, DC, X), T, B, H, strides, tiles,
                          "lstm_bwd (hidden-split)")
    else:
        err = torch.zeros(1, dtype=torch.int32, device=dev)
        # 16-bit: triton 3.6's ptxas held this kernel to 128 registers and spilled 8 B (ll, B1 H256); allowed
        # 255 it takes 224 and spills nothing. Not for 32-bit words: tf32 B8 H256 then spilled 208 B
        # (198 registers and no spill without it). benchmarks/sm90/triton-3.6.0.json has both builds' rows.
        step_regs = dict(maxnreg=255) if w_hh.element_size() == 2 else {}
        for s in range(T):
            if poison_steps:
                DG[:T - s].fill_(float("nan"))      # dG_t for t <= T-1-s: not written yet
                if cfg.protocol == "ll":
                    X[(s + 1) % 2].fill_(-1)
                elif cfg.mc:
                    X[(s + 1) % 2].fill_(float("nan"))
            _hs_bwd_step_kernel[grid](DY, w_hh, G, C, DG, DC, X, err, s, T, B, H, grid_sync.MAX_SPINS, *strides,
                                      **step_regs, **tiles)
        check_barrier_flag(err, "lstm_bwd (hidden-split, step driver)")
    dG = DG[:T]
    dh0 = (dG[0] @ w_hh).to(acc)       # dh_0 = dG_0 W_hh
    return dG, dh0, DC


poison_steps = False    # tests: before each step of the step driver, NaN into the dG rows not yet written and
                        # poison the exchange slot the step writes (tag -1: a read of it would time out)
