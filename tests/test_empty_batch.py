"""Batch 0 (every option, projections included) returns what nn.LSTM returns: shapes, dtypes,
values and, where nn.LSTM gives them, gradients (issue 19 item 2)."""
import itertools

import pytest
import torch
from torch import nn

from lstm_fast import FusedLSTM

CASES = list(itertools.product((0, 2), (False, True), (1, 2), (False, True), (False, True),
                               (torch.float32, torch.float64)))


def _id(c):
    proj, bi, layers, bf, hx, dt = c
    return f"proj{proj}-{'bi' if bi else 'uni'}-L{layers}-{'bf' if bf else 'tf'}-{'hx' if hx else 'nohx'}-{str(dt)[6:]}"


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_batch_zero_matches_nn_lstm(case):
    proj, bi, layers, bf, give_hx, dtype = case
    torch.manual_seed(0)
    ref = nn.LSTM(3, 5, layers, proj_size=proj, bidirectional=bi, batch_first=bf, dtype=dtype)
    fused = FusedLSTM(3, 5, layers, proj_size=proj, bidirectional=bi, batch_first=bf, dtype=dtype)
    fused.load_state_dict(ref.state_dict())
    x = torch.randn((0, 4, 3) if bf else (4, 0, 3), dtype=dtype, requires_grad=True)
    n = layers * (2 if bi else 1)
    hx = (torch.randn(n, 0, proj or 5, dtype=dtype), torch.randn(n, 0, 5, dtype=dtype)) if give_hx else None
    y_r, (h_r, c_r) = ref(x, hx)
    y_f, (h_f, c_f) = fused(x, hx)
    for a, b in ((y_r, y_f), (h_r, h_f), (c_r, c_f)):
        assert b.shape == a.shape and b.dtype == a.dtype and b.device == a.device
        assert b.requires_grad == a.requires_grad
    g_r = torch.autograd.grad(y_r.sum() + h_r.sum() + c_r.sum(), [x] + list(ref.parameters()), allow_unused=True)
    g_f = torch.autograd.grad(y_f.sum() + h_f.sum() + c_f.sum(), [x] + list(fused.parameters()), allow_unused=True)
    for a, b in zip(g_r, g_f):
        if a is None:
            assert b is None or not b.any()
        else:
            assert b is not None and b.shape == a.shape
            torch.testing.assert_close(b, a)


@pytest.mark.parametrize("proj", [0, 2], ids=["noproj", "proj2"])
@pytest.mark.parametrize("bi", [False, True], ids=["uni", "bi"])
def test_unbatched_and_batch_one_with_projection_match(proj, bi):
    """Neighbours of batch 0: unbatched input and batch 1 still agree with nn.LSTM in value."""
    torch.manual_seed(1)
    ref = nn.LSTM(3, 5, 2, proj_size=proj, bidirectional=bi, dtype=torch.float64)
    fused = FusedLSTM(3, 5, 2, proj_size=proj, bidirectional=bi, dtype=torch.float64)
    fused.load_state_dict(ref.state_dict())
    for x in (torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 1, 3, dtype=torch.float64)):
        y_r, (h_r, c_r) = ref(x)
        y_f, (h_f, c_f) = fused(x)
        for a, b in ((y_r, y_f), (h_r, h_f), (c_r, c_f)):
            torch.testing.assert_close(b, a)
