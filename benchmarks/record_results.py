"""Measure what the README states beyond the throughput table, and write it to benchmarks/results/.

    python benchmarks/record_results.py packed       # packed vs padded batches, nn.LSTM and FusedLSTM
    python benchmarks/record_results.py epoch        # one d2l training epoch: train_ch8 + nn.LSTM vs ours
    python benchmarks/record_results.py default-run  # `lstm-fast train` with its defaults, end to end
    python benchmarks/record_results.py generate     # characters/sec: `lstm-fast generate` vs d2l's predict_ch8

Each writes ``benchmarks/results/<kind>-<machine>.json``: the rows (median and interquartile range
per row), the command, the git commit and the machine; ``benchmarks/readme_table.py`` turns them
into the README's text. Run them under ``flock /tmp/lstm-bench.lock`` on a shared machine. The
cases compared are interleaved round by round in one process (:func:`lstm_fast.d2l.bench.time_interleaved`),
so noise falls on all of them alike.
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from lstm_fast import FusedLSTM  # noqa: E402
from lstm_fast.d2l.bench import CPU_SHAPES, device_slug, environment, quartiles, time_interleaved, write_json  # noqa: E402


def _summary(seconds, tokens):
    q1, med, q3 = quartiles(seconds)
    return {"seconds": med, "q1_seconds": q1, "q3_seconds": q3, "rounds": len(seconds), "tokens_per_sec": tokens / med}


def packed(device, budget, rounds, shapes):
    """Training (forward + backward) on a batch with lengths uniform in [T/2, T], given as a
    PackedSequence and as the same batch padded; tokens/sec counts B*T for both."""
    rows = []
    for B, T, D, H in shapes:
        torch.manual_seed(0)
        x = torch.randn(T, B, D, device=device, requires_grad=True)
        lengths = torch.randint(max(1, T // 2), T + 1, (B,))
        calls = {}
        for impl, cls in (("nn.LSTM", nn.LSTM), ("FusedLSTM", FusedLSTM)):
            layer = cls(D, H, device=device)
            for is_packed in (False, True):
                def call(layer=layer, is_packed=is_packed):
                    inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if is_packed else x
                    out, _ = layer(inp)
                    (out.data if is_packed else out).sum().backward()
                    if device == "cuda":
                        torch.cuda.synchronize()
                calls[(impl, is_packed)] = call
        times = time_interleaved(calls, budget * len(calls), rounds)
        for (impl, is_packed), secs in times.items():
            rows.append({"implementation": impl, "packed": is_packed, "device": device, "B": B, "T": T, "D": D,
                         "H": H, **_summary(secs, B * T)})
    return rows


def epoch(device, budget, rounds, hidden, token="char"):
    """One epoch on the bundled text at the d2l settings: d2l's train_ch8 loop with nn.LSTM
    (benchmarks/d2l_reference_loop.py) against ``lstm-fast train``'s epoch with FusedLSTM, and
    the same trainer with the other first-layer input (the one-hot input GEMM where it gathers
    the input projection, the gather where it does not: ``RNNModel.GATHER_MIN_VOCAB``).
    ``token="word"``: word tokens (a vocabulary of thousands: the one-hot GEMM is D = V wide)."""
    from d2l_reference_loop import D2LSeqDataLoader, train_epoch_ch8
    from lstm_fast.d2l.data import SeqDataLoader, load_corpus
    from lstm_fast.d2l.train import RNNModel, TrainConfig, build_model, train_epoch
    corpus, vocab = load_corpus(max_tokens=10000, token=token)
    cfg = TrainConfig(model="fused", hidden=hidden, token=token)
    torch.manual_seed(0)
    net_d = RNNModel(nn.LSTM(len(vocab), hidden), len(vocab)).to(device)   # d2l_setup's model, any vocabulary
    loss_d, opt_d = nn.CrossEntropyLoss(), torch.optim.SGD(net_d.parameters(), lr=1)
    nets, opts, loaders = {}, {}, {}
    for name in ("shipped", "other"):
        nets[name] = build_model(cfg, len(vocab), device)
        nets[name].load_state_dict(net_d.state_dict())
        opts[name] = torch.optim.SGD(nets[name].parameters(), lr=cfg.lr)
        loaders[name] = SeqDataLoader(corpus, cfg.batch_size, cfg.num_steps, seed=0)
    gathers = nets["shipped"]._gathers(torch.zeros(cfg.batch_size, cfg.num_steps, dtype=torch.long))
    nets["other"]._gathers = lambda inputs: not gathers
    other = "one-hot input GEMM" if gathers else "gathered input projection"
    loader_d = D2LSeqDataLoader(corpus, 32, 35, seed=0)
    tokens = len(loader_d) * cfg.batch_size * cfg.num_steps
    dev = torch.device(device)

    def ours(name):
        return lambda: train_epoch(nets[name], loaders[name], nn.CrossEntropyLoss(), opts[name], dev, cfg)
    calls = {"d2l train_ch8 + nn.LSTM": lambda: train_epoch_ch8(net_d, loader_d, loss_d, opt_d, device),
             "lstm-fast train + FusedLSTM": ours("shipped"),
             f"lstm-fast train + FusedLSTM, {other}": ours("other")}
    times = time_interleaved(calls, budget * len(calls), rounds)
    return [{"implementation": name, "device": device, "hidden": hidden, "token": token, "vocab": len(vocab),
             "tokens": tokens, **_summary(secs, tokens)} for name, secs in times.items()]


def generate(device, budget, rounds, hidden, num_preds=200, epochs=5):
    """Characters/sec of generation from one checkpoint (written by ``lstm-fast train`` for
    ``epochs`` epochs at the d2l settings): d2l's ``predict_ch8`` loop with nn.LSTM (the book's
    concise model, the checkpoint's weights loaded into it) against the function behind
    ``lstm-fast generate`` with FusedLSTM. Both continue "time traveller " by ``num_preds``
    characters, one batch-1 step per character; a row also says whether its text equals the
    other's (greedy decoding from the same weights)."""
    from d2l_reference_loop import predict_ch8
    from lstm_fast.d2l.data import Vocab
    from lstm_fast.d2l.generate import predict
    from lstm_fast.d2l.train import RNNModel, TrainConfig, build_model, load_checkpoint, train
    prefix = "time traveller "
    with tempfile.TemporaryDirectory() as tmp:
        train(TrainConfig(hidden=hidden, epochs=epochs, device=device), out_dir=Path(tmp) / "run",
              log=lambda *a, **k: None, progress=False)
        ckpt = load_checkpoint(Path(tmp) / "run")
    vocab = Vocab.from_state_dict(ckpt["vocab"])
    ours = build_model(ckpt["config"], len(vocab), device)
    ours.load_state_dict(ckpt["model"])
    theirs = RNNModel(nn.LSTM(len(vocab), hidden), len(vocab)).to(device)
    theirs.load_state_dict(ckpt["model"])
    dev = torch.device(device)
    texts = {"d2l predict_ch8 + nn.LSTM": lambda: predict_ch8(prefix, num_preds, theirs, vocab, dev),
             "lstm-fast generate + FusedLSTM": lambda: predict(prefix, num_preds, ours, vocab, dev)}
    made = {name: fn() for name, fn in texts.items()}
    times = time_interleaved(texts, budget * len(texts), rounds)
    chars = len(prefix) - 1 + num_preds            # one step per character after the first
    return [{"implementation": name, "device": device, "hidden": hidden, "num_preds": num_preds, "steps": chars,
             "same_text": len(set(made.values())) == 1, "text": made[name], **_summary(secs, chars),
             "chars_per_sec": chars / statistics.median(secs)} for name, secs in times.items()]


def default_run(device, runs):
    """``lstm-fast train`` with every default (d2l's recipe, 500 epochs), ``runs`` times: wall
    seconds, final perplexity and the closing continuations of each run."""
    from lstm_fast.d2l.train import TrainConfig, train
    rows = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            r = train(TrainConfig(device=device), out_dir=Path(out) / "run", progress=False, log=lambda *_: None)
            wall = time.perf_counter() - t0
        rows.append({"wall_seconds": wall, "perplexity": r["perplexity"], "tokens_per_sec": r["tokens_per_sec"],
                     "epochs": len(r["history"]), "time traveller": r["time traveller"], "traveller": r["traveller"]})
    q1, med, q3 = quartiles([row["wall_seconds"] for row in rows])
    return rows, {"median_wall_seconds": med, "q1_wall_seconds": q1, "q3_wall_seconds": q3}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=("packed", "epoch", "default-run", "generate"))
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--budget", type=float, default=3.0, help="seconds of timing per case compared")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--runs", type=int, default=3, help="default-run: how many complete runs")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's own choice); recorded")
    ap.add_argument("--token", default="char", choices=("char", "word"), help="epoch: d2l's char tokens or words")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes, to check the script (not for the README)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"),
                    help="folder for the JSON file (<kind>-<machine>.json), or the file itself (a name ending in .json)")
    a = ap.parse_args(argv)
    if a.threads is not None:
        torch.set_num_threads(a.threads)
    env = environment(a.device)
    extra = {"kind": a.kind}
    if a.kind == "packed":
        rows = packed(a.device, a.budget, a.rounds, [(2, 6, 3, 5)] if a.tiny else CPU_SHAPES)
    elif a.kind == "epoch":
        rows = epoch(a.device, a.budget, a.rounds, 16 if a.tiny else 256, a.token)
    elif a.kind == "generate":
        rows = generate(a.device, a.budget, a.rounds, 16 if a.tiny else 256, 20 if a.tiny else 200,
                        1 if a.tiny else 5)
    else:
        if a.tiny:
            raise SystemExit("default-run has no tiny form: it is the default run")
        rows, stats = default_run(a.device, a.runs)
        extra.update(stats)
    out = Path(a.out)
    word = "-word" if a.kind == "epoch" and a.token == "word" else ""
    path = out if out.suffix == ".json" else out / f"{a.kind}{word}-{device_slug(env, a.device)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, env, rows, extra)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
