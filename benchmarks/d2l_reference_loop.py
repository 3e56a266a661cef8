"""A faithful d2l ``train_ch8`` epoch (Dive into Deep Learning, RNN chapter) with nn.LSTM, written
to d2l's semantics: per-batch ``state.detach_()``, mean loss, d2l's ``grad_clipping`` (a Python
loop over parameters with a host-side comparison), and the Accumulator's per-batch float() of the
loss (a host sync per batch). It is the baseline the main job's speed is measured against.
``predict_ch8`` is d2l's generation loop as the book writes it (no ``no_grad``: d2l builds the
autograd graph of every step), the baseline ``lstm-fast generate`` is measured against."""
import math
import time

import torch
from torch import nn

from lstm_fast.d2l import data


class D2LSeqDataLoader(data.SeqDataLoader):
    """d2l's ``SeqDataLoader``: its iterators (``lstm_fast.d2l.data.seq_data_iter_*``, d2l's code)
    run anew every epoch on the corpus as a Python list, building the epoch's tensors from it
    (the cost d2l's loop pays; the parent class gives the same batches from a tensor made once)."""

    def __iter__(self):
        fn = data.seq_data_iter_random if self.use_random_iter else data.seq_data_iter_sequential
        return fn(self.corpus, self.batch_size, self.num_steps, self.rng)


def grad_clipping(net, theta):
    params = [p for p in net.parameters() if p.requires_grad]
    norm = torch.sqrt(sum(torch.sum((p.grad ** 2)) for p in params))
    if norm > theta:
        for param in params:
            param.grad[:] *= theta / norm


def train_epoch_ch8(net, train_iter, loss, updater, device, use_random_iter=False):
    state, start = None, time.perf_counter()
    total, tokens = 0.0, 0
    for X, Y in train_iter:
        if state is None or use_random_iter:
            state = net.begin_state(X.shape[0], device)
        else:
            for s in state:
                s.detach_()
        y = Y.T.reshape(-1)
        X, y = X.to(device), y.to(device)
        y_hat, state = net(X, state)
        l = loss(y_hat, y.long()).mean()
        updater.zero_grad()
        l.backward()
        grad_clipping(net, 1)
        updater.step()
        total += float(l * y.numel())
        tokens += y.numel()
    return math.exp(total / tokens), tokens / (time.perf_counter() - start)


def predict_ch8(prefix, num_preds, net, vocab, device):
    """d2l's ``predict_ch8``: warm the state up on ``prefix``, then ``num_preds`` greedy characters."""
    state = net.begin_state(batch_size=1, device=device)
    outputs = [vocab[prefix[0]]]
    get_input = lambda: torch.tensor([outputs[-1]], device=device).reshape((1, 1))  # noqa: E731
    for y in prefix[1:]:
        _, state = net(get_input(), state)
        outputs.append(vocab[y])
    for _ in range(num_preds):
        y, state = net(get_input(), state)
        outputs.append(int(y.argmax(dim=1).reshape(1)))
    return "".join([vocab.idx_to_token[i] for i in outputs])


def d2l_setup(device, hidden=256, batch_size=32, num_steps=35, seed=0):
    """The d2l concise LSTM language model (nn.LSTM) on the bundled Time Machine."""
    from lstm_fast.d2l.train import RNNModel
    torch.manual_seed(seed)
    corpus, vocab = data.load_corpus()
    loader = D2LSeqDataLoader(corpus, batch_size, num_steps, seed=seed)
    net = RNNModel(nn.LSTM(len(vocab), hidden), len(vocab)).to(device)
    return net, loader, nn.CrossEntropyLoss(), torch.optim.SGD(net.parameters(), lr=1)
