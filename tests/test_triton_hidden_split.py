"""The hidden-split Triton path (W_hh split by hidden units across programs, kept on chip) and the
dispatcher that chooses it, without a GPU: through Triton's interpreter on CPU tensors.

The interpreter runs programs one after another, so the multi-program partition runs on the
step-launch driver (the kernel boundary orders the steps) with the persistent driver's own publish
and read functions and data layout, for each step protocol ("ll" tagged words, "counter"). Before
each step everything it must not read is poisoned: the h / dG rows not yet written hold NaN, and
the exchange slot it writes holds words tagged -1 (a read of them times out, which raises). The
persistent driver (its waits included) runs with one program per batch block. Forward, final states
and every gradient against nn.LSTM."""
import dataclasses
import importlib.util
import os

import pytest
import torch
from torch import nn

from lstm_fast import fused_lstm
from conftest import assert_close

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed"),
    pytest.mark.skipif(torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") != "1",
                       reason="interpreter tests (the GPU runs tests/test_triton.py)"),
]


@pytest.fixture
def plan(monkeypatch):
    """``plan(path, driver)``: force the kernel path and hidden-split driver for this test."""
    from lstm_fast.kernels import lstm_bwd_hidden_split, lstm_config, lstm_fwd_hidden_split

    def force(path, driver=None, poison=True, streamed=False, protocol=None, mc=None):
        monkeypatch.setattr(lstm_config, "forced_mc", mc)
        monkeypatch.setattr(lstm_config, "forced_path", path)
        monkeypatch.setattr(lstm_config, "forced_driver", driver)
        monkeypatch.setattr(lstm_config, "forced_streamed", streamed)
        monkeypatch.setattr(lstm_fwd_hidden_split, "poison_steps", poison)
        monkeypatch.setattr(lstm_bwd_hidden_split, "poison_steps", poison)
        monkeypatch.setattr(lstm_config, "forced_protocol", protocol)
    return force


def _against_nn_lstm(T, B, D, H, dtype):
    ref = nn.LSTM(D, H, dtype=dtype)
    params = [p.detach().clone().requires_grad_() for p in ref.parameters()]
    x = torch.randn(T, B, D, dtype=dtype, requires_grad=True)
    hx = tuple((torch.randn(B, H, dtype=dtype) * 0.5).requires_grad_() for _ in range(2))
    y, (h, c) = fused_lstm(x, hx, *params, backend="triton")
    yr, (hr, cr) = ref(x, tuple(t.unsqueeze(0) for t in hx))
    w = [torch.randn_like(t) for t in (y, h, c)]
    leaves = [x, *hx, *params]
    g = torch.autograd.grad((y * w[0]).sum() + (h * w[1]).sum() + (c * w[2]).sum(), leaves)
    gr = torch.autograd.grad((yr * w[0]).sum() + (hr[0] * w[1]).sum() + (cr[0] * w[2]).sum(),
                             [x, *hx, *ref.parameters()])
    names = ["output", "h_n", "c_n", "grad input", "grad h_0", "grad c_0"] + [f"grad {n}" for n, _ in ref.named_parameters()]
    for name, a, b in zip(names, [y, h, c, *g], [yr, hr[0], cr[0], *gr], strict=True):
        assert_close(a, b, dtype, name)


VARIANTS = [pytest.param(False, "ll", id="stationary-ll"), pytest.param(False, "counter", id="stationary-counter"),
            pytest.param(True, "counter", id="streamed-counter")]


@pytest.mark.parametrize("streamed,protocol", VARIANTS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("T,B,D,H", [
    pytest.param(3, 5, 4, 130, id="T3-B5-D4-H130"),       # 130 units: a partial last slice, K padded to 256
    pytest.param(2, 17, 3, 33, id="T2-B17-D3-H33"),        # two batch blocks of 16
    pytest.param(4, 1, 2, 1, id="T4-B1-D2-H1"),
])
def test_hidden_split_step_driver_matches_nn_lstm(T, B, D, H, dtype, streamed, protocol, plan):
    """The real multi-program partition (N > 1 programs per step), everything a step must not read
    poisoned; W_hh on chip, or streamed in K chunks (H = 130: a partial last chunk)."""
    plan("hidden_split", "step", streamed=streamed, protocol=protocol)
    _against_nn_lstm(T, B, D, H, dtype)


@pytest.mark.parametrize("protocol", ["ll", "counter"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_hidden_split_odd_H520(dtype, protocol, plan):
    plan("hidden_split", "step", protocol=protocol)
    _against_nn_lstm(2, 3, 5, 520, dtype)


# The backward's partial-sum layout (HiddenSplitConfig.mc > 0): chunks of 64 rows of W_S^T (at least
# KP / 4: H 130 -> 4 chunks, H 520 -> 4 of 256, H 33 -> 1), 4 producers a poll (several polls a step).
PARTIAL = (64, 4)


@pytest.mark.parametrize("protocol", ["ll", "counter"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("T,B,D,H", [
    pytest.param(3, 5, 4, 130, id="T3-B5-D4-H130"),       # 33 programs, a partial last slice, 4 chunks of 64
    pytest.param(2, 3, 5, 520, id="T2-B3-D5-H520"),       # K padded to 1024: 4 chunks of 256, 33 polls
    pytest.param(2, 17, 3, 33, id="T2-B17-D3-H33"),       # two batch blocks, one chunk
    pytest.param(4, 1, 2, 1, id="T4-B1-D2-H1"),
])
def test_partial_sum_backward_step_driver_matches_nn_lstm(T, B, D, H, dtype, protocol, plan):
    """The partial-sum backward over the real multi-program partition: every step's exchange slot
    it writes poisoned (ll: words tagged -1, which time out if read; counter: NaN), the dG rows
    not yet written NaN; every output and gradient against nn.LSTM."""
    plan("hidden_split", "step", protocol=protocol, mc=PARTIAL)
    _against_nn_lstm(T, B, D, H, dtype)


def _relative_errors_16bit(T, B, D, H, dtype):
    """Every output and gradient of a 16-bit run, as ||ours - ref|| / ||ref|| against nn.LSTM in
    float64 on the same (16-bit) weights and inputs."""
    ref = nn.LSTM(D, H, dtype=torch.float64)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(p.to(dtype))
    x = torch.randn(T, B, D).to(dtype)
    xr = x.double().requires_grad_()
    yr, (hr, cr) = ref(xr)
    w = torch.randn_like(yr)
    gr = torch.autograd.grad((yr * w).sum() + hr.sum() + cr.sum(), [xr, *ref.parameters()])
    params = [p.detach().to(dtype).requires_grad_() for p in ref.parameters()]
    x16 = x.clone().requires_grad_()
    y, (h, c) = fused_lstm(x16, None, *params, backend="triton")
    g = torch.autograd.grad((y * w.to(dtype)).sum() + h.sum() + c.sum(), [x16, *params])
    return [((a.double() - b).norm() / b.norm()).item() for a, b in zip([y, h, c, *g], [yr, hr[0], cr[0], *gr])]


@pytest.mark.parametrize("protocol", ["ll", "counter"])
def test_16bit_words_and_partials_against_float64(protocol, plan):
    """The 16-bit exchange (h and dG as two values a word; the partial-sum backward's partials in
    W_hh's dtype, summed in float32) over the real multi-program partition, poisoned as above, in
    float16: bfloat16 cannot run in Triton's interpreter (its results are wrong on every path there,
    the batch-tiled one included), float16 takes the same 16-bit code. Every output and gradient
    within float16's round-off of float64, and the partial-sum layout no less accurate than the
    column layout (which sums in float32 from 16-bit dG) on the same inputs."""
    torch.manual_seed(0)
    plan("hidden_split", "step", protocol=protocol)
    column = _relative_errors_16bit(3, 5, 4, 130, torch.float16)
    torch.manual_seed(0)
    plan("hidden_split", "step", protocol=protocol, mc=PARTIAL)
    partial = _relative_errors_16bit(3, 5, 4, 130, torch.float16)
    names = ["output", "h_n", "c_n", "grad input", "grad w_ih", "grad w_hh", "grad b_ih", "grad b_hh"]
    for name, e_col, e_par in zip(names, column, partial, strict=True):
        assert e_col < 2e-3 and e_par < 2e-3, f"{name}: relative error {e_col:.1e} (column), {e_par:.1e} (partial)"
        assert e_par <= 1.5 * e_col + 1e-5, f"{name}: partial-sum {e_par:.2e} against column layout {e_col:.2e}"


def test_partial_sum_layout_is_the_one_tested(plan):
    """The forced partial-sum plan at H 130 really has several programs, four stationary chunks and
    several polls per step; the forward keeps its own (row) layout without mc."""
    from lstm_fast.kernels import lstm_config

    plan("hidden_split", "step", protocol="ll", mc=PARTIAL)
    cfg = lstm_config.pick_plan(5, 130, torch.float32, "cpu", direction="bwd").config
    n_h = cfg.grid(5, 130)[0]
    assert cfg.mc == 64 and cfg.kp // cfg.mc == 4 and n_h > cfg.pc > 1 and cfg.protocol == "ll"
    assert lstm_config.pick_plan(5, 130, torch.float32, "cpu", direction="fwd").config.mc == 0


def test_partial_sum_layout_poison_is_read_when_wrong(plan, monkeypatch):
    """The poisoning can fail the test: a step that read the slot it is about to write (here: the
    kernel's read slot swapped by shifting the tag) times out and raises."""
    from lstm_fast.kernels import grid_sync, lstm_bwd_hidden_split

    monkeypatch.setattr(grid_sync, "MAX_SPINS", 20)
    plan("hidden_split", "step", protocol="ll", mc=PARTIAL)
    real = lstm_bwd_hidden_split._hs_bwd_step_kernel

    class Shifted:        # launches step 0 as if it were step 1: it polls the slot step 0 writes, poisoned
        def __getitem__(self, grid):
            return lambda *a, **k: real[grid](*a[:8], a[8] + (a[8] == 0), *a[9:], **k)
    monkeypatch.setattr(lstm_bwd_hidden_split, "_hs_bwd_step_kernel", Shifted())
    with pytest.raises(RuntimeError, match="step wait timed out"):
        _against_nn_lstm(2, 3, 2, 40, torch.float32)


def test_step_driver_uses_the_partition_it_claims(plan):
    """The forced plan at H = 130 really splits H over several programs (else the step tests
    would not exercise the exchange between programs)."""
    from lstm_fast.kernels import lstm_config

    plan("hidden_split", "step", protocol="ll")
    p = lstm_config.pick_plan(5, 130, torch.float32, "cpu")
    assert p.path == "hidden_split" and p.config.protocol == "ll" and p.config.grid(5, 130)[0] > 1


def _persistent_step_and_tiled(dtype, B, cfg, bwd_cfg):
    """(names, persistent, step, tiled): every output of the hidden-split forward (saving and not)
    and backward, T 4, H 24, on the persistent and the step drivers with ``cfg`` / ``bwd_cfg``, and
    the batch-tiled kernels' on the same inputs."""
    from lstm_fast.kernels import lstm_bwd, lstm_config, lstm_fwd
    from lstm_fast.kernels.lstm_bwd_hidden_split import lstm_bwd_hidden_split
    from lstm_fast.kernels.lstm_fwd_hidden_split import lstm_fwd_hidden_split

    T, H = 4, 24
    xg = torch.randn(T, B, 4 * H, dtype=dtype)
    w = torch.randn(4 * H, H, dtype=dtype) * 0.3
    h0, c0 = torch.randn(B, H, dtype=dtype), torch.randn(B, H, dtype=dtype)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    dY, dh_n, dc_n = torch.randn(T, B, H, dtype=dtype), torch.randn(B, H, dtype=acc), torch.randn(B, H, dtype=acc)
    results = {}
    for driver in ("persistent", "step"):
        Y, C, G = lstm_fwd_hidden_split(xg, h0, c0.to(acc), w, True, cfg, "ieee", driver)
        Yn, Cn, _ = lstm_fwd_hidden_split(xg, h0, c0.to(acc), w, False, cfg, "ieee", driver)
        dG, dh0, dc0 = lstm_bwd_hidden_split(dY, dh_n, dc_n, w, G, C, bwd_cfg, "ieee", driver)
        results[driver] = [Y, C, G, Yn, Cn[-1], dG, dh0, dc0]
    lstm_config.forced_path = "batch_tiled"
    try:
        Y, C, G = lstm_fwd(xg, h0, c0.to(acc), w)
        dG, dh0, dc0 = lstm_bwd(dY, dh_n, dc_n, w, G, C)
    finally:
        lstm_config.forced_path = None
    names = ["Y", "C", "G", "Y (no save)", "c_T (no save)", "dG", "dh_0", "dc_0"]
    return names, results["persistent"], results["step"], [Y, C, G, Y, C[-1], dG, dh0, dc0]


@pytest.mark.parametrize("streamed,protocol,mc", [pytest.param(*v.values, 0, id=v.id) for v in VARIANTS] + [
    pytest.param(False, "ll", 16, id="partial-sum-ll"), pytest.param(False, "counter", 16, id="partial-sum-counter")])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("B", [3, 20], ids=["B3", "B20-two-blocks"])
def test_persistent_driver_one_program_per_block(dtype, B, streamed, protocol, mc):
    """The persistent kernels (grid barrier, W and c/dc held across steps) with one program per
    batch block (all the interpreter can run without deadlock), against the step driver and the
    batch-tiled kernels."""
    from lstm_fast.kernels import lstm_config

    cfg = lstm_config.HiddenSplitConfig(hs=32, bb=16, kp=32, stationary=not streamed, bk=16,   # one program: all of H
                                        protocol=protocol)
    bwd_cfg = dataclasses.replace(cfg, mc=mc) if mc else cfg        # mc 16: two chunks of W_S^T
    for name, p, s, b in zip(*_persistent_step_and_tiled(dtype, B, cfg, bwd_cfg), strict=True):
        assert_close(p, s, dtype, f"{name}: persistent vs step driver")
        assert_close(p, b.to(p.dtype), dtype, f"{name}: persistent vs batch-tiled")


@pytest.mark.parametrize("protocol", ["ll", "counter"])
def test_persistent_driver_16bit_partials(protocol):
    """float16 (the 16-bit code bfloat16 also takes; see the float64 test above) on the persistent
    kernels, backward in the partial-sum layout with its partials in 16 bits, two batch blocks:
    bitwise the step driver's results, and within float16 round-off of the batch-tiled kernels."""
    from lstm_fast.kernels import lstm_config

    cfg = lstm_config.HiddenSplitConfig(hs=32, bb=16, kp=32, protocol=protocol)
    bwd_cfg = dataclasses.replace(cfg, mc=16)
    for name, p, s, b in zip(*_persistent_step_and_tiled(torch.float16, 20, cfg, bwd_cfg), strict=True):
        assert torch.equal(p, s), f"{name}: persistent and step drivers differ"
        err = ((p.double() - b.double()).abs().max() / b.double().abs().max()).item()
        assert err < 2e-3, f"{name}: {err:.1e} from the batch-tiled kernels"


@pytest.mark.parametrize("direction", ["fwd", "bwd", "bwd-partial-sum"])
@pytest.mark.parametrize("protocol", ["ll", "counter"])
def test_persistent_wait_timeout_raises_instead_of_hanging(protocol, direction, monkeypatch):
    """Two hidden slices under the interpreter: program 0 waits for program 1, which (programs run
    one after another) has not started. The bounded wait gives up, flags it, and the launcher
    raises RuntimeError: no hang, no silent result."""
    from lstm_fast.kernels import grid_sync, lstm_config
    from lstm_fast.kernels.lstm_bwd_hidden_split import lstm_bwd_hidden_split
    from lstm_fast.kernels.lstm_fwd_hidden_split import lstm_fwd_hidden_split

    monkeypatch.setattr(grid_sync, "MAX_SPINS", 20)
    T, B, H = 2, 2, 32
    one = lstm_config.HiddenSplitConfig(hs=32, bb=16, kp=32, protocol=protocol)     # one program: no wait
    two = lstm_config.HiddenSplitConfig(hs=16, bb=16, kp=32, protocol=protocol)     # two: program 0 waits
    w, xg, zeros = torch.randn(4 * H, H), torch.randn(T, B, 4 * H), torch.zeros(B, H)
    if direction == "fwd":
        with pytest.raises(RuntimeError, match="step wait timed out"):
            lstm_fwd_hidden_split(xg, zeros, zeros, w, True, two, "ieee", "persistent")
    else:
        Y, C, G = lstm_fwd_hidden_split(xg, zeros, zeros, w, True, one, "ieee", "persistent")
        if direction == "bwd-partial-sum":
            two = dataclasses.replace(two, mc=16, pc=1)
        with pytest.raises(RuntimeError, match="step wait timed out"):
            lstm_bwd_hidden_split(torch.randn(T, B, H), None, None, w, G, C, two, "ieee", "persistent")


@pytest.mark.parametrize("path", ["hidden_split", "batch_tiled"])
def test_nan_in_padding_never_matters(path, plan):
    """NaN/Inf in x past each row's length changes no output, final state or gradient (compared
    with zeros there), and nothing is NaN."""
    plan(path, "step")
    T, B, D, H = 5, 4, 3, 6
    lengths = torch.tensor([5, 2, 0, 3])
    ref = nn.LSTM(D, H)
    params = [p.detach().clone().requires_grad_() for p in ref.parameters()]
    base = torch.randn(T, B, D)
    pad = torch.arange(T)[:, None] >= lengths[None, :]
    runs = []
    for fill in (0.0, float("nan"), float("inf")):
        x = base.masked_fill(pad.unsqueeze(-1), fill).requires_grad_()
        y, (h, c) = fused_lstm(x, None, *params, lengths=lengths, backend="triton")
        g = torch.autograd.grad(y.sum() + h.sum() + c.sum(), [x, *params])
        runs.append([y, h, c, g[0].masked_fill(pad.unsqueeze(-1), 0), *g[1:]])
    for other in runs[1:]:
        for a, b in zip(other, runs[0], strict=True):
            assert not torch.isnan(a).any()
            assert torch.equal(a, b)


def test_batch_tiled_large_batch_config():
    """B > 256 runs the batch-tiled kernels with their large-batch tiles."""
    from lstm_fast.kernels import lstm_config

    lstm_config.forced_path = "batch_tiled"
    try:
        assert lstm_config.pick_plan(300, 5, torch.float32, "cpu").config == lstm_config.pick_config(
            300, 5, torch.float32, "ieee")
        _against_nn_lstm(2, 300, 3, 5, torch.float32)
    finally:
        lstm_config.forced_path = None


def test_dispatcher_partition():
    """Hidden-split where the slice fits on chip and the grid fits the SMs, batch-tiled beyond;
    the grid never exceeds the SM count; forward and backward each within their own limits."""
    from lstm_fast.kernels import lstm_config as c

    for B in (1, 8, 32, 64, 128, 512):
        for H in (256, 512, 768, 1024):
            for dtype in (torch.bfloat16, torch.float16, torch.float32):
                for direction in ("fwd", "bwd"):
                    p = c.pick_plan(B, H, dtype, "cpu", sm_count=132, direction=direction)
                    if p.path == "hidden_split":
                        n_h, n_b = p.config.grid(B, H)
                        assert n_h * n_b <= 132 and n_h * p.config.hs >= H and n_b * p.config.bb >= B
    bf16 = c.pick_plan(32, 1024, torch.bfloat16, "cpu", 132)
    assert bf16.path == "hidden_split" and 4 * bf16.config.hs >= 64      # wgmma-sized M
    assert c.pick_plan(32, 256, torch.float32, "cuda", 132, direction="bwd").path == "hidden_split"  # tf32
    for dtype in (torch.bfloat16, torch.float32):   # the backward keeps its slice on chip at H 1024: partial sums
        bwd = c.pick_plan(32, 1024, dtype, "cuda", 132, direction="bwd")
        assert bwd.path == "hidden_split" and bwd.config.stationary and bwd.config.mc >= 64, bwd
        assert bwd.config.kp // bwd.config.mc <= 4 and bwd.config.mc * bwd.config.bb * 8 <= c.LL_TILE_BUDGET
    assert c.pick_plan(512, 1024, torch.bfloat16, "cpu", 132).path == "batch_tiled"
    assert c.pick_plan(32, 256, torch.float32, "cpu", 132, square=False).path == "batch_tiled"
    assert c.pick_plan(32, 1024, torch.bfloat16, "cpu", sm_count=8).path == "batch_tiled"   # grid too big


def test_tf32_choice_reads_the_new_precision_api_without_raising():
    """Once the fp32_precision API is used, torch raises on a legacy allow_tf32 read: the
    dispatcher reads the new API (and never sets anything)."""
    from lstm_fast.kernels.lstm_config import dot_precision

    rnn = getattr(torch.backends.cudnn, "rnn", None)
    if rnn is None or not hasattr(rnn, "fp32_precision"):
        pytest.skip("this torch has no fp32_precision API")
    saved = rnn.fp32_precision
    try:
        for value, expected in (("ieee", "ieee"), ("tf32", "tf32")):
            rnn.fp32_precision = value
            assert dot_precision(torch.float32, "cuda") == expected
            assert dot_precision(torch.bfloat16, "cuda") == "ieee"
    finally:
        rnn.fp32_precision = saved


@pytest.mark.parametrize("M,K,N", [(37, 70, 19), (1, 16, 1), (130, 5, 33)], ids=["37x70x19", "1x16x1", "130x5x33"])
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_tf32_gemm_kernel_matches_torch(M, K, N, layout):
    """The GEMM the float32 TF32 layers use, on odd shapes and strided (transposed) operands; the
    interpreter computes its dots exactly, so this checks indexing, masking and strides."""
    from lstm_fast.kernels import matmul

    a = torch.randn(M, K) if layout == "contiguous" else torch.randn(K, M).t()
    b = torch.randn(K, N) if layout == "contiguous" else torch.randn(N, K).t()
    torch.testing.assert_close(matmul(a, b, "ieee"), a @ b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("path", ["hidden_split", "batch_tiled"])
def test_tf32_gemm_wiring(path, plan, monkeypatch):
    """With the TF32 GEMMs switched on (as on a GPU whose cuDNN uses TF32), the input projection and
    every input/weight gradient go through our GEMM and still match nn.LSTM."""
    import lstm_fast.kernels as kernels
    from lstm_fast import triton_layer as triton_function

    calls = []
    real = kernels.matmul
    monkeypatch.setattr(kernels, "matmul", lambda a, b, p="tf32", out_dtype=None: calls.append(p) or real(a, b, "ieee"))
    monkeypatch.setattr(triton_function, "tf32_gemms", lambda x: x.dtype == torch.float32)
    plan(path, "step")
    _against_nn_lstm(3, 5, 7, 20, torch.float32)
    assert calls.count("tf32") == 4      # projection, dx, dW_ih, dW_hh
