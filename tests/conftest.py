"""Shared test setup: the Triton interpreter on machines without CUDA, a fresh seed per test,
NaN-poisoned fresh buffers, comparison helpers.

Without a CUDA device ``TRITON_INTERPRET=1`` is set here, before anything imports triton (torch
does not), so the Triton kernels run on CPU tensors through Triton's interpreter in the ordinary
test run. The sm_90 compile test clears it in the subprocess it starts.

``poison_empty`` replaces ``torch.empty``/``torch.empty_like`` for floating dtypes with NaN-filled
tensors while a test runs, and fills every buffer the CPU workspace pool hands out (fresh or
reused) with NaN, so an output element an implementation forgets to write shows up as NaN instead
of passing by luck on recycled memory.
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

    # Reused pool buffers too: a buffer handed out again holds the last call's numbers, which
    # would hide an element a kernel forgets to write just as recycled memory does.
    from lstm_fast.cpu import workspace
    real_pool_empty = workspace.empty

    def pool_empty(shape, dtype=torch.float32):
        t = real_pool_empty(shape, dtype)
        if t.is_floating_point():
            t.fill_(float("nan"))
        return t

    monkeypatch.setattr(workspace, "empty", pool_empty)


# The one-layer grid test_functional and test_input_projection both run against nn.LSTM: odd
# sizes, a single step, a single row, H below the 16-unit kernel block, and the d2l shape.
SHAPES = [  # (T, B, D, H)
    pytest.param(1, 1, 1, 1, id="T1-B1-D1-H1"),
    pytest.param(5, 3, 4, 33, id="T5-B3-D4-H33"),
    pytest.param(7, 1, 9, 100, id="T7-B1-D9-H100"),
    pytest.param(3, 17, 5, 2, id="T3-B17-D5-H2"),
    pytest.param(35, 32, 28, 256, id="d2l-T35-B32-D28-H256"),
]
DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float64, id="fp64")]


def tolerances(dtype):
    return dict(rtol=1e-4, atol=2e-5) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-10)


def assert_close(actual, expected, dtype, what):
    assert actual is not None and expected is not None, f"{what}: missing gradient"
    assert not torch.isnan(actual).any() or torch.isnan(expected).any(), f"{what}: NaN in result"
    torch.testing.assert_close(actual, expected, **tolerances(dtype), msg=lambda m: f"{what}: {m}")


def check_lengths_against_nn_lstm(lens, dtype, device, backend):
    """fused_lstm(lengths=...): each row equals nn.LSTM run on that row's own sequence (outputs,
    h_n, c_n and every gradient); outputs past a row's length are 0; a row of length 0 keeps
    (h_0, c_0)."""
    from torch import nn

    from lstm_fast import fused_lstm
    T, B, D, H = max(lens), len(lens), 3, 6
    ref = nn.LSTM(D, H, dtype=dtype, device=device)
    params = [p.detach().clone().requires_grad_() for p in ref.parameters()]
    x = torch.randn(T, B, D, dtype=dtype, device=device, requires_grad=True)
    hx = tuple(torch.randn(B, H, dtype=dtype, device=device, requires_grad=True) for _ in range(2))
    y, (h, c) = fused_lstm(x, hx, *params, lengths=torch.tensor(lens), backend=backend)
    wy, wh, wc = torch.randn_like(y), torch.randn_like(h), torch.randn_like(c)
    g = torch.autograd.grad((y * wy).sum() + (h * wh).sum() + (c * wc).sum(), [x, *hx, *params])
    ref_loss = 0
    for b, n in enumerate(lens):
        assert torch.all(y[n:, b] == 0), "outputs past a row's length must be 0"
        if n == 0:
            assert_close(h[b], hx[0][b], dtype, "h_n of an empty row")
            assert_close(c[b], hx[1][b], dtype, "c_n of an empty row")
            ref_loss = ref_loss + (hx[0][b] * wh[b]).sum() + (hx[1][b] * wc[b]).sum()
            continue
        yr, (hr, cr) = ref(x[:n, b], (hx[0][b:b + 1], hx[1][b:b + 1]))
        assert_close(y[:n, b], yr, dtype, f"output row {b}")
        assert_close(h[b], hr[0], dtype, f"h_n row {b}")
        assert_close(c[b], cr[0], dtype, f"c_n row {b}")
        ref_loss = ref_loss + (yr * wy[:n, b]).sum() + (hr[0] * wh[b]).sum() + (cr[0] * wc[b]).sum()
    gr = torch.autograd.grad(ref_loss, [x, *hx, *ref.parameters()])
    for name, a, b in zip(["input", "h_0", "c_0"] + [n for n, _ in ref.named_parameters()], g, gr, strict=True):
        assert_close(a, b, dtype, f"grad {name}")


@pytest.fixture
def cudnn_tf32():
    """``cudnn_tf32(enabled)`` sets whether cuDNN's RNN (and so our dot precision) uses TF32, through
    the fp32_precision API where torch has it (the legacy flag otherwise), and restores it after
    the test."""
    rnn = getattr(torch.backends.cudnn, "rnn", None)
    new_api = rnn is not None and hasattr(rnn, "fp32_precision")
    saved = rnn.fp32_precision if new_api else torch.backends.cudnn.allow_tf32

    def set_(enabled):
        if new_api:
            rnn.fp32_precision = "tf32" if enabled else "ieee"
        else:
            torch.backends.cudnn.allow_tf32 = enabled
    yield set_
    if new_api:
        rnn.fp32_precision = saved
    else:
        torch.backends.cudnn.allow_tf32 = saved


def nn_lstm_runs_under_cpu_autocast():
    """Whether nn.LSTM (the reference) runs under CPU autocast bf16 here: its oneDNN primitive
    needs AVX512-BF16 or AMX, and raises on an AVX2-only CPU. Tests whose reference is
    nn.LSTM-autocast skip where it cannot run (``requires_nn_autocast``)."""
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.nn.LSTM(2, 2)(torch.randn(1, 1, 2))
        return True
    except RuntimeError:
        return False


requires_nn_autocast = pytest.mark.skipif(not nn_lstm_runs_under_cpu_autocast(),
                                          reason="nn.LSTM cannot run under CPU autocast bf16 on this CPU (oneDNN)")


def nn_lstm_autocast(module, x, hx=None):
    """``module(x, hx)`` for an nn.LSTM under CPU autocast bf16: the real call where it runs here,
    else what it computes, emulated where its oneDNN primitive cannot run (an AVX2-only CPU):
    float32 nn.LSTM on every operand rounded to bf16 as autocast casts them, outputs rounded to
    bf16; gradients flow back through the roundings as through autocast's casts (to the float32
    parameters and inputs). Called outside any autocast region."""
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return module(x, hx)
    except RuntimeError:
        if nn_lstm_runs_under_cpu_autocast():
            raise
    r = lambda t: t.bfloat16().float()  # noqa: E731
    params = {k: r(v) for k, v in module.named_parameters()}
    args = (r(x),) if hx is None else (r(x), tuple(r(t) for t in hx))
    y, (h, c) = torch.func.functional_call(module, params, args)
    return y.bfloat16(), (h.bfloat16(), c.bfloat16())
