"""Reused buffers for the CPU implementation's large per-call tensors.

Why: a fresh multi-megabyte CPU tensor comes from mmap, and every first write to one of its pages
is a page fault. A d2l training step allocated ~6.6 MB that way (1,650 faults, over 1 ms of an
~8 ms step) where PyTorch's own LSTM (oneDNN) reuses a cached scratchpad and takes none.

How it stays safe: a buffer is handed out again only when nothing but this pool references its
storage (no saved-for-backward tensor, no output the caller kept, no view of either), checked with
the storage's use count. Buffers match the request's size and dtype exactly, so a returned tensor
never carries a larger storage than its own. One pool per thread; small requests bypass it.

Buffers are always ordinary tensors, even when first requested under ``torch.inference_mode()``:
an inference tensor cannot be saved for backward, so a buffer created while evaluating would
break the training step that reuses it.
"""
import threading

import torch

MIN_ELEMENTS = 1 << 16          # below this, malloc serves from the heap without faults anyway
MAX_BUFFERS = 16


def _storage_uses(t):
    return torch._C._storage_Use_Count(t.untyped_storage()._cdata)


def _baseline():
    """The use count a pooled tensor's storage shows when nothing else references it."""
    try:
        return _storage_uses(torch.empty(1))
    except (AttributeError, RuntimeError):  # an API this torch does not have: pool disabled
        return None


_FREE_COUNT = _baseline()


class _Pool(threading.local):
    def __init__(self):
        self.buffers = []


_pool = _Pool()


def empty(shape, dtype=torch.float32):
    """Like ``torch.empty(shape, dtype=dtype)`` on the CPU, reusing a free buffer of the same size."""
    n = 1
    for s in shape:
        n *= s
    if _FREE_COUNT is None or n < MIN_ELEMENTS:
        return torch.empty(shape, dtype=dtype)
    bufs = _pool.buffers
    with torch.inference_mode(False):    # ordinary tensors and views, whatever the caller's mode
        for k, buf in enumerate(bufs):
            if buf.numel() == n and buf.dtype == dtype and _storage_uses(buf) == _FREE_COUNT:
                bufs.insert(0, bufs.pop(k))
                return buf.view(shape)
        buf = torch.empty(n, dtype=dtype)
        bufs.insert(0, buf)
        del bufs[MAX_BUFFERS:]
        return buf.view(shape)


def zeros(shape, dtype=torch.float32):
    return empty(shape, dtype).zero_()

