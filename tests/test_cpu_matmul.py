"""The CPU implementation's product helpers (lstm_fast/cpu/matmul.py): the transposes the stepwise
backward feeds oneDNN, against torch's own ``.t()`` at odd sizes (tails of the 8 x 8 blocks), and
the routing rule that keeps products thread-count independent."""
import pytest
import torch

from lstm_fast.cpu import matmul


@pytest.mark.parametrize("rows,cols", [(1, 1), (1, 9), (9, 1), (8, 8), (16, 8), (17, 33), (35, 130), (1120, 28),
                                       (0, 5), (5, 0)],
                         ids=lambda v: str(v))
def test_transposed_is_the_transpose(rows, cols):
    a = torch.randn(rows, cols)
    t = matmul.transposed(a)
    assert t.shape == (cols, rows) and t.is_contiguous()
    assert torch.equal(t, a.t())


def test_contiguous_of_a_transposed_view_is_a_copy():
    a = torch.randn(37, 19)
    c = matmul.contiguous(a.t())
    assert c.is_contiguous() and torch.equal(c, a.t()) and c.data_ptr() != a.data_ptr()
    assert matmul.contiguous(a) is a
    strided = torch.randn(6, 10)[:, ::2]
    assert torch.equal(matmul.contiguous(strided), strided)


def test_float64_and_strided_inputs_fall_back():
    a = torch.randn(13, 7, dtype=torch.float64)
    assert torch.equal(matmul.transposed(a), a.t())
    s = torch.randn(13, 14)[:, ::2]
    assert torch.equal(matmul.transposed(s), s.t())


def test_products_go_to_onednn_but_on_an_intel_cpu_with_avx512():
    """Every float32 product runs on oneDNN (MKL's bits changed with the thread count at small
    sizes on the AVX2 and the AVX-512 EPYC) but on an Intel CPU with AVX-512, where tiny ones go
    to BLAS."""
    intel_avx512 = (torch.backends.cpu.get_cpu_capability().startswith("AVX512")
                    and matmul.cpu_vendor() == "GenuineIntel")
    x = torch.empty(7, 33)
    if not matmul._ONEDNN:
        pytest.skip("no oneDNN in this torch build")
    assert matmul.use_onednn(x, 7, 132, 33) == (not intel_avx512)
    assert not matmul.use_onednn(x, 0, 132, 33)          # empty products never reach oneDNN
    assert matmul.use_onednn(x, 1024, 1024, 1024)
