/* The LSTM weight gradients as one packed, register-blocked AVX-512 GEMM (float32), included by
 * sequence_kernels.c.
 *
 * Shapes: R = T*B rows (the reduction), N = 4H gate units, A = [A0 | A1] (R, M = M0 + M1) the
 * right operands side by side: A0 = X (R, D), A1 = [h_0; Y[:-1]] (R, H), each read in place from
 * up to two row segments (rows < rows0 from p0, the rest from p1: h_0 then Y, no concatenation).
 *   out0 (N, M0) = dG^T A0   (dW_ih),   out1 (N, M1) = dG^T A1   (dW_hh).
 *
 * Why this shape: both products share dG, so the kernel computes one C^T = A^T dG (M x N): dG is
 * packed once for both, M = D + H covers the narrow d2l input (D = 28) with the hidden columns
 * (6-row tiles: 288 rows for 284, 1.4% padding), and N = 4H fills 64-column tiles exactly.
 *
 * How (BLIS-style): the reduction runs in blocks of KC rows; per block the threads pack
 *   Ap[mb][k][MR]: MR consecutive columns of A per row k (the broadcast operand, zero past M),
 *   Bp[nb][k][NR]: NR consecutive columns of dG per row k (the vector operand, zero past N),
 * (each thread packs the B panels of its own column blocks and its own copy of Ap: no barriers,
which on a shared 2-core host cost a scheduling quantum each), then each thread multiplies its own tiles
 * (MR x NR: 6 x 64 = 24 zmm accumulators, 4 vector loads and 6 broadcasts per k; the KC x 64
 * B panel stays in L1 across the tiles of one column block) into a padded C^T buffer Cp
 * (first block stores, later blocks add). At the end each thread transposes its own Cp rows of
 * 16 gate units into out0 / out1 (16 x 16 register transposes).
 * The thread count passed must be the team's (the scratch holds one Ap per thread).
 * Each output tile is summed by one thread in one fixed order (k within a block, blocks in order),
 * whatever the thread count: the result is bitwise independent of it.
 *
 * scratch: weight_grad_scratch_floats(N, M, R, nthreads) floats (the caller passes a reused buffer: no page
 * faults per call). */
#ifndef LSTM_FAST_WEIGHT_GRADIENT_GEMM_H
#define LSTM_FAST_WEIGHT_GRADIENT_GEMM_H
#include "kernel_support.h"
#include "weight_gradient_operands.h"

#define WGG_MR 6
#define WGG_NV 4
#define WGG_NR (16 * WGG_NV)
#define WGG_KC 128

/* Cp rows: M padded to the 6-row tiles and to the 16-row transposes. */
static int64_t wgg_mpad(int64_t M) {
    int64_t m6 = wgg_ceil(M, WGG_MR) * WGG_MR, m16 = wgg_ceil(M, 16) * 16;
    return m6 > m16 ? m6 : m16;
}

static int64_t weight_grad_scratch_floats(int64_t N, int64_t M, int64_t R, int64_t nthreads) {
    (void)R;
    const int64_t npad = wgg_ceil(N, WGG_NR) * WGG_NR, mpad = wgg_mpad(M);
    return npad * WGG_KC + mpad * npad + nthreads * mpad * WGG_KC + 16;   /* Bp, Cp, Ap per thread, alignment */
}

#if LSTM_X86
/* Cp[MR rows, NR cols at ldc] (+)= Ap (kc x MR) times Bp (kc x NR). */
AVX512 static void wgg_kernel(int64_t kc, const float *ap, const float *bp, float *cp, int64_t ldc, int first) {
    __m512 c00 = _mm512_setzero_ps(), c01 = c00, c02 = c00, c03 = c00, c10 = c00, c11 = c00, c12 = c00, c13 = c00;
    __m512 c20 = c00, c21 = c00, c22 = c00, c23 = c00, c30 = c00, c31 = c00, c32 = c00, c33 = c00;
    __m512 c40 = c00, c41 = c00, c42 = c00, c43 = c00, c50 = c00, c51 = c00, c52 = c00, c53 = c00;
#define WGG_ROW(i)                                                                                    \
    {                                                                                                 \
        __m512 x = _mm512_set1_ps(ap[i]);                                                             \
        c##i##0 = _mm512_fmadd_ps(x, b0, c##i##0);                                                    \
        c##i##1 = _mm512_fmadd_ps(x, b1, c##i##1);                                                    \
        c##i##2 = _mm512_fmadd_ps(x, b2, c##i##2);                                                    \
        c##i##3 = _mm512_fmadd_ps(x, b3, c##i##3);                                                    \
    }
    for (int64_t k = 0; k < kc; ++k, ap += WGG_MR, bp += WGG_NR) {
        __m512 b0 = _mm512_load_ps(bp), b1 = _mm512_load_ps(bp + 16);
        __m512 b2 = _mm512_load_ps(bp + 32), b3 = _mm512_load_ps(bp + 48);
        WGG_ROW(0) WGG_ROW(1) WGG_ROW(2) WGG_ROW(3) WGG_ROW(4) WGG_ROW(5)
    }
#undef WGG_ROW
#define WGG_OUT(i)                                                                                    \
    {                                                                                                 \
        float *o = cp + i * ldc;                                                                      \
        if (!first) {                                                                                 \
            c##i##0 = _mm512_add_ps(c##i##0, _mm512_load_ps(o));                                      \
            c##i##1 = _mm512_add_ps(c##i##1, _mm512_load_ps(o + 16));                                 \
            c##i##2 = _mm512_add_ps(c##i##2, _mm512_load_ps(o + 32));                                 \
            c##i##3 = _mm512_add_ps(c##i##3, _mm512_load_ps(o + 48));                                 \
        }                                                                                             \
        _mm512_store_ps(o, c##i##0);                                                                  \
        _mm512_store_ps(o + 16, c##i##1);                                                             \
        _mm512_store_ps(o + 32, c##i##2);                                                             \
        _mm512_store_ps(o + 48, c##i##3);                                                             \
    }
    WGG_OUT(0) WGG_OUT(1) WGG_OUT(2) WGG_OUT(3) WGG_OUT(4) WGG_OUT(5)
#undef WGG_OUT
}

/* Bp[nb][k][0..NR) = dG[r0 + k, nb*NR ..] (zero past N), for column blocks [lo, hi). */
AVX512 static void wgg_pack_b(const wgg_args *a, int64_t r0, int64_t kc, float *bp, int64_t lo, int64_t hi) {
    const int64_t N = a->N;
    for (int64_t nb = lo; nb < hi; ++nb) {
        float *dst = bp + nb * WGG_KC * WGG_NR;
        const int64_t n0 = nb * WGG_NR;
        if (n0 + WGG_NR <= N) {
            for (int64_t k = 0; k < kc; ++k) {
                const float *src = a->dG + (r0 + k) * N + n0;
                for (int v = 0; v < WGG_NV; ++v) _mm512_store_ps(dst + k * WGG_NR + 16 * v, _mm512_loadu_ps(src + 16 * v));
            }
        } else {
            for (int64_t k = 0; k < kc; ++k) {
                const float *src = a->dG + (r0 + k) * N;
                for (int v = 0; v < WGG_NV; ++v) {
                    const int64_t j = n0 + 16 * v;
                    __m512 x = j < N ? _mm512_maskz_loadu_ps(tail_mask(j, N), src + j) : _mm512_setzero_ps();
                    _mm512_store_ps(dst + k * WGG_NR + 16 * v, x);
                }
            }
        }
    }
}

/* Ap[mb][k][0..MR) = A[r0 + k, mb*MR ..] (zero past M), for row blocks [lo, hi). */
AVX512 static void wgg_pack_a(const wgg_args *a, int64_t r0, int64_t kc, float *ap, int64_t lo, int64_t hi) {
    const int64_t M0 = a->a[0].cols, M = M0 + a->a[1].cols;
    for (int64_t mb = lo; mb < hi; ++mb) {
        float *dst = ap + mb * WGG_KC * WGG_MR;
        const int64_t m0 = mb * WGG_MR;
        const int single = m0 + WGG_MR <= M0 || (m0 >= M0 && m0 + WGG_MR <= M);
        if (single) {   /* the MR columns lie in one part: one masked 6-float copy per row */
            const int q = m0 >= M0;
            const int64_t c0 = m0 - (q ? M0 : 0);
            for (int64_t k = 0; k < kc; ++k) {
                const float *src = wgg_row(&a->a[q], r0 + k) + c0;
                _mm512_mask_storeu_ps(dst + k * WGG_MR, 0x3F, _mm512_maskz_loadu_ps(0x3F, src));
            }
        } else {        /* straddles the parts or the end: column by column */
            for (int64_t k = 0; k < kc; ++k) {
                const float *s0 = wgg_row(&a->a[0], r0 + k);
                const float *s1 = a->a[1].cols ? wgg_row(&a->a[1], r0 + k) : NULL;
                for (int i = 0; i < WGG_MR; ++i) {
                    const int64_t m = m0 + i;
                    dst[k * WGG_MR + i] = m < M0 ? s0[m] : m < M ? s1[m - M0] : 0.0f;
                }
            }
        }
    }
}

/* out_q[n, c] = Cp[m, n] for this thread's 16-unit blocks n (16 x 16 register transposes). */
AVX512 static void wgg_unpack(const wgg_args *a, const float *cp, int64_t npad, int64_t mpad, int64_t lo, int64_t hi) {
    const int64_t N = a->N, M0 = a->a[0].cols, M = M0 + a->a[1].cols;
    for (int64_t jb = lo; jb < hi; ++jb) {
        const int64_t n0 = jb * 16, nn = N - n0 < 16 ? N - n0 : 16;
        for (int64_t m0 = 0; m0 < M; m0 += 16) {
            __m512 r[16];
            for (int i = 0; i < 16; ++i) r[i] = m0 + i < mpad ? _mm512_load_ps(cp + (m0 + i) * npad + n0) : _mm512_setzero_ps();
            v_transpose16(r);   /* r[u] lane i: Cp[m0 + i, n0 + u] */
            for (int64_t u = 0; u < nn; ++u) {
                const int64_t n = n0 + u;
                if (m0 + 16 <= M0) {
                    _mm512_storeu_ps(a->out[0] + n * M0 + m0, r[u]);
                } else if (m0 >= M0 && m0 + 16 <= M) {
                    _mm512_storeu_ps(a->out[1] + n * (M - M0) + (m0 - M0), r[u]);
                } else {
                    float tmp[16];
                    _mm512_storeu_ps(tmp, r[u]);
                    for (int i = 0; i < 16 && m0 + i < M; ++i) {
                        const int64_t m = m0 + i;
                        if (m < M0) a->out[0][n * M0 + m] = tmp[i];
                        else a->out[1][n * (M - M0) + (m - M0)] = tmp[i];
                    }
                }
            }
        }
    }
}

AVX512 static void wgg_worker(void *arg) {
    const wgg_args *a = (const wgg_args *)arg;
    team_t tm = team(a->nthreads);
    const int64_t N = a->N, M = a->a[0].cols + a->a[1].cols, R = a->R;
    const int64_t npad = wgg_ceil(N, WGG_NR) * WGG_NR, mpad = wgg_mpad(M);
    const int64_t nmb = wgg_ceil(M, WGG_MR), nnb = npad / WGG_NR;
    float *base = (float *)(((uintptr_t)a->scratch + 63) & ~(uintptr_t)63);
    float *bp = base, *cp = bp + npad * WGG_KC, *ap = cp + mpad * npad + tm.tid * mpad * WGG_KC;
    /* This thread's column blocks: it packs their B panels, computes their tiles and writes their
     * output rows, so the threads never wait for each other. */
    const int64_t blo = nnb * tm.tid / tm.nth, bhi = nnb * (tm.tid + 1) / tm.nth;
    if (blo == bhi) return;
    if (R == 0)
        for (int64_t m = 0; m < nmb * WGG_MR; ++m) memset(cp + m * npad + blo * WGG_NR, 0, (bhi - blo) * WGG_NR * sizeof(float));
    for (int64_t r0 = 0; r0 < R; r0 += WGG_KC) {
        const int64_t kc = R - r0 < WGG_KC ? R - r0 : WGG_KC;
        wgg_pack_a(a, r0, kc, ap, 0, nmb);   /* every thread its own copy (A is the narrow operand) */
        wgg_pack_b(a, r0, kc, bp, blo, bhi);
        for (int64_t nb = blo; nb < bhi; ++nb)   /* column block outer: its B panel stays in L1 */
            for (int64_t mb = 0; mb < nmb; ++mb)
                wgg_kernel(kc, ap + mb * WGG_KC * WGG_MR, bp + nb * WGG_KC * WGG_NR,
                           cp + mb * WGG_MR * npad + nb * WGG_NR, npad, r0 == 0);
    }
    for (int64_t m = nmb * WGG_MR; m < mpad; ++m)   /* Cp rows past the 6-row tiles (read by the transposes) */
        memset(cp + m * npad + blo * WGG_NR, 0, (bhi - blo) * WGG_NR * sizeof(float));
    const int64_t nj = wgg_ceil(N, 16), jhi = bhi * (WGG_NR / 16);
    wgg_unpack(a, cp, npad, mpad, blo * (WGG_NR / 16), jhi < nj ? jhi : nj);
}
#endif /* LSTM_X86 */
#endif /* LSTM_FAST_WEIGHT_GRADIENT_GEMM_H */
