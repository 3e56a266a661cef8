/* The LSTM weight gradients as one packed, register-blocked GEMM for AVX2 + FMA (float32),
 * included by small_batch_avx2_kernels.c (its weight_grad entry point, which weight_gradient.py
 * binds on CPUs without AVX-512: the small-batch and the whole-sequence routes' dW there).
 *
 * Shapes: R = T*B rows (the reduction), N = 4H gate units, A = [A0 | A1] (R, M = M0 + M1) the
 * right operands side by side (A0 = X (R, D), A1 = [h_0; Y[:-1]] (R, H)), each read in place from
 * up to two row segments (rows < rows0 from p0, the rest from p1).
 *   out0 (N, M0) = dG^T A0   (dW_ih),   out1 (N, M1) = dG^T A1   (dW_hh).
 *
 * The structure of weight_gradient_gemm.h (the AVX-512 one; read its header) on 8-lane vectors:
 * one C^T = A^T dG (M x N) for both products, the reduction in blocks of KC rows, per block each
 * thread packs the dG panels of its own 16-column blocks, Bp[nb][k][16], and its own copy of
 *   Ap[mb][k][6] (6 consecutive columns of A per row k, zero past M), then multiplies its tiles:
 * 6 x 16 = 12 ymm accumulators, 2 vector loads and 6 broadcasts per k (the KC x 16 panel, 16 KB,
 * stays in L1 across the tiles of its column block), into a padded C^T buffer Cp; at the end each
 * thread transposes its own Cp columns into out0 / out1 (8 x 8 register transposes).
 *
 * Order: every output is one FMA chain over r = 0..R-1 ascending, continued through Cp from one
 * block to the next (the accumulators start from Cp), summed by the one thread that owns its
 * column block: bitwise independent of the thread count, and bitwise the result of the
 * unpacked fixed-order product this replaced (same chain; at the d2l shape on the AVX2 EPYC it
 * ran 2.7x slower than this, oneDNN 1.5x: see weight_gradient.py).
 *
 * scratch: wg8_scratch_floats(N, M, nthreads) floats (the caller passes a pooled buffer). */
#ifndef LSTM_FAST_WEIGHT_GRADIENT_GEMM_AVX2_H
#define LSTM_FAST_WEIGHT_GRADIENT_GEMM_AVX2_H
#include "kernel_support.h"
#include "weight_gradient_operands.h"

#define WG8_MR 6
#define WG8_NR 16
#define WG8_KC 256

/* Cp rows: M padded to the 6-row tiles and to the 8-row transposes. */
static int64_t wg8_mpad(int64_t M) {
    const int64_t m6 = wgg_ceil(M, WG8_MR) * WG8_MR, m8 = wgg_ceil(M, 8) * 8;
    return m6 > m8 ? m6 : m8;
}

static int64_t wg8_scratch_floats(int64_t N, int64_t M, int64_t nthreads) {
    const int64_t npad = wgg_ceil(N, WG8_NR) * WG8_NR, mpad = wg8_mpad(M);
    return npad * WG8_KC + mpad * npad + nthreads * mpad * WG8_KC + 16;   /* Bp, Cp, Ap per thread, alignment */
}

#if LSTM_X86
/* Cp[6 rows, 16 cols at ldc] = (first ? 0 : Cp) + Ap (kc x 6) times Bp (kc x 16), k in order. */
AVX2 static void wg8_kernel(int64_t kc, const float *ap, const float *bp, float *cp, int64_t ldc, int first) {
#define WG8_LOAD(i)                                                                                   \
    __m256 c##i##0 = first ? _mm256_setzero_ps() : _mm256_loadu_ps(cp + i * ldc);                     \
    __m256 c##i##1 = first ? _mm256_setzero_ps() : _mm256_loadu_ps(cp + i * ldc + 8);
    WG8_LOAD(0) WG8_LOAD(1) WG8_LOAD(2) WG8_LOAD(3) WG8_LOAD(4) WG8_LOAD(5)
#undef WG8_LOAD
#define WG8_ROW(i)                                                                                    \
    {                                                                                                 \
        const __m256 x = _mm256_broadcast_ss(ap + i);                                                 \
        c##i##0 = _mm256_fmadd_ps(x, b0, c##i##0);                                                    \
        c##i##1 = _mm256_fmadd_ps(x, b1, c##i##1);                                                    \
    }
    for (int64_t k = 0; k < kc; ++k, ap += WG8_MR, bp += WG8_NR) {
        const __m256 b0 = _mm256_loadu_ps(bp), b1 = _mm256_loadu_ps(bp + 8);
        WG8_ROW(0) WG8_ROW(1) WG8_ROW(2) WG8_ROW(3) WG8_ROW(4) WG8_ROW(5)
    }
#undef WG8_ROW
#define WG8_STORE(i)                                                                                  \
    _mm256_storeu_ps(cp + i * ldc, c##i##0);                                                          \
    _mm256_storeu_ps(cp + i * ldc + 8, c##i##1);
    WG8_STORE(0) WG8_STORE(1) WG8_STORE(2) WG8_STORE(3) WG8_STORE(4) WG8_STORE(5)
#undef WG8_STORE
}

/* Bp[nb][k][0..16) = dG[r0 + k, nb*16 ..] (zero past N), for column blocks [lo, hi). */
AVX2 static void wg8_pack_b(const wgg_args *a, int64_t r0, int64_t kc, float *bp, int64_t lo, int64_t hi) {
    const int64_t N = a->N;
    for (int64_t nb = lo; nb < hi; ++nb) {
        float *dst = bp + nb * WG8_KC * WG8_NR;
        const int64_t n0 = nb * WG8_NR;
        const __m256i m0 = v8_tail(n0, N), m1 = v8_tail(n0 + 8, N);
        for (int64_t k = 0; k < kc; ++k) {
            const float *src = a->dG + (r0 + k) * N + n0;
            _mm256_storeu_ps(dst + k * WG8_NR, v8_mload(m0, src));
            _mm256_storeu_ps(dst + k * WG8_NR + 8, n0 + 8 < N ? v8_mload(m1, src + 8) : _mm256_setzero_ps());
        }
    }
}

/* Ap[mb][k][0..6) = A[r0 + k, mb*6 ..] (zero past M), for every row block. */
AVX2 static void wg8_pack_a(const wgg_args *a, int64_t r0, int64_t kc, float *ap) {
    const int64_t M0 = a->a[0].cols, M = M0 + a->a[1].cols, nmb = wgg_ceil(M, WG8_MR);
    for (int64_t mb = 0; mb < nmb; ++mb) {
        float *dst = ap + mb * WG8_KC * WG8_MR;
        const int64_t m0 = mb * WG8_MR;
        if (m0 + WG8_MR <= M0 || (m0 >= M0 && m0 + WG8_MR <= M)) {   /* in one part: 6 floats a row */
            const int q = m0 >= M0;
            const int64_t c0 = m0 - (q ? M0 : 0);
            for (int64_t k = 0; k < kc; ++k) memcpy(dst + k * WG8_MR, wgg_row(&a->a[q], r0 + k) + c0, WG8_MR * sizeof(float));
        } else {        /* straddles the parts or the end: column by column */
            for (int64_t k = 0; k < kc; ++k) {
                const float *s0 = M0 ? wgg_row(&a->a[0], r0 + k) : NULL;
                const float *s1 = M > M0 ? wgg_row(&a->a[1], r0 + k) : NULL;
                for (int i = 0; i < WG8_MR; ++i) {
                    const int64_t m = m0 + i;
                    dst[k * WG8_MR + i] = m < M0 ? s0[m] : m < M ? s1[m - M0] : 0.0f;
                }
            }
        }
    }
}

/* out_q[n, c] = Cp[m, n] for this thread's 8-unit blocks [lo, hi) of n (8 x 8 transposes). The
 * 8 Cp rows of a column block are read along their length (m0 outer): with the blocks outer, each
 * transpose read 8 lines 4H floats apart and every Cp line twice (7% of a B1 T35 H256 training
 * call on the AMD EPYC, 1 thread); the out lines a block half-writes stay in L2 until the next
 * m0 writes their other half. */
AVX2 static void wg8_unpack(const wgg_args *a, const float *cp, int64_t npad, int64_t lo, int64_t hi) {
    const int64_t N = a->N, M0 = a->a[0].cols, M = M0 + a->a[1].cols;
    for (int64_t m0 = 0; m0 < M; m0 += 8) {
        for (int64_t jb = lo; jb < hi; ++jb) {
            const int64_t n0 = jb * 8, nn = N - n0 < 8 ? N - n0 : 8;
            __m256 r[8];
            for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(cp + (m0 + i) * npad + n0);
            v_transpose8(r);   /* r[u] lane i: Cp[m0 + i, n0 + u] */
            for (int64_t u = 0; u < nn; ++u) {
                const int64_t n = n0 + u;
                if (m0 + 8 <= M0) {
                    _mm256_storeu_ps(a->out[0] + n * M0 + m0, r[u]);
                } else if (m0 >= M0 && m0 + 8 <= M) {
                    _mm256_storeu_ps(a->out[1] + n * (M - M0) + (m0 - M0), r[u]);
                } else {
                    float tmp[8];
                    _mm256_storeu_ps(tmp, r[u]);
                    for (int i = 0; i < 8 && m0 + i < M; ++i) {
                        const int64_t m = m0 + i;
                        if (m < M0) a->out[0][n * M0 + m] = tmp[i];
                        else a->out[1][n * (M - M0) + (m - M0)] = tmp[i];
                    }
                }
            }
        }
    }
}

AVX2 static void wg8_worker(void *arg) {
    const wgg_args *a = (const wgg_args *)arg;
    team_t tm = team(a->nthreads);
    const int64_t N = a->N, M = a->a[0].cols + a->a[1].cols, R = a->R;
    const int64_t npad = wgg_ceil(N, WG8_NR) * WG8_NR, mpad = wg8_mpad(M);
    const int64_t nmb = wgg_ceil(M, WG8_MR), nnb = npad / WG8_NR;
    float *base = (float *)(((uintptr_t)a->scratch + 63) & ~(uintptr_t)63);
    float *bp = base, *cp = bp + npad * WG8_KC, *ap = cp + mpad * npad + tm.tid * mpad * WG8_KC;
    /* This thread's column blocks: it packs their dG panels, computes their tiles and writes their
     * output rows, so the threads never wait for each other. */
    const int64_t blo = nnb * tm.tid / tm.nth, bhi = nnb * (tm.tid + 1) / tm.nth;
    if (blo == bhi) return;
    const size_t own = (size_t)(bhi - blo) * WG8_NR * sizeof(float);
    if (R == 0)
        for (int64_t m = 0; m < nmb * WG8_MR; ++m) memset(cp + m * npad + blo * WG8_NR, 0, own);
    for (int64_t r0 = 0; r0 < R; r0 += WG8_KC) {
        const int64_t kc = R - r0 < WG8_KC ? R - r0 : WG8_KC;
        wg8_pack_a(a, r0, kc, ap);   /* every thread its own copy (A is the narrow operand) */
        wg8_pack_b(a, r0, kc, bp, blo, bhi);
        for (int64_t nb = blo; nb < bhi; ++nb)   /* column block outer: its panel stays in L1 */
            for (int64_t mb = 0; mb < nmb; ++mb)
                wg8_kernel(kc, ap + mb * WG8_KC * WG8_MR, bp + nb * WG8_KC * WG8_NR,
                           cp + mb * WG8_MR * npad + nb * WG8_NR, npad, r0 == 0);
    }
    for (int64_t m = nmb * WG8_MR; m < mpad; ++m)   /* Cp rows past the 6-row tiles (read by the transposes) */
        memset(cp + m * npad + blo * WG8_NR, 0, own);
    const int64_t nj = wgg_ceil(N, 8), jhi = bhi * (WG8_NR / 8);
    wg8_unpack(a, cp, npad, blo * (WG8_NR / 8), jhi < nj ? jhi : nj);
}
#endif /* LSTM_X86 */
#endif /* LSTM_FAST_WEIGHT_GRADIENT_GEMM_AVX2_H */
