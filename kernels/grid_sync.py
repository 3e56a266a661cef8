"""A bounded grid barrier for the persistent hidden-split kernels, and the helpers their step
bodies share.

Shape legend: B batch, T steps, H hidden; gates i, f, g, o (d2l: I, F, C_tilda, O).

Why a grid barrier: in the hidden-split kernels program n owns hidden units [n*HS, (n+1)*HS) of
every gate, so step t+1 of any program needs h_t from all of them. Each program publishes its slice
of h_t, then (one thread per program, after a CTA barrier so every warp's stores are done) does a
*release* increment of a counter and *acquire*-spins until the counter reaches ``(t+1) * N``.
Readers then load h_t with ``.cg`` (L2, not the possibly stale L1).

Why bounded: a barrier waits on programs that must be co-resident. The launcher keeps the grid at
most the SM count (and uses a cooperative launch where the Triton version has it), but should a
program never arrive the spin gives up after ``max_spins`` polls, sets an error flag and stops
waiting for the rest of the launch; the launcher turns the flag into a RuntimeError instead of a
hang. Under Triton's interpreter (programs run one after another) only a one-program grid may use
the barrier; the step-launch drivers cover the multi-program partition there.
"""
import triton
import triton.language as tl


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


@triton.jit
def sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def tanh(x):
    return 2.0 * sigmoid(2.0 * x) - 1.0


@triton.jit
def split_gates(acc, HS: tl.constexpr, BB: tl.constexpr):
    """[4*HS, BB] rows (i | f | g | o, HS units each) -> four [HS, BB] tensors i, f, g, o."""
    a = tl.permute(tl.reshape(acc, (4, HS, BB)), (1, 2, 0))          # [HS, BB, 4]
    a = tl.reshape(a, (HS, BB, 2, 2))                                 # gate = 2 * p + q
    q0, q1 = tl.split(a)                                              # q = 0: gates i, g; q = 1: f, o
    i, g = tl.split(q0)
    f, o = tl.split(q1)
    return i, f, g, o

