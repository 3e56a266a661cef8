"""The plan of one layer call: which implementation runs it, and the casts around it.

This is the one place that chooses. Eager calls (:func:`lstm_fast.ops.functional.lstm_layer`),
the torch.compile custom op and its fake (:mod:`lstm_fast.ops.custom_ops`) and ``torch.export``
(which traces the custom op) all take :func:`plan_layer`'s answer and apply it with
:func:`cast_inputs` / :func:`cast_outputs`; nothing below re-decides. Adding a path is one entry
in :data:`IMPLEMENTATIONS` and one rule in :func:`plan_layer`.

The rules, in order:

1. Autocast on the input's device: x and h_0 in the autocast dtype (as nn.LSTM under autocast),
   c_0 as given. 1a. CPU autocast to bf16 with float32 weights at the small batches where the
   measured crossovers say so (:func:`lstm_fast.cpu.small_batch.use_for`): the float32
   small-batch kernels on the rounded x, h_0 and the float32 weights as they are (no per-call
   weight conversion), outputs in bf16 as nn.LSTM returns them. On the CPU with bf16 and the native bf16 kernels (:mod:`lstm_fast.cpu.bf16_sequence`),
   the weights are taken as they are (the kernels convert float32 weights as they pack them);
   otherwise the weights are cast too, then the rules below apply to the cast operands.
2. bf16 on the CPU with the native bf16 kernels: those kernels.
3. Other 16-bit operands on the CPU: the float32 implementation on exactly upcast operands
   (16-bit products are exact in float32), outputs cast back to the 16-bit dtype.
4. float32 on the CPU: the small-batch kernels where their measured crossover table says they
   win (:func:`lstm_fast.cpu.small_batch.use_for`, env ``LSTM_FAST_CPU_SMALL_BATCH``; its
   inference and training tables: training when grad mode is on and x or W_hh requires grad), else the
   whole-sequence kernels where this CPU has them (AVX-512 or AVX2 + FMA: :mod:`lstm_fast.cpu.sequence`), else
   the stepwise implementation (also float64).
5. CUDA (or ``backend="triton"``): the Triton implementation (:mod:`lstm_fast.triton_layer`).
   Meta tensors (every tensor on ``meta``; the op layer's guard sees to that): outputs of the
   right shapes, nothing computed (:mod:`lstm_fast.meta_layer`).
6. Per-row lengths on an implementation that does not mask them (stepwise): segments between
   distinct lengths (eager only; under torch.compile an error).
7. A precomputed input projection (``w_ih`` None, x (T, B, 4H): ``fused_lstm(...,
   input_projection=True)``): the implementations in :data:`INPUT_PROJECTION` take it natively
   (the float32 sequence kernels and the stepwise route skip the input GEMM). Any other implementation runs it with
   W_ih = I (4H x 4H): correct, but it computes that GEMM (``LayerPlan.identity_input``); a
   caller that could give either asks :func:`native_input_projection` first.
"""
import importlib
import sys
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch

from .. import meta_layer  # noqa: F401  (imported here, not while tracing)
from ..cpu import bf16_sequence, sequence, small_batch, stepwise  # noqa: F401
from .backends import resolve_backend

#: Implementation name -> module. Each module provides ``available_for(x, w_hh)``,
#: ``forward_inference``, ``forward_saving``, ``backward_saved`` and ``saved_like`` (see
#: :class:`lstm_fast.ops.autograd.FusedLSTMFunction`), plus whether it masks per-row lengths.
IMPLEMENTATIONS = {
    "cpu_sequence": ("lstm_fast.cpu.sequence", True),
    "cpu_small_batch": ("lstm_fast.cpu.small_batch", True),
    "cpu_bf16": ("lstm_fast.cpu.bf16_sequence", True),
    "cpu_stepwise": ("lstm_fast.cpu.stepwise", False),
    "triton": ("lstm_fast.triton_layer", True),
    "meta": ("lstm_fast.meta_layer", True),
}

#: The implementations that take a precomputed input projection (``w_ih`` None, x (T, B, 4H))
#: natively: no input GEMM, and the projection's gradient is the gate gradients.
INPUT_PROJECTION = frozenset({"cpu_sequence", "cpu_stepwise", "meta"})

_16BIT = (torch.float16, torch.bfloat16)
_CPU_DTYPES = (torch.float32, torch.float64)


@dataclass(frozen=True)
class LayerPlan:
    """What runs one layer call, and how its tensors are cast on the way in and out.

    implementation: a key of :data:`IMPLEMENTATIONS`.
    autocast_dtype: under autocast, x and h_0 (and the weights unless ``keep_weights``) are first
        cast to this dtype, as nn.LSTM's autocast does; c_0 stays as given. None: no such cast.
    keep_weights: the implementation reads the weights in their own dtype (native bf16).
    upcast: 16-bit operands run on a float32 implementation: every tensor is cast to float32
        (after the autocast cast), and the outputs back to ``out_dtype``.
    out_dtype: the outputs' dtype when the implementation returns another; None: as returned.
    segments: per-row lengths run as segments (the implementation does not mask them).
    identity_input: x is an input projection the implementation cannot take natively: it runs
        with W_ih = I (4H x 4H), a generic path that computes the identity GEMM.
    """
    implementation: str
    autocast_dtype: Optional[torch.dtype] = None
    keep_weights: bool = False
    upcast: bool = False
    out_dtype: Optional[torch.dtype] = None
    segments: bool = False
    identity_input: bool = False

    @property
    def module(self):
        """The implementation's module (imported on first use: the Triton one imports triton)."""
        return implementation_module(self.implementation)

    @property
    def masks_lengths(self) -> bool:
        return IMPLEMENTATIONS[self.implementation][1]


def implementation_module(name):
    """The module of implementation ``name``: the CPU ones are imported with this module (so
    torch.compile's tracing only looks them up); the Triton one on first use."""
    path = IMPLEMENTATIONS[name][0]
    module = sys.modules.get(path)
    return module if module is not None else importlib.import_module(path)


class _TensorSpec(NamedTuple):
    """A stand-in for a tensor cast to another dtype (dtype, device and shape only): what the
    implementations' ``available_for`` reads, without casting anything (a NamedTuple, which
    torch.compile traces)."""
    dtype: torch.dtype
    device: torch.device
    shape: torch.Size


def _like(x, dtype):
    return _TensorSpec(dtype, x.device, x.shape)


def plan_layer(x, w_hh, backend, has_lengths=False, input_projection=False) -> LayerPlan:
    """The plan for one checked layer call on ``x`` (T, B, D) with recurrent weight ``w_hh``,
    from the tensors' dtype and device, the ``backend`` argument and the autocast state.
    ``input_projection``: x is (T, B, 4H), already x W_ih^T (rule 7).
    Raises RuntimeError where no implementation can run it."""
    device = x.device.type
    if device == "meta":        # shape inference, torch.device("meta") model building
        return LayerPlan("meta")
    chosen = resolve_backend(backend, device)
    # a gradient will be wanted (the small-batch crossovers differ for training)
    training = torch.is_grad_enabled() and (getattr(x, "requires_grad", False) or getattr(w_hh, "requires_grad", False))
    autocast_dtype, keep_weights = None, False
    if torch.is_autocast_enabled(device):
        autocast_dtype = torch.get_autocast_dtype(device)
        if chosen == "cpu" and _small_batch_under_autocast(x, w_hh, autocast_dtype, training):
            # rule 1a: x, h_0 rounded to the autocast dtype as nn.LSTM does, then the float32
            # kernels on them and on the float32 weights as they are; outputs in bf16
            return LayerPlan("cpu_small_batch", autocast_dtype, keep_weights=True, upcast=True,
                             out_dtype=autocast_dtype, identity_input=input_projection)
        x = _like(x, autocast_dtype)
        keep_weights = chosen == "cpu" and autocast_dtype == torch.bfloat16 and _native_bf16(x, w_hh)
        if not keep_weights:
            w_hh = _like(w_hh, autocast_dtype)
    if chosen == "triton":
        impl, upcast, out = "triton", False, None
    elif x.dtype == torch.bfloat16 and _native_bf16(x, w_hh):
        impl, upcast, out = "cpu_bf16", False, None
    else:
        upcast = x.dtype in _16BIT
        out = x.dtype if upcast else None
        if upcast:
            x, w_hh = _like(x, torch.float32), _like(w_hh, torch.float32)
        if x.dtype not in _CPU_DTYPES:
            raise RuntimeError(f"backend='cpu' supports float32 and float64, got {x.dtype}")
        if small_batch.use_for(x, w_hh, training=training):
            impl = "cpu_small_batch"
        elif sequence.available_for(x, w_hh):
            impl = "cpu_sequence"
        else:
            impl = "cpu_stepwise"
    segments = has_lengths and not IMPLEMENTATIONS[impl][1]
    identity = input_projection and impl not in INPUT_PROJECTION
    return LayerPlan(impl, autocast_dtype, keep_weights, upcast, out, segments, identity)


def native_input_projection(dtype, device, shape, w_hh, backend="auto") -> bool:
    """Whether a layer call on an input projection of this dtype, device and shape (T, B, 4H)
    runs natively, without the identity GEMM (rule 7), under the autocast state now. A caller
    whose projection is cheap (an embedding lookup) asks this before choosing it over its plain
    input, so it never trades a D-wide input GEMM for a 4H-wide one."""
    spec = _TensorSpec(dtype, torch.device(device), torch.Size(shape))
    return not plan_layer(spec, w_hh, backend, input_projection=True).identity_input


def _small_batch_under_autocast(x, w_hh, autocast_dtype, training):
    """Rule 1a: CPU autocast to bf16 with float32 weights, where the small-batch crossovers say
    so (:func:`lstm_fast.cpu.small_batch.use_for` with ``autocast_dtype``; not when
    ``LSTM_FAST_CPU_BF16=native`` forces the bf16 kernels). At batch 1 a step is bound by weight
    bytes, and converting the float32 weights to bf16 on every call (what the other routes do)
    costs more than the float32 step itself; float32 products are also the more accurate."""
    if autocast_dtype != torch.bfloat16 or w_hh.dtype != torch.float32 or bf16_sequence.MODE == "native":
        return False
    return small_batch.use_for(_like(x, torch.float32), w_hh, autocast_dtype=autocast_dtype, training=training)


def _native_bf16(x, w_hh):
    """Whether a CPU layer with bf16 operands runs on the native bf16 kernels (the weights
    float32 or bf16): :func:`lstm_fast.cpu.bf16_sequence.available_for`."""
    return implementation_module("cpu_bf16").available_for(x, w_hh)


def cast_inputs(plan, x, h0, c0, w_ih, w_hh, b_ih, b_hh):
    """The layer's tensors as ``plan``'s implementation takes them (traceable casts)."""
    ws = (w_ih, w_hh, b_ih, b_hh)
    if plan.autocast_dtype is not None:
        ac = plan.autocast_dtype
        x, h0 = x.to(ac), h0.to(ac)
        if not plan.keep_weights:
            ws = tuple(None if t is None else t.to(ac) for t in ws)
    if plan.upcast:
        x, h0, c0 = x.float(), h0.float(), c0.float()
        ws = tuple(None if t is None else t.float() for t in ws)
    return (x, h0, c0) + ws


def cast_outputs(plan, y, h, c):
    """The implementation's outputs in the dtype the caller gets."""
    if plan.out_dtype is not None:
        y, h, c = y.to(plan.out_dtype), h.to(plan.out_dtype), c.to(plan.out_dtype)
    return y, (h, c)
