"""The float32 CPU path on the whole-sequence kernels: ``sequence_kernels.c`` (AVX-512), or
``sequence_avx2_kernels.c`` on CPUs with AVX2 + FMA and no AVX-512 (the same algorithm on 8-lane tiles).

Shapes: T steps, B batch, D input, H hidden; gates in nn.LSTM's order i, f, g, o.

Forward: one C call walks all T steps; per step a register-blocked GEMM computes
``x_t W_ih^T + h_{t-1} W_hh^T`` for a tile of rows and 16 hidden units of all four gates (weights
packed once per call into contiguous panels), and the LSTM cell runs in its epilogue. Backward:
one C call walks T in reverse (gate gradients and the bias gradient, then
``dh_{t-1} = dgates_t W_hh``), then the weight gradients come from one packed GEMM (``weight_gradient_gemm.h``), and ``dx`` from one oneDNN GEMM. Threads are torch's own OpenMP
pool. Large per-call buffers come from :mod:`lstm_fast.cpu.workspace` (no page faults).
Saved for the backward: the activated gates (T, B, 4H), cell states (T, B, H), outputs, inputs,
weights.

Input projection (skip-input mode, ``w_ih`` None): ``x`` is then (T, B, 4H), already
``x_t W_ih^T`` (without b_ih; the biases are added as usual). The kernel adds it to the gate tile
in the cell epilogue and runs no input GEMM (D = 0); its gradient is the gate gradients dG
themselves, so the backward skips the ``dx`` GEMM and ``dW_ih`` too.
"""
import torch

from . import kernel_isa, workspace
from .matmul import linear
from .weight_gradient import available as weight_gradients_available, weight_gradients
from ..layer_math import final_hidden, padding_mask, summed_bias


#: The kernel module this CPU runs: ``_sequence_kernels`` (AVX-512) or ``_sequence_avx2_kernels``
#: (AVX2 + FMA: same entry points, its own panel shapes), or None (the stepwise route runs).
_sequence_kernels, ISA = kernel_isa.load("_sequence_kernels", "_sequence_avx2_kernels")


def available_for(x: torch.Tensor, w_hh: torch.Tensor) -> bool:
    """Whether this layer can run here: float32 CPU tensors, a non-empty batch, W_hh (4H, H)."""
    return (_sequence_kernels is not None and weight_gradients_available() and x.dtype == torch.float32
            and x.device.type == "cpu" and x.shape[1] > 0 and w_hh.shape[1] * 4 == w_hh.shape[0])


def _check_float32(*tensors):
    """The kernels read and write float32 through raw pointers: any other dtype (a caller that
    skipped the plan's upcast) would be read as garbage and overrun its buffers, so it is an error."""
    for t in tensors:
        if t.dtype != torch.float32 or not t.is_cpu:
            raise RuntimeError(f"cpu_sequence: float32 CPU tensors only, got {t.dtype} on {t.device}")


def pack_panels(w):
    """W (4H, K) in nn.LSTM layout -> forward panels (ceil(H/U), K, 4U), U the module's
    FWD_PANEL_UNITS (16 AVX-512, 4 AVX2): panel j, row k holds gates i, f, g, o of hidden units
    j*U.. for input k, zero padded past H (one C pass)."""
    G4, K = w.shape
    H = G4 // 4
    U = _sequence_kernels.FWD_PANEL_UNITS
    _check_float32(w)
    w = w.contiguous()
    P = workspace.empty(((H + U - 1) // U, K, 4 * U), w.dtype)
    _sequence_kernels.pack_panels(w.data_ptr(), H, K, P.data_ptr())
    return P


def pack_backward_panels(w_hh):
    """W_hh (4H, H) -> backward panels (ceil(H/N), 4H, N), N the module's BWD_PANEL_COLS (64
    AVX-512, 16 AVX2): column blocks of every row."""
    G4, H = w_hh.shape
    N = _sequence_kernels.BWD_PANEL_COLS
    _check_float32(w_hh)
    w_hh = w_hh.contiguous()
    Q = workspace.empty(((H + N - 1) // N, G4, N), w_hh.dtype)
    _sequence_kernels.pack_backward_panels(w_hh.data_ptr(), H, G4, Q.data_ptr())
    return Q


def check_projection(xg, w_hh):
    """The precomputed input projection as the kernel reads it: a contiguous float32 CPU
    (T, B, 4H) tensor (every shape, dtype and device checked here, before the C call)."""
    G4 = w_hh.shape[0]
    if xg.dim() != 3 or xg.shape[2] != G4 or xg.dtype != torch.float32 or xg.device.type != "cpu":
        raise RuntimeError(f"cpu_sequence: the input projection must be a float32 CPU (T, B, {G4}) tensor, "
                           f"got {xg.dtype} {tuple(xg.shape)} on {xg.device}")
    return xg.contiguous()


def prepare(w_ih, w_hh, b_ih, b_hh):
    """What the forward kernel reads: the panels of W_ih and W_hh, and the summed bias.

    Prepared on every call, never cached: a cache cannot see every way PyTorch lets a user change
    a parameter (``p.data`` writes do not bump ``_version``). At the d2l inference shape the cache
    saved ~10% of a call (2.73 vs 3.06 ms on a loaded 2-core host) with the scalar pack; the
    pack is now a register transpose (2.5x faster) into pooled buffers (no page faults)."""
    bias = summed_bias(b_ih, b_hh)
    ph = pack_panels(w_hh)
    px = ph if w_ih is None else pack_panels(w_ih)    # w_ih None: projection given, Px never read (D = 0)
    return px, ph, None if bias is None else bias.contiguous()


def forward(x, h0, c0, prepared, save, lengths=None, projected=False):
    """Run the recurrence. Returns (Y (T, B, H), G (T, B, 4H) or None, C (T, B, H) or c_T (1, B, H)).
    ``lengths`` (B,) int64: from step lengths[b] on, row b's state is frozen and its output 0.
    ``projected``: x is the (T, B, 4H) input projection (no input GEMM runs)."""
    T, B, D = x.shape
    px, ph, bias = prepared
    H = ph.shape[1]
    _check_float32(x, h0, c0, *(() if bias is None else (bias,)))   # the panels: pack_panels checked W
    x, h0, c0 = x.contiguous(), h0.contiguous(), c0.contiguous()
    xg = None
    if projected:
        xg, D = x, 0
    Y = workspace.empty((T, B, H), x.dtype)
    G = workspace.empty((T, B, 4 * H), x.dtype) if save else None
    C = workspace.empty((T if save else 2, B, H), x.dtype)
    _sequence_kernels.forward_seq(x.data_ptr(), px.data_ptr(), None if bias is None else bias.data_ptr(), ph.data_ptr(),
                         h0.data_ptr(), c0.data_ptr(), Y.data_ptr(), C.data_ptr(),
                         None if G is None else G.data_ptr(), T, B, D, H, torch.get_num_threads(),
                         None if lengths is None else lengths.data_ptr(), None if xg is None else xg.data_ptr())
    return Y, G, (C if save else C[(T - 1) % 2].unsqueeze(0))


def forward_saving(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths=None):
    """Forward that keeps what the backward needs: (Y, h_n, c_n, (G, C))."""
    x = x if w_ih is not None else check_projection(x, w_hh)
    Y, G, C = forward(x, h0, c0, prepare(w_ih, w_hh, b_ih, b_hh), save=True, lengths=lengths,
                      projected=w_ih is None)
    return Y, final_hidden(Y, h0, lengths), C[-1].clone(), (G, C)


def backward_saved(dY, dh_n, dc_n, x, h0, c0, w_ih, w_hh, Y, saved, needs, lengths=None):
    """Gradients (dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh) from :func:`forward_saving`'s tensors;
    ``needs``: which of the seven are wanted (None for the others). ``w_ih`` None: x was the input
    projection and dx is dG (T, B, 4H)."""
    G, C = saved
    n = needs
    T, B, H = C.shape
    D = x.shape[2]
    _check_float32(G, C, c0, *(t for t in (dY, dh_n, dc_n) if t is not None))   # W_hh: pack_backward_panels
    nt = torch.get_num_threads()
    dG = workspace.empty((T, B, 4 * H), G.dtype)
    dY = workspace.zeros((T, B, H), G.dtype) if dY is None else dY.contiguous()
    DH = torch.zeros(B, H, dtype=G.dtype) if dh_n is None else dh_n.contiguous().clone()
    DC = torch.zeros(B, H, dtype=G.dtype) if dc_n is None else dc_n.contiguous().clone()
    db = torch.zeros(4 * H, dtype=G.dtype) if n[5] or n[6] else None
    panels, c0c = pack_backward_panels(w_hh), c0.contiguous()
    _sequence_kernels.backward_seq(dY.data_ptr(), panels.data_ptr(), G.data_ptr(), C.data_ptr(), c0c.data_ptr(),
                          dG.data_ptr(), DH.data_ptr(), DC.data_ptr(), None if db is None else db.data_ptr(),
                          T, B, H, nt, None if lengths is None else lengths.data_ptr())
    dG2 = dG.view(T * B, 4 * H)
    dx = dw_ih = dw_hh = None
    if w_ih is None:   # x was the input projection: its gradient is dG itself, and there is no dW_ih
        dx = dG if n[0] else None
    elif n[0]:
        dx = linear(dG2, w_ih.t()).view(T, B, D)
    if n[4] or (w_ih is not None and n[3]):   # one packed GEMM: [dW_ih | dW_hh] = dG^T [X | h_0; Y[:-1]] (weight_gradient_gemm.h)
        a1 = [h0.contiguous(), Y[:-1].contiguous().view((T - 1) * B, H)] if T > 1 else [h0.contiguous()]
        if w_ih is None:      # no X block: dW_hh = dG^T [h_0; Y[:-1]] alone
            dw_hh, _ = weight_gradients(dG2, a1, None, nt)
        else:
            if lengths is not None:   # dgates are 0 past each row's end, but 0 * NaN padding is NaN
                x = x.masked_fill(padding_mask(lengths, T, x.device), 0)
            dw_ih, dw_hh = weight_gradients(dG2, [x.contiguous().view(T * B, D)], a1, nt)
            dw_ih = dw_ih if n[3] else None
        dw_hh = dw_hh if n[4] else None
    return (dx, DH if n[1] else None, DC if n[2] else None, dw_ih, dw_hh,
            db if n[5] else None, (db.clone() if n[5] else db) if n[6] else None)


def forward_inference(x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, lengths=None):
    """One layer without autograd (saves nothing): (Y, (h_n, c_n)). ``lengths``: (B,) CPU int64
    per-row lengths (finished rows masked, not dropped), or None."""
    x = x if w_ih is not None else check_projection(x, w_hh)
    Y, _, C = forward(x, h0, c0, prepare(w_ih, w_hh, b_ih, b_hh), save=False, lengths=lengths,
                      projected=w_ih is None)
    return Y, (final_hidden(Y, h0, lengths), C[-1].clone())


def saved_like(x, w_hh):
    """Shapes and dtypes of what :func:`forward_saving` saves, (G, C): the compile-time fake's answer."""
    T, B, _ = x.shape
    H = w_hh.shape[0] // 4
    return ((T, B, 4 * H), x.dtype), ((T, B, H), x.dtype)
