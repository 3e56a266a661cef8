"""Whole-model checkpoints (issue 19 item 4): ``torch.load(weights_only=True)`` rebuilds a saved
FusedLSTM once lstm_fast is imported, nothing else becomes loadable, and ``revert`` gives back a
plain nn.LSTM (same Parameters, hooks) whose saved model loads where lstm_fast cannot be imported."""
import os
import pickle
import subprocess
import sys

import pytest
import torch
from torch import nn

import lstm_fast
from lstm_fast import FusedLSTM, convert, revert

# The word language model's modules (pytorch/examples RNNModel: Embedding -> Dropout -> LSTM -> Linear),
# as torch.nn classes so a child process can rebuild them; allowed the way that example must allow them.
TORCH_MODULES = [nn.Sequential, nn.Embedding, nn.Dropout, nn.Linear, nn.LSTM]


class _LM(nn.Module):
    def __init__(self, proj_size=0, bidirectional=False):
        super().__init__()
        self.encoder = nn.Embedding(11, 4)
        self.drop = nn.Dropout(0.2)
        self.rnn = nn.LSTM(4, 6, 2, proj_size=proj_size, bidirectional=bidirectional, dropout=0.1)
        self.decoder = nn.Linear((proj_size or 6) * (2 if bidirectional else 1), 11)

    def forward(self, tokens):
        out, _ = self.rnn(self.drop(self.encoder(tokens)))
        return self.decoder(self.drop(out))


def _model(proj_size, bidirectional):
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(11, 4), nn.Dropout(0.2),
                         nn.LSTM(4, 6, 2, proj_size=proj_size, bidirectional=bidirectional, dropout=0.1))


CONFIGS = [(0, False), (3, False), (0, True), (3, True)]
IDS = ["plain", "proj3", "bi", "proj3-bi"]


@pytest.mark.parametrize("proj,bi", CONFIGS, ids=IDS)
def test_weights_only_load_of_converted_model(tmp_path, proj, bi):
    model = convert(_model(proj, bi), backend="cpu").eval()
    x = torch.randint(0, 11, (5, 3))
    y = model(x)[0]
    path = tmp_path / "model.pt"
    torch.save(model, path)
    with torch.serialization.safe_globals(TORCH_MODULES):
        loaded = torch.load(path, weights_only=True)
    assert type(loaded[2]) is FusedLSTM and loaded[2].backend == "cpu"
    assert loaded[2].state_dict().keys() == model[2].state_dict().keys()
    torch.testing.assert_close(loaded(x)[0], y, rtol=0, atol=0)


def test_weights_only_load_with_a_user_class(tmp_path):
    """The pytorch/examples shape: the user's own model class, allowed by the user, holding a FusedLSTM."""
    model = convert(_LM(proj_size=2)).eval()
    path = tmp_path / "lm.pt"
    torch.save(model, path)
    with torch.serialization.safe_globals([_LM] + TORCH_MODULES):
        loaded = torch.load(path, weights_only=True)
    x = torch.randint(0, 11, (4, 2))
    torch.testing.assert_close(loaded(x), model(x))


class _Evil:
    def __reduce__(self):
        return (os.getenv, ("HOME",))


class _Unlisted:
    pass


@pytest.mark.parametrize("obj", [_Evil(), _Unlisted(), {"m": nn.GRU(2, 2)}], ids=["os.getenv", "user-class", "nn.GRU"])
def test_other_globals_still_refused(tmp_path, obj):
    path = tmp_path / "x.pt"
    torch.save(obj, path)
    with pytest.raises(pickle.UnpicklingError, match="(?i)unsupported global"):
        torch.load(path, weights_only=True)


def test_only_fused_lstm_was_allowed():
    allowed = [g for g in torch.serialization.get_safe_globals() if getattr(g, "__module__", "").startswith("lstm_fast")]
    assert allowed == [FusedLSTM]


@pytest.mark.parametrize("proj,bi", CONFIGS, ids=IDS)
@pytest.mark.parametrize("how", ["revert", "convert_to"])
def test_revert_in_place(proj, bi, how):
    model = _model(proj, bi)
    plain_attrs = set(vars(model[2]))
    params = list(model.parameters())
    x = torch.randint(0, 11, (5, 3))
    model.eval()
    y = model(x)[0]
    convert(model)
    calls = []
    handle = model[2].register_forward_hook(lambda mod, args, out: calls.append(type(mod)))
    back = revert(model) if how == "revert" else convert(model, to=nn.LSTM)
    assert back is model
    assert type(model[2]) is nn.LSTM and set(vars(model[2])) == plain_attrs
    assert all(a is b for a, b in zip(model.parameters(), params)) and len(list(model.parameters())) == len(params)
    torch.testing.assert_close(model(x)[0], y)
    assert calls == [nn.LSTM]
    handle.remove()
    model(x)
    assert calls == [nn.LSTM]
    assert revert(model) is model          # nothing left to revert: unchanged
    bare = convert(nn.LSTM(2, 3))
    assert type(revert(bare)) is nn.LSTM


def test_convert_to_rejects_other_classes():
    with pytest.raises(ValueError, match="to must be"):
        convert(nn.LSTM(2, 3), to=nn.GRU)
    with pytest.raises(TypeError):
        revert("not a module")


_CHILD = r"""
import sys
sys.path = [p for p in sys.path if not p.startswith({root!r})]
sys.modules["lstm_fast"] = None                 # an installed (editable) lstm_fast must not be found either
try:
    import lstm_fast  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("lstm_fast importable in the child")
import torch
from torch import nn
with torch.serialization.safe_globals([nn.Sequential, nn.Embedding, nn.Dropout, nn.LSTM]):
    m = torch.load(sys.argv[1], weights_only=True)
assert type(m[2]) is nn.LSTM, type(m[2])
loaded = [k for k, v in sys.modules.items() if k.startswith("lstm_fast") and v is not None]
assert not loaded, loaded
x = torch.load(sys.argv[2], weights_only=True)
torch.testing.assert_close(m.eval()(x)[0], torch.load(sys.argv[3], weights_only=True))
print("ok")
"""


@pytest.mark.parametrize("proj,bi", [(0, False), (3, True)], ids=["plain", "proj3-bi"])
def test_reverted_model_loads_without_lstm_fast(tmp_path, proj, bi):
    model = convert(_model(proj, bi)).eval()
    x = torch.randint(0, 11, (5, 3))
    torch.save(revert(model), tmp_path / "m.pt")
    torch.save(x, tmp_path / "x.pt")
    torch.save(model(x)[0].detach(), tmp_path / "y.pt")
    root = os.path.dirname(os.path.dirname(os.path.abspath(lstm_fast.__file__)))
    res = subprocess.run([sys.executable, "-I", "-c", _CHILD.format(root=root),
                          str(tmp_path / "m.pt"), str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]


def test_unreverted_model_does_not_load_without_lstm_fast(tmp_path):
    """The child check above is real: the same child refuses a model still holding FusedLSTM."""
    model = convert(_model(0, False)).eval()
    torch.save(model, tmp_path / "m.pt")
    root = os.path.dirname(os.path.dirname(os.path.abspath(lstm_fast.__file__)))
    res = subprocess.run([sys.executable, "-I", "-c", _CHILD.format(root=root), str(tmp_path / "m.pt"), "-", "-"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "lstm_fast" in res.stderr, res.stderr[-2000:]
