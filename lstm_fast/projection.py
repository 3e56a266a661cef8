"""A projected LSTM direction (``proj_size > 0``) as one plain LSTM over all steps.

FusedLSTM runs a projected layer as an LSTM on ``u_t = o_t * tanh(c_t)`` with recurrent weight
``W_hh @ W_hr`` and projects every step afterwards (``h_t = W_hr u_t``; see
:mod:`lstm_fast.module`). Only the first step differs: the caller's h_0 is already projected and
meets the original ``W_hh``. Eager code runs that step as its own call. Exporters want one call
over the whole sequence instead (ONNX: one ``LSTM`` node; ``torch.export``: no slice of length
T - 1, whose size it would guard against 1), so :func:`fold_first_step` moves h_0 into the input:
extra input columns equal to h_0 at t = 0 and 0 after, with input weight ``W_hh``, and a zero
recurrent state. Step 0 then computes ``W_ih x_0 + W_hh h_0 + b`` and each later step
``W_ih x_t + (W_hh W_hr) u_{t-1} + b``, exactly the projected LSTM.
"""
import torch


def fold_first_step(x, h0, c0, w_ih, w_hh, w_hr):
    """Return ``(x', h0', w_ih', w_hh')`` for one plain LSTM call whose outputs are u_t (T, B, H) and
    whose final state is (u_T, c_T). x (T, B, D) time first, h0 (B, P), c0 (B, H); every row
    starts at t = 0, so per-row lengths still apply to the folded call unchanged."""
    x_folded = torch.cat((x, h0.unsqueeze(0) * first_step_mask(x.size(0), x)), 2)
    return x_folded, h0.new_zeros(c0.shape), torch.cat((w_ih, w_hh), 1), w_hh @ w_hr


def first_step_mask(T, like, reverse=False):
    """(T, 1, 1) tensor in ``like``'s dtype and device: 1 at a direction's first step (t = 0, or
    t = T - 1 for the reverse direction run on the forward-ordered input), 0 elsewhere."""
    first = T - 1 if reverse else 0
    return (torch.arange(T, device=like.device) == first).to(like.dtype).view(T, 1, 1)
