"""A serving stream: one LSTM step per call at a fixed small batch, on a snapshot of the weights.

Shapes: B batch rows (fixed per stream), D input size, H hidden size, L layers; ``step(x)``:
x (B, D) -> h of the top layer (B, H); the state (h, c), each (L, B, H), is kept inside.

Why: a plain call ``lstm(x_t, state)`` must check every parameter, allocate three outputs and
plan the call again each time, because a parameter may have changed in any way since the last
one; at batch 1 those ~12-16 us are a third of a step at H 256 (benchmarks/call_overhead.py).
A stream takes a snapshot instead, as an ONNX export or a serving runtime's loaded session
does: the weights are copied once (float32, contiguous, the two biases summed), the state lives
in two preallocated buffer sets that the steps alternate between, and the kernel's address
arguments are built once. A step then costs the kernel, one output allocation and a few checks
of ``x``.

Snapshot semantics: changes to the module's parameters after the stream was made are not seen
until :meth:`LSTMStream.refresh`. Inference only: outputs never require grad, dropout between
layers is not applied (eval semantics), any autocast context is ignored (float32 math).

The math is the small-batch kernels' (:mod:`lstm_fast.cpu.small_batch`: the same C entry point
a plain one-step call of FusedLSTM reaches), so a step gives bitwise the plain call's result
where that call runs those kernels (tests/test_stream.py), at any thread count. The summed bias
is bitwise the kernels' own ``b_ih + b_hh``. On a CPU without those kernels the step runs the
same layer on :mod:`lstm_fast.cpu.stepwise`, the CPU implementation a plain call takes there.

``dtype=torch.bfloat16``: the snapshot holds the weights rounded to bf16, packed once into the
panels of the native bf16 kernels (:mod:`lstm_fast.cpu.bf16_sequence`: ``vdpbf16ps``, float32
accumulation), half the bytes a step reads. The numerics are those of those kernels over a whole
sequence (a bf16 FusedLSTM, or one under CPU autocast on that route): x and h rounded to bf16, the
cell state float32 from step to step, ``step`` returning bf16. A stream's outputs are bitwise
those of one plain call over the same sequence on those kernels (tests/test_stream.py). On a CPU
without AVX512-BF16 the step computes the same rounded operands in float32 on
:mod:`lstm_fast.cpu.stepwise` (exact products, float32 sums: the same values to float32 rounding,
not bitwise).

One stream serves one sequence of steps: calling ``step`` on the same stream from two threads at
once raises (make one stream per request or thread; the snapshot is per stream).
"""
import threading

import torch
from torch import nn

from .cpu import bf16_sequence, small_batch, stepwise
from .layer_math import summed_bias

_F32 = torch.float32
_BF16 = torch.bfloat16


class LSTMStream:
    """``LSTMStream(lstm, batch_size=1, dtype=torch.float32)``: a snapshot of ``lstm`` (an
    ``nn.LSTM`` or FusedLSTM on the CPU, one direction, no projections; float32 parameters, or
    bf16 ones for ``dtype=torch.bfloat16``) for one step per call at ``batch_size`` rows.

    ``step(x)``: x (batch_size, input_size) float32 (or bf16 where ``dtype`` is bf16) -> the top
    layer's h (batch_size, hidden_size) in ``dtype``, a new tensor; the state advances. ``state``:
    (h, c) copies, each (num_layers, batch_size, hidden_size), h in ``dtype``, c float32.
    ``reset(state=None)``: zeros, or a given (h, c). ``refresh()``: take the module's current
    parameters (same shapes) into the snapshot."""

    def __init__(self, lstm, batch_size=1, dtype=torch.float32):
        if not isinstance(lstm, nn.LSTM):
            raise TypeError(f"LSTMStream: lstm must be an nn.LSTM (or FusedLSTM), got {type(lstm).__name__}")
        if lstm.bidirectional:
            raise ValueError("LSTMStream: a bidirectional LSTM needs the whole sequence, "
                             "it cannot run one step per call")
        if lstm.proj_size:
            raise ValueError("LSTMStream: proj_size > 0 is not supported")
        if type(batch_size) is not int or batch_size < 1:
            raise ValueError(f"LSTMStream: batch_size must be a positive int, got {batch_size!r}")
        if dtype not in (_F32, _BF16):
            raise TypeError(f"LSTMStream: dtype must be torch.float32 or torch.bfloat16, got {dtype!r}")
        # the parameter and input dtypes a stream takes (a bf16 stream rounds float32 ones)
        self._dtypes = (_F32,) if dtype is _F32 else (_F32, _BF16)
        for name in lstm._flat_weights_names:
            p = getattr(lstm, name)
            if p.device.type != "cpu" or p.dtype not in self._dtypes:
                raise TypeError(f"LSTMStream: {name} must be a {self._dtype_names()} CPU tensor, "
                                f"got {p.dtype} on {p.device}")
        self._module = lstm
        self.dtype = dtype
        self.num_layers, self.hidden_size, self.input_size = lstm.num_layers, lstm.hidden_size, lstm.input_size
        self.batch_size = batch_size
        L, B, H = self.num_layers, batch_size, self.hidden_size
        self._dims = [self.input_size] + [H] * (L - 1)
        # bf16: the native kernels' panels where this CPU has them, else bf16 values held in
        # float32 for the stepwise fallback (see the module docstring)
        self._panels = dtype is _BF16 and bf16_sequence.cpu_supported()
        if self._panels:
            self._w_ih = [torch.empty(0, dtype=_BF16) for _ in self._dims]    # replaced by refresh()
            self._w_hh = [torch.empty(0, dtype=_BF16) for _ in self._dims]
        else:
            self._w_ih = [torch.empty(4 * H, d) for d in self._dims]
            self._w_hh = [torch.empty(4 * H, H) for _ in range(L)]
        self._bias = [torch.empty(4 * H) for _ in range(L)] if lstm.bias else None
        self.refresh()
        # Two state sets (h, c), each (L, B, H): step n reads set n % 2 and writes the other.
        self._h = [torch.zeros(L, B, H, dtype=dtype), torch.zeros(L, B, H, dtype=dtype)]
        self._c = [torch.zeros(L, B, H), torch.zeros(L, B, H)]
        # float32: outputs of the layers below the top (bf16: each layer's new h is its output)
        self._mid = [torch.empty(B, H) for _ in range(L - 1)] if dtype is _F32 else []
        self._parity = 0
        self._lock = threading.Lock()
        self._x_shape = (B, self.input_size)
        self._x16 = torch.empty(B, self.input_size, dtype=_BF16) if dtype is _BF16 else None
        if dtype is _F32:
            self._kernels = small_batch._small_batch_kernels
            self._calls = [self._layer_args(p) for p in (0, 1)] if self._kernels is not None else None
        else:
            self._kernels = bf16_sequence._bf16_sequence_kernels if self._panels else None
            self._calls = [self._layer_args(p) for p in (0, 1)] if self._panels else None
            # the top layer's new h after a step reading set p (views made once: a view and a
            # separate empty + copy per step cost ~4 us more than one clone, measured at H 256)
            self._top = [self._h[1][L - 1], self._h[0][L - 1]]

    # ---------------------------------------------------------------- the snapshot
    def refresh(self):
        """Copy the module's current parameters into the snapshot (their shapes must not have changed)."""
        m = self._module
        with torch.no_grad():
            for layer in range(self.num_layers):
                s = f"_l{layer}"
                for store, name, K in ((self._w_ih, "weight_ih" + s, self._dims[layer]),
                                       (self._w_hh, "weight_hh" + s, self.hidden_size)):
                    src = getattr(m, name)
                    want = (4 * self.hidden_size, K)
                    if tuple(src.shape) != want or src.dtype not in self._dtypes or src.device.type != "cpu":
                        raise RuntimeError(f"LSTMStream.refresh: {name} is now {src.dtype} {tuple(src.shape)} on "
                                           f"{src.device}, the stream was made for {want} on cpu")
                    if self._panels:    # the bf16 kernels' forward panels, packed (rounded) once
                        # (cloned: pack_panels returns a pooled workspace buffer)
                        packed = bf16_sequence.pack_panels(src).clone()
                        if store[layer].shape == packed.shape:
                            store[layer].copy_(packed)      # in place: the kernel arguments hold its address
                        else:
                            store[layer] = packed
                    elif self.dtype is _BF16:
                        store[layer].copy_(src.to(_BF16))   # bf16 values, held in float32
                    else:
                        store[layer].copy_(src)
                if self._bias is not None:
                    b_ih, b_hh = getattr(m, "bias_ih" + s), getattr(m, "bias_hh" + s)
                    if b_ih.shape != (4 * self.hidden_size,) or b_hh.shape != (4 * self.hidden_size,):
                        raise RuntimeError(f"LSTMStream.refresh: the biases of layer {layer} changed shape")
                    if self.dtype is _BF16:     # the bf16 kernels' own float32 sum
                        self._bias[layer].copy_(bf16_sequence.float_bias(b_ih, b_hh))
                    else:
                        self._bias[layer].copy_(summed_bias(b_ih, b_hh))   # the kernels' own b_ih + b_hh, in float32

    def _layer_args(self, p):
        """Per layer, the kernel arguments of a step reading state set p, grouped around the
        pointers that change per step. float32 (small_batch's forward): (before Y, after Y), X and
        Y the step's input and output. bf16 (bf16_sequence's forward_seq, one step): (after X, Y,
        after Y), Y the layer's new h (the other set), C its new c."""
        B, H = self.batch_size, self.hidden_size
        calls = []
        for layer in range(self.num_layers):
            b = self._bias[layer].data_ptr() if self._bias is not None else None
            w_ih, w_hh = self._w_ih[layer].data_ptr(), self._w_hh[layer].data_ptr()
            h, c = self._h[p][layer].data_ptr(), self._c[p][layer].data_ptr()
            hn, cn = self._h[1 - p][layer].data_ptr(), self._c[1 - p][layer].data_ptr()
            if self.dtype is _BF16:
                calls.append(((w_ih, b, w_hh, h, c), hn, (cn, None, 1, B, self._dims[layer], H)))
            else:
                calls.append(((w_ih, w_hh, b, None, h, c),
                              (hn, cn, None, None, None, None, 1, B, self._dims[layer], H)))
        return calls

    # ---------------------------------------------------------------- state
    @property
    def state(self):
        """(h, c): copies of the current state, each (num_layers, batch_size, hidden_size)."""
        return self._h[self._parity].clone(), self._c[self._parity].clone()

    def reset(self, state=None):
        """Start a new sequence: the state zero, or ``state`` = (h, c), each (num_layers, batch_size,
        hidden_size) (copied in: h rounded to the stream's dtype, c kept float32)."""
        if state is not None:
            if not isinstance(state, (tuple, list)) or len(state) != 2:
                raise TypeError("LSTMStream.reset: state must be a pair (h, c) of tensors")
            want = (self.num_layers, self.batch_size, self.hidden_size)
            for name, t in zip(("h", "c"), state):
                if not isinstance(t, torch.Tensor):
                    raise TypeError(f"LSTMStream.reset: state {name} must be a tensor, got {type(t).__name__}")
                if tuple(t.shape) != want:
                    raise RuntimeError(f"LSTMStream.reset: expected state {name} of size {list(want)}, "
                                       f"got {list(t.shape)}")
        self._hold()
        try:
            p = self._parity
            with torch.no_grad():
                if state is None:
                    self._h[p].zero_()
                    self._c[p].zero_()
                else:
                    self._h[p].copy_(state[0])
                    self._c[p].copy_(state[1])
        finally:
            self._lock.release()

    def _hold(self):
        if not self._lock.acquire(blocking=False):
            raise RuntimeError("LSTMStream: used from two threads at once (make one stream per thread)")

    # ---------------------------------------------------------------- the step
    def step(self, x):
        """One step: x (batch_size, input_size) float32 CPU (or bf16 where the stream is) -> the top
        layer's new h (batch_size, hidden_size) in the stream's dtype; the state advances."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"LSTMStream.step: x must be a tensor, got {type(x).__name__}")
        if x.dtype not in self._dtypes or not x.is_cpu or x.shape != self._x_shape:
            self._bad_input(x)
        if not x.is_contiguous():
            x = x.contiguous()
        self._hold()
        try:
            p = self._parity
            if self._panels:
                self._x16.copy_(x)      # rounded to bf16 (a copy where x already is bf16)
                forward, nt = self._kernels.forward_seq, torch.get_num_threads()
                xp = self._x16.data_ptr()
                for after_x, yp, after_y in self._calls[p]:
                    forward(xp, *after_x, yp, *after_y, nt, None)
                    xp = yp
                self._parity = 1 - p
                return self._top[p].clone()
            out = torch.empty(self.batch_size, self.hidden_size, dtype=self.dtype)
            if self._calls is None:
                self._step_torch(x, p, out)
            else:
                forward, nt = self._kernels.forward, torch.get_num_threads()
                xp = x.data_ptr()
                last = self.num_layers - 1
                for layer, (before, after) in enumerate(self._calls[p]):
                    y = out if layer == last else self._mid[layer]
                    yp = y.data_ptr()
                    forward(xp, *before, yp, *after, nt, None)
                    xp = yp
            self._parity = 1 - p
            return out
        finally:
            self._lock.release()

    def _bad_input(self, x):
        if x.dim() != 2:
            raise ValueError(f"LSTMStream.step: expected x to be 2-D (batch_size, input_size), got {x.dim()}-D")
        if x.shape != self._x_shape:
            raise RuntimeError(f"LSTMStream.step: expected x of size {list(self._x_shape)}, got {list(x.shape)}")
        raise RuntimeError(f"LSTMStream.step: x must be a {self._dtype_names()} CPU tensor, "
                           f"got {x.dtype} on {x.device}")

    def _dtype_names(self):
        return " or ".join(str(d).replace("torch.", "") for d in self._dtypes)

    def _step_torch(self, x, p, out):
        """The step without the C kernels: each layer on :mod:`lstm_fast.cpu.stepwise` (the CPU
        implementation a plain call takes there), its state copied into the other set. bf16: the
        same on x and h rounded to bf16 and the bf16 weight values, in float32."""
        with torch.no_grad():
            inp = x if self.dtype is _F32 else x.to(_BF16).float()
            for layer in range(self.num_layers):
                bias = self._bias[layer] if self._bias is not None else None
                y, (h, c) = stepwise.forward_inference(inp[None], self._h[p][layer].float(), self._c[p][layer],
                                                       self._w_ih[layer], self._w_hh[layer], bias)
                self._h[1 - p][layer].copy_(h)      # rounded to bf16 where the stream is
                self._c[1 - p][layer].copy_(c)
                inp = self._h[1 - p][layer].float()
            out.copy_(inp)
