"""tokens/sec of the d2l scratch LSTM, nn.LSTM and FusedLSTM, inference and training, on every
device present. Run: ``pytest benchmarks --benchmark-only [--shapes d2l|cpu|grid]``.

Each benchmark's group is device/mode/shape, so the three implementations of one case sit side
by side; ``extra_info`` holds tokens/sec from the median and the environment."""
import pytest

from lstm_fast.d2l.bench import IMPLEMENTATIONS, MODES, environment, make_call


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("mode", MODES)
def test_tokens_per_sec(benchmark, impl, mode, shape, device):
    B, T, D, H = shape
    call = make_call(impl, B, T, D, H, mode, device)
    benchmark.group = f"{device} {mode} B{B} T{T} D{D} H{H}"
    benchmark.extra_info.update(implementation=impl, device=device, mode=mode, B=B, T=T, D=D, H=H,
                                environment=environment(device))
    benchmark.pedantic(call, warmup_rounds=2, rounds=15 if B * T * H <= 1 << 22 else 5)
    if benchmark.stats is not None:   # None under --benchmark-disable (the smoke test)
        benchmark.extra_info["tokens_per_sec"] = B * T / benchmark.stats.stats.median
