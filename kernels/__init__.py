"""Triton kernels for lstm_fast, shipped as ``lstm_fast.kernels`` (see setup.py's package_dir).

Shape legend for every kernel file here: B batch, T steps, D input, H hidden; gates i, f, g, o
(d2l: I, F, C_tilda, O).

* :mod:`.lstm_fwd`: ``_lstm_fwd_kernel`` (persistent, walks T) and its launcher ``lstm_fwd``;
* :mod:`.lstm_bwd`: ``_lstm_bwd_kernel`` (persistent, walks T in reverse) and ``lstm_bwd``;
* :mod:`.lstm_config`: the tile table the launchers pick from.

Importing this package imports triton; :mod:`lstm_fast.backends` turns an ImportError into a clear
"backend='triton' is not available" error.
"""
from .lstm_bwd import lstm_bwd
from .lstm_config import LSTMKernelConfig, all_configs, pick_config
from .lstm_fwd import lstm_fwd

HAS_KERNELS = True
__all__ = ["lstm_fwd", "lstm_bwd", "pick_config", "all_configs", "LSTMKernelConfig", "HAS_KERNELS"]
