"""The CPU implementation of one LSTM layer: a hand-written forward and backward through time.

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

The code uses only tensor ops, so it also runs on other devices, but it is tuned for, and
dispatched on, the CPU. Saved for the backward: the activated gates (T, B, 4H), the cell states
(T, B, H), the outputs, the inputs and the weights; nothing else.
"""
import torch

from .cpu_matmul import RecurrentMatmul, linear, matmul_tn


def to_internal_order(w: torch.Tensor, hidden_size: int) -> torch.Tensor:
    """Rows (or elements) in nn.LSTM gate order (i, f, g, o) -> internal order (o, i, f, g)."""
    i, f, g, o = w.split(hidden_size, 0)
    return torch.cat((o, i, f, g), 0)


def from_internal_order(w: torch.Tensor, hidden_size: int) -> torch.Tensor:
    """Inverse of :func:`to_internal_order`."""
    o, i, f, g = w.split(hidden_size, 0)
    return torch.cat((i, f, g, o), 0)


def lstm_forward_cpu(x, h0, c0, w_ih, w_hh, bias, save=True):
    """Run the recurrence. ``w_ih``, ``w_hh`` and ``bias`` are already in internal gate order.

    Returns (Y, G, C): outputs h_t (T, B, H), activated gates (T, B, 4H) in internal order and
    cell states c_t (T, B, H). With ``save=False`` (inference) G is None and C holds only c_T.
    """
    T, B, D = x.shape
    H = w_hh.shape[0] // 4
    XG = linear(x.reshape(T * B, D), w_ih, bias).view(T, B, 4 * H)   # X W_x + b, all steps
    Y = torch.empty(T, B, H, dtype=x.dtype, device=x.device)
    C = torch.empty(T if save else 1, B, H, dtype=x.dtype, device=x.device)
    recurrent = RecurrentMatmul(w_hh, B)
    gates = []
    h, c = h0, c0
    for t in range(T):
        g = recurrent(h, XG[t])                  # gate pre-activations: X W_x + H W_h + b
        g[:, : 3 * H].sigmoid_()                 # O, I, F
        g[:, 3 * H:].tanh_()                     # C_tilda
        ct = torch.mul(g[:, 2 * H: 3 * H], c, out=C[t if save else 0] if save or t == T - 1 else None)
        ct.addcmul_(g[:, H: 2 * H], g[:, 3 * H:])          # C = F * C + I * C_tilda
        ht = torch.tanh(ct, out=Y[t])
        ht.mul_(g[:, :H])                                  # H = O * tanh(C)
        h, c = ht, ct
        if save:
            gates.append(g)
    G = torch.stack(gates) if save else None
    return Y, G, C


def lstm_backward_cpu(dY, dh_n, dc_n, x, h0, c0, w_ih, w_hh, Y, G, C, needs):
    """Backward through time. ``needs`` = (x, h0, c0, w_ih, w_hh, bias) booleans.

    Returns gradients (dx, dh0, dc0, dw_ih, dw_hh, dbias), weights/bias in internal order, None
    where not needed.
    """
    T, B, H = C.shape
    D = x.shape[2]
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
        elif needs[1]:
            dh0 = linear(dG[0], w_hh.t())
    dG2 = dG.view(T * B, 4 * H)
    dx = dw_ih = dw_hh = db = None
    if needs[0]:
        dx = linear(dG2, w_ih.t()).view(T, B, D)
    if needs[3]:
        dw_ih = matmul_tn(dG2, x.reshape(T * B, D))
    if needs[4]:
        H_prev = torch.cat((h0.unsqueeze(0), Y[:-1]), 0) if T > 1 else h0.unsqueeze(0)
        dw_hh = matmul_tn(dG2, H_prev.reshape(T * B, h0.shape[1]))
    if needs[5]:
        db = dG2.sum(0)
    return dx, dh0, (dc if needs[2] else None), dw_ih, dw_hh, db


class CpuLSTMFunction(torch.autograd.Function):
    """Autograd wrapper: (x, h0, c0, w_ih, w_hh, b_ih, b_hh) -> (Y, h_n, c_n), nn.LSTM gate order."""

    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh):
        H = w_hh.shape[0] // 4
        wi, wh = to_internal_order(w_ih, H), to_internal_order(w_hh, H)
        bias = _combined_bias(b_ih, b_hh, H)
        Y, G, C = lstm_forward_cpu(x, h0, c0, wi, wh, bias)
        ctx.save_for_backward(x, h0, c0, wi, wh, Y, G, C)
        ctx.bias_flags = (b_ih is not None, b_hh is not None)
        return Y, Y[-1].clone(), C[-1].clone()

    @staticmethod
    def backward(ctx, dY, dh_n, dc_n):
        x, h0, c0, wi, wh, Y, G, C = ctx.saved_tensors
        n = ctx.needs_input_grad
        H = C.shape[2]
        needs = (n[0], n[1], n[2], n[3], n[4], n[5] or n[6])
        dx, dh0, dc0, dwi, dwh, db = lstm_backward_cpu(dY, dh_n, dc_n, x, h0, c0, wi, wh, Y, G, C, needs)
        dwi = from_internal_order(dwi, H) if dwi is not None else None
        dwh = from_internal_order(dwh, H) if dwh is not None else None
        db = from_internal_order(db, H) if db is not None else None
        return (dx, dh0, dc0, dwi, dwh,
                db if n[5] else None, db if n[6] else None)


def _combined_bias(b_ih, b_hh, H):
    if b_ih is None and b_hh is None:
        return None
    b = b_ih if b_hh is None else (b_hh if b_ih is None else b_ih + b_hh)
    return to_internal_order(b, H)


def lstm_cpu(x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None):
    """One layer, one direction, on the CPU implementation. Inputs are trusted (see fused_lstm).

    Without autograd (inference, or nothing requires grad) the recurrence runs directly, saving
    nothing; otherwise through :class:`CpuLSTMFunction`.
    """
    tensors = (x, h0, c0, w_ih, w_hh, b_ih, b_hh)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        Y, h_n, c_n = CpuLSTMFunction.apply(*tensors)
        return Y, (h_n, c_n)
    H = w_hh.shape[0] // 4
    Y, _, C = lstm_forward_cpu(x, h0, c0, to_internal_order(w_ih, H), to_internal_order(w_hh, H),
                               _combined_bias(b_ih, b_hh, H), save=False)
    return Y, (Y[-1].clone(), C[-1].clone())
