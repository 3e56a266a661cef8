"""Fuzz: random LSTM configurations and random (often bad) inputs behave as nn.LSTM does (issue 19 item 5).

Each case builds an nn.LSTM and a FusedLSTM with the same weights (tests/lstm_case_driver.py) and
feeds both the same input. Either both return outputs of the same shapes, dtypes and devices whose
values agree (allclose, NaN where nn.LSTM has NaN) and, in the half of the cases run in grad mode
(everything requiring grad, or only input and state), whose gradients w.r.t. the input, h_0, c_0
and every parameter agree (tolerances by dtype, lstm_case_driver.GRAD_TOL), or both raise, FusedLSTM an exception of
nn.LSTM's class. A signal exit (a native kernel reading outside a tensor) fails the test naming the
case. Cases run in child processes, a batch per child, restarted after a crash.

Budget: by default ~20 s of CI (LSTM_FAST_FUZZ_CASES cases, 160 unless set); a longer run:
``LSTM_FAST_FUZZ_CASES=5000 pytest tests/test_fuzz.py``. The seed is fresh per run and printed in
every failure; ``LSTM_FAST_FUZZ_SEED=<seed>`` replays a run.
"""
import os
import random
import signal

import pytest

from lstm_case_runner import run_cases

N_CASES = int(os.environ.get("LSTM_FAST_FUZZ_CASES", "160"))
SEED = int(os.environ.get("LSTM_FAST_FUZZ_SEED", str(random.SystemRandom().randrange(2**31))))


def _config(rng):
    return dict(D=rng.choice([1, 3, 8]), H=rng.choice([2, 5, 7, 16]), layers=rng.choice([1, 1, 2, 3]),
                bi=rng.random() < 0.4, proj=rng.choice([0, 0, 0, 1]), batch_first=rng.random() < 0.3,
                bias=rng.random() < 0.8, dtype=rng.choice(["float32", "float32", "float64", "bfloat16"]),
                T=rng.choice([1, 2, 5]), B=rng.choice([0, 1, 2, 3]), grad=rng.choice([None, None, "all", "input"]))


def _bad_input(rng, spec, devices):
    """Zero or more perturbations of a valid call."""
    other_dtype = rng.choice([d for d in ("float32", "float64", "bfloat16") if d != spec["dtype"]])
    moves = [
        lambda: spec.update(x_layout=rng.choice(["noncontig", "expanded"])),
        lambda: spec.update(x_values=rng.choice(["nan", "inf"])),
        lambda: spec.update(x_dtype=other_dtype),
        lambda: spec.update(x_wrong_dim=True),
        lambda: spec.update(unbatched=True),
        lambda: spec.update(hx=rng.choice(["tuple", "list"])),
        lambda: spec.update(hx=rng.choice(["one", "three", "wrong_dims", "wrong_batch", "not_tensor"])),
        lambda: spec.update(hx="tuple", **{rng.choice(["h_dtype", "c_dtype"]): other_dtype}),
        lambda: spec.update(packed=sorted((rng.randint(1, spec["T"]) for _ in range(spec["B"])), reverse=rng.random() < .5))
        if spec["B"] > 0 else None,
    ]
    if devices:
        moves += [
            lambda: spec.update(param_device="meta"),
            lambda: spec.update(x_device="meta"),
            lambda: spec.update(hx="tuple", **{rng.choice(["h_device", "c_device"]): "meta"}),
            lambda: spec.update(param_device="meta", x_device="meta"),
        ]
    for move in rng.sample(moves, rng.choice([0, 1, 1, 2, 3])):
        move()
    if spec.get("packed") is not None and (spec.get("x_wrong_dim") or spec.get("unbatched")):
        # nn.LSTM does not check a packed input's feature size: it runs a 9-wide input through an
        # 8-wide weight; lstm_fast refuses it. Not a case to compare.
        spec.pop("x_wrong_dim", None)
        spec.pop("unbatched", None)
    if devices and not any(k in spec for k in ("param_device", "x_device", "h_device", "c_device")):
        moves[-1 - rng.randrange(4)]()
    return spec


def _cases(n, devices, seed):
    rng = random.Random(seed)
    return [_bad_input(rng, dict(_config(rng), id=f"{'dev' if devices else 'cpu'}{i}", seed=rng.randrange(2**31)),
                       devices) for i in range(n)]


def _crash(r):
    """A process death or a returned result that differs from nn.LSTM's: never acceptable."""
    if "signal" in r or "exit" in r:
        return f"child died ({r})"
    if "setup" in r:
        return None
    ref, fused = r["ref"], r["fused"]
    if "exc" not in ref and "exc" not in fused:
        if fused != ref:
            return f"outputs differ in shape/dtype/device: nn.LSTM {ref}, FusedLSTM {fused}"
        if r["close"] is False:
            return "values differ from nn.LSTM's"
        if r.get("grads_close") is False:
            return f"gradients differ from nn.LSTM's: {r['grads_bad']}"
    return None


def _verdict(r):
    bad = _crash(r)
    if bad or "setup" in r:
        return bad
    ref, fused = r["ref"], r["fused"]
    if "exc" in ref:
        return None if fused.get("exc") == ref["exc"] else f"nn.LSTM raised {ref}, FusedLSTM gave {fused}"
    if "exc" in fused:
        return f"nn.LSTM returned {ref}, FusedLSTM raised {fused}"
    if fused != ref:
        return f"outputs differ in shape/dtype/device: nn.LSTM {ref}, FusedLSTM {fused}"
    if r["close"] is False:
        return "values differ from nn.LSTM's"
    if r.get("grads_close") is False:
        return f"gradients differ from nn.LSTM's: {r['grads_bad']}"
    return None


_RESULTS = {}


def _results(devices, n):
    if (devices, n) not in _RESULTS:
        specs = _cases(n, devices, SEED)
        _RESULTS[devices, n] = specs, run_cases(specs)
    return _RESULTS[devices, n]


def _check(devices, n, verdict=_verdict):
    specs, results = _results(devices, n)
    by_id = {s["id"]: s for s in specs}
    assert sum("setup" not in r for r in results.values()) >= n // 2, "most cases must be valid nn.LSTM setups"
    bad = [(k, v) for k, v in ((r["id"], verdict(r)) for r in results.values()) if v]
    assert not bad, (f"seed {SEED} (LSTM_FAST_FUZZ_SEED={SEED} replays it): {len(bad)} of {n} cases differ from "
                     "nn.LSTM:\n" + "\n".join(f"{k} {by_id[k]}: {v}" for k, v in bad[:15]))


def test_fuzz_no_crash_and_same_results():
    """Everything on the CPU: configurations, shapes, dtypes, strides, NaN/Inf, lengths, hx forms.
    No case kills the process, and where both return, FusedLSTM returns nn.LSTM's result."""
    _check(False, N_CASES, _crash)


def test_fuzz_same_exception_class():
    """The same cases: where nn.LSTM raises, FusedLSTM raises an exception of the same class, and
    where nn.LSTM returns, FusedLSTM returns."""
    _check(False, N_CASES)


def test_fuzz_devices_never_crash():
    """Meta tensors and mismatched devices in every case: never a signal exit (a CPU kernel reached
    with a meta tensor used to segfault), whatever else happens."""
    _check(True, max(N_CASES // 4, 10), _crash)


def _packed_meta_quirk(spec, r):
    """nn.LSTM's one behaviour FusedLSTM does not copy: for a packed input nn.LSTM checks neither
    devices nor (on meta) dtypes, so with any tensor on meta it returns (CPU outputs computed from
    meta parameters, meta outputs from CPU parameters, ...) where FusedLSTM raises its
    RuntimeError. True for exactly such a case."""
    devices = {spec.get(k, "cpu") for k in ("param_device", "x_device", "h_device", "c_device")}
    return (spec.get("packed") is not None and "meta" in devices and "exc" not in r.get("ref", {"exc": 1})
            and r.get("fused", {}).get("exc") == "RuntimeError")


def test_fuzz_devices():
    """The same with meta tensors and mismatched devices in every case: FusedLSTM behaves as
    nn.LSTM in every case but :func:`_packed_meta_quirk`'s (test_packed_meta_quirk_not_copied)."""
    specs, _ = _results(True, max(N_CASES // 4, 10))
    by_id = {s["id"]: s for s in specs}
    _check(True, max(N_CASES // 4, 10), lambda r: None if _packed_meta_quirk(by_id[r["id"]], r) else _verdict(r))


@pytest.mark.xfail(strict=True, reason="nn.LSTM quirk not copied: with parameters on meta and a packed CPU input "
                                       "nn.LSTM returns CPU outputs computed from no weights at all; FusedLSTM "
                                       "raises nn.LSTM's own device error instead")
def test_packed_meta_quirk_not_copied():
    """Fails (xfail, strict) while FusedLSTM refuses what nn.LSTM's packed path accepts: parameters
    on meta, a packed CPU input. Passing would mean one of the two changed: look again."""
    r = run_cases([dict(id="quirk", seed=SEED, param_device="meta", packed=[4, 2], T=4, B=2)])["quirk"]
    assert "exc" not in r["ref"], f"nn.LSTM no longer returns here: {r['ref']}"
    assert r["fused"] == r["ref"], f"FusedLSTM: {r['fused']}, nn.LSTM: {r['ref']}"


def test_fuzz_runner_sees_a_crash():
    """The harness itself: a case that kills its child is reported as a signal exit naming it, and
    the cases after it still run."""
    r = run_cases([dict(id="ok0", seed=1), dict(id="boom", seed=2, _crash=True), dict(id="ok1", seed=3)])
    assert r["ok0"]["close"] is True and r["ok1"]["close"] is True
    assert r["boom"].get("signal") == signal.SIGSEGV
