"""``FusedLSTMFunction``: the autograd Function of one LSTM layer, shared by every implementation.

An implementation is a module with ``forward_saving(x, h0, c0, w_ih, w_hh, b_ih, b_hh[, lengths])``
-> ``(Y, h_n, c_n, saved)`` and ``backward_saved(dY, dh_n, dc_n, x, h0, c0, w_ih, w_hh, Y, saved,
needs[, lengths])`` -> the seven gradients (see :data:`lstm_fast.ops.plan.IMPLEMENTATIONS`). The
torch.compile custom ops (:mod:`lstm_fast.ops.custom_ops`) call the same two functions.
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


def apply_layer(impl, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths=None):
    """The layer through :class:`FusedLSTMFunction`: (Y, (h_n, c_n))."""
    Y, h_n, c_n = FusedLSTMFunction.apply(impl, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths)
    return Y, (h_n, c_n)
