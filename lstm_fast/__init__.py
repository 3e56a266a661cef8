"""lstm-fast: a drop-in ``torch.nn.LSTM`` on fused kernels (Triton on CUDA, a hand-written
forward/backward through time on the CPU), validated against the d2l scratch LSTM and nn.LSTM.

Public API: :class:`FusedLSTM`, :func:`fused_lstm`, :func:`convert` (every ``nn.LSTM`` in a model
becomes a FusedLSTM, in place) and :mod:`lstm_fast.reference`.
"""
from . import reference
from .convert import convert
from .ops.functional import fused_lstm
from .module import FusedLSTM

__version__ = "0.1.0"
__all__ = ["FusedLSTM", "convert", "fused_lstm", "reference", "__version__"]
