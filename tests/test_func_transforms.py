"""torch.func over a FusedLSTM works as over nn.LSTM (issue 19): ``torch.func.grad`` of a loss
w.r.t. the parameters dict (through ``functional_call``), and ``jacrev`` w.r.t. the input, on the
CPU and on the Triton backend (its interpreter here), against nn.LSTM with the same weights on
fresh random inputs. The autograd Function is in the ``forward`` + ``setup_context`` form these
transforms need."""
import os

import pytest
import torch
from torch import nn

from lstm_fast import FusedLSTM
from lstm_fast.ops.backends import triton_unavailable_reason

BACKENDS = ["cpu", "triton"]


def _pair(backend, dtype, **kw):
    if backend == "triton":
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if triton_unavailable_reason(device) is not None or (device == "cpu"
                                                             and os.environ.get("TRITON_INTERPRET") != "1"):
            pytest.skip("needs CUDA or Triton's interpreter")
    else:
        device = "cpu"
    ref = nn.LSTM(3, 4, dtype=dtype, device=device, **kw)
    fused = FusedLSTM(3, 4, dtype=dtype, device=device, backend=backend, **kw)
    fused.load_state_dict(ref.state_dict())
    return ref, fused, device


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kw", [dict(), dict(num_layers=2, bidirectional=True), dict(proj_size=2)],
                         ids=["plain", "layers2-bi", "proj2"])
def test_func_grad_of_parameters(backend, kw):
    ref, fused, device = _pair(backend, torch.float64, **kw)
    x = torch.randn(3, 2, 3, dtype=torch.float64, device=device)
    width = (ref.proj_size or ref.hidden_size) * (2 if ref.bidirectional else 1)
    w = torch.randn(3, 2, width, dtype=torch.float64, device=device)     # a random cotangent of the output

    def loss(mod):
        def f(params):
            y, (h, c) = torch.func.functional_call(mod, params, (x,))
            return (y * w).sum() + h.pow(2).sum() + c.sum()
        return f

    params = {k: v.detach().clone() for k, v in ref.named_parameters()}
    g_ref = torch.func.grad(loss(ref))(params)
    g_fused = torch.func.grad(loss(fused))(params)
    assert g_ref.keys() == g_fused.keys()
    for k in g_ref:
        torch.testing.assert_close(g_fused[k], g_ref[k], rtol=1e-8, atol=1e-9, msg=k)


@pytest.mark.parametrize("backend", BACKENDS)
def test_func_jacrev_of_input(backend):
    ref, fused, device = _pair(backend, torch.float64)
    x = torch.randn(2, 2, 3, dtype=torch.float64, device=device)
    j_ref = torch.func.jacrev(lambda x: ref(x)[1][1])(x)
    j_fused = torch.func.jacrev(lambda x: fused(x)[1][1])(x)
    torch.testing.assert_close(j_fused, j_ref, rtol=1e-8, atol=1e-9)


def test_func_grad_float32_cpu_kernels():
    """float32 (the AVX-512 sequence kernels when this CPU has them): the same gradients."""
    ref, fused, _ = _pair("cpu", torch.float32, num_layers=2)
    x = torch.randn(5, 3, 3)
    params = {k: v.detach().clone() for k, v in ref.named_parameters()}

    def loss(mod):
        return lambda p: torch.func.functional_call(mod, p, (x,))[0].pow(2).sum()

    g_ref, g_fused = torch.func.grad(loss(ref))(params), torch.func.grad(loss(fused))(params)
    for k in g_ref:
        torch.testing.assert_close(g_fused[k], g_ref[k], rtol=1e-4, atol=1e-5, msg=k)
