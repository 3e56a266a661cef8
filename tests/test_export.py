"""Shipping a FusedLSTM model: ONNX (``torch.onnx.export(..., dynamo=True)`` gives ONNX's standard
LSTM operator, run in onnxruntime), ``torch.export.export`` with dynamic batch and sequence length,
and ``torch.compile``'s ``allow_rnn`` switch, which FusedLSTM needs exactly as nn.LSTM does.

Every exported model is compared, on fresh random inputs of several lengths and batch sizes,
against the unconverted nn.LSTM model it came from (``lstm_fast.convert`` of a deep copy)."""
import copy
import warnings
from collections import Counter

import pytest
import torch
from torch import nn
from torch.export import Dim

from lstm_fast import FusedLSTM, convert


class Net(nn.Module):
    """An LSTM and a head; returns the head's output and the final state."""

    def __init__(self, **kw):
        super().__init__()
        self.rnn = nn.LSTM(5, 8, **kw)
        width = (kw.get("proj_size") or 8) * (2 if kw.get("bidirectional") else 1)
        self.head = nn.Linear(width, 3)

    def forward(self, x, h0=None, c0=None):
        y, (h, c) = self.rnn(x, None if h0 is None else (h0, c0))
        return self.head(y), h, c


def _models(seed, **kw):
    """(the nn.LSTM model in eval mode, a converted deep copy of it)."""
    torch.manual_seed(seed)
    reference = Net(**kw).eval()
    return reference, convert(copy.deepcopy(reference))


def _inputs(kw, T, B, with_hx):
    x = torch.randn(B, T, 5) if kw.get("batch_first") else torch.randn(T, B, 5)
    if not with_hx:
        return (x,)
    n = kw.get("num_layers", 1) * (2 if kw.get("bidirectional") else 1)
    return x, torch.randn(n, B, kw.get("proj_size") or 8), torch.randn(n, B, 8)


def _dynamic_shapes(kw, with_hx):
    T, B = Dim("T", max=256), Dim("B", max=256)
    x = {0: B, 1: T} if kw.get("batch_first") else {0: T, 1: B}
    return (x, {1: B}, {1: B}) if with_hx else (x,)


ONNX_CASES = [(dict(num_layers=2, bidirectional=True, batch_first=True), False),
              (dict(bias=False), True),
              (dict(num_layers=2, proj_size=3, bidirectional=True, batch_first=True), True),
              (dict(proj_size=4), False)]


@pytest.mark.parametrize("kw,with_hx", ONNX_CASES, ids=["L2-bi-batch_first", "no-bias-hx", "L2-bi-proj-hx", "proj"])
def test_onnx_export_is_standard_lstm_and_matches_in_onnxruntime(kw, with_hx):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    reference, model = _models(0, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, _inputs(kw, 7, 3, with_hx), dynamo=True, verbose=False,
                                    dynamic_shapes=_dynamic_shapes(kw, with_hx))
    graph = program.model_proto.graph
    ops = Counter((node.domain or "ai.onnx", node.op_type) for node in graph.node)
    assert ops[("ai.onnx", "LSTM")] == kw.get("num_layers", 1), ops       # one node per layer
    assert {domain for domain, _ in ops} == {"ai.onnx"}, ops     # standard operators only, no custom op
    assert [d.dim_param for d in graph.input[0].type.tensor_type.shape.dim][:2] == (
        ["B", "T"] if kw.get("batch_first") else ["T", "B"])
    session = ort.InferenceSession(program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    for T, B in ((7, 3), (1, 2), (13, 5)):
        args = _inputs(kw, T, B, with_hx)
        got = session.run(None, {i.name: a.numpy() for i, a in zip(session.get_inputs(), args, strict=True)})
        with torch.no_grad():
            want = reference(*args)
        for name, g, w in zip(("output", "h_n", "c_n"), got, want, strict=True):
            torch.testing.assert_close(torch.from_numpy(g), w, rtol=1e-5, atol=1e-5,
                                       msg=lambda m, name=name, T=T, B=B: f"{name} at T={T}, B={B}: {m}")


def test_onnx_torchscript_exporter_also_gives_lstm():
    """The older exporter (dynamo=False) traces with TorchScript; FusedLSTM gives it aten.lstm per
    layer, which it writes as the same LSTM node (projection included)."""
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    import io

    import onnx
    kw = dict(proj_size=4, bidirectional=True)
    reference, model = _models(1, **kw)
    args = _inputs(kw, 6, 2, True)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, buffer, dynamo=False, input_names=["x", "h0", "c0"])
    proto = onnx.load_from_string(buffer.getvalue())
    assert Counter(node.op_type for node in proto.graph.node)["LSTM"] == 1
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {i.name: a.numpy() for i, a in zip(session.get_inputs(), args, strict=True)})
    with torch.no_grad():
        want = reference(*args)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(torch.from_numpy(g), w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kw,with_hx", [(dict(num_layers=2, bidirectional=True), False),
                                        (dict(proj_size=3, batch_first=True), True)],
                         ids=["L2-bi", "proj-batch_first-hx"])
def test_torch_export_dynamic_batch_and_length(kw, with_hx):
    """One exported program serves every batch size and length, and computes what the nn.LSTM
    model computes; the layers are lstm_fast's custom op."""
    reference, model = _models(2, **kw)
    T = Dim("T", min=1, max=256)
    B = Dim("B", max=256)
    x_dims = {0: B, 1: T} if kw.get("batch_first") else {0: T, 1: B}
    program = torch.export.export(model, _inputs(kw, 7, 3, with_hx),
                                  dynamic_shapes=(x_dims, {1: B}, {1: B}) if with_hx else (x_dims,))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert "lstm_fast.lstm_forward.default" in targets and not any("aten.lstm" in t for t in targets), targets
    exported = program.module()
    for T_, B_ in ((7, 3), (1, 2), (2, 1), (20, 6)):
        args = _inputs(kw, T_, B_, with_hx)
        with torch.no_grad():
            got, want = exported(*args), reference(*args)
        for name, g, w in zip(("output", "h_n", "c_n"), got, want, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5,
                                       msg=lambda m, name=name, T_=T_, B_=B_: f"{name} at T={T_}, B={B_}: {m}")


@pytest.mark.parametrize("example", [(2, 2), (2, 9)], ids=["small-batch-example", "B9-example"])
def test_torch_export_plan_does_not_depend_on_the_example_size(example):
    """The example's size is where the eager plan would pick the small-batch kernels (B 2, by
    the AVX-512 crossovers) or not (B 9); the exported program has a dynamic batch and length
    either way, so its plan must not branch on them (a branch on B is a guard that breaks the
    dynamic range), and it serves batch 1 to 40 alike."""
    reference, model = _models(6)
    T_ex, B_ex = example
    program = torch.export.export(model, _inputs({}, T_ex, B_ex, False),
                                  dynamic_shapes=({0: Dim("T", min=1, max=256), 1: Dim("B", max=256)},))
    exported = program.module()
    for T_, B_ in ((1, 1), (2, 2), (5, 40)):
        args = _inputs({}, T_, B_, False)
        with torch.no_grad():
            got, want = exported(*args), reference(*args)
        for name, g, w in zip(("output", "h_n", "c_n"), got, want, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5,
                                       msg=lambda m, name=name, T_=T_, B_=B_: f"{name} at T={T_}, B={B_}: {m}")


def test_torch_export_nn_lstm_specialises_the_length():
    """The contrast: the same model on nn.LSTM cannot be exported with a dynamic length on this
    torch (aten.lstm's decomposition walks the steps, so the length becomes a constant)."""
    reference, _ = _models(3)
    with pytest.raises(Exception, match="specialized"):
        torch.export.export(reference, _inputs({}, 7, 3, False), dynamic_shapes=({0: Dim("T", min=2, max=256)},))


def test_compile_needs_allow_rnn_exactly_as_nn_lstm():
    """Parity, not an advantage: dynamo refuses FusedLSTM (an nn.LSTM subclass) and nn.LSTM alike
    unless torch._dynamo.config.allow_rnn is set; with it both compile without a graph break."""
    reference, model = _models(4)
    x = torch.randn(6, 2, 5)
    for m in (reference, model):
        torch._dynamo.reset()
        with torch._dynamo.config.patch(allow_rnn=False), \
                pytest.raises(torch._dynamo.exc.Unsupported, match="allow_rnn"):
            torch.compile(m, fullgraph=True, backend="eager")(x)
        torch._dynamo.reset()
        with torch._dynamo.config.patch(allow_rnn=True), torch.no_grad():
            got = torch.compile(m, fullgraph=True, backend="eager")(x)
            want = reference(x)
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    assert isinstance(model.rnn, FusedLSTM) and type(reference.rnn) is nn.LSTM


class _LayerWithLengths(nn.Module):
    """One layer through the custom op itself, with per-row lengths: what a captured program holds."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(5, 8)

    def forward(self, x, lengths):
        B = x.size(1)
        h0 = x.new_zeros(B, 8)
        y, h, c, _, _ = torch.ops.lstm_fast.lstm_forward(x, h0, h0, self.lstm.weight_ih_l0, self.lstm.weight_hh_l0,
                                                         self.lstm.bias_ih_l0, self.lstm.bias_hh_l0, lengths, "cpu_sequence")
        return y, h, c


@pytest.mark.parametrize("case", ["model", "lengths"])
def test_onnx_translation_table_for_captured_programs(case):
    """A torch.export program holds lstm_fast's custom op (no ONNX flag while it was captured);
    custom_translation_table() turns each into one ONNX LSTM node, per-row lengths included."""
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    from torch.nn.utils.rnn import pack_padded_sequence

    from lstm_fast.export.onnx_translation import custom_translation_table
    torch.manual_seed(5)
    T, B = Dim("T", min=1, max=64), Dim("B", max=64)
    if case == "model":
        kw = dict(num_layers=2, bidirectional=True)
        reference, model = _models(5, **kw)
        program = torch.export.export(model, _inputs(kw, 7, 3, False), dynamic_shapes=({0: T, 1: B},))
        sizes = ((7, 3), (1, 1), (12, 5))
    else:
        model = _LayerWithLengths()
        program = torch.export.export(model, (torch.randn(7, 3, 5), torch.tensor([7, 2, 5])),
                                      dynamic_shapes=({0: T, 1: B}, {0: B}))
        sizes = ((7, 3), (9, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_program = torch.onnx.export(program, dynamo=True, custom_translation_table=custom_translation_table())
    ops = Counter((node.domain or "ai.onnx", node.op_type) for node in onnx_program.model_proto.graph.node)
    assert ops[("ai.onnx", "LSTM")] == (4 if case == "model" else 1) and {d for d, _ in ops} == {"ai.onnx"}, ops
    session = ort.InferenceSession(onnx_program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    for T_, B_ in sizes:
        x = torch.randn(T_, B_, 5)
        if case == "model":
            feeds, want = (x,), reference(x)
        else:   # nn.LSTM on the packed batch: output zero past each length, state at each row's length
            lengths = torch.randint(1, T_ + 1, (B_,))
            lengths[0] = T_
            feeds = (x, lengths)
            y, (h, c) = model.lstm(pack_padded_sequence(x, lengths, enforce_sorted=False))
            y = torch.nn.utils.rnn.pad_packed_sequence(y, total_length=T_)[0]
            want = (y, h[0], c[0])
        got = session.run(None, {i.name: a.numpy() for i, a in zip(session.get_inputs(), feeds, strict=True)})
        with torch.no_grad():
            for g, w in zip(got, torch.utils._pytree.tree_leaves(want), strict=True):
                torch.testing.assert_close(torch.from_numpy(g), w.detach(), rtol=1e-5, atol=1e-5)
