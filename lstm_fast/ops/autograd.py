"""``FusedLSTMFunction``: the autograd Function of one LSTM layer, shared by every implementation.

An implementation is a module with ``forward_saving(x, h0, c0, w_ih, w_hh, b_ih, b_hh[, lengths])``
-> ``(Y, h_n, c_n, saved)`` and ``backward_saved(dY, dh_n, dc_n, x, h0, c0, w_ih, w_hh, Y, saved,
needs[, lengths])`` -> the seven gradients (see :data:`lstm_fast.ops.plan.IMPLEMENTATIONS`). The
torch.compile custom ops (:mod:`lstm_fast.ops.custom_ops`) call the same two functions.

Second derivatives (a backward run with ``create_graph=True``) go through
:func:`differentiable_backward` instead: the layer recomputed with differentiable torch ops.
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
        ctx.b_ih, ctx.b_hh = b_ih, b_hh     # only the double backward reads them (not saved tensors: no copy)
        return Y, h_n, c_n

    @staticmethod
    def backward(ctx, dY, dh_n, dc_n):
        if torch.is_grad_enabled():
            # backward(create_graph=True) / autograd.grad(..., create_graph=True): second
            # derivatives, through a differentiable recomputation (the fast path stays as it is).
            x, h0, c0, w_ih, w_hh = ctx.saved_tensors[:5]
            grads = differentiable_backward(ctx.needs_input_grad[1:8], (dY, dh_n, dc_n), x, h0, c0, w_ih, w_hh,
                                            ctx.b_ih, ctx.b_hh, ctx.lengths)
            return (None, *grads, None)
        x, h0, c0, w_ih, w_hh, Y, G, C = ctx.saved_tensors
        extra = () if ctx.lengths is None else (ctx.lengths,)
        grads = ctx.impl.backward_saved(dY, dh_n, dc_n, x, h0, c0, w_ih, w_hh, Y, (G, C),
                                        ctx.needs_input_grad[1:8], *extra)
        return (None, *grads, None)


def lstm_torch_ops(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths=None):
    """The layer as differentiable torch ops (float32, or float64 for float64 inputs): (Y, h_n, c_n),
    finished rows frozen with output 0 past their length. Used only to differentiate the
    gradients (second derivatives); never on the fast path. ``w_ih`` None: x is the input
    projection (T, B, 4H)."""
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    x, h, c, w_hh = x.to(dt), h0.to(dt), c0.to(dt), w_hh.to(dt)
    xg = x if w_ih is None else x @ w_ih.to(dt).t()
    for b in (b_ih, b_hh):
        if b is not None:
            xg = xg + b.to(dt)
    ys = []
    for t in range(x.shape[0]):
        i, f, g, o = (xg[t] + h @ w_hh.t()).chunk(4, 1)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h_new = torch.sigmoid(o) * torch.tanh(c_new)
        if lengths is None:
            h, c = h_new, c_new
            ys.append(h)
        else:
            run = (lengths.to(x.device) > t).unsqueeze(1)
            h, c = torch.where(run, h_new, h), torch.where(run, c_new, c)
            ys.append(torch.where(run, h_new, torch.zeros_like(h_new)))
    return torch.stack(ys), h, c


def differentiable_backward(needs, grad_outputs, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths):
    """The seven gradients (dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh) as differentiable functions of
    the inputs and of the incoming gradients: :func:`lstm_torch_ops` recomputed and differentiated
    with ``create_graph=True``."""
    inputs = (x, h0, c0, w_ih, w_hh, b_ih, b_hh)
    wanted = [i for i, (t, n) in enumerate(zip(inputs, needs)) if n and t is not None]
    with torch.enable_grad():
        # Each input enters the recomputation through an alias of its own (a view: the gradient
        # stays a differentiable function of the input), and the gradients are taken w.r.t. the
        # aliases. Taken w.r.t. the inputs themselves, autograd.grad would also follow paths that
        # leave this layer call: with projections the biases and W_hh feed both the first-step
        # call and the rest, and h_0 of the rest comes from the first step, so the first call's
        # share would be counted here and again by the engine.
        leaves = [None if t is None else t.view_as(t) if t.requires_grad else t.detach().requires_grad_()
                  for t in inputs]
        outs = lstm_torch_ops(*leaves, lengths)
        pairs = [(o, g) for o, g in zip(outs, grad_outputs) if g is not None]
        grads = torch.autograd.grad([o for o, _ in pairs], [leaves[i] for i in wanted],
                                    [g.to(o.dtype) for o, g in pairs], create_graph=True, allow_unused=True)
    result = [None] * 7
    for i, g in zip(wanted, grads):
        result[i] = torch.zeros_like(inputs[i]) if g is None else g.to(inputs[i].dtype)
    return tuple(result)


def apply_layer(impl, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths=None):
    """The layer through :class:`FusedLSTMFunction`: (Y, (h_n, c_n))."""
    Y, h_n, c_n = FusedLSTMFunction.apply(impl, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths)
    return Y, (h_n, c_n)
