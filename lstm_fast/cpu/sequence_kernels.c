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
 * forward_seq(X, Px, bias|None, Ph, h0, c0, Y, C, G|None, T, B, D, H, nthreads, len|None)
 *   X (T, B, D) inputs; Px (nb16, D, 64) and Ph (nb16, H, 64) forward panels of W_ih and W_hh
 *   (pack_panels): panel j, row k holds gates i, f, g, o of units j*16..j*16+15 for input k, so a
 *   tile streams one contiguous block (reading W^T rows directly instead costs a TLB miss per
 *   gate per k: 2.4x slower at H=512). The input projection is accumulated into the same register
 *   tile as the recurrent product, so no (T, B, 4H) buffer is written; bias (4H) = b_ih + b_hh or
 *   None; h0, c0 (B, H);
 *   Y (T, B, H) outputs; C (T, B, H) cell states when G is given, else (2, B, H) scratch;
 *   G (T, B, 4H) activated gates (saved for the backward) or None.
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
 * weight_grad(dG, N, P0, R0, P1, R, K, dW, nthreads)
 *   dW (N, K) = dG^T @ P over R rows (any N, K), dG (R, N) row-major and P's rows R0 rows at P0 then the
 *   rest at P1 (h_0 then Y[:-1] for dW_hh, no concatenation); no transposes: row r contributes
 *   dG[r, n0..n0+5] (broadcast) times P[r, k0..k0+63] to a 6 x 64 register tile.
 * available() -> bool: AVX-512 present (the caller falls back otherwise).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include "sequence_templates.h"

#if LSTM_X86
/* The register tiles, workers and argument parsing of sequence_templates.h, on float32 operands. */
#define SEQ_TARGET AVX512
#define SEQ_T float

/* ---------------------------------------------------------------- forward */
typedef struct {
    const float *X, *Px, *bias, *Ph, *h0, *c0;
    float *Y, *C, *G;
    int64_t T, B, D, H;
    int nthreads;
    const float *zero;   /* max(D, H) zeros: the A row of tile rows past the batch */
    const int64_t *len;  /* per-row sequence lengths, or NULL: all rows run all T steps */
} fwd_args;

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

/* The LSTM cell for one row and 16 hidden units, from that row's four gate accumulators. */
AVX512 INLINE void fwd_cell(const fwd_args *a, int64_t t, int64_t row, int64_t j0, __mmask16 m,
                            __m512 gi, __m512 gf, __m512 gg, __m512 go, const float *cp, float *c_out) {
    const int64_t H = a->H, G4 = 4 * H;
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
typedef struct {
    const float *dY, *Wq, *G, *C, *c0;
    float *dG, *DH, *DC, *db;
    int64_t T, B, H;
    int nthreads;
    const float *zero;   /* 4H zeros */
    const int64_t *len;  /* per-row sequence lengths, or NULL */
} bwd_args;

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

/* ---------------------------------------------------------------- weight gradient */
typedef struct {
    const float *dG, *P0, *P1;
    float *dW;
    int64_t N, R0, R, K;
    int nthreads;
} wg_args;

#define WG_FMA(i)                                                                    \
    {                                                                                \
        __m512 x = _mm512_set1_ps(g[i < nr ? i : 0]);                                \
        c##i##0 = _mm512_fmadd_ps(x, b0, c##i##0);                                   \
        c##i##1 = _mm512_fmadd_ps(x, b1, c##i##1);                                   \
        c##i##2 = _mm512_fmadd_ps(x, b2, c##i##2);                                   \
        c##i##3 = _mm512_fmadd_ps(x, b3, c##i##3);                                   \
    }
#define WG_STORE(i)                                                                  \
    if (i < nr) {                                                                    \
        float *o = a->dW + (n0 + i) * K + k0;                                        \
        if (accumulate) {                                                            \
            c##i##0 = _mm512_add_ps(c##i##0, _mm512_maskz_loadu_ps(m0, o));          \
            c##i##1 = _mm512_add_ps(c##i##1, _mm512_maskz_loadu_ps(m1, o + 16));     \
            c##i##2 = _mm512_add_ps(c##i##2, _mm512_maskz_loadu_ps(m2, o + 32));     \
            c##i##3 = _mm512_add_ps(c##i##3, _mm512_maskz_loadu_ps(m3, o + 48));     \
        }                                                                            \
        _mm512_mask_storeu_ps(o, m0, c##i##0);                                       \
        _mm512_mask_storeu_ps(o + 16, m1, c##i##1);                                  \
        _mm512_mask_storeu_ps(o + 32, m2, c##i##2);                                  \
        _mm512_mask_storeu_ps(o + 48, m3, c##i##3);                                  \
    }
#define WG_TILE(MR, DECLS, FMAS, STORES)                                                              \
    AVX512 static void wg_tile##MR(const wg_args *a, int64_t n0, int64_t k0, int64_t r_lo, int64_t r_hi, \
                                   int accumulate) {                                                  \
        const int64_t N = a->N, K = a->K, nr = N - n0 < MR ? N - n0 : MR;                             \
        const __mmask16 m0 = k0 < K ? tail_mask(k0, K) : 0, m1 = k0 + 16 < K ? tail_mask(k0 + 16, K) : 0; \
        const __mmask16 m2 = k0 + 32 < K ? tail_mask(k0 + 32, K) : 0;                                 \
        const __mmask16 m3 = k0 + 48 < K ? tail_mask(k0 + 48, K) : 0;                                 \
        DECLS                                                                                         \
        for (int64_t r = r_lo; r < r_hi; ++r) {                                                       \
            const float *p = (r < a->R0 ? a->P0 + r * K : a->P1 + (r - a->R0) * K) + k0;              \
            const float *g = a->dG + r * N + n0;                                                      \
            __m512 b0 = _mm512_maskz_loadu_ps(m0, p), b1 = _mm512_maskz_loadu_ps(m1, p + 16);         \
            __m512 b2 = _mm512_maskz_loadu_ps(m2, p + 32), b3 = _mm512_maskz_loadu_ps(m3, p + 48);    \
            FMAS                                                                                      \
        }                                                                                             \
        STORES                                                                                        \
    }
WG_TILE(6, DECL6, WG_FMA(0) WG_FMA(1) WG_FMA(2) WG_FMA(3) WG_FMA(4) WG_FMA(5),
        WG_STORE(0) WG_STORE(1) WG_STORE(2) WG_STORE(3) WG_STORE(4) WG_STORE(5))
WG_TILE(4, DECL4, WG_FMA(0) WG_FMA(1) WG_FMA(2) WG_FMA(3), WG_STORE(0) WG_STORE(1) WG_STORE(2) WG_STORE(3))

/* Threads split the n tiles (each owns its rows of dW). The reduction runs in chunks of WG_ROWS
 * rows and, within a chunk, k blocks outer: a chunk's 64-column slice of P (64 KB) stays in cache
 * while every n tile of the thread uses it; later chunks add into dW. */
#define WG_ROWS 256
AVX512 static void wg_worker(void *arg) {
    const wg_args *a = (const wg_args *)arg;
    team_t tm = team(a->nthreads);
    const int64_t n6 = six_row_tiles(a->N), ntiles = n6 + (a->N - 6 * n6 + 3) / 4;
    const int64_t lo = ntiles * tm.tid / tm.nth, hi = ntiles * (tm.tid + 1) / tm.nth;
    for (int64_t r0 = 0; r0 < a->R; r0 += WG_ROWS) {
        const int64_t r1 = r0 + WG_ROWS < a->R ? r0 + WG_ROWS : a->R;
        for (int64_t k0 = 0; k0 < a->K; k0 += 64)
            for (int64_t i = lo; i < hi; ++i) {
                if (i < n6) wg_tile6(a, 6 * i, k0, r0, r1, r0 > 0);
                else wg_tile4(a, 6 * n6 + 4 * (i - n6), k0, r0, r1, r0 > 0);
            }
    }
}
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

/* Q[j][k][u] = W[k][j*64 + u] (0 past H): W_hh's rows cut into 64-column panels. */
static void pack_backward_panels(const float *W, int64_t H, int64_t K, float *Q) {
    const int64_t nb = (H + 63) / 64;
    for (int64_t j = 0; j < nb; ++j) {
        const int64_t n = H - j * 64 < 64 ? H - j * 64 : 64;
        for (int64_t k = 0; k < K; ++k) {
            float *dst = Q + (j * K + k) * 64;
            memcpy(dst, W + k * H + j * 64, (size_t)n * sizeof(float));
            if (n < 64) memset(dst + n, 0, (size_t)(64 - n) * sizeof(float));
        }
    }
}

/* ---------------------------------------------------------------- Python bindings */
static int avx512_ok(void) {
#if LSTM_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
#else
    return 0;
#endif
}


static PyObject *py_available(PyObject *self, PyObject *unused) { return PyBool_FromLong(avx512_ok()); }

#if LSTM_X86
DEFINE_RUN_WITH_ZERO_ROW()
#endif

static PyObject *py_forward_seq(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    CHECK_CALL("forward_seq", 15, avx512_ok(), "AVX-512")
#if LSTM_X86
    PARSE_FWD_ARGS(a)
    if (PyErr_Occurred()) return NULL;
    return run_with_zero_row(fwd_worker, &a, &a.zero, a.D > a.H ? a.D : a.H, a.nthreads);
#else
    Py_RETURN_NONE;
#endif
}

static PyObject *py_backward_seq(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    CHECK_CALL("backward_seq", 14, avx512_ok(), "AVX-512")
#if LSTM_X86
    PARSE_BWD_ARGS(a)
    if (PyErr_Occurred()) return NULL;
    return run_with_zero_row(bwd_worker, &a, &a.zero, 4 * a.H, a.nthreads);
#else
    Py_RETURN_NONE;
#endif
}

static PyObject *py_weight_grad(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    CHECK_CALL("weight_grad", 9, avx512_ok(), "AVX-512")
#if LSTM_X86
    wg_args a;
    a.dG = PyLong_AsVoidPtr(args[0]);
    a.N = PyLong_AsLongLong(args[1]);
    a.P0 = PyLong_AsVoidPtr(args[2]);
    a.R0 = PyLong_AsLongLong(args[3]);
    a.P1 = args[4] == Py_None ? NULL : PyLong_AsVoidPtr(args[4]);
    a.R = PyLong_AsLongLong(args[5]);
    a.K = PyLong_AsLongLong(args[6]);
    a.dW = PyLong_AsVoidPtr(args[7]);
    a.nthreads = (int)PyLong_AsLong(args[8]);
    if (PyErr_Occurred()) return NULL;
    resolve_gomp();
    Py_BEGIN_ALLOW_THREADS
    run(wg_worker, &a, a.nthreads);
    Py_END_ALLOW_THREADS
#endif
    Py_RETURN_NONE;
}

static PyObject *py_pack_panels(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) { PyErr_SetString(PyExc_TypeError, "pack_panels takes 4 arguments"); return NULL; }
    const float *W = PyLong_AsVoidPtr(args[0]);
    int64_t H = PyLong_AsLongLong(args[1]), K = PyLong_AsLongLong(args[2]);
    float *P = PyLong_AsVoidPtr(args[3]);
    if (PyErr_Occurred()) return NULL;
    Py_BEGIN_ALLOW_THREADS
    pack_panels(W, H, K, P);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *py_pack_backward_panels(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) { PyErr_SetString(PyExc_TypeError, "pack_backward_panels takes 4 arguments"); return NULL; }
    const float *W = PyLong_AsVoidPtr(args[0]);
    int64_t H = PyLong_AsLongLong(args[1]), K = PyLong_AsLongLong(args[2]);
    float *Q = PyLong_AsVoidPtr(args[3]);
    if (PyErr_Occurred()) return NULL;
    pack_backward_panels(W, H, K, Q);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"available", py_available, METH_NOARGS, "whether this CPU runs the AVX-512 sequence kernels"},
    {"forward_seq", (PyCFunction)(void (*)(void))py_forward_seq, METH_FASTCALL, "LSTM forward over all steps"},
    {"backward_seq", (PyCFunction)(void (*)(void))py_backward_seq, METH_FASTCALL, "LSTM backward over all steps"},
    {"pack_panels", (PyCFunction)(void (*)(void))py_pack_panels, METH_FASTCALL, "forward weight panels"},
    {"pack_backward_panels", (PyCFunction)(void (*)(void))py_pack_backward_panels, METH_FASTCALL, "backward weight panels"},
    {"weight_grad", (PyCFunction)(void (*)(void))py_weight_grad, METH_FASTCALL, "dW = dG^T @ [P0; P1]"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_sequence_kernels", "Whole-sequence LSTM kernels (float32, AVX-512).", -1, methods};

PyMODINIT_FUNC PyInit__sequence_kernels(void) { return PyModule_Create(&module); }
