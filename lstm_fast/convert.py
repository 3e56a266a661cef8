"""``convert``: turn every ``torch.nn.LSTM`` inside an existing model into a :class:`FusedLSTM`, in place.

The point is trying lstm-fast on a model without editing its code: ``convert(model)`` after the
model is built (or after its checkpoint is loaded, or after its optimizer is created) and nothing
else changes.

How: each ``nn.LSTM`` object becomes a ``FusedLSTM`` by changing its class (``FusedLSTM`` is a
subclass of ``nn.LSTM`` that adds one attribute, ``backend``, and replaces ``forward``'s math),
the way ``torch.nn.utils.parametrize`` changes a module's class. Nothing is copied or rebuilt, so
everything that referred to the old module still holds:

* the very same ``Parameter`` objects (an optimizer created before the call keeps training the
  model), the same buffers, device, dtype, training mode and ``state_dict`` keys;
* every constructor option (layers, bias, batch_first, dropout, bidirectional, proj_size);
* hooks registered on the module (forward, pre-forward, backward, state_dict) keep firing, and
  their handles still remove them;
* other references to the module (an attribute alias, the same LSTM shared by two parents) see
  the converted module;
* a bare ``nn.LSTM`` passed as ``model`` is converted the same way and returned.

Only modules whose type is exactly ``nn.LSTM`` are converted. A user subclass of ``nn.LSTM`` may
override ``forward`` or keep extra state, and a parametrized LSTM (``weight_norm``, ...) is a
generated subclass, so those are left as they are, with a warning naming them (a ``FusedLSTM``
is left as it is silently).
"""
import warnings

from torch import nn

from .ops.backends import check_backend_name
from .module import FusedLSTM


def convert(model, backend="auto", to=FusedLSTM):
    """Replace every ``torch.nn.LSTM`` in ``model`` (``model`` itself included) by a ``FusedLSTM``, in place.

    ``convert(model, to=torch.nn.LSTM)`` is :func:`revert` instead.

    Args:
        model: an ``nn.Module``; ``nn.LSTM`` modules are found at any depth (``Sequential``,
            ``ModuleList``, ``ModuleDict``, attributes of custom modules).
        backend: the converted modules' ``backend`` (``"auto"``, ``"cpu"`` or ``"triton"``),
            see :class:`FusedLSTM`.

    Returns:
        ``model``, the same object, now running its LSTMs on lstm_fast. Outputs and gradients are
        those of the unconverted model (up to floating-point rounding).

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: unknown ``backend``, or ``to`` is neither ``FusedLSTM`` nor ``torch.nn.LSTM``.
    """
    if to is nn.LSTM:
        return revert(model)
    if to is not FusedLSTM:
        raise ValueError(f"convert: to must be lstm_fast.FusedLSTM or torch.nn.LSTM, got {to!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert: model must be a torch.nn.Module, got {type(model).__name__}")
    check_backend_name(backend)
    skipped = []
    for name, module in model.named_modules():      # each module once, even when shared by several parents
        if type(module) is nn.LSTM:
            _convert_lstm(module, backend)
        elif isinstance(module, nn.LSTM) and not isinstance(module, FusedLSTM):
            skipped.append(f"{name or '(model)'} ({type(module).__name__})")
    if skipped:
        warnings.warn("convert: left these nn.LSTM subclasses as they are (their forward or state may be "
                      "their own; a parametrized LSTM, e.g. weight_norm, is one too): " + ", ".join(skipped),
                      stacklevel=2)
    return model


def _convert_lstm(lstm, backend):
    """Make ``lstm`` (an exact ``nn.LSTM``) a ``FusedLSTM`` without touching its parameters.

    The attributes a ``FusedLSTM`` adds to ``nn.LSTM``'s are taken from one built with the same
    options on the meta device (no memory, no initialisation cost), so the converted module has
    exactly the attributes its constructor would give it."""
    with warnings.catch_warnings():     # nn.LSTM's own warnings (dropout with one layer) were given once
        warnings.simplefilter("ignore")
        template = FusedLSTM(lstm.input_size, lstm.hidden_size, num_layers=lstm.num_layers, bias=lstm.bias,
                             batch_first=lstm.batch_first, dropout=lstm.dropout,
                             bidirectional=lstm.bidirectional, proj_size=lstm.proj_size, backend=backend,
                             device="meta")
    added = {k: v for k, v in vars(template).items() if k not in vars(lstm)}
    lstm.__class__ = FusedLSTM
    vars(lstm).update(added)
    lstm.backend = backend



def revert(model):
    """Turn every ``FusedLSTM`` in ``model`` (``model`` itself included) back into a plain ``torch.nn.LSTM``, in place.

    The inverse of :func:`convert`, for shipping a model to a machine without lstm_fast: the same
    ``Parameter`` objects, buffers, hooks and ``state_dict`` keys; only the class changes and the
    attributes ``FusedLSTM`` adds (``backend``) are dropped, so ``torch.save(model)`` afterwards
    refers to ``torch.nn.LSTM`` only. Only modules whose type is exactly ``FusedLSTM`` change.

    Returns:
        ``model``, the same object.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"revert: model must be a torch.nn.Module, got {type(model).__name__}")
    for module in model.modules():
        if type(module) is FusedLSTM:
            plain = vars(_plain_template(module))
            for k in [k for k in vars(module) if k not in plain]:
                delattr(module, k)
            module.__class__ = nn.LSTM
    return model


def _plain_template(lstm):
    """An ``nn.LSTM`` with ``lstm``'s options on the meta device: the attributes a plain one has."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return nn.LSTM(lstm.input_size, lstm.hidden_size, num_layers=lstm.num_layers, bias=lstm.bias,
                       batch_first=lstm.batch_first, dropout=lstm.dropout, bidirectional=lstm.bidirectional,
                       proj_size=lstm.proj_size, device="meta")
