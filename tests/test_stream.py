"""LSTMStream (lstm_fast/stream.py): one step per call on a snapshot of the weights.

Against the plain FusedLSTM call (bitwise: the same kernels, small-batch kernels forced), against
nn.LSTM (an independent implementation, float32 tolerance), the torch fallback for CPUs without
the kernels, the snapshot semantics (changes seen only after refresh()), reset/state, errors,
and generation on a stream giving the module loop's text."""
import threading

import pytest
import torch
from torch import nn

from lstm_fast import FusedLSTM, LSTMStream
from lstm_fast.cpu import small_batch
from lstm_fast.d2l import generate

needs_kernels = pytest.mark.skipif(small_batch._small_batch_kernels is None,
                                   reason="no small-batch kernels on this CPU")

SHAPES = [  # (layers, batch, input, hidden)
    pytest.param(1, 1, 1, 1, id="L1-B1-D1-H1"),
    pytest.param(1, 1, 33, 130, id="L1-B1-D33-H130"),
    pytest.param(1, 3, 17, 33, id="L1-B3-D17-H33"),
    pytest.param(2, 2, 5, 520, id="L2-B2-D5-H520"),
    pytest.param(3, 1, 24, 16, id="L3-B1-D24-H16"),
]


def _poison(s):
    """NaN into everything a step must write before it reads it: the other state set, the
    intermediate layers' outputs."""
    for buf in (s._h[1], s._c[1], *s._mid):
        buf.fill_(float("nan"))


def _steps(B, D, steps=4):
    return [torch.randn(B, D) for _ in range(steps)]


@needs_kernels
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("L,B,D,H", SHAPES)
def test_bitwise_the_plain_call(monkeypatch, L, B, D, H, bias):
    monkeypatch.setenv(small_batch.SWITCH, "1")   # the plain call on the small-batch kernels
    m = FusedLSTM(D, H, num_layers=L, bias=bias).eval()
    s = LSTMStream(m, B)
    _poison(s)
    state = None
    for x in _steps(B, D):
        with torch.no_grad():
            y, state = m(x[None], state)
        out = s.step(x)
        assert torch.equal(out, y[0])
        h, c = s.state
        assert torch.equal(h, state[0]) and torch.equal(c, state[1])


@needs_kernels
def test_bitwise_across_thread_counts():
    m = FusedLSTM(40, 72, num_layers=2).eval()
    xs = _steps(3, 40)
    runs = []
    before = torch.get_num_threads()
    try:
        for nt in (1, 2):
            torch.set_num_threads(nt)
            s = LSTMStream(m, 3)
            runs.append([s.step(x) for x in xs] + list(s.state))
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(*runs))


@pytest.mark.parametrize("kernels", [True, False], ids=["kernels", "torch-fallback"])
@pytest.mark.parametrize("L,B,D,H", SHAPES)
def test_against_nn_lstm(monkeypatch, L, B, D, H, kernels):
    if kernels and small_batch._small_batch_kernels is None:
        pytest.skip("no small-batch kernels on this CPU")
    if not kernels:
        monkeypatch.setattr(small_batch, "_small_batch_kernels", None)
    ref = nn.LSTM(D, H, num_layers=L).double()
    s = LSTMStream(nn.LSTM(D, H, num_layers=L), B)   # float32 copy of the same weights below
    s._module.load_state_dict({k: v.float() for k, v in ref.state_dict().items()})
    s.refresh()
    assert (s._calls is None) == (not kernels)
    _poison(s)
    h0 = torch.randn(L, B, H)
    c0 = torch.randn(L, B, H)
    s.reset((h0, c0))
    state = (h0.double(), c0.double())
    for x in _steps(B, D):
        with torch.no_grad():
            y, state = ref(x.double()[None], state)
        out = s.step(x)
        torch.testing.assert_close(out.double(), y[0], rtol=1e-5, atol=1e-5)
    h, c = s.state
    torch.testing.assert_close(h.double(), state[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(c.double(), state[1], rtol=1e-5, atol=1e-5)


def test_snapshot_until_refresh():
    m = FusedLSTM(6, 8).eval()
    s = LSTMStream(m, 2)
    x = torch.randn(2, 6)
    first = s.step(x)
    with torch.no_grad():       # every route of changing a parameter: none is seen by the stream
        m.weight_hh_l0.data.mul_(2)
        m.bias_ih_l0.copy_(torch.randn(32))
        m.weight_ih_l0.data = torch.randn(32, 6)
    s.reset()
    assert torch.equal(s.step(x), first)
    s.refresh()
    s.reset()
    ref = nn.LSTM(6, 8)
    ref.load_state_dict(m.state_dict())
    with torch.no_grad():
        y, _ = ref(x[None])
    torch.testing.assert_close(s.step(x), y[0], rtol=1e-5, atol=1e-6)
    m.weight_hh_l0.data = torch.randn(32, 4)
    with pytest.raises(RuntimeError, match="weight_hh_l0"):
        s.refresh()


def test_state_and_reset():
    s = LSTMStream(nn.LSTM(3, 5, num_layers=2), 4)
    h, c = s.state
    assert h.shape == c.shape == (2, 4, 5) and not h.any() and not c.any()
    out = s.step(torch.randn(4, 3))
    assert out.shape == (4, 5) and not out.requires_grad
    h, c = s.state
    assert torch.equal(h[-1], out)
    h.zero_()       # a copy: the stream's state is untouched
    assert torch.equal(s.state[0][-1], out)
    assert s.step(torch.randn(4, 3)) is not out     # a new tensor every step
    s.reset()
    assert not s.state[0].any() and not s.state[1].any()
    h0, c0 = torch.randn(2, 4, 5), torch.randn(2, 4, 5)
    s.reset((h0, c0))
    assert torch.equal(s.state[0], h0) and torch.equal(s.state[1], c0)


def test_outputs_need_no_grad():
    m = FusedLSTM(3, 5)     # parameters require grad, grad mode on
    out = LSTMStream(m, 1).step(torch.randn(1, 3, requires_grad=True))
    assert not out.requires_grad and out.grad_fn is None


def test_errors():
    with pytest.raises(TypeError, match="nn.LSTM"):
        LSTMStream(nn.GRU(3, 4))
    with pytest.raises(ValueError, match="bidirectional"):
        LSTMStream(nn.LSTM(3, 4, bidirectional=True))
    with pytest.raises(ValueError, match="proj_size"):
        LSTMStream(nn.LSTM(3, 4, proj_size=2))
    with pytest.raises(ValueError, match="batch_size"):
        LSTMStream(nn.LSTM(3, 4), 0)
    with pytest.raises(TypeError, match="weight_ih_l0"):
        LSTMStream(nn.LSTM(3, 4).double())
    s = LSTMStream(nn.LSTM(3, 4), 2)
    with pytest.raises(ValueError, match="2-D"):
        s.step(torch.randn(1, 2, 3))
    with pytest.raises(RuntimeError, match=r"size \[2, 3\]"):
        s.step(torch.randn(2, 4))
    with pytest.raises(RuntimeError, match="float32"):
        s.step(torch.randn(2, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="tensor"):
        s.step([[0.0] * 3] * 2)
    with pytest.raises(RuntimeError, match="state h"):
        s.reset((torch.zeros(1, 1, 4), torch.zeros(1, 2, 4)))
    with pytest.raises(TypeError, match="pair"):
        s.reset(torch.zeros(1, 2, 4))


def test_two_threads_at_once_raise():
    s = LSTMStream(nn.LSTM(3, 4), 1)
    x = torch.randn(1, 3)
    before = s.step(x)
    s._lock.acquire()           # another thread inside step()
    try:
        with pytest.raises(RuntimeError, match="two threads"):
            s.step(x)
    finally:
        s._lock.release()
    results = []
    t = threading.Thread(target=lambda: results.append(s.step(x)))
    t.start()
    t.join()
    assert results[0].shape == before.shape


def test_non_contiguous_input():
    s1, s2 = (LSTMStream(m, 3) for m in [nn.LSTM(4, 6)] * 2)
    x = torch.randn(4, 3).t()
    assert not x.is_contiguous()
    assert torch.equal(s1.step(x), s2.step(x.contiguous()))


def test_generation_on_a_stream_gives_the_module_loops_text(monkeypatch):
    from lstm_fast.d2l.data import load_corpus
    from lstm_fast.d2l.train import TrainConfig, build_model
    _, vocab = load_corpus(max_tokens=2000)
    net = build_model(TrainConfig(hidden=64), len(vocab), "cpu")
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.4)
    assert generate._stream_for(net, "cpu") is not None
    on_stream = generate.predict("time traveller ", 60, net, vocab, "cpu")
    sampled = generate.predict("the ", 40, net, vocab, "cpu", temperature=1.0,
                               generator=torch.Generator().manual_seed(1))
    monkeypatch.setattr(generate, "_stream_for", lambda net, device: None)
    assert generate.predict("time traveller ", 60, net, vocab, "cpu") == on_stream
    assert generate.predict("the ", 40, net, vocab, "cpu", temperature=1.0,
                            generator=torch.Generator().manual_seed(1)) == sampled
