"""The packed weight-gradient GEMM (lstm_fast/cpu/weight_gradient.py, weight_gradient_gemm.h)
against torch.mm in float64 at odd sizes, and bitwise equal at 1 and 2 threads."""
import pytest
import torch

from lstm_fast.cpu import weight_gradient

pytestmark = pytest.mark.skipif(not weight_gradient.available(), reason="no AVX-512 sequence kernels")

SIZES = [(1, 1, 1, 0, 0), (7, 1, 33, 1, 0), (130, 33, 1, 7, 3), (1, 520, 7, 33, 1), (129, 130, 28, 256, 32),
         (300, 1024, 28, 256, 32), (520, 64, 130, 0, 0), (257, 100, 0, 17, 5)]


@pytest.mark.parametrize("R,N,M0,M1,b", SIZES, ids=[f"R{s[0]}-N{s[1]}-M{s[2]}+{s[3]}" for s in SIZES])
def test_against_float64_mm_and_thread_counts(R, N, M0, M1, b):
    g = torch.Generator().manual_seed(R * 7 + N)
    dG = torch.randn(R, N, generator=g)
    x = torch.randn(R, M0, generator=g)
    a1 = None
    if M1:
        p = torch.randn(R, M1, generator=g)
        a1 = [p[:b].contiguous(), p[b:].contiguous()] if 0 < b < R else [p]
    outs = []
    before = torch.get_num_threads()
    try:
        for nt in (1, 2):
            torch.set_num_threads(nt)
            outs.append(weight_gradient.weight_gradients(dG, [x], a1))
    finally:
        torch.set_num_threads(before)
    ref0 = dG.double().t() @ x.double()
    tol = 1e-5 * max(R, 1) ** 0.5
    torch.testing.assert_close(outs[0][0].double(), ref0, rtol=0, atol=tol)
    assert torch.equal(outs[0][0], outs[1][0])
    if M1:
        ref1 = dG.double().t() @ torch.cat(a1).double()
        torch.testing.assert_close(outs[0][1].double(), ref1, rtol=0, atol=tol)
        assert torch.equal(outs[0][1], outs[1][1])
    for o in outs[0]:
        if o is not None:
            assert not o.isnan().any()
