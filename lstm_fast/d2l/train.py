"""The main job: d2l's LSTM language model on The Time Machine (``train_ch8`` semantics), fast.

Model: one-hot tokens -> recurrent layer (``fused`` = FusedLSTM, ``torch`` = nn.LSTM, ``scratch`` =
the d2l reference) -> linear head. Recipe (d2l's defaults): batch 32, 35 steps, 256 hidden, SGD
lr 1, gradient clipping at norm 1, 500 epochs, sequential partitioning with the state carried and
detached between batches.

Speed habits: the loss is summed on the device and read once per epoch (no host sync per batch);
clipping is two foreach kernels and no branch on the host; the closing tokens/sec counts all
epochs' wall time.

Under ``torchrun`` (WORLD_SIZE > 1) the model is wrapped in DistributedDataParallel (gloo on CPU,
nccl on CUDA) and each rank trains on its own share of every batch's rows: rank r takes rows
[r*B/W, (r+1)*B/W), so sequential partitioning's state continuity holds per rank and the global
batch stays B. Gradients are averaged, so clipping sees the global gradient and all ranks take the
same step. Rank 0 alone writes files and prints.
"""
import csv
import io
import json
import math
import os
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .. import reference
from ..module import FusedLSTM
from ..ops.plan import native_input_projection
from .data import SeqDataLoader, load_corpus
from .files import atomic_write_bytes
from .generate import predict

CHECKPOINT_FORMAT = "lstm-fast-checkpoint-v1"
MODELS = ("fused", "torch", "scratch")
PRECISIONS = ("fp32", "bf16")   # bf16: mixed precision (autocast), parameters and optimizer stay float32


@dataclass
class TrainConfig:
    model: str = "fused"
    hidden: int = 256
    layers: int = 1
    bidirectional: bool = False
    batch_size: int = 32
    num_steps: int = 35
    lr: float = 1.0
    clip: float = 1.0
    epochs: int = 500
    max_tokens: int = 10000
    token: str = "char"
    random_iter: bool = False
    seed: int = 0
    data: str = ""          # "" = the bundled Time Machine
    device: str = "auto"
    precision: str = "fp32"  # "bf16": the model runs under torch.autocast(dtype=torch.bfloat16)

    def validate(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.model not in MODELS:
            raise ValueError(f"--model must be one of {MODELS}, got {self.model!r}")
        for name in ("hidden", "layers", "batch_size", "num_steps", "epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"--lr must be a positive number, got {self.lr}")
        if not (self.clip > 0):
            raise ValueError(f"--clip must be > 0, got {self.clip}")
        if self.model == "scratch" and (self.layers != 1 or self.bidirectional):
            raise ValueError("--model scratch is d2l's single-layer, one-direction LSTM")


class ScratchLSTM(nn.Module):
    """The d2l scratch LSTM (:func:`lstm_fast.reference.lstm`) as a layer with nn.LSTM's interface."""

    num_layers, bidirectional = 1, False

    def __init__(self, input_size, hidden_size):
        super().__init__()
        self.hidden_size = hidden_size
        init = nn.LSTM(input_size, hidden_size)  # the same initialisation as the other two models
        for name, t in zip(reference.GATE_NAMES, reference.lstm_state_dict_to_scratch(init.state_dict()), strict=True):
            self.register_parameter(name, nn.Parameter(t))

    def forward(self, X, state):
        params = [getattr(self, n) for n in reference.GATE_NAMES]
        Y, (H, C) = reference.lstm(X, (state[0][0], state[1][0]), params)
        return Y.reshape(X.shape[0], X.shape[1], -1), (H.unsqueeze(0), C.unsqueeze(0))


class RNNModel(nn.Module):
    """d2l's RNNModel: one-hot input, a recurrent layer, a linear head over its outputs.

    With FusedLSTM and a vocabulary of at least :attr:`GATHER_MIN_VOCAB` tokens the one-hot
    input is never built where the layer takes an input projection natively (float32 CPU,
    :func:`lstm_fast.ops.plan.native_input_projection`): ``one_hot(x) W_ih^T`` is row ``x`` of
    ``W_ih^T``, so the first layer gets ``F.embedding(tokens, W_ih^T)`` (a row gather) and skips
    its input GEMM; the gradient reaching ``W_ih`` is the embedding's scatter-add of the gate
    gradients. The same numbers as the one-hot GEMM, up to float32 rounding. Elsewhere (small
    vocabularies, bf16 autocast, CUDA, generation's batch-1 steps) the one-hot input."""

    #: Below this vocabulary the one-hot input GEMM (D = V) is cheaper than writing, reading and
    #: scatter-adding a materialized (T, B, 4H) projection. Measured (FusedLSTM training step at
    #: T35 B32 H256, 1 thread, 45 interleaved calls, shared machine): gather over one-hot 0.94x
    #: at V = 28 (d2l's characters), 1.02x at 48, 1.07x at 96; a whole epoch with word tokens
    #: (V = 4580) 1.81x.
    GATHER_MIN_VOCAB = 48

    def __init__(self, rnn, vocab_size):
        super().__init__()
        self.rnn, self.vocab_size = rnn, vocab_size
        self.num_directions = 2 if rnn.bidirectional else 1
        self.linear = nn.Linear(rnn.hidden_size * self.num_directions, vocab_size)

    def _gathers(self, inputs):
        """Whether :meth:`encode` gathers the first layer's input projection for ``inputs``."""
        if not isinstance(self.rnn, FusedLSTM) or self.vocab_size < self.GATHER_MIN_VOCAB:
            return False
        w_hh = self.rnn.weight_hh_l0
        shape = (inputs.shape[1], inputs.shape[0], w_hh.shape[0])
        return native_input_projection(w_hh.dtype, w_hh.device, shape, w_hh, self.rnn.backend)

    def encode(self, inputs):
        """The recurrent layer's input for tokens ``inputs`` (B, T): ``(x, projected)``, x the
        one-hot vectors (T, B, V), or (projected) the first layer's input projection
        (T, B, dirs * 4H) gathered from ``W_ih^T``."""
        if self._gathers(inputs):
            table = self.rnn.first_layer_input_weight().t().contiguous()   # (V, dirs * 4H): rows gather fast
            return F.embedding(inputs.T.long(), table), True
        return F.one_hot(inputs.T.long(), self.vocab_size).to(self.linear.weight.dtype), False

    def run_rnn(self, encoded, state):
        """The recurrent layer on :meth:`encode`'s result: (outputs (T, B, H*dirs), state)."""
        x, projected = encoded
        return self.rnn(x, state, input_projection=True) if projected else self.rnn(x, state)

    def forward(self, inputs, state):
        Y, state = self.run_rnn(self.encode(inputs), state)
        return self.linear(Y.reshape(-1, Y.shape[-1])), state

    def begin_state(self, batch_size, device):
        shape = (self.num_directions * self.rnn.num_layers, batch_size, self.rnn.hidden_size)
        return (torch.zeros(shape, device=device), torch.zeros(shape, device=device))


def build_model(cfg: TrainConfig, vocab_size: int, device) -> RNNModel:
    if cfg.model == "scratch":
        rnn = ScratchLSTM(vocab_size, cfg.hidden)
    else:
        cls = FusedLSTM if cfg.model == "fused" else nn.LSTM
        rnn = cls(vocab_size, cfg.hidden, num_layers=cfg.layers, bidirectional=cfg.bidirectional)
    return RNNModel(rnn, vocab_size).to(device)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    return torch.device(name)


def clip_gradients(params, theta):
    """d2l's ``grad_clipping``: scale all gradients by theta/norm when the global norm exceeds
    theta. Foreach kernels and a device-side min, so no host sync and no per-parameter loop."""
    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    torch._foreach_mul_(grads, torch.clamp(theta / norm, max=1.0))


# ----------------------------------------------------------------------------------- files
def save_checkpoint(path, net, opt, vocab, cfg, epoch, history, loader=None):
    """Everything a resumed run needs to continue exactly as an uninterrupted one would: weights,
    optimizer, config, history, and the random states (the loader's offsets, torch's dropout)."""
    buf = io.BytesIO()
    rng = {"torch": torch.get_rng_state()}
    if loader is not None:
        rng["loader"] = loader.rng.getstate()
    torch.save({"format": CHECKPOINT_FORMAT, "config": asdict(cfg), "epoch": epoch,
                "model": net.state_dict(), "optimizer": opt.state_dict(),
                "vocab": vocab.state_dict(), "history": history, "rng": rng}, buf)
    atomic_write_bytes(path, buf.getvalue())


def _as_tuples(x):
    """A random.Random state as getstate() gives it (tuples), from however it was stored."""
    return tuple(_as_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def load_checkpoint(path):
    """Load a checkpoint safely (``weights_only=True``: no code from the file runs)."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise ValueError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt, truncated, or holding objects weights_only refuses
        raise ValueError(f"{path} is not a readable lstm-fast checkpoint ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not an lstm-fast checkpoint (expected format {CHECKPOINT_FORMAT})")
    known = {f.name for f in fields(TrainConfig)}
    ckpt["config"] = TrainConfig(**{k: v for k, v in ckpt["config"].items() if k in known})
    return ckpt


# Flags a resumed run may change; every other setting is the saved run's (a different model,
# data or batching would not be a continuation of it).
RESUMABLE = ("epochs", "lr", "clip", "device", "precision")


def resume_config(saved: TrainConfig, requested: TrainConfig, given, done: int) -> TrainConfig:
    """The config a resumed run continues with: the saved one, with the ``given`` settings of
    ``requested`` that may change (:data:`RESUMABLE`). A given setting that cannot change and
    differs from the saved one is an error, never silently dropped. ``given``: the names the user
    set explicitly (None: all of them). Without a given ``epochs`` the run continues to the saved
    target, so resuming a finished run trains nothing."""
    names = [f.name for f in fields(TrainConfig)] if given is None else list(given)
    cfg = replace(saved)
    fixed = []
    for name in names:
        want = getattr(requested, name)
        if name in RESUMABLE:
            setattr(cfg, name, want)
        elif want != getattr(saved, name):
            fixed.append(f"--{name.replace('_', '-')} (saved {getattr(saved, name)!r}, given {want!r})")
    if fixed:
        raise ValueError("--resume continues the saved run, whose settings cannot change: " + ", ".join(fixed)
                         + f"; only {', '.join('--' + n for n in RESUMABLE)} may. Start a new run (--out) instead")
    if cfg.epochs < done:
        raise ValueError(f"--epochs {cfg.epochs}: the checkpoint has already trained {done} epochs")
    return cfg


class TrainingDiverged(ValueError):
    """The mean loss of an epoch is not finite: the weights are ruined and must not be saved."""


def check_out_dir(out_dir: Path, resuming_from=None):
    """Refuse an output path that is a file, or a folder holding another saved run (writing there
    would replace that run's checkpoint)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is a file; give a folder for the checkpoint, metrics and plot")
    ckpt = out_dir / "checkpoint.pt"
    if ckpt.exists() and (resuming_from is None or ckpt.resolve() != Path(resuming_from).resolve()):
        raise ValueError(f"--out {out_dir} already holds a saved run (checkpoint.pt); continue it with "
                         f"--resume {out_dir} or choose another folder")


def write_metrics(out_dir: Path, history):
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["epoch", "perplexity", "tokens_per_sec"])
    for row in history:
        w.writerow([row["epoch"], f"{row['perplexity']:.6f}", f"{row['tokens_per_sec']:.1f}"])
    atomic_write_bytes(out_dir / "metrics.csv", buf.getvalue().encode())


def plot_perplexity(out_dir: Path, history):
    """The curve d2l's Animator draws: perplexity per epoch."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.plot([r["epoch"] for r in history], [r["perplexity"] for r in history])
    ax.set_xlabel("epoch")
    ax.set_ylabel("perplexity")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(out_dir / "perplexity.png", buf.getvalue())
    return True


# ----------------------------------------------------------------------------------- training
def train_epoch(net, loader, loss_fn, opt, device, cfg, forward=None, shard=(0, 1)):
    """One epoch; returns (perplexity, tokens/sec), over all ranks when distributed. One host
    sync (and, distributed, one all-reduce) at the end. ``forward``: the DDP wrapper of ``net``;
    ``shard``: (rank, world), this rank's share of each batch's rows."""
    forward = forward or net
    rank, world = shard
    state = None
    total = torch.zeros((), device=device)
    tokens = 0
    params = [p for p in net.parameters() if p.requires_grad]
    start = time.perf_counter()
    for X, Y in loader:
        if world > 1:
            rows = X.shape[0] // world
            X, Y = X[rank * rows:(rank + 1) * rows], Y[rank * rows:(rank + 1) * rows]
        X, Y = X.to(device, non_blocking=True), Y.to(device, non_blocking=True)
        if state is None or cfg.random_iter:
            state = net.begin_state(X.shape[0], device)
        else:
            state = tuple(s.detach() for s in state)
        y = Y.T.reshape(-1)
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
            y_hat, state = forward(X, state)
            loss = loss_fn(y_hat, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(params, cfg.clip)
        opt.step()
        total += loss.detach() * y.numel()
        tokens += y.numel()
    if world > 1:
        import torch.distributed as dist
        both = torch.stack((total, torch.tensor(float(tokens), device=device)))
        dist.all_reduce(both)
        total, tokens = both[0], int(both[1].item())
    mean_loss = total.item() / max(tokens, 1)
    if not math.isfinite(mean_loss):
        raise TrainingDiverged(f"training diverged: the mean loss is {mean_loss}; lower --lr (now {cfg.lr}) "
                               f"or --clip (now {cfg.clip})")
    ppl = math.exp(mean_loss) if mean_loss < 709.0 else math.inf   # math.exp overflows past ~709.78
    return ppl, tokens / (time.perf_counter() - start)


def init_distributed(device):
    """(rank, world, device) under torchrun (WORLD_SIZE > 1), else (0, 1, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, device
    import torch.distributed as dist
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def ranks_max_param_difference(net):
    """Largest absolute difference between any rank's parameters and rank 0's (0.0 when in sync)."""
    import torch.distributed as dist
    flat = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    return max(float((g - gathered[0]).abs().max()) for g in gathered)


def train(cfg: TrainConfig, out_dir=None, resume=None, log=print, progress=True, given=None):
    """Run (or resume) the experiment; returns a dict with the final perplexity, tokens/sec, the
    two continuations and the output folder.

    ``resume``: a run folder or checkpoint; the run continues exactly where it stopped (weights,
    optimizer, random states), with ``cfg``'s settings applied as :func:`resume_config` says
    (``given``: the names the user set; None: all of ``cfg``). It writes to ``out_dir`` when
    given (the saved run stays as it was), else back into the run's folder."""
    start_epoch, history, ckpt = 0, [], None
    if resume is not None:
        ckpt = load_checkpoint(resume)
        start_epoch, history = ckpt["epoch"], list(ckpt["history"])
        cfg = resume_config(ckpt["config"], cfg, given, start_epoch)
        saved = Path(resume) / "checkpoint.pt" if Path(resume).is_dir() else Path(resume)
        out_dir = saved.parent if out_dir is None else out_dir
    if out_dir is not None:
        check_out_dir(Path(out_dir), None if resume is None else saved)
    cfg.validate()
    device = resolve_device(cfg.device)
    rank, world, device = init_distributed(device)
    if world > 1:
        if cfg.batch_size % world:
            raise ValueError(f"--batch-size {cfg.batch_size} must be divisible by the {world} ranks")
        if rank != 0:
            progress, log = False, (lambda *_: None)
    torch.manual_seed(cfg.seed + start_epoch)
    corpus, vocab = load_corpus(cfg.data or None, cfg.max_tokens, cfg.token)
    if ckpt is not None and ckpt["vocab"]["idx_to_token"] != vocab.idx_to_token:
        raise ValueError(f"--resume: the checkpoint's vocabulary does not match the data {cfg.data or '(bundled)'}")
    if len(corpus) < cfg.batch_size * cfg.num_steps + cfg.num_steps + 1:
        raise ValueError(f"the text has {len(corpus)} tokens: too few for one batch of "
                         f"{cfg.batch_size} x {cfg.num_steps}; lower --batch-size/--num-steps or raise --max-tokens")
    loader = SeqDataLoader(corpus, cfg.batch_size, cfg.num_steps, cfg.random_iter, seed=cfg.seed + start_epoch)
    net = build_model(cfg, len(vocab), device)
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr)
    if ckpt is not None:
        net.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        for group in opt.param_groups:   # the saved optimizer state carries the saved lr
            group["lr"] = cfg.lr
        rng = ckpt.get("rng") or {}
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if "loader" in rng:
            loader.rng.setstate(_as_tuples(rng["loader"]))
    forward = None
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel
        forward = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.bidirectional:
        log("warning: a bidirectional model sees the future while training, so it cannot predict "
            "(d2l, 'Bidirectional Recurrent Neural Networks'); its continuations are meaningless")
    out_dir = Path(out_dir or Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
    writer = rank == 0
    if writer:
        out_dir.mkdir(parents=True, exist_ok=True)
    loss_fn = nn.CrossEntropyLoss()
    gen = lambda prefix: predict(prefix, 50, net, vocab, device, token=cfg.token)  # noqa: E731

    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=cfg.epochs, initial=start_epoch, desc=f"{cfg.model} on {device}", unit="epoch",
                   dynamic_ncols=True)
        log = bar.write
    elapsed = sum(r["tokens"] / r["tokens_per_sec"] for r in history if r["tokens_per_sec"] > 0)
    total_tokens = sum(r["tokens"] for r in history)
    tokens_per_epoch = len(loader) * cfg.batch_size * cfg.num_steps
    diverged = False
    try:
        for epoch in range(start_epoch, cfg.epochs):
            ppl, speed = train_epoch(net, loader, loss_fn, opt, device, cfg, forward, (rank, world))
            toks = tokens_per_epoch
            history.append({"epoch": epoch + 1, "perplexity": ppl, "tokens_per_sec": speed, "tokens": toks})
            elapsed += toks / speed
            total_tokens += toks
            if bar is not None:
                bar.set_postfix(ppl=f"{ppl:.2f}", tok_s=f"{speed:,.0f}")
                bar.update(1)
            if (epoch + 1) % 10 == 0 and writer:
                log(f"epoch {epoch + 1}: perplexity {ppl:.2f}; {gen('time traveller')}")
                save_checkpoint(out_dir / "checkpoint.pt", net, opt, vocab, cfg, epoch + 1, history, loader)
                write_metrics(out_dir, history)
    except TrainingDiverged as e:
        diverged = True     # the weights are NaN/Inf: keep the last good checkpoint, if any
        kept = f"; the last good checkpoint in {out_dir} is kept" if (out_dir / "checkpoint.pt").exists() else ""
        raise TrainingDiverged(f"{e} (epoch {len(history) + 1}){kept}") from None
    except KeyboardInterrupt:
        log(f"interrupted: saving the {len(history)} finished epochs to {out_dir}")
        raise
    finally:
        if bar is not None:
            bar.close()
        if len(history) > start_epoch and writer and not diverged:   # something new to save
            save_checkpoint(out_dir / "checkpoint.pt", net, opt, vocab, cfg, history[-1]["epoch"], history, loader)
            write_metrics(out_dir, history)
            plot_perplexity(out_dir, history)
    ppl = history[-1]["perplexity"]
    speed = total_tokens / elapsed if elapsed > 0 else 0.0
    result = {"perplexity": ppl, "tokens_per_sec": speed, "device": str(device), "out_dir": out_dir,
              "history": history, "rank": rank, "world_size": world}
    if world > 1:
        import gc

        import torch.distributed as dist
        result["ranks_max_param_difference"] = ranks_max_param_difference(net)
        del forward      # the DDP wrapper's reducer must go before its process group does
        gc.collect()
        if writer:
            atomic_write_bytes(out_dir / "distributed.json", json.dumps(
                {"world_size": world, "ranks_max_param_difference": result["ranks_max_param_difference"]}).encode())
        dist.barrier()   # tear down together: a rank leaving while another is mid-teardown aborts gloo
        dist.destroy_process_group()
    if writer:
        result.update({"time traveller": gen("time traveller"), "traveller": gen("traveller")})
    return result
