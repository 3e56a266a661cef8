"""``fused_lstm``: one LSTM layer, one direction, on our implementations; and ``lstm_layer``,
the seam every layer call goes through.

:class:`lstm_fast.FusedLSTM` splits layers, directions, projections and packed sequences into
calls of :func:`lstm_layer` (arguments checked by nn.LSTM's own checks); :func:`fused_lstm` is the
same for users, with its own checks. :func:`lstm_layer` asks the plan (:mod:`.plan`) what runs
and applies it; it never chooses itself.
"""
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from ..layer_math import zero_padding
from .autograd import apply_layer
from .backends import check_backend_name
from .checks import autocast_enabled, check_lengths, check_lstm_args
from .custom_ops import lstm_layer_op
from .plan import cast_inputs, cast_outputs, plan_layer


def fused_lstm(input, hx, weight_ih, weight_hh, bias_ih=None, bias_hh=None, *, lengths=None, backend="auto",
               input_projection=False):
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
        input_projection: True: skip-input mode (as cuDNN's ``CUDNN_SKIP_INPUT``): ``input`` is
            the precomputed input projection ``x W_ih^T``, shape (T, B, 4H), gate blocks in the
            order i, f, g, o, WITHOUT ``b_ih`` (``bias_ih`` and ``bias_hh`` are added as usual;
            folding b_ih into the projection and passing ``bias_ih=None`` is the same), and
            ``weight_ih`` must be None. The input GEMM is skipped; the gradient reaching
            ``input`` is the gates' pre-activation gradient (T, B, 4H), which a caller turns
            into dW_ih itself (for an embedding or one-hot input: a scatter-add, e.g. through
            ``F.embedding(tokens, W_ih.T)``). Native (no GEMM at all) on the float32 CPU
            sequence kernels and the CPU stepwise route (float64; float32 without AVX-512);
            every other implementation runs it with W_ih = I (4H x 4H), which is correct but
            computes that GEMM (see :mod:`lstm_fast.ops.plan`).

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
    h0, c0 = check_lstm_args(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, input_projection)
    return lstm_layer(input, h0, c0, None if input_projection else weight_ih, weight_hh, bias_ih, bias_hh, backend,
                      lengths)


def lstm_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, backend, lengths=None):
    """Run an already checked layer as :func:`lstm_fast.ops.plan.plan_layer` says: the plan's
    casts, then its implementation (through the autograd Function when a gradient is wanted,
    ``forward_inference`` otherwise; under torch.compile the custom op, :mod:`.custom_ops`), then
    the outputs' cast. ``lengths``: per-row lengths or None; the padding of x is zeroed first.
    ``w_ih`` None: x is the input projection (T, B, 4H) (``fused_lstm(..., input_projection=True)``);
    where the plan says the implementation does not take one, it runs with W_ih = I."""
    compiling = torch.compiler.is_compiling()
    if lengths is not None:
        lengths = check_lengths(lengths, x.shape[0], x.shape[1], values=not compiling)
        x = zero_padding(x, lengths)
    plan = plan_layer(x, w_hh, backend, lengths is not None, input_projection=w_ih is None)
    if plan.segments and compiling:
        raise RuntimeError("lengths under torch.compile need the Triton kernels or the CPU sequence kernels "
                           "(float32, AVX-512)")
    device = x.device.type
    with torch.autocast(device, enabled=False) if autocast_enabled(device) else nullcontext():
        x, h0, c0, w_ih, w_hh, b_ih, b_hh = cast_inputs(plan, x, h0, c0, w_ih, w_hh, b_ih, b_hh)
        if plan.identity_input:   # a projection given to an implementation that takes none
            w_ih = torch.eye(w_hh.shape[0], dtype=w_hh.dtype, device=w_hh.device)
        run = _run_segments if plan.segments else _run_compiled if compiling else _run_eager
        y, (h, c) = run(plan, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths)
    return cast_outputs(plan, y, h, c)


def _run_eager(plan, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths):
    impl = plan.module
    extra = () if lengths is None else (lengths,)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, h0, c0, w_ih, w_hh, b_ih, b_hh)):
        return apply_layer(impl, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths)
    return impl.forward_inference(x, h0, c0, w_ih, w_hh, b_ih, b_hh, *extra)


def _run_compiled(plan, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths):
    return lstm_layer_op(x, h0, c0, w_ih, w_hh, b_ih, b_hh, plan.implementation, lengths)


def _run_segments(plan, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths):
    """Variable lengths for implementations that do not mask: rows sorted by length, then the
    time axis runs in segments between consecutive distinct lengths, each on the rows still
    running (on the plan's implementation, operands already cast); each row's final state is the
    one at its own length, padding outputs are 0."""
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
        y, (h, c) = _run_eager(plan, x[t0:end, :n], h, c, w_ih, w_hh, b_ih, b_hh, None)
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
