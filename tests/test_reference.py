"""The d2l scratch LSTM itself, checked against nn.LSTM through the converters (so the reference
that validates our kernels is itself validated), and the converters' round trip."""
import pytest
import torch
from torch import nn

from lstm_fast import reference


def test_converters_round_trip():
    params = reference.get_lstm_params(7, 5, "cpu")[:12]
    back = reference.lstm_state_dict_to_scratch(reference.scratch_to_lstm_state_dict(params))
    for name, a, b in zip(reference.GATE_NAMES, params, back, strict=True):
        assert torch.equal(a.detach(), b), name


def test_state_dict_round_trip_sums_biases():
    m = nn.LSTM(3, 4)
    sd = reference.scratch_to_lstm_state_dict(reference.lstm_state_dict_to_scratch(m.state_dict()))
    torch.testing.assert_close(sd["weight_ih_l0"], m.weight_ih_l0.detach())
    torch.testing.assert_close(sd["weight_hh_l0"], m.weight_hh_l0.detach())
    torch.testing.assert_close(sd["bias_ih_l0"] + sd["bias_hh_l0"], (m.bias_ih_l0 + m.bias_hh_l0).detach())


def test_no_bias_state_dict():
    m = nn.LSTM(3, 4, bias=False)
    g = reference.lstm_state_dict_to_scratch(m.state_dict())
    assert all(torch.equal(t, torch.zeros(4)) for n, t in zip(reference.GATE_NAMES, g, strict=True) if n.startswith("b"))


def test_projection_is_refused():
    with pytest.raises(ValueError, match="projection"):
        reference.lstm_state_dict_to_scratch(nn.LSTM(3, 4, proj_size=2).state_dict())


def test_scratch_matches_nn_lstm():
    V, Hh, B, T = 6, 8, 3, 5
    m = nn.LSTM(V, Hh, dtype=torch.float64)
    params = [p.to(torch.float64) for p in reference.lstm_state_dict_to_scratch(m.state_dict())]
    x = torch.randn(T, B, V, dtype=torch.float64)
    state = tuple(torch.randn(B, Hh, dtype=torch.float64) for _ in range(2))
    ys, (h, c) = reference.lstm(x, state, params)
    yr, (hr, cr) = m(x, tuple(s.unsqueeze(0) for s in state))
    torch.testing.assert_close(ys, yr.reshape(T * B, Hh))
    torch.testing.assert_close(h, hr[0])
    torch.testing.assert_close(c, cr[0])


def test_rnn_model_scratch_shapes():
    V, Hh, B, T = 9, 4, 2, 3
    net = reference.RNNModelScratch(V, Hh, "cpu", reference.get_lstm_params, reference.init_lstm_state, reference.lstm)
    Y, (h, c) = net(torch.randint(0, V, (B, T)), net.begin_state(B, "cpu"))
    assert Y.shape == (T * B, V) and h.shape == (B, Hh) and c.shape == (B, Hh)
