"""Tensor helpers every implementation of one LSTM layer shares (the CPU modules, the Triton
layer) and the op layer above them: the summed bias, h_n from the outputs, the padding mask of
per-row lengths. Imports nothing from lstm_fast, so any layer may use it without a cycle."""
import torch


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


def padding_mask(lengths, T, device):
    """(T, B, 1) bool, True at the padded steps t >= lengths[b]."""
    return (torch.arange(T, device=device).unsqueeze(1) >= lengths.to(device).unsqueeze(0)).unsqueeze(-1)


def zero_padding(x, lengths):
    """``x`` with the positions past each row's length set to 0: they never affect the result,
    but an implementation summing over all steps (the input-weight gradient, dgates^T x) would
    turn NaN/Inf there into NaN (0 * NaN). One masked copy of x, on every path."""
    return x.masked_fill(padding_mask(lengths, x.shape[0], x.device), 0)
