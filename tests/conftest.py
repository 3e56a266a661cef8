"""Shared test setup: the Triton interpreter on machines without CUDA, a fresh seed per test,
NaN-poisoned fresh buffers, comparison helpers.

Without a CUDA device ``TRITON_INTERPRET=1`` is set here, before anything imports triton (torch
does not), so the Triton kernels run on CPU tensors through Triton's interpreter in the ordinary
test run. The sm_90 compile test clears it in the subprocess it starts.

``poison_empty`` replaces ``torch.empty``/``torch.empty_like`` for floating dtypes with NaN-filled
tensors while a test runs, so an output element an implementation forgets to write shows up as NaN
instead of passing by luck on recycled memory.
"""
import os
import zlib

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def seed(request):
    """A per-test seed derived from the test id: fresh inputs per test, reproducible per id."""
    s = zlib.crc32(request.node.nodeid.encode())
    torch.manual_seed(s)
    return s


@pytest.fixture(autouse=True)
def poison_empty(monkeypatch):
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def empty(*size, **kw):
        t = real_empty(*size, **kw)
        if t.is_floating_point() and kw.get("out") is None:
            t.fill_(float("nan"))
        return t

    def empty_like(x, **kw):
        t = real_empty_like(x, **kw)
        if t.is_floating_point():
            t.fill_(float("nan"))
        return t

    monkeypatch.setattr(torch, "empty", empty)
    monkeypatch.setattr(torch, "empty_like", empty_like)


def tolerances(dtype):
    return dict(rtol=1e-4, atol=2e-5) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-10)


def assert_close(actual, expected, dtype, what):
    assert actual is not None and expected is not None, f"{what}: missing gradient"
    assert not torch.isnan(actual).any() or torch.isnan(expected).any(), f"{what}: NaN in result"
    torch.testing.assert_close(actual, expected, **tolerances(dtype), msg=lambda m: f"{what}: {m}")
