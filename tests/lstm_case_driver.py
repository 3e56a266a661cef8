"""Child-process driver for tests that may crash the process (issue 19: fuzz and device guards).

Run as ``python tests/lstm_case_driver.py`` with a JSON list of case specs on stdin. For each case it
prints ``START <id>`` (flushed) before running it, ``REF <json>`` (nn.LSTM's outcome) before the
lstm_fast side runs, and one ``RESULT <json>`` line after, so when a
case kills the process (a segfault in a native kernel) the parent sees a signal exit and the id of
the case that caused it. Each case builds an ``nn.LSTM`` and a ``FusedLSTM`` with the same weights
(or calls ``nn.LSTM`` / ``lstm_fast.fused_lstm`` for one layer), feeds both the same input and hx,
and records each side's outcome: the outputs' shapes/dtypes/devices and whether the values agree
(allclose, NaN equal to NaN), or the exception's class and message. With ``grad`` set (module
api), both forwards run in grad mode and, where both return on the CPU, the gradients of the same
random cotangents w.r.t. the input, h_0, c_0 and every parameter are compared too (``grads_close``,
and ``grads_bad`` naming those that differ).

A spec (all keys optional except id and seed): api ("module" | "functional"), D, H, layers, bi, proj,
batch_first, bias, dtype ("float32" | "float64" | "bfloat16"), param_device, T, B, unbatched,
packed (a list of lengths), x_device, x_dtype, x_wrong_dim (feature size off by one), x_layout
("contiguous" | "noncontig" | "expanded"), x_values ("normal" | "nan" | "inf"), hx (None |
"tuple" | "list" | "one" | "three" | "wrong_dims" | "wrong_batch" | "not_tensor"), h_device,
c_device, h_dtype, c_dtype, grad (None | "all": input, h_0, c_0 and parameters require grad |
"input": only input, h_0 and c_0 do).
"""
import json
import sys

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import lstm_fast
from lstm_fast import FusedLSTM

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}
TOL = {torch.float32: (1e-4, 1e-5), torch.float64: (1e-9, 1e-10), torch.bfloat16: (5e-2, 5e-2)}
#: Gradients: (rtol, atol relative to the largest |gradient| of nn.LSTM's, at least 1).
GRAD_TOL = {torch.float32: (1e-3, 1e-4), torch.float64: (1e-8, 1e-9), torch.bfloat16: (1e-1, 5e-2)}


def _input(spec, dtype):
    g = torch.Generator().manual_seed(spec["seed"])
    D = spec.get("D", 3) + (1 if spec.get("x_wrong_dim") else 0)
    T, B = spec.get("T", 4), spec.get("B", 2)
    bf = spec.get("batch_first", False) and spec.get("api", "module") == "module"
    shape = (T, D) if spec.get("unbatched") else ((B, T, D) if bf else (T, B, D))
    layout = spec.get("x_layout", "contiguous")
    if layout == "expanded":
        x = torch.randn(shape[:-1] + (1,), generator=g, dtype=torch.float64).expand(shape)
    elif layout == "noncontig":
        x = torch.randn(shape[:-1] + (2 * shape[-1],), generator=g, dtype=torch.float64)[..., ::2]
    else:
        x = torch.randn(shape, generator=g, dtype=torch.float64)
    x = x.to(DTYPES[spec.get("x_dtype", spec.get("dtype", "float32"))])
    if spec.get("x_values") in ("nan", "inf") and x.numel():
        x = x.clone() if layout != "expanded" else x.contiguous()
        x.view(-1)[0] = float(spec["x_values"])
    return x.to(spec.get("x_device", "cpu"))


def _hx(spec, dtype, layers_dirs, real_h, H):
    form = spec.get("hx")
    if form is None:
        return None
    g = torch.Generator().manual_seed(spec["seed"] + 1)
    B = spec.get("B", 2) + (1 if form == "wrong_batch" else 0)
    if spec.get("api", "module") == "functional":
        hs, cs = (B, real_h), (B, H)
    elif spec.get("unbatched"):
        hs, cs = (layers_dirs, real_h), (layers_dirs, H)
    else:
        hs, cs = (layers_dirs, B, real_h), (layers_dirs, B, H)
    if form == "wrong_dims":
        hs, cs = hs[1:], cs[1:]
    h = torch.randn(hs, generator=g, dtype=torch.float64).to(DTYPES[spec.get("h_dtype", spec.get("dtype", "float32"))])
    c = torch.randn(cs, generator=g, dtype=torch.float64).to(DTYPES[spec.get("c_dtype", spec.get("dtype", "float32"))])
    h, c = h.to(spec.get("h_device", "cpu")), c.to(spec.get("c_device", "cpu"))
    return {"tuple": (h, c), "list": [h, c], "one": (h,), "three": (h, c, c), "wrong_dims": (h, c),
            "wrong_batch": (h, c), "not_tensor": (h, 1.0)}[form]


def _outcome(fn):
    try:
        out = fn()
    except Exception as e:      # noqa: BLE001 - the class is what is compared
        return {"exc": type(e).__name__, "msg": str(e)[:400]}, None
    y, (h, c) = out
    if isinstance(y, PackedSequence):
        y = y.data
    ts = (y, h, c)
    return {"shapes": [list(t.shape) for t in ts], "dtypes": [str(t.dtype) for t in ts],
            "devices": [str(t.device) for t in ts]}, ts


def run_case(spec):
    try:
        return _run_case(spec)
    except Exception as e:      # noqa: BLE001 - a spec nn.LSTM itself cannot build (e.g. proj_size >= H)
        return {"id": spec["id"], "setup": f"{type(e).__name__}: {e}"[:300]}


def _run_case(spec):
    if spec.get("_crash"):      # the harness test: die the way a native out-of-bounds read does
        import ctypes
        ctypes.string_at(0)
    dtype = DTYPES[spec.get("dtype", "float32")]
    D, H, proj = spec.get("D", 3), spec.get("H", 5), spec.get("proj", 0)
    torch.manual_seed(spec["seed"])
    if spec.get("api", "module") == "functional":
        ref_mod = nn.LSTM(D, H, 1, bias=spec.get("bias", True), dtype=dtype)
        ref_mod = ref_mod.to(spec.get("param_device", "cpu"))
        layers_dirs, real_h = 1, H
        x = _input(spec, dtype)
        hx = _hx(spec, dtype, 1, H, H)
        ws = [ref_mod.weight_ih_l0, ref_mod.weight_hh_l0]
        bs = [ref_mod.bias_ih_l0, ref_mod.bias_hh_l0] if spec.get("bias", True) else [None, None]
        leaves = []     # gradients are compared for the module api only

        def ref():
            y, (h, c) = ref_mod(x, None if hx is None else tuple(t.unsqueeze(0) for t in hx) if len(hx) == 2
                                else hx)
            return y, (h[0], c[0])

        def fused():
            return lstm_fast.fused_lstm(x, hx, *ws, *bs)
    else:
        kw = dict(num_layers=spec.get("layers", 1), bias=spec.get("bias", True),
                  batch_first=spec.get("batch_first", False), bidirectional=spec.get("bi", False),
                  proj_size=proj, dtype=dtype)
        ref_mod = nn.LSTM(D, H, **kw)
        fused_mod = FusedLSTM(D, H, **kw)
        fused_mod.load_state_dict(ref_mod.state_dict())
        ref_mod.to(spec.get("param_device", "cpu"))
        fused_mod.to(spec.get("param_device", "cpu"))
        layers_dirs = kw["num_layers"] * (2 if kw["bidirectional"] else 1)
        real_h = proj or H
        x = _input(spec, dtype)
        hx = _hx(spec, dtype, layers_dirs, real_h, H)
        leaves = _require_grad(spec, x, hx, (ref_mod, fused_mod))
        if spec.get("packed") is not None:
            xt = x.transpose(0, 1) if kw["batch_first"] else x
            x = pack_padded_sequence(xt, torch.tensor(spec["packed"]), enforce_sorted=False)

        def ref():
            return ref_mod(x, hx)

        def fused():
            return fused_mod(x, hx)
    grad = spec.get("grad") if spec.get("api", "module") == "module" else None
    with torch.set_grad_enabled(bool(grad)):
        r, rt = _outcome(ref)
        print("REF " + json.dumps(r), flush=True)     # kept by the parent if the fused side crashes
        f, ft = _outcome(fused)
    close = None
    result = {"id": spec["id"], "ref": r, "fused": f}
    if rt is not None and ft is not None and r == f and all(t.device.type != "meta" for t in rt):
        rtol, atol = TOL[dtype]
        close = all(torch.allclose(a.double(), b.double(), rtol=rtol, atol=atol, equal_nan=True)
                    for a, b in zip(rt, ft))
        if grad:
            result.update(_compare_grads(spec, dtype, rt, ft, leaves, ref_mod, fused_mod))
    result["close"] = close
    return result


def _require_grad(spec, x, hx, modules):
    """With ``grad`` set: the input and the floating hx tensors become leaves that require grad
    (returned, in that order); ``grad="input"`` freezes the parameters."""
    if not spec.get("grad"):
        return []
    if spec["grad"] == "input":
        for mod in modules:
            mod.requires_grad_(False)
    ts = [x] + (list(hx) if isinstance(hx, (tuple, list)) else [])
    leaves = []
    for t in ts:
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not any(t is u for u in leaves):
            leaves.append(t.requires_grad_())
    return leaves


def _compare_grads(spec, dtype, rt, ft, leaves, ref_mod, fused_mod):
    """The gradients of <cotangents, outputs> w.r.t. every leaf and parameter, nn.LSTM's against
    FusedLSTM's (a gradient autograd leaves out counts as zeros)."""
    g = torch.Generator().manual_seed(spec["seed"] + 2)
    cots = [torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.dtype) for t in rt]
    names = [f"leaf{i}" for i in range(len(leaves))]
    ref_params = [(n, p) for n, p in ref_mod.named_parameters() if p.requires_grad]
    fused_params = dict(fused_mod.named_parameters())
    names += [n for n, _ in ref_params]
    grads = []
    for outs, params in ((rt, [p for _, p in ref_params]), (ft, [fused_params[n] for n, _ in ref_params])):
        pairs = [(o, c) for o, c in zip(outs, cots) if o.requires_grad]
        inputs = leaves + params
        if not pairs or not inputs:
            grads.append([None] * len(inputs))
            continue
        grads.append(torch.autograd.grad([o for o, _ in pairs], inputs, [c for _, c in pairs], allow_unused=True,
                                     retain_graph=True))   # the packing of the input is in both graphs
    rtol, atol = GRAD_TOL[dtype]
    bad = []
    for name, t, a, b in zip(names, leaves + [p for _, p in ref_params], *grads):
        a = torch.zeros_like(t) if a is None else a
        b = torch.zeros_like(t) if b is None else b
        if a.dtype != b.dtype or a.shape != b.shape:
            bad.append(f"{name}: {a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)}")
            continue
        a, b = a.double(), b.double()
        if spec.get("x_values") == "inf":   # 0 * inf: where a gradient is NaN depends on the order of
            both = a.isfinite() & b.isfinite()      # the products, so only entries finite in both count
            a, b = a[both], b[both]
        scale = max(1.0, float(a[a.isfinite()].abs().max())) if a.isfinite().any() else 1.0
        if not torch.allclose(b, a, rtol=rtol, atol=atol * scale, equal_nan=True):
            diff = (a - b).abs()
            bad.append(f"{name}: max |diff| {float(diff[diff.isfinite()].max()) if diff.isfinite().any() else 'nan'}"
                       f" (nan {int(a.isnan().sum())} vs {int(b.isnan().sum())}), scale {scale:.3g}")
    return {"grads_close": not bad, "grads_bad": bad[:6]}


def main():
    specs = json.load(sys.stdin)
    for spec in specs:
        print("START " + spec["id"], flush=True)
        print("RESULT " + json.dumps(run_case(spec)), flush=True)


if __name__ == "__main__":
    main()
