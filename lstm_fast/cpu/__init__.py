"""The CPU implementations of one LSTM layer: Python and C sources together.

* :mod:`.sequence` + ``sequence_kernels.c``: float32 on CPUs with AVX-512: whole-sequence kernels
  (one C call walks T, the cell fused in the GEMM epilogue), forward and backward;
* :mod:`.bf16_sequence` + ``bf16_sequence_kernels.c``: the same in bfloat16 (AMX tiles or
  AVX512-BF16 dot products), for bf16 parameters and CPU autocast;
* :mod:`.stepwise` + ``cell_kernel.c``: float64 (gradcheck), CPUs without AVX-512 and installs
  without a C compiler: a hand-written forward/backward through time, one GEMM per step;
* :mod:`.matmul`: oneDNN/BLAS products for the stepwise path;
* :mod:`.workspace`: reused large buffers (no page faults).

Each implementation module provides ``available_for``, ``forward_inference``, ``forward_saving``,
``backward_saved`` and ``saved_like``; which one runs a layer is decided by the op layer's plan
(:func:`lstm_fast.ops.plan.plan_layer`), never here.
"""
