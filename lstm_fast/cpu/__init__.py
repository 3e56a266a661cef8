"""The CPU implementation of one LSTM layer: Python and C sources together.

* :mod:`.sequence` + ``sequence_kernels.c``: float32 on CPUs with AVX-512: whole-sequence kernels
  (one C call walks T, the cell fused in the GEMM epilogue), forward and backward;
* :mod:`.stepwise` + ``cell_kernel.c``: float64 (gradcheck), CPUs without AVX-512 and installs
  without a C compiler: a hand-written forward/backward through time, one GEMM per step;
* :mod:`.matmul`: oneDNN/BLAS products for the stepwise path;
* :mod:`.workspace`: reused large buffers (no page faults).

:func:`lstm_cpu` picks between the two paths. Both modules provide ``forward_saving`` /
``backward_saved`` for :class:`lstm_fast.fused_function.FusedLSTMFunction`.
"""
from . import sequence, stepwise
from .stepwise import lstm_cpu

__all__ = ["lstm_cpu", "sequence", "stepwise"]
