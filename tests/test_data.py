"""The d2l text pipeline's semantics: cleaning, tokens, Vocab, and both minibatch iterators."""
import random

import pytest
import torch

from lstm_fast.d2l import data


def test_bundled_text_cleaned():
    lines = data.read_text()
    assert lines[0] == "the time machine by h g wells"
    assert all(set(line) <= set("abcdefghijklmnopqrstuvwxyz ") for line in lines)


def test_vocab_semantics():
    tokens = data.tokenize(["b a a", "c a b"], "word")
    v = data.Vocab(tokens, min_freq=2, reserved_tokens=["<pad>"])
    assert v.idx_to_token[:2] == ["<unk>", "<pad>"]
    assert v.idx_to_token[2:] == ["a", "b"]          # by frequency; c (freq 1) dropped by min_freq
    assert v["c"] == v.unk == 0 and v[["a", "b"]] == [2, 3]
    assert v.to_tokens([2, 3]) == ["a", "b"]
    assert data.Vocab.from_state_dict(v.state_dict()).token_to_idx == v.token_to_idx


def test_corpus_char_and_word():
    corpus, vocab = data.load_corpus()
    assert len(corpus) == 10000 and len(vocab) == 28 and vocab.idx_to_token[1] == " "
    full, _ = data.load_corpus(max_tokens=-1)
    assert len(full) > 170000
    words, wv = data.load_corpus(max_tokens=-1, token="word")
    assert wv.idx_to_token[1] == "the"


@pytest.mark.parametrize("bs,steps", [(2, 5), (3, 4), (32, 35)], ids=["B2-T5", "B3-T4", "B32-T35"])
def test_random_iter(bs, steps):
    corpus = list(range(200)) if bs < 32 else list(range(5000))
    seen = []
    for X, Y in data.seq_data_iter_random(corpus, bs, steps, random.Random(1)):
        assert X.shape == Y.shape == (bs, steps)
        assert torch.equal(Y[:, :-1], X[:, 1:]) and torch.equal(Y, X + 1)   # Y is X shifted by one
        seen += [tuple(r.tolist()) for r in X]
    starts = sorted(r[0] for r in seen)
    assert all(b - a >= steps for a, b in zip(starts, starts[1:])), "subsequences overlap"


@pytest.mark.parametrize("bs,steps", [(2, 5), (3, 4)], ids=["B2-T5", "B3-T4"])
def test_sequential_iter_batches_continue(bs, steps):
    corpus = list(range(100))
    batches = list(data.seq_data_iter_sequential(corpus, bs, steps, random.Random(3)))
    assert len(batches) >= 2
    for (X1, Y1), (X2, _) in zip(batches, batches[1:]):
        assert X1.shape == (bs, steps)
        assert torch.equal(Y1, X1 + 1)
        assert torch.equal(X2[:, 0], X1[:, -1] + 1), "row i of batch k+1 continues row i of batch k"


@pytest.mark.parametrize("random_iter", [False, True], ids=["sequential", "random"])
@pytest.mark.parametrize("n,bs,steps", [(10000, 32, 35), (997, 3, 7), (90, 2, 29), (41, 1, 1)],
                         ids=["d2l", "odd", "one-batch", "B1-T1"])
def test_loader_gives_d2ls_batches(n, bs, steps, random_iter):
    """SeqDataLoader (the corpus a tensor once) against d2l's iterators on the list, from equal
    seeds, over three epochs: the same batches, in order, as int64, and the same rng state after."""
    corpus = [random.Random(n).randrange(28) for _ in range(n)]
    ours = data.SeqDataLoader(corpus, bs, steps, random_iter, seed=11)
    ref_rng = random.Random(11)
    ref_fn = data.seq_data_iter_random if random_iter else data.seq_data_iter_sequential
    for epoch in range(3):
        got, want = list(ours), list(ref_fn(corpus, bs, steps, ref_rng))
        assert len(got) == len(want) > 0, epoch
        for (X, Y), (Xr, Yr) in zip(got, want):
            assert X.dtype == Y.dtype == torch.int64
            assert torch.equal(X, Xr) and torch.equal(Y, Yr), epoch
    assert ours.rng.getstate() == ref_rng.getstate()
    for X, Y in ours:   # batches changed in place leave the corpus as it was
        X.zero_()
        Y.zero_()
    assert ours.tokens.tolist() == corpus


@pytest.mark.parametrize("content,words", [(None, "no such file"), (b"", "empty"), (b"\xff\xfe\x00bad", "UTF-8")],
                         ids=["missing", "empty", "undecodable"])
def test_bad_data_files(tmp_path, content, words):
    p = tmp_path / "text.txt"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(ValueError, match=words) as info:
        data.read_text(p)
    assert str(p) in str(info.value)
