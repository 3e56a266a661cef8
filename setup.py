"""lstm-fast: a drop-in torch.nn.LSTM on fused Triton kernels and a fast CPU implementation.

The top-level ``kernels/`` folder (Triton kernels only) is installed as ``lstm_fast.kernels``: a
top-level package named ``kernels`` belongs to another PyPI project.
"""
from setuptools import Extension, setup

# The fused CPU cell (plain C, no torch headers). Optional: without a C compiler the package still
# installs and the CPU implementation runs its cell update as torch ops.
cpu_cell = Extension("lstm_fast.cpu._cell_kernel", sources=["lstm_fast/cpu/cell_kernel.c"],
                     extra_compile_args=["-O3", "-fno-math-errno", "-fno-trapping-math"], optional=True)
# Whole-sequence AVX-512 kernels (one call walks T; threads from torch's own OpenMP runtime).
cpu_seq = Extension("lstm_fast.cpu._sequence_kernels", sources=["lstm_fast/cpu/sequence_kernels.c"], libraries=["dl"],
                    depends=["lstm_fast/cpu/kernel_support.h", "lstm_fast/cpu/sequence_templates.h",
                             "lstm_fast/cpu/sequence_bindings.h", "lstm_fast/cpu/weight_gradient_gemm.h",
                             "lstm_fast/cpu/weight_gradient_operands.h"],
                    extra_compile_args=["-O3", "-fno-math-errno", "-fno-trapping-math"], optional=True)
# The same for x86-64 CPUs with AVX2 + FMA and no AVX-512 (8-lane tiles, its own panel shapes).
cpu_seq_avx2 = Extension("lstm_fast.cpu._sequence_avx2_kernels", sources=["lstm_fast/cpu/sequence_avx2_kernels.c"],
                         libraries=["dl"], depends=["lstm_fast/cpu/kernel_support.h", "lstm_fast/cpu/sequence_templates.h",
                                                    "lstm_fast/cpu/sequence_bindings.h"],
                         extra_compile_args=["-O3", "-fno-math-errno", "-fno-trapping-math"], optional=True)
# The same in bfloat16 (AVX512-BF16 dot products; per-function target attributes and a runtime CPU
# check, so the module loads on any x86-64 and reports itself unavailable where the CPU lacks them).
cpu_bf16_seq = Extension("lstm_fast.cpu._bf16_sequence_kernels", sources=["lstm_fast/cpu/bf16_sequence_kernels.c"],
                         libraries=["dl"], depends=["lstm_fast/cpu/kernel_support.h", "lstm_fast/cpu/sequence_templates.h"],
                         extra_compile_args=["-O3", "-fno-math-errno", "-fno-trapping-math"], optional=True)

# Small-batch kernels (batch 1..a few, one step per call): weights read in nn.LSTM's own layout,
# nothing packed per call; each thread keeps its slice of W_hh in its own L2.
cpu_small_batch = Extension("lstm_fast.cpu._small_batch_kernels", sources=["lstm_fast/cpu/small_batch_kernels.c"],
                            libraries=["dl"], depends=["lstm_fast/cpu/kernel_support.h"],
                            extra_compile_args=["-O3", "-fno-math-errno", "-fno-trapping-math"], optional=True)

# The same kernels for x86-64 CPUs with AVX2 + FMA and no AVX-512, with the weight-gradient GEMM
# their backward needs there (the AVX-512 one lives in _sequence_kernels).
cpu_small_batch_avx2 = Extension("lstm_fast.cpu._small_batch_avx2_kernels",
                                 sources=["lstm_fast/cpu/small_batch_avx2_kernels.c"], libraries=["dl"],
                                 depends=["lstm_fast/cpu/kernel_support.h", "lstm_fast/cpu/thread_team.h", "lstm_fast/cpu/weight_gradient_gemm_avx2.h",
                                          "lstm_fast/cpu/weight_gradient_operands.h"],
                                 extra_compile_args=["-O3", "-fno-math-errno", "-fno-trapping-math"], optional=True)

setup(
    name="lstm-fast",
    version="0.1.0",
    description="A drop-in torch.nn.LSTM whose math runs on fused Triton kernels and a fast CPU path",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["lstm_fast", "lstm_fast.ops", "lstm_fast.cpu", "lstm_fast.export", "lstm_fast.d2l", "lstm_fast.kernels"],
    package_dir={"lstm_fast": "lstm_fast", "lstm_fast.kernels": "kernels"},
    package_data={"lstm_fast.d2l": ["corpus/timemachine.txt"]},
    install_requires=[
        "torch>=2.4",
        "numpy",
        "tqdm",
        "triton>=3.6; platform_system == 'Linux'",
        "matplotlib",
    ],
    extras_require={
        # the runtimes users pick instead of FusedLSTM for serving, to measure against
        # (benchmarks/peers.py: nn.LSTM's ONNX export run by onnxruntime and OpenVINO).
        "bench": ["onnx", "onnxscript", "onnxruntime", "openvino"],
        # onnx, onnxscript, onnxruntime: tests/test_export.py exports to ONNX and runs the file.
        "dev": ["pytest", "pytest-benchmark", "hypothesis", "onnx", "onnxscript", "onnxruntime"],
    },
    ext_modules=[cpu_cell, cpu_seq, cpu_seq_avx2, cpu_bf16_seq, cpu_small_batch, cpu_small_batch_avx2],
    entry_points={"console_scripts": ["lstm-fast=lstm_fast.d2l.cli:main"]},
)
