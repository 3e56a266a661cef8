"""End to end: one d2l training epoch on the bundled text. A faithful ``train_ch8`` loop with
nn.LSTM against our trainer (``lstm-fast train``'s epoch) with FusedLSTM, on every device."""
import pytest
import torch

from d2l_reference_loop import D2LSeqDataLoader, d2l_setup, train_epoch_ch8
from lstm_fast.d2l.bench import environment
from lstm_fast.d2l.train import TrainConfig, build_model, train_epoch
from lstm_fast.d2l.data import SeqDataLoader, load_corpus


@pytest.mark.parametrize("impl", ["d2l-nn.LSTM", "lstm-fast-fused"])
def test_d2l_epoch(benchmark, impl, device, request):
    tiny = request.config.getoption("--shapes") == "tiny"
    hidden = 16 if tiny else 256
    corpus, vocab = load_corpus(max_tokens=2000 if tiny else 10000)
    if impl == "d2l-nn.LSTM":
        net, loader, loss, opt = d2l_setup(device, hidden=hidden)
        loader = D2LSeqDataLoader(corpus, 32, 35, seed=0)
        run = lambda: train_epoch_ch8(net, loader, loss, opt, device)  # noqa: E731
    else:
        cfg = TrainConfig(model="fused", hidden=hidden)
        net = build_model(cfg, len(vocab), device)
        loader = SeqDataLoader(corpus, cfg.batch_size, cfg.num_steps, seed=0)
        opt = torch.optim.SGD(net.parameters(), lr=cfg.lr)
        run = lambda: train_epoch(net, loader, torch.nn.CrossEntropyLoss(), opt, device, cfg)  # noqa: E731
    tokens = len(loader) * 32 * 35
    benchmark.group = f"{device} d2l epoch (Time Machine, B32 T35 H{hidden})"
    benchmark.extra_info.update(implementation=impl, device=device, environment=environment(device))
    benchmark.pedantic(run, warmup_rounds=1, rounds=5)
    if benchmark.stats is not None:
        benchmark.extra_info["tokens_per_sec"] = tokens / benchmark.stats.stats.median
