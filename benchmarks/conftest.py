"""pytest-benchmark setup: which shapes and devices the suites cover.

``--shapes d2l`` (default: the d2l shape, so the CPU suite takes a few minutes), ``cpu`` (d2l plus
B64 T100 D128 H512), ``grid`` (B x H x T grid) or ``tiny`` (one small shape: the smoke test's);
also ``LSTM_FAST_BENCH_SHAPES``. CUDA is measured when present, the CPU always.
"""
import os

import torch


def pytest_addoption(parser):
    parser.addoption("--shapes", default=os.environ.get("LSTM_FAST_BENCH_SHAPES", "d2l"),
                     choices=("tiny", "d2l", "cpu", "grid"), help="shape set for the lstm-fast benchmarks")


def pytest_generate_tests(metafunc):
    from lstm_fast.d2l.bench import shape_set
    if "shape" in metafunc.fixturenames:
        shapes = shape_set(metafunc.config.getoption("--shapes"))
        metafunc.parametrize("shape", shapes, ids=[f"B{b}-T{t}-D{d}-H{h}" for b, t, d, h in shapes])
    if "device" in metafunc.fixturenames:
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        metafunc.parametrize("device", devices)
