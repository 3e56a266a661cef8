"""torch.compile(fullgraph=True) of a model holding a FusedLSTM: each layer is one custom op with
a fake (shape) implementation and an autograd formula, so forward and backward compile without a
graph break and give eager's numbers. Dynamo refuses every nn.LSTM subclass unless
torch._dynamo.config.allow_rnn is set (an isinstance check), so the test sets it, as users do."""
import pytest
import torch
from torch import nn

from lstm_fast import FusedLSTM


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


def test_custom_op_fake_shapes_match_real():
    """The shape function agrees with what the implementation returns (saved tensors included)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from lstm_fast import custom_ops
    T, B, D, H = 4, 3, 5, 7
    args = [torch.randn(T, B, D), torch.randn(B, H), torch.randn(B, H), torch.randn(4 * H, D), torch.randn(4 * H, H),
            torch.randn(4 * H), torch.randn(4 * H)]
    real = torch.ops.lstm_fast.lstm_forward(*args, None, "cpu")
    with FakeTensorMode() as mode:
        fake = torch.ops.lstm_fast.lstm_forward(*[mode.from_tensor(a) for a in args], None, "cpu")
    assert [tuple(t.shape) for t in fake] == [tuple(t.shape) for t in real]
    assert [t.dtype for t in fake] == [t.dtype for t in real]
    assert custom_ops.lstm_layer_op is not None
