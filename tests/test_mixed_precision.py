"""Mixed precision against an independent reference: under torch.autocast FusedLSTM matches
nn.LSTM under the same autocast (dtypes of outputs, state and gradients; values within bf16
tolerance), accepts the (h, c) it returned as the next call's state as nn.LSTM does (d2l carries
state that way), and bf16 parameters give nn.LSTM's bf16 outputs and gradients by value. Where
oneDNN cannot run nn.LSTM under autocast (AVX2-only CPUs) the reference is its emulation
(conftest.nn_lstm_autocast)."""
import pytest
import torch

from torch import nn

from lstm_fast import FusedLSTM, fused_lstm
from conftest import nn_lstm_autocast


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("kw", [dict(), dict(num_layers=2, bidirectional=True), dict(proj_size=3)],
                         ids=["L1", "L2-bi", "proj3"])
def test_cpu_autocast_bf16_matches_nn_lstm(kw):
    ref = nn.LSTM(6, 16, **kw)
    m = FusedLSTM(6, 16, **kw)
    m.load_state_dict(ref.state_dict())
    x = torch.randn(7, 4, 6, requires_grad=True)
    y32, (h32, c32) = nn_lstm_autocast(ref, x)
    w = torch.randn_like(y32, dtype=torch.float32)
    g32 = torch.autograd.grad((y32.float() * w).sum() + h32.float().sum() + c32.float().sum(),
                              [x, *ref.parameters()])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, (h, c) = m(x)
    # nn.LSTM returns a float32 c_n with projections (its fallback path); ours is bf16 throughout.
    assert (y.dtype, h.dtype, c.dtype) == (y32.dtype, h32.dtype, torch.bfloat16) == (torch.bfloat16,) * 3
    g = torch.autograd.grad((y.float() * w).sum() + h.float().sum() + c.float().sum(), [x, *m.parameters()])
    for name, a, b in (("output", y, y32), ("h_n", h, h32), ("c_n", c, c32)):
        assert _rel(a, b) < 2e-2, name
    for (name, _), a, b in zip([("input", None), *m.named_parameters()], g, g32, strict=True):
        assert a.dtype == b.dtype, f"grad {name} keeps its parameter's dtype"
        assert not torch.isnan(a).any() and _rel(a, b) < 3e-2, f"grad {name}: {_rel(a, b):.2e}"


def test_bf16_parameters_match_nn_lstm_by_value():
    """bf16 parameters and input: outputs, state and every gradient against nn.LSTM with the same
    bf16 parameters (its own bf16 CPU path), by value."""
    ref = nn.LSTM(5, 12, num_layers=2, dtype=torch.bfloat16)
    m = FusedLSTM(5, 12, num_layers=2, dtype=torch.bfloat16)
    m.load_state_dict(ref.state_dict())
    x = torch.randn(6, 3, 5).to(torch.bfloat16).requires_grad_()
    y, (h, c) = m(x)
    yr, (hr, cr) = ref(x)
    assert y.dtype == h.dtype == c.dtype == torch.bfloat16
    for name, a, b in (("output", y, yr), ("h_n", h, hr), ("c_n", c, cr)):
        assert _rel(a, b) < 2e-2, f"{name}: {_rel(a, b):.2e}"
    w = torch.randn(y.shape)
    g = torch.autograd.grad((y.float() * w).sum() + h.float().sum() + c.float().sum(), [x, *m.parameters()])
    gr = torch.autograd.grad((yr.float() * w).sum() + hr.float().sum() + cr.float().sum(), [x, *ref.parameters()])
    for (name, _), a, b in zip([("input", None), *m.named_parameters()], g, gr, strict=True):
        assert a.dtype == b.dtype == torch.bfloat16, f"grad {name} dtype {a.dtype}"
        assert not torch.isnan(a).any() and _rel(a, b) < 3e-2, f"grad {name}: {_rel(a, b):.2e}"


@pytest.mark.parametrize("kw", [dict(), dict(num_layers=2, bidirectional=True), dict(proj_size=3)],
                         ids=["L1", "L2-bi", "proj3"])
def test_autocast_state_fed_back_like_nn_lstm(kw):
    """d2l carries (h, c) from one batch to the next; under autocast that state is bf16 while the
    input is float32. FusedLSTM must accept it as nn.LSTM does, and give nn.LSTM's numbers."""
    ref = nn.LSTM(6, 16, **kw)
    m = FusedLSTM(6, 16, **kw)
    m.load_state_dict(ref.state_dict())
    xs = [torch.randn(5, 4, 6) for _ in range(3)]
    state, ref_state = None, None
    for step, x in enumerate(xs):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y, state = m(x, state)
        yr, ref_state = nn_lstm_autocast(ref, x, ref_state)
        assert y.dtype == yr.dtype == state[0].dtype == ref_state[0].dtype == torch.bfloat16
        for name, a, b in (("output", y, yr), ("h", state[0], ref_state[0]), ("c", state[1], ref_state[1])):
            assert _rel(a, b) < 3e-2, f"step {step} {name}: {_rel(a, b):.2e}"
        state = tuple(s.detach() for s in state)
        ref_state = tuple(s.detach() for s in ref_state)


def test_functional_accepts_autocast_state():
    w_ih, w_hh, b = torch.randn(32, 6), torch.randn(32, 8), torch.randn(32)
    x = torch.randn(5, 3, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, (h, c) = fused_lstm(x, None, w_ih, w_hh, b, b)
        assert h.dtype == c.dtype == torch.bfloat16
        y2, _ = fused_lstm(x, (h, c), w_ih, w_hh, b, b)
    assert y2.dtype == torch.bfloat16
