"""The checks of one layer call's arguments: :func:`check_lstm_args` (``fused_lstm``'s tensors)
and :func:`check_lengths` (per-row lengths, for every path). Errors name the argument and use
nn.LSTM's exception classes."""
import torch

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def autocast_enabled(device_type) -> bool:
    """``torch.is_autocast_enabled(device_type)``, False for devices autocast does not know (meta),
    where torch raises instead."""
    return device_type != "meta" and torch.is_autocast_enabled(device_type)


def check_devices(input, parameters, hidden):
    """The device guard in front of every implementation: each parameter and each hidden-state
    tensor on ``input``'s device, with nn.LSTM's RuntimeError and wording. Nothing that fails it
    reaches a kernel (a CPU kernel given a meta tensor would read through a null pointer)."""
    for p in parameters:
        if p is not None and p.device != input.device:
            raise RuntimeError(f"Input and parameter tensors are not at the same device, found input tensor at "
                               f"{input.device} and parameter tensor at {p.device}")
    for h in hidden:
        if h.device != input.device:
            raise RuntimeError(f"Input and hidden tensors are not at the same device, found input tensor at "
                               f"{input.device} and hidden tensor at {h.device}")


def onednn_runs_lstm(weight_dtype, device_type, numel, proj_size, equal_lengths) -> bool:
    """Whether nn.LSTM on these arguments takes its oneDNN (mkldnn) path rather than its native
    one (ATen's ``use_mkldnn``, found by experiment with torch 2.13): CPU tensors,
    ``torch.backends.mkldnn.enabled``, a non-empty input, no projection, a padded input or a packed
    one whose sequences all have the same length, and float32 parameters, or bf16 / float16 ones
    where this CPU's oneDNN supports them (float16 only without grad mode)."""
    if (device_type != "cpu" or not torch.backends.mkldnn.enabled or not torch.backends.mkldnn.is_available()
            or numel == 0 or proj_size or not equal_lengths):
        return False
    if weight_dtype == torch.float32:
        return True
    if weight_dtype == torch.bfloat16:
        return torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return (weight_dtype == torch.float16 and not torch.is_grad_enabled()
            and torch.ops.mkldnn._is_mkldnn_fp16_supported())


def mixed_state_dtypes(weight_dtype, h_dtype, c_dtype, *, onednn, steps, num_layers, proj_size):
    """nn.LSTM's rule for an (h_0, c_0) whose dtypes differ from the parameters' (outside
    autocast; the input already has the parameters' dtype): the dtypes of (output, h_n, c_n)
    nn.LSTM returns, or None where it raises (a RuntimeError from its GEMMs or from oneDNN).
    Found by experiment (torch 2.13, every combination of float32/float64/bf16/float16, oneDNN on
    and off, grad mode on and off, packed or not, 1-2 steps and layers, projections, directions,
    batch 0-3); tests/test_mixed_state_dtypes.py checks it against nn.LSTM.

    ===========================  ==========================================================
    h_0 of another dtype         always raises (its GEMM with W_hh)
    oneDNN path                  c_0 may be float32 with bf16/float16 parameters: returns
                                 (p, p, float32); any other c_0 dtype raises
    native path, c_0 narrower    c_0 promotes to the parameters' dtype p: returns (p, p, p)
    native path, c_0 wider       the state promotes to P = promote(p, c_0): the next GEMM raises,
                                 so only one step, one layer, no projection returns (P, P, P)
    ===========================  ==========================================================

    ``onednn``: :func:`onednn_runs_lstm`'s answer; ``steps``: the sequence length (a packed
    input's longest). FusedLSTM computes in the parameters' dtype and casts its outputs to these."""
    p = weight_dtype
    if h_dtype != p:
        return None
    if c_dtype == p:
        return p, p, p
    if onednn:
        return (p, p, c_dtype) if p in (torch.bfloat16, torch.float16) and c_dtype == torch.float32 else None
    promoted = torch.promote_types(p, c_dtype)
    if promoted == p:
        return p, p, p
    if steps == 1 and num_layers == 1 and not proj_size:
        return promoted, promoted, promoted
    return None


def check_lengths(lengths, T, B, values=True):
    """The one validation of per-row lengths, used by every path (:func:`lstm_layer` calls it, so
    the CPU kernels, the Triton kernels and the segment loop all get the same): returns a
    contiguous CPU int64 tensor. The C kernels read int64, so narrower integers (int32, int16,
    uint8) are converted here, never reinterpreted; a list or a tensor on any device is accepted.

    Raises ValueError for anything but a 1-D integer tensor of B entries (bool, float and complex
    lengths included: a mask or a fraction is not a length) and RuntimeError for values outside
    [0, T]. ``values=False`` skips the range check, which reads the values: under torch.compile
    the custom op checks them when it runs."""
    if not isinstance(lengths, torch.Tensor):
        try:
            lengths = torch.as_tensor(lengths)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"lengths must be a 1-D integer tensor of {B} entries (one per batch row), "
                             f"got {type(lengths).__name__}") from None
    if (lengths.dim() != 1 or lengths.numel() != B or lengths.dtype == torch.bool or lengths.is_floating_point()
            or lengths.is_complex()):
        raise ValueError(f"lengths must be a 1-D integer tensor of {B} entries (one per batch row), "
                         f"got {lengths.dtype} of shape {tuple(lengths.shape)}")
    lengths = lengths.to("cpu", torch.int64).contiguous()
    if values and B and (int(lengths.min()) < 0 or int(lengths.max()) > T):
        raise RuntimeError(f"lengths must lie in [0, {T}] (the sequence length), got "
                           f"min {int(lengths.min())}, max {int(lengths.max())}")
    return lengths


def _require_tensor(name, t):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")


def check_lstm_args(input, hx, w_ih, w_hh, b_ih, b_hh, input_projection=False):
    """Validate fused_lstm's arguments; return (h_0, c_0), zeros when hx is None.
    ``input_projection``: input is (T, B, 4H), already x W_ih^T, and ``w_ih`` must be None."""
    _require_tensor("input", input)
    if input_projection:
        if w_ih is not None:
            raise ValueError("fused_lstm: with input_projection=True the input is already x @ weight_ih.T; "
                             "pass weight_ih=None")
    else:
        _require_tensor("weight_ih", w_ih)
    _require_tensor("weight_hh", w_hh)
    if input.dim() != 3:
        raise ValueError(f"fused_lstm: expected input to be 3-D (T, B, {'4H' if input_projection else 'D'}), "
                         f"got {input.dim()}-D")
    # Under autocast every floating operand is cast to the autocast dtype (as nn.LSTM does), so
    # a state carried from an autocast call (bf16) may meet a float32 input.
    autocast = autocast_enabled(input.device.type)
    w_first = w_hh if input_projection else w_ih
    weights_match = input.dtype == w_first.dtype or (autocast and w_first.dtype in _FLOAT_DTYPES)
    if input.dtype not in _FLOAT_DTYPES or not weights_match:
        raise ValueError(f"fused_lstm: input dtype ({input.dtype}) does not match weight dtype "
                         f"({w_first.dtype}); inputs and weights must share one floating dtype")
    T, B, D = input.shape
    if T == 0:
        raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
    if w_hh.dim() != 2 or w_hh.shape[0] % 4 != 0 or w_hh.shape[0] == 0:
        raise RuntimeError(f"weight_hh must be (4*hidden_size, hidden_size), got {tuple(w_hh.shape)}")
    H = w_hh.shape[0] // 4
    if tuple(w_hh.shape) != (4 * H, H):
        raise RuntimeError(f"weight_hh must be (4*hidden_size, hidden_size) = ({4 * H}, {H}), "
                           f"got {tuple(w_hh.shape)}")
    if input_projection and D != 4 * H:
        raise RuntimeError(f"fused_lstm: with input_projection=True the input must be (T, B, 4*hidden_size) = "
                           f"(T, B, {4 * H}), got {tuple(input.shape)}")
    if not input_projection and tuple(w_ih.shape) != (4 * H, D):
        raise RuntimeError(f"weight_ih must be (4*hidden_size, input.size(-1)) = ({4 * H}, {D}), "
                           f"got {tuple(w_ih.shape)}")
    named = [("weight_hh", w_hh)]
    for name, b in (("bias_ih", b_ih), ("bias_hh", b_hh)):
        if b is not None:
            _require_tensor(name, b)
            if tuple(b.shape) != (4 * H,):
                raise RuntimeError(f"{name} must be (4*hidden_size,) = ({4 * H},), got {tuple(b.shape)}")
            named.append((name, b))
    if hx is None:
        h0 = input.new_zeros(B, H)
        c0 = input.new_zeros(B, H)
    else:
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise TypeError("hx must be a tuple (h_0, c_0) or None")
        h0, c0 = hx
        _require_tensor("h_0", h0)
        _require_tensor("c_0", c0)
        for name, t in (("h_0", h0), ("c_0", c0)):
            if tuple(t.shape) != (B, H):
                raise RuntimeError(f"Expected {name} size ({B}, {H}), got {list(t.shape)}")
            named.append((name, t))
    check_devices(input, (w_ih, w_hh, b_ih, b_hh), (h0, c0))
    for name, t in named:
        if t.dtype != input.dtype and not (autocast and t.dtype in _FLOAT_DTYPES):
            raise RuntimeError(f"{name} dtype ({t.dtype}) does not match input dtype ({input.dtype})")
    return h0, c0
