"""One LSTM layer as ``torch.library`` custom ops, so ``torch.compile(fullgraph=True)`` sees a
single opaque op with a shape function and an autograd formula instead of breaking the graph.

* ``lstm_fast::lstm_forward(x, h0, c0, w_ih?, w_hh, b_ih?, b_hh?, lengths?, implementation)`` ->
  ``(Y, h_n, c_n, G, C)``: the layer plus the two tensors its backward needs;
* ``lstm_fast::lstm_backward(dY?, dh_n?, dc_n?, x, h0, c0, w_ih?, w_hh, Y, G, C, lengths?,
  implementation, needs)`` -> the seven gradients (empty where ``needs`` says not wanted).

``implementation`` is the plan's choice (:func:`lstm_fast.ops.plan.plan_layer`, made at trace
time by :func:`lstm_fast.ops.functional.lstm_layer`, which routes here only while
``torch.compiler.is_compiling()``); the ops run that implementation's ``forward_saving`` /
``backward_saved``, the functions the eager autograd Function runs, so compiled and eager numbers
agree, and the fake asks the same implementation what it saves (``saved_like``). ``w_ih`` None:
x is the input projection (``fused_lstm(..., input_projection=True)``).

Second derivatives: when the op's backward itself runs with grad mode on (``create_graph=True``
where the autograd formula runs eagerly: dynamo's ``backend="eager"``), the gradients come from
:func:`lstm_fast.ops.autograd.differentiable_backward`, as in eager mode. aot_autograd (the
``aot_eager`` and ``inductor`` backends) traces the backward once with grad mode off, so its
compiled backward is always ``lstm_backward``; PyTorch supports no double backward through an
aot-compiled graph at all (any op, ``nn.LSTM`` with ``allow_rnn`` included).
"""
from typing import Optional

import torch
from torch import Tensor

from .autograd import differentiable_backward
from .checks import check_lengths
from .plan import implementation_module


@torch.library.custom_op("lstm_fast::lstm_forward", mutates_args=())
def lstm_forward(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Optional[Tensor], w_hh: Tensor, b_ih: Optional[Tensor],
                 b_hh: Optional[Tensor], lengths: Optional[Tensor], implementation: str
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    extra = () if lengths is None else (check_lengths(lengths, x.shape[0], x.shape[1]),)   # values, now real
    Y, h_n, c_n, (G, C) = implementation_module(implementation).forward_saving(x, h0, c0, w_ih, w_hh, b_ih, b_hh,
                                                                               *extra)
    return Y, h_n, c_n, G, C


@lstm_forward.register_fake
def _(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, implementation):
    T, B, _ = x.shape
    H = w_hh.shape[0] // 4
    (g_shape, g_dtype), (c_shape, c_dtype) = implementation_module(implementation).saved_like(x, w_hh)
    return (x.new_empty(T, B, H), x.new_empty(B, H), x.new_empty(B, H),
            x.new_empty(g_shape, dtype=g_dtype), x.new_empty(c_shape, dtype=c_dtype))


@torch.library.custom_op("lstm_fast::lstm_backward", mutates_args=())
def lstm_backward(dY: Optional[Tensor], dh_n: Optional[Tensor], dc_n: Optional[Tensor], x: Tensor, h0: Tensor,
                  c0: Tensor, w_ih: Optional[Tensor], w_hh: Tensor, Y: Tensor, G: Tensor, C: Tensor,
                  lengths: Optional[Tensor], implementation: str, needs: list[bool]
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    extra = () if lengths is None else (check_lengths(lengths, x.shape[0], x.shape[1]),)
    grads = implementation_module(implementation).backward_saved(dY, dh_n, dc_n, x, h0, c0, w_ih, w_hh, Y, (G, C),
                                                                 needs, *extra)
    return tuple(g if g is not None else x.new_empty(0) for g in grads)


@lstm_backward.register_fake
def _(dY, dh_n, dc_n, x, h0, c0, w_ih, w_hh, Y, G, C, lengths, implementation, needs):
    like = (x, h0, c0, w_ih, w_hh, w_hh.new_empty(w_hh.shape[0]), w_hh.new_empty(w_hh.shape[0]))
    return tuple(torch.empty_like(t) if need else x.new_empty(0) for t, need in zip(like, needs, strict=True))


def _setup_context(ctx, inputs, output):
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, implementation = inputs
    Y, _, _, G, C = output
    ctx.save_for_backward(x, h0, c0, w_ih, w_hh, Y, G, C, b_ih, b_hh)   # the biases: for second derivatives
    ctx.lengths, ctx.implementation = lengths, implementation


def _backward(ctx, dY, dh_n, dc_n, _dG, _dC):
    x, h0, c0, w_ih, w_hh, Y, G, C, b_ih, b_hh = ctx.saved_tensors
    needs = [bool(n) for n in ctx.needs_input_grad[:7]]
    if torch.is_grad_enabled():     # create_graph=True, run eagerly: differentiable gradients
        grads = differentiable_backward(needs, (dY, dh_n, dc_n), x, h0, c0, w_ih, w_hh, b_ih, b_hh, ctx.lengths)
        return (*grads, None, None)
    grads = torch.ops.lstm_fast.lstm_backward(dY, dh_n, dc_n, x, h0, c0, w_ih, w_hh, Y, G, C,
                                              ctx.lengths, ctx.implementation, needs)
    return (*(g if need else None for g, need in zip(grads, needs, strict=True)), None, None)


torch.library.register_autograd("lstm_fast::lstm_forward", _backward, setup_context=_setup_context)


def lstm_layer_op(x, h0, c0, w_ih, w_hh, b_ih, b_hh, implementation, lengths=None):
    """The layer through the custom op on the plan's ``implementation``: (Y, (h_n, c_n))."""
    Y, h_n, c_n, _, _ = torch.ops.lstm_fast.lstm_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, implementation)
    return Y, (h_n, c_n)
