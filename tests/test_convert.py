"""``lstm_fast.convert``: every nn.LSTM of an existing model becomes a FusedLSTM in place, holding
the same Parameter objects, and the model computes what it computed before (outputs and
gradients checked against an unconverted deep copy, on fresh random inputs)."""
import copy

import pytest
import torch
from torch import nn

import lstm_fast
from lstm_fast import FusedLSTM, convert

# Every constructor option, each LSTM fed the previous one's output width.
CONFIGS = [dict(input_size=5, hidden_size=8, num_layers=2),
           dict(input_size=8, hidden_size=6, bidirectional=True, batch_first=True, bias=False),
           dict(input_size=12, hidden_size=7, proj_size=4, num_layers=2, dropout=0.3),
           dict(input_size=4, hidden_size=5, bidirectional=True, proj_size=3, batch_first=True)]


class Encoder(nn.Module):
    """LSTMs at several depths: an attribute, inside a ModuleList, inside a Sequential, and one
    FusedLSTM that must stay as it is."""

    def __init__(self, dtype=torch.float32):
        super().__init__()
        self.first = nn.LSTM(**CONFIGS[0], dtype=dtype)
        self.stack = nn.ModuleList([nn.LSTM(**CONFIGS[1], dtype=dtype),
                                    nn.Sequential(nn.Identity(), nn.LSTM(**CONFIGS[2], dtype=dtype))])
        self.last = nn.LSTM(**CONFIGS[3], dtype=dtype)
        self.already = FusedLSTM(6, 3, dtype=dtype)
        self.head = nn.Linear(3, 2, dtype=dtype)

    def forward(self, x):                         # x: (T, B, 5), time first
        y, (h0, c0) = self.first(x)
        y, _ = self.stack[0](y.transpose(0, 1))   # batch first from here
        y, (h2, c2) = self.stack[1][1](y)         # the third LSTM is time first: (B, T) read as (T, B)
        y, _ = self.last(y)
        y, _ = self.already(y)
        return self.head(y).sum() + h0.pow(2).sum() + c0.sum() + h2.sum() + 0.5 * c2.pow(2).sum()


def _lstm_children(model):
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.LSTM)]


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_nested_model_converted_in_place_same_parameters_outputs_gradients(training):
    torch.manual_seed(0)
    model = Encoder().train(training)
    reference = copy.deepcopy(model)
    params_before = list(model.parameters())
    keys_before = list(model.state_dict().keys())
    lstms_before = _lstm_children(model)

    assert convert(model) is model
    lstms_after = _lstm_children(model)
    assert [n for n, _ in lstms_after] == [n for n, _ in lstms_before]
    for (name, before), (_, after) in zip(lstms_before, lstms_after, strict=True):
        assert after is before, name                               # the same module object
        assert type(after) is FusedLSTM, name
        assert after.training == training and after.backend == "auto"
    assert all(a is b for a, b in zip(model.parameters(), params_before, strict=True))
    assert list(model.state_dict().keys()) == keys_before
    for name, lstm in _lstm_children(reference):
        converted = model.get_submodule(name)
        for attr in ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
                     "bidirectional", "proj_size"):
            assert getattr(converted, attr) == getattr(lstm, attr), (name, attr)
        assert converted.weight_ih_l0.device == lstm.weight_ih_l0.device
        assert converted.weight_ih_l0.dtype == lstm.weight_ih_l0.dtype

    x = torch.randn(9, 4, 5)
    torch.manual_seed(1)                       # dropout (train mode) draws the same masks as nn.LSTM
    loss = model(x)
    torch.manual_seed(1)
    loss_ref = reference(x)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    grads_ref = torch.autograd.grad(loss_ref, list(reference.parameters()))
    for (name, _), g, g_ref in zip(model.named_parameters(), grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"grad {name}: {m}")


def test_optimizer_created_before_convert_keeps_training():
    """One Adam step on the converted model and on an unconverted copy (each with its optimizer
    built before the conversion) moves the parameters the same way."""
    torch.manual_seed(2)
    model = Encoder()
    reference = copy.deepcopy(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    opt_ref = torch.optim.Adam(reference.parameters(), lr=1e-2)
    convert(model)
    x = torch.randn(7, 3, 5)
    before = [p.detach().clone() for p in model.parameters()]
    for m, o in ((model, opt), (reference, opt_ref)):
        o.zero_grad()
        torch.manual_seed(3)
        m(x).backward()
        o.step()
    for (name, p), p_ref, p0 in zip(model.named_parameters(), reference.parameters(), before, strict=True):
        assert not torch.equal(p, p0), name                       # the optimizer did update it
        torch.testing.assert_close(p, p_ref, rtol=1e-5, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")


def test_bare_lstm_is_converted_itself_and_returned():
    torch.manual_seed(4)
    lstm = nn.LSTM(3, 5, num_layers=2, bidirectional=True, dtype=torch.float64)
    reference = copy.deepcopy(lstm)
    weight = lstm.weight_hh_l1_reverse
    out = convert(lstm, backend="cpu")
    assert out is lstm and type(lstm) is FusedLSTM and lstm.backend == "cpu"
    assert lstm.weight_hh_l1_reverse is weight
    x, h0, c0 = torch.randn(6, 2, 3, dtype=torch.float64), torch.randn(4, 2, 5, dtype=torch.float64), \
        torch.randn(4, 2, 5, dtype=torch.float64)
    for a, b in zip(torch.utils._pytree.tree_leaves(lstm(x, (h0, c0))),
                    torch.utils._pytree.tree_leaves(reference(x, (h0, c0))), strict=True):
        torch.testing.assert_close(a, b)


def test_hooks_and_aliases_follow_the_converted_module():
    """Hooks registered before the call keep firing and their handles still remove them; a module
    shared by two parents is converted once and stays shared."""
    shared = nn.LSTM(4, 6)
    model = nn.ModuleDict({"a": shared, "b": nn.Sequential(shared)})
    seen = []
    handle = shared.register_forward_hook(lambda mod, args, out: seen.append(type(mod)))
    pre = shared.register_forward_pre_hook(lambda mod, args: seen.append("pre"))
    convert(model)
    assert model["a"] is model["b"][0] is shared and isinstance(shared, FusedLSTM)
    shared(torch.randn(3, 2, 4))
    assert seen == ["pre", FusedLSTM]
    handle.remove()
    pre.remove()
    shared(torch.randn(3, 2, 4))
    assert seen == ["pre", FusedLSTM]


def test_subclasses_of_lstm_are_left_alone_with_a_warning():
    class MyLSTM(nn.LSTM):
        def forward(self, x, hx=None):
            return super().forward(x * 2, hx)

    model = nn.Sequential(MyLSTM(3, 4), nn.LSTM(4, 4), FusedLSTM(4, 2))
    with pytest.warns(UserWarning, match=r"0 \(MyLSTM\)") as record:
        convert(model)
    assert len(record) == 1 and "FusedLSTM" not in str(record[0].message)
    assert type(model[0]) is MyLSTM and type(model[1]) is FusedLSTM


def test_state_dict_round_trips_with_an_unconverted_model():
    torch.manual_seed(5)
    model = convert(Encoder())
    fresh = Encoder()
    fresh.load_state_dict(model.state_dict())
    x = torch.randn(5, 2, 5)
    torch.testing.assert_close(fresh.eval()(x), model.eval()(x), rtol=1e-5, atol=1e-5)


def test_bad_arguments():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        convert(torch.randn(3))
    with pytest.raises(ValueError, match="backend"):
        convert(nn.LSTM(2, 3), backend="cuda")
    assert lstm_fast.convert is convert
