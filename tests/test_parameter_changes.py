"""Every way PyTorch lets a user change or swap a parameter is seen by the next forward, with and
without autograd: ``p.data`` written in place, ``copy_`` under no_grad, ``load_state_dict``,
assigning ``p.data``, ``torch.func.functional_call``, ``copy.deepcopy``, ``.to(dtype)``. The
reference is nn.LSTM given the same weights the same way."""
import copy

import pytest
import torch
from torch import nn

from conftest import assert_close
from lstm_fast import FusedLSTM

T, B, D, H = 6, 33, 7, 40


def _pair(dtype):
    ref = nn.LSTM(D, H, dtype=dtype)
    m = FusedLSTM(D, H, dtype=dtype)
    m.load_state_dict(ref.state_dict())
    return ref, m


def _data_add(m, deltas):
    for p, d in zip(m.parameters(), deltas, strict=True):
        p.data.add_(d)


def _data_copy(m, deltas):
    for p, d in zip(m.parameters(), deltas, strict=True):
        p.data.copy_(p.data + d)


def _copy_no_grad(m, deltas):
    with torch.no_grad():
        for p, d in zip(m.parameters(), deltas, strict=True):
            p.copy_(p + d)


def _load_state_dict(m, deltas):
    m.load_state_dict({k: v + d for (k, v), d in zip(m.state_dict().items(), deltas, strict=True)})


def _assign_data(m, deltas):
    for p, d in zip(m.parameters(), deltas, strict=True):
        p.data = p.data + d


CHANGES = {"data.add_": _data_add, "data.copy_": _data_copy, "copy_-no_grad": _copy_no_grad,
           "load_state_dict": _load_state_dict, "assign-data": _assign_data}


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("change", list(CHANGES))
def test_forward_sees_every_parameter_change(change, dtype, grad):
    ref, m = _pair(dtype)
    x = torch.randn(T, B, D, dtype=dtype)
    for step in range(3):
        with torch.set_grad_enabled(grad):
            y, (h, c) = m(x)
            yr, (hr, cr) = ref(x)
        for a, b, what in ((y, yr, "output"), (h, hr, "h_n"), (c, cr, "c_n")):
            assert_close(a, b, dtype, f"{what} after {step} changes")
        deltas = [torch.randn_like(p) * 0.5 for p in m.parameters()]
        CHANGES[change](m, deltas)
        CHANGES[change](ref, deltas)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_functional_call_deepcopy_and_to(dtype):
    ref, m = _pair(dtype)
    x = torch.randn(T, B, D, dtype=dtype)
    with torch.no_grad():
        m(x)                                          # whatever a first call prepares
        other = {k: torch.randn_like(v) for k, v in m.state_dict().items()}
        ref_other = nn.LSTM(D, H, dtype=dtype)
        ref_other.load_state_dict(other)
        assert_close(torch.func.functional_call(m, other, (x,))[0], ref_other(x)[0], dtype, "functional_call")
        assert_close(m(x)[0], ref(x)[0], dtype, "after functional_call")
        twin = copy.deepcopy(m)
        for p in twin.parameters():
            p.data.mul_(-1)
        ref_twin = copy.deepcopy(ref)
        for p in ref_twin.parameters():
            p.data.mul_(-1)
        assert_close(twin(x)[0], ref_twin(x)[0], dtype, "deepcopy changed in place")
        assert_close(m(x)[0], ref(x)[0], dtype, "original after deepcopy")
        other_dtype = torch.float64 if dtype == torch.float32 else torch.float32
        m2, ref2 = m.to(other_dtype), copy.deepcopy(ref).to(other_dtype)
        x2 = x.to(other_dtype)
        assert_close(m2(x2)[0], ref2(x2)[0], other_dtype, ".to(dtype)")
        m2.to(dtype)
        ref2.to(dtype)
        for p in m2.parameters():
            p.data.add_(0.25)
        for p in ref2.parameters():
            p.data.add_(0.25)
        assert_close(m2(x)[0], ref2(x)[0], dtype, ".to back and changed")
