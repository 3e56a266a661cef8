"""The small-batch CPU kernels (lstm_fast.cpu.small_batch) forced on with the documented switch
LSTM_FAST_CPU_SMALL_BATCH=1, against nn.LSTM with the same weights: every output and every
gradient, across the drop-in grid (layers, bidirectional, projections, lengths and packed input,
hx given or not, odd H), weights changed between calls by every route, and bitwise equality
across 1 and 2 threads."""
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from lstm_fast import FusedLSTM
from lstm_fast.cpu import small_batch
from lstm_fast.ops.plan import plan_layer
from conftest import nn_lstm_autocast

pytestmark = pytest.mark.skipif(small_batch._small_batch_kernels is None,
                                reason="small-batch kernels not built, or neither AVX-512 nor AVX2 on this CPU")


@pytest.fixture(autouse=True)
def forced(monkeypatch):
    monkeypatch.setenv(small_batch.SWITCH, "1")


@pytest.fixture(params=["columns", "transposed"])
def dh_route(request, monkeypatch):
    """Both ways the backward reads W_hh for dh (the AVX2 kernels transpose it from
    PACK_MIN_STEPS steps on, else read it down its columns), whatever T the test uses."""
    monkeypatch.setattr(small_batch, "PACK_MIN_STEPS", 1 if request.param == "transposed" else 1 << 30)
    return request.param


def _pair(D, H, **kw):
    ref = nn.LSTM(D, H, **kw)
    fused = FusedLSTM(D, H, **kw)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


def _compare(ref, fused, x, hx=None, atol=2e-5):
    xs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
    hxs = [None, None] if hx is None else [tuple(t.clone().requires_grad_() for t in hx) for _ in range(2)]
    outs = [m(xi, h) for m, xi, h in zip((ref, fused), xs, hxs)]
    (y0, (h0, c0)), (y1, (h1, c1)) = outs
    for a, b in ((y0, y1), (h0, h1), (c0, c1)):
        torch.testing.assert_close(b, a, atol=atol, rtol=1e-4)
    gy, gh, gc = torch.randn_like(y0), torch.randn_like(h0), torch.randn_like(c0)
    grads = []
    for (y, (h, c)), xi, hh, m in zip(outs, xs, hxs, (ref, fused)):
        inputs = [xi, *m.parameters()] + ([] if hh is None else list(hh))
        grads.append(torch.autograd.grad((y * gy).sum() + (h * gh).sum() + (c * gc).sum(), inputs))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(b, a, atol=atol * 10, rtol=1e-4)


def test_plan_takes_the_small_batch_kernels_when_forced():
    assert plan_layer(torch.randn(1, 1, 3), torch.randn(8, 2), "auto").implementation == "cpu_small_batch"


@pytest.mark.parametrize("H", [1, 33, 130, 520], ids=lambda h: f"H{h}")
@pytest.mark.parametrize("B", [1, 2, 3, 5], ids=lambda b: f"B{b}")
@pytest.mark.parametrize("T", [1, 5, 7], ids=lambda t: f"T{t}")
def test_one_layer_against_nn_lstm(T, B, H, dh_route):
    """B 1..5 and T*B up to 35 take every path of the products: one vector (dot16), 2, 3 and 4 at
    once (dot16_multi: batch rows, the T > 1 input projection), the B = 1 backward (bwd_dh1,
    column blocks in fours with a tail), the B > 1 one, and (dh_route) the backward on W_hh
    transposed."""
    torch.manual_seed(T * 100 + B * 10 + H)
    ref, fused = _pair(11, H)
    hx = (torch.randn(1, B, H), torch.randn(1, B, H)) if B % 2 else None
    _compare(ref, fused, torch.randn(T, B, 11), hx)


@pytest.mark.parametrize("kw", [dict(num_layers=2), dict(bidirectional=True), dict(proj_size=5),
                                dict(num_layers=2, bidirectional=True, proj_size=3), dict(bias=False),
                                dict(batch_first=True)],
                         ids=["layers2", "bidirectional", "proj5", "layers2-bi-proj3", "no-bias", "batch-first"])
def test_options_against_nn_lstm(kw):
    torch.manual_seed(0)
    ref, fused = _pair(6, 17, **kw)
    x = torch.randn(3, 4, 6) if kw.get("batch_first") else torch.randn(4, 3, 6)
    _compare(ref, fused, x)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_packed_input_against_nn_lstm(bidirectional, dh_route):
    torch.manual_seed(1)
    ref, fused = _pair(5, 9, bidirectional=bidirectional)
    x = torch.randn(6, 4, 5)
    lengths = torch.tensor([6, 2, 5, 1])
    outs = [m(pack_padded_sequence(x, lengths, enforce_sorted=False)) for m in (ref, fused)]
    torch.testing.assert_close(outs[1][0].data, outs[0][0].data, atol=2e-5, rtol=1e-4)
    for a, b in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(b, a, atol=2e-5, rtol=1e-4)
    g = [torch.autograd.grad(o[0].data.sum() + o[1][0].sum(), list(m.parameters()))
         for o, m in zip(outs, (ref, fused))]
    for a, b in zip(*g):
        torch.testing.assert_close(b, a, atol=2e-4, rtol=1e-4)


def test_parameter_changes_are_seen_by_the_next_call():
    torch.manual_seed(2)
    ref, fused = _pair(4, 16)
    x = torch.randn(1, 1, 4)
    with torch.no_grad():
        fused(x)
        for route in ("data", "copy", "load"):
            new = {k: torch.randn_like(v) for k, v in ref.state_dict().items()}
            ref.load_state_dict(new)
            if route == "data":
                fused.weight_hh_l0.data = new["weight_hh_l0"].clone()
                fused.weight_ih_l0.data.copy_(new["weight_ih_l0"])
                fused.bias_ih_l0.data.copy_(new["bias_ih_l0"])
                fused.bias_hh_l0.data.copy_(new["bias_hh_l0"])
            elif route == "copy":
                for k, v in fused.named_parameters():
                    v.copy_(new[k])
            else:
                fused.load_state_dict(new)
            torch.testing.assert_close(fused(x)[0], ref(x)[0], atol=2e-5, rtol=1e-4)
    params = {k: torch.randn_like(v) for k, v in fused.named_parameters()}
    ref.load_state_dict(params)
    out = torch.func.functional_call(fused, params, (x,))[0]
    torch.testing.assert_close(out, ref(x)[0], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("B", [1, 3], ids=lambda b: f"B{b}")
def test_bitwise_equal_across_thread_counts(B, dh_route):
    torch.manual_seed(3)
    _, fused = _pair(13, 130, num_layers=2)
    x = torch.randn(5, B, 13, requires_grad=True)
    before = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            y, (h, c) = fused(x)
            grads = torch.autograd.grad(y.sum() + c.sum(), [x, *fused.parameters()])
            results.append((y, h, c) + grads)
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*results):
        assert torch.equal(a, b)


# ---------------------------------------------------------------- CPU autocast bf16, float32 weights
def _rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _autocast_run(module, x, hx, weight, autocast=True):
    """Outputs and every gradient of one call under CPU autocast bf16 (or none)."""
    x = x.clone().requires_grad_()
    hx = tuple(t.clone().requires_grad_() for t in hx)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y, (h, c) = module(x, hx)
    loss = (y.double() * weight).sum() + h.double().sum() + c.double().sum()
    return [y, h, c, *torch.autograd.grad(loss, [x, *hx, *module.parameters()])]


def _nn_autocast_reference(module, x, hx, weight):
    """nn.LSTM-autocast's outputs and gradients (conftest.nn_lstm_autocast: emulated where it
    cannot run)."""
    x = x.clone().requires_grad_()
    hx = tuple(t.clone().requires_grad_() for t in hx)
    y, (h, c) = nn_lstm_autocast(module, x, hx)
    loss = (y.double() * weight).sum() + h.double().sum() + c.double().sum()
    return [y, h, c, *torch.autograd.grad(loss, [x, *hx, *module.parameters()])]


@pytest.mark.parametrize("H", [1, 33, 130, 520], ids=lambda h: f"H{h}")
@pytest.mark.parametrize("B", [1, 3], ids=lambda b: f"B{b}")
@pytest.mark.parametrize("T", [1, 5], ids=lambda t: f"T{t}")
def test_autocast_runs_float32_kernels_on_the_float32_weights(T, B, H, monkeypatch):
    """Under CPU autocast bf16 with float32 parameters the small-batch kernels run on the
    parameters themselves (no bf16 copy of the weights); outputs come back in bf16 and gradients
    in float32, as nn.LSTM under autocast returns them; every one is within nn.LSTM-autocast's
    distance of a float64 nn.LSTM (float32 products: closer), and near nn.LSTM-autocast."""
    torch.manual_seed(T * 1000 + B * 100 + H)
    D = 7
    ref, fused = _pair(D, H)
    exact = nn.LSTM(D, H, dtype=torch.float64)
    exact.load_state_dict({k: v.double() for k, v in ref.state_dict().items()})
    seen = []
    real = small_batch.forward_saving

    def spy(x, h0, c0, w_ih, w_hh, *rest, **kw):
        seen.append((x.dtype, w_ih.data_ptr(), w_hh.data_ptr()))
        return real(x, h0, c0, w_ih, w_hh, *rest, **kw)

    monkeypatch.setattr(small_batch, "forward_saving", spy)
    x = torch.randn(T, B, D)
    hx = (0.5 * torch.randn(1, B, H), 0.5 * torch.randn(1, B, H))
    weight = torch.randn(T, B, H, dtype=torch.float64)
    got = _autocast_run(fused, x, hx, weight)
    assert seen == [(torch.float32, fused.weight_ih_l0.data_ptr(), fused.weight_hh_l0.data_ptr())]
    theirs = _nn_autocast_reference(ref, x, hx, weight)
    want = _autocast_run(exact, x.double(), tuple(t.double() for t in hx), weight, autocast=False)
    assert [t.dtype for t in got] == [t.dtype for t in theirs]
    assert [t.dtype for t in got[:3]] == [torch.bfloat16] * 3
    names = ["output", "h_n", "c_n", "dx", "dh0", "dc0", "dW_ih", "dW_hh", "db_ih", "db_hh"]
    for name, g, t, w in zip(names, got, theirs, want, strict=True):
        ours_err, nn_err = _rel(g, w), _rel(t, w)
        assert torch.isfinite(g).all(), name
        # x, h_0 and the outputs are rounded to bf16 as nn.LSTM does: the error left is that
        # rounding's; a tensor of a few elements gets one bf16 step (2^-7) of slack (noise)
        slack = 1e-3 if g.numel() >= 64 else 2 ** -7
        assert ours_err <= 1.5 * nn_err + slack, f"{name}: ours {ours_err:.2e}, nn.LSTM-autocast {nn_err:.2e}"
        torch.testing.assert_close(g.double(), t.double(), atol=3e-2, rtol=3e-2, msg=name)


def test_autocast_auto_takes_the_small_batch_kernels_at_batch_1(monkeypatch):
    """In ``auto`` a one-step batch-1 call under CPU autocast bf16 with float32 weights plans the
    float32 small-batch kernels (rule 1a); ``LSTM_FAST_CPU_BF16=native`` (bf16_sequence.MODE)
    and bf16 parameters keep the bf16 routes; off autocast nothing changes."""
    from lstm_fast.cpu import bf16_sequence
    monkeypatch.setenv(small_batch.SWITCH, "auto")
    x, w_hh = torch.randn(1, 1, 64), torch.randn(256, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plan = plan_layer(x, w_hh, "auto")
        assert (plan.implementation, plan.keep_weights, plan.upcast, plan.out_dtype) == \
            ("cpu_small_batch", True, True, torch.bfloat16)
        assert plan_layer(torch.randn(1, 64, 64), w_hh, "auto").implementation != "cpu_small_batch"
        if bf16_sequence.cpu_supported():   # else bf16 weights run upcast, on the float32 rules
            assert plan_layer(x, w_hh.bfloat16(), "auto").implementation != "cpu_small_batch"
        monkeypatch.setattr(bf16_sequence, "MODE", "native")
        if bf16_sequence.cpu_supported():
            assert plan_layer(x, w_hh, "auto").implementation == "cpu_bf16"
    monkeypatch.setenv(small_batch.SWITCH, "0")
    monkeypatch.setattr(bf16_sequence, "MODE", "auto")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert plan_layer(x, w_hh, "auto").implementation != "cpu_small_batch"


def test_autocast_bitwise_equal_across_thread_counts():
    torch.manual_seed(4)
    _, fused = _pair(13, 130)
    x = torch.randn(5, 3, 13, requires_grad=True)
    before = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y, (h, c) = fused(x)
            grads = torch.autograd.grad(y.float().sum() + c.float().sum(), [x, *fused.parameters()])
            results.append((y, h, c) + grads)
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_crossovers_are_the_committed_measurement():
    """CROSSOVERS is what benchmarks/small_batch_crossovers.py derives from the committed JSONs
    (one per kernel ISA: the AVX-512 kernels' entries and the AVX2 kernels' "avx2-" ones)."""
    import json
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "benchmarks"))
    try:
        from small_batch_crossovers import crossovers
    finally:
        sys.path.remove(str(root / "benchmarks"))
    table = {}
    files = sorted((root / "benchmarks" / "results").glob("small-batch-crossovers*.json"))
    assert [f.name for f in files] == ["small-batch-crossovers-avx2.json", "small-batch-crossovers.json"]
    for f in files:
        doc = json.loads(f.read_text())
        assert doc["complete"] and not doc["smoke"], f.name
        table.update(crossovers(doc))
    assert table == small_batch.CROSSOVERS


@pytest.mark.skipif(small_batch.ISA != "avx512", reason="the AVX2 kernels are this CPU's: the tests above are theirs")
def test_avx2_kernels_pass_the_same_tests_on_an_avx512_cpu():
    """On an AVX-512 CPU the AVX2 kernels (the ones AVX2-only CPUs run) are reached with
    LSTM_FAST_CPU_ISA=avx2, read at import: this file's tests in a subprocess with it set."""
    import os
    import subprocess
    import sys
    env = dict(os.environ, LSTM_FAST_CPU_ISA="avx2")
    code = ("import sys, pytest; from lstm_fast.cpu import small_batch; assert small_batch.ISA == 'avx2'; "
            "sys.exit(pytest.main(['-q', '-x', '-p', 'no:cacheprovider', __import__('os').path.abspath(sys.argv[1]), "
            "'-k', 'not avx2_kernels_pass']))")
    r = subprocess.run([sys.executable, "-c", code, __file__], env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]


# ---------------------------------------------------------------- the claimed-phase teams (thread_team.h)
_team = pytest.mark.skipif(not hasattr(small_batch._small_batch_kernels, "_team_stats"),
                           reason="no small-batch kernels on this CPU")
_RUNNERS = {"by-call-kind": 0, "pool": 1, "openmp": 2}


@pytest.fixture
def team_hooks():
    """The kernel module (AVX-512 or AVX2) with its test hooks reset afterwards, and 2 threads."""
    k = small_batch._small_batch_kernels
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield k
    k._set_team_mode(0)
    k._set_join_delay_us(0)
    torch.set_num_threads(before)


def _train_and_serve(fused, x, state):
    """Every output and gradient of a training call and an inference call carrying ``state``."""
    y, (h, c) = fused(x)
    grads = torch.autograd.grad(y.sum() + 0.5 * c.sum(), [x, *fused.parameters()])
    with torch.no_grad():
        yi, (hi, ci) = fused(x[:1].detach(), state)
    return (y, h, c, *grads, yi, hi, ci)


@_team
@pytest.mark.parametrize("delay_us", [0, 300, 20000], ids=lambda d: f"join-delay-{d}us")
@pytest.mark.parametrize("runner", list(_RUNNERS), ids=str)
@pytest.mark.parametrize("B,T,H", [(1, 6, 520), (3, 4, 130), (1, 1, 33)], ids=lambda v: str(v))
def test_every_runner_and_late_worker_gives_the_one_thread_bits(team_hooks, runner, delay_us, B, T, H, dh_route):
    """A worker that joins late (or never: 20 ms is longer than these calls) changes who computes
    an item, never its bits: outputs and gradients equal the 1-thread run exactly."""
    torch.manual_seed(B * 100 + T * 10 + H)
    _, fused = _pair(9, H)
    x = torch.randn(T, B, 9, requires_grad=True)
    state = (torch.randn(1, B, H), torch.randn(1, B, H))
    torch.set_num_threads(1)
    want = _train_and_serve(fused, x, state)
    torch.set_num_threads(2)
    team_hooks._set_team_mode(_RUNNERS[runner])
    team_hooks._set_join_delay_us(delay_us)
    for _ in range(3):
        got = _train_and_serve(fused, x, state)
        for a, b in zip(want, got, strict=True):
            assert torch.equal(a, b)


@_team
def test_the_caller_runs_the_items_of_a_worker_that_has_not_joined(team_hooks):
    """With the pool's worker held back 20 ms, the caller takes its range (items stolen) and the
    call does not wait for it: the stats count calls the worker missed."""
    torch.manual_seed(0)
    _, fused = _pair(16, 256)
    x = torch.randn(1, 1, 16)
    team_hooks._set_team_mode(1)
    team_hooks._set_join_delay_us(20000)
    with torch.no_grad():
        want = fused(x)[0]
        s0 = team_hooks._team_stats()
        for _ in range(20):
            assert torch.equal(fused(x)[0], want)
        s1 = team_hooks._team_stats()
    assert s1["pool_calls"] - s0["pool_calls"] == 20
    assert s1["stolen"] > s0["stolen"]
    assert s1["joined"] - s0["joined"] < 20


@_team
def test_training_calls_run_on_openmp_and_inference_on_the_policy(team_hooks):
    """Training calls (forward saving, backward) always run on OpenMP's team; an inference call
    on one of the two, as the runner policy says."""
    torch.manual_seed(1)
    _, fused = _pair(8, 128)    # at B 1 the AVX-512 backward's items are 64 columns: 2 of them here
    x = torch.randn(5, 1, 8, requires_grad=True)
    s0 = team_hooks._team_stats()
    with torch.no_grad():
        fused(x)
    s1 = team_hooks._team_stats()
    fused(x)[0].sum().backward()
    s2 = team_hooks._team_stats()
    assert (s1["pool_calls"] - s0["pool_calls"]) + (s1["openmp_calls"] - s0["openmp_calls"]) == 1
    assert (s2["pool_calls"] - s1["pool_calls"], s2["openmp_calls"] - s1["openmp_calls"]) == (0, 2)
    with pytest.raises(ValueError, match="team mode"):
        team_hooks._set_team_mode(3)


@_team
def test_the_policy_tries_openmp_after_pool_calls_whose_worker_is_late(team_hooks):
    """The pool's worker held back 20 ms (longer than these calls): the inference policy, started
    over, tries OpenMP's team within a few calls (TEAM_BACKOFF_MIN late ones), and every answer
    keeps its bits."""
    torch.manual_seed(4)
    _, fused = _pair(16, 256)
    x = torch.randn(3, 1, 16)
    with torch.no_grad():
        want = fused(x)[0]
        team_hooks._set_team_mode(0)        # the policy from its start: on the pool
        team_hooks._set_join_delay_us(20000)
        s0 = team_hooks._team_stats()
        for _ in range(12):
            assert torch.equal(fused(x)[0], want)
        s1 = team_hooks._team_stats()
    assert s1["pool_calls"] - s0["pool_calls"] >= 4
    assert s1["openmp_calls"] > s0["openmp_calls"]


@_team
@pytest.mark.parametrize("T", [1, 7], ids=lambda t: f"T{t}")
def test_python_threads_sharing_a_module_each_get_their_serial_answer(team_hooks, T):
    """Four Python threads serving requests at once through one module (the pool is taken by one
    caller at a time; the others run alone): every answer bitwise its serial one."""
    import threading
    torch.manual_seed(T)
    _, fused = _pair(12, 130)
    xs = [torch.randn(T, 1, 12) for _ in range(4)]
    states = [(torch.randn(1, 1, 130), torch.randn(1, 1, 130)) for _ in range(4)]
    with torch.no_grad():
        want = [fused(x, s) for x, s in zip(xs, states)]
    bad, errors = [], []

    def serve(i):
        try:
            with torch.no_grad():
                for _ in range(40):
                    y, (h, c) = fused(xs[i], states[i])
                    if not (torch.equal(y, want[i][0]) and torch.equal(h, want[i][1][0]) and torch.equal(c, want[i][1][1])):
                        bad.append(i)
        except Exception as e:  # reported below, not lost in the thread
            errors.append(e)

    threads = [threading.Thread(target=serve, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a serving thread hung"
    assert not errors and not bad


@_team
def test_a_forked_child_runs_the_pool_again(team_hooks):
    """fork() after the pool has run: the child (which has no worker threads) makes new ones and
    gets the parent's bits, within a timeout instead of a hang."""
    import os
    import pickle
    import time
    torch.manual_seed(2)
    _, fused = _pair(10, 256)
    x = torch.randn(20, 1, 10)
    team_hooks._set_team_mode(1)
    with torch.no_grad():
        want = fused(x)[0]
    calls_before = team_hooks._team_stats()["pool_calls"]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: answer through the pipe, never return into pytest
        try:
            torch.set_num_threads(2)
            with torch.no_grad():
                y = fused(x)[0]
            os.write(w, pickle.dumps((torch.equal(y, want), team_hooks._team_stats()["pool_calls"])))
        finally:
            os._exit(0)
    os.close(w)
    deadline = time.monotonic() + 60
    while os.waitpid(pid, os.WNOHANG) == (0, 0) and time.monotonic() < deadline:
        time.sleep(0.05)
    if time.monotonic() >= deadline:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung")
    with os.fdopen(r, "rb") as f:
        same, calls = pickle.loads(f.read())
    assert same and calls == calls_before + 1


@pytest.mark.skipif(not hasattr(small_batch._small_batch_kernels, "bf16_round"),
                    reason="the AVX2 module's autocast casts (LSTM_FAST_CPU_ISA=avx2 reaches them on AVX-512)")
@pytest.mark.parametrize("n", [1, 7, 4099], ids=lambda n: f"n{n}")
def test_autocast_casts_give_torchs_bits(n):
    """bf16_round and bf16_narrow (the autocast fast path's casts) against torch's own casts, bit for
    bit: ties to even, signed zeros, subnormals, the largest finites, infinities and NaN (every NaN
    becomes 0xFFFF, as torch's vectorized cast makes it); a bf16 source widened exactly."""
    k = small_batch._small_batch_kernels
    special = torch.tensor([0.0, -0.0, 1.00390625, 1.01171875, -1.01171875, 3.3895e38, 3.4028e38, -3.4028e38,
                            1e-45, -1e-45, 1e-39, float("inf"), -float("inf"), float("nan"), -float("nan")])
    x = torch.randn(n) * torch.logspace(-40, 38, n)
    x[:min(n, special.numel())] = special[:n]
    x = torch.cat([x, torch.full((3,), float("nan"))])       # an odd length past the specials
    rounded = torch.full_like(x, float("nan"))
    k.bf16_round(x.data_ptr(), False, rounded.data_ptr(), x.numel())
    want = x.to(torch.bfloat16)
    assert torch.equal(rounded.view(torch.int32), want.float().view(torch.int32))
    narrowed = torch.full(x.shape, float("nan"), dtype=torch.bfloat16)
    k.bf16_narrow(x.data_ptr(), narrowed.data_ptr(), x.numel())
    assert torch.equal(narrowed.view(torch.int16), want.view(torch.int16))
    widened = torch.full_like(x, 0.5)
    k.bf16_round(want.data_ptr(), True, widened.data_ptr(), x.numel())
    assert torch.equal(widened.view(torch.int32), want.float().view(torch.int32))
    with pytest.raises(ValueError, match="missing operand"):
        k.bf16_narrow(0, narrowed.data_ptr(), 1)
