"""Per-row ``lengths``: padding never matters, and lengths are validated in one place.

* NaN/Inf in the input past each row's length change no output and no gradient: the result equals
  the same batch with zeros there (on the CPU the input-weight gradient sums dgates x over all
  steps, and 0 * NaN is NaN).
* ``functional.check_lengths`` is the one validation, used by ``fused_lstm`` and by
  ``lstm_layer`` (the seam every path goes through): int64/int32/int16/uint8 tensors and lists
  give the same result; bool, float and complex lengths, wrong shapes and values outside [0, T]
  are errors naming ``lengths``.
"""
import pytest
import torch

from conftest import assert_close
from lstm_fast import fused_lstm
from lstm_fast.ops.checks import check_lengths
from lstm_fast.ops.functional import lstm_layer

T, B, D, H = 7, 5, 3, 6
LENS = [7, 2, 5, 0, 3]


def _setup(dtype, requires_grad=True):
    params = [torch.randn(4 * H, D, dtype=dtype), torch.randn(4 * H, H, dtype=dtype), torch.randn(4 * H, dtype=dtype),
              torch.randn(4 * H, dtype=dtype)]
    params = [p.mul_(0.5).requires_grad_(requires_grad) for p in params]
    hx = tuple(torch.randn(B, H, dtype=dtype, requires_grad=requires_grad) for _ in range(2))
    return params, hx


def _padding_mask(lens):
    return torch.arange(T).unsqueeze(1) >= torch.tensor(lens).unsqueeze(0)   # (T, B): True past a row's end


def _run(x, hx, params, lengths, backend="cpu"):
    x = x.detach().requires_grad_()
    y, (h, c) = fused_lstm(x, hx, *params, lengths=lengths, backend=backend)
    g = torch.autograd.grad((y * _W[0]).sum() + (h * _W[1]).sum() + (c * _W[2]).sum(), [x, *hx, *params])
    return [y, h, c, *g]


_W = []


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_non_finite_padding_changes_nothing(value, dtype):
    params, hx = _setup(dtype)
    _W[:] = [torch.randn(T, B, H, dtype=dtype), torch.randn(B, H, dtype=dtype), torch.randn(B, H, dtype=dtype)]
    pad = _padding_mask(LENS).unsqueeze(-1).expand(T, B, D)
    x = torch.randn(T, B, D, dtype=dtype)
    clean = _run(x.masked_fill(pad, 0.0), hx, params, torch.tensor(LENS))
    dirty = _run(x.masked_fill(pad, value), hx, params, torch.tensor(LENS))
    names = ["output", "h_n", "c_n", "grad input", "grad h_0", "grad c_0", "grad w_ih", "grad w_hh", "grad b_ih",
             "grad b_hh"]
    for name, a, b in zip(names, dirty, clean, strict=True):
        if name == "grad input":   # the gradient at padded positions is 0 either way
            a = a.masked_fill(pad, 0.0)
        assert torch.isfinite(a).all(), f"{name}: non-finite values leaked from the padding"
        assert_close(a, b, dtype, name)
    assert torch.all(dirty[3][pad] == 0), "grad input at padded positions must be 0"


def _layer(x, params, hx, lengths, backend="cpu"):
    with torch.no_grad():
        y, (h, c) = lstm_layer(x, hx[0], hx[1], *params, backend, lengths)
    return y, h, c


@pytest.mark.parametrize("path", ["fused_lstm", "lstm_layer"])
@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8, "list"], ids=["int32", "int16", "uint8", "list"])
def test_narrow_integer_lengths_mean_the_same(dtype, path):
    params, hx = _setup(torch.float32, requires_grad=False)
    x = torch.randn(T, B, D)
    lengths = LENS if dtype == "list" else torch.tensor(LENS, dtype=dtype)
    if path == "fused_lstm":
        expect = fused_lstm(x, hx, *params, lengths=torch.tensor(LENS))
        got = fused_lstm(x, hx, *params, lengths=lengths)
        expect, got = (expect[0], *expect[1]), (got[0], *got[1])
    else:
        expect = _layer(x, params, hx, torch.tensor(LENS))
        got = _layer(x, params, hx, lengths)
    for name, a, b in zip(("output", "h_n", "c_n"), got, expect, strict=True):
        assert torch.equal(a, b), f"{name} differs with {dtype} lengths"


BAD = [
    pytest.param(torch.tensor([True, False, True, True, False]), ValueError, id="bool"),
    pytest.param(torch.tensor([7.0, 2.0, 5.0, 0.0, 3.0]), ValueError, id="float"),
    pytest.param(torch.tensor([7, 2, 5, 0, 3], dtype=torch.complex64), ValueError, id="complex"),
    pytest.param(torch.tensor([7, 2, 5, 0]), ValueError, id="too-few"),
    pytest.param(torch.tensor([[7, 2, 5, 0, 3]]), ValueError, id="2-d"),
    pytest.param(torch.tensor([8, 2, 5, 0, 3]), RuntimeError, id="too-long"),
    pytest.param(torch.tensor([7, 2, -1, 0, 3]), RuntimeError, id="negative"),
    pytest.param(torch.tensor([7, 2, 5, 0, 3], dtype=torch.int32) - 300, RuntimeError, id="negative-int32"),
    pytest.param(torch.tensor([7, 2, 5, 0, 2 ** 32 + 3]), RuntimeError, id="wraps-in-int32"),
    pytest.param("75", ValueError, id="string"),
]


@pytest.mark.parametrize("lengths,exc", BAD)
@pytest.mark.parametrize("path", ["fused_lstm", "lstm_layer"])
def test_bad_lengths_are_clear_errors(lengths, exc, path):
    params, hx = _setup(torch.float32, requires_grad=False)
    x = torch.randn(T, B, D)
    with pytest.raises(exc, match="lengths"):
        if path == "fused_lstm":
            fused_lstm(x, hx, *params, lengths=lengths)
        else:
            _layer(x, params, hx, lengths)


def test_check_lengths_returns_cpu_int64():
    out = check_lengths(torch.tensor(LENS, dtype=torch.uint8), T, B)
    assert out.dtype == torch.int64 and out.device.type == "cpu" and out.is_contiguous()
    assert out.tolist() == LENS
    strided = torch.tensor([LENS, LENS], dtype=torch.int32).t()[:, 0]      # a non-contiguous view
    assert check_lengths(strided, T, B).tolist() == LENS


@pytest.mark.parametrize("dtype", [torch.int32, torch.uint8])
def test_triton_path_uses_the_same_validation(dtype):
    """The Triton backend (its interpreter here) goes through the same check: narrow integer
    lengths give the int64 result, bool lengths are refused."""
    from lstm_fast.ops.backends import triton_unavailable_reason
    if triton_unavailable_reason("cpu") is not None:
        pytest.skip(triton_unavailable_reason("cpu"))
    params, hx = _setup(torch.float32, requires_grad=False)
    x = torch.randn(T, B, D)
    expect = _layer(x, params, hx, torch.tensor(LENS), backend="triton")
    got = _layer(x, params, hx, torch.tensor(LENS, dtype=dtype), backend="triton")
    for a, b in zip(got, expect, strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="lengths"):
        _layer(x, params, hx, torch.tensor(LENS) > 2, backend="triton")


def test_non_finite_padding_under_autocast():
    """The same under bf16 autocast (the CPU's bf16 path): padding changes nothing."""
    params, hx = _setup(torch.float32)
    pad = _padding_mask(LENS).unsqueeze(-1).expand(T, B, D)
    x = torch.randn(T, B, D)
    out = []
    for value in (0.0, float("nan")):
        xv = x.masked_fill(pad, value).requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y, (h, c) = fused_lstm(xv, hx, *params, lengths=torch.tensor(LENS))
        g = torch.autograd.grad(y.float().sum() + c.float().sum(), [xv, *params])
        out.append([y, h, c, *g])
    for name, a, b in zip(["output", "h_n", "c_n", "grad input", "grad w_ih", "grad w_hh", "grad b_ih", "grad b_hh"],
                          out[1], out[0], strict=True):
        assert torch.isfinite(a).all(), f"{name}: non-finite values leaked from the padding"
        assert torch.equal(a, b), name


def test_non_finite_padding_on_triton():
    """The Triton backend (its interpreter here) gets the same zeroed padding from lstm_layer."""
    from lstm_fast.ops.backends import triton_unavailable_reason
    if triton_unavailable_reason("cpu") is not None:
        pytest.skip(triton_unavailable_reason("cpu"))
    params, hx = _setup(torch.float32)
    _W[:] = [torch.randn(T, B, H), torch.randn(B, H), torch.randn(B, H)]
    pad = _padding_mask(LENS).unsqueeze(-1).expand(T, B, D)
    x = torch.randn(T, B, D)
    clean = _run(x.masked_fill(pad, 0.0), hx, params, torch.tensor(LENS), backend="triton")
    dirty = _run(x.masked_fill(pad, float("nan")), hx, params, torch.tensor(LENS), backend="triton")
    for k, (a, b) in enumerate(zip(dirty, clean, strict=True)):
        assert torch.isfinite(a).all(), f"result {k}: NaN leaked from the padding"
        assert torch.equal(a, b), f"result {k}"
