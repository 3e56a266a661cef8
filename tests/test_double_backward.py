"""Second derivatives, as nn.LSTM on the CPU supports them: gradgradcheck in float64 through
FusedLSTM and fused_lstm (layers, bidirectional, projections, lengths, packed input), and a
gradient penalty (backward of a gradient norm) against nn.LSTM's."""
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from lstm_fast import FusedLSTM, fused_lstm


def _params(m):
    return [p for p in m.parameters()]


@pytest.mark.parametrize("kw", [dict(), dict(num_layers=2), dict(bidirectional=True), dict(proj_size=2),
                                dict(bias=False)], ids=["plain", "layers2", "bidirectional", "proj2", "no-bias"])
def test_gradgradcheck_module(kw):
    torch.manual_seed(0)
    m = FusedLSTM(3, 4, dtype=torch.float64, **kw)
    x = torch.randn(3, 2, 3, dtype=torch.float64, requires_grad=True)
    ps = _params(m)

    def f(x, *p):
        out, (h, c) = torch.func.functional_call(m, dict(zip([n for n, _ in m.named_parameters()], p)), (x,))
        return out, h, c
    assert torch.autograd.gradgradcheck(f, (x, *ps))


def test_gradgradcheck_functional_with_lengths():
    torch.manual_seed(1)
    T, B, D, H = 4, 3, 2, 3
    args = [torch.randn(s, dtype=torch.float64, requires_grad=True)
            for s in ((T, B, D), (B, H), (B, H), (4 * H, D), (4 * H, H), (4 * H,), (4 * H,))]
    lengths = torch.tensor([4, 1, 3])

    def f(x, h0, c0, w_ih, w_hh, b_ih, b_hh):
        y, (h, c) = fused_lstm(x, (h0, c0), w_ih, w_hh, b_ih, b_hh, lengths=lengths)
        return y, h, c
    assert torch.autograd.gradgradcheck(f, args)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_gradient_penalty_matches_nn_lstm(packed):
    torch.manual_seed(2)
    ref = nn.LSTM(5, 8, bidirectional=True)
    fused = FusedLSTM(5, 8, bidirectional=True)
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(6, 3, 5)
    results = []
    for m in (ref, fused):
        xi = x.clone().requires_grad_()
        inp = pack_padded_sequence(xi, torch.tensor([6, 4, 2]), enforce_sorted=False) if packed else xi
        out, (h, c) = m(inp)
        loss = (out.data if packed else out).pow(2).sum() + h.sum()
        gx, = torch.autograd.grad(loss, xi, create_graph=True)
        penalty = gx.pow(2).sum()
        results.append(torch.autograd.grad(penalty, [xi, *m.parameters()]))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)


def test_first_derivatives_stay_on_the_fast_path(monkeypatch):
    """Without create_graph the backward is the implementation's own, not the recomputation."""
    from lstm_fast.ops import autograd
    monkeypatch.setattr(autograd, "differentiable_backward", lambda *a, **k: pytest.fail("recomputed"))
    m = FusedLSTM(3, 4)
    m(torch.randn(2, 2, 3, requires_grad=True))[0].sum().backward()


def test_gradgradcheck_on_the_triton_backend():
    """The same second derivatives when the layer's forward ran on the Triton kernels (their
    interpreter on the CPU)."""
    import os
    from lstm_fast.ops.backends import triton_unavailable_reason
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if triton_unavailable_reason(device) is not None or (device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1"):
        pytest.skip("needs CUDA or Triton's interpreter")
    torch.manual_seed(3)
    m = FusedLSTM(2, 3, dtype=torch.float64, device=device, backend="triton")
    x = torch.randn(2, 2, 2, dtype=torch.float64, device=device, requires_grad=True)
    names = [n for n, _ in m.named_parameters()]

    def f(x, *p):
        out, (h, c) = torch.func.functional_call(m, dict(zip(names, p)), (x,))
        return out, h, c
    assert torch.autograd.gradgradcheck(f, (x, *m.parameters()))
