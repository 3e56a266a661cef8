"""lstm-fast: a drop-in ``torch.nn.LSTM`` on fused kernels (Triton on CUDA, a hand-written
forward/backward through time on the CPU), validated against the d2l scratch LSTM and nn.LSTM.

Public API: :class:`FusedLSTM`, :func:`fused_lstm`, and :mod:`lstm_fast.reference`.
"""
from . import reference
from .functional import fused_lstm
from .module import FusedLSTM

__version__ = "0.1.0"
__all__ = ["FusedLSTM", "fused_lstm", "reference", "__version__"]
