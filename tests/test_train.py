"""The training job: perplexity falls, the three models agree, files are written atomically,
resume continues, generate reads checkpoints safely, the CLI reports bad input clearly."""
import csv
import pickle

import pytest
import torch

from lstm_fast.d2l import cli
from lstm_fast.d2l.train import TrainConfig, build_model, clip_gradients, load_checkpoint, train

SMALL = dict(hidden=32, batch_size=8, num_steps=10, max_tokens=3000, lr=1.0)


def test_perplexity_falls(tmp_path):
    r = train(TrainConfig(epochs=6, **SMALL), out_dir=tmp_path, progress=False, log=lambda *_: None)
    ppl = [h["perplexity"] for h in r["history"]]
    assert ppl[-1] < ppl[0] * 0.8, ppl
    assert r["time traveller"].startswith("time traveller") and len(r["time traveller"]) == 14 + 50
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [int(x["epoch"]) for x in rows] == list(range(1, 7))
    assert (tmp_path / "perplexity.png").read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary files left behind"
    import os
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "checkpoint.pt").stat().st_mode & 0o777 == 0o666 & ~umask


def test_fused_and_torch_train_identically(tmp_path):
    """Same seed, same init, same batches: FusedLSTM follows nn.LSTM's trajectory."""
    results = {}
    for model in ("fused", "torch"):
        r = train(TrainConfig(model=model, epochs=2, **SMALL), out_dir=tmp_path / model, progress=False,
                  log=lambda *_: None)
        results[model] = [h["perplexity"] for h in r["history"]]
    assert results["fused"] == pytest.approx(results["torch"], rel=1e-4), results


@pytest.mark.parametrize("gather", [pytest.param(True, id="gathered-projection"), pytest.param(False, id="one-hot")])
def test_trainer_follows_the_d2l_reference_loop(gather, monkeypatch):
    """Our epoch (FusedLSTM, the one-hot input as a gathered input projection where the layer
    takes one, or the one-hot input) against d2l's own train_ch8 loop with nn.LSTM
    (benchmarks/d2l_reference_loop.py) from the same weights over the same batches: the same
    perplexity every epoch, the same weights after, the same greedy continuation."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from d2l_reference_loop import D2LSeqDataLoader, train_epoch_ch8
    from lstm_fast.d2l.data import SeqDataLoader, load_corpus
    from lstm_fast.d2l.generate import predict
    from lstm_fast.d2l.train import RNNModel, train_epoch
    from lstm_fast.ops.plan import plan_layer
    monkeypatch.setattr(RNNModel, "GATHER_MIN_VOCAB", 0 if gather else 1 << 30)
    cfg = TrainConfig(model="fused", **SMALL)
    corpus, vocab = load_corpus(max_tokens=cfg.max_tokens)
    ref = RNNModel(torch.nn.LSTM(len(vocab), cfg.hidden), len(vocab))
    ours = build_model(cfg, len(vocab), "cpu")
    ours.load_state_dict(ref.state_dict())
    X = torch.zeros(cfg.batch_size, cfg.num_steps, dtype=torch.long)
    w_hh = ours.rnn.weight_hh_l0     # the routes that take a projection natively: the sequence kernels, stepwise
    route = plan_layer(torch.zeros(cfg.num_steps, cfg.batch_size, w_hh.shape[0]), w_hh, "cpu",
                       input_projection=True).implementation
    assert ours._gathers(X) == (gather and route in ("cpu_sequence", "cpu_stepwise")), route
    loaders = [D2LSeqDataLoader(corpus, cfg.batch_size, cfg.num_steps, seed=0),   # d2l's batches
               SeqDataLoader(corpus, cfg.batch_size, cfg.num_steps, seed=0)]
    opts = [torch.optim.SGD(net.parameters(), lr=cfg.lr) for net in (ref, ours)]
    loss = torch.nn.CrossEntropyLoss()
    for epoch in range(3):
        ppl_ref, _ = train_epoch_ch8(ref, loaders[0], loss, opts[0], "cpu")
        ppl, _ = train_epoch(ours, loaders[1], loss, opts[1], torch.device("cpu"), cfg)
        assert ppl == pytest.approx(ppl_ref, rel=1e-4), (epoch, ppl, ppl_ref)
    for (name, a), b in zip(ref.named_parameters(), ours.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4, msg=lambda m: f"{name}: {m}")
    assert predict("time traveller", 30, ours, vocab, "cpu") == predict("time traveller", 30, ref, vocab, "cpu")


def test_scratch_model_starts_where_torch_does():
    """The scratch model gets nn.LSTM's initial weights (one summed bias), so its first outputs
    equal nn.LSTM's. (Training then differs slightly: nn.LSTM's two biases both take the
    gradient, which d2l's single bias does not.)"""
    outs = {}
    for model in ("scratch", "torch"):
        torch.manual_seed(5)
        net = build_model(TrainConfig(model=model, hidden=16), 28, "cpu")
        torch.manual_seed(6)
        X = torch.randint(0, 28, (4, 9))
        outs[model] = net(X, net.begin_state(4, "cpu"))[0]
    torch.testing.assert_close(outs["scratch"], outs["torch"], rtol=1e-4, atol=1e-6)


def test_clip_gradients_is_d2ls():
    p = [torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(2, 2))]
    for scale in (0.01, 100.0):
        for q in p:
            q.grad = torch.randn_like(q) * scale
        g0 = [q.grad.clone() for q in p]
        norm = torch.sqrt(sum((g ** 2).sum() for g in g0))
        clip_gradients(p, 1.0)
        factor = 1.0 if norm <= 1 else 1.0 / norm
        for q, g in zip(p, g0, strict=True):
            torch.testing.assert_close(q.grad, g * factor)


def test_resume_continues(tmp_path):
    train(TrainConfig(epochs=2, **SMALL), out_dir=tmp_path, progress=False, log=lambda *_: None)
    r = train(TrainConfig(epochs=3, **SMALL), resume=tmp_path, progress=False, log=lambda *_: None)
    assert [h["epoch"] for h in r["history"]] == [1, 2, 3]
    assert load_checkpoint(tmp_path)["epoch"] == 3


def test_generate_and_bad_checkpoints(tmp_path, capsys):
    train(TrainConfig(epochs=1, **SMALL), out_dir=tmp_path, progress=False, log=lambda *_: None)
    assert cli.main(["generate", "--checkpoint", str(tmp_path / "checkpoint.pt"), "--prefix", "time", "--num-preds", "7"]) == 0
    out = capsys.readouterr().out.rstrip("\n")
    assert out.startswith("time") and len(out) == 11
    assert cli.main(["generate", "--checkpoint", str(tmp_path), "--num-preds", "5", "--temperature", "0.8"]) == 0
    capsys.readouterr()
    missing = tmp_path / "nope.pt"
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes((tmp_path / "checkpoint.pt").read_bytes()[:100])
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)

    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(Evil()))
    for path, words in ((missing, "not found"), (corrupt, "not a readable"), (other, "not an lstm-fast"),
                        (evil, "not a readable")):
        assert cli.main(["generate", "--checkpoint", str(path)]) == 2
        captured = capsys.readouterr()
        assert words in captured.err and str(path) in captured.err
        assert "code ran" not in captured.out


@pytest.mark.parametrize("argv,words", [
    (["--epochs", "0"], "--epochs"), (["--lr", "-1"], "--lr"), (["--data", "/nonexistent/x.txt"], "no such file"),
    (["--model", "scratch", "--layers", "2"], "scratch"), (["--device", "tpu"], "--device"),
    (["--batch-size", "4000"], "too few"),
], ids=["epochs", "lr", "data", "scratch-layers", "device", "batch-too-big"])
def test_cli_errors(tmp_path, capsys, argv, words):
    assert cli.main(["train", "--out", str(tmp_path), "--no-progress"] + argv) == 2
    assert words in capsys.readouterr().err


def test_bidirectional_model_shapes():
    net = build_model(TrainConfig(bidirectional=True, layers=2, hidden=8), 28, "cpu")
    y, (h, c) = net(torch.randint(0, 28, (3, 5)), net.begin_state(3, "cpu"))
    assert y.shape == (15, 28) and h.shape == (4, 3, 8)


def test_torchrun_two_ranks_stay_identical(tmp_path):
    """torchrun with 2 CPU processes (gloo): a few steps of DDP training, ranks end identical and
    only rank 0 writes files."""
    import json
    import socket
    import subprocess
    import sys
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), "-m", "lstm_fast", "train", "--epochs", "2", "--hidden", "16",
           "--batch-size", "8", "--num-steps", "10", "--max-tokens", "2000", "--no-progress", "--out", str(tmp_path)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    assert p.stdout.count("perplexity") == 1, "only rank 0 prints the closing line"
    info = json.loads((tmp_path / "distributed.json").read_text())
    assert info == {"world_size": 2, "ranks_max_param_difference": 0.0}
    assert load_checkpoint(tmp_path)["epoch"] == 2


def test_distributed_batch_must_split_evenly(tmp_path, monkeypatch):
    import torch.distributed as dist
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setattr(dist, "init_process_group", lambda *a, **k: None)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda: 0)
    monkeypatch.setattr(dist, "get_world_size", lambda: 3)
    with pytest.raises(ValueError, match="divisible"):
        train(TrainConfig(epochs=1, **SMALL), out_dir=tmp_path, progress=False, log=lambda *_: None)


TINY = ["--hidden", "16", "--batch-size", "8", "--num-steps", "10", "--max-tokens", "2000", "--no-progress"]


def test_huge_learning_rate_is_no_traceback(tmp_path, capsys):
    """--lr 1e3 makes the loss enormous: math.exp must not overflow into a traceback."""
    rc = cli.main(["train", "--lr", "1e3", "--epochs", "2", "--out", str(tmp_path)] + TINY)
    err = capsys.readouterr().err
    assert rc in (0, 2) and "Traceback" not in err
    if rc == 2:
        assert "diverged" in err and "--lr" in err


def test_diverged_training_keeps_the_saved_run(tmp_path, monkeypatch, capsys):
    """A non-finite loss stops the run with a clear error, and the last good checkpoint is not
    replaced by NaN weights."""
    from lstm_fast.d2l import train as train_mod
    assert cli.main(["train", "--epochs", "10", "--out", str(tmp_path)] + TINY) == 0
    before = (tmp_path / "checkpoint.pt").read_bytes()
    real = train_mod.train_epoch

    def poisoned(net, *a, **k):
        with torch.no_grad():
            next(net.parameters()).fill_(float("nan"))
        return real(net, *a, **k)

    monkeypatch.setattr(train_mod, "train_epoch", poisoned)
    assert cli.main(["train", "--resume", str(tmp_path), "--epochs", "12"] + TINY[-1:]) == 2
    err = capsys.readouterr().err
    assert "diverged" in err and "--lr" in err and "Traceback" not in err
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


def test_resume_continues_exactly_as_one_run(tmp_path):
    """2 epochs, then --resume to 5, gives bitwise the weights and perplexities of 5 epochs in one
    run: the saved weights, optimizer and random states (the loader's offsets) are really restored."""
    cfg = dict(SMALL, hidden=16, max_tokens=2000)
    whole = train(TrainConfig(epochs=5, **cfg), out_dir=tmp_path / "whole", progress=False, log=lambda *_: None)
    train(TrainConfig(epochs=2, **cfg), out_dir=tmp_path / "split", progress=False, log=lambda *_: None)
    resumed = train(TrainConfig(epochs=5, **cfg), resume=tmp_path / "split", progress=False, log=lambda *_: None)
    assert [h["perplexity"] for h in resumed["history"]] == [h["perplexity"] for h in whole["history"]]
    a, b = load_checkpoint(tmp_path / "whole")["model"], load_checkpoint(tmp_path / "split")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_honours_changeable_flags_and_refuses_the_rest(tmp_path, capsys):
    run = str(tmp_path / "run")
    assert cli.main(["train", "--epochs", "2", "--lr", "0.5", "--out", run] + TINY) == 0
    capsys.readouterr()
    # no --epochs: continue to the saved target (2), not to the default 500
    assert cli.main(["train", "--resume", run, "--no-progress"]) == 0
    assert load_checkpoint(run)["epoch"] == 2 and load_checkpoint(run)["config"].lr == 0.5
    # changeable flags are applied
    assert cli.main(["train", "--resume", run, "--epochs", "3", "--lr", "0.25", "--clip", "2", "--no-progress"]) == 0
    ck = load_checkpoint(run)
    assert ck["epoch"] == 3 and ck["config"].lr == 0.25 and ck["config"].clip == 2.0
    assert ck["optimizer"]["param_groups"][0]["lr"] == 0.25
    capsys.readouterr()
    # the rest are refused, naming the flag; the run is untouched
    before = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    for argv, flag in ((["--hidden", "32"], "--hidden"), (["--model", "torch"], "--model"),
                       (["--batch-size", "4"], "--batch-size"), (["--epochs", "1"], "--epochs")):
        assert cli.main(["train", "--resume", run, "--no-progress"] + argv) == 2
        assert flag in capsys.readouterr().err
    # the same value as saved is not a change
    assert cli.main(["train", "--resume", run, "--hidden", "16", "--no-progress"]) == 0
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == before


def test_resume_into_another_folder_leaves_the_saved_run(tmp_path):
    train(TrainConfig(epochs=2, **SMALL), out_dir=tmp_path / "a", progress=False, log=lambda *_: None)
    before = (tmp_path / "a" / "checkpoint.pt").read_bytes()
    assert cli.main(["train", "--resume", str(tmp_path / "a"), "--epochs", "3", "--out", str(tmp_path / "b"),
                     "--no-progress"]) == 0
    assert (tmp_path / "a" / "checkpoint.pt").read_bytes() == before
    assert load_checkpoint(tmp_path / "b")["epoch"] == 3


def test_out_must_be_a_folder_without_another_run(tmp_path, capsys):
    f = tmp_path / "file.txt"
    f.write_text("mine")
    assert cli.main(["train", "--epochs", "1", "--out", str(f)] + TINY) == 2
    assert "--out" in capsys.readouterr().err and f.read_text() == "mine"
    assert cli.main(["train", "--epochs", "1", "--out", str(tmp_path / "run")] + TINY) == 0
    before = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    assert cli.main(["train", "--epochs", "1", "--seed", "3", "--out", str(tmp_path / "run")] + TINY) == 2
    assert "--resume" in capsys.readouterr().err
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == before
