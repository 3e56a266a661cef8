/* Whole-sequence LSTM kernels (float32) for x86-64 CPUs with AVX2 and FMA but no AVX-512 (AMD
 * Zen 2/3, Intel before Skylake-SP, most laptops): the algorithm of sequence_kernels.c (read its
 * header) on 8-lane vectors and 16 registers.
 *
 * Why: without these, every float32 layer past the small-batch crossovers ran on the stepwise
 * route (stepwise.py: one oneDNN call and one C cell pass per step), which on the AVX2 EPYC trained
 * the d2l shape at 0.67x nn.LSTM (cpu-amd-epyc-avx2-2threads.json): ~15 us of fixed cost per
 * oneDNN call, two calls a step, and a core idle during each cell pass.
 *
 * The register tile is 6 (or 4) batch rows x 16 columns: 12 accumulators + 2 weight vectors + 1
 * broadcast of the 16 ymm registers; per k, 8 loads feed 12 FMAs. 16 columns are the four gates of
 * 4 hidden units, so forward panels hold 4 units (a panel is K x 64 bytes: 18 KB at the d2l
 * shape, kept in L1 across the row tiles of a step). The accumulators of a row are [i | f] and
 * [g | o] (4 units each); the cell epilogue pairs two rows with 128-bit lane permutes, so each
 * activation runs on 8 lanes: [row r | row r+1] x 4 units.
 *
 * forward_seq, backward_seq: the arguments of sequence_kernels.c's; the panel shapes differ:
 *   Px (ceil(H/4), D, 16), Ph (ceil(H/4), H, 16) forward panels (pack_panels: panel j, row k
 *   holds gates i, f, g, o of units 4j..4j+3 for input k); Wq (ceil(H/16), 4H, 16) backward panels
 *   (pack_backward_panels: panel j holds columns 16j.. of every row of W_hh). The module's
 *   FWD_PANEL_UNITS (4) and BWD_PANEL_COLS (16) say so to sequence.py.
 * pack_panels(W, H, K, P), pack_backward_panels(W, H, K, Q): as there, these shapes.
 * available() -> bool: AVX2 and FMA present.
 * The weight gradients are not here: sequence.py takes them from weight_gradient.py.
 *
 * Every output element is one chain in a fixed order (k ascending, input product first), owned by
 * one thread: bitwise independent of the thread count. The bits differ from the AVX-512 kernels'.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define SEQ_T float
#define SEQ_TARGET AVX2    /* (kernel_support.h) the target of the template-made functions */
#define SEQ_FWD_UNITS 4    /* hidden units per forward panel: 4 gates x 4 units = 16 columns */
#define SEQ_BWD_COLS 16    /* output columns per backward panel */
#include "sequence_templates.h"

#if LSTM_X86
/* ---------------------------------------------------------------- register tile */
#define ROW_DECL(r) __m256 c##r##0 = _mm256_setzero_ps(), c##r##1 = c##r##0;
#define DECL4_8 ROW_DECL(0) ROW_DECL(1) ROW_DECL(2) ROW_DECL(3)
#define DECL6_8 DECL4_8 ROW_DECL(4) ROW_DECL(5)
/* One k step of tile row r: a_r[k] (broadcast) times the panel row's 16 columns b0, b1. */
#define ROW_FMA(r)                                                                   \
    {                                                                                \
        const __m256 x = _mm256_broadcast_ss(a##r + k);                              \
        c##r##0 = _mm256_fmadd_ps(x, b0, c##r##0);                                   \
        c##r##1 = _mm256_fmadd_ps(x, b1, c##r##1);                                   \
    }
#define FMA4_8 ROW_FMA(0) ROW_FMA(1) ROW_FMA(2) ROW_FMA(3)
#define FMA6_8 FMA4_8 ROW_FMA(4) ROW_FMA(5)
/* Tile rows a0..a5 times panel P (K rows of 16 floats), k ascending. */
#define PANEL16(K, P, FMAS)                                                          \
    for (int64_t k = 0; k < (K); ++k) {                                              \
        const float *wk = (P) + k * 16;                                              \
        const __m256 b0 = _mm256_loadu_ps(wk), b1 = _mm256_loadu_ps(wk + 8);         \
        FMAS                                                                         \
    }

/* 4 floats at p (nu < 4: the first nu, the rest 0). Masked loads are cheap; masked stores are
 * not (microcoded on Zen), so store4 writes a tail through a small buffer. */
static const int32_t MASK4[8] = {-1, -1, -1, -1, 0, 0, 0, 0};
AVX2 INLINE __m128 load4(const float *p, int nu) {
    return nu >= 4 ? _mm_loadu_ps(p) : _mm_maskload_ps(p, _mm_loadu_si128((const __m128i *)(MASK4 + 4 - nu)));
}
AVX2 INLINE void store4(float *p, __m128 v, int nu) {
    if (nu >= 4) { _mm_storeu_ps(p, v); return; }
    float tmp[4];
    _mm_storeu_ps(tmp, v);
    for (int u = 0; u < nu; ++u) p[u] = tmp[u];
}
/* [4 floats at lo | 4 floats at hi] */
AVX2 INLINE __m256 load_pair(const float *lo, const float *hi, int nu) {
    return _mm256_insertf128_ps(_mm256_castps128_ps256(load4(lo, nu)), load4(hi, nu), 1);
}
AVX2 INLINE void store8(float *p, __m256 v, int64_t nv) {
    if (nv >= 8) { _mm256_storeu_ps(p, v); return; }
    float tmp[8];
    _mm256_storeu_ps(tmp, v);
    for (int64_t u = 0; u < nv; ++u) p[u] = tmp[u];
}

/* ---------------------------------------------------------------- forward */
DEFINE_F32_ARGS()

/* One row's results (the 4 units' 128-bit halves): c, h and, when saved, the gates. */
AVX2 INLINE void fwd_store_row(const fwd_args *a, int64_t t, int64_t row, int64_t j0, int nu, __m128 I, __m128 F,
                               __m128 Ct, __m128 O, __m128 c, __m128 c_prev, __m128 h, float *c_out) {
    const int64_t H = a->H;
    if (a->len && t >= a->len[row]) {   /* finished row: state frozen, output 0 (padding) */
        c = c_prev;
        h = _mm_setzero_ps();
    }
    store4(c_out + row * H + j0, c, nu);
    store4(a->Y + (t * a->B + row) * H + j0, h, nu);
    if (a->G) {
        float *g = a->G + (t * a->B + row) * 4 * H + j0;
        store4(g, I, nu);
        store4(g + H, F, nu);
        store4(g + 2 * H, Ct, nu);
        store4(g + 3 * H, O, nu);
    }
}

#define LO(v) _mm256_castps256_ps128(v)
#define HI(v) _mm256_extractf128_ps(v, 1)

/* The LSTM cell for rows r and r+1 (the second only where two) and units j0..j0+3, from the rows'
 * accumulators [i | f] (x0, y0) and [g | o] (x1, y1): each activation on [row r | row r+1]. A
 * missing second row computes on row r's operands and stores nothing. */
AVX2 INLINE void fwd_cell_pair(const fwd_args *a, int64_t t, int64_t r, int two, int64_t j0, __m256 x0, __m256 x1,
                               __m256 y0, __m256 y1, const float *cp, float *c_out) {
    const int64_t H = a->H, G4 = 4 * H, s = two ? r + 1 : r;
    const int nu = H - j0 < 4 ? (int)(H - j0) : 4;
    __m256 gi = _mm256_permute2f128_ps(x0, y0, 0x20), gf = _mm256_permute2f128_ps(x0, y0, 0x31);
    __m256 gg = _mm256_permute2f128_ps(x1, y1, 0x20), go = _mm256_permute2f128_ps(x1, y1, 0x31);
    if (a->XG) {
        const float *xr = a->XG + (t * a->B + r) * G4 + j0, *xs = a->XG + (t * a->B + s) * G4 + j0;
        gi = _mm256_add_ps(gi, load_pair(xr, xs, nu));
        gf = _mm256_add_ps(gf, load_pair(xr + H, xs + H, nu));
        gg = _mm256_add_ps(gg, load_pair(xr + 2 * H, xs + 2 * H, nu));
        go = _mm256_add_ps(go, load_pair(xr + 3 * H, xs + 3 * H, nu));
    }
    if (a->bias) {
        const float *b = a->bias + j0;
        gi = _mm256_add_ps(gi, load_pair(b, b, nu));
        gf = _mm256_add_ps(gf, load_pair(b + H, b + H, nu));
        gg = _mm256_add_ps(gg, load_pair(b + 2 * H, b + 2 * H, nu));
        go = _mm256_add_ps(go, load_pair(b + 3 * H, b + 3 * H, nu));
    }
    const __m256 I = v8_sigmoid(gi), F = v8_sigmoid(gf), Ct = v8_tanh(gg), O = v8_sigmoid(go);
    const __m256 c_prev = load_pair(cp + r * H + j0, cp + s * H + j0, nu);
    const __m256 c = _mm256_fmadd_ps(F, c_prev, _mm256_mul_ps(I, Ct));
    const __m256 h = _mm256_mul_ps(O, v8_tanh(c));
    fwd_store_row(a, t, r, j0, nu, LO(I), LO(F), LO(Ct), LO(O), LO(c), LO(c_prev), LO(h), c_out);
    if (two) fwd_store_row(a, t, s, j0, nu, HI(I), HI(F), HI(Ct), HI(O), HI(c), HI(c_prev), HI(h), c_out);
}

/* The projection rows the tile's epilogue adds (4 gate blocks per row, 4H apart: a stride no
 * hardware prefetcher follows), requested before the GEMM, as the AVX-512 kernels do. */
AVX2 INLINE void prefetch_projection(const fwd_args *a, int64_t t, int64_t rb, int64_t n, int64_t j0) {
    if (!a->XG) return;
    const float *xg = a->XG + (t * a->B + rb) * 4 * a->H + j0;
    for (int64_t r = 0; r < (n < 6 ? n : 6); ++r)
        for (int q = 0; q < 4; ++q) _mm_prefetch((const char *)(xg + r * 4 * a->H + q * a->H), _MM_HINT_T0);
}

/* Gates of rows [rb, rb+MR) x units [j0, j0+4) at step t (x_t W_ih^T + h_{t-1} W_hh^T), then the
 * cell. Rows past the batch read zeros and are not stored. */
#define FWD_TILE8(MR, DECLS, FMAS, TAIL)                                                              \
    AVX2 static void fwd_tile##MR(const fwd_args *a, int64_t t, int64_t rb, int64_t jb, const float *hp, \
                                  const float *cp, float *c_out) {                                    \
        const int64_t H = a->H, D = a->D, n = a->B - rb, j0 = jb * SEQ_FWD_UNITS;                     \
        const float *zero = a->zero, *a0, *a1, *a2, *a3, *a4, *a5;                                    \
        prefetch_projection(a, t, rb, n, j0);                                                         \
        DECLS                                                                                         \
        TILE_ROWS(a->X + t * a->B * D, D)                                                             \
        PANEL16(D, a->Px + jb * D * 16, FMAS)                                                         \
        TILE_ROWS(hp, H)                                                                              \
        PANEL16(H, a->Ph + jb * H * 16, FMAS)                                                         \
        (void)a4; (void)a5;                                                                           \
        fwd_cell_pair(a, t, rb, n > 1, j0, c00, c01, c10, c11, cp, c_out);                            \
        if (n > 2) fwd_cell_pair(a, t, rb + 2, n > 3, j0, c20, c21, c30, c31, cp, c_out);             \
        TAIL                                                                                          \
    }
FWD_TILE8(6, DECL6_8, FMA6_8, if (n > 4) fwd_cell_pair(a, t, rb + 4, n > 5, j0, c40, c41, c50, c51, cp, c_out);)
FWD_TILE8(4, DECL4_8, FMA4_8, )

DEFINE_FWD_WORKER()

/* ---------------------------------------------------------------- backward */
/* Phase A: gate gradients of step t for units [j0, j0+8) of every row, and their bias gradient
 * (summed over rows in order; each thread owns its unit blocks). */
AVX2 static void bwd_cell(const bwd_args *a, int64_t t, int64_t jb) {
    const int64_t B = a->B, H = a->H, G4 = 4 * H, j0 = jb * 8;
    const __m256i m = v8_tail(j0, H);
    const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
    __m256 sb0 = zero, sb1 = zero, sb2 = zero, sb3 = zero;   /* bias gradient, this step */
    for (int64_t b = 0; b < B; ++b) {
        const int64_t o = b * H + j0;
        float *d = a->dG + (t * B + b) * G4 + j0;
        if (a->len && t >= a->len[b]) {   /* finished row: no gate gradients; dh, dc carried */
            for (int q = 0; q < 4; ++q) v8_mstore(d + q * H, m, zero);
            continue;
        }
        const float *g = a->G + (t * B + b) * G4 + j0;
        const __m256 dh = _mm256_add_ps(v8_mload(m, a->dY + t * B * H + o), v8_mload(m, a->DH + o));
        const __m256 dc = v8_mload(m, a->DC + o);
        const __m256 I = v8_mload(m, g), F = v8_mload(m, g + H), Ct = v8_mload(m, g + 2 * H), O = v8_mload(m, g + 3 * H);
        const __m256 c = v8_mload(m, a->C + t * B * H + o);
        const __m256 cp = v8_mload(m, t > 0 ? a->C + (t - 1) * B * H + o : a->c0 + o);
        const __m256 tc = v8_tanh(c);
        const __m256 dct = _mm256_fmadd_ps(_mm256_mul_ps(dh, O), _mm256_fnmadd_ps(tc, tc, one), dc);
        const __m256 di = _mm256_mul_ps(_mm256_mul_ps(dct, Ct), _mm256_mul_ps(I, _mm256_sub_ps(one, I)));
        const __m256 df = _mm256_mul_ps(_mm256_mul_ps(dct, cp), _mm256_mul_ps(F, _mm256_sub_ps(one, F)));
        const __m256 dg = _mm256_mul_ps(_mm256_mul_ps(dct, I), _mm256_fnmadd_ps(Ct, Ct, one));
        const __m256 dout = _mm256_mul_ps(_mm256_mul_ps(dh, tc), _mm256_mul_ps(O, _mm256_sub_ps(one, O)));
        v8_mstore(d, m, di);
        v8_mstore(d + H, m, df);
        v8_mstore(d + 2 * H, m, dg);
        v8_mstore(d + 3 * H, m, dout);
        v8_mstore(a->DC + o, m, _mm256_mul_ps(dct, F));
        sb0 = _mm256_add_ps(sb0, di);
        sb1 = _mm256_add_ps(sb1, df);
        sb2 = _mm256_add_ps(sb2, dg);
        sb3 = _mm256_add_ps(sb3, dout);
    }
    if (a->db) {
        float *bq = a->db + j0;
        v8_mstore(bq, m, _mm256_add_ps(v8_mload(m, bq), sb0));
        v8_mstore(bq + H, m, _mm256_add_ps(v8_mload(m, bq + H), sb1));
        v8_mstore(bq + 2 * H, m, _mm256_add_ps(v8_mload(m, bq + 2 * H), sb2));
        v8_mstore(bq + 3 * H, m, _mm256_add_ps(v8_mload(m, bq + 3 * H), sb3));
    }
}

/* Phase B's epilogue: DH[row, n0..n0+16) = the two accumulators (a finished row keeps the dh
 * carried through). */
AVX2 INLINE void bwd_store(const bwd_args *a, int64_t t, int64_t row, int64_t n0, __m256 v0, __m256 v1) {
    const int64_t H = a->H;
    if (a->len && t >= a->len[row]) return;
    float *dh = a->DH + row * H + n0;
    store8(dh, v0, H - n0);
    if (n0 + 8 < H) store8(dh + 8, v1, H - n0 - 8);
}

/* Phase B: DH[rows rb..rb+MR, units n0..n0+16) = dG_t[rows, :] @ W_hh[:, n0..]. */
#define BWD_TILE8(MR, DECLS, FMAS, TAIL)                                                              \
    AVX2 static void bwd_tile##MR(const bwd_args *a, int64_t t, int64_t rb, int64_t nb) {             \
        const int64_t H = a->H, K = 4 * H, n0 = nb * SEQ_BWD_COLS, n = a->B - rb;                     \
        const float *zero = a->zero, *a0, *a1, *a2, *a3, *a4, *a5;                                    \
        TILE_ROWS(a->dG + t * a->B * K, K)                                                            \
        (void)a4; (void)a5;                                                                           \
        DECLS                                                                                         \
        PANEL16(K, a->Wq + nb * K * SEQ_BWD_COLS, FMAS)                                               \
        bwd_store(a, t, rb, n0, c00, c01);                                                            \
        if (n > 1) bwd_store(a, t, rb + 1, n0, c10, c11);                                             \
        if (n > 2) bwd_store(a, t, rb + 2, n0, c20, c21);                                             \
        if (n > 3) bwd_store(a, t, rb + 3, n0, c30, c31);                                             \
        TAIL                                                                                          \
    }
BWD_TILE8(6, DECL6_8, FMA6_8, if (n > 4) bwd_store(a, t, rb + 4, n0, c40, c41); if (n > 5) bwd_store(a, t, rb + 5, n0, c50, c51);)
BWD_TILE8(4, DECL4_8, FMA4_8, )

/* Per step, from t = T-1 down: phase A, a barrier, phase B. Each thread owns the same hidden units
 * in both phases (its 16-column panels and the 8-unit cell blocks inside them), so step t-1's
 * phase A reads only the DH columns this thread's phase B just wrote (and its own DC): one
 * barrier per step, before phase B reads every unit of dG_t. */
AVX2 static void bwd_worker(void *arg) {
    const bwd_args *a = (const bwd_args *)arg;
    team_t tm = team(a->nthreads);
    const int64_t B = a->B, H = a->H, nb8 = (H + 7) / 8, nbq = (H + SEQ_BWD_COLS - 1) / SEQ_BWD_COLS;
    const int64_t glo = nbq * tm.tid / tm.nth, ghi = nbq * (tm.tid + 1) / tm.nth, n6 = six_row_tiles(B);
    const int64_t clo = glo * (SEQ_BWD_COLS / 8), chi = ghi * (SEQ_BWD_COLS / 8) < nb8 ? ghi * (SEQ_BWD_COLS / 8) : nb8;
    for (int64_t t = a->T - 1; t >= 0; --t) {
        for (int64_t jb = clo; jb < chi; ++jb) bwd_cell(a, t, jb);
        barrier(tm);
        for (int64_t nb = glo; nb < ghi; ++nb) {
            int64_t rb = 0;
            for (int64_t i = 0; i < n6; ++i, rb += 6) bwd_tile6(a, t, rb, nb);
            for (; rb < B; rb += 4) bwd_tile4(a, t, rb, nb);
        }
    }
}

#endif /* LSTM_X86 */

/* ---------------------------------------------------------------- panel packing */
#if LSTM_X86
/* 8 rows of W at src (row stride K), columns k0..k0+7, transposed into 8 panel rows of 16 floats
 * at dst (8 floats each): v_transpose8 instead of 64 scalar moves. */
AVX2 static void transpose_8x8(const float *const *rows, int64_t k0, float *dst) {
    __m256 r[8];
    for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(rows[i] + k0);
    v_transpose8(r);
    for (int kk = 0; kk < 8; ++kk) _mm256_storeu_ps(dst + kk * 16, r[kk]);
}
#endif

/* P[j][k][q*4 + u] = W[q*H + 4j + u][k] (0 past H). */
static void pack_panels(const float *W, int64_t H, int64_t K, float *P) {
    const int64_t nb = (H + SEQ_FWD_UNITS - 1) / SEQ_FWD_UNITS;
    for (int64_t j = 0; j < nb; ++j) {
        float *panel = P + j * K * 16;
        const float *src[16];   /* source row of column q*4 + u, NULL past H */
        for (int q = 0; q < 4; ++q)
            for (int u = 0; u < 4; ++u) src[q * 4 + u] = j * 4 + u < H ? W + (q * H + j * 4 + u) * K : NULL;
        int64_t k0 = 0;
#if LSTM_X86
        if (j * 4 + 4 <= H)
            for (; k0 + 8 <= K; k0 += 8) {
                transpose_8x8(src, k0, panel + k0 * 16);          /* gates i, f */
                transpose_8x8(src + 8, k0, panel + k0 * 16 + 8);  /* gates g, o */
            }
#endif
        for (int64_t k = k0; k < K; ++k)
            for (int col = 0; col < 16; ++col) panel[k * 16 + col] = src[col] ? src[col][k] : 0.0f;
    }
}

/* ---------------------------------------------------------------- Python bindings */
#define SEQ_CPU_OK avx2_ok
#define SEQ_CPU_NEEDS "AVX2 and FMA"
#include "sequence_bindings.h"

static PyMethodDef methods[] = {
    SEQUENCE_METHODS
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_sequence_avx2_kernels",
                                    "Whole-sequence LSTM kernels (float32, AVX2 + FMA).", -1, methods};

PyMODINIT_FUNC PyInit__sequence_avx2_kernels(void) { return sequence_module(&module); }
