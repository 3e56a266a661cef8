"""Second derivatives, as nn.LSTM on the CPU supports them: gradgradcheck in float64 through
FusedLSTM and fused_lstm (layers, bidirectional, projections, lengths, packed input), and a
gradient penalty (backward of a gradient norm) against nn.LSTM's."""
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from lstm_fast import FusedLSTM, fused_lstm


def _params(m):
    return [p for p in m.parameters()]


_CASES = [dict(num_layers=2), dict(bidirectional=True), dict(proj_size=3), dict(bidirectional=True, packed=True)]
_CASE_IDS = ["layers2", "bidirectional", "proj3", "bidirectional-packed"]


def _penalty_grads(model, params, x, packed, both=False):
    """Second derivatives of a gradient penalty: d/d(x, params) of |d loss / d(x, params)|^2
    (with ``both``, the first derivatives before them)."""
    xi = x.clone().requires_grad_()
    inp = pack_padded_sequence(xi, torch.tensor([x.size(0), 3, 1]), enforce_sorted=False) if packed else xi
    out, (h, c) = model(inp)
    loss = (out.data if packed else out).pow(2).sum() + h.sum() + c.pow(2).sum()
    gs = torch.autograd.grad(loss, [xi, *params], create_graph=True)
    penalty = sum(g.pow(2).sum() for g in gs)
    second = torch.autograd.grad(penalty, [xi, *params])
    return (*gs, *second) if both else second


def _pair(seed, dtype=torch.float32, **kw):
    torch.manual_seed(seed)
    ref = nn.LSTM(5, 6, dtype=dtype, **kw)
    fused = FusedLSTM(5, 6, dtype=dtype, **kw)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


@pytest.mark.parametrize("kw", [dict(), dict(num_layers=2), dict(bidirectional=True), dict(proj_size=2),
                                dict(bias=False)], ids=["plain", "layers2", "bidirectional", "proj2", "no-bias"])
def test_gradgradcheck_module(kw):
    torch.manual_seed(0)
    m = FusedLSTM(3, 4, dtype=torch.float64, **kw)
    x = torch.randn(3, 2, 3, dtype=torch.float64, requires_grad=True)
    ps = _params(m)

    def f(x, *p):
        out, (h, c) = torch.func.functional_call(m, dict(zip([n for n, _ in m.named_parameters()], p)), (x,))
        return out, h, c
    assert torch.autograd.gradgradcheck(f, (x, *ps))


def test_gradgradcheck_functional_with_lengths():
    torch.manual_seed(1)
    T, B, D, H = 4, 3, 2, 3
    args = [torch.randn(s, dtype=torch.float64, requires_grad=True)
            for s in ((T, B, D), (B, H), (B, H), (4 * H, D), (4 * H, H), (4 * H,), (4 * H,))]
    lengths = torch.tensor([4, 1, 3])

    def f(x, h0, c0, w_ih, w_hh, b_ih, b_hh):
        y, (h, c) = fused_lstm(x, (h0, c0), w_ih, w_hh, b_ih, b_hh, lengths=lengths)
        return y, h, c
    assert torch.autograd.gradgradcheck(f, args)


@pytest.mark.parametrize("kw", _CASES + [dict(proj_size=2, num_layers=2, bidirectional=True, packed=True)],
                         ids=_CASE_IDS + ["proj2-layers2-bidirectional-packed"])
def test_gradient_penalty_matches_nn_lstm(kw):
    """Eager: the first derivatives taken with create_graph=True and the second derivatives of a
    gradient penalty equal nn.LSTM's (float64). gradgradcheck alone cannot see a wrong
    create_graph gradient (it differentiates whatever the first backward returns), so this
    compares with nn.LSTM; projections share biases and W_hh between two layer calls."""
    kw = dict(kw)
    packed = kw.pop("packed", False)
    ref, fused = _pair(2, torch.float64, **kw)
    x = torch.randn(5, 3, 5, dtype=torch.float64)
    want = _penalty_grads(ref, list(ref.parameters()), x, packed, both=True)
    got = _penalty_grads(fused, list(fused.parameters()), x, packed, both=True)
    names = ["input"] + [n for n, _ in ref.named_parameters()]
    for name, a, b in zip([f"d {n}" for n in names] + [f"d2 {n}" for n in names], got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=lambda m, name=name: f"{name}: {m}")


def test_first_derivatives_stay_on_the_fast_path(monkeypatch):
    """Without create_graph the backward is the implementation's own, not the recomputation."""
    from lstm_fast.ops import autograd
    monkeypatch.setattr(autograd, "differentiable_backward", lambda *a, **k: pytest.fail("recomputed"))
    m = FusedLSTM(3, 4)
    m(torch.randn(2, 2, 3, requires_grad=True))[0].sum().backward()


def test_gradgradcheck_on_the_triton_backend():
    """The same second derivatives when the layer's forward ran on the Triton kernels (their
    interpreter on the CPU)."""
    import os
    from lstm_fast.ops.backends import triton_unavailable_reason
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if triton_unavailable_reason(device) is not None or (device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1"):
        pytest.skip("needs CUDA or Triton's interpreter")
    torch.manual_seed(3)
    m = FusedLSTM(2, 3, dtype=torch.float64, device=device, backend="triton")
    x = torch.randn(2, 2, 2, dtype=torch.float64, device=device, requires_grad=True)
    names = [n for n, _ in m.named_parameters()]

    def f(x, *p):
        out, (h, c) = torch.func.functional_call(m, dict(zip(names, p)), (x,))
        return out, h, c
    assert torch.autograd.gradgradcheck(f, (x, *m.parameters()))


# --- under torch.compile -------------------------------------------------------------------------
# nn.LSTM's behaviour is the target in every configuration: without allow_rnn dynamo runs it
# eagerly (any backend), so second derivatives work; with allow_rnn it is traced, and its double
# backward works on dynamo's "eager" backend and raises aot_autograd's RuntimeError on the aot
# backends (aot_eager, inductor), which support no double backward for any op.

@pytest.mark.parametrize("allow_rnn,backend", [(False, "aot_eager"), (False, "inductor"), (True, "eager")],
                         ids=["default-aot_eager", "default-inductor", "allow_rnn-eager"])
@pytest.mark.parametrize("kw", _CASES, ids=_CASE_IDS)
def test_compiled_gradient_penalty_matches_nn_lstm(kw, allow_rnn, backend):
    """torch.compile(model), autograd.grad(create_graph=True), then a second backward: FusedLSTM's
    second derivatives equal nn.LSTM's (float64, every input and parameter)."""
    kw = dict(kw)
    packed = kw.pop("packed", False)
    # traced (allow_rnn) with lengths: the float32 masking kernels (float64 lengths do not compile)
    dtype = torch.float32 if packed and allow_rnn else torch.float64
    ref, fused = _pair(4, dtype, **kw)
    x = torch.randn(5, 3, 5, dtype=dtype)
    want = _penalty_grads(ref, list(ref.parameters()), x, packed, both=True)
    torch._dynamo.reset()
    with torch._dynamo.config.patch(allow_rnn=allow_rnn):
        compiled = torch.compile(fused, backend=backend, fullgraph=allow_rnn and not packed)   # traced (packing breaks the graph)
        got = _penalty_grads(compiled, list(fused.parameters()), x, packed, both=True)
    names = ["input"] + [n for n, _ in ref.named_parameters()]
    tol = dict(rtol=1e-9, atol=1e-10) if dtype == torch.float64 else dict(rtol=2e-4, atol=2e-5)
    for name, a, b in zip([f"d {n}" for n in names] + [f"d2 {n}" for n in names], got, want, strict=True):
        torch.testing.assert_close(a, b, **tol, msg=lambda m, name=name: f"{name}: {m}")


def _recording_backend(ops):
    """A dynamo backend that records the call targets of every graph it is given, then runs it."""
    def backend(gm, example_inputs):
        ops.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm.forward
    return backend


@pytest.mark.parametrize("kw", [dict(num_layers=2), dict(bidirectional=True), dict(proj_size=2)],
                         ids=["layers2", "bidirectional", "proj2"])
def test_compiled_gradgradcheck(kw):
    """gradgradcheck (float64) through the traced custom op (allow_rnn, no aot_autograd: the op's
    autograd formula runs eagerly and differentiates its recomputation)."""
    torch.manual_seed(5)
    m = FusedLSTM(3, 4, dtype=torch.float64, **kw)
    names = [n for n, _ in m.named_parameters()]
    x = torch.randn(3, 2, 3, dtype=torch.float64, requires_grad=True)

    def f(x, *p):
        out, (h, c) = torch.func.functional_call(m, dict(zip(names, p)), (x,))
        return out, h, c

    ops = []
    torch._dynamo.reset()
    with torch._dynamo.config.patch(allow_rnn=True):
        compiled = torch.compile(f, backend=_recording_backend(ops), fullgraph=True)
        assert torch.autograd.gradgradcheck(compiled, (x, *m.parameters()))
    assert any("lstm_fast.lstm_forward" in o for o in ops), ops


def test_compiled_gradgradcheck_with_lengths():
    """The same for fused_lstm with per-row lengths (the custom op's lengths argument). Under
    torch.compile lengths need masking kernels: float64 has them in Triton (its interpreter here)."""
    import os
    from lstm_fast.ops.backends import triton_unavailable_reason
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if triton_unavailable_reason(device) is not None or (device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1"):
        pytest.skip("needs CUDA or Triton's interpreter")
    torch.manual_seed(6)
    T, B, D, H = 3, 3, 1, 2     # small: every element is a numerical derivative through the interpreter
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = [torch.randn(s, dtype=torch.float64, device=device)
                                         for s in ((T, B, D), (B, H), (B, H), (4 * H, D), (4 * H, H), (4 * H,), (4 * H,))]
    lengths = torch.tensor([3, 1, 2])

    def f(x, h0, c0, w_hh):     # the masked recurrence's inputs; W_ih and the biases held fixed (CI time)
        y, (h, c) = fused_lstm(x, (h0, c0), w_ih, w_hh, b_ih, b_hh, lengths=lengths, backend="triton")
        return y, h, c

    ops = []
    torch._dynamo.reset()
    args = [t.requires_grad_() for t in (x, h0, c0, w_hh)]
    # fast_mode: each check compares random projections u^T J v of the analytic and the numerical
    # Jacobians of the gradients (float64) instead of every element: a wrong second derivative
    # still fails, at a fraction of the interpreter's time.
    assert torch.autograd.gradgradcheck(torch.compile(f, backend=_recording_backend(ops), fullgraph=True), args,
                                        fast_mode=True)
    assert any("lstm_fast.lstm_forward" in o for o in ops), ops


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_double_backward_on_aot_backends_raises_as_nn_lstm(backend):
    """With allow_rnn on an aot backend nn.LSTM's double backward raises aot_autograd's
    RuntimeError (PyTorch supports none through a compiled graph); FusedLSTM raises the same."""
    ref, fused = _pair(7)
    x = torch.randn(4, 2, 5)
    errors = []
    for m in (ref, fused):
        torch._dynamo.reset()
        with torch._dynamo.config.patch(allow_rnn=True), pytest.raises(RuntimeError) as e:
            _penalty_grads(torch.compile(m, backend=backend), list(m.parameters()), x, False)
        errors.append(str(e.value))
    assert "double backward" in errors[0], errors[0]
    assert "double backward" in errors[1], errors[1]


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compiled_first_derivatives_stay_on_the_fast_path(monkeypatch, backend):
    """Without create_graph the compiled backward is the implementation's own, not the recomputation."""
    from lstm_fast.ops import custom_ops
    monkeypatch.setattr(custom_ops, "differentiable_backward", lambda *a, **k: pytest.fail("recomputed"))
    _, fused = _pair(8)
    torch._dynamo.reset()
    with torch._dynamo.config.patch(allow_rnn=True):
        out = torch.compile(fused, backend=backend, fullgraph=True)(torch.randn(3, 2, 5, requires_grad=True))[0]
    out.sum().backward()
    assert fused.weight_hh_l0.grad is not None


def test_compile_without_allow_rnn_runs_fused_lstm_eagerly_as_nn_lstm():
    """Without allow_rnn dynamo refuses nn.LSTM; FusedLSTM's own forward frame is not compiled
    either (no lstm_fast op in any graph), and fullgraph raises dynamo's Unsupported for both."""
    ref, fused = _pair(9)
    x = torch.randn(3, 2, 5)
    ops = []
    torch._dynamo.reset()
    with torch._dynamo.config.patch(allow_rnn=False):
        got = torch.compile(fused, backend=_recording_backend(ops))(x)
        for m in (ref, fused):
            torch._dynamo.reset()
            with pytest.raises(torch._dynamo.exc.Unsupported, match="allow_rnn"):
                torch.compile(m, backend="eager", fullgraph=True)(x)
    assert not [o for o in ops if "lstm_fast" in o], ops
    for a, b in zip(got, ref(x), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
