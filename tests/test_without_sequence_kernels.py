"""The float32 path for CPUs with neither AVX-512 nor AVX2 + FMA (and installs without a C
compiler), forced on this machine: with no whole-sequence kernels, float32 layers run on
:mod:`lstm_fast.cpu.stepwise` (with its C cell, or without it as torch ops) and must still match
nn.LSTM: outputs, state and every gradient, packed variable-length batches included, with and
without autograd."""
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from conftest import assert_close
from lstm_fast import FusedLSTM
from lstm_fast.cpu import sequence, stepwise


@pytest.fixture(params=["c-cell", "torch-ops-cell"])
def no_sequence_kernels(request, monkeypatch):
    monkeypatch.setattr(sequence, "_sequence_kernels", None)
    if request.param == "torch-ops-cell":
        monkeypatch.setattr(stepwise, "_cell_kernel", None)
    calls = []
    real = stepwise.lstm_forward_cpu

    def counted(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(stepwise, "lstm_forward_cpu", counted)
    return calls


def _pair(**kw):
    ref = nn.LSTM(5, 33, **kw)
    m = FusedLSTM(5, 33, **kw)
    m.load_state_dict(ref.state_dict())
    return ref, m


@pytest.mark.parametrize("kw", [dict(), dict(num_layers=2, bidirectional=True)], ids=["L1", "L2-bi"])
def test_float32_without_sequence_kernels_matches_nn_lstm(no_sequence_kernels, kw):
    ref, m = _pair(**kw)
    x = torch.randn(9, 6, 5, requires_grad=True)
    hx = tuple(torch.randn(m.num_layers * (2 if m.bidirectional else 1), 6, 33, requires_grad=True) for _ in range(2))
    y, (h, c) = m(x, hx)
    yr, (hr, cr) = ref(x, hx)
    assert no_sequence_kernels, "the stepwise path did not run"
    w = torch.randn_like(y)
    g = torch.autograd.grad((y * w).sum() + h.sum() + (c * c).sum(), [x, *hx, *m.parameters()])
    gr = torch.autograd.grad((yr * w).sum() + hr.sum() + (cr * cr).sum(), [x, *hx, *ref.parameters()])
    for a, b, what in ((y, yr, "output"), (h, hr, "h_n"), (c, cr, "c_n")):
        assert_close(a, b, torch.float32, what)
    names = ["input", "h_0", "c_0"] + [n for n, _ in m.named_parameters()]
    for name, a, b in zip(names, g, gr, strict=True):
        assert_close(a, b, torch.float32, f"grad {name}")
    with torch.no_grad():
        assert_close(m(x, hx)[0], yr, torch.float32, "no_grad output")


def test_float32_without_sequence_kernels_packed(no_sequence_kernels):
    ref, m = _pair()
    lengths = torch.tensor([7, 2, 5, 1])
    x = torch.randn(7, 4, 5, requires_grad=True)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    y, (h, c) = m(packed)
    yr, (hr, cr) = ref(packed)
    assert no_sequence_kernels
    for a, b, what in ((y.data, yr.data, "output"), (h, hr, "h_n"), (c, cr, "c_n")):
        assert_close(a, b, torch.float32, what)
    g = torch.autograd.grad(y.data.sum() + c.sum(), [x, *m.parameters()], retain_graph=True)
    gr = torch.autograd.grad(yr.data.sum() + cr.sum(), [x, *ref.parameters()])
    for a, b in zip(g, gr, strict=True):
        assert_close(a, b, torch.float32, "grad")
