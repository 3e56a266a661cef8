"""The plain call's fast path (:mod:`lstm_fast.ops.fast_path`) against the general path of
``FusedLSTM.forward`` (the reference it must equal bit for bit) and nn.LSTM (errors, hooks).

The general path is forced by replacing ``plain_forward`` in :mod:`lstm_fast.module` with one that
always declines; the fast path is checked to be taken (its call counter moves, and the general
path's ``_run_layers`` is not reached)."""
import copy

import pytest
import torch
from torch import nn

import lstm_fast.module as module_mod
from lstm_fast import FusedLSTM
from lstm_fast.cpu import small_batch
from lstm_fast.ops import fast_path


def _general(mp):
    mp.setattr(module_mod, "plain_forward", lambda *a: None)


def _run_both(monkeypatch, m, x, hx, grad):
    """(fast results, general results), each [output, h_n, c_n] and, with grad, the gradients of
    the parameters, x and (given) hx, from the same random output gradients."""
    results = []
    for general in (False, True):
        with monkeypatch.context() as mp:
            if general:
                _general(mp)
            xs = x.detach().clone().requires_grad_(grad)
            hs = None if hx is None else tuple(t.detach().clone().requires_grad_(grad) for t in hx)
            m.zero_grad(set_to_none=True)
            before = fast_path.calls
            with torch.set_grad_enabled(grad):
                y, (h, c) = m(xs, hs)
            assert (fast_path.calls > before) == (not general)
            out = [y.detach(), h.detach(), c.detach()]
            if grad:
                g = torch.Generator().manual_seed(0)
                up = [torch.randn(t.shape, dtype=t.dtype, generator=g) for t in (y, h, c)]
                torch.autograd.backward([y, h, c], up)
                out += [p.grad for p in m.parameters()]
                out += [xs.grad] + ([] if hs is None else [t.grad for t in hs])
            results.append(out)
    return results


def _assert_bitwise(a, b):
    assert len(a) == len(b)
    for k, (u, v) in enumerate(zip(a, b)):
        if u is None or v is None:
            assert u is None and v is None, k
            continue
        assert u.shape == v.shape and u.dtype == v.dtype, (k, u.shape, v.shape)
        assert torch.equal(u, v), (k, (u - v).abs().max())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("layers,bidir", [(1, False), (2, False), (1, True), (2, True)],
                         ids=["L1", "L2", "L1-bidir", "L2-bidir"])
@pytest.mark.parametrize("H", [1, 33, 256])
@pytest.mark.parametrize("T,B", [(1, 1), (1, 3), (5, 1), (5, 3)])
@pytest.mark.parametrize("given", [False, True], ids=["hx-none", "hx-given"])
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_fast_path_equals_general_path(monkeypatch, grad, given, T, B, H, layers, bidir, dtype):
    D = 7
    m = FusedLSTM(D, H, num_layers=layers, bidirectional=bidir, dtype=dtype)
    n = layers * (2 if bidir else 1)
    x = torch.randn(T, B, D, dtype=dtype, requires_grad=True)
    hx = (torch.randn(n, B, H, dtype=dtype), torch.randn(n, B, H, dtype=dtype)) if given else None
    fast, general = _run_both(monkeypatch, m, x, hx, grad)
    _assert_bitwise(fast, general)


@pytest.mark.parametrize("switch", ["auto", "1", "0"])
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize("form", ["batched", "batch_first", "unbatched", "no-bias", "T4"])
def test_small_batch_forms(monkeypatch, switch, grad, form):
    """The direct small-batch path in every input form it takes, and the switch between kernels."""
    D, H, T = 5, 33, 4 if form == "T4" else 1
    monkeypatch.setenv(small_batch.SWITCH, switch)
    m = FusedLSTM(D, H, batch_first=form == "batch_first", bias=form != "no-bias")
    if form == "unbatched":
        x, hx = torch.randn(T, D), (torch.randn(1, H), torch.randn(1, H))
    elif form == "batch_first":
        x, hx = torch.randn(1, T, D), (torch.randn(1, 1, H), torch.randn(1, 1, H))
    else:
        x, hx = torch.randn(T, 1, D), (torch.randn(1, 1, H), torch.randn(1, 1, H))
    fast, general = _run_both(monkeypatch, m, x, hx, grad)
    _assert_bitwise(fast, general)
    fast, general = _run_both(monkeypatch, m, x, None, grad)
    _assert_bitwise(fast, general)


def test_fast_path_is_taken_for_the_plain_call(monkeypatch):
    """The generation step (B=1, T=1, state fed back) never reaches the general path."""
    m = FusedLSTM(16, 32)

    def refuse(*a, **k):
        raise AssertionError("the general path ran a plain call")

    monkeypatch.setattr(FusedLSTM, "_run_layers", refuse)
    monkeypatch.setattr(FusedLSTM, "check_forward_args", refuse)
    state = None
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            for _ in range(3):
                before = fast_path.calls
                y, state = m(torch.randn(1, 1, 16), state)
                assert fast_path.calls == before + 1
        state = tuple(t.detach() for t in state)
    with torch.inference_mode():
        before = fast_path.calls
        m(torch.randn(1, 1, 16), state)
        assert fast_path.calls == before + 1


def test_double_backward_through_the_fast_path(monkeypatch):
    m = FusedLSTM(4, 6, dtype=torch.float64)
    x = torch.randn(1, 1, 4, dtype=torch.float64, requires_grad=True)
    hx = (torch.randn(1, 1, 6, dtype=torch.float64), torch.randn(1, 1, 6, dtype=torch.float64))
    got = []
    for general in (False, True):
        with monkeypatch.context() as mp:
            if general:
                _general(mp)
            before = fast_path.calls
            y, (h, c) = m(x, hx)
            assert (fast_path.calls > before) == (not general)
            (g,) = torch.autograd.grad((y.sum() + c.sum()), x, create_graph=True)
            (gg,) = torch.autograd.grad(g.pow(2).sum(), x)
            got.append((g.detach(), gg))
    assert torch.equal(got[0][0], got[1][0]) and torch.equal(got[0][1], got[1][1])


# ---------------------------------------------------------------- parameter changes between calls
def _reference(m, x, hx):
    ref = nn.LSTM(m.input_size, m.hidden_size, dtype=m.weight_hh_l0.dtype)
    ref.load_state_dict(m.state_dict())
    with torch.no_grad():
        return ref(x, hx)


def _data_write(m):
    m.weight_hh_l0.data.mul_(-1.5)
    m.bias_ih_l0.data.add_(0.25)


def _copy_no_grad(m):
    with torch.no_grad():
        m.weight_ih_l0.copy_(torch.randn_like(m.weight_ih_l0))


def _assign_data(m):
    m.weight_hh_l0.data = torch.randn_like(m.weight_hh_l0)


def _load_state_dict(m):
    m.load_state_dict({k: torch.randn_like(v) for k, v in m.state_dict().items()})


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize("change", [_data_write, _copy_no_grad, _assign_data, _load_state_dict],
                         ids=["data-write", "copy_-no_grad", "assign-data", "load_state_dict"])
def test_parameter_changes_are_seen(change, grad):
    m = FusedLSTM(8, 16)
    x = torch.randn(1, 1, 8)
    hx = (torch.randn(1, 1, 16), torch.randn(1, 1, 16))
    with torch.set_grad_enabled(grad):
        m(x, hx)
        change(m)
        before = fast_path.calls
        y, (h, c) = m(x, hx)
    assert fast_path.calls == before + 1
    ry, (rh, rc) = _reference(m, x, hx)
    torch.testing.assert_close(y.detach(), ry, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c.detach(), rc, rtol=1e-5, atol=1e-6)


def test_functional_call_is_seen():
    m = FusedLSTM(8, 16)
    x = torch.randn(1, 1, 8)
    hx = (torch.randn(1, 1, 16), torch.randn(1, 1, 16))
    m(x, hx)
    other = {k: torch.randn_like(v, requires_grad=True) for k, v in m.state_dict().items()}
    y, (h, c) = torch.func.functional_call(m, other, (x, hx))
    ref = nn.LSTM(8, 16)
    ref.load_state_dict({k: v.detach() for k, v in other.items()})
    ry, (rh, rc) = ref(x, hx)
    torch.testing.assert_close(y, ry, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c, rc, rtol=1e-5, atol=1e-6)
    (g,) = torch.autograd.grad(y.sum(), other["weight_hh_l0"])
    (rg,) = torch.autograd.grad(ry.sum(), ref.weight_hh_l0)
    torch.testing.assert_close(g, rg, rtol=1e-5, atol=1e-6)
    # and the module's own parameters are back for the next call
    y2, _ = m(x, hx)
    torch.testing.assert_close(y2, _reference(m, x, hx)[0], rtol=1e-5, atol=1e-6)


def test_a_changed_shape_or_dtype_goes_to_the_general_path():
    """A ``.data`` write that changes a weight's shape or dtype: never the kernel on the old
    assumptions; the general path runs it (and raises what it raises)."""
    m = FusedLSTM(8, 16)
    x = torch.randn(1, 1, 8)
    m(x)
    m.weight_hh_l0.data = torch.randn(64, 8)
    before = fast_path.calls
    with pytest.raises(RuntimeError):
        m(x)
    assert fast_path.calls == before
    m2 = FusedLSTM(8, 16)
    m2(x)
    m2.weight_ih_l0.data = m2.weight_ih_l0.data.double()
    before = fast_path.calls
    with pytest.raises((RuntimeError, ValueError)):
        m2(x)
    assert fast_path.calls == before


def test_a_non_contiguous_weight_is_right():
    m = FusedLSTM(16, 16)
    x = torch.randn(1, 1, 16)
    m(x)
    w = torch.randn(16, 64)
    m.weight_ih_l0.data = w.t()        # (64, 16), not contiguous
    y, _ = m(x)
    torch.testing.assert_close(y, _reference(m, x, None)[0], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- hooks and errors
def test_hooks_still_run():
    m = FusedLSTM(4, 8)
    seen = []
    m.register_forward_pre_hook(lambda mod, args: seen.append("pre"))
    m.register_forward_hook(lambda mod, args, out: seen.append("post"))
    m.register_forward_pre_hook(lambda mod, args: (args[0] * 0,) + args[1:])   # changes the input
    before = fast_path.calls
    y, _ = m(torch.randn(1, 1, 4))
    assert seen == ["pre", "post"]
    assert fast_path.calls == before + 1
    ref = _reference(m, torch.zeros(1, 1, 4), None)[0]
    torch.testing.assert_close(y.detach(), ref, rtol=1e-5, atol=1e-6)


BAD = {
    "input-4d": (lambda: torch.randn(1, 1, 1, 4), None),
    "input-size": (lambda: torch.randn(1, 1, 5), None),
    "input-dtype": (lambda: torch.randn(1, 1, 4, dtype=torch.float64), None),
    "input-int": (lambda: torch.ones(1, 1, 4, dtype=torch.int64), None),
    "hx-shape": (lambda: torch.randn(1, 1, 4), lambda: (torch.randn(1, 2, 8), torch.randn(1, 2, 8))),
    "hx-2d-for-3d": (lambda: torch.randn(1, 1, 4), lambda: (torch.randn(1, 8), torch.randn(1, 8))),
    "hx-3d-for-2d": (lambda: torch.randn(1, 4), lambda: (torch.randn(1, 1, 8), torch.randn(1, 1, 8))),
    "hx-dtype": (lambda: torch.randn(1, 1, 4), lambda: (torch.randn(1, 1, 8, dtype=torch.float64),
                                                        torch.randn(1, 1, 8, dtype=torch.float64))),
    "hx-one": (lambda: torch.randn(1, 1, 4), lambda: (torch.randn(1, 1, 8),)),
    "hx-three": (lambda: torch.randn(1, 1, 4), lambda: (torch.randn(1, 1, 8),) * 3),
    "hx-tensor": (lambda: torch.randn(1, 1, 4), lambda: torch.randn(1, 1, 8)),
    "hx-not-tensors": (lambda: torch.randn(1, 1, 4), lambda: (1.0, 2.0)),
    "input-list": (lambda: [[1.0] * 4], None),
    "T-zero": (lambda: torch.randn(0, 1, 4), None),
}


# A tensor as hx or a list as input: nn.LSTM fails on them by accident (IndexError,
# AttributeError), the general path says what is wrong (TypeError); the fast path declines both
# (test_bad_hx_errors_match_the_general_path).
@pytest.mark.parametrize("case", [c for c in BAD if c not in ("hx-tensor", "input-list")])
def test_errors_are_nn_lstm_s(case):
    make_x, make_hx = BAD[case]
    ref, m = nn.LSTM(4, 8), FusedLSTM(4, 8)
    m.load_state_dict(ref.state_dict())
    x, hx = make_x(), None if make_hx is None else make_hx()
    with pytest.raises(Exception) as expected:
        ref(x, hx)
    with pytest.raises(Exception) as got:
        m(x, hx)
    assert type(got.value) is type(expected.value), (got.value, expected.value)


def test_bad_hx_errors_match_the_general_path(monkeypatch):
    """Same class and message as without the fast path (the general path is nn.LSTM's wording)."""
    m = FusedLSTM(4, 8)
    for case in BAD:
        make_x, make_hx = BAD[case]
        msgs = []
        for general in (False, True):
            with monkeypatch.context() as mp:
                if general:
                    _general(mp)
                x, hx = make_x(), None if make_hx is None else make_hx()
                with pytest.raises(Exception) as e:
                    m(x, hx)
                msgs.append((type(e.value), str(e.value)))
        assert msgs[0] == msgs[1], case


def test_plan_cache_holds_no_tensor():
    m = FusedLSTM(8, 16)
    m(torch.randn(1, 1, 8))
    copy.deepcopy(m)(torch.randn(1, 1, 8))

    def tensors(o):
        if isinstance(o, torch.Tensor):
            yield o
        elif isinstance(o, (tuple, list)):
            for v in o:
                yield from tensors(v)
    for key, plan in fast_path._PLANS.items():
        assert not list(tensors(key)) and not list(tensors(plan))


@pytest.mark.parametrize("B", [1, 4, 8], ids=lambda b: f"B{b}")
def test_grad_mode_uses_the_training_crossovers(monkeypatch, B):
    """In grad mode the fast path chooses the kernel from the training crossovers, as the general
    path does (at 1 thread and H 256 the tables differ at B 4 and 8), so both stay bitwise equal
    and pass ``training=True`` to the dispatch."""
    monkeypatch.setenv(small_batch.SWITCH, "auto")
    seen = []
    use_for = small_batch.use_for
    monkeypatch.setattr(small_batch, "use_for", lambda *a, **k: seen.append(k.get("training")) or use_for(*a, **k))
    fast_path._PLANS.clear()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(B)
        m = FusedLSTM(256, 256)
        x = torch.randn(1, B, 256)
        fast, general = _run_both(monkeypatch, m, x, None, grad=True)
    finally:
        torch.set_num_threads(threads)
    assert seen and all(seen), seen
    _assert_bitwise(fast, general)

def test_call_overhead_benchmark_runs(tmp_path):
    """benchmarks/call_overhead.py --smoke: its checks (fast path taken, kernel alone bitwise equal
    to the module call) pass and it writes its rows (timing at a tiny size, never asserted)."""
    import json
    import subprocess
    import sys
    from pathlib import Path
    if small_batch._small_batch_kernels is None:
        pytest.skip("no small-batch kernels on this machine")
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "co.json"
    p = subprocess.run([sys.executable, "benchmarks/call_overhead.py", "--smoke", "--out", str(out)], cwd=root,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    doc = json.loads(out.read_text())
    assert {r["mode"] for r in doc["rows"]} == {"no_grad", "inference_mode", "grad", "autocast"}
    assert all(r["fast_path"] and r["implementation"] == "cpu_small_batch" for r in doc["rows"])


@pytest.mark.parametrize("state", ["none", "fp32", "bf16", "mixed", "mixed-c"])
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16], ids=["x-fp32", "x-bf16"])
@pytest.mark.parametrize("form", ["batched", "batch_first", "unbatched", "no-bias", "T3"])
@pytest.mark.parametrize("H", [1, 33, 130, 1000])
def test_autocast_fast_path_equals_general_path(monkeypatch, H, form, x_dtype, state):
    """Under CPU autocast to bf16 with float32 parameters, a plain inference call where the plan is
    rule 1a (the small-batch kernels forced on) runs on the fast path, and its outputs (bf16, as
    nn.LSTM's under autocast) are bitwise the general path's; the states it returns fed back.
    H 1000 at B 2: a one-step call's float32 operands (10,006 floats) past the 8192 the C call
    keeps on its stack, so on the heap."""
    monkeypatch.setenv(small_batch.SWITCH, "1")
    if small_batch._small_batch_kernels is None:
        pytest.skip("no small-batch kernels on this machine")
    D, T, B = 6, 3 if form == "T3" else 1, 1 if form == "unbatched" else 2
    torch.manual_seed(H + T)
    m = FusedLSTM(D, H, batch_first=form == "batch_first", bias=form != "no-bias")
    shape = (T, D) if form == "unbatched" else ((B, T, D) if form == "batch_first" else (T, B, D))
    sshape = (1, H) if form == "unbatched" else (1, B, H)
    x = torch.randn(shape).to(x_dtype)
    dt = {"none": None, "fp32": (torch.float32,) * 2, "bf16": (torch.bfloat16,) * 2,
          "mixed": (torch.bfloat16, torch.float32), "mixed-c": (torch.float32, torch.bfloat16)}[state]
    hx = None if dt is None else tuple(torch.randn(sshape).to(d) for d in dt)
    results = []
    for general in (False, True):
        with monkeypatch.context() as mp:
            if general:
                _general(mp)
            before = fast_path.calls
            with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
                y, st = m(x, hx)
                y2, st2 = m(x, st)       # the state a call returns, fed back
            assert fast_path.calls - before == (0 if general else 2)
            results.append([y, *st, y2, *st2])
    _assert_bitwise(*results)
    assert all(t.dtype == torch.bfloat16 for t in results[0])


@pytest.mark.parametrize("case", ["grad", "two-layers", "bidir", "fp16-autocast", "fp64-state"])
def test_autocast_calls_the_fast_path_declines(monkeypatch, case):
    """Autocast calls outside rule 1a's inference case take the general path (and give its answer)."""
    monkeypatch.setenv(small_batch.SWITCH, "1")
    m = FusedLSTM(4, 8, num_layers=2 if case == "two-layers" else 1, bidirectional=case == "bidir")
    n = m.num_layers * (2 if m.bidirectional else 1)
    x = torch.randn(1, 2, 4)
    hx = (torch.randn(n, 2, 8, dtype=torch.float64),) * 2 if case == "fp64-state" else None
    dtype = torch.float16 if case == "fp16-autocast" else torch.bfloat16
    before = fast_path.calls
    with torch.set_grad_enabled(case == "grad"), torch.autocast("cpu", dtype):
        y, _ = m(x, hx)
    assert fast_path.calls == before
    assert y.dtype == dtype
