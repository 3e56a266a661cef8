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
from lstm_fast.cpu import bf16_sequence, small_batch
from lstm_fast.d2l import generate

needs_kernels = pytest.mark.skipif(small_batch._small_batch_kernels is None,
                                   reason="no small-batch kernels on this CPU")
needs_bf16_kernels = pytest.mark.skipif(not bf16_sequence.cpu_supported(),
                                        reason="no native bf16 kernels on this CPU (AVX512-BF16)")
BF16 = torch.bfloat16

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


# ---------------------------------------------------------------- dtype=torch.bfloat16
def _native_bf16_plain_calls(monkeypatch):
    """Plain calls on the vdpbf16ps kernels the bf16 stream runs: not AMX, not the float32
    small-batch kernels that CPU autocast takes at small batches, not the upcast route."""
    monkeypatch.setenv(small_batch.SWITCH, "0")
    monkeypatch.setattr(bf16_sequence, "MODE", "native")
    monkeypatch.setattr(bf16_sequence, "USE_AMX", False)


@needs_bf16_kernels
@pytest.mark.parametrize("params", ["float32-autocast", "bf16"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("L,B,D,H", SHAPES)
def test_bf16_bitwise_one_plain_call_over_the_sequence(monkeypatch, L, B, D, H, bias, params):
    """Steps of a bf16 stream are bitwise one plain call over the whole sequence on the bf16
    kernels (x, h in bf16, c float32 from step to step): bf16 parameters, or float32 ones under
    CPU autocast. B 1 runs the kernels' one-row tiles, B 2 and 3 their 4-row tiles."""
    _native_bf16_plain_calls(monkeypatch)
    m = FusedLSTM(D, H, num_layers=L, bias=bias).eval()
    if params == "bf16":
        m = m.to(BF16)
    s = LSTMStream(m, B, dtype=BF16)
    _poison(s)
    xs = _steps(B, D, steps=5)
    outs = [s.step(x) for x in xs]
    x = torch.stack(xs)
    with torch.no_grad(), torch.autocast("cpu", BF16, enabled=params != "bf16"):
        y, (h_n, c_n) = m(x.to(BF16) if params == "bf16" else x)
    assert y.dtype == BF16 and all(o.dtype == BF16 for o in outs)
    assert torch.equal(torch.stack(outs), y)
    h, c = s.state
    assert h.dtype == BF16 and c.dtype == torch.float32
    assert torch.equal(h, h_n) and torch.equal(c.to(BF16), c_n)


def _rounded(t):
    return t.to(BF16).double()


@pytest.mark.parametrize("kernels", [True, False], ids=["kernels", "torch-fallback"])
@pytest.mark.parametrize("L,B,D,H", SHAPES)
def test_bf16_against_a_rounded_float64_cell(monkeypatch, L, B, D, H, kernels):
    """Each step against an independent float64 cell on the same rounded operands (bf16 weights,
    x and the stream's own h; the stream's c, float32): c to float32 rounding, h to one bf16 step."""
    if kernels and not bf16_sequence.cpu_supported():
        pytest.skip("no native bf16 kernels on this CPU")
    if not kernels:
        monkeypatch.setattr(bf16_sequence, "cpu_supported", lambda: False)
    m = nn.LSTM(D, H, num_layers=L)
    s = LSTMStream(m, B, dtype=BF16)
    assert (s._calls is None) == (not kernels)
    _poison(s)
    s.reset((torch.randn(L, B, H), torch.randn(L, B, H)))
    for x in _steps(B, D):
        h_prev, c_prev = s.state
        out = s.step(x)
        h_new, c_new = s.state
        inp = _rounded(x)
        for layer in range(L):
            w_ih, w_hh = (_rounded(getattr(m, f"{n}_l{layer}").detach()) for n in ("weight_ih", "weight_hh"))
            b = sum(getattr(m, f"{n}_l{layer}").detach().double() for n in ("bias_ih", "bias_hh"))
            i, f, g, o = (inp @ w_ih.t() + h_prev[layer].double() @ w_hh.t() + b).chunk(4, 1)
            c = torch.sigmoid(f) * c_prev[layer].double() + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            torch.testing.assert_close(c_new[layer].double(), c, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(h_new[layer].double(), h, rtol=2 ** -8, atol=1e-5)
            inp = h_new[layer].double()
        assert torch.equal(out, h_new[-1])


def test_bf16_snapshot_until_refresh_and_errors():
    m = FusedLSTM(6, 20, num_layers=2).eval()
    s = LSTMStream(m, 1, dtype=BF16)
    x = torch.randn(1, 6)
    first = s.step(x)
    with torch.no_grad():
        m.weight_hh_l1.mul_(3)
        m.weight_ih_l0.data = torch.randn(80, 6)
    s.reset()
    assert torch.equal(s.step(x), first)
    s.refresh()
    s.reset()
    assert torch.equal(s.step(x), LSTMStream(m, 1, dtype=BF16).step(x))
    s1, s2 = LSTMStream(m, 1, dtype=BF16), LSTMStream(m, 1, dtype=BF16)
    assert torch.equal(s1.step(x.to(BF16)), s2.step(x.to(BF16).float()))     # a bf16 x, taken as it is
    with pytest.raises(TypeError, match="dtype"):
        LSTMStream(m, 1, dtype=torch.float16)
    with pytest.raises(TypeError, match="weight_ih_l0"):
        LSTMStream(nn.LSTM(3, 4).to(BF16))           # bf16 parameters need dtype=bfloat16
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        s.step(torch.randn(1, 6, dtype=torch.float64))


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
