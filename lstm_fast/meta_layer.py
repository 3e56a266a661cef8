"""One LSTM layer on meta tensors: outputs (and gradients) of the right shapes and dtypes, nothing
computed, as nn.LSTM gives on the meta device (shape inference, ``torch.device("meta")`` model
building). The implementation interface of :data:`lstm_fast.ops.plan.IMPLEMENTATIONS`."""
import torch


def available_for(x, w_hh) -> bool:
    return x.device.type == "meta"


def forward_inference(x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, lengths=None):
    T, B, _ = x.shape
    H = w_hh.shape[0] // 4
    return x.new_empty(T, B, H), (h0.new_empty(B, H), c0.new_empty(B, H))


def saved_like(x, w_hh):
    T, B, _ = x.shape
    H = w_hh.shape[0] // 4
    return ((T, B, 4 * H), x.dtype), ((T, B, H), x.dtype)


def forward_saving(x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, lengths=None):
    Y, (h, c) = forward_inference(x, h0, c0, w_ih, w_hh, b_ih, b_hh)
    (g_shape, g_dtype), (c_shape, c_dtype) = saved_like(x, w_hh)
    return Y, h, c, (x.new_empty(g_shape, dtype=g_dtype), x.new_empty(c_shape, dtype=c_dtype))


def backward_saved(dY, dh_n, dc_n, x, h0, c0, w_ih, w_hh, Y, saved, needs, lengths=None):
    bias = w_hh.new_empty(w_hh.shape[0])
    like = (x, h0, c0, w_ih, w_hh, bias, bias)
    return tuple(torch.empty_like(t) if need else None for t, need in zip(like, needs, strict=True))
