"""Mixed precision: under torch.autocast FusedLSTM returns the autocast dtype and its gradients
match a float32 run within bf16 tolerance; bf16 parameters work too (on the CPU the kernels are
float32, so 16-bit operands are upcast exactly: a 16-bit matmul with float32 accumulation)."""
import pytest
import torch

from lstm_fast import FusedLSTM


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("kw", [dict(), dict(num_layers=2, bidirectional=True), dict(proj_size=3)],
                         ids=["L1", "L2-bi", "proj3"])
def test_cpu_autocast_bf16(kw):
    m = FusedLSTM(6, 16, **kw)
    x = torch.randn(7, 4, 6, requires_grad=True)
    y32, (h32, c32) = m(x)
    w = torch.randn_like(y32)
    g32 = torch.autograd.grad((y32 * w).sum() + h32.sum() + c32.sum(), [x, *m.parameters()])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, (h, c) = m(x)
    assert y.dtype == h.dtype == c.dtype == torch.bfloat16
    g = torch.autograd.grad((y.float() * w).sum() + h.float().sum() + c.float().sum(), [x, *m.parameters()])
    for name, a, b in (("output", y, y32), ("h_n", h, h32), ("c_n", c, c32)):
        assert _rel(a, b) < 2e-2, name
    for (name, _), a, b in zip([("input", None), *m.named_parameters()], g, g32, strict=True):
        assert a.dtype == b.dtype, f"grad {name} keeps its parameter's dtype"
        assert not torch.isnan(a).any() and _rel(a, b) < 3e-2, f"grad {name}: {_rel(a, b):.2e}"


def test_bf16_parameters_on_cpu():
    ref = FusedLSTM(5, 12, num_layers=2)
    m = FusedLSTM(5, 12, num_layers=2, dtype=torch.bfloat16)
    m.load_state_dict({k: v.to(torch.bfloat16) for k, v in ref.state_dict().items()})
    ref.load_state_dict({k: v.to(torch.bfloat16).float() for k, v in ref.state_dict().items()})
    x = torch.randn(6, 3, 5).to(torch.bfloat16)
    y, (h, c) = m(x.requires_grad_())
    yr, (hr, cr) = ref(x.float())
    assert y.dtype == torch.bfloat16 and _rel(y, yr) < 1e-2 and _rel(c, cr) < 1e-2
    y.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.bfloat16 for p in m.parameters())
