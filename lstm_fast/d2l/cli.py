"""``lstm-fast`` (also ``python -m lstm_fast``): ``train`` the d2l experiment, ``generate`` text,
``bench`` the implementations."""
import argparse
import shlex
import sys
from dataclasses import fields

from .train import MODELS, PRECISIONS, TrainConfig


def _train(a):
    from .train import train
    cfg = TrainConfig(model=a.model, hidden=a.hidden, layers=a.layers, bidirectional=a.bidirectional,
                      batch_size=a.batch_size, num_steps=a.num_steps, lr=a.lr, clip=a.clip,
                      epochs=a.epochs, max_tokens=a.max_tokens, token=a.token, random_iter=a.random_iter,
                      seed=a.seed, data=a.data or "", device=a.device,
                      precision=a.precision)
    r = train(cfg, out_dir=a.out, resume=a.resume, progress=not a.no_progress, given=getattr(a, "given", None))
    if r["rank"] != 0:
        return
    print(f"perplexity {r['perplexity']:.1f}, {r['tokens_per_sec']:.1f} tokens/sec on {r['device']}")
    print(r["time traveller"])
    print(r["traveller"])
    print(f"(checkpoint, metrics.csv and perplexity.png in {r['out_dir']})", file=sys.stderr)


def _generate(a):
    import torch

    from .data import Vocab
    from .generate import predict
    from .train import build_model, load_checkpoint, resolve_device
    ckpt = load_checkpoint(a.checkpoint)
    cfg = ckpt["config"]
    device = resolve_device(a.device)
    vocab = Vocab.from_state_dict(ckpt["vocab"])
    net = build_model(cfg, len(vocab), device)
    net.load_state_dict(ckpt["model"])
    if a.num_preds < 0:
        raise ValueError(f"--num-preds must be >= 0, got {a.num_preds}")
    if a.temperature < 0:
        raise ValueError(f"--temperature must be >= 0, got {a.temperature}")
    gen = torch.Generator().manual_seed(a.seed)
    print(predict(a.prefix, a.num_preds, net, vocab, device, a.temperature, cfg.token, gen))


def _bench(a):
    import torch

    from .bench import (IMPLEMENTATIONS, MODES, environment, format_table, matmul_peak, measure_set, plot, shape_set,
                        with_ratios, write_json)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if a.device != "all":
        if a.device == "cuda" and "cuda" not in devices:
            raise ValueError("--device cuda: no CUDA device is available")
        devices = [a.device]
    if "cuda" not in devices:
        print("no GPU here: measuring the CPU only", file=sys.stderr)
    if a.threads is not None:
        if a.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {a.threads}")
        torch.set_num_threads(a.threads)
    shapes = shape_set(a.shapes)
    impls = [i for i in a.impl.split(",") if i]
    bad = [i for i in impls if i not in IMPLEMENTATIONS]
    if bad:
        raise ValueError(f"--impl: unknown {bad}; choose from {IMPLEMENTATIONS}")
    rows, peaks = [], []
    for device in devices:
        peaks.append(matmul_peak(device, n=a.peak_size))   # the float32 GEMM peak, in the same run
        for (B, T, D, H) in shapes:
            for mode in MODES:   # the implementations interleaved, round by round
                rows.extend(measure_set(impls, B, T, D, H, mode, device, budget_s=a.budget, rounds=a.rounds))
    print(format_table(rows, peaks))
    if a.json:
        write_json(a.json, environment(devices[-1]), with_ratios(rows, peaks), extra={"peaks": peaks},
                   command=shlex.join(["lstm-fast", *a.argv]))
    if a.plot:
        plot(rows, a.plot)


def build_parser(explicit_only=False):
    """The CLI. ``explicit_only``: train's flags default to nothing, so parsing tells which flags
    the user actually gave (what --resume may apply or must refuse)."""
    d = TrainConfig()
    p = argparse.ArgumentParser(prog="lstm-fast", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train d2l's LSTM language model on The Time Machine",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("--model", choices=MODELS, default=d.model, help="recurrent layer: FusedLSTM, nn.LSTM or the d2l scratch LSTM")
    t.add_argument("--hidden", type=int, default=d.hidden)
    t.add_argument("--layers", type=int, default=d.layers)
    t.add_argument("--bidirectional", action="store_true", help="allowed, but a bidirectional LM cannot predict")
    t.add_argument("--batch-size", type=int, default=d.batch_size)
    t.add_argument("--num-steps", type=int, default=d.num_steps)
    t.add_argument("--lr", type=float, default=d.lr)
    t.add_argument("--clip", type=float, default=d.clip, help="gradient clipping norm")
    t.add_argument("--epochs", type=int, default=d.epochs)
    t.add_argument("--max-tokens", type=int, default=d.max_tokens, help="-1 for the whole text")
    t.add_argument("--token", choices=("char", "word"), default=d.token)
    t.add_argument("--random-iter", action="store_true", help="random sampling (state re-initialised per batch)")
    t.add_argument("--seed", type=int, default=d.seed)
    t.add_argument("--data", help="a UTF-8 text file to train on instead of the bundled Time Machine")
    t.add_argument("--device", default=d.device, help="auto, cpu or cuda")
    t.add_argument("--precision", choices=PRECISIONS, default=d.precision,
                   help="bf16: mixed precision under torch.autocast (bf16 matmuls, float32 parameters)")
    t.add_argument("--out", help="output folder (default runs/<timestamp>)")
    t.add_argument("--resume", metavar="DIR", help="continue the run saved in DIR")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=_train)
    if explicit_only:
        for action in t._actions:
            action.default = argparse.SUPPRESS
    g = sub.add_parser("generate", help="continue a prefix with a trained checkpoint",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g.add_argument("--checkpoint", required=True, help="checkpoint.pt or the run folder holding it")
    g.add_argument("--prefix", default="time traveller")
    g.add_argument("--num-preds", type=int, default=50)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy; > 0 samples")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="cpu")
    g.set_defaults(func=_generate)
    b = sub.add_parser("bench", help="tokens/sec of scratch, nn.LSTM and FusedLSTM on this machine",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    b.add_argument("--device", default="all", choices=("all", "cpu", "cuda"))
    b.add_argument("--shapes", default="d2l", choices=("tiny", "d2l", "cpu", "grid"),
                   help="d2l: B32 T35 D28 H256; cpu: d2l and B64 T100 D128 H512; grid: B x H x T")
    b.add_argument("--impl", default="scratch,torch,fused", help="comma-separated implementations")
    b.add_argument("--budget", type=float, default=1.0, help="seconds of repeats per implementation and case")
    b.add_argument("--rounds", type=int, default=7, help="rounds of interleaved timing (median and IQR over them)")
    b.add_argument("--threads", type=int, help="torch threads (default: torch's own choice); recorded with the results")
    b.add_argument("--peak-size", type=int, default=2048,
                   help="n of the n x n torch.mm that measures the GEMM peak each row's %% of peak is read against")
    b.add_argument("--json", help="also write the rows (and the environment) as JSON here")
    b.add_argument("--plot", help="also draw a bar chart (PNG) here")
    b.set_defaults(func=_bench)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)   # recorded with results (lstm-fast bench --json)
    if args.command == "train":
        flags = vars(build_parser(explicit_only=True).parse_args(argv))
        names = {f.name for f in fields(TrainConfig)}
        args.given = sorted(names & set(flags))
    try:
        args.func(args)
    except (ValueError, RuntimeError) as e:
        print(f"lstm-fast: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
