"""One LSTM layer as ``torch.library`` custom ops, so ``torch.compile(fullgraph=True)`` sees a
single opaque op with a shape function and an autograd formula instead of breaking the graph.

* ``lstm_fast::lstm_forward(x, h0, c0, w_ih, w_hh, b_ih?, b_hh?, lengths?, backend)`` ->
  ``(Y, h_n, c_n, G, C)``: the layer plus the two tensors its backward needs;
* ``lstm_fast::lstm_backward(dY?, dh_n?, dc_n?, x, h0, c0, w_ih, w_hh, Y, G, C, lengths?, backend,
  needs)`` -> the seven gradients (empty where ``needs`` says not wanted).

Both run the same ``forward_saving`` / ``backward_saved`` functions as the eager autograd
Functions, so compiled and eager numbers agree. :func:`lstm_fast.functional.lstm_layer` routes here
only while ``torch.compiler.is_compiling()``.
"""
from typing import Optional

import torch
from torch import Tensor

from .cpu import bf16_sequence as cpu_bf16, sequence as cpu_sequence, stepwise as cpu_stepwise
from .backends import resolve_backend
from .functional import check_lengths


def _implementation(backend, x, w_hh, lengths):
    """The module providing forward_saving/backward_saved for this layer, and whether it takes lengths."""
    chosen = resolve_backend(backend, x.device.type)
    if chosen == "cpu" and cpu_sequence.available_for(x, w_hh):
        return cpu_sequence, True
    if chosen == "cpu" and _native_bf16(x, w_hh):
        return cpu_bf16, True
    if chosen == "triton":
        from . import triton_function
        return triton_function, True
    if lengths is not None:
        raise RuntimeError("lengths under torch.compile need the Triton kernels or the CPU sequence kernels "
                           "(float32, AVX-512)")
    return cpu_stepwise, False


def _native_bf16(x, w_hh):
    """Whether a CPU layer runs on the bf16 kernels: bf16 ``x`` (the weights float32 or bf16, as
    eager passes them under autocast) and :func:`lstm_fast.cpu.bf16_sequence.available_for`."""
    return x.dtype == torch.bfloat16 and cpu_bf16.available_for(x, w_hh)


def _saved_shapes(x, w_hh, backend):
    """Shapes and dtypes of (G, C) for the implementation that will run (the fake impl's answer)."""
    T, B, _ = x.shape
    H = w_hh.shape[0] // 4
    if resolve_backend(backend, x.device.type) == "cpu" and _native_bf16(x, w_hh):
        # the bf16 kernels: gates and tanh(c_t) in bf16 blocks of 16 units, float32 cell states
        return (T, (H + 15) // 16, B, 80), (T, B, H), (torch.bfloat16, torch.float32)
    triton = backend == "triton" or (backend == "auto" and x.device.type == "cuda")
    # Triton keeps G, C in float32 (float64 for float64); the CPU implementations in x's dtype.
    acc = (torch.float64 if x.dtype == torch.float64 else torch.float32) if triton else x.dtype
    return (T, B, 4 * H), ((T + 1) if triton else T, B, H), (acc, acc)


@torch.library.custom_op("lstm_fast::lstm_forward", mutates_args=())
def lstm_forward(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
                 b_hh: Optional[Tensor], lengths: Optional[Tensor], backend: str
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    lengths = None if lengths is None else check_lengths(lengths, x.shape[0], x.shape[1])   # values, now real
    impl, takes_lengths = _implementation(backend, x, w_hh, lengths)
    args = (x, h0, c0, w_ih, w_hh, b_ih, b_hh) + ((lengths,) if takes_lengths else ())
    Y, h_n, c_n, (G, C) = impl.forward_saving(*args)
    return Y, h_n, c_n, G, C


@lstm_forward.register_fake
def _(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, backend):
    T, B, _ = x.shape
    H = w_hh.shape[0] // 4
    g_shape, c_shape, (g_dtype, c_dtype) = _saved_shapes(x, w_hh, backend)
    return (x.new_empty(T, B, H), x.new_empty(B, H), x.new_empty(B, H),
            x.new_empty(g_shape, dtype=g_dtype), x.new_empty(c_shape, dtype=c_dtype))


@torch.library.custom_op("lstm_fast::lstm_backward", mutates_args=())
def lstm_backward(dY: Optional[Tensor], dh_n: Optional[Tensor], dc_n: Optional[Tensor], x: Tensor, h0: Tensor,
                  c0: Tensor, w_ih: Tensor, w_hh: Tensor, Y: Tensor, G: Tensor, C: Tensor,
                  lengths: Optional[Tensor], backend: str, needs: list[bool]
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    lengths = None if lengths is None else check_lengths(lengths, x.shape[0], x.shape[1])
    impl, takes_lengths = _implementation(backend, x, w_hh, lengths)
    extra = (lengths,) if takes_lengths else ()
    grads = impl.backward_saved(dY, dh_n, dc_n, x, h0, c0, w_ih, w_hh, Y, (G, C), needs, *extra)
    return tuple(g if g is not None else x.new_empty(0) for g in grads)


@lstm_backward.register_fake
def _(dY, dh_n, dc_n, x, h0, c0, w_ih, w_hh, Y, G, C, lengths, backend, needs):
    like = (x, h0, c0, w_ih, w_hh, w_hh.new_empty(w_hh.shape[0]), w_hh.new_empty(w_hh.shape[0]))
    return tuple(torch.empty_like(t) if need else x.new_empty(0) for t, need in zip(like, needs, strict=True))


def _setup_context(ctx, inputs, output):
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, backend = inputs
    Y, _, _, G, C = output
    ctx.save_for_backward(x, h0, c0, w_ih, w_hh, Y, G, C)
    ctx.lengths, ctx.backend = lengths, backend


def _backward(ctx, dY, dh_n, dc_n, _dG, _dC):
    x, h0, c0, w_ih, w_hh, Y, G, C = ctx.saved_tensors
    needs = [bool(n) for n in ctx.needs_input_grad[:7]]
    grads = torch.ops.lstm_fast.lstm_backward(dY, dh_n, dc_n, x, h0, c0, w_ih, w_hh, Y, G, C,
                                              ctx.lengths, ctx.backend, needs)
    return (*(g if need else None for g, need in zip(grads, needs, strict=True)), None, None)


torch.library.register_autograd("lstm_fast::lstm_forward", _backward, setup_context=_setup_context)


def lstm_layer_op(x, h0, c0, w_ih, w_hh, b_ih, b_hh, backend, lengths=None):
    """The layer through the custom op: (Y, (h_n, c_n))."""
    Y, h_n, c_n, _, _ = torch.ops.lstm_fast.lstm_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, backend)
    return Y, (h_n, c_n)
