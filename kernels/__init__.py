"""Triton kernels for lstm_fast, shipped as ``lstm_fast.kernels`` (see setup.py's package_dir).

Shape legend for every kernel file here: B batch, T steps, D input, H hidden; gates i, f, g, o
(d2l: I, F, C_tilda, O).

``HAS_KERNELS`` tells :mod:`lstm_fast.backends` whether the fused LSTM kernels are present; until
they are, ``backend="triton"`` is a clear error rather than a silent fallback.
"""
HAS_KERNELS = False
