"""The whole-sequence float32 kernels, each ISA's module that this CPU can run (AVX-512:
``_sequence_kernels``; AVX2 + FMA: ``_sequence_avx2_kernels``, which an AVX-512 CPU runs too), called
through :mod:`lstm_fast.cpu.sequence` with that module swapped in: forward, every gradient and
per-row lengths against nn.LSTM in float64, the precomputed input projection, bitwise equality
across 1 and 2 threads, and the panel layouts against their definition. Odd sizes: H below and
past a panel (1, 33, 130, 520), batches that end in partial 6- and 4-row tiles, D below a
transpose block."""
import pytest
import torch
from torch import nn

from lstm_fast.cpu import sequence


def _modules():
    found = []
    for isa, name in (("avx512", "_sequence_kernels"), ("avx2", "_sequence_avx2_kernels")):
        try:
            mod = __import__(f"lstm_fast.cpu.{name}", fromlist=["x"])
        except ImportError:
            continue
        if mod.available():
            found.append(pytest.param((isa, mod), id=isa))
    return found or [pytest.param(None, id="none", marks=pytest.mark.skip("no sequence kernels run on this CPU"))]


@pytest.fixture(params=_modules())
def isa(request, monkeypatch):
    """The sequence module swapped to one ISA's kernels (and its weight-gradient choice)."""
    name, mod = request.param
    monkeypatch.setattr(sequence, "_sequence_kernels", mod)
    monkeypatch.setattr(sequence, "ISA", name)
    return name


SHAPES = [  # (T, B, D, H)
    pytest.param(3, 1, 1, 1, id="T3-B1-D1-H1"),
    pytest.param(4, 5, 7, 33, id="T4-B5-D7-H33"),
    pytest.param(6, 7, 3, 130, id="T6-B7-D3-H130"),
    pytest.param(2, 13, 20, 520, id="T2-B13-D20-H520"),
    pytest.param(5, 32, 28, 256, id="T5-B32-D28-H256"),
]


def _reference(x, h0, c0, params):
    """nn.LSTM in float64 on the same weights: (y, h_n, c_n) and the module."""
    T, B, D = x.shape
    H = h0.shape[1]
    ref = nn.LSTM(D, H, bias=len(params) == 4).double()
    with torch.no_grad():
        for p, q in zip(ref.parameters(), params, strict=True):
            p.copy_(q.double())
    y, (h, c) = ref(x.double(), (h0.double()[None], c0.double()[None]))
    return y, h[0], c[0], ref


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("T,B,D,H", SHAPES)
def test_forward_and_gradients_match_nn_lstm(isa, T, B, D, H, bias):
    x, h0, c0 = torch.randn(T, B, D), torch.randn(B, H), torch.randn(B, H)
    params = [torch.randn(4 * H, D) * 0.3, torch.randn(4 * H, H) * 0.3]
    if bias:
        params += [torch.randn(4 * H), torch.randn(4 * H)]
    w_ih, w_hh, b_ih, b_hh = (params + [None, None])[:4]
    y, h, c, saved = sequence.forward_saving(x, h0, c0, w_ih, w_hh, b_ih, b_hh)
    yr, hr, cr, ref = _reference(x, h0, c0, params)
    for a, b, what in ((y, yr, "output"), (h, hr, "h_n"), (c, cr, "c_n")):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=2e-5, msg=lambda m: f"{what}: {m}")
    yi, (hi, ci) = sequence.forward_inference(x, h0, c0, w_ih, w_hh, b_ih, b_hh)
    assert torch.equal(yi, y) and torch.equal(hi, h) and torch.equal(ci, c), "inference differs from training forward"

    dY, dh, dc = torch.randn(T, B, H), torch.randn(B, H), torch.randn(B, H)
    grads = sequence.backward_saved(dY, dh, dc, x, h0, c0, w_ih, w_hh, y, saved, (True,) * 5 + (bias, bias))
    xr, h0r, c0r = (t.double().requires_grad_() for t in (x, h0, c0))
    yr, (hr, cr) = ref(xr, (h0r[None], c0r[None]))
    loss = (yr * dY.double()).sum() + (hr[0] * dh.double()).sum() + (cr[0] * dc.double()).sum()
    expected = torch.autograd.grad(loss, [xr, h0r, c0r, *ref.parameters()])
    names = ["input", "h_0", "c_0", "weight_ih", "weight_hh", "bias_ih", "bias_hh"]
    assert bias or (grads[5] is None and grads[6] is None)
    for name, a, b in zip(names, grads, expected):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=5e-5, msg=lambda m: f"grad {name}: {m}")


@pytest.mark.parametrize("H", [33, 130])
def test_lengths_match_each_row_alone(isa, H):
    """Per-row lengths: each row equals nn.LSTM on its own sequence; outputs past its end are 0
    and its state passes through (forward and every gradient)."""
    lens = [5, 1, 0, 3, 5, 2, 4]
    T, B, D = max(lens), len(lens), 6
    x, h0, c0 = torch.randn(T, B, D), torch.randn(B, H), torch.randn(B, H)
    params = [torch.randn(4 * H, D) * 0.3, torch.randn(4 * H, H) * 0.3, torch.randn(4 * H), torch.randn(4 * H)]
    lengths = torch.tensor(lens)
    y, h, c, saved = sequence.forward_saving(x, h0, c0, *params, lengths=lengths)
    dY, dh, dc = torch.randn(T, B, H), torch.randn(B, H), torch.randn(B, H)
    grads = sequence.backward_saved(dY, dh, dc, x, h0, c0, params[0], params[1], y, saved, (True,) * 7,
                                    lengths=lengths)
    xr, h0r, c0r = (t.double().requires_grad_() for t in (x, h0, c0))
    ref = _reference(x, h0, c0, params)[3]
    loss = 0
    for b, n in enumerate(lens):
        assert torch.all(y[n:, b] == 0), f"row {b}: outputs past its length must be 0"
        if n == 0:
            hb, cb = h0r[b], c0r[b]
        else:
            yb, (hb, cb) = ref(xr[:n, b], (h0r[b][None], c0r[b][None]))
            hb, cb = hb[0], cb[0]
            torch.testing.assert_close(y[:n, b].double(), yb, rtol=1e-4, atol=2e-5)
            loss = loss + (yb * dY[:n, b].double()).sum()
        torch.testing.assert_close(h[b].double(), hb, rtol=1e-4, atol=2e-5)
        torch.testing.assert_close(c[b].double(), cb, rtol=1e-4, atol=2e-5)
        loss = loss + (hb * dh[b].double()).sum() + (cb * dc[b].double()).sum()
    expected = torch.autograd.grad(loss, [xr, h0r, c0r, *ref.parameters()])
    for name, a, b in zip(["input", "h_0", "c_0", "weight_ih", "weight_hh", "bias_ih", "bias_hh"], grads, expected):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=5e-5, msg=lambda m: f"grad {name}: {m}")


def test_input_projection_matches_the_gemm(isa):
    """w_ih None: x is x_t W_ih^T (the caller's), added in the cell epilogue; the same numbers as
    the input GEMM up to rounding, and its gradient is dG."""
    T, B, D, H = 4, 9, 5, 33
    x, h0, c0 = torch.randn(T, B, D), torch.randn(B, H), torch.randn(B, H)
    w_ih, w_hh, b_ih, b_hh = torch.randn(4 * H, D) * 0.3, torch.randn(4 * H, H) * 0.3, torch.randn(4 * H), torch.randn(4 * H)
    xg = (x.double() @ w_ih.double().t()).float()
    y, h, c, saved = sequence.forward_saving(xg, h0, c0, None, w_hh, b_ih, b_hh)
    yr, hr, cr, ref = _reference(x, h0, c0, [w_ih, w_hh, b_ih, b_hh])
    torch.testing.assert_close(y.double(), yr, rtol=1e-4, atol=2e-5)
    dY = torch.randn(T, B, H)
    dx, *_ = sequence.backward_saved(dY, None, None, xg, h0, c0, None, w_hh, y, saved, (True,) + (False,) * 6)
    xr = x.double().requires_grad_()
    (yr2, _) = ref(xr, (h0.double()[None], c0.double()[None]))
    gx = torch.autograd.grad((yr2 * dY.double()).sum(), xr)[0]
    torch.testing.assert_close((dx.double().view(T * B, 4 * H) @ w_ih.double()).view(T, B, D), gx, rtol=1e-4, atol=5e-5)


@pytest.mark.parametrize("T,B,D,H", [(6, 7, 3, 130), (5, 32, 28, 256)], ids=["T6-B7-H130", "T5-B32-H256"])
def test_bitwise_across_thread_counts(isa, T, B, D, H):
    x, h0, c0 = torch.randn(T, B, D), torch.randn(B, H), torch.randn(B, H)
    params = [torch.randn(4 * H, D) * 0.3, torch.randn(4 * H, H) * 0.3, torch.randn(4 * H), torch.randn(4 * H)]
    dY = torch.randn(T, B, H)
    before = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            y, h, c, saved = sequence.forward_saving(x, h0, c0, *params)
            g = sequence.backward_saved(dY, None, None, x, h0, c0, params[0], params[1], y, saved, (True,) * 7)
            results.append([t.clone() for t in (y, h, c, *g)])
    finally:
        torch.set_num_threads(before)
    for i, (a, b) in enumerate(zip(*results, strict=True)):
        assert torch.equal(a, b), f"result {i} differs between 1 and 2 threads"


@pytest.mark.parametrize("H,K", [(1, 1), (8, 16), (33, 13), (130, 40)], ids=["H1-K1", "H8-K16", "H33-K13", "H130-K40"])
def test_panel_layouts(isa, H, K):
    """Forward panels: P[j][k][q*U + u] = W[q*H + j*U + u][k]; backward: Q[j][k][u] = W_hh[k][j*N + u];
    zeros past H."""
    U, N = sequence._sequence_kernels.FWD_PANEL_UNITS, sequence._sequence_kernels.BWD_PANEL_COLS
    w = torch.randn(4 * H, K)
    P = sequence.pack_panels(w)
    nb = -(-H // U)
    padded = torch.zeros(4, nb * U, K)
    padded[:, :H] = w.view(4, H, K)
    expected = padded.view(4, nb, U, K).permute(1, 3, 0, 2).reshape(nb, K, 4 * U)
    assert torch.equal(P, expected)
    w_hh = torch.randn(4 * H, H)
    Q = sequence.pack_backward_panels(w_hh)
    nq = -(-H // N)
    padded = torch.zeros(4 * H, nq * N)
    padded[:, :H] = w_hh
    assert torch.equal(Q, padded.view(4 * H, nq, N).permute(1, 0, 2))
