"""An (h_0, c_0) whose dtypes differ from the parameters': FusedLSTM returns what nn.LSTM returns
(output dtypes included) or raises its RuntimeError (issue 19: same results, same exception class).

nn.LSTM's rule depends on the dtypes, on whether its oneDNN path runs (``torch.backends.mkldnn``,
the input's size, projections, equal packed lengths, grad mode for float16) and on the number of
steps and layers; lstm_fast writes it once, :func:`lstm_fast.ops.checks.mixed_state_dtypes`. Here
both the rule and FusedLSTM are checked against nn.LSTM itself, on fresh random inputs.
"""
import contextlib
import itertools

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from lstm_fast import FusedLSTM
from lstm_fast.ops.checks import mixed_state_dtypes, onednn_runs_lstm

DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
TOL = {torch.float32: 1e-4, torch.float64: 1e-9, torch.bfloat16: 5e-2, torch.float16: 1e-2}


@contextlib.contextmanager
def _mkldnn(enabled):
    old = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = enabled
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = old


def _case(p, h, c, T, layers, proj, bi, B, packed):
    kw = dict(num_layers=layers, proj_size=proj, bidirectional=bi, dtype=p)
    ref = nn.LSTM(3, 4, **kw)
    fused = FusedLSTM(3, 4, **kw)
    fused.load_state_dict(ref.state_dict())
    nd = layers * (2 if bi else 1)
    x = torch.randn(T, B, 3, dtype=torch.float64).to(p)
    if packed:
        lengths = [T] * B if packed == "equal" else [T] + [1] * (B - 1)
        x = pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=False)
    hx = (torch.randn(nd, B, proj or 4, dtype=torch.float64).to(h), torch.randn(nd, B, 4, dtype=torch.float64).to(c))
    return ref, fused, x, hx


def _outcome(mod, x, hx):
    try:
        y, (h_n, c_n) = mod(x, hx)
    except RuntimeError as e:
        return None, str(e)
    return (y.data if isinstance(y, PackedSequence) else y, h_n, c_n), None


GRID = [g for g in itertools.product(DTYPES, DTYPES, [True, False], [True, False], [None, "equal", "unequal"],
                                     [1, 2], [1, 2], [0, 2], [2])
        if not (g[4] == "unequal" and g[5] == 1)]


@pytest.mark.parametrize("p", DTYPES, ids=str)
def test_rule_is_nn_lstm_rule(p):
    """mixed_state_dtypes says exactly when nn.LSTM returns, and with which output dtypes, for every
    h_0 / c_0 dtype, oneDNN on and off, grad mode on and off, packed (equal and unequal lengths)
    or not, 1-2 steps and layers, with and without a projection, batch 0 and 2."""
    wrong = []
    for h, c, onednn_on, grad, packed, T, layers, proj, B in GRID + [(p, c, True, False, None, T, 1, 0, 0) for c in DTYPES for T in (1, 2)]:
        if h == c == p:
            continue
        ref, _, x, hx = _case(p, h, c, T, layers, proj, False, B, packed)
        with _mkldnn(onednn_on), torch.set_grad_enabled(grad):
            out, _ = _outcome(ref, x, hx)
            onednn = onednn_runs_lstm(p, "cpu", T * B * 3, proj, packed != "unequal")
            want = mixed_state_dtypes(p, h, c, onednn=onednn, steps=T, num_layers=layers, proj_size=proj)
        got = None if out is None else tuple(t.dtype for t in out)
        if got != want:
            wrong.append(((h, c, onednn_on, grad, packed, T, layers, proj, B), got, want))
    assert not wrong, f"{len(wrong)} combinations differ from nn.LSTM, e.g. {wrong[:5]}"


@pytest.mark.parametrize("p,h,c", [(p, h, c) for p, h, c in itertools.product(DTYPES[:3], DTYPES[:3], DTYPES[:3])
                                   if not h == c == p], ids=str)
def test_fused_lstm_as_nn_lstm(p, h, c):
    """FusedLSTM on the same weights and state: where nn.LSTM returns, the same dtypes and values
    (and every gradient, in its tensor's dtype); where nn.LSTM raises RuntimeError, RuntimeError."""
    torch.manual_seed(torch.seed() % 2**31)
    for onednn_on, (T, layers, proj, bi, B, packed) in itertools.product(
            [True, False], [(1, 1, 0, True, 3, None), (1, 1, 0, False, 2, "equal"), (3, 2, 0, True, 3, None),
                            (3, 1, 2, False, 2, None), (3, 1, 0, False, 3, "unequal"), (1, 1, 0, False, 0, None)]):
        ref, fused, x, hx = _case(p, h, c, T, layers, proj, bi, B, packed)
        hx = tuple(t.requires_grad_() for t in hx)
        with _mkldnn(onednn_on):
            r, _ = _outcome(ref, x, hx)
            f, msg = _outcome(fused, x, hx)
        where = f"oneDNN {onednn_on}, T={T} layers={layers} proj={proj} bi={bi} B={B} packed={packed}"
        if r is None:
            assert f is None, f"nn.LSTM raises, FusedLSTM returns ({where})"
            assert "hx[" in msg, msg
            continue
        assert f is not None, f"nn.LSTM returns, FusedLSTM raises {msg} ({where})"
        assert [t.dtype for t in f] == [t.dtype for t in r], where
        tol = TOL[p]
        for a, b in zip(r, f):
            torch.testing.assert_close(b.double(), a.double(), rtol=tol, atol=tol, msg=where)
        if B == 0:
            continue
        cot = [torch.randn_like(t, dtype=torch.float64).to(t.dtype) for t in r]
        params = list(ref.parameters())
        g_ref = torch.autograd.grad(r, [*hx, *params], cot)
        g_fused = torch.autograd.grad(f, [*hx, *fused.parameters()], cot)
        for a, b in zip(g_ref, g_fused):
            assert a.dtype == b.dtype, where
            torch.testing.assert_close(b.double(), a.double(), rtol=5 * tol, atol=5 * tol, msg=where)
