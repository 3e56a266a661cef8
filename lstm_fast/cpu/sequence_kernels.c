/* Whole-sequence LSTM kernels for the CPU (float32, AVX-512): one call walks all T steps.
 *
 * Why: PyTorch's CPU LSTM is oneDNN's fused RNN primitive. Driving a step from Python (a oneDNN
 * GEMM call, then a cell pass) costs ~10 us of call overhead and leaves a core idle during the cell
 * each step; this file removes both. The recurrent GEMM is a register-blocked AVX-512 kernel over
 * weights packed once per call, the LSTM cell runs in its epilogue while the gate tile is still in
 * registers, and the threads are torch's own OpenMP pool (libgomp, found among the loaded
 * libraries), so nothing competes with torch's threads for the cores. Gate order is nn.LSTM's
 * (i, f, g, o); d2l names: I, F, C_tilda, O. Weights are read in their own layout or simply
 * transposed: no reordering or packing copies per call.
 *
 * forward_seq(X, Px, bias|None, Ph, h0, c0, Y, C, G|None, T, B, D, H, nthreads, len|None, XG|None)
 *   X (T, B, D) inputs; Px (nb16, D, 64) and Ph (nb16, H, 64) forward panels of W_ih and W_hh
 *   (pack_panels): panel j, row k holds gates i, f, g, o of units j*16..j*16+15 for input k, so a
 *   tile streams one contiguous block (reading W^T rows directly instead costs a TLB miss per
 *   gate per k: 2.4x slower at H=512). The input projection is accumulated into the same register
 *   tile as the recurrent product, so no (T, B, 4H) buffer is written; bias (4H) = b_ih + b_hh or
 *   None; h0, c0 (B, H);
 *   Y (T, B, H) outputs; C (T, B, H) cell states when G is given, else (2, B, H) scratch;
 *   G (T, B, 4H) activated gates (saved for the backward) or None;
 *   XG (T, B, 4H) a precomputed input projection x_t W_ih^T (the caller's, e.g. an embedding
 *   lookup), added to the gate tile in the cell epilogue, or None. With XG the caller passes
 *   D = 0: the input GEMM has no k steps, so X and Px are never read (skip-input mode).
 * backward_seq(dY, Wq, G, C, c0, dG, DH, DC, db|None, T, B, H, nthreads, len|None)
 *   dY (T, B, H); Wq (ceil(H/64), 4H, 64) backward panels of W_hh (pack_backward_panels: panel
 *   j holds columns j*64.. of every row, zero padded; reading W_hh in place was 25% slower);
 *   G, C as saved; dG (T, B, 4H) out; DH (B, H) in: dh_n (or zeros), out: dh_0; DC (B, H) in:
 *   dc_n (or zeros), out: dc_0; db (4H) zeros in, out: the bias gradient, summed in the cell
 *   phase (each thread owns its hidden blocks, so no races) instead of another pass over dG.
 *   len (B) int64 sequence lengths (variable-length batches at padded speed): from step len[b]
 *   on, row b's state is frozen and its output 0; in the backward its gate gradients are 0 and
 *   the dh, dc arriving from later steps pass through to step len[b] - 1 unchanged.
 * pack_panels(W, H, K, P)
 *   W (4H, K) as nn.LSTM stores it -> P (ceil(H/16), K, 64) forward panels, zero padded past H.
 * pack_backward_panels(W, H, K, Q)
 *   W_hh (K = 4H, H) -> Q (ceil(H/64), 4H, 64): 64-column panels, zero padded past H.
 * weight_grad(dG, N, R, A0p0, A0rows0, A0p1, M0, A1p0, A1rows0, A1p1, M1, out0, out1|None, scratch, nthreads)
 *   out0 (N, M0) = dG^T A0 and out1 (N, M1) = dG^T A1 over R rows, dG (R, N); each A part read in
 *   place from two row segments (weight_gradient_gemm.h: one packed GEMM for dW_ih and dW_hh).
 * weight_grad_scratch(N, M0 + M1, R, nthreads) -> the floats of scratch weight_grad needs.
 * available() -> bool: AVX-512 present (the caller falls back otherwise).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include "sequence_templates.h"
#include "weight_gradient_gemm.h"

#if LSTM_X86
/* The register tiles, workers and argument parsing of sequence_templates.h, on float32 operands. */
#define SEQ_TARGET AVX512
#define SEQ_T float

/* ---------------------------------------------------------------- forward */
DEFINE_F32_ARGS()

/* One k step of tile row r: a_r[k] (broadcast) times the 64 panel columns b0..b3. */
#define TILE_FMA(r)                                                                  \
    {                                                                                \
        __m512 x = _mm512_set1_ps(a##r[k]);                                          \
        c##r##0 = _mm512_fmadd_ps(x, b0, c##r##0);                                   \
        c##r##1 = _mm512_fmadd_ps(x, b1, c##r##1);                                   \
        c##r##2 = _mm512_fmadd_ps(x, b2, c##r##2);                                   \
        c##r##3 = _mm512_fmadd_ps(x, b3, c##r##3);                                   \
    }
/* The 6-row x 64-column register tile: rows a0..a5 (a zero row past the batch) times a panel of
 * 64 columns, K deep. Panel row k holds, forward, gates i, f, g, o of 16 units (64 floats) and,
 * backward, output units n0..n0+63 of W_hh row k. */
#define PANEL_K(K, P, FMAS)                                                          \
    for (int64_t k = 0; k < (K); ++k) {                                              \
        const float *wk = (P) + k * 64;                                              \
        __m512 b0 = _mm512_loadu_ps(wk), b1 = _mm512_loadu_ps(wk + 16);              \
        __m512 b2 = _mm512_loadu_ps(wk + 32), b3 = _mm512_loadu_ps(wk + 48);         \
        FMAS                                                                         \
    }
#define SEQ_FWD_GEMM(K, P, jb, FMAS) PANEL_K(K, (P) + (jb) * (K) * 64, FMAS)
#define SEQ_BWD_GEMM SEQ_FWD_GEMM
#define FMA4 TILE_FMA(0) TILE_FMA(1) TILE_FMA(2) TILE_FMA(3)
#define FMA6 FMA4 TILE_FMA(4) TILE_FMA(5)

/* The projection rows the tile's epilogue adds (4 gate blocks of 16 floats per row, 4H apart:
 * a stride no hardware prefetcher follows), requested before the tile's GEMM so the loads are
 * not a cache miss each at the end: at the d2l shape the epilogue's loads took the forward from
 * 4.73 ms (one-hot input GEMM) to 5.43 ms without this. */
#undef SEQ_FWD_PREFETCH
#define SEQ_FWD_PREFETCH(a, t, rb, n, j0)                                                             \
    if ((a)->XG) {                                                                                    \
        const float *xg = (a)->XG + ((t) * (a)->B + (rb)) * 4 * (a)->H + (j0);                        \
        for (int64_t r_ = 0; r_ < ((n) < 6 ? (n) : 6); ++r_)                                          \
            for (int q_ = 0; q_ < 4; ++q_) _mm_prefetch((const char *)(xg + r_ * 4 * (a)->H + q_ * (a)->H), _MM_HINT_T0); \
    }

/* The LSTM cell for one row and 16 hidden units, from that row's four gate accumulators. */
AVX512 INLINE void fwd_cell(const fwd_args *a, int64_t t, int64_t row, int64_t j0, __mmask16 m,
                            __m512 gi, __m512 gf, __m512 gg, __m512 go, const float *cp, float *c_out) {
    const int64_t H = a->H, G4 = 4 * H;
    ADD_GATE_BIAS(a->XG ? a->XG + (t * a->B + row) * G4 : NULL, j0, H, m, gi, gf, gg, go)
    ADD_GATE_BIAS(a->bias, j0, H, m, gi, gf, gg, go)
    __m512 I = v_sigmoid(gi), F = v_sigmoid(gf), Ct = v_tanh(gg), O = v_sigmoid(go);
    __m512 c_prev = _mm512_maskz_loadu_ps(m, cp + row * H + j0);
    __m512 c = _mm512_fmadd_ps(F, c_prev, _mm512_mul_ps(I, Ct));
    __m512 h = _mm512_mul_ps(O, v_tanh(c));
    if (a->len && t >= a->len[row]) {   /* finished row: state frozen, output 0 (padding) */
        c = c_prev;
        h = _mm512_setzero_ps();
    }
    _mm512_mask_storeu_ps(c_out + row * H + j0, m, c);
    _mm512_mask_storeu_ps(a->Y + (t * a->B + row) * H + j0, m, h);
    if (a->G) {
        float *g = a->G + (t * a->B + row) * G4 + j0;
        _mm512_mask_storeu_ps(g, m, I);
        _mm512_mask_storeu_ps(g + H, m, F);
        _mm512_mask_storeu_ps(g + 2 * H, m, Ct);
        _mm512_mask_storeu_ps(g + 3 * H, m, O);
    }
}

FWD_TILE(6, DECL6, FMA6)
FWD_TILE(4, DECL4, FMA4)
DEFINE_FWD_WORKER()

/* ---------------------------------------------------------------- backward */
/* Phase A: gate gradients of step t for units [j0, j0+16) of every row. */
AVX512 INLINE void bwd_cell(const bwd_args *a, int64_t t, int64_t jb) {
    const int64_t B = a->B, H = a->H, G4 = 4 * H, j0 = jb * 16;
    const __mmask16 m = tail_mask(j0, H);
    const __m512 one = _mm512_set1_ps(1.0f);
    __m512 sb0 = _mm512_setzero_ps(), sb1 = sb0, sb2 = sb0, sb3 = sb0;   /* bias gradient, this step */
    for (int64_t b = 0; b < B; ++b) {
        const int64_t o = b * H + j0;
        if (a->len && t >= a->len[b]) {   /* finished row: no gate gradients; dh, dc carried */
            float *d = a->dG + (t * B + b) * G4 + j0;
            for (int q = 0; q < 4; ++q) _mm512_mask_storeu_ps(d + q * H, m, _mm512_setzero_ps());
            continue;
        }
        const float *g = a->G + (t * B + b) * G4 + j0;
        __m512 dh = _mm512_add_ps(_mm512_maskz_loadu_ps(m, a->dY + t * B * H + o), _mm512_maskz_loadu_ps(m, a->DH + o));
        __m512 dc = _mm512_maskz_loadu_ps(m, a->DC + o);
        __m512 I = _mm512_maskz_loadu_ps(m, g), F = _mm512_maskz_loadu_ps(m, g + H);
        __m512 Ct = _mm512_maskz_loadu_ps(m, g + 2 * H), O = _mm512_maskz_loadu_ps(m, g + 3 * H);
        __m512 c = _mm512_maskz_loadu_ps(m, a->C + t * B * H + o);
        __m512 cp = _mm512_maskz_loadu_ps(m, t > 0 ? a->C + (t - 1) * B * H + o : a->c0 + o);
        __m512 tc = v_tanh(c);
        __m512 dct = _mm512_fmadd_ps(_mm512_mul_ps(dh, O), _mm512_fnmadd_ps(tc, tc, one), dc);
        float *d = a->dG + (t * B + b) * G4 + j0;
        _mm512_mask_storeu_ps(d, m, _mm512_mul_ps(_mm512_mul_ps(dct, Ct), _mm512_mul_ps(I, _mm512_sub_ps(one, I))));
        _mm512_mask_storeu_ps(d + H, m, _mm512_mul_ps(_mm512_mul_ps(dct, cp), _mm512_mul_ps(F, _mm512_sub_ps(one, F))));
        _mm512_mask_storeu_ps(d + 2 * H, m, _mm512_mul_ps(_mm512_mul_ps(dct, I), _mm512_fnmadd_ps(Ct, Ct, one)));
        _mm512_mask_storeu_ps(d + 3 * H, m, _mm512_mul_ps(_mm512_mul_ps(dh, tc), _mm512_mul_ps(O, _mm512_sub_ps(one, O))));
        _mm512_mask_storeu_ps(a->DC + o, m, _mm512_mul_ps(dct, F));
        sb0 = _mm512_add_ps(sb0, _mm512_maskz_loadu_ps(m, d));
        sb1 = _mm512_add_ps(sb1, _mm512_maskz_loadu_ps(m, d + H));
        sb2 = _mm512_add_ps(sb2, _mm512_maskz_loadu_ps(m, d + 2 * H));
        sb3 = _mm512_add_ps(sb3, _mm512_maskz_loadu_ps(m, d + 3 * H));
    }
    ADD_BIAS_GRAD(a->db, j0, H, m, sb0, sb1, sb2, sb3)
}

/* Phase B: DH[rows rb..rb+6, units n0..n0+64) = dG_t[rows, :] @ W_hh[:, n0..]. */
DEFINE_BWD_STORE()
BWD_TILE(6, DECL6, FMA6)
BWD_TILE(4, DECL4, FMA4)
DEFINE_BWD_WORKER()

#endif /* LSTM_X86 */

/* ---------------------------------------------------------------- panel packing */
/* P[j][k][q*16 + u] = W[q*H + j*16 + u][k] (0 past H): a transpose blocked by 16 k, so each of
 * the 64 source rows of a panel gives one cache line and the panel's rows k0..k0+15 are written
 * whole. */
#if LSTM_X86
/* The 16 x 16 block of rows W + (q*H + j*16 + u)*K + k0 (u = 0..15) transposed into
 * panel[(k0 + kk)*64 + q*16 + u]: 64 shuffles in registers instead of 256 scalar moves (the
 * weights are packed on every call, so this is on the inference path: 2.5x faster at H = 256). */
AVX512 static void transpose_block16(const float *src, int64_t K, float *dst) {
    __m512 r[16];
    for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * K);
    v_transpose16(r);
    for (int kk = 0; kk < 16; ++kk) _mm512_storeu_ps(dst + kk * 64, r[kk]);
}
#endif

static void pack_panels(const float *W, int64_t H, int64_t K, float *P) {
    const int64_t nb = (H + 15) / 16;
    for (int64_t j = 0; j < nb; ++j) {
        float *panel = P + j * K * 64;
        for (int64_t k0 = 0; k0 < K; k0 += 16) {
            const int64_t k1 = k0 + 16 < K ? k0 + 16 : K;
#if LSTM_X86
            if (k1 - k0 == 16 && j * 16 + 16 <= H) {   /* a full block: transposed in registers */
                for (int q = 0; q < 4; ++q)
                    transpose_block16(W + (q * H + j * 16) * K + k0, K, panel + k0 * 64 + q * 16);
                continue;
            }
#endif
            for (int q = 0; q < 4; ++q)
                for (int64_t u = 0; u < 16; ++u) {
                    const int64_t row = j * 16 + u, col = q * 16 + u;
                    if (row < H) {
                        const float *src = W + (q * H + row) * K;
                        for (int64_t k = k0; k < k1; ++k) panel[k * 64 + col] = src[k];
                    } else {
                        for (int64_t k = k0; k < k1; ++k) panel[k * 64 + col] = 0.0f;
                    }
                }
        }
    }
}

/* ---------------------------------------------------------------- Python bindings */
#define SEQ_CPU_OK avx512_ok
#define SEQ_CPU_NEEDS "AVX-512"
#define SEQ_BWD_COLS 64
#include "sequence_bindings.h"

static PyObject *py_weight_grad(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    CHECK_CALL("weight_grad", 15, avx512_ok(), "AVX-512")
#if LSTM_X86
    void *p[15];
    const int is_ptr[15] = {1, 0, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 1, 1, 0};
    int64_t v[15];
    for (int i = 0; i < 15; ++i) {
        if (is_ptr[i]) { p[i] = args[i] == Py_None ? NULL : PyLong_AsVoidPtr(args[i]); v[i] = 0; }
        else { v[i] = PyLong_AsLongLong(args[i]); p[i] = NULL; }
    }
    if (PyErr_Occurred()) return NULL;
    wgg_args a = {p[0], {{p[3], p[5], v[4], v[6]}, {p[7], p[9], v[8], v[10]}}, {p[11], p[12]}, p[13], v[1], v[2],
                  (int)v[14]};
    resolve_gomp();
    Py_BEGIN_ALLOW_THREADS
    run(wgg_worker, &a, a.nthreads);
    Py_END_ALLOW_THREADS
#endif
    Py_RETURN_NONE;
}

static PyObject *py_weight_grad_scratch(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) { PyErr_SetString(PyExc_TypeError, "weight_grad_scratch takes 4 arguments"); return NULL; }
    int64_t N = PyLong_AsLongLong(args[0]), M = PyLong_AsLongLong(args[1]), R = PyLong_AsLongLong(args[2]);
    int64_t nt = PyLong_AsLongLong(args[3]);
    if (PyErr_Occurred()) return NULL;
    return PyLong_FromLongLong(weight_grad_scratch_floats(N, M, R, nt < 1 ? 1 : nt));
}

static PyMethodDef methods[] = {
    SEQUENCE_METHODS
    {"weight_grad", (PyCFunction)(void (*)(void))py_weight_grad, METH_FASTCALL, "[dW0 | dW1] = dG^T @ [A0 | A1]"},
    {"weight_grad_scratch", (PyCFunction)(void (*)(void))py_weight_grad_scratch, METH_FASTCALL, "scratch floats of weight_grad"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_sequence_kernels", "Whole-sequence LSTM kernels (float32, AVX-512).", -1, methods};

PyMODINIT_FUNC PyInit__sequence_kernels(void) { return sequence_module(&module); }
