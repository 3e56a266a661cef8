"""Variable-length batches: tokens/sec of a PackedSequence against the same batch padded, for
nn.LSTM (which shrinks the batch step by step; pytorch #149194) and FusedLSTM (which masks
finished rows in its CPU kernels). Lengths are drawn uniformly from [T/2, T]; tokens/sec counts
B*T, so packed and padded are directly comparable. Training mode (forward + backward)."""
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from lstm_fast import FusedLSTM
from lstm_fast.d2l.bench import environment


@pytest.mark.parametrize("impl", ["nn.LSTM", "FusedLSTM"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_packed_vs_padded(benchmark, impl, packed, shape, device):
    B, T, D, H = shape
    torch.manual_seed(0)
    layer = (nn.LSTM if impl == "nn.LSTM" else FusedLSTM)(D, H, device=device)
    x = torch.randn(T, B, D, device=device, requires_grad=True)
    lengths = torch.randint(max(1, T // 2), T + 1, (B,))

    def call():
        inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if packed else x
        out, (h, c) = layer(inp)
        (out.data if packed else out).sum().backward()
        if device == "cuda":
            torch.cuda.synchronize()

    benchmark.group = f"{device} packed vs padded B{B} T{T} D{D} H{H}"
    benchmark.extra_info.update(implementation=impl, packed=packed, environment=environment(device))
    benchmark.pedantic(call, warmup_rounds=2, rounds=10)
    if benchmark.stats is not None:
        benchmark.extra_info["tokens_per_sec"] = B * T / benchmark.stats.stats.median
