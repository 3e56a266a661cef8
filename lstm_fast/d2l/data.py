"""The d2l text pipeline (our code, d2l's semantics): read, clean, tokenize, Vocab, and the two
minibatch iterators (random sampling, sequential partitioning) of the language-model chapter.

The Time Machine ships inside the package (``lstm_fast/d2l/corpus/timemachine.txt``), so training needs
no network.
"""
import collections
import random
import re
from importlib import resources
from pathlib import Path

import torch

TIME_MACHINE_SHA1 = "090b5e7e70c295757f55df93cb0a180b9691891a"


def read_text(path=None):
    """Lines of a UTF-8 text file cleaned as d2l does (lowercase letters and spaces only).

    ``path=None`` reads the bundled Time Machine. A missing, empty or undecodable file is a
    ValueError naming the path.
    """
    if path is None:
        raw = resources.files("lstm_fast.d2l").joinpath("corpus/timemachine.txt").read_text(encoding="utf-8")
    else:
        p = Path(path)
        if not p.is_file():
            raise ValueError(f"--data: no such file: {p}")
        try:
            raw = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"--data: {p} is not UTF-8 text ({e.reason} at byte {e.start})") from None
        if not raw.strip():
            raise ValueError(f"--data: {p} is empty")
    lines = [re.sub("[^A-Za-z]+", " ", line).strip().lower() for line in raw.splitlines()]
    if not any(lines):
        raise ValueError(f"--data: {path or 'the bundled text'} has no letters to train on")
    return lines


def tokenize(lines, token="char"):
    """Split lines into word or char tokens (d2l's ``tokenize``)."""
    if token == "word":
        return [line.split() for line in lines]
    if token == "char":
        return [list(line) for line in lines]
    raise ValueError(f"token must be 'char' or 'word', got {token!r}")


def count_corpus(tokens):
    if tokens and isinstance(tokens[0], list):
        tokens = [tok for line in tokens for tok in line]
    return collections.Counter(tokens)


class Vocab:
    """Token <-> index. Index 0 is ``<unk>``, then reserved tokens, then tokens by descending
    frequency (ties in first-seen order, as d2l's stable sort gives), dropping those below min_freq."""

    def __init__(self, tokens=None, min_freq=0, reserved_tokens=None):
        tokens = tokens or []
        counter = count_corpus(tokens)
        self.token_freqs = sorted(counter.items(), key=lambda x: x[1], reverse=True)
        self.idx_to_token = ["<unk>"] + list(reserved_tokens or [])
        self.token_to_idx = {tok: i for i, tok in enumerate(self.idx_to_token)}
        for tok, freq in self.token_freqs:
            if freq < min_freq:
                break
            if tok not in self.token_to_idx:
                self.idx_to_token.append(tok)
                self.token_to_idx[tok] = len(self.idx_to_token) - 1

    def __len__(self):
        return len(self.idx_to_token)

    def __getitem__(self, tokens):
        if not isinstance(tokens, (list, tuple)):
            return self.token_to_idx.get(tokens, self.unk)
        return [self.__getitem__(t) for t in tokens]

    def to_tokens(self, indices):
        if not isinstance(indices, (list, tuple)):
            return self.idx_to_token[indices]
        return [self.idx_to_token[i] for i in indices]

    @property
    def unk(self):
        return 0

    def state_dict(self):
        """Plain lists, so a checkpoint loads with ``weights_only=True``."""
        return {"idx_to_token": list(self.idx_to_token)}

    @classmethod
    def from_state_dict(cls, state):
        v = cls()
        v.idx_to_token = list(state["idx_to_token"])
        v.token_to_idx = {t: i for i, t in enumerate(v.idx_to_token)}
        return v


def load_corpus(path=None, max_tokens=10000, token="char"):
    """(corpus token indices, vocab); ``max_tokens`` <= 0 keeps the whole text (d2l default 10000)."""
    tokens = tokenize(read_text(path), token)
    vocab = Vocab(tokens)
    corpus = [vocab[tok] for line in tokens for tok in line]
    if max_tokens > 0:
        corpus = corpus[:max_tokens]
    return corpus, vocab


def seq_data_iter_random(corpus, batch_size, num_steps, rng=random):
    """d2l's random sampling: non-overlapping subsequences from a random offset, shuffled."""
    corpus = corpus[rng.randint(0, num_steps - 1):]
    num_subseqs = (len(corpus) - 1) // num_steps
    initial_indices = list(range(0, num_subseqs * num_steps, num_steps))
    rng.shuffle(initial_indices)
    num_batches = num_subseqs // batch_size
    for i in range(0, batch_size * num_batches, batch_size):
        starts = initial_indices[i: i + batch_size]
        X = [corpus[j: j + num_steps] for j in starts]
        Y = [corpus[j + 1: j + 1 + num_steps] for j in starts]
        yield torch.tensor(X), torch.tensor(Y)


def seq_data_iter_sequential(corpus, batch_size, num_steps, rng=random):
    """d2l's sequential partitioning: batch i+1's rows continue batch i's rows."""
    offset = rng.randint(0, num_steps)
    num_tokens = ((len(corpus) - offset - 1) // batch_size) * batch_size
    Xs = torch.tensor(corpus[offset: offset + num_tokens]).reshape(batch_size, -1)
    Ys = torch.tensor(corpus[offset + 1: offset + 1 + num_tokens]).reshape(batch_size, -1)
    num_batches = Xs.shape[1] // num_steps
    for i in range(0, num_steps * num_batches, num_steps):
        yield Xs[:, i: i + num_steps], Ys[:, i: i + num_steps]


def batches_random(corpus, batch_size, num_steps, rng):
    """:func:`seq_data_iter_random` on ``corpus`` given as a 1-D int64 tensor: the same batches
    from the same ``rng`` draws, without building tensors from Python lists every epoch."""
    offset = rng.randint(0, num_steps - 1)
    num_subseqs = (len(corpus) - offset - 1) // num_steps
    initial_indices = list(range(0, num_subseqs * num_steps, num_steps))
    rng.shuffle(initial_indices)
    num_batches = num_subseqs // batch_size
    span = torch.arange(num_steps)
    for i in range(0, batch_size * num_batches, batch_size):
        rows = torch.tensor(initial_indices[i: i + batch_size]).unsqueeze(1) + (span + offset)
        yield corpus[rows], corpus[rows + 1]


def batches_sequential(corpus, batch_size, num_steps, rng):
    """:func:`seq_data_iter_sequential` on ``corpus`` given as a 1-D int64 tensor. The epoch's
    tensors are copies (10,000 tokens: microseconds), so a batch changed in place cannot change
    the corpus the next epochs read, as with d2l's fresh tensors."""
    offset = rng.randint(0, num_steps)
    num_tokens = ((len(corpus) - offset - 1) // batch_size) * batch_size
    Xs = corpus[offset: offset + num_tokens].reshape(batch_size, -1).clone()
    Ys = corpus[offset + 1: offset + 1 + num_tokens].reshape(batch_size, -1).clone()
    num_batches = Xs.shape[1] // num_steps
    for i in range(0, num_steps * num_batches, num_steps):
        yield Xs[:, i: i + num_steps], Ys[:, i: i + num_steps]


class SeqDataLoader:
    """Iterates minibatches (X, Y), each (batch_size, num_steps), over a corpus, anew each epoch.

    The batches d2l's iterators give from the same random draws (tests/test_data.py), from the
    corpus made a tensor once: d2l's iterators build ``torch.tensor`` from a 10,000-token list
    every epoch, 5.4 ms an epoch on the AMD EPYC, 4% of a d2l-shape epoch of 8 batches.
    ``benchmarks/d2l_reference_loop.py`` keeps d2l's own for its baseline."""

    def __init__(self, corpus, batch_size, num_steps, use_random_iter=False, seed=None):
        if batch_size < 1 or num_steps < 1:
            raise ValueError(f"batch_size and num_steps must be >= 1, got {batch_size}, {num_steps}")
        self.corpus, self.batch_size, self.num_steps = corpus, batch_size, num_steps
        self.tokens = torch.tensor(corpus, dtype=torch.int64)
        self.use_random_iter = use_random_iter
        self.data_iter_fn = batches_random if use_random_iter else batches_sequential
        self.rng = random.Random(seed)

    def __iter__(self):
        return self.data_iter_fn(self.tokens, self.batch_size, self.num_steps, self.rng)

    def __len__(self):
        """Batches per epoch (the largest count over offsets; the last may be one short)."""
        if not self.use_random_iter:
            return ((len(self.corpus) - 1) // self.batch_size) // self.num_steps
        return ((len(self.corpus) - 1) // self.num_steps) // self.batch_size
