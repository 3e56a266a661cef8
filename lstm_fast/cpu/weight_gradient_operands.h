/* The operands of the packed weight-gradient GEMMs (weight_gradient_gemm.h on AVX-512,
 * weight_gradient_gemm_avx2.h on AVX2 + FMA): dG (R, N) and the right operand A = [a[0] | a[1]],
 * each part read in place from up to two row segments (h_0, then Y[:-1]: no concatenation). */
#ifndef LSTM_FAST_WEIGHT_GRADIENT_OPERANDS_H
#define LSTM_FAST_WEIGHT_GRADIENT_OPERANDS_H
#include <stdint.h>

typedef struct {
    const float *p0, *p1;   /* rows [0, rows0) at p0, the rest at p1; row stride = cols */
    int64_t rows0, cols;
} wgg_part;

typedef struct {
    const float *dG;        /* (R, N) */
    wgg_part a[2];          /* A = [a[0] | a[1]] */
    float *out[2];          /* (N, a[i].cols) */
    float *scratch;
    int64_t N, R;
    int nthreads;
} wgg_args;

static int64_t wgg_ceil(int64_t a, int64_t b) { return (a + b - 1) / b; }

static const float *wgg_row(const wgg_part *p, int64_t r) {
    return r < p->rows0 ? p->p0 + r * p->cols : p->p1 + (r - p->rows0) * p->cols;
}
#endif /* LSTM_FAST_WEIGHT_GRADIENT_OPERANDS_H */
