"""The CPU workspace pool: a buffer is handed out again only once nothing else holds it, it is an
ordinary tensor even when first requested under inference mode, and (in tests) every buffer it
hands out, reused ones included, arrives NaN-poisoned by conftest's fixture."""
import torch

from lstm_fast.cpu import workspace

N = workspace.MIN_ELEMENTS * 2


def test_reused_only_when_free():
    a = workspace.empty((N,))
    a.fill_(1.0)
    b = workspace.empty((N,))
    assert a.data_ptr() != b.data_ptr(), "a held buffer was handed out twice"
    ptr = a.data_ptr()
    del a
    c = workspace.empty((2, N // 2))
    assert c.data_ptr() == ptr and c.shape == (2, N // 2)


def test_reused_buffers_arrive_poisoned():
    a = workspace.empty((N,))
    a.fill_(1.0)
    ptr = a.data_ptr()
    del a
    again = workspace.empty((N,))
    assert again.data_ptr() == ptr, "the pool did not reuse the buffer"
    assert torch.isnan(again).all(), "a reused buffer must arrive NaN-filled in tests"
    assert torch.equal(workspace.zeros((N,)), torch.zeros(N))


def test_buffers_are_ordinary_tensors_under_inference_mode():
    with torch.inference_mode():
        a = workspace.empty((N + 1,))
        assert not a.is_inference()
        ptr = a.data_ptr()
        del a
    b = workspace.empty((N + 1,))
    assert b.data_ptr() == ptr and not b.is_inference()
    x = torch.randn(3, requires_grad=True)
    (x * b[:3].fill_(2.0)).sum().backward()    # can be saved for backward
    assert torch.equal(x.grad, torch.full((3,), 2.0))
