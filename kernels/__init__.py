"""Triton kernels for lstm_fast, shipped as ``lstm_fast.kernels`` (see setup.py's package_dir).

Shape legend for every kernel file here: B batch, T steps, D input, H hidden; gates i, f, g, o
(d2l: I, F, C_tilda, O).

* :mod:`.lstm_fwd`: the launcher ``lstm_fwd`` (picks the path) and the batch-tiled
  ``_lstm_fwd_kernel`` (persistent, walks T);
* :mod:`.lstm_bwd`: ``lstm_bwd`` and the batch-tiled ``_lstm_bwd_kernel`` (walks T in reverse);
* :mod:`.lstm_fwd_hidden_split`, :mod:`.lstm_bwd_hidden_split`: the hidden-split path (W_hh split
  by hidden units across programs, on chip for all T), persistent and step-launch drivers;
* :mod:`.grid_sync`: how the hidden-split programs exchange a step ("ll" tagged words, the
  "counter" barrier), bounded waits, the launch;
* :mod:`.step_cost`: the hidden-split step-cost model (sourced H100 constants) the dispatcher uses;
* :mod:`.lstm_config`: the dispatcher (``pick_plan``) and the tile tables;
* :mod:`.matmul`: a TF32 GEMM for float32 layers whose recurrence runs in TF32.

Importing this package imports triton; :mod:`lstm_fast.ops.backends` turns an ImportError into a clear
"backend='triton' is not available" error.
"""
from .lstm_bwd import lstm_bwd
from .lstm_config import LSTMKernelConfig, all_configs, pick_config, pick_plan
from .lstm_fwd import lstm_fwd
from .matmul import matmul

HAS_KERNELS = True
__all__ = ["lstm_fwd", "lstm_bwd", "matmul", "pick_config", "pick_plan", "all_configs", "LSTMKernelConfig",
           "HAS_KERNELS"]
