"""``FusedLSTMFunction``: the autograd Function of one LSTM layer, shared by every implementation.

An implementation is a module with ``forward_saving(x, h0, c0, w_ih, w_hh, b_ih, b_hh[, lengths])``
-> ``(Y, h_n, c_n, saved)`` and ``backward_saved(dY, dh_n, dc_n, x, h0, c0, w_ih, w_hh, Y, saved,
needs[, lengths])`` -> the seven gradients: :mod:`lstm_fast.cpu.sequence` (float32 CPU kernels),
:mod:`lstm_fast.cpu.stepwise` (float64 / no AVX-512) and :mod:`lstm_fast.triton_function` (Triton).
The torch.compile custom ops (:mod:`lstm_fast.custom_ops`) call the same two functions.
"""
import torch


class FusedLSTMFunction(torch.autograd.Function):
    """(impl, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths) -> (Y, h_n, c_n)."""

    @staticmethod
    def forward(ctx, impl, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths):
        extra = () if lengths is None else (lengths,)
        Y, h_n, c_n, (G, C) = impl.forward_saving(x, h0, c0, w_ih, w_hh, b_ih, b_hh, *extra)
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, Y, G, C)
        ctx.impl, ctx.lengths = impl, lengths
        return Y, h_n, c_n

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dY, dh_n, dc_n):
        x, h0, c0, w_ih, w_hh, Y, G, C = ctx.saved_tensors
        extra = () if ctx.lengths is None else (ctx.lengths,)
        grads = ctx.impl.backward_saved(dY, dh_n, dc_n, x, h0, c0, w_ih, w_hh, Y, (G, C),
                                        ctx.needs_input_grad[1:8], *extra)
        return (None, *grads, None)


def summed_bias(b_ih, b_hh):
    """b_ih + b_hh, either of which may be None (nn.LSTM adds the two); None when both are."""
    if b_ih is None:
        return b_hh
    return b_ih if b_hh is None else b_ih + b_hh


def final_hidden(Y, h0, lengths):
    """h_n: the output at each row's last step (h_0 for a row of length 0), on any device."""
    if lengths is None:
        return Y[-1].clone()
    lengths = lengths.to(Y.device)
    rows = torch.arange(Y.shape[1], device=Y.device)
    h = Y[(lengths - 1).clamp(min=0), rows]
    return torch.where((lengths > 0).unsqueeze(1), h, h0)


def needs_autograd(*tensors):
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def apply_layer(impl, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths=None):
    """The layer through :class:`FusedLSTMFunction`: (Y, (h_n, c_n))."""
    Y, h_n, c_n = FusedLSTMFunction.apply(impl, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths)
    return Y, (h_n, c_n)
