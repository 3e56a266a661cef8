"""How the hidden-split programs hand one step's result to each other, and their launch.

Shape legend: B batch, T steps, H hidden; gates i, f, g, o (d2l: I, F, C_tilda, O); HS hidden units
and BB batch rows per program; a *word* is one aligned 8-byte store.

Why: in the hidden-split kernels program (n, m) owns hidden units [n*HS, (n+1)*HS) of every gate
and batch rows [m*BB, (m+1)*BB), so step t+1 of any program needs all programs' step-t slices
(h_t forward, the gate gradients dG_t backward). Two protocols, chosen per shape by
:func:`.lstm_config.pick_plan` from the step-cost model (:mod:`.step_cost`):

* ``"ll"`` (the default where it fits; after NCCL's LL protocol, ``src/device/prims_ll.h``): each
  8-byte word carries 32 bits of payload (two 16-bit values, one float32, or half a float64) and,
  in its upper 32 bits, the step tag. A producer stores its slice's words with plain 64-bit stores;
  a reader polls *the data itself* with volatile loads until every word it needs carries the tag
  it expects, so a word that shows the tag holds that step's payload (an aligned 8-byte store is
  single-copy atomic: never torn). No counter, no flag, no fence, no atomic read-modify-write: one
  L2 round trip per step once the producers are done, instead of a release add, polls on one
  contended line and then the load of h. The words live in a ring of two slots (step t reads slot
  t % 2 with tag t, writes slot (t+1) % 2 with tag t+1): a producer can only overwrite slot s
  after reading every program's next slice, which each program publishes only after it finished
  reading slot s. The payload is the dot operand dtype (16-bit models: 16 bits), so a word is
  half payload: the protocol doubles the bytes each step reads, which the model weighs.
* ``"counter"`` (the fallback, kept until a GPU run decides): the data goes to HB / dG as plain
  stores; then (one thread per program, after a CTA barrier) a *release* increment of one counter
  per batch block and *acquire* polls of it until it reaches ``(t+1) * N``; readers then load the
  data with ``.cg``. Every poll is an atomic RMW on one L2 line shared by all N programs.

Both are bounded: a wait gives up after ``max_spins`` polls, sets the error flag and stops waiting
for the rest of the launch; the launcher turns the flag into a RuntimeError instead of a hang (a
program that never arrives: not co-resident, or killed). The launcher keeps the grid at most the
SM count and uses a cooperative launch where the Triton version has it. Under Triton's interpreter
(programs run one after another) only a one-program-per-batch-block grid may use the persistent
drivers; the step-launch drivers run the multi-program partition there with the same publish and
read functions (each launch is one step, so the words a step reads are already published).
"""
import triton
import triton.language as tl


@triton.jit
def program_slice(B, H, HS: tl.constexpr, BB: tl.constexpr):
    """Program (n, m)'s hidden units [n*HS, (n+1)*HS) and batch rows [m*BB, (m+1)*BB): (units,
    rows, rmask, m) with m the [HS, BB] mask of the valid ones."""
    units = tl.program_id(0) * HS + tl.arange(0, HS)
    rows = tl.program_id(1) * BB + tl.arange(0, BB)
    rmask = rows < B
    return units, rows, rmask, (units < H)[:, None] & rmask[None, :]


@triton.jit
def grid_barrier(counter, target, err, failed, max_spins):
    """Wait until ``counter`` reaches ``target`` (after adding this program's arrival).
    ``failed``: 0, or 1 once an earlier wait of this launch timed out (then it does not wait).
    Returns the new ``failed``."""
    tl.debug_barrier()                                   # every warp's stores of this step are issued
    tl.atomic_add(counter, 1, sem="release", scope="gpu")
    seen = tl.atomic_add(counter, 0, sem="acquire", scope="gpu")
    spins = 0
    while (seen < target) & (spins < max_spins) & (failed == 0):
        seen = tl.atomic_add(counter, 0, sem="acquire", scope="gpu")
        spins += 1
    if seen < target:
        failed = 1
        tl.store(err, 1)
    tl.debug_barrier()                                   # no warp reads h_t before the wait ends
    return failed


MAX_SPINS = 1 << 22     # polls before a launch gives up (seconds on an H100, never a hang)


# ---------------------------------------------------------------- "ll": self-validating words
@triton.jit
def ll_pack(vals, tag, BITS: tl.constexpr):
    """[R, C] payload values -> [R, C * BITS // 32] int64 words: payload bits low, ``tag`` high.
    BITS 16: two values per word (C even); 32: one; 64: each value as two words (low, high half)."""
    if BITS == 16:
        lo, hi = tl.split(tl.reshape(vals, (vals.shape[0], vals.shape[1] // 2, 2)))
        bits = lo.to(tl.uint16, bitcast=True).to(tl.int64) | (hi.to(tl.uint16, bitcast=True).to(tl.int64) << 16)
    elif BITS == 32:
        bits = vals.to(tl.uint32, bitcast=True).to(tl.int64)
    else:
        b = vals.to(tl.int64, bitcast=True)
        bits = tl.reshape(tl.join(b & 0xFFFFFFFF, (b >> 32) & 0xFFFFFFFF), (vals.shape[0], vals.shape[1] * 2))
    return bits | ((tl.zeros(bits.shape, tl.int64) + tag) << 32)


@triton.jit
def ll_unpack(words, DT: tl.constexpr, BITS: tl.constexpr):
    """[R, NW] words -> [R, NW * 32 // BITS] payload values of dtype DT (the inverse of ll_pack)."""
    p = words & 0xFFFFFFFF
    if BITS == 16:
        lo = (p & 0xFFFF).to(tl.uint16).to(DT, bitcast=True)
        hi = (p >> 16).to(tl.uint16).to(DT, bitcast=True)
        return tl.reshape(tl.join(lo, hi), (words.shape[0], words.shape[1] * 2))
    elif BITS == 32:
        return p.to(tl.uint32).to(DT, bitcast=True)
    else:
        lo, hi = tl.split(tl.reshape(p, (words.shape[0], words.shape[1] // 2, 2)))
        return (lo | (hi << 32)).to(DT, bitcast=True)


@triton.jit
def ll_publish(X_slot, stride_x_b, gate_word0, vals, rows, rmask, HW, tag,
               HS: tl.constexpr, BB: tl.constexpr, BITS: tl.constexpr):
    """Store this program's slice ``vals`` [HS, BB] (units x rows, payload dtype, zero past H) as
    tagged words into one slot of the exchange buffer: row b, gate words from ``gate_word0``, the
    slice's words ``[pid_h * HS * BITS / 32, ...)`` of the gate's ``HW``. Plain 64-bit stores."""
    NWS: tl.constexpr = HS * BITS // 32
    wi = tl.program_id(0) * NWS + tl.arange(0, NWS)
    words = ll_pack(tl.trans(vals), tag, BITS)                                    # [BB, NWS]
    tl.store(X_slot + rows[:, None] * stride_x_b + gate_word0 + wi[None, :], words,
             mask=rmask[:, None] & (wi < HW)[None, :])


@triton.jit
def ll_poll(ptrs, need, tag, err, failed, max_spins, DT: tl.constexpr, BITS: tl.constexpr):
    """The words at ``ptrs`` (a [R, NW] tile, ``need`` its mask) once every needed one carries
    ``tag``: ([R, NW * 32 // BITS] values of dtype DT, zero where not needed; failed). Polls with
    volatile loads (re-reading only the words still stale), at most ``max_spins`` times; then sets
    ``err`` and returns failed = 1 (the data are then not valid; the launcher raises)."""
    w = tl.load(ptrs, mask=need, other=0, volatile=True)
    stale = need & ((w >> 32) != tag)
    n_stale = tl.sum(stale.to(tl.int32))
    spins = 0
    while (n_stale > 0) & (spins < max_spins) & (failed == 0):
        w = tl.where(stale, tl.load(ptrs, mask=stale, other=0, volatile=True), w)
        stale = need & ((w >> 32) != tag)
        n_stale = tl.sum(stale.to(tl.int32))
        spins += 1
    timed_out = n_stale > 0
    tl.store(err, 1, mask=timed_out)
    return ll_unpack(w, DT, BITS), tl.where(timed_out, 1, failed)


@triton.jit
def ll_wait_read(X_slot, stride_x_b, gate_word0, rows, rmask, HW, tag, err, failed, max_spins,
                 NWP: tl.constexpr, DT: tl.constexpr, BITS: tl.constexpr):
    """All of one gate row (every program's slice) for this program's rows, once every word
    carries ``tag`` (:func:`ll_poll`): ([BB, NWP * 32 // BITS] values of dtype DT, zero past H;
    failed)."""
    wi = tl.arange(0, NWP)
    ptrs = X_slot + rows[:, None] * stride_x_b + gate_word0 + wi[None, :]
    need = rmask[:, None] & (wi < HW)[None, :]
    return ll_poll(ptrs, need, tag, err, failed, max_spins, DT, BITS)


@triton.jit
def _ll_init_kernel(SRC, X, B, H, HW, stride_src_b, stride_x_b,
                    GATES: tl.constexpr, ZERO: tl.constexpr, HS: tl.constexpr, BB: tl.constexpr, BITS: tl.constexpr):
    """Slot 0 of the exchange buffer: SRC (B, GATES*H) (h_0), or zeros (ZERO: dG_T), with tag 0,
    written by the same partition and ll_publish as the time loop."""
    units, rows, rmask, m = program_slice(B, H, HS, BB)
    for g in tl.static_range(GATES):
        v = tl.load(SRC + rows[None, :] * stride_src_b + g * H + units[:, None], mask=m & (not ZERO), other=0.0)
        ll_publish(X, stride_x_b, g * HW, v, rows, rmask, HW, 0, HS, BB, BITS)


def payload_bits(dtype):
    """Bits of one exchanged value: the dot operand dtype's."""
    import torch

    return torch.empty(0, dtype=dtype).element_size() * 8


def ll_row_words(H, bits):
    """Words one gate row of H values takes (16-bit: pairs, the last one padded for odd H)."""
    return (H * bits + 31) // 32


def ll_exchange(src, B, H, gates, cfg, dtype, device):
    """The two-slot exchange buffer (2, B, gates * HW) int64 for a hidden-split launch: every word
    poisoned (tag -1: never a step), then slot 0 published with tag 0 from ``src`` (B, gates*H):
    h_0, or zeros where ``src`` is None (dG_T). Returns (X, HW, bits)."""
    import torch

    bits = payload_bits(dtype)
    hw = ll_row_words(H, bits)
    X = torch.full((2, B, gates * hw), -1, dtype=torch.int64, device=device)
    s = torch.empty(1, gates * H, dtype=dtype, device=device) if src is None else src
    _ll_init_kernel[cfg.grid(B, H)](s, X, B, H, hw, s.stride(0), X.stride(1), GATES=gates, ZERO=src is None,
                                    HS=cfg.hs, BB=cfg.bb, BITS=bits, num_warps=4)
    return X, hw, bits


def cooperative_kwargs():
    """launch_cooperative_grid=True where this Triton has it (a launch the GPU cannot make
    co-resident then fails instead of deadlocking); nothing under the interpreter."""
    import os

    if os.environ.get("TRITON_INTERPRET") == "1":
        return {}
    try:
        from triton.backends.nvidia.compiler import CUDAOptions
    except ImportError:
        return {}
    return {"launch_cooperative_grid": True} if "launch_cooperative_grid" in CUDAOptions.__dataclass_fields__ else {}


def check_barrier_flag(err, what):
    """Raise RuntimeError when a launch's step wait (barrier or word poll) timed out (skipped while
    a CUDA graph is being captured, where reading it would break the capture)."""
    import torch

    if err.is_cuda and torch.cuda.is_current_stream_capturing():
        return
    if int(err.item()):
        raise RuntimeError(f"{what}: a step wait timed out: not every program was co-resident on the GPU "
                           f"(another kernel occupying SMs?). The results of this call are invalid.")


def launch_persistent(kernel, grid, tensors, T, B, H, strides, options, what, err=None):
    """``kernel[grid](*tensors, COUNTER, ERR, T, B, H, max_spins, *strides, **options)`` with a
    fresh arrival counter per batch block (the "counter" protocol; the error flag stands in
    otherwise), then the timeout check."""
    import torch

    dev = tensors[0].device
    err = torch.zeros(1, dtype=torch.int32, device=dev) if err is None else err
    counter = torch.zeros(grid[1], dtype=torch.int32, device=dev) if options.get("PROTOCOL") == "counter" else err
    kernel[grid](*tensors, counter, err, T, B, H, MAX_SPINS, *strides, **options, **cooperative_kwargs())
    check_barrier_flag(err, what)
