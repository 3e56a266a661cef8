"""Where one training step of ``lstm-fast train`` spends its time, phase by phase.

    python benchmarks/train_step_profile.py --threads 1 [--model fused|torch] [--epochs 6]

d2l's recipe (batch 32, 35 steps, 256 hidden, SGD lr 1, clip 1) on the bundled text; every batch
of an epoch runs the phases of ``lstm_fast.d2l.train.train_epoch`` one at a time, each timed with
``perf_counter`` (CPU: every op is synchronous): state detach, input encoding, LSTM forward,
output layer, loss, zero_grad, the head's backward (loss and linear, down to dY), the LSTM's
backward, clipping, SGD. The first two epochs warm up; the medians over the rest are printed. The
head's backward is split from the LSTM's by differentiating to the LSTM output first, so the
linear layer's weight gradient is counted in "head backward (params)".
"""
import argparse
import statistics
import time

import torch
from torch import nn

from lstm_fast.d2l.data import SeqDataLoader, load_corpus
from lstm_fast.d2l.train import TrainConfig, build_model, clip_gradients


def profile(model="fused", epochs=6, threads=1):
    torch.set_num_threads(threads)
    corpus, vocab = load_corpus(max_tokens=10000)
    torch.manual_seed(0)
    net = build_model(TrainConfig(model=model), len(vocab), "cpu")
    opt = torch.optim.SGD(net.parameters(), lr=1)
    loss_fn = nn.CrossEntropyLoss()
    params = list(net.parameters())
    batches = list(SeqDataLoader(corpus, 32, 35, seed=0))
    phases = {}

    def tick(name, t0):
        t = time.perf_counter()
        phases.setdefault(name, []).append(t - t0)
        return t

    for epoch in range(epochs):
        if epoch == 2:
            phases.clear()
        state = net.begin_state(32, "cpu")
        for X, Y in batches:
            t = time.perf_counter()
            state = tuple(s.detach() for s in state)
            t = tick("state detach", t)
            y = Y.T.reshape(-1)
            inp = net.encode(X)
            t = tick("input encoding", t)
            out, state = net.run_rnn(inp, state)
            t = tick("LSTM forward", t)
            y_hat = net.linear(out.reshape(-1, out.shape[-1]))
            t = tick("output layer", t)
            loss = loss_fn(y_hat, y)
            t = tick("loss", t)
            opt.zero_grad(set_to_none=True)
            t = tick("zero_grad", t)
            (d_out,) = torch.autograd.grad(loss, out, retain_graph=True)
            t = tick("head backward (to dY)", t)
            loss.backward(inputs=[net.linear.weight, net.linear.bias], retain_graph=True)
            t = tick("head backward (params)", t)
            torch.autograd.backward([out], [d_out])
            t = tick("LSTM backward (+ encoding's)", t)
            clip_gradients(params, 1.0)
            t = tick("clip", t)
            opt.step()
            t = tick("SGD", t)
    return {k: statistics.median(v) for k, v in phases.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="fused", choices=("fused", "torch"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=6)
    a = ap.parse_args(argv)
    med = profile(a.model, a.epochs, a.threads)
    total = sum(med.values())
    print(f"{a.model}, {a.threads} thread(s): one step {total * 1e3:.2f} ms (sum of phase medians)")
    for k, v in med.items():
        print(f"  {k:30s} {v * 1e3:7.3f} ms  {100 * v / total:5.1f}%")


if __name__ == "__main__":
    main()
