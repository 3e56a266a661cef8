"""Bad input: a clear exception of the class nn.LSTM raises, naming the problem, module unchanged.
Empty batches and NaN/Inf inputs behave like nn.LSTM."""
import pytest
import torch
from torch import nn

from lstm_fast import FusedLSTM, fused_lstm

D, H = 4, 3


def _hx(L=1, B=2, Hh=H, Hc=H, dtype=torch.float32):
    return (torch.randn(L, B, Hh, dtype=dtype), torch.randn(L, B, Hc, dtype=dtype))


BAD = [
    pytest.param(lambda: (torch.randn(2, 3, 4, D), None), ValueError, "2D or 3D", id="4d-input"),
    pytest.param(lambda: (torch.randn(D), None), ValueError, "2D or 3D", id="1d-input"),
    pytest.param(lambda: (torch.randn(5, 2, D + 1), None), RuntimeError, "input_size", id="feature-size"),
    pytest.param(lambda: (torch.randn(5, 2, D), _hx(B=3)), RuntimeError, "hidden[0]", id="h0-batch"),
    pytest.param(lambda: (torch.randn(5, 2, D), _hx(Hc=H + 1)), RuntimeError, "hidden[1]", id="c0-size"),
    pytest.param(lambda: (torch.randn(5, 2, D), _hx(L=2)), RuntimeError, "hidden[0]", id="hx-layers"),
    pytest.param(lambda: (torch.randn(5, 2, D), (torch.randn(2, H), torch.randn(2, H))), RuntimeError, "3-D", id="hx-2d-for-batched"),
    pytest.param(lambda: (torch.randn(5, D), _hx()), RuntimeError, "2-D", id="hx-3d-for-unbatched"),
    pytest.param(lambda: (torch.randn(5, 2, D, dtype=torch.float64), None), ValueError, "dtype", id="input-dtype"),
    pytest.param(lambda: (torch.randn(5, 2, D), _hx(dtype=torch.float64)), RuntimeError, "dtype", id="hx-dtype"),
    pytest.param(lambda: (torch.ones(5, 2, D, dtype=torch.long), None), ValueError, "dtype", id="integer-input"),
    pytest.param(lambda: (torch.randn(0, 2, D), None), RuntimeError, "sequence length", id="zero-length"),
    pytest.param(lambda: (torch.randn(5, 2, D), torch.randn(1, 2, H)), IndexError, "tuple", id="hx-not-a-pair"),
]


@pytest.mark.parametrize("make,exc,words", BAD)
def test_module_bad_input(make, exc, words):
    ref = nn.LSTM(D, H)
    m = FusedLSTM(D, H)
    m.load_state_dict(ref.state_dict())
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x, hx = make()
    with pytest.raises(exc, match=None) as info:
        m(x, hx)
    assert words.lower() in str(info.value).lower(), str(info.value)
    with pytest.raises(exc):    # nn.LSTM's exception class (IndexError for a bare tensor hx)
        ref(x, hx)
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed"
    assert m.training and m.backend == "auto"
    # still usable afterwards
    y, _ = m(torch.randn(3, 2, D))
    assert y.shape == (3, 2, H)


def _w(Hh=H, Dd=D, dtype=torch.float32):
    return torch.randn(4 * Hh, Dd, dtype=dtype), torch.randn(4 * Hh, Hh, dtype=dtype)


FBAD = [
    pytest.param(lambda: (torch.randn(5, D), None, *_w()), ValueError, "3-D", id="2d-input"),
    pytest.param(lambda: (torch.randn(5, 2, D + 1), None, *_w()), RuntimeError, "weight_ih", id="feature-size"),
    pytest.param(lambda: (torch.randn(5, 2, D), None, torch.randn(4 * H, D), torch.randn(4 * H, H + 1)), RuntimeError, "weight_hh", id="w_hh-shape"),
    pytest.param(lambda: (torch.randn(5, 2, D), None, torch.randn(4 * H, D), torch.randn(5, H)), RuntimeError, "weight_hh", id="w_hh-rows"),
    pytest.param(lambda: (torch.randn(5, 2, D), (torch.randn(3, H), torch.randn(2, H)), *_w()), RuntimeError, "h_0", id="h0-shape"),
    pytest.param(lambda: (torch.randn(5, 2, D), (torch.randn(2, H), torch.randn(2, H + 1)), *_w()), RuntimeError, "c_0", id="c0-shape"),
    pytest.param(lambda: (torch.randn(5, 2, D), None, *_w(), torch.randn(4 * H + 1)), RuntimeError, "bias_ih", id="bias-shape"),
    pytest.param(lambda: (torch.randn(5, 2, D, dtype=torch.float64), None, *_w()), ValueError, "dtype", id="input-dtype"),
    pytest.param(lambda: (torch.ones(5, 2, D, dtype=torch.int32), None, *_w()), ValueError, "dtype", id="integer-input"),
    pytest.param(lambda: (torch.randn(5, 2, D), (torch.randn(2, H, dtype=torch.float64),) * 2, *_w()), RuntimeError, "dtype", id="hx-dtype"),
    pytest.param(lambda: (torch.randn(0, 2, D), None, *_w()), RuntimeError, "sequence length", id="zero-length"),
    pytest.param(lambda: ([[1.0]], None, *_w()), TypeError, "input", id="not-a-tensor"),
]


@pytest.mark.parametrize("make,exc,words", FBAD)
def test_functional_bad_input(make, exc, words):
    with pytest.raises(exc) as info:
        fused_lstm(*make())
    assert words.lower() in str(info.value).lower(), str(info.value)


def test_bad_backend_names():
    with pytest.raises(ValueError, match="backend"):
        FusedLSTM(D, H, backend="cudnn")
    with pytest.raises(ValueError, match="backend"):
        fused_lstm(torch.randn(2, 1, D), None, *_w(), backend="gpu")


def test_unavailable_backend_is_an_error_not_a_switch(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    m = FusedLSTM(D, H, backend="triton")
    with pytest.raises(RuntimeError, match="backend='triton'"):
        m(torch.randn(3, 2, D))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_backend_refuses_cuda_tensors():
    with pytest.raises(RuntimeError, match="backend='cpu'"):
        fused_lstm(torch.randn(2, 1, D, device="cuda"), None, *[w.cuda() for w in _w()], backend="cpu")


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_empty_batch_like_nn_lstm(bidirectional):
    ref = nn.LSTM(D, H, bidirectional=bidirectional)
    m = FusedLSTM(D, H, bidirectional=bidirectional)
    m.load_state_dict(ref.state_dict())
    x = torch.randn(5, 0, D, requires_grad=True)
    yr, (hr, cr) = ref(x)
    y, (h, c) = m(x)
    assert y.shape == yr.shape and h.shape == hr.shape and c.shape == cr.shape
    (y.sum() + h.sum() + c.sum()).backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_non_finite_inputs_like_nn_lstm(value):
    ref = nn.LSTM(D, H, dtype=torch.float64)
    m = FusedLSTM(D, H, dtype=torch.float64)
    m.load_state_dict(ref.state_dict())
    x = torch.randn(4, 3, D, dtype=torch.float64)
    x[1, 0, 2] = value
    yr, (hr, cr) = ref(x)
    y, (h, c) = m(x)
    for a, b in ((y, yr), (h, hr), (c, cr)):
        assert torch.equal(torch.isnan(a), torch.isnan(b))
        torch.testing.assert_close(a, b, equal_nan=True)
