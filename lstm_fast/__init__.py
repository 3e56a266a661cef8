"""lstm-fast: a drop-in ``torch.nn.LSTM`` on fused kernels (Triton on CUDA, a hand-written
forward/backward through time on the CPU), validated against the d2l scratch LSTM and nn.LSTM.

Public API: :class:`FusedLSTM`, :func:`fused_lstm`, :func:`convert` (every ``nn.LSTM`` in a model
becomes a FusedLSTM, in place), :func:`revert` (back to nn.LSTM), :class:`LSTMStream` (one step per
call on a snapshot of the weights, for serving) and :mod:`lstm_fast.reference`.
"""
import torch

from . import reference
from .convert import convert, revert
from .ops.functional import fused_lstm
from .module import FusedLSTM
from .stream import LSTMStream

# Whole-model checkpoints: torch.load(weights_only=True) may rebuild a FusedLSTM. Its pickled state is
# nn.LSTM's plus one string (backend), so the class itself is the only global to allow; it runs no
# code from the file beyond nn.LSTM's own __setstate__.
torch.serialization.add_safe_globals([FusedLSTM])

__version__ = "0.1.0"
__all__ = ["FusedLSTM", "LSTMStream", "convert", "revert", "fused_lstm", "reference", "__version__"]
