"""Skip-input mode: ``fused_lstm(..., input_projection=True)`` and ``FusedLSTM.forward(...,
input_projection=True)`` take the first layer's precomputed ``x W_ih^T`` instead of x. Against
nn.LSTM on x: outputs, final states and every gradient (W_ih's through the caller's projection),
the projection's own gradient against nn.LSTM with W_ih = I, lengths, layers, bidirectional;
the plan runs it natively on the float32 sequence kernels and the stepwise route, with W_ih = I
elsewhere."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from conftest import SHAPES, DTYPES, assert_close
from lstm_fast import FusedLSTM, fused_lstm
from lstm_fast.cpu import sequence, small_batch
from lstm_fast.ops.plan import native_input_projection, plan_layer


def _weighted(y, h, c, w):
    return (y * w[0]).sum() + (h * w[1]).sum() + (c * w[2]).sum()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,B,D,H", SHAPES)
@pytest.mark.parametrize("bias", [pytest.param(True, id="bias"), pytest.param(False, id="nobias")])
def test_layer_matches_nn_lstm(T, B, D, H, dtype, bias):
    """The projection x W_ih^T computed by the caller: every output and gradient as nn.LSTM on x."""
    ref = nn.LSTM(D, H, bias=bias, dtype=dtype)
    params = [p.detach().clone().requires_grad_() for p in ref.parameters()]
    w_ih, rest = params[0], params[1:]
    x = torch.randn(T, B, D, dtype=dtype, requires_grad=True)
    hx = tuple((torch.randn(B, H, dtype=dtype) * 0.5).requires_grad_() for _ in range(2))
    y, (h, c) = fused_lstm(x @ w_ih.t(), hx, None, *rest, input_projection=True)
    yr, (hr, cr) = ref(x, (hx[0].unsqueeze(0), hx[1].unsqueeze(0)))
    assert y.shape == (T, B, H)
    for name, a, b in (("output", y, yr), ("h_n", h, hr[0]), ("c_n", c, cr[0])):
        assert_close(a, b, dtype, name)
    w = [torch.randn_like(t) for t in (y, h, c)]
    g = torch.autograd.grad(_weighted(y, h, c, w), [x, *hx, *params])
    gr = torch.autograd.grad(_weighted(yr, hr[0], cr[0], w), [x, *hx, *ref.parameters()])
    names = ["input", "h_0", "c_0"] + [n for n, _ in ref.named_parameters()]
    for name, a, b in zip(names, g, gr, strict=True):
        assert_close(a, b, dtype, f"grad {name}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,B,H", [pytest.param(4, 3, 5, id="T4-B3-H5"), pytest.param(9, 7, 40, id="T9-B7-H40")])
def test_projection_gradient_is_the_gate_gradient(T, B, H, dtype):
    """The gradient reaching the projection itself: nn.LSTM with input size 4H and W_ih = I
    takes the same tensor as its input, so its input gradient is the reference."""
    ref = nn.LSTM(4 * H, H, dtype=dtype)
    with torch.no_grad():
        ref.weight_ih_l0.copy_(torch.eye(4 * H, dtype=dtype))
    xg = torch.randn(T, B, 4 * H, dtype=dtype, requires_grad=True)
    y, (h, c) = fused_lstm(xg, None, None, ref.weight_hh_l0, ref.bias_ih_l0, ref.bias_hh_l0, input_projection=True)
    yr, (hr, cr) = ref(xg)
    assert_close(y, yr, dtype, "output")
    w = [torch.randn_like(t) for t in (y, h, c)]
    (g,) = torch.autograd.grad(_weighted(y, h, c, w), [xg])
    (gr,) = torch.autograd.grad(_weighted(yr, hr[0], cr[0], w), [xg])
    assert g.shape == (T, B, 4 * H)
    assert_close(g, gr, dtype, "grad of the projection")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lens", [pytest.param([5, 2, 0, 5, 1], id="5-2-0-5-1"), pytest.param([1], id="1")])
def test_lengths(lens, dtype):
    """Per-row lengths: each row as nn.LSTM on its own sequence; NaN in the projection's padding
    changes nothing; outputs past a row's length are 0."""
    T, B, D, H = max(lens), len(lens), 3, 18
    ref = nn.LSTM(D, H, dtype=dtype)
    params = [p.detach().clone().requires_grad_() for p in ref.parameters()]
    x = torch.randn(T, B, D, dtype=dtype, requires_grad=True)
    hx = tuple(torch.randn(B, H, dtype=dtype, requires_grad=True) for _ in range(2))
    pad = torch.arange(T).unsqueeze(1) >= torch.tensor(lens).unsqueeze(0)
    xg = (x @ params[0].t()).masked_fill(pad.unsqueeze(-1), float("nan"))
    y, (h, c) = fused_lstm(xg, hx, None, *params[1:], lengths=torch.tensor(lens), input_projection=True)
    w = [torch.randn_like(t) for t in (y, h, c)]
    g = torch.autograd.grad(_weighted(y, h, c, w), [x, *hx, *params])
    ref_loss = 0
    for b, n in enumerate(lens):
        assert torch.all(y[n:, b] == 0)
        if n == 0:
            assert_close(h[b], hx[0][b], dtype, "h_n of an empty row")
            ref_loss = ref_loss + (hx[0][b] * w[1][b]).sum() + (hx[1][b] * w[2][b]).sum()
            continue
        yr, (hr, cr) = ref(x[:n, b], (hx[0][b:b + 1], hx[1][b:b + 1]))
        assert_close(y[:n, b], yr, dtype, f"output row {b}")
        assert_close(h[b], hr[0], dtype, f"h_n row {b}")
        assert_close(c[b], cr[0], dtype, f"c_n row {b}")
        ref_loss = ref_loss + (yr * w[0][:n, b]).sum() + (hr[0] * w[1][b]).sum() + (cr[0] * w[2][b]).sum()
    gr = torch.autograd.grad(ref_loss, [x, *hx, *ref.parameters()])
    for name, a, b in zip(["input", "h_0", "c_0"] + [n for n, _ in ref.named_parameters()], g, gr, strict=True):
        assert_close(a, b, dtype, f"grad {name}")


MODULES = [  # (layers, bidirectional, proj_size)
    pytest.param(1, False, 0, id="1layer"),
    pytest.param(1, True, 0, id="1layer-bidir"),
    pytest.param(3, False, 0, id="3layers"),
    pytest.param(2, True, 0, id="2layers-bidir"),
    pytest.param(2, True, 4, id="2layers-bidir-proj4"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layers,bidir,proj", MODULES)
@pytest.mark.parametrize("packed", [pytest.param(False, id="padded"), pytest.param(True, id="packed")])
def test_module_matches_nn_lstm(layers, bidir, proj, packed, dtype):
    """FusedLSTM(..., input_projection=True) on project_input(x): only the first layer takes the
    projection; every output and every parameter's gradient as nn.LSTM on x."""
    T, B, D, H = 6, 5, 7, 19
    ref = nn.LSTM(D, H, num_layers=layers, bidirectional=bidir, proj_size=proj, dtype=dtype)
    ours = FusedLSTM(D, H, num_layers=layers, bidirectional=bidir, proj_size=proj, dtype=dtype)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, D, dtype=dtype, requires_grad=True)
    xg = ours.project_input(x)
    assert xg.shape == (T, B, (2 if bidir else 1) * 4 * H)
    if packed:
        lens = torch.tensor([6, 2, 5, 1, 6])
        y, (h, c) = ours(pack_padded_sequence(xg, lens, enforce_sorted=False), input_projection=True)
        yr, (hr, cr) = ref(pack_padded_sequence(x, lens, enforce_sorted=False))
        y, yr = pad_packed_sequence(y)[0], pad_packed_sequence(yr)[0]
    else:
        y, (h, c) = ours(xg, input_projection=True)
        yr, (hr, cr) = ref(x)
    for name, a, b in (("output", y, yr), ("h_n", h, hr), ("c_n", c, cr)):
        assert_close(a, b, dtype, name)
    w = [torch.randn_like(t) for t in (y, h, c)]
    g = torch.autograd.grad(_weighted(y, h, c, w), [x, *ours.parameters()])
    gr = torch.autograd.grad(_weighted(yr, hr, cr, w), [x, *ref.parameters()])
    for name, a, b in zip(["input"] + [n for n, _ in ref.named_parameters()], g, gr, strict=True):
        assert_close(a, b, dtype, f"grad {name}")


def test_embedding_lookup_is_the_one_hot_projection():
    """The trainer's use: F.embedding(tokens, W_ih^T) is one_hot(tokens) W_ih^T, and its
    gradient (a scatter-add into W_ih) is the one-hot input GEMM's."""
    V, H, T, B = 11, 9, 5, 4
    ref = nn.LSTM(V, H)
    ours = FusedLSTM(V, H)
    ours.load_state_dict(ref.state_dict())
    tokens = torch.randint(0, V, (T, B))
    y, _ = ours(F.embedding(tokens, ours.first_layer_input_weight().t()), input_projection=True)
    yr, _ = ref(F.one_hot(tokens, V).float())
    assert_close(y, yr, torch.float32, "output")
    w = torch.randn_like(y)
    g = torch.autograd.grad((y * w).sum(), list(ours.parameters()))
    gr = torch.autograd.grad((yr * w).sum(), list(ref.parameters()))
    for (name, _), a, b in zip(ref.named_parameters(), g, gr, strict=True):
        assert_close(a, b, torch.float32, f"grad {name}")


def test_plan_runs_it_natively_where_it_can(monkeypatch):
    """float32 CPU on the sequence kernels (where this CPU has them) and float64 (stepwise):
    natively (no identity GEMM); the small-batch kernels (B1 T1) with W_ih = I, and
    native_input_projection says so."""
    monkeypatch.setenv("LSTM_FAST_CPU_SMALL_BATCH", "auto")
    w_hh = torch.empty(4 * 8, 8)
    if sequence.available_for(torch.empty(1, 1, 4), torch.empty(16, 4)):
        plan = plan_layer(torch.empty(35, 32, 32), w_hh, "cpu", input_projection=True)
        assert plan.implementation == "cpu_sequence" and not plan.identity_input, plan
        assert native_input_projection(torch.float32, "cpu", (35, 32, 32), w_hh)
    plan = plan_layer(torch.empty(3, 2, 32, dtype=torch.float64), w_hh.double(), "cpu", input_projection=True)
    assert plan.implementation == "cpu_stepwise" and not plan.identity_input
    assert native_input_projection(torch.float64, "cpu", (3, 2, 32), w_hh.double())
    if small_batch.available_for(torch.empty(1, 1, 32), w_hh):
        plan = plan_layer(torch.empty(1, 1, 32), w_hh, "cpu", input_projection=True)
        assert plan.implementation == "cpu_small_batch" and plan.identity_input
        assert not native_input_projection(torch.float32, "cpu", (1, 1, 32), w_hh)
    with torch.autocast("cpu", dtype=torch.bfloat16):   # the bf16 kernels take none; the float32 routes (no bf16 kernels) do
        impl = plan_layer(torch.empty(35, 32, 32), w_hh, "cpu", input_projection=True).implementation
        assert impl in ("cpu_bf16", "cpu_sequence", "cpu_stepwise")
        assert native_input_projection(torch.float32, "cpu", (35, 32, 32), w_hh) == (impl != "cpu_bf16")
    assert not plan_layer(torch.empty(3, 2, 5), w_hh, "cpu").identity_input


@pytest.mark.parametrize("T,B", [pytest.param(1, 1, id="small-batch-T1-B1"), pytest.param(4, 3, id="T4-B3")])
def test_identity_path_matches(T, B, monkeypatch):
    """Where the plan runs the projection with W_ih = I (here the small-batch kernels, forced),
    every output and gradient is the native path's."""
    H = 12
    w_hh = torch.randn(4 * H, H, requires_grad=True)
    b = torch.randn(4 * H, requires_grad=True)
    xg = torch.randn(T, B, 4 * H, requires_grad=True)
    outs = {}
    for mode in ("1", "0"):
        monkeypatch.setenv("LSTM_FAST_CPU_SMALL_BATCH", mode)
        assert plan_layer(xg, w_hh, "cpu", input_projection=True).identity_input == (mode == "1")
        y, (h, c) = fused_lstm(xg, None, None, w_hh, b, None, input_projection=True)
        outs[mode] = (y, h, c, *torch.autograd.grad((y * y).sum() + c.sum(), [xg, w_hh, b]))
    for name, a, r in zip(("output", "h_n", "c_n", "grad projection", "grad w_hh", "grad b_ih"), outs["1"], outs["0"]):
        assert_close(a, r, torch.float32, name)


class _Proxy:
    """A module's attributes, some replaced."""

    def __init__(self, module):
        self._module = module

    def __getattr__(self, name):
        return getattr(self._module, name)


def test_native_path_runs_no_input_gemm(monkeypatch):
    """The sequence kernels are called with D = 0 (no input GEMM), W_ih is never packed, and the
    backward runs no dx GEMM: the projection's gradient is the gate gradients themselves."""
    if not sequence.available_for(torch.empty(1, 1, 4), torch.empty(16, 4)):
        pytest.skip("no AVX-512 sequence kernels on this CPU")
    T, B, H = 6, 5, 24
    packed_k, kernel_d, gemms = [], [], []
    real_pack, real_fwd, real_linear = sequence.pack_panels, sequence._sequence_kernels.forward_seq, sequence.linear
    monkeypatch.setattr(sequence, "pack_panels", lambda w: packed_k.append(w.shape[1]) or real_pack(w))
    kernels = _Proxy(sequence._sequence_kernels)
    kernels.forward_seq = lambda *a: kernel_d.append(a[11]) or real_fwd(*a)
    monkeypatch.setattr(sequence, "_sequence_kernels", kernels)
    monkeypatch.setattr(sequence, "linear", lambda *a: gemms.append(a) or real_linear(*a))
    w_hh = torch.randn(4 * H, H, requires_grad=True)
    xg = torch.randn(T, B, 4 * H, requires_grad=True)
    y, _ = fused_lstm(xg, None, None, w_hh, input_projection=True)
    y.sum().backward()
    assert kernel_d == [0] and packed_k == [H] and gemms == []
    assert xg.grad.shape == (T, B, 4 * H) and torch.isfinite(xg.grad).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_stepwise_runs_no_input_gemm(dtype, monkeypatch):
    """The stepwise route (float64; float32 where the plan picks it) takes the projection with no
    GEMM on it, forward or backward: its only products are the recurrent ones and dW_hh."""
    from lstm_fast.cpu import stepwise
    T, B, H = 6, 5, 24
    monkeypatch.setenv("LSTM_FAST_CPU_SMALL_BATCH", "0")
    monkeypatch.setattr(stepwise, "uses_fused_cell", lambda x: False)   # the torch-ops cell: every product is seen
    w_hh = torch.randn(4 * H, H, dtype=dtype, requires_grad=True)
    xg = torch.randn(T, B, 4 * H, dtype=dtype, requires_grad=True)
    if plan_layer(xg, w_hh, "cpu", input_projection=True).implementation != "cpu_stepwise":
        pytest.skip("the plan runs this layer on another implementation here")
    gemms = []
    real_linear, real_tn = stepwise.linear, stepwise.matmul_tn
    monkeypatch.setattr(stepwise, "linear", lambda *a, **k: gemms.append("linear") or real_linear(*a, **k))
    monkeypatch.setattr(stepwise, "matmul_tn", lambda a, b, **k: gemms.append(b.shape[1]) or real_tn(a, b, **k))
    y, _ = fused_lstm(xg, None, None, w_hh, input_projection=True)
    y.sum().backward()
    assert gemms == [H], gemms     # dW_hh only: no x W_ih^T, no dx GEMM, no dW_ih
    assert xg.grad.shape == (T, B, 4 * H) and torch.isfinite(xg.grad).all()


def test_bad_arguments_are_clear_errors():
    H = 4
    w_hh = torch.randn(4 * H, H)
    with pytest.raises(ValueError, match="weight_ih=None"):
        fused_lstm(torch.randn(3, 2, 4 * H), None, torch.randn(4 * H, 4 * H), w_hh, input_projection=True)
    with pytest.raises(RuntimeError, match=r"\(T, B, 16\)"):
        fused_lstm(torch.randn(3, 2, 4 * H + 1), None, None, w_hh, input_projection=True)
    with pytest.raises(RuntimeError, match="num_directions"):
        FusedLSTM(5, H, bidirectional=True)(torch.randn(3, 2, 4 * H), input_projection=True)


def test_under_torch_compile_equals_eager():
    """The custom op takes w_ih None: compiled (fullgraph) outputs and gradients are eager's."""
    T, B, H = 5, 3, 8
    w_hh = torch.randn(4 * H, H, requires_grad=True)
    xg = torch.randn(T, B, 4 * H, requires_grad=True)

    def layer(xg, w):
        return fused_lstm(xg, None, None, w, input_projection=True)[0]
    y = torch.compile(layer, fullgraph=True)(xg, w_hh)
    g = torch.autograd.grad((y * y).sum(), [xg, w_hh])
    ye = layer(xg, w_hh)
    ge = torch.autograd.grad((ye * ye).sum(), [xg, w_hh])
    for name, a, b in (("output", y, ye), ("grad projection", g[0], ge[0]), ("grad w_hh", g[1], ge[1])):
        assert_close(a, b, torch.float32, name)
