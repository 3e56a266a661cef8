"""``FusedLSTM``: a drop-in ``torch.nn.LSTM`` whose math runs on lstm_fast's implementations.

It subclasses ``nn.LSTM``, so parameters, state_dict keys, ``isinstance`` checks, input validation
and error messages are nn.LSTM's own; only ``forward``'s math is replaced. Layers, directions,
projections and packed sequences are built here from calls of the single-layer
:func:`lstm_fast.ops.functional.lstm_layer`:

* bidirectional: the reverse direction runs on the time-reversed input (each sequence reversed
  within its own length when packed);
* projections (``proj_size > 0``): ``h_t = W_hr (o_t * tanh(c_t))``. Writing ``u_t = o_t * tanh(c_t)``,
  the recurrence ``h_{t-1} @ W_hh^T = u_{t-1} @ (W_hh W_hr)^T`` is an ordinary LSTM in u with
  recurrent weight ``W_hh @ W_hr``; the projection of all steps is then one GEMM after the layer.
  A given h_0 (already projected) enters through a first step with the original ``W_hh``;
* packed sequences: the padded batch runs with per-row lengths (``lstm_layer(..., lengths)``): the
  CPU sequence kernels and the Triton kernels mask finished rows, at padded speed; the float64 /
  no-AVX-512 path runs segments between distinct lengths. Either way every sequence's final state
  is the one at its own length;
* input projection (``forward(..., input_projection=True)``): the input is the first layer's
  precomputed ``x W_ih^T`` (:func:`lstm_fast.fused_lstm`'s skip-input mode), every direction's
  gate blocks side by side; the first layer runs without its input GEMM, the other layers as
  usual.
"""
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as _nn_module
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .export.onnx_layers import onnx_layers
from .ops.backends import check_backend_name
from .ops.checks import autocast_enabled, check_devices, mixed_state_dtypes, onednn_runs_lstm
from .ops.fast_path import plain_forward
from .ops.functional import lstm_layer
from .projection import fold_first_step

# nn.Module.__call__'s own test for "no hooks anywhere" reads these dicts (torch.nn.modules.module);
# the register_module_* functions change them in place, so these references stay current.
_GLOBAL_HOOKS = (_nn_module._global_backward_pre_hooks, _nn_module._global_backward_hooks,
                 _nn_module._global_forward_hooks, _nn_module._global_forward_pre_hooks)


class FusedLSTM(nn.LSTM):
    """``torch.nn.LSTM`` with the same constructor, parameters, inputs and outputs, plus ``backend``.

    Args:
        *args, **kwargs: exactly ``nn.LSTM``'s (input_size, hidden_size, num_layers=1, bias=True,
            batch_first=False, dropout=0.0, bidirectional=False, proj_size=0, device=None,
            dtype=None).
        backend: ``"auto"`` (Triton on CUDA, the CPU implementation on CPU), ``"cpu"`` or
            ``"triton"``; see :func:`lstm_fast.fused_lstm`.

    ``fused.load_state_dict(lstm.state_dict())`` works both ways with a plain ``nn.LSTM``.
    """

    def __init__(self, *args, backend="auto", **kwargs):
        check_backend_name(backend)
        super().__init__(*args, **kwargs)
        self.backend = backend

    def extra_repr(self):
        return super().extra_repr() + f", backend={self.backend!r}"

    def __call__(self, *args, **kwargs):
        """``nn.Module.__call__``, with a plain call (input and hx given positionally, no hook on
        this module or globally, not compiled, ``forward`` not replaced) sent straight to
        :func:`lstm_fast.ops.fast_path.plain_forward`: the test nn.Module's own call makes
        before it calls ``forward``, without its two Python frames (~1 us of a one-step call at batch
        1 on the AMD EPYC: 13.5 -> 12.6 us at H 16, 1 thread, timeit). Anything else, and every call the fast path declines, goes
        through ``nn.Module.__call__`` as looked up now (so torch.fx's patched one is honoured)."""
        if (not kwargs and 0 < len(args) < 3 and self._compiled_call_impl is None
                and not (self._forward_hooks or self._forward_pre_hooks or self._backward_hooks
                         or self._backward_pre_hooks)
                and not (_GLOBAL_HOOKS[0] or _GLOBAL_HOOKS[1] or _GLOBAL_HOOKS[2] or _GLOBAL_HOOKS[3])
                and type(self).forward is _FORWARD and "forward" not in self.__dict__):
            out = plain_forward(self, args[0], args[1] if len(args) == 2 else None)
            if out is not None:
                return out
        return nn.Module.__call__(self, *args, **kwargs)

    def _layer_weights(self, layer, direction):
        sfx = f"_l{layer}" + ("_reverse" if direction else "")
        get = lambda name: getattr(self, name + sfx) if hasattr(self, name + sfx) else None  # noqa: E731
        return (get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh"), get("weight_hr"))

    def project_input(self, input):
        """The first layer's input projection of ``input`` (..., input_size), as
        ``forward(..., input_projection=True)`` takes it: (..., dirs * 4 * hidden_size), every
        direction's ``input @ weight_ih_l0{,_reverse}.T`` side by side (no bias)."""
        return input @ self.first_layer_input_weight().t()

    def first_layer_input_weight(self):
        """(dirs * 4 * hidden_size, input_size): ``weight_ih_l0`` (and ``weight_ih_l0_reverse``
        below it). For an embedding or one-hot input ``F.embedding(tokens, w.t())`` is the
        projection, and its gradient a scatter-add into ``w``."""
        if not self.bidirectional:
            return self.weight_ih_l0
        return torch.cat((self.weight_ih_l0, self.weight_ih_l0_reverse), 0)

    def forward(self, input, hx=None, *, input_projection=False):
        """Same contract as ``nn.LSTM.forward``: returns ``(output, (h_n, c_n))``.

        ``input_projection=True``: ``input`` (or a PackedSequence's data) holds the first layer's
        precomputed input projection instead of the input, its last dimension
        ``dirs * 4 * hidden_size`` (:meth:`project_input`; direction d's gates at
        ``[d*4H, (d+1)*4H)``, gate order i, f, g, o, b_ih not included: the biases are added as
        usual); the first layer skips its input GEMM and the gradient flows to ``input``.

        A plain call (tensor input, hx None or a pair of tensors, CPU, no autocast, ...) runs on
        :func:`lstm_fast.ops.fast_path.plain_forward`: bitwise the same as the path below, which
        runs everything else and raises nn.LSTM's errors."""
        if not input_projection:
            out = plain_forward(self, input, hx)
            if out is not None:
                return out
        if _dynamo_refuses_rnn():
            return _forward_eagerly(self, input, hx, input_projection)
        real_hidden = self.proj_size if self.proj_size > 0 else self.hidden_size
        is_packed = isinstance(input, PackedSequence)
        # The checks in nn.LSTM.forward's order, so each bad input raises nn.LSTM's exception class.
        if is_packed:
            # nn.LSTM checks nothing in Python for a packed input: it permutes hx, then _VF.lstm
            # checks two states, 3-D states, then the input's dtype (RuntimeError).
            data, batch_sizes, sorted_indices, unsorted_indices = input
            batch = int(batch_sizes[0])
            if hx is None:
                hx = self._zero_state(batch, real_hidden, data)
            else:
                hx = _state_pair(self.permute_hidden(hx, sorted_indices), 3)
            if data.dtype != self._flat_weights[0].dtype and not torch._C._is_any_autocast_enabled():
                raise RuntimeError(f"LSTM: packed input dtype ({data.dtype}) does not match weight dtype "
                                   f"({self._flat_weights[0].dtype})")
            self._check_forward_args(data, hx, batch_sizes, input_projection)
            x, lengths = pad_packed_sequence(PackedSequence(data, batch_sizes, None, None))
        else:
            if not isinstance(input, torch.Tensor):     # nn.LSTM fails on input.dim(): AttributeError
                raise AttributeError(f"LSTM: expected input to be a Tensor or PackedSequence, got "
                                     f"{type(input).__name__}")
            if input.dim() not in (2, 3):
                raise ValueError(f"LSTM: Expected input to be 2D or 3D, got {input.dim()}D instead")
            is_batched = input.dim() == 3
            batch_dim = 0 if self.batch_first else 1
            x = input if is_batched else input.unsqueeze(batch_dim)
            batch = x.size(batch_dim)
            if hx is None:
                hx = self._zero_state(batch, real_hidden, x)
            else:
                want = 3 if is_batched else 2
                h_dim, c_dim = _state_dims(hx)
                if h_dim != want or c_dim != want:
                    raise RuntimeError(f"For {'batched 3-D' if is_batched else 'unbatched 2-D'} input, hx and cx "
                                       f"should also be {want}-D but got ({h_dim}-D, {c_dim}-D) tensors")
                if not is_batched:      # a longer tuple becomes a pair here, as in nn.LSTM
                    hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
            self._check_forward_args(x, hx, None, input_projection)
            hx = _state_pair(hx, 3)
            if self.batch_first:
                x = x.transpose(0, 1)
            lengths = None
        if x.size(0) == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
        check_devices(x, self._flat_weights, hx)
        out_dtypes = None
        if autocast_enabled(x.device.type):     # the state is cast to the autocast dtype, as in nn.LSTM
            for name, t in (("hx[0]", hx[0]), ("hx[1]", hx[1])):
                if not t.is_floating_point():
                    raise RuntimeError(f"LSTM: {name} dtype ({t.dtype}) is not a floating dtype")
        else:
            hx, out_dtypes = self._state_in_weight_dtype(x, hx, batch_sizes if is_packed else None)

        output, h_n, c_n = self._run_layers(x, hx, lengths, input_projection)
        if out_dtypes is not None:
            output, h_n, c_n = (t.to(d) for t, d in zip((output, h_n, c_n), out_dtypes))

        if is_packed:
            out = pack_padded_sequence(output, lengths, enforce_sorted=True).data
            return (PackedSequence(out, batch_sizes, sorted_indices, unsorted_indices),
                    self.permute_hidden((h_n, c_n), unsorted_indices))
        if self.batch_first:
            output = output.transpose(0, 1)
        if not is_batched:
            output = output.squeeze(batch_dim)
            h_n, c_n = h_n.squeeze(1), c_n.squeeze(1)
        return output, (h_n, c_n)

    def _check_input(self, x, batch_sizes, input_projection):
        """nn.LSTM's input check; for an input projection the same with its own last dimension."""
        if not input_projection:
            return self.check_input(x, batch_sizes)
        width = (2 if self.bidirectional else 1) * 4 * self.hidden_size
        if x.dtype != self.weight_hh_l0.dtype and not torch._C._is_any_autocast_enabled():
            raise ValueError(f"LSTM: input projection dtype ({x.dtype}) does not match weight dtype "
                             f"({self.weight_hh_l0.dtype})")
        expected_dim = 2 if batch_sizes is not None else 3
        if x.dim() != expected_dim:
            raise RuntimeError(f"input must have {expected_dim} dimensions, got {x.dim()}")
        if x.size(-1) != width:
            raise RuntimeError(f"with input_projection=True, input.size(-1) must be num_directions * 4 * "
                               f"hidden_size = {width}, got {x.size(-1)}")

    def _check_forward_args(self, x, hx, batch_sizes, input_projection):
        if not input_projection:
            return self.check_forward_args(x, hx, batch_sizes)
        self._check_input(x, batch_sizes, True)
        self.check_hidden_size(hx[0], self.get_expected_hidden_size(x, batch_sizes), "Expected hidden[0] size {}, got {}")
        self.check_hidden_size(hx[1], self.get_expected_cell_size(x, batch_sizes), "Expected hidden[1] size {}, got {}")

    def _state_in_weight_dtype(self, x, hx, batch_sizes):
        """(h_0, c_0) in the parameters' dtype, and the output dtypes nn.LSTM returns where they are
        not the parameters' (None when all agree). A state nn.LSTM accepts in another dtype
        (:func:`lstm_fast.ops.checks.mixed_state_dtypes`) is cast; one it refuses raises its
        RuntimeError."""
        p = self.weight_hh_l0.dtype
        if hx[0].dtype == p and hx[1].dtype == p:
            return hx, None
        equal_lengths = batch_sizes is None or int(batch_sizes[-1]) == int(batch_sizes[0])
        onednn = onednn_runs_lstm(p, x.device.type, x.numel(), self.proj_size, equal_lengths)
        dtypes = mixed_state_dtypes(p, hx[0].dtype, hx[1].dtype, onednn=onednn, steps=x.size(0),
                                    num_layers=self.num_layers, proj_size=self.proj_size)
        if dtypes is None:
            name, t = ("hx[0]", hx[0]) if hx[0].dtype != p else ("hx[1]", hx[1])
            raise RuntimeError(f"LSTM: {name} dtype ({t.dtype}) does not match the parameters' dtype ({p}), "
                               "and nn.LSTM refuses this combination; convert the state: "
                               f"{name}.to({p})")
        return (hx[0], hx[1].to(p)), (None if dtypes == (p, p, p) else dtypes)

    def _zero_state(self, batch, real_hidden, like):
        n = self.num_layers * (2 if self.bidirectional else 1)
        return (like.new_zeros(n, batch, real_hidden), like.new_zeros(n, batch, self.hidden_size))

    def _run_layers(self, x, hx, lengths, input_projection=False):
        """All layers and directions on time-first ``x`` (T, B, D); returns (output, h_n, c_n).
        ``input_projection``: x is the first layer's input projection (T, B, dirs * 4H)."""
        if torch.onnx.is_in_onnx_export():      # one ONNX LSTM node per layer, see lstm_fast.export.onnx_layers
            if input_projection:
                raise RuntimeError("FusedLSTM: input_projection=True cannot be exported to ONNX")
            return onnx_layers(self, x, hx, lengths)
        num_directions = 2 if self.bidirectional else 1
        G4 = 4 * self.hidden_size
        h_all, c_all = [], []
        layer_input = x
        for layer in range(self.num_layers):
            outs = []
            for direction in range(num_directions):
                k = layer * num_directions + direction
                weights = self._layer_weights(layer, direction)
                xin = layer_input
                if input_projection and layer == 0:     # this direction's gate blocks; no W_ih
                    xin = layer_input[..., direction * G4:(direction + 1) * G4]
                    weights = (None,) + weights[1:]
                xin = xin if direction == 0 else _reverse(xin, lengths)
                y, h, c = self._run_direction(xin, hx[0][k], hx[1][k], weights, lengths)
                outs.append(y if direction == 0 else _reverse(y, lengths))
                h_all.append(h)
                c_all.append(c)
            layer_input = outs[0] if num_directions == 1 else torch.cat(outs, 2)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, training=True)
        return layer_input, torch.stack(h_all), torch.stack(c_all)

    def _run_direction(self, x, h0, c0, weights, lengths):
        w_ih, w_hh, b_ih, b_hh, w_hr = weights
        if w_hr is None:
            y, (h, c) = lstm_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, self.backend, lengths)
            return y, h, c
        # Projection: recur on u_t = o_t * tanh(c_t) with W_hh @ W_hr, project all steps at once.
        if torch.compiler.is_exporting():       # one call over all steps, see lstm_fast.projection
            if w_ih is None:
                raise RuntimeError("FusedLSTM: input_projection=True with proj_size > 0 cannot be exported")
            x_f, h0_f, w_ih_f, w_hh_f = fold_first_step(x, h0, c0, w_ih, w_hh, w_hr)
            u, (u_last, c_last) = lstm_layer(x_f, h0_f, c0, w_ih_f, w_hh_f, b_ih, b_hh, self.backend, lengths)
            return u @ w_hr.t(), u_last @ w_hr.t(), c_last
        w_eff = w_hh @ w_hr
        lengths_rest = None if lengths is None else lengths - 1
        # First step with the caller's (projected) h_0 and the original W_hh.
        u0, (_, c1) = lstm_layer(x[:1], h0, c0, w_ih, w_hh, b_ih, b_hh, self.backend)
        if x.size(0) > 1:
            u_rest, (u_last, c_last) = lstm_layer(x[1:], u0[0], c1, w_ih, w_eff, b_ih, b_hh, self.backend,
                                                  lengths_rest)
            u = torch.cat((u0, u_rest), 0)
        else:
            u, u_last, c_last = u0, u0[0], c1
        y = (u.reshape(-1, u.size(-1)) @ w_hr.t()).view(u.size(0), u.size(1), w_hr.size(0))  # explicit: batch 0 has no -1
        return y, u_last @ w_hr.t(), c_last


_FORWARD = FusedLSTM.forward   # FusedLSTM.__call__'s shortcut is for this forward only


def _state_dims(hx):
    """(hx[0].dim(), hx[1].dim()), read as nn.LSTM reads them, so a malformed hx raises its
    exception class (IndexError for a 1-tuple, AttributeError for a non-tensor, TypeError for a
    non-sequence), with a message that names hx."""
    try:
        return hx[0].dim(), hx[1].dim()
    except (IndexError, AttributeError, TypeError) as e:
        raise type(e)(f"LSTM: hx must be a tuple (h_0, c_0) of Tensors or None, got {_describe(hx)} ({e})") from None


def _state_pair(hx, dims):
    """What _VF.lstm checks of hx after nn.LSTM's Python checks: exactly two tensors
    (RuntimeError), each with at least ``dims`` dimensions (IndexError, as its ``hx[0].size(2)``);
    returns hx."""
    if not isinstance(hx, (tuple, list)) or not all(isinstance(t, torch.Tensor) for t in hx):
        raise TypeError(f"LSTM: hx must be a tuple (h_0, c_0) of Tensors or None, got {_describe(hx)}")
    if len(hx) != 2:
        raise RuntimeError(f"lstm expects two hidden states, got a {type(hx).__name__} of {len(hx)}")
    for name, t in zip(("hx[0]", "hx[1]"), hx):
        if t.dim() < dims:
            raise IndexError(f"LSTM: {name} must be {dims}-D (num_layers * num_directions, batch, size), "
                             f"got {t.dim()}-D")
    return hx


def _describe(hx):
    if isinstance(hx, (tuple, list)):
        return f"a {type(hx).__name__} of ({', '.join(type(t).__name__ for t in hx)})"
    return type(hx).__name__


def _dynamo_refuses_rnn():
    """Under torch.compile without ``torch._dynamo.config.allow_rnn``, dynamo refuses nn.LSTM (and
    so an enclosing module's frame runs eagerly), but it would still compile FusedLSTM.forward as a
    frame of its own. Running that frame eagerly too keeps nn.LSTM's behaviour, second derivatives
    included (aot_autograd has no double backward). Read at trace time; torch.export unaffected."""
    return (torch.compiler.is_compiling() and not torch.compiler.is_exporting()
            and not torch._dynamo.config.allow_rnn)


@torch.compiler.disable(reason="FusedLSTM is an nn.LSTM: dynamo runs it eagerly unless "
                                "torch._dynamo.config.allow_rnn=True, as it does nn.LSTM")
def _forward_eagerly(module, input, hx, input_projection=False):
    return module.forward(input, hx, input_projection=input_projection)


def _reverse(x, lengths):
    """Reverse time; with lengths, reverse each sequence within its own length (padding stays)."""
    if lengths is None:
        return x.flip(0)
    T, B = x.shape[:2]
    t = torch.arange(T, device=x.device).unsqueeze(1)
    n = lengths.to(x.device).unsqueeze(0)
    idx = torch.where(t < n, n - 1 - t, t)
    return x.gather(0, idx.unsqueeze(-1).expand(T, B, x.size(2)))
