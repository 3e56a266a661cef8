"""ONNX export of ``FusedLSTM``: ONNX's standard ``LSTM`` operator, one node per layer.

Our kernels have no ONNX form, and a runtime such as onnxruntime has its own LSTM kernel anyway,
so what an exported model should hold is the standard operator. While
``torch.onnx.is_in_onnx_export()`` is true (``torch.onnx.export`` sets it while it captures the
model) ``FusedLSTM`` runs its layers through :func:`onnx_layers`, which writes one ONNX ``LSTM``
node per layer (``direction="bidirectional"`` for both directions) with
``torch.onnx.ops.symbolic_multi_out`` (torch's public way to put a given ONNX operator into the
exported graph), nn.LSTM's weights reordered to ONNX's gate order (i, o, f, c). Everything around
the nodes (batch_first, unbatched input, dropout, the projection's MatMul) is ordinary torch
code, exported as ordinary ONNX ops with symbolic shapes. What this covers:

* layers, bias or none, batch_first, unbatched input, given or absent hx, bidirectional;
* dynamic batch and sequence length: the file runs at any length in onnxruntime;
* projections (``proj_size > 0``), which ONNX's LSTM lacks: the node runs the recurrence on
  ``u_t = o_t * tanh(c_t)`` with recurrent weight ``W_hh @ W_hr``, each direction's (projected)
  h_0 entering that direction's first step as extra input columns (:mod:`lstm_fast.projection`;
  the reverse direction starts at t = T - 1), then a MatMul by ``W_hr`` per direction.

The older TorchScript exporter (``dynamo=False``) has no symbolic ops; it gets ``aten.lstm`` per
layer instead, which it writes as the same ``LSTM`` node.

Why not ``nn.LSTM.forward`` (which exports through ``aten.lstm``): with torch 2.13 and
onnxscript 0.7 that translation writes the example's sequence length into a Reshape, so a file
exported with a dynamic length fails in onnxruntime at any other length, and its projection
export gives a file onnxruntime rejects. Under ``torch.export.export`` (no ONNX) nothing here
runs: the layers stay lstm_fast's custom ops (:mod:`lstm_fast.export.onnx_translation` translates those
when such a program is exported to ONNX).

Not exported: a PackedSequence (``pack_padded_sequence`` does not export, for nn.LSTM either).
"""
import torch
import torch.nn.functional as F

from ..projection import first_step_mask


def onnx_layers(module, x, hx, lengths=None):
    """All layers of the FusedLSTM ``module`` on time-first x (T, B, D) with hx = (h_0, c_0), each
    (layers * directions, B, P or H); returns ``(output, h_n, c_n)`` like ``FusedLSTM._run_layers``."""
    if lengths is not None:
        raise RuntimeError("ONNX export of FusedLSTM with a PackedSequence is not supported (nor is nn.LSTM's: "
                           "pack_padded_sequence does not export); pass the padded batch instead")
    nd = 2 if module.bidirectional else 1
    h_all, c_all = [], []
    for layer in range(module.num_layers):
        k = slice(layer * nd, (layer + 1) * nd)
        weights = [module._layer_weights(layer, d) for d in range(nd)]
        x, h_n, c_n = _onnx_layer(x, hx[0][k], hx[1][k], weights)
        h_all.append(h_n)
        c_all.append(c_n)
        if module.dropout > 0 and module.training and layer < module.num_layers - 1:
            x = F.dropout(x, module.dropout, training=True)
    return x, torch.cat(h_all), torch.cat(c_all)


def _onnx_layer(x, h0, c0, weights):
    """One layer, all its directions, as one LSTM node. x (T, B, D); h0 (nd, B, P or H); c0
    (nd, B, H); ``weights``: per direction (w_ih, w_hh, b_ih, b_hh, w_hr) in nn.LSTM's layout."""
    nd = len(weights)
    T, B, H = x.shape[0], x.shape[1], c0.shape[-1]
    projected = weights[0][4] is not None
    if projected:
        # Direction d's h_0 in extra input columns at its first step (t = 0 forward, t = T - 1
        # reverse), seen only by that direction's input weight; the recurrent state starts at 0.
        x = torch.cat([x] + [h0[d].unsqueeze(0) * first_step_mask(T, x, reverse=d == 1) for d in range(nd)], 2)
        h0 = c0.new_zeros(c0.shape).to(x.dtype)
    w_ih_all, w_hh_all, biases = [], [], []
    for d, (w_ih, w_hh, b_ih, b_hh, w_hr) in enumerate(weights):
        if projected:
            w_ih = torch.cat([w_ih] + [w_hh if e == d else w_hh.new_zeros(w_hh.shape) for e in range(nd)], 1)
            w_hh = w_hh @ w_hr
        w_ih_all.append(w_ih)
        w_hh_all.append(w_hh)
        if b_ih is not None or b_hh is not None:   # the operator takes both biases or none
            b_ih = b_ih if b_ih is not None else torch.zeros_like(b_hh)
            b_hh = b_hh if b_hh is not None else torch.zeros_like(b_ih)
            biases.append((b_ih, b_hh))
    if torch.jit.is_tracing():
        # The TorchScript exporter (dynamo=False): aten.lstm, which it writes as an LSTM node.
        params = []
        for d in range(nd):
            params += [w_ih_all[d], w_hh_all[d]] + (list(biases[d]) if biases else [])
        y, h_n, c_n = torch.lstm(x, (h0, c0), params, bool(biases), 1, 0.0, False, nd == 2, False)
        y = y.view(T, B, nd, H).transpose(1, 2)                               # (T, nd, B, H)
    else:
        bias = None
        if biases:
            bias = torch.stack([torch.cat((_onnx_gate_order(b_ih), _onnx_gate_order(b_hh))) for b_ih, b_hh in biases])
        w = torch.stack([_onnx_gate_order(w) for w in w_ih_all])             # (nd, 4H, D), ONNX's W
        r = torch.stack([_onnx_gate_order(w) for w in w_hh_all])             # (nd, 4H, H), ONNX's R
        y, h_n, c_n = torch.onnx.ops.symbolic_multi_out(
            "LSTM", [x, w, r, bias, None, h0, c0],
            {"hidden_size": int(H), "direction": "bidirectional" if nd == 2 else "forward"},
            dtypes=(x.dtype, x.dtype, x.dtype),
            shapes=((T, nd, B, H), (nd, B, H), (nd, B, H)))
    if projected:
        w_hr = [w[4] for w in weights]
        y = torch.stack([y[:, d] @ w_hr[d].t() for d in range(nd)], 1)
        h_n = torch.stack([h_n[d] @ w_hr[d].t() for d in range(nd)])
    return y.permute(0, 2, 1, 3).reshape(T, B, -1), h_n, c_n


def _onnx_gate_order(t):
    """nn.LSTM's gate blocks (i, f, g, o) along dim 0 in ONNX's order (i, o, f, c)."""
    i, f, g, o = t.chunk(4, 0)
    return torch.cat((i, o, f, g), 0)
