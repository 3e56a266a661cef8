"""Packaging facts: the bundled data, the kernels' import name, the public API."""
import hashlib
import importlib.util
from importlib import resources

import lstm_fast


def test_bundled_time_machine_text():
    data = resources.files("lstm_fast.d2l").joinpath("corpus/timemachine.txt").read_bytes()
    assert hashlib.sha1(data).hexdigest() == "090b5e7e70c295757f55df93cb0a180b9691891a"


def test_kernels_ship_inside_the_package_only():
    import lstm_fast.kernels as k
    assert k.__name__ == "lstm_fast.kernels"
    spec = importlib.util.find_spec("kernels")
    assert spec is None or "lstm_fast" not in (spec.origin or ""), "a top-level 'kernels' must not be ours"


def test_public_api():
    assert set(lstm_fast.__all__) >= {"FusedLSTM", "fused_lstm", "reference"}
    from lstm_fast.reference import (RNNModelScratch, get_lstm_params, init_lstm_state, lstm,  # noqa: F401
                                     lstm_state_dict_to_scratch, scratch_to_lstm_state_dict)


def test_cpu_kernels_are_built_where_they_can_be():
    """The C extensions are optional in setup.py (a machine without a compiler still installs), so
    a broken build would silently fall back to the slow path. Where a C compiler and x86-64 Linux
    are present, they must be there."""
    import platform
    import shutil

    import pytest
    if platform.system() != "Linux" or platform.machine() != "x86_64" or not shutil.which("cc"):
        pytest.skip("the C kernels are only required on x86-64 Linux with a compiler")
    from lstm_fast.cpu import _cell_kernel, _sequence_kernels  # noqa: F401
    import lstm_fast.cpu.stepwise as cpu
    import lstm_fast.cpu.sequence as seq
    assert cpu._cell_kernel is not None
    if _sequence_kernels.available():
        assert seq._sequence_kernels is not None
