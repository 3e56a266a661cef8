"""fused_lstm (one layer, one direction) against nn.LSTM and the d2l scratch LSTM: outputs, final
states and every gradient; gradcheck in float64."""
import pytest
import torch
from torch import nn

from lstm_fast import fused_lstm, reference
from conftest import SHAPES, DTYPES, assert_close, check_lengths_against_nn_lstm


def _inputs(T, B, D, H, dtype, with_hx=True):
    x = torch.randn(T, B, D, dtype=dtype, requires_grad=True)
    hx = None
    if with_hx:
        hx = tuple((torch.randn(B, H, dtype=dtype) * 0.5).requires_grad_() for _ in range(2))
    return x, hx


def _loss(y, h, c, wy, wh, wc):
    return (y * wy).sum() + (h * wh).sum() + (c * wc).sum()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,B,D,H", SHAPES)
@pytest.mark.parametrize("bias", [pytest.param(True, id="bias"), pytest.param(False, id="nobias")])
@pytest.mark.parametrize("with_hx", [pytest.param(True, id="hx"), pytest.param(False, id="nohx")])
def test_matches_nn_lstm(T, B, D, H, dtype, bias, with_hx):
    ref = nn.LSTM(D, H, bias=bias, dtype=dtype)
    x, hx = _inputs(T, B, D, H, dtype, with_hx)
    params = [p.detach().clone().requires_grad_() for p in ref.parameters()]
    y, (h, c) = fused_lstm(x, hx, *params)
    yr, (hr, cr) = ref(x, None if hx is None else (hx[0].unsqueeze(0), hx[1].unsqueeze(0)))
    assert y.shape == (T, B, H) and h.shape == (B, H) and c.shape == (B, H)
    assert_close(y, yr, dtype, "output")
    assert_close(h, hr[0], dtype, "h_n")
    assert_close(c, cr[0], dtype, "c_n")
    w = [torch.randn_like(t) for t in (y, h, c)]
    leaves = [x] + (list(hx) if hx else [])
    g = torch.autograd.grad(_loss(y, h, c, *w), leaves + params)
    gr = torch.autograd.grad(_loss(yr, hr[0], cr[0], *w), leaves + list(ref.parameters()))
    names = ["input"] + (["h_0", "c_0"] if hx else []) + [n for n, _ in ref.named_parameters()]
    for name, a, b in zip(names, g, gr, strict=True):
        assert_close(a, b, dtype, f"grad {name}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_only_final_state_used(dtype):
    """Gradients flow when the output is unused (dY is None) or only c_n is used."""
    T, B, D, H = 4, 3, 2, 5
    ref = nn.LSTM(D, H, dtype=dtype)
    params = [p.detach().clone().requires_grad_() for p in ref.parameters()]
    x, _ = _inputs(T, B, D, H, dtype, False)
    _, (h, c) = fused_lstm(x, None, *params)
    _, (hr, cr) = ref(x)
    for ours, theirs, what in ((c, cr[0], "c_n"), (h, hr[0], "h_n")):
        g = torch.autograd.grad(ours.sum(), [x] + params, retain_graph=True)
        gr = torch.autograd.grad(theirs.sum(), [x] + list(ref.parameters()), retain_graph=True)
        for a, b in zip(g, gr, strict=True):
            assert_close(a, b, dtype, f"grad through {what} only")


def test_one_sided_bias():
    T, B, D, H = 4, 2, 3, 6
    x = torch.randn(T, B, D, dtype=torch.float64)
    w_ih, w_hh = torch.randn(4 * H, D, dtype=torch.float64), torch.randn(4 * H, H, dtype=torch.float64)
    b = torch.randn(4 * H, dtype=torch.float64)
    y1, _ = fused_lstm(x, None, w_ih, w_hh, b, None)
    y2, _ = fused_lstm(x, None, w_ih, w_hh, None, b)
    y3, _ = fused_lstm(x, None, w_ih, w_hh, b, torch.zeros_like(b))
    torch.testing.assert_close(y1, y3)
    torch.testing.assert_close(y2, y3)


@pytest.mark.parametrize("T,B,D,H", [(1, 1, 1, 1), (3, 2, 3, 4), (5, 3, 2, 7)], ids=["T1-B1-D1-H1", "T3-B2-D3-H4", "T5-B3-D2-H7"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_gradcheck(T, B, D, H, bias):
    dt = torch.float64
    args = [torch.randn(T, B, D, dtype=dt), (torch.randn(B, H, dtype=dt), torch.randn(B, H, dtype=dt)),
            torch.randn(4 * H, D, dtype=dt) * 0.5, torch.randn(4 * H, H, dtype=dt) * 0.5]
    biases = [torch.randn(4 * H, dtype=dt), torch.randn(4 * H, dtype=dt)] if bias else []

    def f(x, h0, c0, w_ih, w_hh, *b):
        y, (h, c) = fused_lstm(x, (h0, c0), w_ih, w_hh, *b)
        return y, h, c

    inputs = [args[0], *args[1], args[2], args[3], *biases]
    inputs = [t.requires_grad_() for t in inputs]
    assert torch.autograd.gradcheck(f, inputs)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,B,V,H", [(1, 1, 3, 1), (6, 4, 11, 9), (35, 32, 28, 256)],
                         ids=["T1-B1-V3-H1", "T6-B4-V11-H9", "d2l-T35-B32-V28-H256"])
def test_matches_d2l_scratch(T, B, V, H, dtype):
    """The d2l scratch LSTM (our reference module) through the converters: forward, state, grads."""
    # d2l draws N(0, 0.01); rescale to std 1/sqrt(H) so the test is not dominated by saturation.
    params = [p.detach().to(dtype) * (100 / H ** 0.5) for p in reference.get_lstm_params(V, H, "cpu")[:12]]
    params = [p.requires_grad_() for p in params]
    sd = reference.scratch_to_lstm_state_dict(params)
    w = [sd[k].clone().requires_grad_() for k in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")]
    x = torch.randn(T, B, V, dtype=dtype, requires_grad=True)
    state = tuple(torch.randn(B, H, dtype=dtype) for _ in range(2))
    ys, (hs, cs) = reference.lstm(x, state, params)
    y, (h, c) = fused_lstm(x, state, *w)
    assert_close(y.reshape(T * B, H), ys, dtype, "output")
    assert_close(h, hs, dtype, "H")
    assert_close(c, cs, dtype, "C")
    wy, wh = torch.randn_like(ys), torch.randn_like(hs)
    gs = torch.autograd.grad((ys * wy).sum() + (hs * wh).sum(), [x] + params)
    g = torch.autograd.grad((y.reshape(T * B, H) * wy).sum() + (h * wh).sum(), [x] + w)
    assert_close(g[0], gs[0], dtype, "grad input")
    # Map our nn.LSTM-layout gradients back to d2l's 12 tensors and compare each.
    ours = reference.lstm_state_dict_to_scratch(dict(zip(("weight_ih_l0", "weight_hh_l0", "bias_ih_l0"), g[1:4], strict=True)))
    for name, a, b in zip(reference.GATE_NAMES, ours, gs[1:], strict=True):
        assert_close(a, b, dtype, f"grad {name}")
    assert_close(g[4], g[3], dtype, "grad bias_hh == grad bias_ih")


@pytest.mark.parametrize("dtype", DTYPES)
def test_inference_sees_weight_updates(dtype):
    """Inference after an in-place update (an optimizer step) or with another module's weights
    uses the current weights (nothing prepared is kept between calls; see
    tests/test_parameter_changes.py for every way of changing a parameter)."""
    from lstm_fast import FusedLSTM
    ref = nn.LSTM(6, 40, dtype=dtype)
    m = FusedLSTM(6, 40, dtype=dtype)
    m.load_state_dict(ref.state_dict())
    x = torch.randn(5, 33, 6, dtype=dtype)
    with torch.no_grad():
        for step in range(3):
            assert_close(m(x)[0], ref(x)[0], dtype, f"after update {step}")
            for p, q in zip(m.parameters(), ref.parameters(), strict=True):
                delta = torch.randn_like(p) * 0.1
                p.add_(delta)
                q.add_(delta)
        other = FusedLSTM(6, 40, dtype=dtype)
        ref.load_state_dict(other.state_dict())
        assert_close(other(x)[0], ref(x)[0], dtype, "another module")


@pytest.mark.parametrize("T,B,D,H", [(5, 7, 3, 33), (3, 32, 28, 64), (35, 32, 28, 256)],
                         ids=["T5-B7-D3-H33", "T3-B32-D28-H64", "d2l-T35-B32-D28-H256"])
def test_bitwise_deterministic_across_runs_and_thread_counts(T, B, D, H):
    """The CPU kernels have no atomics and a fixed reduction order per output element: two runs
    on 2 threads, and a run on 1 thread, give bitwise identical outputs and gradients (at the d2l
    shape too, where the work is really split between the threads)."""
    ref = nn.LSTM(D, H)
    params = [p.detach().clone().requires_grad_() for p in ref.parameters()]
    x = torch.randn(T, B, D, requires_grad=True)
    hx = tuple(torch.randn(B, H, requires_grad=True) for _ in range(2))
    w = [torch.randn(T, B, H), torch.randn(B, H), torch.randn(B, H)]

    def run():
        y, (h, c) = fused_lstm(x, hx, *params)
        g = torch.autograd.grad((y * w[0]).sum() + (h * w[1]).sum() + (c * w[2]).sum(), [x, *hx, *params])
        return [y.detach(), h.detach(), c.detach(), *g]

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        first, second = run(), run()
        torch.set_num_threads(1)
        single = run()
    finally:
        torch.set_num_threads(threads)
    for a, b, s in zip(first, second, single, strict=True):
        assert torch.equal(a, b) and torch.equal(a, s)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lens", [[5, 2, 5, 1, 3], [3, 0, 1, 3, 2]], ids=["unsorted", "with-zero"])
def test_lengths_match_each_sequence_alone(lens, dtype):
    check_lengths_against_nn_lstm(lens, dtype, "cpu", "cpu")


@pytest.mark.parametrize("lengths,exc", [([1, 2], ValueError), ([[1, 2, 3]], ValueError), ([1.0, 2.0, 3.0], ValueError),
                                         ([1, 2, 5], RuntimeError), ([-1, 2, 3], RuntimeError)],
                         ids=["too-few", "2-d", "float", "too-long", "negative"])
def test_bad_lengths(lengths, exc):
    w_ih, w_hh = torch.randn(8, 3), torch.randn(8, 2)
    with pytest.raises(exc, match="lengths"):
        fused_lstm(torch.randn(4, 3, 3), None, w_ih, w_hh, lengths=torch.tensor(lengths))
