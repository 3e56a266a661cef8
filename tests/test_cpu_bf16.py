"""The native bfloat16 CPU path (lstm_fast/cpu/bf16_sequence.py + bf16_sequence_kernels.c).

Numerics: outputs, state and every gradient are compared with a float64 nn.LSTM on the same
parameters, and must be as close as nn.LSTM under the same bf16 autocast is (its error measured
in the same test on the same inputs). Measured on the dev machine, relative errors vs float64:
ours 2.4-3.4e-3, nn.LSTM-autocast 3.0-4.3e-3 (outputs, dx, dW), biases 0.6-0.9e-3 vs 1.3-2.2e-3;
the bound below is 1.5x nn.LSTM's error (+ 5e-4 for the bias gradients, which it sums in float32
like we do, so both are small and noisy). Routing: the native kernels run under CPU autocast bf16
and for bf16 parameters when the CPU has AVX512-BF16; LSTM_FAST_CPU_BF16 (bf16_sequence.MODE)
forces either path, and the upcast path is today's float32 kernels on exactly upcast operands.
"""
import pytest
import torch
from torch import nn

from lstm_fast import FusedLSTM, fused_lstm
from lstm_fast.cpu import bf16_sequence
from conftest import requires_nn_autocast

native = pytest.mark.skipif(not bf16_sequence.cpu_supported(), reason="CPU without AVX512-BF16")


def _rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(autouse=True)
def _native_where_supported(monkeypatch):
    """These tests are about the native kernels: run them wherever the CPU can ("auto" may judge
    vdpbf16ps slower than float32 FMAs on a CPU without AMX); routing tests set MODE themselves."""
    if bf16_sequence.cpu_supported():
        monkeypatch.setattr(bf16_sequence, "MODE", "native")


@pytest.fixture
def kernel_calls(monkeypatch):
    """Count calls of the native forward (to assert which path ran)."""
    calls = []
    real = bf16_sequence.forward

    def spy(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(bf16_sequence, "forward", spy)
    return calls


def _run(module, x, hx, autocast, weight):
    x = x.clone().requires_grad_()
    hx = tuple(t.clone().requires_grad_() for t in hx)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y, (h, c) = module(x, hx)
    loss = (y.double() * weight).sum() + h.double().sum() + c.double().sum()
    grads = torch.autograd.grad(loss, [x, *hx, *module.parameters()])
    return [y, h, c, *grads]


NAMES = ["output", "h_n", "c_n", "dx", "dh0", "dc0", "dW_ih", "dW_hh", "db_ih", "db_hh"]


@native
@pytest.mark.parametrize("T,B,D,H", [(35, 32, 28, 256), (9, 5, 7, 9), (6, 13, 33, 70), (4, 1, 2, 16)])
def test_autocast_error_is_nn_lstm_order(T, B, D, H, kernel_calls):
    torch.manual_seed(T * 1000 + H)
    ref = nn.LSTM(D, H)
    ours = FusedLSTM(D, H)
    ours.load_state_dict(ref.state_dict())
    exact = nn.LSTM(D, H, dtype=torch.float64)
    exact.load_state_dict({k: v.double() for k, v in ref.state_dict().items()})
    x = torch.randn(T, B, D)
    hx = (0.5 * torch.randn(1, B, H), 0.5 * torch.randn(1, B, H))
    weight = torch.randn(T, B, H, dtype=torch.float64)
    got = _run(ours, x, hx, True, weight)
    assert kernel_calls, "the native bf16 kernels ran"
    theirs = _run(ref, x, hx, True, weight)
    want = _run(exact, x.double(), tuple(t.double() for t in hx), False, weight)
    assert [t.dtype for t in got[:3]] == [torch.bfloat16] * 3
    assert [t.dtype for t in got[3:]] == [torch.float32] * 7, "gradients in their tensors' dtypes"
    for name, g, t, w in zip(NAMES, got, theirs, want, strict=True):
        ours_err, nn_err = _rel(g, w), _rel(t, w)
        assert torch.isfinite(g).all(), name
        assert ours_err <= 1.5 * nn_err + (5e-4 if name.startswith("db") else 0), \
            f"{name}: ours {ours_err:.2e} vs float64, nn.LSTM-autocast {nn_err:.2e}"


@native
@pytest.mark.parametrize("T,B,D,H", [(9, 5, 7, 9), (6, 13, 33, 70)])
def test_avx512_bf16_kernels_without_amx(T, B, D, H, kernel_calls, monkeypatch):
    """The vdpbf16ps kernels (what a CPU with AVX512-BF16 but no AMX runs), forced here with
    USE_AMX off: the same error bound against float64 as nn.LSTM under autocast."""
    monkeypatch.setattr(bf16_sequence, "USE_AMX", False)
    test_autocast_error_is_nn_lstm_order(T, B, D, H, kernel_calls)


@native
def test_auto_without_amx_follows_the_measured_vdpbf16ps_gain(monkeypatch, kernel_calls):
    """Without AMX, "auto" runs the vdpbf16ps kernels only where this core's vdpbf16ps out-multiplies
    its float32 FMAs (measured), else the float32 kernels on upcast operands; with AMX it runs
    the tile kernels whatever the probe says. The probe itself reports positive rates."""
    gain = bf16_sequence.vdpbf16ps_gain()
    assert 0 < gain < 100
    m = FusedLSTM(4, 8)
    x = torch.randn(3, 2, 4)
    monkeypatch.setattr(bf16_sequence, "MODE", "auto")
    monkeypatch.setattr(bf16_sequence, "USE_AMX", False)
    for fake_gain, native_expected in ((2.0, True), (0.5, False)):
        monkeypatch.setattr(bf16_sequence, "vdpbf16ps_gain", lambda g=fake_gain: g)
        kernel_calls.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y, _ = m(x)
        assert y.dtype == torch.bfloat16 and bool(kernel_calls) == native_expected, fake_gain
    if bf16_sequence._CPU_HAS_AMX:
        monkeypatch.setattr(bf16_sequence, "USE_AMX", True)
        kernel_calls.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            m(x)
        assert kernel_calls, "AMX: the tile kernels, whatever vdpbf16ps does"


amx = pytest.mark.skipif(not bf16_sequence.use_amx(), reason="CPU without AMX-BF16")


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@amx
@pytest.mark.parametrize("B,lengths", [(32, False), (40, True), (5, False), (70, True)],
                         ids=["B32", "B40-uneven-blocks-lengths", "B5-one-block", "B70-lengths"])
def test_amx_batch_split_equals_hidden_split(B, lengths, two_threads, monkeypatch):
    """The AMX kernels' two ways of sharing a step among 2 threads (threads own row blocks, no
    barrier / threads own unit blocks, a barrier per step) compute every value the same way, so
    outputs, states and gradients are bitwise equal; the bias gradient (summed per thread, then
    across threads) to float32 rounding. Covers 16-row blocks that do not divide among the
    threads (40 rows: 2 + 1 blocks), a thread without rows (5 rows), and finished rows."""
    torch.manual_seed(B)
    T, D, H = 7, 19, 72
    m = FusedLSTM(D, H)
    x = torch.randn(T, B, D)
    hx = (0.5 * torch.randn(B, H), 0.5 * torch.randn(B, H))
    lens = torch.randint(0, T + 1, (B,)) if lengths else None
    weight = torch.randn(T, B, H, dtype=torch.float64)
    results = {}
    for split in ("hidden", "batch"):
        monkeypatch.setattr(bf16_sequence, "SPLIT", split)
        xs = x.clone().requires_grad_()
        hs = tuple(t.clone().requires_grad_() for t in hx)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y, (h, c) = fused_lstm(xs, hs, *m.parameters(), lengths=lens)
        loss = (y.double() * weight).sum() + h.double().sum() + c.double().sum()
        results[split] = [y, h, c, *torch.autograd.grad(loss, [xs, *hs, *m.parameters()])]
    for name, a, b in zip(NAMES, results["hidden"], results["batch"], strict=True):
        assert torch.isfinite(a).all(), name
        if name.startswith("db"):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5, msg=name)
        else:
            assert torch.equal(a, b), name


@amx
def test_amx_panel_prefetch_changes_no_value(monkeypatch, two_threads):
    """The forward's prefetch of the next weight panel (on where a thread's weights miss its L2,
    forced here by an L2 of 0 bytes) only hints the caches: the same bits as without it."""
    torch.manual_seed(5)
    m = FusedLSTM(40, 72)
    x = torch.randn(6, 37, 40)
    monkeypatch.setattr(bf16_sequence, "SPLIT", "hidden")
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        y0, (h0, c0) = m(x)
        monkeypatch.setattr(bf16_sequence, "_L2_BYTES", 0)
        y1, (h1, c1) = m(x)
    assert torch.equal(y0, y1) and torch.equal(h0, h1) and torch.equal(c0, c1)


def test_split_policy(monkeypatch):
    """"auto" splits the batch only where the row blocks divide among the threads and the weight
    panels fit half a core's L2; "batch"/"hidden" force it; a bad value names the variable."""
    monkeypatch.setattr(bf16_sequence, "_L2_BYTES", 2 << 20)
    monkeypatch.setattr(bf16_sequence, "SPLIT", "auto")
    assert bf16_sequence.split_batch(32, 580_000, 2)
    assert not bf16_sequence.split_batch(48, 580_000, 2), "3 row blocks on 2 threads"
    assert not bf16_sequence.split_batch(64, 2_600_000, 2), "weights past half the L2"
    assert not bf16_sequence.split_batch(32, 580_000, 1), "one thread"
    monkeypatch.setattr(bf16_sequence, "SPLIT", "batch")
    assert bf16_sequence.split_batch(64, 2_600_000, 2)
    monkeypatch.setattr(bf16_sequence, "SPLIT", "hidden")
    assert not bf16_sequence.split_batch(32, 580_000, 2)
    monkeypatch.setattr(bf16_sequence, "SPLIT", "rows")
    with pytest.raises(ValueError, match="LSTM_FAST_CPU_SPLIT"):
        bf16_sequence.split_batch(32, 580_000, 2)


def _panels_reference(w, k_pad):
    """pack_panels' layout written out in torch: (ceil(H/16), ceil(k_pad/2), 64 columns q*16 + u,
    2 k of a pair), W rounded to bf16, zero past H and past K."""
    G4, K = w.shape
    H = G4 // 4
    nb, npair = -(-H // 16), -(-k_pad // 2)
    full = torch.zeros(4, nb * 16, 2 * npair, dtype=torch.bfloat16)
    full[:, :H, :K] = w.to(torch.bfloat16).view(4, H, K)
    # [q, j, u, p, s] -> [j, p, q, u, s]
    return full.view(4, nb, 16, npair, 2).permute(1, 3, 0, 2, 4).reshape(nb, npair, 128)


@native
@pytest.mark.parametrize("H,K,k_pad", [(9, 7, 7), (40, 33, 64), (70, 200, 224), (256, 28, 32)],
                         ids=["H9-K7", "H40-K33-pad64", "H70-K200-pad224", "H256-K28-pad32"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_pack_panels_layout(H, K, k_pad, dtype, two_threads):
    """The forward weight panels (threaded, chunked, scattered) hold exactly W's bf16 values in
    the documented layout, zeros in the padding: odd K (a half pair), H not a multiple of 16,
    k padded for the AMX tiles, more pairs than one chunk."""
    w = torch.randn(4 * H, K, dtype=dtype)
    got = bf16_sequence.workspace.zeros((-(-H // 16), -(-k_pad // 2), 128), torch.bfloat16).fill_(float("nan"))
    bf16_sequence._bf16_sequence_kernels.pack_panels(w.data_ptr(), dtype == torch.float32, H, K, k_pad,
                                                     got.data_ptr(), torch.get_num_threads())
    assert torch.equal(got, _panels_reference(w, k_pad))


@native
@pytest.mark.parametrize("R,N,ld", [(16, 16, 16), (284, 1024, 1024), (7, 36, 40), (33, 17, 20)],
                         ids=["one-block", "d2l-dW", "short-rows-strided", "odd-both"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["to-f32", "to-bf16"])
def test_weight_gradient_transpose(R, N, ld, dtype, two_threads):
    """The blocked register transpose around the weight-gradient GEMM equals torch's transpose
    exactly (a conversion to float32 is exact), at partial 16 x 16 blocks on both sides and a
    source row stride wider than its columns; every output element is written."""
    src = torch.randn(R, ld).bfloat16()
    dst = torch.full((N, R), float("nan"), dtype=dtype)
    bf16_sequence._bf16_sequence_kernels.transpose_bf16(src.data_ptr(), ld, R, N, dst.data_ptr(), R,
                                                        dtype == torch.float32, torch.get_num_threads())
    assert torch.equal(dst, src[:, :N].t().to(dtype))
    # into a column window of a wider buffer (the [X | h_prev]^T operand is built that way):
    # nothing outside the window is touched
    wide = torch.full((N, R + 21), float("nan"), dtype=dtype)
    bf16_sequence._transpose(src[:, :N], wide[:, 5:5 + R], torch.get_num_threads())
    assert torch.equal(wide[:, 5:5 + R], src[:, :N].t().to(dtype))
    assert wide[:, :5].isnan().all() and wide[:, 5 + R:].isnan().all()


@native
def test_bf16_parameters(kernel_calls):
    """bf16 parameters and input (no autocast): the same kernels; gradients come back in bf16."""
    torch.manual_seed(1)
    T, B, D, H = 12, 6, 10, 40
    ref = nn.LSTM(D, H, num_layers=2)
    ours = FusedLSTM(D, H, num_layers=2, dtype=torch.bfloat16)
    ours.load_state_dict({k: v.bfloat16() for k, v in ref.state_dict().items()})
    exact = nn.LSTM(D, H, num_layers=2, dtype=torch.float64)
    exact.load_state_dict({k: v.bfloat16().double() for k, v in ref.state_dict().items()})
    x = torch.randn(T, B, D).bfloat16()
    hx = (torch.zeros(2, B, H).bfloat16(), torch.zeros(2, B, H).bfloat16())
    weight = torch.randn(T, B, H, dtype=torch.float64)
    got = _run(ours, x, hx, False, weight)
    assert len(kernel_calls) == 2, "both layers ran natively"
    want = _run(exact, x.double(), tuple(t.double() for t in hx), False, weight)
    assert all(t.dtype == torch.bfloat16 for t in got)
    for name, g, w in zip(NAMES[:6] + [n for n, _ in ours.named_parameters()], got, want, strict=True):
        # bf16 results (outputs and gradients rounded once more): 2-3 bf16 ulps of relative error
        assert _rel(g, w) < 1e-2, f"{name}: {_rel(g, w):.2e}"


@native
def test_inference_equals_training_forward():
    """no_grad (nothing saved, two cell-state buffers) gives the training forward's values exactly."""
    torch.manual_seed(2)
    m = FusedLSTM(8, 24)
    x = torch.randn(11, 7, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, (h, c) = m(x)
        with torch.no_grad():
            y0, (h0, c0) = m(x)
    assert torch.equal(y, y0) and torch.equal(h, h0) and torch.equal(c, c0)


@native
def test_variable_lengths_match_each_row_alone():
    """Masked rows: each row equals the same row run alone at its own length (rows never mix in
    the kernels, so bitwise), and padding outputs are 0; gradients w.r.t. x match too."""
    torch.manual_seed(3)
    T, B, D, H = 9, 5, 6, 20
    w = [torch.randn(4 * H, D) * 0.3, torch.randn(4 * H, H) * 0.3, torch.randn(4 * H), torch.randn(4 * H)]
    x = torch.randn(T, B, D).bfloat16().requires_grad_()
    lengths = torch.tensor([9, 0, 4, 1, 7])
    bw = [t.bfloat16() for t in w]
    y, (h, c) = fused_lstm(x, None, *bw, lengths=lengths)
    y.float().sum().backward()
    for b, n in enumerate(lengths.tolist()):
        assert (y[n:, b] == 0).all()
        if n == 0:
            assert (h[b] == 0).all() and (c[b] == 0).all() and (x.grad[:, b] == 0).all()
            continue
        xb = x.detach()[:n, b:b + 1].clone().requires_grad_()
        yb, (hb, cb) = fused_lstm(xb, None, *bw)
        yb.float().sum().backward()
        assert torch.equal(y[:n, b:b + 1], yb) and torch.equal(h[b], hb[0]) and torch.equal(c[b], cb[0])
        assert torch.equal(x.grad[:n, b:b + 1], xb.grad) and (x.grad[n:, b] == 0).all()


@native
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("T,D,H", [(3, 7, 130), (2, 33, 16), (4, 1, 50)], ids=["D7-H130", "D33-H16", "D1-H50"])
def test_one_row_tiles_equal_a_row_of_the_batch_tiles(T, D, H, threads, monkeypatch):
    """A batch of one runs the vdpbf16ps kernels' one-row tiles (two unit blocks at once, then an
    odd one; odd K ends in a half pair), a batch of 4 their 4-row tiles: the same sums, so the
    row alone is bitwise that row within the batch (outputs and states)."""
    monkeypatch.setattr(bf16_sequence, "USE_AMX", False)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(4)
        w = [t.bfloat16() for t in (torch.randn(4 * H, D) * 0.3, torch.randn(4 * H, H) * 0.3,
                                    torch.randn(4 * H), torch.randn(4 * H))]
        x = torch.randn(T, 4, D).bfloat16()
        h0, c0 = torch.randn(4, H).bfloat16(), torch.randn(4, H).bfloat16()
        with torch.no_grad():
            y, (h, c) = fused_lstm(x, (h0, c0), *w)
            for b in (0, 3):
                r = slice(b, b + 1)
                yb, (hb, cb) = fused_lstm(x[:, r].clone(), (h0[r].clone(), c0[r].clone()), *w)
                assert torch.equal(yb, y[:, r]) and torch.equal(hb, h[r]) and torch.equal(cb, c[r])
    finally:
        torch.set_num_threads(before)


@native
@pytest.mark.parametrize("delay_us", [0, 300, 20000], ids=lambda d: f"join-delay-{d}us")
@pytest.mark.parametrize("runner", [1, 2], ids=["pool", "openmp"])
@pytest.mark.parametrize("B,T,H", [(1, 5, 130), (5, 3, 70)], ids=["B1-H130", "B5-H70"])
def test_forward_team_gives_the_one_thread_bits(B, T, H, runner, delay_us, monkeypatch):
    """The vdpbf16ps forward runs on a claimed-phase team (thread_team.h): a worker that joins
    late (or never: 20 ms is longer than these calls) changes who computes an item, never its
    bits. Outputs and states, inference and a saving (training) forward, equal the 1-thread run's."""
    monkeypatch.setattr(bf16_sequence, "USE_AMX", False)
    k = bf16_sequence._bf16_sequence_kernels
    torch.manual_seed(B * 10 + H)
    w = [t.bfloat16() for t in (torch.randn(4 * H, 9) * 0.3, torch.randn(4 * H, H) * 0.3,
                                torch.randn(4 * H), torch.randn(4 * H))]
    x = torch.randn(T, B, 9).bfloat16()

    def run():
        with torch.no_grad():
            y, (h, c) = fused_lstm(x, None, *w)
        xg = x.clone().requires_grad_()
        yg, _ = fused_lstm(xg, None, *w)
        return y, h, c, yg.detach()
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        want = run()
        torch.set_num_threads(2)
        k._set_team_mode(runner)
        k._set_join_delay_us(delay_us)
        for _ in range(2):
            assert all(torch.equal(a, b) for a, b in zip(want, run(), strict=True))
    finally:
        k._set_team_mode(0)
        k._set_join_delay_us(0)
        torch.set_num_threads(before)


@native
def test_whole_sequences_run_on_openmp_and_one_step_calls_on_the_policy(monkeypatch, two_threads):
    """The vdpbf16ps forward's runners: a whole sequence (T > 1) always on OpenMP's team (a plain
    call's torch ops keep its threads spinning), a one-step call (a stream) on the inference
    policy's runner (the pool or OpenMP's team)."""
    monkeypatch.setattr(bf16_sequence, "USE_AMX", False)
    k = bf16_sequence._bf16_sequence_kernels
    w = [t.bfloat16() for t in (torch.randn(256, 9), torch.randn(256, 64), torch.randn(256), torch.randn(256))]
    for T, want_openmp in ((7, True), (1, None)):
        x = torch.randn(T, 2, 9).bfloat16()
        s0 = k._team_stats()
        with torch.no_grad():
            fused_lstm(x, None, *w)
        s1 = k._team_stats()
        pool, openmp = s1["pool_calls"] - s0["pool_calls"], s1["openmp_calls"] - s0["openmp_calls"]
        assert pool + openmp == 1
        if want_openmp:
            assert openmp == 1


def test_upcast_forced_is_the_float32_kernels_on_upcast_operands(monkeypatch, kernel_calls):
    """LSTM_FAST_CPU_BF16=upcast: today's path, exactly: the float32 layer on bf16-rounded
    operands, outputs rounded to bf16."""
    monkeypatch.setattr(bf16_sequence, "MODE", "upcast")
    torch.manual_seed(4)
    m = FusedLSTM(5, 16)
    x = torch.randn(6, 3, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, (h, c) = m(x)
    up = FusedLSTM(5, 16)
    up.load_state_dict({k: v.bfloat16().float() for k, v in m.state_dict().items()})
    y32, (h32, c32) = up(x.bfloat16().float())
    assert not kernel_calls
    assert torch.equal(y, y32.bfloat16()) and torch.equal(h, h32.bfloat16()) and torch.equal(c, c32.bfloat16())


def test_native_forced_without_avx512_bf16_is_an_error_and_auto_upcasts(monkeypatch, kernel_calls):
    monkeypatch.setattr(bf16_sequence, "_CPU_HAS_BF16", False)
    m = FusedLSTM(4, 8)
    x = torch.randn(3, 2, 4)
    monkeypatch.setattr(bf16_sequence, "MODE", "native")
    with pytest.raises(RuntimeError, match="AVX512-BF16"), torch.autocast("cpu", dtype=torch.bfloat16):
        m(x)
    monkeypatch.setattr(bf16_sequence, "MODE", "auto")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, _ = m(x)
    assert y.dtype == torch.bfloat16 and not kernel_calls
    monkeypatch.setattr(bf16_sequence, "MODE", "fast")
    with pytest.raises(ValueError, match="LSTM_FAST_CPU_BF16"), torch.autocast("cpu", dtype=torch.bfloat16):
        m(x)


def test_train_precision_bf16(tmp_path, kernel_calls):
    """``lstm-fast train --precision bf16``: the model runs under CPU autocast (our bf16 kernels
    where the CPU has them), perplexity falls; a bad value is refused, naming the flag."""
    from lstm_fast.d2l.train import TrainConfig, train
    cfg = TrainConfig(epochs=5, hidden=32, batch_size=8, num_steps=10, max_tokens=3000, precision="bf16")
    r = train(cfg, out_dir=tmp_path, progress=False, log=lambda *_: None)
    ppl = [h["perplexity"] for h in r["history"]]
    assert ppl[-1] < ppl[0] * 0.8, ppl
    assert bool(kernel_calls) == bf16_sequence.use_native()
    with pytest.raises(ValueError, match="--precision"):
        TrainConfig(precision="fp16").validate()


@requires_nn_autocast   # the script times nn.LSTM under autocast
def test_benchmark_script_runs_and_renders(tmp_path):
    """benchmarks/cpu_bf16.py at a tiny shape (one round, no train runs) writes a results file
    that benchmarks/readme_table.py renders: the script and its table cannot rot unnoticed."""
    import json
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "bf16.json"
    subprocess.run([sys.executable, str(root / "benchmarks" / "cpu_bf16.py"), "--shapes", "tiny", "--rounds", "1",
                    "--round-seconds", "0", "--train-rounds", "0", "--json", str(out)],
                   cwd=root, check=True, capture_output=True, timeout=300)
    doc = json.loads(out.read_text())
    assert doc["kind"] == "cpu-bf16" and doc["commit"] and doc["command"].startswith("python benchmarks/cpu_bf16.py")
    assert {(r["implementation"], r["dtype"], r["mode"]) for r in doc["rows"]} == {
        (i, p, m) for i in ("torch", "fused") for p in ("float32", "autocast-bf16") for m in ("inference", "training")}
    sys.path.insert(0, str(root / "benchmarks"))
    import readme_table
    old_root = readme_table.ROOT
    try:
        readme_table.ROOT = tmp_path
        (tmp_path / "benchmarks" / "results").mkdir(parents=True)
        (tmp_path / "benchmarks" / "results" / "bf16.json").write_text(out.read_text())
        table = readme_table.render_bf16()
    finally:
        readme_table.ROOT = old_root
    assert "| 2, 3, 4, 5 | training | autocast-bf16 |" in table
