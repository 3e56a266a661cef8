"""Which ISA's build of a C kernel module this CPU runs: the AVX-512 one where it can, else the
AVX2 + FMA one, else none (another CPU, or an install built without a C compiler).

``LSTM_FAST_CPU_ISA=avx2`` (read at import) takes the AVX2 builds on an AVX-512 CPU too: how tests
and benchmarks reach the kernels an AVX2-only CPU runs."""
import functools
import importlib
import os


def load(avx512: str, avx2: str):
    """(module, "avx512" | "avx2") for the first of ``lstm_fast.cpu.<avx512>`` and
    ``lstm_fast.cpu.<avx2>`` that imports and whose ``available()`` is true; (None, None) if
    neither."""
    order = ((avx2, "avx2"),) if os.environ.get("LSTM_FAST_CPU_ISA") == "avx2" else ((avx512, "avx512"), (avx2, "avx2"))
    for name, isa in order:
        try:
            module = importlib.import_module(f"{__package__}.{name}")
        except ImportError:
            continue
        if module.available():
            return module, isa
    return None, None


@functools.lru_cache(maxsize=None)
def cpu_info() -> dict:
    """The first processor's fields of /proc/cpuinfo ("vendor_id", "model name", "flags", ...),
    or {} where it cannot be read: which CPU this is, beyond its ISA."""
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    if info:
                        break
                    continue
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return info
