"""The CPU implementation of one LSTM layer: a hand-written forward and backward through time.

float32 layers on CPUs with AVX-512 or AVX2 + FMA run on the whole-sequence kernels of
:mod:`lstm_fast.cpu.sequence` instead (:func:`lstm_fast.ops.plan.plan_layer` chooses); this module serves float64
(gradcheck), CPUs with neither and installs without a C compiler.

Shapes: T steps, B batch, D input, H hidden. Gates i, f, g, o as in ``nn.LSTM`` (d2l: I, F, C_tilda, O).

Why hand-written instead of autograd over per-step ops: autograd would record ~10 nodes per step and,
in the backward, run one small weight-gradient GEMM per step. Here

* the input projection of all steps is one GEMM (``X @ W_ih^T + b`` for T*B rows);
* each forward step is one GEMM accumulated in place into a preallocated gates buffer, then the cell
  update in a handful of in-place passes;
* each backward step is the recurrent GEMM ``dh_{t-1} = dgates_t @ W_hh`` plus four elementwise
  passes: every factor that does not depend on the incoming gradient (sigmoid/tanh derivatives,
  tanh(c_t), ...) is computed for all steps at once, vectorised, before the loop;
* the weight gradients are one large GEMM each after the loop.

Internally the gate rows are reordered from nn.LSTM's (i, f, g, o) to (o, i, f, g): the three sigmoid
gates are then one contiguous slice (one ``sigmoid_``), and the three gates whose gradient is a
multiple of dc (i, f, g) are one contiguous slice too (one multiply in the backward).

For float32 the elementwise part of each step is one pass of a small C function (the optional
extension ``lstm_fast.cpu._cell_kernel``, built from ``cell_kernel.c``): in eager PyTorch it would be ~8
ops of 3-14 us each per step. float64 (gradcheck) and installs without the extension run the same
algorithm as torch ops. Saved for the backward: the activated gates (T, B, 4H), the cell states
(T, B, H), the outputs, the inputs and the weights; nothing else.
"""
import torch

from . import workspace
from .matmul import RecurrentMatmul, linear, matmul_tn, transpose_for_weight_grads
from ..layer_math import summed_bias

try:
    from . import _cell_kernel
except ImportError:  # built without a C compiler: the torch-ops cell below is used
    _cell_kernel = None


def available_for(x, w_hh) -> bool:
    """Whether this layer can run here: float32 or float64 CPU tensors (any batch, 0 included)."""
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)


def uses_fused_cell(x: torch.Tensor) -> bool:
    """Whether a layer on ``x`` (T, B, D) runs its cell update in the C extension."""
    return _cell_kernel is not None and x.dtype == torch.float32 and x.device.type == "cpu" and x.shape[1] > 0


def to_internal_order(w: torch.Tensor, hidden_size: int, dim: int = 0) -> torch.Tensor:
    """Rows (or elements; along ``dim``) in nn.LSTM gate order (i, f, g, o) -> internal order (o, i, f, g)."""
    i, f, g, o = w.split(hidden_size, dim)
    return torch.cat((o, i, f, g), dim)


def from_internal_order(w: torch.Tensor, hidden_size: int, dim: int = 0) -> torch.Tensor:
    """Inverse of :func:`to_internal_order`."""
    o, i, f, g = w.split(hidden_size, dim)
    return torch.cat((i, f, g, o), dim)


def lstm_forward_cpu(x, h0, c0, w_ih, w_hh, bias, save=True, recurrent=None):
    """Run the recurrence. ``w_ih``, ``w_hh`` and ``bias`` are already in internal gate order;
    ``w_ih`` None: ``x`` (T, B, 4H) is the input projection, in internal order too (no input GEMM);
    ``recurrent``: a prepared RecurrentMatmul for ``w_hh``, or None to prepare one here.

    Returns (Y, G, C): outputs h_t (T, B, H), activated gates (T, B, 4H) in internal order and
    cell states c_t (T, B, H). With ``save=False`` (inference) G is None and C holds only c_T.
    """
    T, B, D = x.shape
    H = w_hh.shape[0] // 4
    if w_ih is None:     # the projection given (contiguous): X W_x + b is x + b
        XG = x.contiguous() if bias is None else torch.add(x, bias, out=workspace.empty(tuple(x.shape), x.dtype))
    else:
        XG = linear(x.reshape(T * B, D), w_ih, bias).view(T, B, 4 * H)   # X W_x + b, all steps
    Y = workspace.empty((T, B, H), x.dtype)
    recurrent = recurrent or RecurrentMatmul(w_hh, B)
    if uses_fused_cell(x):
        return _forward_fused_cell(XG, h0.contiguous(), c0.contiguous(), recurrent, Y, save)
    C = torch.empty(T, B, H, dtype=x.dtype, device=x.device) if save else None
    gates = []
    h, c = h0, c0
    for t in range(T):
        g = recurrent(h, XG[t])                  # gate pre-activations: X W_x + H W_h + b
        g[:, : 3 * H].sigmoid_()                 # O, I, F
        g[:, 3 * H:].tanh_()                     # C_tilda
        ct = torch.mul(g[:, 2 * H: 3 * H], c, out=C[t] if save else None)
        ct.addcmul_(g[:, H: 2 * H], g[:, 3 * H:])          # C = F * C + I * C_tilda
        ht = torch.tanh(ct, out=Y[t])
        ht.mul_(g[:, :H])                                  # H = O * tanh(C)
        h, c = ht, ct
        if save:
            gates.append(g)
    G = torch.stack(gates) if save else None
    return Y, G, (C if save else c.unsqueeze(0))


def _forward_fused_cell(XG, h0, c0, recurrent, Y, save):
    """The recurrence with the C cell: per step one GEMM, then one pass for gates, c and h. The
    cell's operands are addressed by pointer arithmetic (float32, contiguous): indexing them as
    tensors cost ~3 us per index, ~5 per step."""
    T, B, G4 = XG.shape
    H = G4 // 4
    G = workspace.empty((T, B, G4), XG.dtype) if save else None
    C = workspace.empty((T if save else 2, B, H), XG.dtype)
    scratch = None if save else torch.empty(B, G4, dtype=XG.dtype)   # activations, not kept
    sg, sh = B * G4 * 4, B * H * 4      # bytes per step of (B, 4H) and (B, H) float32
    pxg, py, pc = XG.data_ptr(), Y.data_ptr(), C.data_ptr()
    pg = G.data_ptr() if save else scratch.data_ptr()
    h, cp, last = h0, c0.data_ptr(), None
    for t in range(T):
        rec = recurrent.mm(h)                                   # H W_h for all four gates
        last = t if save else t % 2
        _cell_kernel.forward(rec.data_ptr(), pxg + t * sg, pg + t * sg if save else pg, cp,
                             pc + last * sh, py + t * sh, B, H)
        h, cp = Y[t], pc + last * sh
    c = c0 if last is None else C[last]
    return Y, G, (C if save else c.unsqueeze(0))


def _backward_fused_cell(dY, dh_n, dc_n, c0, w_hh, G, C, want_dh0):
    """Backward through time with the C cell; returns (dG (T, B, 4H), dh0 or None, dc0)."""
    T, B, H = C.shape
    dG = workspace.empty((T, B, 4 * H), G.dtype)
    dY = workspace.zeros((T, B, H), G.dtype) if dY is None else dY.contiguous()
    dc = torch.zeros(B, H, dtype=G.dtype) if dc_n is None else dc_n.contiguous().clone()
    dh_n = None if dh_n is None else dh_n.contiguous()
    c0 = c0.contiguous()
    sg, sh = B * 4 * H * 4, B * H * 4   # bytes per step, float32
    pg, pc, pdg, pdy = G.data_ptr(), C.data_ptr(), dG.data_ptr(), dY.data_ptr()
    dh_a, dh_b = pdy + (T - 1) * sh, (None if dh_n is None else dh_n.data_ptr())
    recurrent = RecurrentMatmul(w_hh.t(), B)
    dh0 = rec = None
    for t in range(T - 1, -1, -1):
        c_prev = pc + (t - 1) * sh if t > 0 else c0.data_ptr()
        _cell_kernel.backward(dh_a, dh_b, dc.data_ptr(), pg + t * sg, pc + t * sh, c_prev, pdg + t * sg, B, H)
        if t > 0:   # dh_{t-1} = dgates_t W_hh + dY_{t-1} (rec stays referenced until the cell has read it)
            rec = recurrent.mm(dG[t])
            dh_a, dh_b = rec.data_ptr(), pdy + (t - 1) * sh
        elif want_dh0:
            dh0 = linear(dG[0], w_hh.t())
    return dG, dh0, dc


def lstm_backward_cpu(dY, dh_n, dc_n, x, h0, c0, w_ih, w_hh, Y, G, C, needs):
    """Backward through time. ``needs`` = (x, h0, c0, w_ih, w_hh, bias) booleans.

    Returns gradients (dx, dh0, dc0, dw_ih, dw_hh, dbias), weights/bias in internal order, None
    where not needed.
    """
    T, B, H = C.shape
    D = x.shape[2]
    if uses_fused_cell(x):
        dG, dh0, dc = _backward_fused_cell(dY, dh_n, dc_n, c0, w_hh, G, C, needs[1])
    else:
        dG, dh0, dc = _backward_torch_ops(dY, dh_n, dc_n, c0, w_hh, G, C, needs[1])
    dG2 = dG.view(T * B, 4 * H)
    dx = dw_ih = dw_hh = db = None
    if needs[0]:    # w_ih None: x was the projection, its gradient is dG
        dx = dG if w_ih is None else linear(dG2, w_ih.t()).view(T, B, D)
    # The three weight-side gradients sum over all T*B rows; transpose dG once for all of them.
    dGT = transpose_for_weight_grads(dG2) if needs[3] or needs[4] or needs[5] else None
    if needs[3] and w_ih is not None:
        dw_ih = matmul_tn(dG2, x.reshape(T * B, D), a_t=dGT)
    if needs[4]:
        H_prev = workspace.empty((T, B, h0.shape[1]), h0.dtype)    # [h_0; Y[:-1]]
        H_prev[0] = h0
        if T > 1:
            H_prev[1:] = Y[:-1]
        dw_hh = matmul_tn(dG2, H_prev.reshape(T * B, h0.shape[1]), a_t=dGT)
    if needs[5]:
        db = dGT.sum(1) if dGT is not None and dGT.is_contiguous() else dG2.sum(0)
    return dx, dh0, (dc if needs[2] else None), dw_ih, dw_hh, db


def _backward_torch_ops(dY, dh_n, dc_n, c0, w_hh, G, C, want_dh0):
    """Backward through time as torch ops; returns (dG (T, B, 4H), dh0 or None, dc0)."""
    T, B, H = C.shape
    o, i, f, g = G[..., :H], G[..., H: 2 * H], G[..., 2 * H: 3 * H], G[..., 3 * H:]
    # Factors that do not depend on the incoming gradient, for all steps at once.
    TC = torch.tanh(C)
    K = o * (1 - TC * TC)                    # d c_t / d h_t (through H = O * tanh(C))
    M = TC * o * (1 - o)                     # d o-preactivation / d h_t
    C_prev = torch.cat((c0.unsqueeze(0), C[:-1]), 0) if T > 1 else c0.unsqueeze(0)
    P = torch.empty(T, B, 3, H, dtype=G.dtype, device=G.device)
    torch.mul(g, i * (1 - i), out=P[:, :, 0])            # d i-preact / d c_t
    torch.mul(C_prev, f * (1 - f), out=P[:, :, 1])       # d f-preact / d c_t
    torch.mul(i, 1 - g * g, out=P[:, :, 2])              # d g-preact / d c_t
    del TC, C_prev

    dG = torch.empty(T, B, 4 * H, dtype=G.dtype, device=G.device)
    if dY is None:
        dY = torch.zeros(T, B, H, dtype=G.dtype, device=G.device)
    else:
        dY = dY.contiguous()
    dh = dY[T - 1] if dh_n is None else dY[T - 1] + dh_n
    dc = torch.zeros_like(c0) if dc_n is None else dc_n
    recurrent = RecurrentMatmul(w_hh.t(), B)     # dh_{t-1} = dgates_t @ W_hh + dY_{t-1}
    dh0 = None
    for t in range(T - 1, -1, -1):
        dct = torch.addcmul(dc, dh, K[t])
        torch.mul(dh, M[t], out=dG[t, :, :H])
        torch.mul(dct.unsqueeze(1), P[t], out=dG[t, :, H:].view(B, 3, H))
        dc = dct.mul_(f[t])
        if t > 0:
            dh = recurrent(dG[t], dY[t - 1])
        elif want_dh0:
            dh0 = linear(dG[0], w_hh.t())
    return dG, dh0, dc


def _internal_operands(x, w_ih, H):
    """x and W_ih with the gate rows in internal order; ``w_ih`` None: x (T, B, 4H) is the input
    projection (``fused_lstm(..., input_projection=True)``), its gate columns reordered instead."""
    if w_ih is None:
        return to_internal_order(x, H, dim=2), None
    return x, to_internal_order(w_ih, H)


def forward_saving(x, h0, c0, w_ih, w_hh, b_ih, b_hh):
    """Forward that keeps what the backward needs: (Y, h_n, c_n, (G, C)), G in internal order.
    ``w_ih`` None: x is the input projection (T, B, 4H), taken natively (no input GEMM)."""
    H = w_hh.shape[0] // 4
    x, wi = _internal_operands(x, w_ih, H)
    Y, G, C = lstm_forward_cpu(x, h0, c0, wi, to_internal_order(w_hh, H), _combined_bias(b_ih, b_hh, H))
    return Y, Y[-1].clone(), C[-1].clone(), (G, C)


def backward_saved(dY, dh_n, dc_n, x, h0, c0, w_ih, w_hh, Y, saved, needs):
    """Gradients (dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh) from :func:`forward_saving`'s tensors
    (``w_ih`` None: dx is the projection's gradient, the gate gradients, and there is no dW_ih)."""
    G, C = saved
    n = needs
    H = C.shape[2]
    wi, wh = (None if w_ih is None else to_internal_order(w_ih, H)), to_internal_order(w_hh, H)
    dx, dh0, dc0, dwi, dwh, db = lstm_backward_cpu(dY, dh_n, dc_n, x, h0, c0, wi, wh, Y, G, C,
                                                   (n[0], n[1], n[2], n[3], n[4], n[5] or n[6]))
    if w_ih is None and dx is not None:
        dx = from_internal_order(dx, H, dim=2)
    dwi = from_internal_order(dwi, H) if dwi is not None else None
    dwh = from_internal_order(dwh, H) if dwh is not None else None
    db = from_internal_order(db, H) if db is not None else None
    return (dx, dh0, dc0, dwi, dwh, db if n[5] else None, (db.clone() if n[5] else db) if n[6] else None)


def _combined_bias(b_ih, b_hh, H):
    b = summed_bias(b_ih, b_hh)
    return None if b is None else to_internal_order(b, H)


def forward_inference(x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None):
    """One layer without autograd (saves nothing): (Y, (h_n, c_n)). No per-row lengths: the op
    layer runs a padded batch here in segments between distinct lengths."""
    H = w_hh.shape[0] // 4
    # Weights are reordered on every call, never cached (see sequence.prepare for why).
    x, wi = _internal_operands(x, w_ih, H)
    Y, _, C = lstm_forward_cpu(x, h0, c0, wi, to_internal_order(w_hh, H), _combined_bias(b_ih, b_hh, H),
                               save=False)
    return Y, (Y[-1].clone(), C[-1].clone())


def saved_like(x, w_hh):
    """Shapes and dtypes of what :func:`forward_saving` saves, (G, C) (the compile-time fake's answer)."""
    T, B, _ = x.shape
    H = w_hh.shape[0] // 4
    return ((T, B, 4 * H), x.dtype), ((T, B, H), x.dtype)
