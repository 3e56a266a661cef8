"""The Triton implementation of one layer (one direction), on CUDA tensors (or CPU tensors under
Triton's interpreter): ``forward_saving`` / ``backward_saved`` for the op layer's autograd Function
and custom ops, ``forward_inference`` without autograd.

Forward: the input projection of all steps as one GEMM, then one persistent kernel launch for
the recurrence (:func:`lstm_fast.kernels.lstm_fwd`: hidden-split or batch-tiled, as the dispatcher
picks). Backward: one persistent launch for the gate gradients and ``dh`` through time
(:func:`lstm_fast.kernels.lstm_bwd`), then the weight and input gradients as one GEMM each over
all steps. The GEMMs run in the precision cuDNN uses: 16-bit operands for 16-bit layers (cuBLAS),
TF32 for float32 layers whose recurrence is TF32 (our :func:`lstm_fast.kernels.matmul`), exact
otherwise. Accumulation and state are float32 (float64 for float64 inputs); outputs are in the
input dtype.
"""
import torch

from .layer_math import final_hidden, padding_mask, summed_bias


def tf32_gemms(x):
    """Whether this layer's float32 GEMMs run in TF32 on our kernel (:func:`lstm_fast.kernels.matmul`):
    float32 CUDA tensors whose recurrent dots are TF32, i.e. when cuDNN's LSTM would use TF32."""
    if x.dtype != torch.float32 or x.device.type != "cuda":
        return False
    from .kernels.lstm_config import dot_precision
    return dot_precision(torch.float32, "cuda") == "tf32"


def _mm(a, b, tf32):
    """``a @ b``: TF32 on our GEMM where cuDNN would use TF32, cuBLAS (torch) otherwise."""
    if tf32:
        from .kernels import matmul
        return matmul(a, b, "tf32")
    return a @ b


def _input_projection(x, w_ih, b_ih, b_hh):
    T, B, D = x.shape
    bias = summed_bias(b_ih, b_hh)
    x2 = x.reshape(T * B, D)
    if tf32_gemms(x):
        xg = _mm(x2, w_ih.t(), True)
        return (xg if bias is None else xg.add_(bias)).view(T, B, -1)
    xg = torch.addmm(bias, x2, w_ih.t()) if bias is not None else x2 @ w_ih.t()
    return xg.view(T, B, -1)


def _freeze_finished_rows(xg, lengths):
    """Variable lengths without touching the kernels: at steps t >= lengths[b], row b's forget
    pre-activation is +inf, its input and output pre-activations -inf and its candidate 0, so
    F = 1, I = 0, O = 0 and C_tilda = 0 exactly. The cell state is carried unchanged, the output is
    0, and in the backward the same saved gates make every gate gradient 0 and carry dc through.
    Every value written here is finite or an exact saturation (x itself arrives with its padding
    zeroed by the op layer, :func:`lstm_fast.ops.functional.lstm_layer`)."""
    T, B, G4 = xg.shape
    H = G4 // 4
    finished = padding_mask(lengths, T, xg.device)
    xg[:, :, :H].masked_fill_(finished, float("-inf"))          # I
    xg[:, :, H: 2 * H].masked_fill_(finished, float("inf"))     # F
    xg[:, :, 2 * H: 3 * H].masked_fill_(finished, 0.0)          # C_tilda
    xg[:, :, 3 * H:].masked_fill_(finished, float("-inf"))      # O
    return xg


def _gemm_dtype(x, acc):
    """Operand dtype of the input/weight-gradient GEMMs: 16-bit operands stay 16-bit (fp32
    accumulation inside cuBLAS, as cuDNN does), float32/float64 in the accumulation dtype."""
    return x.dtype if x.dtype in (torch.float16, torch.bfloat16) else acc


def forward_saving(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths=None):
    """Forward that keeps what the backward needs: (Y, h_n, c_n, (G, C)); C has T+1 rows.
    ``lengths``: per-row lengths (finished rows frozen, output 0; see _freeze_finished_rows)."""
    from .kernels import lstm_fwd

    xg = _input_projection(x, w_ih, b_ih, b_hh)
    if lengths is not None:
        xg = _freeze_finished_rows(xg, lengths)
    Y, C, G = lstm_fwd(xg, h0, c0, w_hh, save_gates=True)
    return Y, final_hidden(Y, h0, lengths), C[-1].to(x.dtype, copy=True), (G, C)


def backward_saved(dY, dh_n, dc_n, x, h0, c0, w_ih, w_hh, Y, saved, needs, lengths=None):
    """Gradients (dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh) from :func:`forward_saving`'s tensors."""
    from .kernels import lstm_bwd

    G, C = saved
    n = needs
    dh_direct = None
    if lengths is not None and dh_n is not None:
        # h_n is the output at each row's last step, so its gradient enters there (past it the
        # frozen rows' dh is 0); rows of length 0 pass it straight to h_0.
        lengths = lengths.to(x.device)
        T, B = x.shape[:2]
        dY = torch.zeros(T, B, dh_n.shape[1], dtype=dh_n.dtype, device=x.device) if dY is None else dY.clone()
        ran = (lengths > 0).unsqueeze(1)
        dY[(lengths - 1).clamp(min=0), torch.arange(B, device=x.device)] += torch.where(ran, dh_n, 0)
        dh_direct, dh_n = torch.where(ran, 0, dh_n), None
    DG, dh0, dc0 = lstm_bwd(dY, dh_n, dc_n, w_hh, G, C)
    if dh_direct is not None:
        dh0 = dh0 + dh_direct.to(dh0.dtype)
    T, B, D = x.shape
    acc = DG.dtype
    gd = _gemm_dtype(x, acc)
    tf32 = tf32_gemms(x)
    dG2 = DG.view(T * B, -1).to(gd)
    dx = dw_ih = dw_hh = db = None
    if n[0]:
        dx = _mm(dG2, w_ih.to(gd), tf32).view(T, B, D).to(x.dtype)
    if n[3]:
        dw_ih = _mm(dG2.t(), x.reshape(T * B, D).to(gd), tf32).to(w_ih.dtype)
    if n[4]:
        h_prev = torch.cat((h0.unsqueeze(0), Y[:-1]), 0) if T > 1 else h0.unsqueeze(0)
        dw_hh = _mm(dG2.t(), h_prev.reshape(T * B, -1).to(gd), tf32).to(w_hh.dtype)
    if n[5] or n[6]:
        db = DG.view(T * B, -1).sum(0).to(w_hh.dtype)
    return (dx, dh0.to(h0.dtype) if n[1] else None, dc0.to(x.dtype) if n[2] else None,
            dw_ih, dw_hh, db if n[5] else None, (db.clone() if n[5] else db) if n[6] else None)


def forward_inference(x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, lengths=None):
    """One layer without autograd (saves nothing): (Y, (h_n, c_n)). ``lengths``: per-row lengths
    masked in the kernels, or None."""
    from .kernels import lstm_fwd

    xg = _input_projection(x, w_ih, b_ih, b_hh)
    if lengths is not None:
        xg = _freeze_finished_rows(xg, lengths)
    Y, C, _ = lstm_fwd(xg, h0, c0, w_hh, save_gates=False)
    return Y, (final_hidden(Y, h0, lengths), C[-1].to(x.dtype))


def saved_like(x, w_hh):
    """Shapes and dtypes of what :func:`forward_saving` saves, (G, C): float32 (float64 for float64)
    gates and T + 1 cell states (the compile-time fake's answer)."""
    T, B, _ = x.shape
    H = w_hh.shape[0] // 4
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    return ((T, B, 4 * H), acc), ((T + 1, B, H), acc)
