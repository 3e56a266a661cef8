"""The CPU implementations of one LSTM layer: Python and C sources together.

* :mod:`.sequence` + ``sequence_kernels.c`` (AVX-512) or ``sequence_avx2_kernels.c`` (AVX2 + FMA):
  float32 whole-sequence kernels (one C call walks T, the cell fused in the GEMM epilogue),
  forward and backward; the weight gradients from :mod:`.weight_gradient`;
* :mod:`.bf16_sequence` + ``bf16_sequence_kernels.c``: the same in bfloat16 (AMX tiles or
  AVX512-BF16 dot products), for bf16 parameters and CPU autocast;
* :mod:`.small_batch` + ``small_batch_kernels.c`` / ``small_batch_avx2_kernels.c``: float32 at
  batch 1..a few (weights in nn.LSTM's layout, nothing packed per call);
* :mod:`.stepwise` + ``cell_kernel.c``: float64 (gradcheck), CPUs without AVX2 and installs
  without a C compiler: a hand-written forward/backward through time, one GEMM per step;
* :mod:`.matmul`: oneDNN/BLAS products for the stepwise path;
* :mod:`.workspace`: reused large buffers (no page faults).

Each implementation module provides ``available_for``, ``forward_inference``, ``forward_saving``,
``backward_saved`` and ``saved_like``; which one runs a layer is decided by the op layer's plan
(:func:`lstm_fast.ops.plan.plan_layer`), never here.
"""
