"""FusedLSTM against nn.LSTM with the same weights, over every constructor option and input form:
outputs, final states and every gradient (input, h_0, c_0, each parameter)."""
import itertools

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from lstm_fast import FusedLSTM
from conftest import assert_close

D, H = 5, 7


def _pair(dtype=torch.float64, **kw):
    ref = nn.LSTM(D, H, dtype=dtype, **kw)
    ours = FusedLSTM(D, H, dtype=dtype, **kw)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _random_hx(layers, bidirectional, B, proj, dtype):
    """(h_0, c_0) requiring grad, shaped for nn.LSTM's hx: (L * directions, B, proj or H), (.., H)."""
    n = layers * (2 if bidirectional else 1)
    return (torch.randn(n, B, proj or H, dtype=dtype, requires_grad=True),
            torch.randn(n, B, H, dtype=dtype, requires_grad=True))


def _compare(ref, ours, inp, hx, dtype, leaves):
    """Run both, compare outputs, states and the gradients of a random projection of all three."""
    yr, (hr, cr) = ref(inp, hx)
    yo, (ho, co) = ours(inp, hx)
    if isinstance(yr, torch.nn.utils.rnn.PackedSequence):
        assert isinstance(yo, torch.nn.utils.rnn.PackedSequence)
        assert torch.equal(yr.batch_sizes, yo.batch_sizes)
        yr, yo = yr.data, yo.data
    assert yo.shape == yr.shape and ho.shape == hr.shape and co.shape == cr.shape
    assert_close(yo, yr, dtype, "output")
    assert_close(ho, hr, dtype, "h_n")
    assert_close(co, cr, dtype, "c_n")
    w = [torch.randn_like(t) for t in (yr, hr, cr)]
    loss = lambda y, h, c: (y * w[0]).sum() + (h * w[1]).sum() + (c * w[2]).sum()  # noqa: E731
    gr = torch.autograd.grad(loss(yr, hr, cr), leaves + list(ref.parameters()), retain_graph=True)
    go = torch.autograd.grad(loss(yo, ho, co), leaves + list(ours.parameters()))
    names = [f"leaf{i}" for i in range(len(leaves))] + [n for n, _ in ref.named_parameters()]
    for name, a, b in zip(names, go, gr, strict=True):
        assert_close(a, b, dtype, f"grad {name}")


GRID = list(itertools.product([1, 2, 3], [True, False], [False, True], [False, True], [0, 3], [False, True]))


def _grid_id(p):
    layers, bias, bf, bidir, proj, hx = p
    return f"L{layers}-{'bias' if bias else 'nobias'}-{'bf' if bf else 'tf'}-{'bi' if bidir else 'uni'}-proj{proj}-{'hx' if hx else 'nohx'}"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("layers,bias,batch_first,bidirectional,proj,with_hx", GRID, ids=[_grid_id(p) for p in GRID])
def test_grid(layers, bias, batch_first, bidirectional, proj, with_hx, dtype):
    kw = dict(num_layers=layers, bias=bias, batch_first=batch_first, bidirectional=bidirectional, proj_size=proj)
    ref, ours = _pair(dtype, **kw)
    T, B = 6, 4
    x = torch.randn(*((B, T) if batch_first else (T, B)), D, dtype=dtype, requires_grad=True)
    hx = _random_hx(layers, bidirectional, B, proj, dtype) if with_hx else None
    _compare(ref, ours, x, hx, dtype, [x] + list(hx or ()))


@pytest.mark.parametrize("T,B", [(1, 1), (1, 5), (9, 1)], ids=["T1-B1", "T1-B5", "T9-B1"])
@pytest.mark.parametrize("hidden", [1, 33, 100], ids=["H1", "H33", "H100"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_odd_sizes(T, B, hidden, dtype):
    ref = nn.LSTM(3, hidden, num_layers=2, bidirectional=True, dtype=dtype)
    ours = FusedLSTM(3, hidden, num_layers=2, bidirectional=True, dtype=dtype)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, 3, dtype=dtype, requires_grad=True)
    _compare(ref, ours, x, None, dtype, [x])


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("proj", [0, 2], ids=["proj0", "proj2"])
@pytest.mark.parametrize("with_hx", [False, True], ids=["nohx", "hx"])
def test_unbatched(bidirectional, proj, with_hx):
    dtype = torch.float64
    ref, ours = _pair(dtype, num_layers=2, bidirectional=bidirectional, proj_size=proj)
    x = torch.randn(6, D, dtype=dtype, requires_grad=True)
    leaves, hx = [x], None
    if with_hx:
        n = 2 * (2 if bidirectional else 1)
        hx = (torch.randn(n, proj or H, dtype=dtype, requires_grad=True),
              torch.randn(n, H, dtype=dtype, requires_grad=True))
        leaves += list(hx)
    _compare(ref, ours, x, hx, dtype, leaves)


PACKED = list(itertools.product([1, 2], [False, True], [0, 3], [False, True], [False, True]))


@pytest.mark.parametrize("layers,bidirectional,proj,with_hx,enforce_sorted", PACKED,
                         ids=[f"L{a}-{'bi' if b else 'uni'}-proj{c}-{'hx' if d else 'nohx'}-{'sorted' if e else 'unsorted'}"
                              for a, b, c, d, e in PACKED])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_packed(layers, bidirectional, proj, with_hx, enforce_sorted, dtype):
    """Variable lengths: each sequence's outputs and final state are taken at its own length."""
    ref, ours = _pair(dtype, num_layers=layers, bidirectional=bidirectional, proj_size=proj)
    B, T = 6, 7
    lengths = torch.tensor([7, 7, 5, 3, 3, 1]) if enforce_sorted else torch.tensor([3, 7, 1, 5, 7, 2])
    x = torch.randn(T, B, D, dtype=dtype, requires_grad=True)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)
    hx = _random_hx(layers, bidirectional, B, proj, dtype) if with_hx else None
    _compare(ref, ours, packed, hx, dtype, [x] + list(hx or ()))
    # The padded view round-trips too.
    y, _ = ours(packed, hx)
    padded, lens = pad_packed_sequence(y)
    assert torch.equal(lens, lengths)


def test_isinstance_and_state_dict_both_ways():
    ref = nn.LSTM(4, 6, num_layers=2, bidirectional=True, proj_size=2)
    ours = FusedLSTM(4, 6, num_layers=2, bidirectional=True, proj_size=2)
    assert isinstance(ours, nn.LSTM)
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    ours.load_state_dict(ref.state_dict())
    back = nn.LSTM(4, 6, num_layers=2, bidirectional=True, proj_size=2)
    back.load_state_dict(ours.state_dict())
    for (n, a), (_, b) in zip(ref.state_dict().items(), back.state_dict().items(), strict=True):
        assert torch.equal(a, b), n
    assert "backend='auto'" in repr(ours)


class D2LRNNModel(nn.Module):
    """d2l's concise RNNModel: it checks ``isinstance(self.rnn, nn.LSTM)`` to build an (H, C) state."""

    def __init__(self, rnn_layer, vocab_size):
        super().__init__()
        self.rnn, self.vocab_size = rnn_layer, vocab_size
        self.num_hiddens = self.rnn.hidden_size
        self.linear = nn.Linear(self.num_hiddens, self.vocab_size)

    def forward(self, inputs, state):
        X = torch.nn.functional.one_hot(inputs.T.long(), self.vocab_size).to(torch.float32)
        Y, state = self.rnn(X, state)
        return self.linear(Y.reshape((-1, Y.shape[-1]))), state

    def begin_state(self, device, batch_size=1):
        if not isinstance(self.rnn, nn.LSTM):
            return torch.zeros((self.rnn.num_layers, batch_size, self.num_hiddens), device=device)
        return (torch.zeros((self.rnn.num_layers, batch_size, self.num_hiddens), device=device),
                torch.zeros((self.rnn.num_layers, batch_size, self.num_hiddens), device=device))


def _grad_clipping(net, theta):
    params = [p for p in net.parameters() if p.requires_grad]
    norm = torch.sqrt(sum(torch.sum(p.grad ** 2) for p in params))
    if norm > theta:
        for p in params:
            p.grad[:] *= theta / norm


def test_identical_training_trajectories():
    """Same weights, same batches, SGD with d2l's gradient clipping: parameters stay equal."""
    V, Hh, B, T = 11, 16, 4, 8
    a = D2LRNNModel(nn.LSTM(V, Hh), V)
    b = D2LRNNModel(FusedLSTM(V, Hh), V)
    b.load_state_dict(a.state_dict())
    opt_a, opt_b = torch.optim.SGD(a.parameters(), lr=1), torch.optim.SGD(b.parameters(), lr=1)
    state_a, state_b = a.begin_state("cpu", B), b.begin_state("cpu", B)
    assert isinstance(state_b, tuple)
    for _ in range(5):
        X, Y = torch.randint(0, V, (B, T)), torch.randint(0, V, (B, T))
        for net, opt, st in ((a, opt_a, state_a), (b, opt_b, state_b)):
            st = tuple(s.detach() for s in st)
            y_hat, st = net(X, st)
            loss = nn.functional.cross_entropy(y_hat, Y.T.reshape(-1))
            opt.zero_grad()
            loss.backward()
            _grad_clipping(net, 1)
            opt.step()
            if net is a:
                state_a = st
            else:
                state_b = st
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5, msg=n)


def test_dropout_between_layers():
    """Training mode drops between layers (not after the last); eval mode is deterministic and
    equals nn.LSTM; the train-mode expectation over masks matches the eval output's scale."""
    ref = nn.LSTM(D, H, num_layers=2, dropout=0.5, dtype=torch.float64)
    ours = FusedLSTM(D, H, num_layers=2, dropout=0.5, dtype=torch.float64)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(5, 3, D, dtype=torch.float64)
    ours.train()
    y1, _ = ours(x)
    y2, _ = ours(x)
    assert not torch.allclose(y1, y2), "training mode must apply dropout"
    ref.eval(), ours.eval()
    torch.testing.assert_close(ours(x)[0], ref(x)[0])
    # one layer: dropout has nothing to act on, so train mode is deterministic
    one = FusedLSTM(D, H, num_layers=1, dropout=0.5).train()
    x1 = torch.randn(5, 3, D)
    torch.testing.assert_close(one(x1)[0], one(x1)[0])


def test_dropout_matches_nn_lstm_when_seeded():
    """Both draw the inter-layer mask with the same generator calls, so a seed reproduces nn.LSTM."""
    ref = nn.LSTM(D, H, num_layers=3, dropout=0.3)
    ours = FusedLSTM(D, H, num_layers=3, dropout=0.3)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(6, 4, D)
    torch.manual_seed(123)
    yr, (hr, cr) = ref(x)
    torch.manual_seed(123)
    yo, (ho, co) = ours(x)
    torch.testing.assert_close(yo, yr, rtol=1e-4, atol=2e-5)
    torch.testing.assert_close(ho, hr, rtol=1e-4, atol=2e-5)


def test_never_calls_torch_lstm(monkeypatch):
    """FusedLSTM's math is ours: torch's own LSTM entry points are not touched."""
    import torch._VF as VF

    def boom(*a, **k):
        raise AssertionError("torch's LSTM was called")

    monkeypatch.setattr(VF, "lstm", boom, raising=False)
    monkeypatch.setattr(torch, "lstm_cell", boom)
    monkeypatch.setattr(torch, "lstm", boom)
    m = FusedLSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2)
    x = torch.randn(5, 2, 3, requires_grad=True)
    y, (h, c) = m(x)
    (y.sum() + c.sum()).backward()
    assert x.grad is not None
