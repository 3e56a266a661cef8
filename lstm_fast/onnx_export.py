"""ONNX export of ``FusedLSTM``: ONNX's standard ``LSTM`` operator, written out directly.

Our kernels have no ONNX form, and a runtime such as onnxruntime has its own LSTM kernel anyway,
so what an exported model should hold is the standard operator. While
``torch.onnx.is_in_onnx_export()`` is true (``torch.onnx.export(..., dynamo=True)`` sets it for the
capture) ``FusedLSTM`` runs each layer and direction through :func:`onnx_direction`, which emits
one ONNX ``LSTM`` node with ``torch.onnx.ops.symbolic_multi_out`` (torch's public way to put a
given ONNX operator into the exported graph), with nn.LSTM's weights reordered to ONNX's gate
order (i, o, f, c). Everything around the node (reversal for the backward direction, the concat
of directions, batch_first, dropout, the projection's MatMul) is ordinary torch code and exports
as ordinary ONNX ops with symbolic shapes. What this covers:

* layers, bias or none, batch_first, unbatched input, given or absent hx, both directions (one
  ``LSTM`` node per layer and direction; the reverse direction is the forward operator on the
  time-reversed input, as FusedLSTM computes it);
* dynamic batch and sequence length: the file runs at any length in onnxruntime;
* projections (``proj_size > 0``), which ONNX's LSTM lacks: the node runs the recurrence on
  ``u_t = o_t * tanh(c_t)`` with recurrent weight ``W_hh @ W_hr``, the caller's (projected) h_0
  entering the first step as extra input columns (:mod:`lstm_fast.projection`), so it is still
  one node per direction, plus a MatMul by ``W_hr``.

Why not ``nn.LSTM.forward`` (which exports through ``aten.lstm``): with torch 2.13 and
onnxscript 0.7 its translation writes the example's sequence length into a Reshape, so a file
exported with a dynamic length fails in onnxruntime at any other length, and its projection
export gives a file onnxruntime rejects. Under ``torch.export.export`` (no ONNX) nothing here
runs: the layers stay lstm_fast's custom ops (:mod:`lstm_fast.onnx_translation` translates
those when such a program is exported to ONNX). The TorchScript exporter (``dynamo=False``) gets
``aten.lstm`` per direction instead, which it turns into the same ``LSTM`` node.

Not exported: a PackedSequence (``pack_padded_sequence`` does not export, for nn.LSTM either).
"""
import torch

from .projection import fold_first_step


def onnx_direction(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr=None, lengths=None):
    """One layer, one (forward) direction as one ONNX ``LSTM`` node.

    Args are FusedLSTM's for one direction: x (T, B, D) time first, h0 (B, P or H), c0 (B, H),
    nn.LSTM's weights (gate rows i, f, g, o), ``w_hr`` (P, H) or None, ``lengths`` None (a
    PackedSequence does not export, with nn.LSTM either). Returns ``(y, h_n, c_n)``, y (T, B, P or H)."""
    if lengths is not None:
        raise RuntimeError("ONNX export of FusedLSTM with a PackedSequence is not supported (nor is nn.LSTM's: "
                           "pack_padded_sequence does not export); pass the padded batch instead")
    T, B = x.shape[0], x.shape[1]
    H = c0.shape[-1]
    if w_hr is not None:
        x, h0, w_ih, w_hh = fold_first_step(x, h0, c0, w_ih, w_hh, w_hr)
    if (b_ih is None) != (b_hh is None):       # the operator takes both biases or none
        b_ih = b_ih if b_ih is not None else torch.zeros_like(b_hh)
        b_hh = b_hh if b_hh is not None else torch.zeros_like(b_ih)
    if torch.jit.is_tracing():
        # The TorchScript exporter (dynamo=False) has no symbolic ops; it turns aten.lstm into LSTM.
        params = [w_ih, w_hh] if b_ih is None else [w_ih, w_hh, b_ih, b_hh]
        y, h_n, c_n = torch.lstm(x, (h0.unsqueeze(0), c0.unsqueeze(0)), params, b_ih is not None, 1, 0.0, False,
                                 False, False)
    else:
        bias = None if b_ih is None else torch.cat((_onnx_gate_order(b_ih), _onnx_gate_order(b_hh))).unsqueeze(0)
        y, h_n, c_n = torch.onnx.ops.symbolic_multi_out(
            "LSTM",
            [x, _onnx_gate_order(w_ih).unsqueeze(0), _onnx_gate_order(w_hh).unsqueeze(0), bias, None,
             h0.unsqueeze(0), c0.unsqueeze(0)],
            {"hidden_size": int(H), "direction": "forward"},
            dtypes=(x.dtype, x.dtype, x.dtype),
            shapes=((T, 1, B, H), (1, B, H), (1, B, H)))
        y = y.squeeze(1)
    h_n, c_n = h_n.squeeze(0), c_n.squeeze(0)
    if w_hr is not None:
        y, h_n = y @ w_hr.t(), h_n @ w_hr.t()
    return y, h_n, c_n


def _onnx_gate_order(t):
    """nn.LSTM's gate blocks (i, f, g, o) along dim 0 in ONNX's order (i, o, f, c)."""
    i, f, g, o = t.chunk(4, 0)
    return torch.cat((i, o, f, g), 0)
