"""What the hidden-split kernels share besides their math: each program's slice of the partition,
the bounded grid barrier of the persistent drivers, and their launch (counter, error flag,
cooperative launch, and the check that turns a timed-out barrier into an error).

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


MAX_SPINS = 1 << 22     # barrier polls before a launch gives up (seconds on an H100, never a hang)


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
    """Raise RuntimeError when a persistent launch's grid barrier timed out (skipped while a CUDA
    graph is being captured, where reading it would break the capture)."""
    import torch

    if err.is_cuda and torch.cuda.is_current_stream_capturing():
        return
    if int(err.item()):
        raise RuntimeError(f"{what}: a grid barrier timed out: not every program was co-resident on the GPU "
                           f"(another kernel occupying SMs?). The results of this call are invalid.")


def launch_persistent(kernel, grid, tensors, T, B, H, strides, options, what):
    """``kernel[grid](*tensors, COUNTER, ERR, T, B, H, max_spins, *strides, **options)`` with a
    fresh arrival counter per batch block, then the barrier check."""
    import torch

    dev = tensors[0].device
    counter = torch.zeros(grid[1], dtype=torch.int32, device=dev)
    err = torch.zeros(1, dtype=torch.int32, device=dev)
    kernel[grid](*tensors, counter, err, T, B, H, MAX_SPINS, *strides, **options, **cooperative_kwargs())
    check_barrier_flag(err, what)
