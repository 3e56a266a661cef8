"""torch.inference_mode: FusedLSTM behaves as nn.LSTM does. Evaluating under inference mode and
then training at the same shape works (the CPU workspace pool must not hand an inference tensor
to autograd), and a module built under inference mode evaluates under inference mode and no_grad."""
import copy

import pytest
import torch
from torch import nn

from conftest import assert_close
from lstm_fast import FusedLSTM

# The d2l shape: its buffers are large enough to come from the workspace pool.
T, B, D, H = 35, 32, 28, 256


def _pair(**kw):
    ref = nn.LSTM(D, H, **kw)
    m = FusedLSTM(D, H, **kw)
    m.load_state_dict(ref.state_dict())
    return ref, m


@pytest.mark.parametrize("first", ["inference_mode", "no_grad"])
def test_evaluate_then_train_at_the_same_shape(first):
    ref, m = _pair()
    x = torch.randn(T, B, D)
    with torch.inference_mode() if first == "inference_mode" else torch.no_grad():
        y_eval = m(x)[0]
        assert_close(y_eval, ref(x)[0], torch.float32, "evaluation output")
    del y_eval   # the pool may now hand its buffers out again
    # the gradients' reference: nn.LSTM in float64 (its float32 bias gradient, a sum over 1120
    # rows, was 1.5e-4 off float64 on an AVX2 EPYC: more than the float32 tolerance; ours 1e-5)
    ref64 = copy.deepcopy(ref).double()
    xg = x.clone().requires_grad_()
    xr = x.double().requires_grad_()
    y, (h, c) = m(xg)
    yr, (hr, cr) = ref64(xr)
    w = torch.randn_like(y)
    g = torch.autograd.grad((y * w).sum() + c.sum(), [xg, *m.parameters()])
    gr = torch.autograd.grad((yr * w.double()).sum() + cr.sum(), [xr, *ref64.parameters()])
    for (name, _), a, b in zip([("input", None), *m.named_parameters()], g, gr, strict=True):
        assert_close(a, b.float(), torch.float32, f"grad {name}")
    # and back to inference mode after training
    with torch.inference_mode():
        assert_close(m(x)[0], ref(x)[0], torch.float32, "evaluation after training")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("context", ["inference_mode", "no_grad"])
def test_module_built_under_inference_mode(context, dtype):
    with torch.inference_mode():
        ref, m = _pair(dtype=dtype, num_layers=2)
    x = torch.randn(T, B, D, dtype=dtype)
    for _ in range(2):   # the second call may reuse buffers and cached state
        with torch.inference_mode() if context == "inference_mode" else torch.no_grad():
            y, (h, c) = m(x)
            yr, (hr, cr) = ref(x)
        for a, b, what in ((y, yr, "output"), (h, hr, "h_n"), (c, cr, "c_n")):
            assert_close(a, b, dtype, what)
