"""``fused_lstm``: one LSTM layer, one direction, on our implementations.

This is the seam shared by :class:`lstm_fast.FusedLSTM` and the kernels: the module splits layers,
directions, projections and packed sequences into calls of this function.
"""
import torch
import torch.nn.functional as F

from .cpu import bf16_sequence as cpu_bf16
from .cpu import sequence as cpu_sequence
from .backends import check_backend_name, resolve_backend
from .cpu import lstm_cpu

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_CPU_DTYPES = (torch.float32, torch.float64)


def fused_lstm(input, hx, weight_ih, weight_hh, bias_ih=None, bias_hh=None, *, lengths=None, backend="auto"):
    """Run one LSTM layer over a sequence, like one layer and direction of ``torch.nn.LSTM``.

    Args:
        input: (T, B, D) tensor, time first.
        hx: ``(h_0, c_0)``, each (B, H), or None for zeros.
        weight_ih: (4H, D), gate rows in nn.LSTM order i, f, g, o.
        weight_hh: (4H, H).
        bias_ih, bias_hh: (4H,) or None.
        lengths: optional (B,) per-row sequence lengths in [0, T], an integer tensor of any integer
            dtype on any device, or a list (see :func:`check_lengths`): from step lengths[b] on,
            row b's state stays frozen and its output is 0, so h_n, c_n are each row's state at
            its own length (a padded variable-length batch at padded speed: the CPU and Triton
            kernels mask finished rows instead of dropping them). What the input holds past a
            row's length (zeros, NaN, Inf) changes no output and no gradient.
        backend: ``"auto"`` (Triton on CUDA tensors, the CPU implementation otherwise), ``"cpu"``
            or ``"triton"``. A backend that cannot run raises RuntimeError.

    Returns:
        ``(output, (h_n, c_n))``: output (T, B, H) holds h_t for every step; h_n, c_n are (B, H).
        Differentiable in every tensor argument.

    Raises:
        ValueError: input not 3-D, integer input, dtype differing from the weights', bad backend,
            lengths not a 1-D integer tensor of B entries (bool and float lengths included).
        RuntimeError: mismatched sizes, devices or hx dtype, zero-length sequence, lengths
            outside [0, T], an unavailable backend.
    """
    check_backend_name(backend)
    h0, c0 = check_lstm_args(input, hx, weight_ih, weight_hh, bias_ih, bias_hh)
    return lstm_layer(input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, backend, lengths)


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


def lstm_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, backend, lengths=None):
    """Dispatch an already checked layer to its implementation. ``lengths``: checked per-row
    lengths or None; implementations without masking run the batch in segments instead.
    Under torch.compile the layer is one custom op (:mod:`lstm_fast.custom_ops`): no graph break."""
    if lengths is not None:
        lengths = check_lengths(lengths, x.shape[0], x.shape[1], values=not torch.compiler.is_compiling())
        x = _zero_padding(x, lengths)
    if torch.compiler.is_compiling():
        return _compiled_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, backend, lengths)
    device = x.device.type
    if torch.is_autocast_enabled(device):
        # Mixed precision: matmul operands in the autocast dtype (float32 accumulation and cell
        # state inside the implementations), outputs in the autocast dtype.
        ac = torch.get_autocast_dtype(device)
        if ac == torch.bfloat16 and cpu_bf16.available_for(x, w_hh) and resolve_backend(backend, device) == "cpu":
            # Native bf16 kernels: they take the float32 weights as they are (bf16 panels made
            # as they are packed, no per-call bf16 weight copies for autograd to track).
            with torch.autocast(device, enabled=False):
                return cpu_bf16.lstm_bf16(x.to(ac), h0.to(ac), c0, w_ih, w_hh, b_ih, b_hh, lengths)
        cast = lambda t: None if t is None else t.to(ac)  # noqa: E731
        with torch.autocast(device, enabled=False):
            return lstm_layer(cast(x), cast(h0), c0, cast(w_ih), cast(w_hh), cast(b_ih), cast(b_hh), backend, lengths)
    chosen = resolve_backend(backend, x.device.type)
    if chosen == "cpu" and x.dtype == torch.bfloat16 and cpu_bf16.available_for(x, w_hh):
        return cpu_bf16.lstm_bf16(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths)   # AVX512-BF16 kernels
    if chosen == "cpu" and x.dtype in (torch.float16, torch.bfloat16):
        # Without AVX512-BF16 (or LSTM_FAST_CPU_BF16=upcast): the float32 kernels. 16-bit operands
        # are exact in float32 and so are their products, so this is a 16-bit matmul with float32
        # accumulation (and a float32 cell state); h_t stays float32 between steps. Outputs return
        # in the 16-bit dtype.
        up = lambda t: None if t is None else t.float()  # noqa: E731
        y, (h, c) = lstm_layer(up(x), up(h0), up(c0), up(w_ih), up(w_hh), up(b_ih), up(b_hh), backend, lengths)
        return y.to(x.dtype), (h.to(x.dtype), c.to(x.dtype))
    masks_lengths = chosen == "triton" or cpu_sequence.available_for(x, w_hh)
    if lengths is not None and not masks_lengths:
        return _lstm_segments(x, h0, c0, w_ih, w_hh, b_ih, b_hh, backend, lengths)
    if chosen == "cpu":
        if x.dtype not in _CPU_DTYPES:
            raise RuntimeError(f"backend='cpu' supports float32 and float64, got {x.dtype}")
        return lstm_cpu(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths)
    from .triton_function import lstm_triton  # resolve_backend checked the kernels import
    return lstm_triton(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths)


def padding_mask(lengths, T, device):
    """(T, B, 1) bool, True at the padded steps t >= lengths[b]."""
    return (torch.arange(T, device=device).unsqueeze(1) >= lengths.to(device).unsqueeze(0)).unsqueeze(-1)


def _zero_padding(x, lengths):
    """``x`` with the positions past each row's length set to 0: they never affect the result,
    but an implementation summing over all steps (the input-weight gradient, dgates^T x) would
    turn NaN/Inf there into NaN (0 * NaN). One masked copy of x, on every path."""
    return x.masked_fill(padding_mask(lengths, x.shape[0], x.device), 0)


def _compiled_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, backend, lengths):
    """The layer under torch.compile: one custom op (:mod:`lstm_fast.custom_ops`), with eager's
    dtype rules applied around it as traceable casts. A custom op has no autocast kernel, so
    autocast is applied here (operands in the autocast dtype, c_0 as given, outputs in the
    autocast dtype). On the CPU, bf16 runs on the native bf16 kernels where eager does (the
    same operands: bf16 input and h_0, the weights as given), other 16-bit operands on the
    float32 kernels. Which one is decided at trace time (:func:`lstm_fast.cpu.bf16_sequence.use_native`
    is taken as constant: changing ``bf16_sequence.MODE`` later needs a new compile)."""
    from .custom_ops import lstm_layer_op
    device = x.device.type
    if torch.is_autocast_enabled(device):
        ac = torch.get_autocast_dtype(device)
        if ac == torch.bfloat16 and resolve_backend(backend, device) == "cpu" and cpu_bf16.available_for(x, w_hh):
            # As eager: the native bf16 kernels, taking the float32 weights as they are.
            with torch.autocast(device, enabled=False):
                return lstm_layer_op(x.to(ac), h0.to(ac), c0, w_ih, w_hh, b_ih, b_hh, backend, lengths)
        cast = lambda t: None if t is None else t.to(ac)  # noqa: E731
        with torch.autocast(device, enabled=False):
            return _compiled_layer(cast(x), cast(h0), c0, cast(w_ih), cast(w_hh), cast(b_ih), cast(b_hh), backend,
                                   lengths)
    if resolve_backend(backend, device) == "cpu" and x.dtype in (torch.float16, torch.bfloat16):
        if x.dtype == torch.bfloat16 and cpu_bf16.available_for(x, w_hh):
            return lstm_layer_op(x, h0, c0, w_ih, w_hh, b_ih, b_hh, backend, lengths)   # native bf16 kernels
        up = lambda t: None if t is None else t.float()  # noqa: E731
        y, (h, c) = lstm_layer_op(up(x), up(h0), up(c0), up(w_ih), up(w_hh), up(b_ih), up(b_hh), backend, lengths)
        return y.to(x.dtype), (h.to(x.dtype), c.to(x.dtype))
    return lstm_layer_op(x, h0, c0, w_ih, w_hh, b_ih, b_hh, backend, lengths)


def _lstm_segments(x, h0, c0, w_ih, w_hh, b_ih, b_hh, backend, lengths):
    """Variable lengths for implementations that do not mask: rows sorted by length, then the
    time axis runs in segments between consecutive distinct lengths, each on the rows still
    running; each row's final state is the one at its own length, padding outputs are 0."""
    T, B, _ = x.shape
    H = c0.shape[1]
    lens = lengths.tolist()
    order = sorted(range(B), key=lambda b: -lens[b])
    permuted = order != list(range(B))
    if permuted:
        idx = torch.tensor(order, device=x.device)
        x, h0, c0 = x[:, idx], h0[idx], c0[idx]
        lens = [lens[b] for b in order]
    pieces, h_done, c_done = [], [], []
    h, c, t0 = h0, c0, 0
    for end in sorted(set(lens)):
        n = sum(1 for n_ in lens if n_ >= end)      # rows still running up to `end`
        if n < h.shape[0]:                          # rows that stopped at t0 keep their state
            h_done.append(h[n:])
            c_done.append(c[n:])
            h, c = h[:n], c[:n]
        if end == t0:
            continue
        y, (h, c) = lstm_layer(x[t0:end, :n], h, c, w_ih, w_hh, b_ih, b_hh, backend)
        pieces.append(F.pad(y, (0, 0, 0, B - n)) if n < B else y)
        t0 = end
    h_done.append(h)
    c_done.append(c)
    y = torch.cat(pieces, 0) if pieces else x.new_zeros(0, B, H)
    if y.size(0) < T:
        y = F.pad(y, (0, 0, 0, 0, 0, T - y.size(0)))
    h_n, c_n = torch.cat(h_done[::-1], 0), torch.cat(c_done[::-1], 0)
    if permuted:
        inv = torch.empty_like(idx)
        inv[idx] = torch.arange(B, device=x.device)
        y, h_n, c_n = y[:, inv], h_n[inv], c_n[inv]
    return y, (h_n, c_n)


def _require_tensor(name, t):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")


def check_lstm_args(input, hx, w_ih, w_hh, b_ih, b_hh):
    """Validate fused_lstm's arguments; return (h_0, c_0), zeros when hx is None."""
    _require_tensor("input", input)
    _require_tensor("weight_ih", w_ih)
    _require_tensor("weight_hh", w_hh)
    if input.dim() != 3:
        raise ValueError(f"fused_lstm: expected input to be 3-D (T, B, D), got {input.dim()}-D")
    # Under autocast every floating operand is cast to the autocast dtype (as nn.LSTM does), so
    # a state carried from an autocast call (bf16) may meet a float32 input.
    autocast = torch.is_autocast_enabled(input.device.type)
    weights_match = input.dtype == w_ih.dtype or (autocast and w_ih.dtype in _FLOAT_DTYPES)
    if input.dtype not in _FLOAT_DTYPES or not weights_match:
        raise ValueError(f"fused_lstm: input dtype ({input.dtype}) does not match weight dtype "
                         f"({w_ih.dtype}); inputs and weights must share one floating dtype")
    T, B, D = input.shape
    if T == 0:
        raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
    if w_hh.dim() != 2 or w_hh.shape[0] % 4 != 0 or w_hh.shape[0] == 0:
        raise RuntimeError(f"weight_hh must be (4*hidden_size, hidden_size), got {tuple(w_hh.shape)}")
    H = w_hh.shape[0] // 4
    if tuple(w_hh.shape) != (4 * H, H):
        raise RuntimeError(f"weight_hh must be (4*hidden_size, hidden_size) = ({4 * H}, {H}), "
                           f"got {tuple(w_hh.shape)}")
    if tuple(w_ih.shape) != (4 * H, D):
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
    for name, t in named:
        if t.dtype != input.dtype and not (autocast and t.dtype in _FLOAT_DTYPES):
            raise RuntimeError(f"{name} dtype ({t.dtype}) does not match input dtype ({input.dtype})")
    for name, t in [("weight_ih", w_ih)] + named:
        if t.device != input.device:
            raise RuntimeError(f"{name} is on {t.device} but input is on {input.device}; "
                               f"all tensors must be on one device")
    return h0, c0
