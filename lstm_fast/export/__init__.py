"""Export of FusedLSTM models: ONNX's standard ``LSTM`` operator one node per layer
(:mod:`.onnx_layers`, used by ``torch.onnx.export`` through FusedLSTM.forward) and the ONNX
translation of lstm_fast's custom op for programs that hold it (:mod:`.onnx_translation`)."""
