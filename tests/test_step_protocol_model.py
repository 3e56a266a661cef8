"""The hidden-split step protocols (kernels/grid_sync.py: "ll" tagged words, "counter") as a C11
model with real threads (tests/step_protocol_model.c), compiled with the system C compiler:
random delays inside and between publishes, no program ever consumes a stale, torn or foreign
word; a program that stops publishing ends every waiter in the timeout error, not a hang; and a
deliberately broken reader (checking one tag per slice, like a flag without a fence) is caught,
so the check can fail.

CI runs a few hundred thousand steps (seconds); ``LSTM_FAST_PROTOCOL_STEPS=1000000`` (or more)
runs the long stress test with more threads."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

SRC = Path(__file__).with_name("step_protocol_model.c")
CC = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")
LONG = int(os.environ.get("LSTM_FAST_PROTOCOL_STEPS", "0"))

pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler (cc/gcc/clang) on this machine")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    exe = tmp_path_factory.mktemp("protocol") / "step_protocol_model"
    proc = subprocess.run([CC, "-O2", "-std=c11", "-pthread", "-Wall", "-Werror", "-o", str(exe), str(SRC)],
                          capture_output=True, text=True)
    if proc.returncode and "pthread" in proc.stderr:
        pytest.skip(f"the C compiler cannot build threads here: {proc.stderr[-300:]}")
    assert proc.returncode == 0, proc.stderr
    return exe


def run(model, protocol, n, words, steps, max_spins, seed, missing=None, timeout=120):
    args = [str(model), protocol, str(n), str(words), str(steps), str(max_spins), str(seed)]
    if missing is not None:
        args += [str(missing[0]), str(missing[1])]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout.strip()


@pytest.mark.parametrize("protocol,n,words,steps", [
    pytest.param("ll", 4, 8, 300_000, id="ll-4-programs"),
    pytest.param("ll", 7, 3, 100_000, id="ll-7-programs-odd-slices"),
    pytest.param("counter", 4, 8, 100_000, id="counter-4-programs"),
])
def test_every_consumed_word_is_the_right_step(model, protocol, n, words, steps):
    code, out = run(model, protocol, n, words, steps, 10**9, seed=n * 1000 + words)
    assert code == 0, out


@pytest.mark.skipif(not LONG, reason="long stress run: set LSTM_FAST_PROTOCOL_STEPS (e.g. 1000000)")
@pytest.mark.parametrize("protocol,n", [("ll", 4), ("ll", 8), ("counter", 8)])
def test_long_stress(model, protocol, n):
    code, out = run(model, protocol, n, 16, LONG, 10**10, seed=LONG + n, timeout=3600)
    assert code == 0, out


@pytest.mark.parametrize("protocol", ["ll", "counter"])
@pytest.mark.parametrize("missing", [(0, 0), (2, 1234)], ids=["first-program-at-step-0", "third-at-step-1234"])
def test_missing_program_times_out_instead_of_hanging(model, protocol, missing):
    code, out = run(model, protocol, 4, 8, 20_000, 200_000, seed=7, missing=missing, timeout=60)
    assert code == 3 and "timeout" in out, out


def test_the_check_catches_a_broken_reader(model):
    """A reader that trusts one word's tag for its whole slice consumes half-published slices."""
    code, out = run(model, "broken", 4, 8, 200_000, 10**9, seed=3)
    assert code == 2, out
