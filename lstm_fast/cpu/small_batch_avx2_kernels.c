/* The small-batch LSTM kernels (float32) for x86-64 CPUs with AVX2 and FMA but no AVX-512 (AMD
 * Zen 2/3, Intel before Skylake-SP, most laptops), plus the fixed-order weight-gradient GEMM
 * their backward needs there.
 *
 * Why: without AVX-512 every float32 layer ran on the stepwise implementation (stepwise.py: one
 * oneDNN GEMM and one C cell pass per step, ~14 us of fixed cost per GEMM call), which at batch 1
 * is 5-10x away from the weight-bytes limit of a step. These are the algorithm of
 * small_batch_kernels.c (read its header: the weights in nn.LSTM's own layout, nothing packed or
 * cached, threads owning fixed slices of hidden units, one spin-then-yield barrier per step, a
 * fixed summation order per gate so results are bitwise independent of the thread count) on
 * 8-lane vectors: blocks of 8 units, dot products in chunks of 8 k, an 8 x 8 register transpose
 * and a 3-level tree. Same entry points and arguments as that module, so small_batch.py binds
 * whichever this CPU runs. The bits differ from the AVX-512 kernels' (another summation order):
 * a model gives the same answer at any thread count on one CPU, not across CPU kinds.
 *
 * Written with V_* macros over the 8-lane types so the body can become a template shared with the
 * AVX-512 file; it is not yet: that file's bits are pinned by its tests and it could not be
 * re-verified on the AVX2-only machine this was written on.
 *
 * Shapes and arguments: as small_batch_kernels.c (forward: 20 arguments, backward: 14), plus an
 * optional 15th of backward: the address of an (H, 4H) float32 scratch, where given the backward
 * reads W_hh transposed into it (pack_wt: small_batch.PACK_MIN_STEPS says from which T).
 * weight_grad(dG, N, R, a0, rows_a0, a1, cols_a, b0, rows_b0, b1, cols_b, out_a, out_b, scratch,
 *   nthreads): out_a (N, cols_a) = dG^T A and out_b (N, cols_b) = dG^T B (out_b NULL: none), dG
 *   (R, N) row-major; A given as rows_a0 rows at a0 then R - rows_a0 rows at a1 (a1 NULL when
 *   rows_a0 == R), B likewise: the signature of sequence_kernels' weight_grad. The packed GEMM
 *   of weight_gradient_gemm_avx2.h: each thread owns fixed 16-column blocks of dG, each output a
 *   single chain over r = 0..R-1 in order: bitwise independent of the thread count.
 *   weight_grad_scratch(N, M, R, nthreads) -> the floats of scratch it needs.
 * input_grad(dG, W, rows, G4, D, out, nthreads): out (rows, D) = dG (rows, G4) W (G4, D), the same
 *   product with the roles turned (torch's GEMM changes its bits with the thread count on the
 *   AMD EPYC this was written on, so dx of a small-batch backward could not come from it).
 * forward_autocast(...): one step under CPU autocast to bf16 with the casts done here (its comment).
 * available() -> bool: AVX2 and FMA present.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include "kernel_support.h"
#include "weight_gradient_gemm_avx2.h"
#include "thread_team.h"

#if LSTM_X86

/* ---------------------------------------------------------------- 8-lane vector layer */
#define VL 8
typedef __m256 V;
typedef __m256i VM;   /* a lane mask: all ones (lane taken) or zero */
#define V_ZERO() _mm256_setzero_ps()
#define V_SET1(x) _mm256_set1_ps(x)
#define V_LOAD(p) _mm256_loadu_ps(p)
#define V_ADD(a, b) _mm256_add_ps(a, b)
#define V_SUB(a, b) _mm256_sub_ps(a, b)
#define V_MUL(a, b) _mm256_mul_ps(a, b)
#define V_FMA(a, b, c) _mm256_fmadd_ps(a, b, c)      /* a * b + c */
#define V_FNMA(a, b, c) _mm256_fnmadd_ps(a, b, c)    /* c - a * b */

/* acc[0..7] -> one vector whose lane i is the sum of acc[i]'s lanes: an 8 x 8 transpose, then a
 * fixed tree (lanes 0-3 + 4-7, then pairs, then neighbours). */
AVX2 INLINE V reduce8(V *a) {
    v_transpose8(a);                                   /* a[c]: column c of rows 0-7 */
    for (int s = 4; s >= 1; s >>= 1)
        for (int i = 0; i < s; ++i) a[i] = V_ADD(a[i], a[i + s]);
    return a[0];
}

/* out[i], lane u: W[row0 + u] . v_i over K for i < NB (<= 4) vectors at v + i * ldv, R rows of the
 * 8-row block at a time (rows past nvalid read row row0; their lanes are to be ignored). Every
 * (row, vector) sum is one chain in k order, then reduce8's tree, whatever NB and R. */
AVX2 INLINE void dot8(const float *W, int64_t K, int64_t row0, int nvalid, const float *v, int64_t ldv,
                      V *out, const int NB, const int R) {
    V sums[4][8];
    for (int u0 = 0; u0 < 8; u0 += R) {
        const float *w[8];
        for (int r = 0; r < R; ++r) w[r] = W + (row0 + (u0 + r < nvalid ? u0 + r : 0)) * K;
        V s[8][4];
        for (int r = 0; r < R; ++r)
            for (int i = 0; i < NB; ++i) s[r][i] = V_ZERO();
        int64_t k = 0;
        for (; k + VL <= K; k += VL) {
            V x[4];
            for (int i = 0; i < NB; ++i) x[i] = V_LOAD(v + i * ldv + k);
            for (int r = 0; r < R; ++r) {
                const V wv = V_LOAD(w[r] + k);
                for (int i = 0; i < NB; ++i) s[r][i] = V_FMA(wv, x[i], s[r][i]);
            }
        }
        if (k < K) {
            const VM m = v8_tail(k, K);
            V x[4];
            for (int i = 0; i < NB; ++i) x[i] = v8_mload(m, v + i * ldv + k);
            for (int r = 0; r < R; ++r) {
                const V wv = v8_mload(m, w[r] + k);
                for (int i = 0; i < NB; ++i) s[r][i] = V_FMA(wv, x[i], s[r][i]);
            }
        }
        for (int r = 0; r < R; ++r)
            for (int i = 0; i < NB; ++i) sums[i][u0 + r] = s[r][i];
    }
    for (int i = 0; i < NB; ++i) out[i] = reduce8(sums[i]);
}

/* out[i * out_stride] = the product with vector i, for i < n (any n), up to four at a time (R * NB
 * accumulators plus NB vectors within the 16 registers). */
AVX2 static void dot8_many(const float *W, int64_t K, int64_t row0, int nvalid, const float *v, int64_t ldv,
                           int64_t n, V *out, int64_t out_stride) {
    V o[4];
    for (int64_t i = 0; i < n; i += 4) {
        const int64_t nb = n - i < 4 ? n - i : 4;
        const float *vi = v + i * ldv;
        switch (nb) {
        case 1: dot8(W, K, row0, nvalid, vi, ldv, o, 1, 8); break;
        case 2: dot8(W, K, row0, nvalid, vi, ldv, o, 2, 4); break;
        case 3: dot8(W, K, row0, nvalid, vi, ldv, o, 3, 2); break;
        default: dot8(W, K, row0, nvalid, vi, ldv, o, 4, 2); break;
        }
        for (int64_t j = 0; j < nb; ++j) out[(i + j) * out_stride] = o[j];
    }
}

/* ---------------------------------------------------------------- forward */
typedef struct {
    const float *X, *Wih, *Whh, *bih, *bhh, *h0, *c0;
    float *Y, *hn, *cn, *G, *C, *P, *S;
    int64_t T, B, D, H;
    int nthreads;
    const int64_t *len;
    int64_t group;          /* unit blocks per claimed item */
    team_phases ph;
} fwd_args;

#define BCHUNK 8   /* batch rows whose gate pre-activations a unit block holds at once */

AVX2 INLINE V bias8(const fwd_args *a, int64_t r, VM m) {
    V b = V_ZERO();
    if (a->bih) b = v8_mload(m, a->bih + r);
    if (a->bhh) b = a->bih ? V_ADD(b, v8_mload(m, a->bhh + r)) : v8_mload(m, a->bhh + r);
    return b;
}

/* Where step t's cell state goes: C[t] when saving, else alternating S / cn ending on cn. */
static inline float *c_slot(const fwd_args *a, int64_t t) {
    if (a->G) return a->C + t * a->B * a->H;
    return ((a->T - 1 - t) & 1) ? a->S : a->cn;
}

/* The input projection of unit block jb for all T * B rows (T > 1): XP[:, q * H + j0 ..]. */
AVX2 static void fwd_projection(const fwd_args *a, int64_t jb) {
    const int64_t T = a->T, B = a->B, D = a->D, H = a->H, G4 = 4 * H, j0 = jb * VL;
    float *XP = a->G ? a->G : a->P;
    const int nv = H - j0 < VL ? (int)(H - j0) : VL;
    const VM m = v8_tail(j0, H);
    V o[4];
    for (int q = 0; q < 4; ++q)
        for (int64_t tb = 0; tb < T * B; tb += 4) {
            const int64_t n = T * B - tb < 4 ? T * B - tb : 4;
            dot8_many(a->Wih, D, q * H + j0, nv, a->X + tb * D, D, n, o, 1);
            for (int64_t i = 0; i < n; ++i) v8_mstore(XP + (tb + i) * G4 + q * H + j0, m, o[i]);
        }
}

/* Step t of unit block jb for every row: gates, cell, h (and the saved gates, c, c_n). */
AVX2 static void fwd_step(const fwd_args *a, int64_t t, int64_t jb) {
    const int64_t T = a->T, B = a->B, D = a->D, H = a->H, G4 = 4 * H, j0 = jb * VL;
    const float *XP = a->G ? a->G : a->P;   /* input projections (T, B, 4H), when T > 1 */
    const float *hp = t == 0 ? a->h0 : a->Y + (t - 1) * B * H;
    const float *cp = t == 0 ? a->c0 : c_slot(a, t - 1);
    float *co = c_slot(a, t);
    const int nv = H - j0 < VL ? (int)(H - j0) : VL;
    const VM m = v8_tail(j0, H);
    V pre[BCHUNK * 4], prex[BCHUNK * 4];
    for (int64_t b0 = 0; b0 < B; b0 += BCHUNK) {
        const int64_t nbat = B - b0 < BCHUNK ? B - b0 : BCHUNK;
        for (int q = 0; q < 4; ++q) {
            dot8_many(a->Whh, H, q * H + j0, nv, hp + b0 * H, H, nbat, pre + q, 4);
            if (T == 1) dot8_many(a->Wih, D, q * H + j0, nv, a->X + b0 * D, D, nbat, prex + q, 4);
        }
        for (int64_t i = 0; i < nbat; ++i) {
            const int64_t b = b0 + i;
            V g[4];
            for (int q = 0; q < 4; ++q) {
                V xp = T > 1 ? v8_mload(m, XP + (t * B + b) * G4 + q * H + j0) : prex[i * 4 + q];
                g[q] = V_ADD(V_ADD(pre[i * 4 + q], xp), bias8(a, q * H + j0, m));
            }
            V I = v8_sigmoid(g[0]), F = v8_sigmoid(g[1]), Ct = v8_tanh(g[2]), O = v8_sigmoid(g[3]);
            V c_prev = v8_mload(m, cp + b * H + j0);
            V c = V_FMA(F, c_prev, V_MUL(I, Ct));
            V h = V_MUL(O, v8_tanh(c));
            if (a->len && t >= a->len[b]) {   /* finished row: state frozen, output 0 */
                c = c_prev;
                if (t == 0) v8_mstore(a->hn + b * H + j0, m, v8_mload(m, a->h0 + b * H + j0));
                h = V_ZERO();
            } else {
                v8_mstore(a->hn + b * H + j0, m, h);
            }
            v8_mstore(co + b * H + j0, m, c);
            v8_mstore(a->Y + (t * B + b) * H + j0, m, h);
            if (a->G) {
                float *gs = a->G + (t * B + b) * G4 + j0;
                v8_mstore(gs, m, I);
                v8_mstore(gs + H, m, F);
                v8_mstore(gs + 2 * H, m, Ct);
                v8_mstore(gs + 3 * H, m, O);
            }
        }
    }
    if (a->G && t == T - 1)   /* saving: cn is also C[T-1] */
        for (int64_t b = 0; b < B; ++b) v8_mstore(a->cn + b * H + j0, m, v8_mload(m, co + b * H + j0));
}

/* Phases (thread_team.h): the input projection when T > 1, then one per step; item g: unit
 * blocks [g group, (g + 1) group). */
AVX2 static void fwd_item(const fwd_args *a, int64_t p, int64_t g) {
    const int64_t nb = (a->H + VL - 1) / VL, jb1 = (g + 1) * a->group < nb ? (g + 1) * a->group : nb;
    for (int64_t jb = g * a->group; jb < jb1; ++jb)
        if (p < (a->T > 1)) fwd_projection(a, jb);
        else fwd_step(a, p - (a->T > 1), jb);
}
#define FWD_ITEM(p, g) fwd_item(a, p, g)
AVX2 static void fwd_worker(void *arg, int tid) {
    fwd_args *a = (fwd_args *)arg;
    const int64_t proj = a->T > 1;
    TEAM_PHASES(&a->ph, tid, proj + a->T, FWD_ITEM)
}

/* ---------------------------------------------------------------- backward */
typedef struct {
    const float *dY, *Whh, *G, *C, *c0;
    float *dG, *DH, *DC, *db;
    int64_t T, B, H;
    int nthreads;
    const int64_t *len;
    int64_t group;          /* unit blocks per claimed item, a multiple of bwd_unit */
    float *WT;              /* (H, 4H) scratch for W_hh transposed, or NULL (see bwd_dh_packed) */
    team_phases ph;
} bwd_args;

/* Gate gradients of step t for units [j0, j0 + 8) of every row (as small_batch_kernels.c). */
AVX2 static void bwd_cell(const bwd_args *a, int64_t t, int64_t jb) {
    const int64_t B = a->B, H = a->H, G4 = 4 * H, j0 = jb * VL;
    const VM m = v8_tail(j0, H);
    const V one = V_SET1(1.0f);
    for (int64_t b = 0; b < B; ++b) {
        const int64_t o = b * H + j0;
        float *d = a->dG + (t * B + b) * G4 + j0;
        if (a->len && t >= a->len[b]) {   /* finished row: no gate gradients; dh, dc carried */
            for (int q = 0; q < 4; ++q) v8_mstore(d + q * H, m, V_ZERO());
            continue;
        }
        const float *g = a->G + (t * B + b) * G4 + j0;
        V dh = v8_mload(m, a->DH + o);
        if (a->dY) dh = V_ADD(v8_mload(m, a->dY + t * B * H + o), dh);
        V dc = v8_mload(m, a->DC + o);
        V I = v8_mload(m, g), F = v8_mload(m, g + H);
        V Ct = v8_mload(m, g + 2 * H), O = v8_mload(m, g + 3 * H);
        V c = v8_mload(m, a->C + t * B * H + o);
        V cp = v8_mload(m, t > 0 ? a->C + (t - 1) * B * H + o : a->c0 + o);
        V tc = v8_tanh(c);
        V dct = V_FMA(V_MUL(dh, O), V_FNMA(tc, tc, one), dc);
        V di = V_MUL(V_MUL(dct, Ct), V_MUL(I, V_SUB(one, I)));
        V df = V_MUL(V_MUL(dct, cp), V_MUL(F, V_SUB(one, F)));
        V dg = V_MUL(V_MUL(dct, I), V_FNMA(Ct, Ct, one));
        V dO = V_MUL(V_MUL(dh, tc), V_MUL(O, V_SUB(one, O)));
        v8_mstore(d, m, di);
        v8_mstore(d + H, m, df);
        v8_mstore(d + 2 * H, m, dg);
        v8_mstore(d + 3 * H, m, dO);
        v8_mstore(a->DC + o, m, V_MUL(dct, F));
        if (a->db) {   /* rows in order b = 0..B-1, steps T-1..0: a fixed order */
            float *bq = a->db + j0;
            v8_mstore(bq, m, V_ADD(v8_mload(m, bq), di));
            v8_mstore(bq + H, m, V_ADD(v8_mload(m, bq + H), df));
            v8_mstore(bq + 2 * H, m, V_ADD(v8_mload(m, bq + 2 * H), dg));
            v8_mstore(bq + 3 * H, m, V_ADD(v8_mload(m, bq + 3 * H), dO));
        }
    }
}

/* DH[b, n0..n0+8) = sum over r = 0..4H-1 of dG_t[b, r] * W_hh[r, n0..] (two chains, even and odd
 * r, summed at the end), for up to 4 rows b at once (frozen rows keep the dh carried through). */
AVX2 static void bwd_dh(const bwd_args *a, int64_t t, int64_t n0) {
    const int64_t B = a->B, H = a->H, G4 = 4 * H;
    const VM m = v8_tail(n0, H);
    for (int64_t b0 = 0; b0 < B; b0 += 4) {
        const int64_t nbat = B - b0 < 4 ? B - b0 : 4;
        const float *d0 = a->dG + (t * B + b0) * G4;
        const float *d1 = nbat > 1 ? d0 + G4 : d0, *d2 = nbat > 2 ? d0 + 2 * G4 : d0, *d3 = nbat > 3 ? d0 + 3 * G4 : d0;
        V s0 = V_ZERO(), s1 = s0, s2 = s0, s3 = s0;
        V u0 = s0, u1 = s0, u2 = s0, u3 = s0;
        for (int64_t r = 0; r + 2 <= G4; r += 2) {   /* 4H is even: no r left */
            V w = v8_mload(m, a->Whh + r * H + n0);
            V w1 = v8_mload(m, a->Whh + (r + 1) * H + n0);
            s0 = V_FMA(V_SET1(d0[r]), w, s0);
            u0 = V_FMA(V_SET1(d0[r + 1]), w1, u0);
            s1 = V_FMA(V_SET1(d1[r]), w, s1);
            u1 = V_FMA(V_SET1(d1[r + 1]), w1, u1);
            s2 = V_FMA(V_SET1(d2[r]), w, s2);
            u2 = V_FMA(V_SET1(d2[r + 1]), w1, u2);
            s3 = V_FMA(V_SET1(d3[r]), w, s3);
            u3 = V_FMA(V_SET1(d3[r + 1]), w1, u3);
        }
        V v[4] = {V_ADD(s0, u0), V_ADD(s1, u1), V_ADD(s2, u2), V_ADD(s3, u3)};
        for (int64_t i = 0; i < nbat; ++i) {
            const int64_t b = b0 + i;
            if (a->len && t >= a->len[b]) continue;
            v8_mstore(a->DH + b * H + n0, m, v[i]);
        }
    }
}

/* B == 1: DH[0, ..) for up to 4 column blocks at once (jb0.., nblk of them), each block's two
 * chains exactly as bwd_dh's: bitwise its result, one broadcast of dG_t[r] for 32 columns. */
AVX2 static void bwd_dh1(const bwd_args *a, int64_t t, int64_t jb0, int nblk) {
    const int64_t H = a->H, G4 = 4 * H;
    if (a->len && t >= a->len[0]) return;
    const float *d = a->dG + t * G4;
    VM m[4];
    V s[4], u[4];
    for (int c = 0; c < 4; ++c) {
        m[c] = c < nblk ? v8_tail((jb0 + c) * VL, H) : _mm256_setzero_si256();
        s[c] = u[c] = V_ZERO();
    }
    for (int64_t r = 0; r + 2 <= G4; r += 2) {
        const V d0 = V_SET1(d[r]), d1 = V_SET1(d[r + 1]);
        const float *w0 = a->Whh + r * H + jb0 * VL, *w1 = w0 + H;
        for (int c = 0; c < 4; ++c) {
            s[c] = V_FMA(d0, v8_mload(m[c], w0 + VL * c), s[c]);
            u[c] = V_FMA(d1, v8_mload(m[c], w1 + VL * c), u[c]);
        }
    }
    for (int c = 0; c < nblk; ++c) v8_mstore(a->DH + (jb0 + c) * VL, m[c], V_ADD(s[c], u[c]));
}

/* W_hh transposed for a long backward: WT[n, r] = W_hh[r, n] for the units n of blocks [jb0, jb1),
 * by 8 x 8 register transposes. Why: bwd_dh / bwd_dh1 read W_hh down its columns (a 32-column
 * strip, 128 bytes of every 1 KB row at H 256: a stride the prefetchers follow badly), which at
 * B1 T1000 H256 training on the AMD EPYC (1 thread) took 41% of the call against the forward's
 * 29% for the same bytes read along the rows; once transposed, the backward's dh is the
 * forward's row dot product (dot8). Each item packs its own units' rows at its first B phase
 * (phase 1), which every later phase's item reads after that phase's end. */
AVX2 static void pack_wt(const bwd_args *a, int64_t jb0, int64_t jb1) {
    const int64_t H = a->H, G4 = 4 * H;
    for (int64_t jb = jb0; jb < jb1; ++jb) {
        const int64_t n0 = jb * VL, nv = H - n0 < VL ? H - n0 : VL;
        const VM m = v8_tail(n0, H);
        int64_t r0 = 0;
        for (; r0 + VL <= G4; r0 += VL) {
            V r[8];
            for (int i = 0; i < 8; ++i) r[i] = v8_mload(m, a->Whh + (r0 + i) * H + n0);
            v_transpose8(r);   /* r[u] lane i: W_hh[r0 + i, n0 + u] */
            for (int64_t u = 0; u < nv; ++u) _mm256_storeu_ps(a->WT + (n0 + u) * G4 + r0, r[u]);
        }
        for (; r0 < G4; ++r0)   /* 4H not a multiple of 8 (H odd): the last 4 rows */
            for (int64_t u = 0; u < nv; ++u) a->WT[(n0 + u) * G4 + r0] = a->Whh[r0 * H + n0 + u];
    }
}

/* DH[b, units of blocks [jb0, jb1)) = dG_t[b, :] . WT[unit, :] for every row b, 4 rows per pass
 * (frozen rows keep the dh carried through): dot8's chains and tree, as the forward's. */
AVX2 static void bwd_dh_packed(const bwd_args *a, int64_t t, int64_t jb0, int64_t jb1) {
    const int64_t B = a->B, H = a->H, G4 = 4 * H;
    const float *d = a->dG + t * B * G4;
    for (int64_t jb = jb0; jb < jb1; ++jb) {
        const int64_t n0 = jb * VL;
        const int nv = H - n0 < VL ? (int)(H - n0) : VL;
        const VM m = v8_tail(n0, H);
        for (int64_t b0 = 0; b0 < B; b0 += 4) {
            const int64_t nbat = B - b0 < 4 ? B - b0 : 4;
            V o[4];
            dot8_many(a->WT, G4, n0, nv, d + b0 * G4, G4, nbat, o, 1);
            for (int64_t i = 0; i < nbat; ++i) {
                const int64_t b = b0 + i;
                if (a->len && t >= a->len[b]) continue;
                v8_mstore(a->DH + b * H + n0, m, o[i]);
            }
        }
    }
}

/* Blocks per bwd_dh1 call at B == 1 (its 32 columns per broadcast), else 1: backward items are
 * whole multiples of it. */
static inline int64_t bwd_unit(const bwd_args *a) { return a->B == 1 ? 4 : 1; }

/* Phases (thread_team.h): phase p < T is step t = T-1-p, its item g (blocks [g group, (g + 1)
 * group)) first turns dG[t+1] into those blocks' DH columns (p > 0), then runs their cell: both
 * read and write only the item's own columns of DH and DC, and dG[t+1] is complete at the phase's
 * start. Phase T is the last DH (dh_0). */
AVX2 static void bwd_item(const bwd_args *a, int64_t p, int64_t g) {
    const int64_t T = a->T, t = T - 1 - p, nb = (a->H + VL - 1) / VL;
    const int64_t jb0 = g * a->group, jb1 = jb0 + a->group < nb ? jb0 + a->group : nb;
    if (p > 0 && a->WT) {
        if (p == 1) pack_wt(a, jb0, jb1);
        bwd_dh_packed(a, t + 1, jb0, jb1);
    } else if (p > 0) {
        if (a->B == 1)
            for (int64_t jb = jb0; jb < jb1; jb += 4) bwd_dh1(a, t + 1, jb, jb1 - jb < 4 ? (int)(jb1 - jb) : 4);
        else
            for (int64_t jb = jb0; jb < jb1; ++jb) bwd_dh(a, t + 1, jb * VL);
    }
    if (p < T)
        for (int64_t jb = jb0; jb < jb1; ++jb) bwd_cell(a, t, jb);
}

#define BWD_ITEM(p, g) bwd_item(a, p, g)
AVX2 static void bwd_worker(void *arg, int tid) {
    bwd_args *a = (bwd_args *)arg;
    TEAM_PHASES(&a->ph, tid, a->T + 1, BWD_ITEM)
}

/* ---------------------------------------------------------------- weight and input gradients */
/* out[n, m0..m0+16) (n in [n0, n0 + NN), NN <= 4) += (r0 == 0: =) the sum over r in [r0, r1) in
 * order of L[r * lr + n * ln] * X[r, m], X's rows [0, rx) at x0 and the rest at x1 (M floats
 * each): one chain per output, continued through out from one r chunk to the next. Used as the
 * input gradient dG W_ih: L = dG (rows, 4H), X = W_ih (4H, D), lr = 1, ln = 4H (the weight
 * gradients are weight_gradient_gemm_avx2.h's). NN: a compile-time constant at every call. */
AVX2 INLINE void tn_item(const float *L, int64_t lr, int64_t ln, int64_t r0, int64_t r1, int64_t n0, const int NN,
                         int64_t m0, const float *x0, const float *x1, int64_t rx, int64_t M, float *out) {
    const VM ma = v8_tail(m0, M), mb = v8_tail(m0 + VL, M);
    V s[4][2];
    for (int i = 0; i < NN; ++i) {
        s[i][0] = r0 == 0 ? V_ZERO() : v8_mload(ma, out + (n0 + i) * M + m0);
        s[i][1] = r0 == 0 ? V_ZERO() : v8_mload(mb, out + (n0 + i) * M + m0 + VL);
    }
    for (int64_t r = r0; r < r1; ++r) {
        const float *row = r < rx ? x0 + r * M : x1 + (r - rx) * M;
        const V xa = v8_mload(ma, row + m0), xb = v8_mload(mb, row + m0 + VL);
        const float *g = L + r * lr + n0 * ln;
        for (int i = 0; i < NN; ++i) {
            const V gi = V_SET1(g[i * ln]);
            s[i][0] = V_FMA(gi, xa, s[i][0]);
            s[i][1] = V_FMA(gi, xb, s[i][1]);
        }
    }
    for (int i = 0; i < NN; ++i) {
        v8_mstore(out + (n0 + i) * M + m0, ma, s[i][0]);
        v8_mstore(out + (n0 + i) * M + m0 + VL, mb, s[i][1]);
    }
}

AVX2 static void tn_block(const float *L, int64_t lr, int64_t ln, int64_t r0, int64_t r1, int64_t n0, int nn,
                          int64_t m0, const float *x0, const float *x1, int64_t rx, int64_t M, float *out) {
    switch (nn) {
    case 1: tn_item(L, lr, ln, r0, r1, n0, 1, m0, x0, x1, rx, M, out); break;
    case 2: tn_item(L, lr, ln, r0, r1, n0, 2, m0, x0, x1, rx, M, out); break;
    case 3: tn_item(L, lr, ln, r0, r1, n0, 3, m0, x0, x1, rx, M, out); break;
    default: tn_item(L, lr, ln, r0, r1, n0, 4, m0, x0, x1, rx, M, out); break;
    }
}

/* Rows of the sum per pass over a thread's outputs: the X rows of a chunk (~TN_ROWS * M floats)
 * stay in L2 while every output block takes them (one pass over all R rows per 16-column block
 * streamed X and dG from L3 at B4 T1000: training 2.3x slower than the stepwise route). */
#define TN_ROWS 128

typedef struct {
    const float *L;
    int64_t lr, ln, R, N;
    const float *a0, *a1;   /* X: rows [0, ra) at a0, the rest at a1 */
    int64_t ra, ca;
    float *out;
    int nthreads;
} tn_args;

/* Work items: (4-row block of out, 16-column chunk); thread t takes a fixed contiguous range of
 * them (rows or columns: whichever there are more of, as a B = 1 input gradient has one row
 * block), so no output depends on the team size. */
AVX2 static void tn_worker(void *arg) {
    tn_args *a = (tn_args *)arg;
    team_t tm = team(a->nthreads);
    const int64_t nblk = (a->N + 3) / 4, mc = (a->ca + 2 * VL - 1) / (2 * VL), items = nblk * mc;
    const int64_t lo = items * tm.tid / tm.nth, hi = items * (tm.tid + 1) / tm.nth;
    for (int64_t r0 = 0; r0 < a->R || r0 == 0; r0 += TN_ROWS) {   /* R == 0: one pass writing zeros */
        const int64_t r1 = a->R - r0 < TN_ROWS ? a->R : r0 + TN_ROWS;
        for (int64_t it = lo; it < hi; ++it) {
            const int64_t n0 = 4 * (it / mc), m0 = 2 * VL * (it % mc);
            const int nn = a->N - n0 < 4 ? (int)(a->N - n0) : 4;
            tn_block(a->L, a->lr, a->ln, r0, r1, n0, nn, m0, a->a0, a->a1, a->ra, a->ca, a->out);
        }
    }
}
#endif /* LSTM_X86 */

/* ---------------------------------------------------------------- Python bindings */
static PyObject *py_available(PyObject *self, PyObject *unused) { return PyBool_FromLong(avx2_ok()); }

/* A worker on torch's OpenMP team, the GIL released (every entry point's last step). */
static void launch(void (*fn)(void *), void *arg, int nthreads) {
    resolve_gomp();
    Py_BEGIN_ALLOW_THREADS
    run(fn, arg, nthreads);
    Py_END_ALLOW_THREADS
}

#define NEED_AVX2()                                                                                \
    if (!avx2_ok()) { PyErr_SetString(PyExc_RuntimeError, "these kernels need AVX2 and FMA"); return NULL; }

#if LSTM_X86
/* The forward on its team: claimed phases over the unit blocks, saving calls on OpenMP's team,
 * the others as the inference policy says. */
static void run_forward(fwd_args *a) {
    const int64_t nb = (a->H + VL - 1) / VL;
    a->nthreads = team_size(a->nthreads, nb);
    a->group = team_item_group(nb, a->nthreads);
    team_phases_init(&a->ph, a->nthreads, (nb + a->group - 1) / a->group, a->T + (a->T > 1));
    launch_team(fwd_worker, a, &a->ph, a->G ? &train_policy : &infer_policy);
}
#endif

static PyObject *py_forward(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 20) { PyErr_SetString(PyExc_TypeError, "forward takes 20 arguments"); return NULL; }
    NEED_AVX2();
#if LSTM_X86
    void *p[14];
    if (ptrs(args, 14, p)) return NULL;
    fwd_args a = {p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9], p[10], p[11], p[12], p[13],
                  PyLong_AsLongLong(args[14]), PyLong_AsLongLong(args[15]), PyLong_AsLongLong(args[16]),
                  PyLong_AsLongLong(args[17]), (int)PyLong_AsLong(args[18])};
    a.len = args[19] == Py_None ? NULL : PyLong_AsVoidPtr(args[19]);
    if (PyErr_Occurred()) return NULL;
    run_forward(&a);
#endif
    Py_RETURN_NONE;
}

static PyObject *py_backward(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 14 && nargs != 15) {
        PyErr_SetString(PyExc_TypeError, "backward takes 14 or 15 arguments");
        return NULL;
    }
    NEED_AVX2();
#if LSTM_X86
    void *p[9];
    if (ptrs(args, 9, p)) return NULL;
    bwd_args a = {p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], PyLong_AsLongLong(args[9]),
                  PyLong_AsLongLong(args[10]), PyLong_AsLongLong(args[11]), (int)PyLong_AsLong(args[12])};
    a.len = args[13] == Py_None ? NULL : PyLong_AsVoidPtr(args[13]);
    a.WT = nargs == 15 && args[14] != Py_None ? PyLong_AsVoidPtr(args[14]) : NULL;   /* (H, 4H) floats */
    if (PyErr_Occurred()) return NULL;
    const int64_t nb = (a.H + VL - 1) / VL, units = (nb + bwd_unit(&a) - 1) / bwd_unit(&a);
    a.nthreads = team_size(a.nthreads, units);
    a.group = team_item_group(units, a.nthreads) * bwd_unit(&a);
    team_phases_init(&a.ph, a.nthreads, (nb + a.group - 1) / a.group, a.T + 1);
    launch_team(bwd_worker, &a, &a.ph, &train_policy);
#endif
    Py_RETURN_NONE;
}

static PyObject *py_weight_grad(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 15) { PyErr_SetString(PyExc_TypeError, "weight_grad takes 15 arguments"); return NULL; }
    NEED_AVX2();
#if LSTM_X86
    /* dG, N, R, a0, rows_a0, a1, cols_a, b0, rows_b0, b1, cols_b, out_a, out_b, scratch, nthreads */
    static const int is_ptr[15] = {1, 0, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 1, 1, 0};
    void *q[15] = {0};
    int64_t v[15] = {0};
    for (int k = 0; k < 15; ++k) {
        if (is_ptr[k]) {
            if (ptrs(args + k, 1, &q[k])) return NULL;
        } else {
            v[k] = PyLong_AsLongLong(args[k]);
        }
    }
    if (PyErr_Occurred()) return NULL;
    const int64_t N = v[1], R = v[2], ca = v[6], cb = q[12] ? v[10] : 0;
    wgg_args a = {q[0], {{q[3], q[5], v[4], ca}, {q[7], q[9], v[8], cb}}, {q[11], q[12]}, q[13], N, R, 1};
    if ((ca > 0 && !a.out[0]) || (ca + cb > 0 && !a.scratch)
        || (R > 0 && (!a.dG || (ca > 0 && (!q[3] || (v[4] < R && !q[5]))) || (cb > 0 && (!q[7] || (v[8] < R && !q[9])))))) {
        PyErr_SetString(PyExc_ValueError, "weight_grad: a missing operand");
        return NULL;
    }
    if (N == 0 || ca + cb == 0) Py_RETURN_NONE;
    /* at most the thread count the scratch was sized for, and one thread per 16-column block */
    a.nthreads = team_size((int)v[14], wgg_ceil(N, WG8_NR));
    launch(wg8_worker, &a, a.nthreads);
#endif
    Py_RETURN_NONE;
}

/* input_grad(dG, W, rows, G4, D, out, nthreads): out (rows, D) = dG (rows, G4) W (G4, D), each
 * output one chain over r = 0..G4-1 in order; threads own fixed ranges of output blocks. */
static PyObject *py_input_grad(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 7) { PyErr_SetString(PyExc_TypeError, "input_grad takes 7 arguments"); return NULL; }
    NEED_AVX2();
#if LSTM_X86
    void *dG, *W, *out;
    if (ptrs(args, 1, &dG) || ptrs(args + 1, 1, &W) || ptrs(args + 5, 1, &out)) return NULL;
    const int64_t rows = PyLong_AsLongLong(args[2]), G4 = PyLong_AsLongLong(args[3]), D = PyLong_AsLongLong(args[4]);
    const int nth = (int)PyLong_AsLong(args[6]);
    if (PyErr_Occurred()) return NULL;
    if (!dG || !W || !out) { PyErr_SetString(PyExc_ValueError, "input_grad: a missing operand"); return NULL; }
    tn_args a = {dG, 1, G4, G4, rows, W, NULL, G4, D, out, 0};
    a.nthreads = team_size(nth, (rows + 3) / 4 * (D / (2 * VL) + 1));
    launch(tn_worker, &a, a.nthreads);
#endif
    Py_RETURN_NONE;
}

/* weight_grad_scratch(N, M, R, nthreads) -> the floats of scratch weight_grad needs. */
static PyObject *py_weight_grad_scratch(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) { PyErr_SetString(PyExc_TypeError, "weight_grad_scratch takes 4 arguments"); return NULL; }
    const int64_t N = PyLong_AsLongLong(args[0]), M = PyLong_AsLongLong(args[1]), nt = PyLong_AsLongLong(args[3]);
    if (PyErr_Occurred()) return NULL;
    return PyLong_FromLongLong(wg8_scratch_floats(N, M, nt < 1 ? 1 : nt));
}

/* ---------------------------------------------------------------- autocast's operands and outputs */
/* float -> bf16, round to nearest even, every NaN -> 0xFFFF: the bits torch's (vectorized)
 * float -> bfloat16 tensor cast gives on a CPU without AVX512-BF16, the only CPUs this module
 * serves (checked bit for bit in tests/test_small_batch.py). */
static inline uint16_t bf16_rne(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0xffff;
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

AVX2 static void bf16_round_floats(const void *src, int src_bf16, float *dst, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
        const uint32_t u = (uint32_t)(src_bf16 ? ((const uint16_t *)src)[i] : bf16_rne(((const float *)src)[i])) << 16;
        memcpy(dst + i, &u, 4);
    }
}

AVX2 static void bf16_narrow_floats(const float *src, uint16_t *dst, int64_t n) {
    for (int64_t i = 0; i < n; ++i) dst[i] = bf16_rne(src[i]);
}

/* bf16_round(src, src_is_bf16, dst, n): dst (n floats) = src rounded to bf16 and back (a bf16 src
 * widened): under CPU autocast the x and h_0 the float32 kernels take (x.to(bfloat16).float()).
 * bf16_narrow(src, dst, n): n floats to bf16, the outputs' cast. Addresses, so the fast path
 * (lstm_fast/ops/fast_path.py) keeps every float32 operand of a call in one scratch buffer. On
 * the calling thread: a small-batch call's operands are small. */
static PyObject *py_bf16_round(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) { PyErr_SetString(PyExc_TypeError, "bf16_round takes 4 arguments"); return NULL; }
    void *p[1], *d[1];
    if (ptrs(args, 1, p) || ptrs(args + 2, 1, d)) return NULL;
    const int src_bf16 = PyObject_IsTrue(args[1]);
    const int64_t n = PyLong_AsLongLong(args[3]);
    if (src_bf16 < 0 || PyErr_Occurred()) return NULL;
    if (!p[0] || !d[0] || n < 0) { PyErr_SetString(PyExc_ValueError, "bf16_round: a missing operand"); return NULL; }
#if LSTM_X86
    bf16_round_floats(p[0], src_bf16, (float *)d[0], n);
#endif
    Py_RETURN_NONE;
}

static PyObject *py_bf16_narrow(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) { PyErr_SetString(PyExc_TypeError, "bf16_narrow takes 3 arguments"); return NULL; }
    void *p[2];
    if (ptrs(args, 2, p)) return NULL;
    const int64_t n = PyLong_AsLongLong(args[2]);
    if (PyErr_Occurred()) return NULL;
    if (!p[0] || !p[1] || n < 0) { PyErr_SetString(PyExc_ValueError, "bf16_narrow: a missing operand"); return NULL; }
#if LSTM_X86
    bf16_narrow_floats((const float *)p[0], (uint16_t *)p[1], n);
#endif
    Py_RETURN_NONE;
}

/* forward_autocast(x, x_is_bf16, w_ih, w_hh, b_ih, b_hh, h0, h0_is_bf16, c0, c0_is_bf16, Y, h_n, c_n,
 * B, D, H, nthreads): one step (T = 1) under CPU autocast to bf16, no saving, the casts of
 * lstm_fast.ops.fast_path's autocast call in one C call: x and h_0 rounded to bf16 (a bf16 one
 * widened), c_0 as given (a bf16 one widened), the float32 forward on the float32 weights as they
 * are, Y, h_n, c_n (bf16) rounded to nearest even. h0 / c0 None: zeros. The float32 operands live
 * on this call's stack (or the heap past 32 KB), so the call allocates no tensor: the Python
 * scratch, casts and narrowings this replaces cost ~5 us a call (AMD EPYC, B = 1). */
#define AUTOCAST_STACK_FLOATS 8192
static PyObject *py_forward_autocast(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 17) { PyErr_SetString(PyExc_TypeError, "forward_autocast takes 17 arguments"); return NULL; }
    NEED_AVX2();
    void *x, *w[4], *h0, *c0, *out[3];
    if (ptrs(args, 1, &x) || ptrs(args + 2, 4, w) || ptrs(args + 6, 1, &h0) || ptrs(args + 8, 1, &c0)
        || ptrs(args + 10, 3, out)) return NULL;
    const int xb = PyObject_IsTrue(args[1]), hb = PyObject_IsTrue(args[7]), cb = PyObject_IsTrue(args[9]);
    const int64_t B = PyLong_AsLongLong(args[13]), D = PyLong_AsLongLong(args[14]), H = PyLong_AsLongLong(args[15]);
    const int nth = (int)PyLong_AsLong(args[16]);
    if (xb < 0 || hb < 0 || cb < 0 || PyErr_Occurred()) return NULL;
    if (!x || !w[0] || !w[1] || !out[0] || !out[1] || !out[2] || B < 1 || D < 1 || H < 1) {
        PyErr_SetString(PyExc_ValueError, "forward_autocast: a missing operand or an empty shape");
        return NULL;
    }
#if LSTM_X86
    const int64_t nx = B * D, ns = B * H, n = nx + 5 * ns;   /* x | h_0 | c_0 | h_n | c_n | Y */
    float stack[AUTOCAST_STACK_FLOATS];
    float *f = n <= AUTOCAST_STACK_FLOATS ? stack : malloc((size_t)n * sizeof(float));
    if (!f) return PyErr_NoMemory();
    float *xf = f, *hf = xf + nx, *cf = hf + ns, *hnf = cf + ns, *cnf = hnf + ns, *yf = cnf + ns;
    const float *cp = cf;
    bf16_round_floats(x, xb, xf, nx);
    if (h0) bf16_round_floats(h0, hb, hf, ns);
    else memset(hf, 0, (size_t)ns * sizeof(float));
    if (!c0) memset(cf, 0, (size_t)ns * sizeof(float));
    else if (cb) bf16_round_floats(c0, 1, cf, ns);   /* exact: a bf16 c_0 is only widened */
    else cp = c0;                                    /* float32 c_0: as given */
    fwd_args a = {xf, w[0], w[1], w[2], w[3], hf, cp, yf, hnf, cnf, NULL, NULL, NULL, NULL, 1, B, D, H, nth};
    a.len = NULL;
    run_forward(&a);
    bf16_narrow_floats(yf, (uint16_t *)out[0], ns);
    bf16_narrow_floats(hnf, (uint16_t *)out[1], ns);
    bf16_narrow_floats(cnf, (uint16_t *)out[2], ns);
    if (f != stack) free(f);
#endif
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"available", py_available, METH_NOARGS, "whether this CPU runs these kernels (AVX2 and FMA)"},
    {"forward", (PyCFunction)(void (*)(void))py_forward, METH_FASTCALL, "small-batch LSTM forward over T steps"},
    {"backward", (PyCFunction)(void (*)(void))py_backward, METH_FASTCALL, "small-batch backward through time"},
    {"weight_grad", (PyCFunction)(void (*)(void))py_weight_grad, METH_FASTCALL,
     "dG^T A (and dG^T B), fixed order: bitwise independent of the thread count"},
    {"input_grad", (PyCFunction)(void (*)(void))py_input_grad, METH_FASTCALL,
     "dG W, fixed order: bitwise independent of the thread count"},
    {"weight_grad_scratch", (PyCFunction)(void (*)(void))py_weight_grad_scratch, METH_FASTCALL,
     "scratch floats weight_grad needs (none)"},
    {"bf16_round", (PyCFunction)(void (*)(void))py_bf16_round, METH_FASTCALL,
     "bf16_round(src, src_is_bf16, dst, n): floats rounded to bf16 and back (autocast's operands)"},
    {"bf16_narrow", (PyCFunction)(void (*)(void))py_bf16_narrow, METH_FASTCALL,
     "bf16_narrow(src, dst, n): floats to bf16, round to nearest even (autocast's outputs)"},
    {"forward_autocast", (PyCFunction)(void (*)(void))py_forward_autocast, METH_FASTCALL,
     "one step under CPU autocast to bf16: operands rounded, the float32 forward, bf16 outputs"},
    TEAM_TEST_METHODS
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_small_batch_avx2_kernels",
                                    "Small-batch LSTM kernels (float32, AVX2 + FMA, weights in nn.LSTM layout).", -1,
                                    methods};

PyMODINIT_FUNC PyInit__small_batch_avx2_kernels(void) { return PyModule_Create(&module); }
