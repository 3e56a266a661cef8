"""The Triton kernels through fused_lstm(backend="triton") and FusedLSTM: without a GPU on CPU
tensors under Triton's interpreter (see conftest), on CUDA tensors where a GPU is present. Forward,
final states and every gradient against nn.LSTM and the CPU implementation; gradcheck in float64;
on the GPU, float32/bf16/fp16 by relative error against a float64 reference."""
import importlib.util
import os

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from lstm_fast import FusedLSTM, fused_lstm
from conftest import assert_close, check_lengths_against_nn_lstm

HAS_TRITON = importlib.util.find_spec("triton") is not None
CUDA = torch.cuda.is_available()
pytestmark = [
    pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed"),
    pytest.mark.skipif(not CUDA and os.environ.get("TRITON_INTERPRET") != "1",
                       reason="needs CUDA or TRITON_INTERPRET=1 set before triton is imported"),
]
DEV = "cuda" if CUDA else "cpu"

SHAPES = [  # (T, B, D, H): awkward sizes, tile boundaries (H=130 crosses 64/128), odd batches
    pytest.param(1, 1, 1, 1, id="T1-B1-D1-H1"),
    pytest.param(3, 17, 5, 33, id="T3-B17-D5-H33"),
    pytest.param(2, 3, 4, 130, id="T2-B3-D4-H130"),
    pytest.param(5, 1, 3, 2, id="T5-B1-D3-H2"),
]


def _run(fn, T, B, D, H, dtype, ref_params, with_hx=True):
    torch.manual_seed(1)
    x = torch.randn(T, B, D, dtype=dtype, device=DEV, requires_grad=True)
    hx = tuple((torch.randn(B, H, dtype=dtype, device=DEV) * 0.5).requires_grad_() for _ in range(2)) if with_hx else None
    params = [p.detach().clone().requires_grad_() for p in ref_params]
    y, (h, c) = fn(x, hx, params)
    torch.manual_seed(2)
    w = [torch.randn_like(t) for t in (y, h, c)]
    leaves = [x] + (list(hx) if hx else []) + params
    grads = torch.autograd.grad((y * w[0]).sum() + (h * w[1]).sum() + (c * w[2]).sum(), leaves)
    return [y, h, c] + list(grads)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("T,B,D,H", SHAPES)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "nohx"])
def test_triton_matches_nn_lstm_and_cpu(T, B, D, H, dtype, bias, with_hx, cudnn_tf32):
    if CUDA and dtype == torch.float32:
        cudnn_tf32(False)   # exact comparison; tf32 has its own GPU test
    ref = nn.LSTM(D, H, bias=bias, dtype=dtype, device=DEV)
    ref_params = list(ref.parameters())

    def triton_fn(x, hx, p):
        return fused_lstm(x, hx, *p, backend="triton")

    def torch_fn(x, hx, p):
        y, (h, c) = torch.func.functional_call(ref, dict(zip([n for n, _ in ref.named_parameters()], p, strict=True)),
                                               (x, None if hx is None else tuple(t.unsqueeze(0) for t in hx)))
        return y, (h[0], c[0])

    names = ["output", "h_n", "c_n", "grad input"] + (["grad h_0", "grad c_0"] if with_hx else []) + \
        [f"grad {n}" for n, _ in ref.named_parameters()]
    got = _run(triton_fn, T, B, D, H, dtype, ref_params, with_hx)
    want = _run(torch_fn, T, B, D, H, dtype, ref_params, with_hx)
    for name, a, b in zip(names, got, want, strict=True):
        assert_close(a, b, dtype, name)
    if DEV == "cpu":
        cpu = _run(lambda x, hx, p: fused_lstm(x, hx, *p, backend="cpu"), T, B, D, H, dtype, ref_params, with_hx)
        for name, a, b in zip(names, got, cpu, strict=True):
            assert_close(a, b, dtype, f"{name} vs CPU implementation")


def test_triton_gradcheck():
    dt = torch.float64
    T, B, D, H = 2, 2, 2, 3
    inputs = [torch.randn(T, B, D, dtype=dt, device=DEV), torch.randn(B, H, dtype=dt, device=DEV),
              torch.randn(B, H, dtype=dt, device=DEV), torch.randn(4 * H, D, dtype=dt, device=DEV) * 0.5,
              torch.randn(4 * H, H, dtype=dt, device=DEV) * 0.5, torch.randn(4 * H, dtype=dt, device=DEV),
              torch.randn(4 * H, dtype=dt, device=DEV)]
    inputs = [t.requires_grad_() for t in inputs]

    def f(x, h0, c0, w_ih, w_hh, b_ih, b_hh):
        y, (h, c) = fused_lstm(x, (h0, c0), w_ih, w_hh, b_ih, b_hh, backend="triton")
        return y, h, c

    assert torch.autograd.gradcheck(f, inputs)


@pytest.mark.parametrize("kw", [dict(bidirectional=True, num_layers=2), dict(proj_size=2), dict(proj_size=2, bidirectional=True)],
                         ids=["bi-L2", "proj2", "proj2-bi"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_triton_module(kw, packed):
    """The module's layers, directions, projection (first step with R != H) and packing on Triton."""
    dt = torch.float64
    ref = nn.LSTM(3, 5, dtype=dt, device=DEV, **kw)
    m = FusedLSTM(3, 5, dtype=dt, device=DEV, backend="triton", **kw)
    m.load_state_dict(ref.state_dict())
    x = torch.randn(4, 3, 3, dtype=dt, device=DEV, requires_grad=True)
    n = ref.num_layers * (2 if ref.bidirectional else 1)
    hx = (torch.randn(n, 3, ref.proj_size or 5, dtype=dt, device=DEV), torch.randn(n, 3, 5, dtype=dt, device=DEV))
    inp = pack_padded_sequence(x, torch.tensor([4, 2, 1]), enforce_sorted=False) if packed else x
    (yr, (hr, cr)), (y, (h, c)) = ref(inp, hx), m(inp, hx)
    if packed:
        yr, y = yr.data, y.data
    for name, a, b in (("output", y, yr), ("h_n", h, hr), ("c_n", c, cr)):
        assert_close(a, b, dt, name)
    g = torch.autograd.grad(y.sum() + h.sum() + c.sum(), [x] + list(m.parameters()), retain_graph=True)
    gr = torch.autograd.grad(yr.sum() + hr.sum() + cr.sum(), [x] + list(ref.parameters()), retain_graph=True)
    for (name, _), a, b in zip([("input", None)] + list(ref.named_parameters()), g, gr, strict=True):
        assert_close(a, b, dt, f"grad {name}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("lens", [[5, 2, 5, 1, 3], [3, 0, 1, 3, 2], [1] * 17], ids=["unsorted", "with-zero", "B17-T1"])
def test_triton_lengths_masked_in_the_kernels(lens, dtype, cudnn_tf32):
    """Variable lengths inside the Triton kernels (finished rows masked), checked row by row."""
    if CUDA and dtype == torch.float32:
        cudnn_tf32(False)
    check_lengths_against_nn_lstm(lens, dtype, DEV, "triton")


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, "tf32", torch.bfloat16, torch.float16], ids=["fp32", "tf32", "bf16", "fp16"])
@pytest.mark.parametrize("T,B,D,H", [(35, 32, 28, 256), (7, 3, 64, 130), (4, 100, 512, 512), (6, 8, 96, 768)],
                         ids=["d2l", "odd", "wide", "H768"])
def test_gpu_relative_error(T, B, D, H, dtype, cudnn_tf32):
    """On CUDA, fresh inputs (outputs poisoned by conftest): ||out - ref|| / ||ref|| against float64,
    for FusedLSTM and for cuDNN (nn.LSTM) in the same precision. Ours must be within 3x cuDNN's own
    error (plus a floor at float32 round-off), so the bound tracks the precision actually used
    instead of sitting at a fixed number near tf32's noise."""
    cudnn_tf32(dtype == "tf32")
    dt = torch.float32 if dtype == "tf32" else dtype
    ref = nn.LSTM(D, H, dtype=torch.float64, device="cuda")
    x = torch.randn(T, B, D, dtype=torch.float64, device="cuda", requires_grad=True)
    yr, (hr, cr) = ref(x)
    w = torch.randn_like(yr)
    gr = torch.autograd.grad((yr * w).sum() + hr.sum() + cr.sum(), [x] + list(ref.parameters()))

    def run(cls):
        m = cls(D, H, dtype=dt, device="cuda")
        m.load_state_dict({k: v.to(dt) for k, v in ref.state_dict().items()})
        x2 = x.detach().to(dt).requires_grad_()
        y, (h, c) = m(x2)
        return [y, h, c, *torch.autograd.grad((y * w.to(dt)).sum() + h.sum() + c.sum(), [x2] + list(m.parameters()))]

    names = ["output", "h_n", "c_n", "grad x", "w_ih", "w_hh", "b_ih", "b_hh"]
    ours, cudnn = run(FusedLSTM), run(nn.LSTM)
    for name, a, c, b in zip(names, ours, cudnn, [yr, hr, cr, *gr], strict=True):
        assert not torch.isnan(a).any(), f"{name}: NaN"
        err = ((a.double() - b).norm() / b.norm()).item()
        err_cudnn = ((c.double() - b).norm() / b.norm()).item()
        assert err <= 3 * err_cudnn + 1e-6, f"{name}: relative error {err:.2e} > 3 x cuDNN's {err_cudnn:.2e}"


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("ac", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_gpu_autocast(ac):
    """Under CUDA autocast the Triton kernels run in the autocast dtype (float32 accumulation and
    cell state), return it, and gradients match a float32 run within 16-bit tolerance."""
    m = FusedLSTM(32, 64, num_layers=2, device="cuda")
    x = torch.randn(20, 8, 32, device="cuda", requires_grad=True)
    y32, _ = m(x)
    g32 = torch.autograd.grad(y32.sum(), [x, *m.parameters()])
    with torch.autocast("cuda", dtype=ac):
        y, (h, c) = m(x)
    assert y.dtype == h.dtype == c.dtype == ac
    g = torch.autograd.grad(y.float().sum(), [x, *m.parameters()])
    assert ((y.float() - y32).norm() / y32.norm()).item() < 2e-2
    for a, b in zip(g, g32, strict=True):
        assert not torch.isnan(a).any() and ((a - b).norm() / b.norm()).item() < 3e-2


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_gpu_bitwise_deterministic():
    """A fixed reduction order (the hidden-split barrier's atomics only count arrivals, they never
    add data): two runs give bitwise identical outputs and gradients."""
    m = FusedLSTM(16, 48, num_layers=2, device="cuda")
    x = torch.randn(12, 5, 16, device="cuda", requires_grad=True)

    def run():
        y, (h, c) = m(x)
        return [y.detach(), h.detach(), c.detach(), *torch.autograd.grad(y.sum() + c.sum(), [x, *m.parameters()])]

    for a, b in zip(run(), run(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("path,driver,streamed", [("hidden_split", "persistent", False), ("hidden_split", "step", False),
                                                  ("hidden_split", "persistent", True), ("batch_tiled", None, False)],
                         ids=["hs-persistent", "hs-step", "hs-streamed", "batch-tiled"])
def test_gpu_every_path_and_driver(path, driver, streamed, monkeypatch, cudnn_tf32):
    """On a GPU, each kernel path and driver (the persistent one with its real grid barrier across
    many programs) against nn.LSTM in exact float32, every output and gradient."""
    from lstm_fast.kernels import lstm_config
    cudnn_tf32(False)
    monkeypatch.setattr(lstm_config, "forced_path", path)
    monkeypatch.setattr(lstm_config, "forced_driver", driver)
    monkeypatch.setattr(lstm_config, "forced_streamed", streamed)
    T, B, D, H = 9, 5, 16, 130
    ref = nn.LSTM(D, H, device="cuda")

    def triton_fn(x, hx, p):
        return fused_lstm(x, hx, *p, backend="triton")

    def torch_fn(x, hx, p):
        y, (h, c) = torch.func.functional_call(ref, dict(zip([n for n, _ in ref.named_parameters()], p, strict=True)),
                                               (x, tuple(t.unsqueeze(0) for t in hx)))
        return y, (h[0], c[0])

    got = _run(triton_fn, T, B, D, H, torch.float32, list(ref.parameters()))
    want = _run(torch_fn, T, B, D, H, torch.float32, list(ref.parameters()))
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        assert_close(a, b, torch.float32, f"result {i}")
