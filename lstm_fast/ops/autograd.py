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
    """(impl, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths) -> (Y, h_n, c_n, G, C); G and C (what the
    backward reads) are non-differentiable outputs, dropped by :func:`apply_layer`."""

    @staticmethod
    def forward(impl, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths):
        # No ctx here (setup_context below): the form torch.func's transforms (grad, jacrev,
        # functional_call) accept. G and C, what the backward reads, are outputs of their own.
        extra = () if lengths is None else (lengths,)
        Y, h_n, c_n, (G, C) = impl.forward_saving(x, h0, c0, w_ih, w_hh, b_ih, b_hh, *extra)
        return Y, h_n, c_n, G, C

    @staticmethod
    def setup_context(ctx, inputs, output):
        impl, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths = inputs
        Y, _, _, G, C = output
        ctx.mark_non_differentiable(G, C)
        # Outputs without a gradient arrive as None, not as zero tensors: every implementation's
        # backward takes None for dY, dh_n, dc_n, and G and C never get one (the engine filled a
        # (T, B, 4H) and a (T, B, H) zero tensor per call for them: 1.4 ms of a 27 ms d2l training
        # step on the AVX2 EPYC, 2 threads).
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, Y, G, C)
        ctx.impl, ctx.lengths = impl, lengths
        ctx.b_ih, ctx.b_hh = b_ih, b_hh     # only the double backward reads them (not saved tensors: no copy)

    @staticmethod
    def backward(ctx, dY, dh_n, dc_n, _dG=None, _dC=None):
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
    present = [i for i, t in enumerate(inputs) if t is not None]

    def layer(*ts):
        args = list(inputs)
        for i, t in zip(present, ts):
            args[i] = t
        return lstm_torch_ops(*args, lengths)

    # torch.func.vjp: its gradients are differentiable functions of the inputs and of the incoming
    # gradients (for the engine's create_graph=True and for torch.func's own transforms, which run
    # this backward in grad mode), and they cover only paths inside this layer call (with
    # projections W_hh and the biases also feed another call; autograd.grad w.r.t. the inputs
    # themselves would count that call's share twice).
    with torch.enable_grad():
        outs, vjp_fn = torch.func.vjp(layer, *[inputs[i] for i in present])
        cot = tuple(torch.zeros_like(o) if g is None else g.to(o.dtype) for o, g in zip(outs, grad_outputs))
        grads = vjp_fn(cot)
    result = [None] * 7
    for i, g in zip(present, grads):
        if needs[i]:
            result[i] = g.to(inputs[i].dtype)
    return tuple(result)


def apply_layer(impl, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths=None):
    """The layer through :class:`FusedLSTMFunction`: (Y, (h_n, c_n))."""
    Y, h_n, c_n, _, _ = FusedLSTMFunction.apply(impl, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths)
    return Y, (h_n, c_n)
