"""Which implementation runs a layer: the backend names, their availability, and the choice.

``"cpu"``: the hand-written CPU implementation (:mod:`lstm_fast.cpu`); CPU tensors only.
``"triton"``: the fused Triton kernels (:mod:`lstm_fast.kernels`); CUDA tensors, or CPU tensors
under Triton's interpreter (``TRITON_INTERPRET=1`` set before triton is imported).
``"auto"``: Triton on CUDA tensors, the CPU implementation on CPU tensors.

An explicitly requested backend that cannot run is an error, never a silent switch.
"""
import os

BACKENDS = ("auto", "cpu", "triton")


def check_backend_name(backend) -> str:
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def triton_unavailable_reason(device_type: str):
    """None when the Triton backend can run on tensors of ``device_type``, else why not.

    The device is checked before triton is imported: importing the kernels decides, once, whether
    they are compiled or interpreted (TRITON_INTERPRET), so a question asked without the
    interpreter must not import them.
    """
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    if device_type != "cuda" and not (device_type == "cpu" and interpreted):
        return (f"Triton runs on CUDA tensors (or on CPU tensors with TRITON_INTERPRET=1 set before "
                f"triton is imported); got {device_type} tensors")
    try:
        from .. import kernels
    except ImportError as e:  # triton missing, or too old
        return f"the Triton kernels could not be imported ({e})"
    if not getattr(kernels, "HAS_KERNELS", False):
        return "this build of lstm_fast has no Triton LSTM kernels yet"
    return None


def resolve_backend(backend: str, device_type: str) -> str:
    """Map a requested backend to the one that runs, or raise RuntimeError saying why none can."""
    check_backend_name(backend)
    if backend == "auto":
        backend = "triton" if device_type == "cuda" else "cpu"
    if backend == "cpu" and device_type != "cpu":
        raise RuntimeError(f"backend='cpu' needs CPU tensors, got {device_type} tensors; "
                           f"move them with .cpu() or use backend='triton'")
    if backend == "triton":
        reason = triton_unavailable_reason(device_type)
        if reason is not None:
            raise RuntimeError(f"backend='triton' is not available: {reason}")
    return backend
