"""torch.compile(fullgraph=True) of a model holding a FusedLSTM: each layer is one custom op with
a fake (shape) implementation and an autograd formula, so forward and backward compile without a
graph break and give eager's numbers. Dynamo refuses every nn.LSTM subclass unless
torch._dynamo.config.allow_rnn is set (an isinstance check), so the test sets it, as users do."""
import pytest
import torch
from torch import nn

from lstm_fast import FusedLSTM
from lstm_fast.ops import custom_ops  # noqa: F401  (registers the lstm_fast:: ops)
from lstm_fast.ops.plan import cast_inputs, plan_layer
from lstm_fast.cpu import bf16_sequence as cpu_bf16
from conftest import requires_nn_autocast


class Net(nn.Module):
    def __init__(self, **kw):
        super().__init__()
        self.rnn = FusedLSTM(5, 8, **kw)
        width = (kw.get("proj_size") or 8) * (2 if kw.get("bidirectional") else 1)
        self.head = nn.Linear(width, 3, dtype=kw.get("dtype"))

    def forward(self, x, hx=None):
        y, (h, c) = self.rnn(x, hx)
        return self.head(y).sum() + 0.5 * h.sum() + c.pow(2).sum()


@pytest.mark.parametrize("backend,kw", [("inductor", dict(num_layers=2)),
                                        ("aot_eager", dict(bidirectional=True, proj_size=0)),
                                        ("aot_eager", dict(proj_size=3)),
                                        ("aot_eager", dict(num_layers=2, dtype=torch.float64))],
                         ids=["inductor-L2", "aot_eager-bi", "aot_eager-proj", "aot_eager-fp64"])
def test_fullgraph_compile_matches_eager(backend, kw):
    torch._dynamo.reset()
    dtype = kw.get("dtype", torch.float32)
    net = Net(**kw)
    x = torch.randn(6, 4, 5, dtype=dtype, requires_grad=True)
    with torch._dynamo.config.patch(allow_rnn=True):
        compiled = torch.compile(net, fullgraph=True, backend=backend)
        loss_c = compiled(x)
        gc = torch.autograd.grad(loss_c, [x, *net.parameters()])
    loss_e = net(x)
    ge = torch.autograd.grad(loss_e, [x, *net.parameters()])
    torch.testing.assert_close(loss_c, loss_e)
    for (name, _), a, b in zip([("input", None), *net.named_parameters()], gc, ge, strict=True):
        torch.testing.assert_close(a, b, msg=lambda m, name=name: f"grad {name}: {m}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["padded", "lengths"])
def test_custom_op_fake_shapes_match_real(dtype, with_lengths):
    """The shape function agrees with what the implementation returns (saved tensors included),
    for every dtype the op can be given."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    if with_lengths and dtype != torch.float32:
        pytest.skip("lengths under compile need the float32 sequence kernels")
    T, B, D, H = 4, 3, 5, 7
    args = [torch.randn(T, B, D), torch.randn(B, H), torch.randn(B, H), torch.randn(4 * H, D), torch.randn(4 * H, H),
            torch.randn(4 * H), torch.randn(4 * H)]
    args = [a.to(dtype) for a in args]
    lengths = torch.tensor([4, 1, 3]) if with_lengths else None
    plan = plan_layer(args[0], args[4], "cpu", has_lengths=with_lengths)
    if plan.segments:   # e.g. a CPU without AVX-512: the stepwise route, lengths only as eager segments
        pytest.skip(f"lengths under compile need an implementation that masks them, not {plan.implementation}")
    impl = plan.implementation
    args = list(cast_inputs(plan, *args))   # as lstm_layer hands them to the op (e.g. 16-bit upcast)
    real = torch.ops.lstm_fast.lstm_forward(*args, lengths, impl)
    with FakeTensorMode() as mode:
        fake = torch.ops.lstm_fast.lstm_forward(*[mode.from_tensor(a) for a in args],
                                                None if lengths is None else mode.from_tensor(lengths), impl)
    assert [tuple(t.shape) for t in fake] == [tuple(t.shape) for t in real]
    assert [t.dtype for t in fake] == [t.dtype for t in real]


def _graph_ops(net, *args):
    """Compile ``net`` with a backend that records the FX graph; return the call targets' names."""
    seen = []

    def backend(gm, example_inputs):
        seen.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm.forward

    torch._dynamo.reset()
    with torch._dynamo.config.patch(allow_rnn=True):
        torch.compile(net, fullgraph=True, backend=backend)(*args)
    return seen


def test_compiled_graph_holds_our_op_not_aten_lstm():
    """Compilation really routes through lstm_fast's custom op: the captured graph holds
    lstm_fast.lstm_forward once per layer and direction, and no aten LSTM."""
    net = Net(num_layers=2, bidirectional=True)
    ops = _graph_ops(net, torch.randn(6, 4, 5))
    assert sum("lstm_fast.lstm_forward" in o for o in ops) == 4, ops
    assert not [o for o in ops if "aten.lstm" in o or "_VF" in o], ops


@requires_nn_autocast
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compile_under_autocast_matches_eager_and_nn_lstm(backend):
    """Under torch.autocast the compiled layer runs in the autocast dtype, as eager does (the
    custom op must not skip autocast): same output dtype, eager's values, nn.LSTM's within bf16
    tolerance; gradients too."""
    torch._dynamo.reset()
    ref = nn.LSTM(5, 8, num_layers=2)
    m = FusedLSTM(5, 8, num_layers=2)
    m.load_state_dict(ref.state_dict())
    x = torch.randn(6, 4, 5, requires_grad=True)

    def run(layer):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y, (h, c) = layer(x)
        return y, h, c

    with torch._dynamo.config.patch(allow_rnn=True):
        compiled = torch.compile(lambda x_: run(m), fullgraph=True, backend=backend)
        yc, hc, cc = compiled(x)
    ye, he, ce = run(m)
    yr, hr, cr = run(ref)
    assert yc.dtype == ye.dtype == yr.dtype == torch.bfloat16
    assert hc.dtype == he.dtype and cc.dtype == ce.dtype
    for name, a, b, r in (("output", yc, ye, yr), ("h_n", hc, he, hr), ("c_n", cc, ce, cr)):
        # the same kernels on the same operands as eager (the native bf16 ones where the CPU has
        # them, else the float32 ones on upcast operands): the same bits
        assert torch.equal(a, b), f"{name} compiled vs eager"
        rel = ((a.float() - r.float()).norm() / r.float().norm()).item()
        assert rel < 2e-2, f"{name} vs nn.LSTM: {rel:.2e}"
    w = torch.randn(yc.shape)
    gc = torch.autograd.grad((yc.float() * w).sum(), [x, *m.parameters()])
    ge = torch.autograd.grad((ye.float() * w).sum(), [x, *m.parameters()])
    for (name, _), a, b in zip([("input", None), *m.named_parameters()], gc, ge, strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b), f"grad {name} compiled vs eager"


@pytest.mark.skipif(not cpu_bf16.cpu_supported(), reason="CPU without AVX512-BF16")
def test_compile_under_cpu_autocast_runs_the_native_bf16_kernels(monkeypatch):
    """Compiled under CPU autocast bf16, the layer's op runs the native bf16 kernels (as eager
    does), not the float32 ones on upcast operands."""
    monkeypatch.setattr(cpu_bf16, "MODE", "native")
    torch._dynamo.reset()
    calls = []
    real = cpu_bf16.forward_saving
    monkeypatch.setattr(cpu_bf16, "forward_saving", lambda *a, **k: calls.append(1) or real(*a, **k))
    m = FusedLSTM(5, 8)
    x = torch.randn(6, 4, 5, requires_grad=True)

    def run(x_):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return m(x_)[0]

    with torch._dynamo.config.patch(allow_rnn=True):
        y = torch.compile(run, fullgraph=True, backend="aot_eager")(x)
    y.float().sum().backward()
    assert calls and y.dtype == torch.bfloat16 and x.grad is not None
