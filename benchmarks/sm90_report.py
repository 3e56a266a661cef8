"""Build every kernel the dispatcher can launch for an H100 (sm_90a), without a GPU, and report what
each costs from its machine code.

    python benchmarks/sm90_report.py --json sm90.json --sass-dir sass/

Why: the GPU is rarely available, so the H100 build is checked here: registers, shared memory,
spills (local memory, LDL/STL), whether the recurrent weight is loaded inside the time loop, and
which matrix instruction the dot became (HGMMA = Hopper's wgmma, HMMA = mma.sync, DMMA, or plain
FMA).

How, so that what is compiled is what a real launch compiles: the real launchers
(:func:`lstm_fast.kernels.lstm_fwd`, :func:`lstm_fast.kernels.lstm_bwd`) run on CPU tensors of the
real shapes with each plan forced, and every kernel launch is intercepted and compiled for sm_90a
through Triton's own argument binder (the same divisibility/constant specialisation a launch on
device memory gets: CPU and CUDA allocations are both 16-byte aligned) instead of being run.

Rows (one per kernel and configuration): kernel, path ("hidden_split" / "batch_tiled"), stationary
(hidden-split with W_hh on chip, or streamed from L2 where the slice does not fit), driver,
dtype, precision, B, H, config, registers, shared_bytes, spill_bytes (local memory and stack),
ldl_stl (count in the SASS), w_loads_in_time_loop (loads of W_hh inside the outermost loop of a
persistent kernel: W loads carry an evict-last hint, so they are told apart in SASS as ``LDG...EL``),
protocol (hidden-split step exchange: "ll" or "counter"; the backward's config MC > 0 is its
partial-sum layout, ``_partial<MC>`` in the SASS file's name), atomics_in_time_loop (ATOM/ATOMG/RED
instructions inside that loop: 0 for "ll", whose waits poll with plain volatile loads), mma,
triton, commit. The "ll" exchange's init kernel (``_ll_init_kernel``) has rows too. Exit status 1 when any row spills, has LDL/STL or needs more than 227 KB of shared memory.
Runs without TRITON_INTERPRET (the interpreter replaces @triton.jit functions).
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DTYPE_NAMES = {"torch.bfloat16": "bfloat16", "torch.float16": "float16", "torch.float32": "float32",
               "torch.float64": "float64"}
SHORT = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "float64": "fp64"}
SHARED_LIMIT = 227 * 1024   # an H100 SM's shared memory per block
REPORT_T = 3            # steps of the launches intercepted (T is never specialised)


def _cuobjdump():
    import triton
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def compile_as_launched(fn, args, kwargs):
    """Compile ``fn`` for sm_90a exactly as ``fn[grid](*args, **kwargs)`` would specialise it."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget("cuda", 90, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound_args, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound_args, specialization, options)
    return triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__)


def sass_of(kernel):
    """(SASS text, resource usage dict) of a compiled kernel, from the bundled cuobjdump."""
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(kernel.asm["cubin"])
        cubin = f.name
    try:
        sass = subprocess.run([_cuobjdump(), "-sass", cubin], capture_output=True, text=True, check=True).stdout
        usage = subprocess.run([_cuobjdump(), "--dump-resource-usage", cubin], capture_output=True, text=True,
                               check=True).stdout
    finally:
        os.unlink(cubin)
    return sass, {k.lower(): int(v) for k, v in re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", usage)}


_INSN = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?);")


def instructions(sass):
    """[(address, text)] of the SASS."""
    return [(int(a, 16), t.strip()) for a, t in _INSN.findall(sass)]


def outermost_loop(insns):
    """(start, end) addresses of the widest backward branch's range, or None (no loop)."""
    best = None
    for addr, text in insns:
        m = re.search(r"\bBRA\b.*?0x([0-9a-f]+)", text)
        if m and int(m.group(1), 16) < addr:
            lo = int(m.group(1), 16)
            if best is None or addr - lo > best[1] - best[0]:
                best = (lo, addr)
    return best


def analyse(sass):
    insns = instructions(sass)
    ops = [t for _, t in insns]
    mma = next((k for k in ("HGMMA", "HMMA", "DMMA") if any(k in t for t in ops)), "FMA")
    loop = outermost_loop(insns)
    w_in_loop = None
    if loop is not None:
        w_in_loop = sum(1 for a, t in insns if loop[0] <= a <= loop[1] and re.search(r"\bLDG\.\S*EL\b", t))
    atomics = None
    if loop is not None:
        atomics = sum(1 for a, t in insns if loop[0] <= a <= loop[1] and re.search(r"\b(ATOM|ATOMG|ATOMS|RED|REDG)\.", t))
    return dict(mma=mma, ldl_stl=sum(1 for t in ops if re.search(r"\b(LDL|STL)\b", t)),
                w_loads_total=sum(1 for t in ops if re.search(r"\bLDG\.\S*EL\b", t)), w_loads_in_time_loop=w_in_loop,
                atomics_in_time_loop=atomics, has_time_loop=loop is not None)


class _Interceptor:
    """Replaces JITFunction.run: records each launch (compiled instead of run), returns nothing."""

    def __init__(self):
        self.calls = []

    def __enter__(self):
        from triton.runtime.jit import JITFunction
        self._orig = JITFunction.run
        calls = self.calls

        def run(fn, *args, grid, warmup, **kwargs):
            calls.append((fn, args, dict(kwargs)))
        JITFunction.run = run
        return self

    def __exit__(self, *exc):
        from triton.runtime.jit import JITFunction
        JITFunction.run = self._orig


def launches(path, driver, dtype, precision, B, H, T=REPORT_T):
    """The kernel launches the real forward (saving and not) and backward make for this plan."""
    import torch

    from lstm_fast.kernels import lstm_bwd, lstm_config, lstm_fwd

    if path == "matmul":       # the TF32 GEMM at a large and a narrow shape (its tiles shrink to small M, N)
        from lstm_fast.kernels import matmul
        with _Interceptor() as rec:
            for M, K, N in ((B * T, 4 * H, H), (16, B * T, 4 * H)):
                matmul(torch.randn(M, K), torch.randn(K, N), precision)
        return rec.calls
    saved = (lstm_config.forced_path, lstm_config.forced_driver, lstm_config.dot_precision)
    # hidden-split: the dispatcher's own choice (forcing it would lift the on-chip limits)
    lstm_config.forced_path = None if path == "hidden_split" else path
    lstm_config.forced_driver = driver
    lstm_config.dot_precision = lambda *_: precision
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    try:
        with _Interceptor() as rec:
            xg = torch.randn(T, B, 4 * H, dtype=dtype)
            w = torch.randn(4 * H, H, dtype=dtype)
            h0, c0 = torch.zeros(B, H, dtype=dtype), torch.zeros(B, H, dtype=acc)
            lstm_fwd(xg, h0, c0, w, save_gates=True)
            lstm_fwd(xg, h0, c0, w, save_gates=False)
            G, C = torch.rand(T, B, 4 * H, dtype=acc), torch.randn(T + 1, B, H, dtype=acc)
            lstm_bwd(torch.randn(T, B, H, dtype=dtype), torch.randn(B, H, dtype=acc), torch.randn(B, H, dtype=acc),
                     w, G, C)
    finally:
        lstm_config.forced_path, lstm_config.forced_driver, lstm_config.dot_precision = saved
    seen, out = set(), []
    for fn, args, kwargs in rec.calls:
        key = (fn.__name__, tuple(sorted((k, v) for k, v in kwargs.items())))
        if key not in seen:
            seen.add(key)
            out.append((fn, args, kwargs))
    return out


def plans():
    """(path, driver, dtype, precision, B, H) covering every configuration the dispatcher can
    return on an H100 (launches that compile to the same kernel are reported once)."""
    from lstm_fast.kernels import lstm_config

    rows = []
    for direction, cfg, dtype, precision, B, H in lstm_config.all_plans():
        for driver in ("persistent", "step"):
            rows.append(("hidden_split", driver, dtype, precision, B, H, direction))
    for cfg, dtype, precision in lstm_config.all_configs():
        B, H = next((B, H) for B in (1, lstm_config.LARGE_BATCH + 1) for H in (1024, 65, 33, 17, 1)
                    if lstm_config.pick_config(B, H, dtype, precision) == cfg)
        rows.append(("batch_tiled", "-", dtype, precision, B, H, None))
    import torch
    rows.append(("matmul", "-", torch.float32, "tf32", 64, 1024, None))
    return rows


_JOBS = []   # (fn, args, kwargs) for the forked workers, indexed


def _build_one(i):
    fn, args, kwargs = _JOBS[i]
    kernel = compile_as_launched(fn, args, kwargs)
    sass, usage = sass_of(kernel)
    return sass, usage, analyse(sass), kernel.metadata.shared


def _build_all(jobs, n_procs):
    """Compile the distinct kernels, in ``n_procs`` forked processes (compiles are independent and
    CPU-bound: the report's run time is theirs). Returns key -> (sass, usage, analysis, shared)."""
    keys = list(jobs)
    _JOBS[:] = [jobs[k] for k in keys]
    if n_procs > 1 and len(keys) > 1:
        import multiprocessing
        with multiprocessing.get_context("fork").Pool(n_procs) as pool:
            results = pool.map(_build_one, range(len(keys)), chunksize=1)
    else:
        results = [_build_one(i) for i in range(len(keys))]
    return dict(zip(keys, results, strict=True))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", required=True, help="write the rows here (a JSON list)")
    ap.add_argument("--sass-dir", help="write each kernel's SASS here")
    ap.add_argument("--only", choices=("hidden_split", "batch_tiled", "matmul"), help="one path only")
    ap.add_argument("--dtype", action="append", help="only these dtypes (bfloat16, float16, float32, float64); repeatable")
    ap.add_argument("--hidden", type=int, action="append", help="only these H; repeatable")
    ap.add_argument("--driver", choices=("persistent", "step"), help="hidden-split: one driver only")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compiles in parallel")
    a = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("sm90_report: unset TRITON_INTERPRET (the interpreter replaces @triton.jit functions)")
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    import triton

    sys.path.insert(0, str(ROOT))
    rows = []
    if a.sass_dir:
        Path(a.sass_dir).mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    entries, jobs, seen = [], {}, set()   # every row's launch first, then the distinct kernels in parallel
    for path, driver, dtype, precision, B, H, direction in plans():
        if (a.only and path != a.only) or (a.dtype and DTYPE_NAMES[str(dtype)] not in a.dtype) or \
                (a.hidden and H not in a.hidden) or (a.driver and driver not in (a.driver, "-")):
            continue
        for fn, args, kwargs in launches(path, None if driver == "-" else driver, dtype, precision, B, H):
            if path == "hidden_split" and not ((fn.__name__.startswith("_hs_") and direction in fn.__name__)
                                               or fn.__name__ == "_ll_init_kernel"):
                continue      # this (B, H) picks hidden-split for the other direction only
            key = (fn.__name__, str(dtype), tuple(sorted(kwargs.items())))    # kwargs alone omit the dtype
            if path == "matmul":
                key = key + ((kwargs["BM"], kwargs["BN"]),)
            if (key, H) in seen:
                continue      # the same kernel at another H: one compile, one row per H
            seen.add((key, H))
            jobs.setdefault(key, (fn, args, kwargs))
            entries.append((key, path, driver, DTYPE_NAMES[str(dtype)], precision, B, H, fn, kwargs))
    built = _build_all(jobs, a.jobs)
    for key, path, driver, dname, precision, B, H, fn, kwargs in entries:
        sass, usage, info, dyn_shared = built[key]
        kdir = "bwd" if "bwd" in fn.__name__ else "fwd" if "fwd" in fn.__name__ else \
            "init" if fn.__name__ == "_ll_init_kernel" else "gemm"
        variant = ("" if kwargs.get("SAVE", True) else "_nosave") + ("" if kwargs.get("STATIONARY", True) else "_streamed") \
            + (f"_partial{kwargs['MC']}" if kwargs.get("MC") else "") + (f"_{kwargs['PROTOCOL']}" if "PROTOCOL" in kwargs else "") + (f"_G{kwargs['GATES']}" if "GATES" in kwargs else "")
        tag = f"{path}_{kdir}{variant}_{driver}_{SHORT[dname]}_{precision}_B{B}_H{H}".replace("_-_", "_")
        if path == "matmul":
            tag += f"_BM{kwargs['BM']}_BN{kwargs['BN']}"
        if a.sass_dir:
            Path(a.sass_dir, tag + ".sass").write_text(sass)
        row = dict(kernel=fn.__name__, path=path, driver=driver, direction=kdir, save=kwargs.get("SAVE", True),
                   stationary=kwargs.get("STATIONARY", path == "hidden_split"), protocol=kwargs.get("PROTOCOL"),
                   dtype=dname, precision=precision, B=B, H=H,
                   config={k: v for k, v in kwargs.items() if k.isupper() or k.startswith('num_')},
                   registers=usage.get("reg", 0), shared_bytes=usage.get("shared", 0) + dyn_shared,
                   spill_bytes=usage.get("local", 0) + usage.get("stack", 0), **info,
                   triton=triton.__version__, commit=commit, sass=tag + ".sass")
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("kernel", "driver", "dtype", "precision", "B", "H", "registers",
                                              "shared_bytes", "spill_bytes", "ldl_stl", "w_loads_in_time_loop",
                                              "atomics_in_time_loop", "protocol", "mma")}), flush=True)
    from lstm_fast.d2l.files import atomic_write_bytes
    atomic_write_bytes(Path(a.json), (json.dumps(rows, indent=1) + "\n").encode())
    bad = [r for r in rows if r["spill_bytes"] or r["ldl_stl"] or r["shared_bytes"] > SHARED_LIMIT]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
