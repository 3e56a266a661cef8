"""The plain call's fast path: ``FusedLSTM(x, hx)`` with little more than the kernel's own cost.

Why: at batch 1, one step per call (generation, streaming), the kernel takes tens of
microseconds while the general path (:meth:`lstm_fast.FusedLSTM.forward`: nn.LSTM's checks, the
plan, casts, per-layer views, ``torch.stack``, autograd's Python wrapper) took about as much again
(issue 20 item 2: at most 10 us outside the kernel). :func:`plain_forward` runs the common call
with a few comparisons and hands anything else back (returns None), so the general path, which
stays the reference, raises the errors and runs every unusual case.

What it takes: a plain CPU tensor input (2-D or 3-D, not packed), hx None or a tuple of two plain
tensors of the expected shape and dtype, no input projection, no projections (``proj_size``), no
dropout between layers in training, the ``"cpu"`` backend, no torch.compile / jit tracing / ONNX
export, no functorch transform, no torch function or dispatch mode; under autocast only CPU
autocast to bf16 where the plan is rule 1a of :mod:`lstm_fast.ops.plan` (one layer, one
direction, float32 parameters, no gradient wanted: serving and generation under autocast).

The plan cache (:data:`_PLANS`) maps everything a plan depends on (module class and options,
input dtype and shape, hx given or not, torch's thread count, the small-batch switch) to
decisions only: the implementation of each layer and the shapes every tensor must have. It holds
no weight and nothing derived from one: the parameters are read from ``module._parameters`` on
every call and compared against the expected dtype, shape, device and layout (so a ``.data``
write, ``copy_``, ``load_state_dict`` or ``torch.func.functional_call`` is seen by the next call,
and a change of shape or dtype falls back to the general path, which checks it).

Three ways to run:

* autocast: the direct way under CPU autocast to bf16 (rule 1a), inference only: x and h_0
  rounded to bf16 as nn.LSTM's autocast does, the float32 kernels on them and on the float32
  weights as they are, the outputs in bf16 (:func:`_run_autocast`: the casts the general path's
  :func:`lstm_fast.ops.plan.cast_inputs` / ``cast_outputs`` make, in the same order; a one-step
  call on the AVX2 kernels makes them inside the kernel module's ``forward_autocast``);
* direct: one layer, one direction, on the small-batch kernels (:mod:`lstm_fast.cpu.small_batch`):
  the C entry point is called on the caller's tensors as they are (no views: the state
  ``(1, B, H)`` and the output are written where the caller gets them), through
  :class:`_DirectLayer` (an autograd Function whose backward is the small-batch
  implementation's, on the same saved tensors) when a gradient is wanted;
* layers: every other plan, layer by layer and direction by direction as
  :meth:`FusedLSTM._run_layers` does, on the implementations' ``forward_inference`` or
  :func:`lstm_fast.ops.autograd.apply_layer`, with the checks and the plan done once per key.

Both give bitwise the general path's outputs, states and gradients (tests/test_plain_call.py).
"""
import os
from typing import NamedTuple

import torch
from torch import Tensor
from torch.nn import Parameter

from ..cpu import small_batch, workspace
from .autograd import FusedLSTMFunction, apply_layer, differentiable_backward
from .backends import resolve_backend
from .plan import plan_layer


class _Spec(NamedTuple):
    """What :func:`plan_layer` reads of a tensor (dtype, device, shape, and requires_grad for its
    training/inference crossovers), without one. ``requires_grad`` is the key's "a gradient is
    wanted" (grad mode on and the input or ``weight_hh_l0`` requiring grad) for every layer."""
    dtype: torch.dtype
    device: torch.device
    shape: torch.Size
    requires_grad: bool

#: key -> plan tuple, or None where the key's calls take the general path. Bounded: a program
#: with more distinct call shapes than this starts again from empty.
_PLANS = {}
MAX_PLANS = 512

#: How many calls the fast path has run (tests read it to check it is taken).
calls = 0

_PLAIN = (Tensor, Parameter)
_STRIDED = torch.strided
_MISSING = object()
_DIRECT, _LAYERS, _AUTOCAST = 0, 1, 2
#: The dtypes an autocast call's x and states may have here (others: the general path).
_AUTOCAST_OPERANDS = (torch.float32, torch.bfloat16)
_BF16 = torch.bfloat16

_is_compiling = torch.compiler.is_compiling
_tracing_state = torch._C._get_tracing_state
_any_autocast = torch._C._is_any_autocast_enabled
_autocast_on = torch.is_autocast_enabled
_autocast_dtype = torch.get_autocast_dtype
_functorch_active = torch._C._are_functorch_transforms_active
_function_mode = torch._C._is_torch_function_mode_enabled
_dispatch_modes = torch._C._len_torch_dispatch_stack
_grad_enabled = torch.is_grad_enabled
_num_threads = torch.get_num_threads
# The small-batch switch's raw value now (part of the key: the plan reads it): a read of the
# bytes-keyed dict behind os.environ where CPython has one (os.environ.get costs 0.5 us).
_ENV = getattr(os.environ, "_data", None)
if isinstance(_ENV, dict) and os.name == "posix":
    _env_get, _SWITCH_KEY = _ENV.get, small_batch.SWITCH.encode()
else:
    _env_get, _SWITCH_KEY = os.environ.get, small_batch.SWITCH


def plain_forward(module, input, hx):
    """``module(input, hx)`` on the fast path: ``(output, (h_n, c_n))``, or None when this call is
    not a plain one (then the general path runs it, and raises whatever nn.LSTM would)."""
    global calls
    if (type(input) is not Tensor or _is_compiling() or _tracing_state() is not None
            or _functorch_active() or _function_mode() or _dispatch_modes()):
        return None
    if not input.is_cpu or input.layout is not _STRIDED:
        return None
    autocast = None
    if _any_autocast():     # only CPU autocast has a fast plan (rule 1a); any other: the general path
        if not _autocast_on("cpu"):
            return None
        autocast = _autocast_dtype("cpu")
    try:
        key = (type(module), input.dtype, input.shape, hx is None, module.num_layers, module.bidirectional,
               module.proj_size, module.batch_first, module.input_size, module.hidden_size, module.bias,
               module.backend, module.dropout > 0 and module.training, _num_threads(), _env_get(_SWITCH_KEY),
               autocast, _grad_enabled() and (input.requires_grad or module.weight_hh_l0.requires_grad))
        plan = _PLANS.get(key, _MISSING)
    except TypeError:       # an option of a type that cannot be hashed: the general path
        return None
    if plan is _MISSING:
        plan = _make_plan(module, input, hx, key)
    if plan is None:
        return None
    if plan[0] == _DIRECT:
        out = _run_direct(plan, module, input, hx)
    elif plan[0] == _AUTOCAST:
        out = _run_autocast(plan, module, input, hx)
    else:
        out = _run_layers(plan, module, input, hx)
    if out is not None:
        calls += 1
    return out


# ---------------------------------------------------------------- plans
def _make_plan(module, input, hx, key):
    """The decisions for ``key`` (checks that depend only on it done here, once), or None."""
    try:
        plan = _decide(module, input, hx, key)
    except (RuntimeError, ValueError, TypeError):     # e.g. an unavailable backend: the general path says so
        plan = None
    if len(_PLANS) >= MAX_PLANS:
        _PLANS.clear()
    _PLANS[key] = plan
    return plan


def _decide(module, input, hx, key):
    if module.proj_size != 0 or (module.dropout > 0 and module.training and module.num_layers > 1):
        return None
    if not isinstance(module.backend, str) or resolve_backend(module.backend, "cpu") != "cpu":
        return None
    for name in module._flat_weights_names:    # parametrized (a property on the class) or shadowed
        if hasattr(type(module), name) or name in module.__dict__ or name not in module._parameters:
            return None
    dim = input.dim()
    if dim not in (2, 3) or input.dtype not in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        return None
    batched = dim == 3
    bf = module.batch_first and batched
    shape = tuple(input.shape)
    if batched:
        T, B = (shape[1], shape[0]) if bf else (shape[0], shape[1])
    else:
        T, B = shape[0], 1
    D, H = shape[-1], module.hidden_size
    if T == 0 or B == 0 or D != module.input_size or H <= 0:
        return None
    dirs = 2 if module.bidirectional else 1
    L = module.num_layers
    n = L * dirs
    state_shape = (n, B, H) if batched else (n, H)     # int tuples: torch.empty(*shape) parses fastest
    dt = input.dtype
    cpu = torch.device("cpu")
    training = key[-1]      # the plan's small-batch crossovers differ when a gradient is wanted
    autocast = key[-2]
    out_shape = ((B, T, H) if bf else (T, B, H)) if batched else (T, H)
    if autocast is not None:
        return _decide_autocast(module, input, T, B, D, H, dirs, L, bf, state_shape, out_shape, training, autocast)
    impls, weights = [], []
    for layer in range(L):
        d_in = D if layer == 0 else dirs * H
        lp = plan_layer(_Spec(dt, cpu, torch.Size((T, B, d_in)), training),
                        _Spec(dt, cpu, torch.Size((4 * H, H)), training), module.backend)
        if lp.autocast_dtype is not None or lp.upcast or lp.segments or lp.identity_input or lp.out_dtype:
            return None
        impls.append(lp.module)
        for direction in range(dirs):
            sfx = f"_l{layer}" + ("_reverse" if direction else "")
            names = ["weight_ih" + sfx, "weight_hh" + sfx] + (["bias_ih" + sfx, "bias_hh" + sfx] if module.bias else [])
            shapes = [(4 * H, d_in), (4 * H, H), (4 * H,), (4 * H,)][:len(names)]
            weights.append(tuple((nm, s) for nm, s in zip(names, shapes)))
    direct = (L == 1 and dirs == 1 and impls[0] is small_batch and small_batch._small_batch_kernels is not None
              and (not bf or T == 1 or B == 1) and dt == torch.float32)
    if direct:
        return _direct_plan(module, dt, T, B, D, H, state_shape, out_shape)
    return (_LAYERS, dt, state_shape, out_shape, tuple(impls), tuple(weights), batched, bf, T, B, dirs, L)


def _direct_plan(module, dt, T, B, D, H, state_shape, out_shape):
    """The plan tuple :func:`_run_direct` runs: one layer, one direction, the parameters in ``dt``."""
    names = ["weight_ih_l0", "weight_hh_l0"] + (["bias_ih_l0", "bias_hh_l0"] if module.bias else [None, None])
    s_ih, s_hh = (4 * H, D), (4 * H, H)
    dims = (T, B, D, H)
    pooled = T * B * H >= workspace.MIN_ELEMENTS     # as small_batch's own output: from the pool
    spec = (state_shape, out_shape, dims, pooled)    # what _DirectLayer needs
    return (_DIRECT, dt, state_shape, out_shape, names[0], s_ih, names[1], s_hh, names[2], names[3], s_ih[:1],
            dims, pooled, spec)


def _decide_autocast(module, input, T, B, D, H, dirs, L, bf, state_shape, out_shape, training, autocast):
    """The plan of a call under CPU autocast: the float32 direct plan, run by :func:`_run_autocast`,
    where :func:`plan_layer` (under this autocast state) gives rule 1a; else None."""
    w_dt = torch.float32
    if (L != 1 or dirs != 1 or training or input.dtype not in _AUTOCAST_OPERANDS
            or module.weight_hh_l0.dtype != w_dt):
        return None
    cpu = torch.device("cpu")
    lp = plan_layer(_Spec(input.dtype, cpu, torch.Size((T, B, D)), False),
                    _Spec(w_dt, cpu, torch.Size((4 * H, H)), False), module.backend)
    rule_1a = (lp.implementation == "cpu_small_batch" and lp.autocast_dtype == autocast and lp.keep_weights
               and lp.upcast and lp.out_dtype == autocast and not lp.segments and not lp.identity_input)
    if not rule_1a or small_batch._small_batch_kernels is None or not (not bf or T == 1 or B == 1):
        return None
    # Empty templates of the outputs (no data: torch.empty_like of one costs half of
    # torch.empty(shape, dtype=...), whose keyword parsing is the cost at B = 1).
    templates = (torch.empty(out_shape, dtype=autocast), torch.empty(state_shape, dtype=autocast))
    return (_AUTOCAST, autocast, _direct_plan(module, w_dt, T, B, D, H, state_shape, out_shape), templates)


# ---------------------------------------------------------------- per-call checks
def _weight(params, name, shape, dt):
    """The parameter ``name`` if it is a plain contiguous CPU tensor of ``shape`` and ``dt``, else None."""
    w = params.get(name)
    if (type(w) not in _PLAIN or w.dtype is not dt or w.shape != shape or not w.is_cpu
            or w.layout is not _STRIDED or not w.is_contiguous()):
        return None
    return w


def _state(hx, state_shape, dt):
    """(h_0, c_0) from hx if both are plain contiguous CPU tensors of the state's shape and dtype."""
    if type(hx) is not tuple or len(hx) != 2:
        return None
    h, c = hx
    if (type(h) not in _PLAIN or type(c) not in _PLAIN or h.dtype is not dt or c.dtype is not dt
            or h.shape != state_shape or c.shape != state_shape or not h.is_cpu or not c.is_cpu
            or h.layout is not _STRIDED or c.layout is not _STRIDED):
        return None
    return h, c


# ---------------------------------------------------------------- direct: one small-batch layer
def _ptr(t):
    return None if t is None else t.data_ptr()


def _direct_weights(plan, module):
    """(w_ih, w_hh, b_ih, b_hh, any requires_grad) of a direct plan's call, or None where a
    parameter is not what the kernel's pointer arithmetic relies on (a .data write may change any
    of these properties: every one is checked at every call)."""
    _, dt, state_shape, out_shape, n_ih, s_ih, n_hh, s_hh, n_bih, n_bhh, s_b, dims, pooled, spec = plan
    params = module._parameters
    w_ih, w_hh = params.get(n_ih), params.get(n_hh)
    if not (type(w_ih) in _PLAIN and type(w_hh) in _PLAIN and w_ih.dtype is dt and w_hh.dtype is dt
            and w_ih.shape == s_ih and w_hh.shape == s_hh and w_ih.is_cpu and w_hh.is_cpu
            and w_ih.layout is _STRIDED and w_hh.layout is _STRIDED and w_ih.is_contiguous()
            and w_hh.is_contiguous()):
        return None
    if n_bih is None:
        return w_ih, w_hh, None, None, w_ih.requires_grad or w_hh.requires_grad
    b_ih, b_hh = params.get(n_bih), params.get(n_bhh)
    if not (type(b_ih) in _PLAIN and type(b_hh) in _PLAIN and b_ih.dtype is dt and b_hh.dtype is dt
            and b_ih.shape == s_b and b_hh.shape == s_b and b_ih.is_cpu and b_hh.is_cpu
            and b_ih.layout is _STRIDED and b_hh.layout is _STRIDED and b_ih.is_contiguous()
            and b_hh.is_contiguous()):
        return None
    return w_ih, w_hh, b_ih, b_hh, w_ih.requires_grad or w_hh.requires_grad or b_ih.requires_grad or b_hh.requires_grad


def _forward_pointers(T, B, D, H, xp, w_ih, w_hh, b_ih, b_hh, hp, cp, Yp, hnp, cnp):
    """The small-batch forward (no saving) on float32 buffers given by address."""
    if T > 1:       # the scratch of a no-save call over several steps (kept alive through the call)
        P, S = workspace.empty((T, B, 4 * H)), torch.empty(B, H)
        pp, sp = P.data_ptr(), S.data_ptr()
    else:
        pp = sp = None
    small_batch._small_batch_kernels.forward(
        xp, w_ih.data_ptr(), w_hh.data_ptr(), _ptr(b_ih), _ptr(b_hh), hp, cp, Yp, hnp, cnp, None, None, pp, sp,
        T, B, D, H, _num_threads(), None)


def _run_direct(plan, module, x, hx):
    _, dt, state_shape, out_shape, n_ih, s_ih, n_hh, s_hh, n_bih, n_bhh, s_b, dims, pooled, spec = plan
    w = _direct_weights(plan, module)
    if w is None or not x.is_contiguous():
        return None
    w_ih, w_hh, b_ih, b_hh, rg = w
    if hx is None:
        h0 = c0 = None
    else:
        if type(hx) is not tuple or len(hx) != 2:
            return None
        h0, c0 = hx
        if not (type(h0) in _PLAIN and type(c0) in _PLAIN and h0.dtype is dt and c0.dtype is dt
                and h0.shape == state_shape and c0.shape == state_shape and h0.is_cpu and c0.is_cpu
                and h0.layout is _STRIDED and c0.layout is _STRIDED):
            return None
        if not h0.is_contiguous():
            h0 = h0.contiguous()
        if not c0.is_contiguous():
            c0 = c0.contiguous()
        rg = rg or h0.requires_grad or c0.requires_grad
    if _grad_enabled() and (rg or x.requires_grad):
        if h0 is None:
            h0, c0 = x.new_zeros(state_shape), x.new_zeros(state_shape)
        Y, hn, cn = _apply_direct(spec, x, h0, c0, w_ih, w_hh, b_ih, b_hh)
        return Y, (hn, cn)
    T, B, D, H = dims
    empty = torch.empty
    Y = workspace.empty(out_shape) if pooled else empty(*out_shape)
    hn, cn = empty(*state_shape), empty(*state_shape)
    if h0 is None:
        z = torch.zeros(2 * B * H)
        hp = z.data_ptr()
        cp = hp + 4 * B * H
    else:
        hp, cp = h0.data_ptr(), c0.data_ptr()
    _forward_pointers(T, B, D, H, x.data_ptr(), w_ih, w_hh, b_ih, b_hh, hp, cp, Y.data_ptr(), hn.data_ptr(),
                      cn.data_ptr())
    return Y, (hn, cn)


def _run_autocast(plan, module, x, hx):
    """Rule 1a on the fast path, no gradient wanted: as the general path, x and h_0 rounded to the
    autocast dtype then taken in float32 (c_0 as given, in float32), the float32 direct call, the
    outputs cast to the autocast dtype."""
    _, ac, direct, (y_like, state_like) = plan
    if hx is not None:
        if type(hx) is not tuple or len(hx) != 2:
            return None
        h0, c0 = hx
        if not (type(h0) in _PLAIN and type(c0) in _PLAIN and h0.dtype in _AUTOCAST_OPERANDS
                and c0.dtype in _AUTOCAST_OPERANDS):
            return None
        if _grad_enabled() and (h0.requires_grad or c0.requires_grad):
            return None
    if _grad_enabled():     # a gradient to any parameter: the general path (autograd through the casts)
        if x.requires_grad or any(p is not None and p.requires_grad for p in module._parameters.values()):
            return None
    k = small_batch._small_batch_kernels
    if ac is not _BF16 or not hasattr(k, "bf16_round"):
        xf = x.to(ac).float()
        if hx is not None:
            hx = (h0.to(ac).float(), c0.float())
        out = _run_direct(direct, module, xf, hx)
        if out is None:
            return None
        y, (h, c) = out
        return y.to(ac), (h.to(ac), c.to(ac))
    # The same casts in C (the AVX2 module's bf16_round / bf16_narrow give torch's bits) on one
    # float32 scratch: 4 allocations a call instead of 7 casts plus the float32 call's 3 outputs
    # (the allocations were the cost: ~1-2 us each at B=1).
    w = _direct_weights(direct, module)
    state_shape, (T, B, D, H) = direct[2], direct[11]
    if w is None or not x.is_contiguous():
        return None
    if hx is not None:
        if not (h0.shape == state_shape and c0.shape == state_shape and h0.is_cpu and c0.is_cpu
                and h0.layout is _STRIDED and c0.layout is _STRIDED):
            return None
        h0, c0 = h0.contiguous(), c0.contiguous()
    w_ih, w_hh, b_ih, b_hh, _ = w
    empty_like = torch.empty_like
    y, hn, cn = empty_like(y_like), empty_like(state_like), empty_like(state_like)
    if T == 1 and hasattr(k, "forward_autocast"):   # one step: casts, forward and scratch in one C call
        if hx is None:
            hp = cp = None
            hb = cb = False
        else:
            hp, cp, hb, cb = h0.data_ptr(), c0.data_ptr(), h0.dtype is _BF16, c0.dtype is _BF16
        k.forward_autocast(x.data_ptr(), x.dtype is _BF16, w_ih.data_ptr(), w_hh.data_ptr(), _ptr(b_ih), _ptr(b_hh),
                           hp, hb, cp, cb, y.data_ptr(), hn.data_ptr(), cn.data_ptr(), B, D, H, _num_threads())
        return y, (hn, cn)
    nx, ns, ny = T * B * D, B * H, T * B * H
    f = workspace.empty((nx + 4 * ns + ny,))      # x | h_0 | c_0 | h_n | c_n | Y, in float32
    xp = f.data_ptr()
    hp = xp + 4 * nx
    cp, hnp = hp + 4 * ns, hp + 8 * ns
    cnp, Yp = hnp + 4 * ns, hnp + 8 * ns
    round_, narrow = k.bf16_round, k.bf16_narrow
    round_(x.data_ptr(), x.dtype is _BF16, xp, nx)
    if hx is None:
        f[nx:nx + 2 * ns].zero_()
    else:
        round_(h0.data_ptr(), h0.dtype is _BF16, hp, ns)
        if c0.dtype is _BF16:
            round_(c0.data_ptr(), True, cp, ns)       # exact: c_0 is not rounded, only widened
        else:
            cp = c0.data_ptr()
    _forward_pointers(T, B, D, H, xp, w_ih, w_hh, b_ih, b_hh, hp, cp, Yp, hnp, cnp)
    narrow(Yp, y.data_ptr(), ny)
    narrow(hnp, hn.data_ptr(), ns)
    narrow(cnp, cn.data_ptr(), ns)
    return y, (hn, cn)


class _DirectLayer(torch.autograd.Function):
    """(spec, x, h0, c0, w_ih, w_hh, b_ih, b_hh) -> (Y, h_n, c_n) on the small-batch kernels, each
    tensor in the caller's own shape (x 2-D or 3-D, the states (1, B, H) or (1, H)): the forward
    writes where the caller reads, the backward views them as :func:`small_batch.backward_saved`
    (the general path's backward) takes them. The saved gates and cells are one buffer."""

    @staticmethod
    def forward(ctx, spec, x, h0, c0, w_ih, w_hh, b_ih, b_hh):
        state_shape, out_shape, (T, B, D, H), pooled = spec
        empty = torch.empty
        Y = workspace.empty(out_shape) if pooled else empty(*out_shape)
        hn, cn = empty(*state_shape), empty(*state_shape)
        n = T * B * 4 * H
        saved = empty(n + T * B * H) if n < workspace.MIN_ELEMENTS else workspace.empty((n + T * B * H,))
        g = saved.data_ptr()
        small_batch._small_batch_kernels.forward(
            x.data_ptr(), w_ih.data_ptr(), w_hh.data_ptr(), _ptr(b_ih), _ptr(b_hh), h0.data_ptr(), c0.data_ptr(),
            Y.data_ptr(), hn.data_ptr(), cn.data_ptr(), g, g + 4 * n, None, None, T, B, D, H, _num_threads(), None)
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, Y, saved)
        ctx.spec, ctx.b_ih, ctx.b_hh = spec, b_ih, b_hh
        return Y, hn, cn

    @staticmethod
    def backward(ctx, dY, dh_n, dc_n):
        x, h0, c0, w_ih, w_hh, Y, saved = ctx.saved_tensors
        state_shape, out_shape, (T, B, D, H), _ = ctx.spec
        # The general path's layout: time first, the states (B, H); same memory (the direct
        # path runs batch_first only for T == 1 or B == 1).
        dY = None if dY is None else dY.reshape(T, B, H)
        dh_n = None if dh_n is None else dh_n.reshape(B, H)
        dc_n = None if dc_n is None else dc_n.reshape(B, H)
        x3, h2, c2, Y3 = x.view(T, B, D), h0.view(B, H), c0.view(B, H), Y.view(T, B, H)
        needs = ctx.needs_input_grad[1:8]
        if torch.is_grad_enabled():     # create_graph=True: as FusedLSTMFunction.backward
            grads = differentiable_backward(needs, (dY, dh_n, dc_n), x3, h2, c2, w_ih, w_hh, ctx.b_ih, ctx.b_hh, None)
        else:
            n = T * B * 4 * H
            G, C = saved[:n].view(T, B, 4 * H), saved[n:].view(T, B, H)
            grads = small_batch.backward_saved(dY, dh_n, dc_n, x3, h2, c2, w_ih, w_hh, Y3, (G, C), needs)
        dx, dh0, dc0 = grads[:3]
        return (None, None if dx is None else dx.reshape(x.shape), None if dh0 is None else dh0.reshape(state_shape),
                None if dc0 is None else dc0.reshape(state_shape), *grads[3:])


#: ``_DirectLayer.apply`` without its Python wrapper (``Function.apply`` binds default arguments
#: and unwraps functorch's dead wrappers, neither of which applies here: no transform is active
#: and the arguments are plain tensors): the C-level apply, bound to the class.
_apply_direct = super(torch.autograd.Function, _DirectLayer).apply


# ---------------------------------------------------------------- layers: every other plan
def _run_layers(plan, module, x, hx):
    """As :meth:`FusedLSTM._run_layers` (same operations in the same order), on checked operands."""
    _, dt, state_shape, out_shape, impls, weights, batched, bf, T, B, dirs, L = plan
    params = module._parameters
    ws = []
    for names in weights:
        layer_ws = []
        for name, shape in names:
            w = _weight(params, name, shape, dt)
            if w is None:
                return None
            layer_ws.append(w)
        ws.append(layer_ws)
    if hx is None:
        h0 = c0 = None
    else:
        state = _state(hx, state_shape, dt)
        if state is None:
            return None
        h0, c0 = state
        if not batched:
            h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)
    if not batched:
        x = x.unsqueeze(1)
    elif bf:
        x = x.transpose(0, 1)
    if h0 is None:
        n = L * dirs
        h0, c0 = x.new_zeros(n, B, module.hidden_size), x.new_zeros(n, B, module.hidden_size)
    grad = _grad_enabled()
    h_all, c_all = [], []
    layer_input = x
    for layer in range(L):
        impl = impls[layer]
        outs = []
        for direction in range(dirs):
            k = layer * dirs + direction
            w = ws[k]
            w_ih, w_hh = w[0], w[1]
            b_ih, b_hh = (w[2], w[3]) if len(w) == 4 else (None, None)
            xin = layer_input if direction == 0 else layer_input.flip(0)
            h, c = h0[k], c0[k]
            if grad and any(t is not None and t.requires_grad for t in (xin, h, c, w_ih, w_hh, b_ih, b_hh)):
                y, (h, c) = apply_layer(impl, xin, h, c, w_ih, w_hh, b_ih, b_hh)
            else:
                y, (h, c) = impl.forward_inference(xin, h, c, w_ih, w_hh, b_ih, b_hh)
            outs.append(y if direction == 0 else y.flip(0))
            h_all.append(h)
            c_all.append(c)
        layer_input = outs[0] if dirs == 1 else torch.cat(outs, 2)
    output, h_n, c_n = layer_input, torch.stack(h_all), torch.stack(c_all)
    if bf:
        output = output.transpose(0, 1)
    if not batched:
        output = output.squeeze(1)
        h_n, c_n = h_n.squeeze(1), c_n.squeeze(1)
    return output, (h_n, c_n)


__all__ = ["plain_forward", "FusedLSTMFunction"]
