"""ONNX translation of the ``lstm_fast::lstm_forward`` custom op, for programs that already hold it.

``torch.onnx.export(model, ...)`` of a module never meets the custom op: while it traces, FusedLSTM
writes ONNX's LSTM operator itself (:mod:`lstm_fast.export.onnx_layers`). A graph captured without that
flag does hold the op: a ``torch.export.export`` program passed to ``torch.onnx.export``, or the
exporter's own fallback to ``strict=True`` capture (dynamo reads ``is_in_onnx_export()`` as
False). For those, pass this table::

    from lstm_fast.export.onnx_translation import custom_translation_table
    torch.onnx.export(program, dynamo=True, custom_translation_table=custom_translation_table())

Each op becomes one ONNX ``LSTM`` node (gates reordered from nn.LSTM's i, f, g, o to ONNX's
i, o, f, c; per-row lengths as ``sequence_lens``). The op's last two outputs are the tensors its
backward needs; an inference graph does not use them, and the translation returns placeholders
that the exporter's optimizer drops as dead code. Importing onnxscript costs about half a second, so this is opt-in and
imported only here.
"""
import torch


def custom_translation_table():
    """``{torch.ops.lstm_fast.lstm_forward.default: translation}`` for ``torch.onnx.export``'s
    ``custom_translation_table``. Needs onnxscript (in the ``dev`` extra)."""
    from onnxscript import opset18 as op
    from onnxscript import ir

    def gate_order(t):
        i, f, g, o = op.Split(t, num_outputs=4, axis=0)
        return op.Concat(i, o, f, g, axis=0)

    def lstm_forward(x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, lengths=None, implementation="cpu_sequence"):
        hidden = w_hh.shape[1]
        bias = None
        if b_ih is not None or b_hh is not None:
            b_ih = b_ih if b_ih is not None else op.Sub(b_hh, b_hh)
            b_hh = b_hh if b_hh is not None else op.Sub(b_ih, b_ih)
            bias = op.Unsqueeze(op.Concat(gate_order(b_ih), gate_order(b_hh), axis=0), [0])
        seq_lens = None if lengths is None else op.Cast(lengths, to=ir.DataType.INT32)
        y, h_n, c_n = op.LSTM(x, op.Unsqueeze(gate_order(w_ih), [0]), op.Unsqueeze(gate_order(w_hh), [0]), bias,
                              seq_lens, op.Unsqueeze(h0, [0]), op.Unsqueeze(c0, [0]), hidden_size=hidden)
        h_n, c_n = op.Squeeze(h_n, [0]), op.Squeeze(c_n, [0])
        # The backward's tensors: unused in an inference graph (dropped as dead code), placeholders here.
        return op.Squeeze(y, [1]), h_n, c_n, op.Identity(h_n), op.Identity(c_n)

    return {torch.ops.lstm_fast.lstm_forward.default: lstm_forward}
