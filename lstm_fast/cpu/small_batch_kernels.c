/* Small-batch LSTM kernels for the CPU (float32, AVX-512): batch 1..a few, one step per call or
 * whole sequences, with nothing prepared per call.
 *
 * Why: at batch 1 a step is one matrix-vector product per weight matrix, and its limit is the
 * weight bytes over cache bandwidth (W_hh is 1 MB at H = 256). The whole-sequence kernels
 * (sequence_kernels.c) pack both weight matrices into panels on every call (~84 us at H = 256,
 * more than the steps of a T = 1 call take), and nn.LSTM / oneDNN pays its own per-call setup.
 * Here the weights are read in PyTorch's own layout (W (4H, K) row-major: a row is contiguous in
 * k), so there is nothing to pack or cache and every parameter change is seen by the next call.
 * Each thread does its own slice of 16-unit blocks first (its rows of all four gates), so across
 * steps (and across calls) its slice of W_hh stays in its own L2; each step is a claimed phase
 * (thread_team.h, as in the AVX2 kernels): a thread also takes the slices of threads that have not
 * started, and after a while those a preempted thread left, so a call never waits at a step for a
 * thread the scheduler has not run (h_t of every unit is read by every thread in the next step).
 *
 * Shapes: T steps, B batch, D input, H hidden, gates in nn.LSTM's order i, f, g, o.
 *   X (T, B, D); W_ih (4H, D); W_hh (4H, H); b_ih, b_hh (4H) or NULL; h0, c0 (B, H);
 *   Y (T, B, H) outputs; hn, cn (B, H) final states (each row's state at its own length);
 *   G (T, B, 4H) or NULL: when given, the activated gates (saved for the backward: the layout of
 *     sequence_kernels.c) and C (T, B, H) every step's cell state;
 *   P (T, B, 4H) or NULL: scratch for the input projection when T > 1 and G is NULL (with G, the
 *     projection is written into G and overwritten by the activations);
 *   S (B, H) or NULL: scratch cell state when T > 1 and G is NULL (alternates with cn);
 *   len (B) int64 or NULL: from step len[b] on, row b's state is frozen and its output 0.
 *
 * The product: a 16-row block of W (16 units of one gate) times one vector v (K) is 16 zmm
 * accumulators over k in chunks of 16 (masked tail), then a register transpose and a fixed
 * summation tree: every gate of every unit is reduced in the same order whoever computes it, so
 * results are bitwise independent of the thread count. Several vectors at once (the batch rows of
 * a step, the T*B inputs of the input projection): dot16_multi loads each W chunk once for up to 4
 * of them, each (row, vector) sum the same chain as dot16's. Gate pre-activation =
 * (W_hh h + W_ih x) + (b_ih + b_hh), float32 throughout. For T > 1 the input projection of a
 * unit block for all T*B inputs is the first phase, before the steps.
 *
 * forward(X, W_ih, W_hh, b_ih|None, b_hh|None, h0, c0, Y, hn, cn, G|None, C|None, P|None, S|None,
 *         T, B, D, H, nthreads, len|None)
 * backward(dY, W_hh, G, C, c0, dG, DH, DC, db|None, T, B, H, nthreads, len|None)
 *   dY (T, B, H) or NULL (zeros); G, C as saved; dG (T, B, 4H) out; DH, DC (B, H): in dh_n, dc_n
 *   (zeros if none), out dh_0, dc_0; db (4H) zeros in, out the bias gradient (each item owns its
 *   units). One claimed phase per step: an item of 16-unit blocks (four of them at B = 1) first
 *   turns dG_{t+1} into its columns of dh_t = dG_{t+1} W_hh (every W_hh row's columns in a fixed r
 *   order; at B = 1 four 16-column blocks per pass over the rows, the same order per column),
 *   then runs the cell gradients of its units at step t; a last phase gives dh_0.
 * available() -> bool: AVX-512 present.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include "kernel_support.h"
#include "thread_team.h"

#if LSTM_X86
/* 16 accumulators -> one vector whose lane i is the sum of acc[i]'s lanes (fixed tree). */
AVX512 INLINE __m512 reduce16(__m512 *acc) {
    v_transpose16(acc);
    for (int s = 8; s >= 1; s >>= 1)
        for (int i = 0; i < s; ++i) acc[i] = _mm512_add_ps(acc[i], acc[i + s]);
    return acc[0];
}

/* Lane u: W[row0 + u] . v over K (rows past nvalid read row row0, result lanes to be ignored). */
AVX512 INLINE __m512 dot16(const float *W, int64_t K, int64_t row0, int nvalid, const float *v) {
    const float *w[16];
    for (int u = 0; u < 16; ++u) w[u] = W + (row0 + (u < nvalid ? u : 0)) * K;
    __m512 acc[16];
    for (int u = 0; u < 16; ++u) acc[u] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        __m512 x = _mm512_loadu_ps(v + k);
        for (int u = 0; u < 16; ++u) acc[u] = _mm512_fmadd_ps(_mm512_loadu_ps(w[u] + k), x, acc[u]);
    }
    if (k < K) {
        __mmask16 m = (__mmask16)((1u << (K - k)) - 1u);
        __m512 x = _mm512_maskz_loadu_ps(m, v + k);
        for (int u = 0; u < 16; ++u) acc[u] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, w[u] + k), x, acc[u]);
    }
    return reduce16(acc);
}

/* out[i] = dot16(W, K, row0, nvalid, v + i * ldv) for i < NB (NB <= 4 vectors, R * NB <= 16): the
 * block's rows are read R at a time and each W chunk loaded once for all NB vectors (a W load per
 * NB FMAs instead of per FMA: at B > 1 and for the input projection of T > 1 calls the kernel is
 * bound by L1 load slots, not bandwidth). Every (row, vector) sum is the same single chain in k
 * order as dot16's, then reduce16's tree: bitwise dot16's result. NB, R: compile-time constants
 * at every call (the loops unroll, the accumulators stay in registers). */
AVX512 INLINE void dot16_multi(const float *W, int64_t K, int64_t row0, int nvalid, const float *v, int64_t ldv,
                               __m512 *out, const int NB, const int R) {
    __m512 sums[4][16];
    for (int u0 = 0; u0 < 16; u0 += R) {
        const float *w[16];
        for (int r = 0; r < R; ++r) w[r] = W + (row0 + (u0 + r < nvalid ? u0 + r : 0)) * K;
        __m512 s[16][4];
        for (int r = 0; r < R; ++r)
            for (int i = 0; i < NB; ++i) s[r][i] = _mm512_setzero_ps();
        int64_t k = 0;
        for (; k + 16 <= K; k += 16) {
            __m512 x[4];
            for (int i = 0; i < NB; ++i) x[i] = _mm512_loadu_ps(v + i * ldv + k);
            for (int r = 0; r < R; ++r) {
                const __m512 wv = _mm512_loadu_ps(w[r] + k);
                for (int i = 0; i < NB; ++i) s[r][i] = _mm512_fmadd_ps(wv, x[i], s[r][i]);
            }
        }
        if (k < K) {
            const __mmask16 m = (__mmask16)((1u << (K - k)) - 1u);
            __m512 x[4];
            for (int i = 0; i < NB; ++i) x[i] = _mm512_maskz_loadu_ps(m, v + i * ldv + k);
            for (int r = 0; r < R; ++r) {
                const __m512 wv = _mm512_maskz_loadu_ps(m, w[r] + k);
                for (int i = 0; i < NB; ++i) s[r][i] = _mm512_fmadd_ps(wv, x[i], s[r][i]);
            }
        }
        for (int r = 0; r < R; ++r)
            for (int i = 0; i < NB; ++i) sums[i][u0 + r] = s[r][i];
    }
    for (int i = 0; i < NB; ++i) out[i] = reduce16(sums[i]);
}

/* Rows read at a time for 2, 3, 4 vectors: 4 each (measured against 8, 2 and a 4/4/2 mix at
 * B 2 and 4, H 256 and 1024: as fast or faster everywhere). */
#define ROWS_2 4
#define ROWS_3 4
#define ROWS_4 4
/* out[i] = dot16(W, K, row0, nvalid, v + i * ldv) for i < n (any n), four vectors at a time. */
AVX512 static void dot16_many(const float *W, int64_t K, int64_t row0, int nvalid, const float *v, int64_t ldv,
                              int64_t n, __m512 *out, int64_t out_stride) {
    __m512 o[4];
    for (int64_t i = 0; i < n; i += 4) {
        const int64_t nb = n - i < 4 ? n - i : 4;
        const float *vi = v + i * ldv;
        switch (nb) {
        case 1: o[0] = dot16(W, K, row0, nvalid, vi); break;
        case 2: dot16_multi(W, K, row0, nvalid, vi, ldv, o, 2, ROWS_2); break;
        case 3: dot16_multi(W, K, row0, nvalid, vi, ldv, o, 3, ROWS_3); break;
        default: dot16_multi(W, K, row0, nvalid, vi, ldv, o, 4, ROWS_4); break;
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

AVX512 INLINE __m512 bias16(const fwd_args *a, int64_t r, __mmask16 m) {
    __m512 b = _mm512_setzero_ps();
    if (a->bih) b = _mm512_maskz_loadu_ps(m, a->bih + r);
    if (a->bhh) b = a->bih ? _mm512_add_ps(b, _mm512_maskz_loadu_ps(m, a->bhh + r)) : _mm512_maskz_loadu_ps(m, a->bhh + r);
    return b;
}

/* Where step t's cell state goes: C[t] when saving, else alternating S / cn ending on cn. */
static inline float *c_slot(const fwd_args *a, int64_t t) {
    if (a->G) return a->C + t * a->B * a->H;
    return ((a->T - 1 - t) & 1) ? a->S : a->cn;
}

/* The input projection of unit block jb for all T * B rows (T > 1): XP[:, q * H + j0 ..]. */
AVX512 static void fwd_projection(const fwd_args *a, int64_t jb) {
    const int64_t T = a->T, B = a->B, D = a->D, H = a->H, G4 = 4 * H, j0 = jb * 16;
    float *XP = a->G ? a->G : a->P;
    const int nv = H - j0 < 16 ? (int)(H - j0) : 16;
    const __mmask16 m = tail_mask(j0, H);
    __m512 o[4];
    for (int q = 0; q < 4; ++q)
        for (int64_t tb = 0; tb < T * B; tb += 4) {
            const int64_t n = T * B - tb < 4 ? T * B - tb : 4;
            dot16_many(a->Wih, D, q * H + j0, nv, a->X + tb * D, D, n, o, 1);
            for (int64_t i = 0; i < n; ++i) _mm512_mask_storeu_ps(XP + (tb + i) * G4 + q * H + j0, m, o[i]);
        }
}

/* Step t of unit block jb for every row: gates, cell, h (and the saved gates, c, c_n). */
AVX512 static void fwd_step(const fwd_args *a, int64_t t, int64_t jb) {
    const int64_t T = a->T, B = a->B, D = a->D, H = a->H, G4 = 4 * H, j0 = jb * 16;
    const float *XP = a->G ? a->G : a->P;   /* input projections (T, B, 4H), when T > 1 */
    const float *hp = t == 0 ? a->h0 : a->Y + (t - 1) * B * H;
    const float *cp = t == 0 ? a->c0 : c_slot(a, t - 1);
    float *co = c_slot(a, t);
    const int nv = H - j0 < 16 ? (int)(H - j0) : 16;
    const __mmask16 m = tail_mask(j0, H);
    __m512 pre[BCHUNK * 4], prex[BCHUNK * 4];
    for (int64_t b0 = 0; b0 < B; b0 += BCHUNK) {
        const int64_t nbat = B - b0 < BCHUNK ? B - b0 : BCHUNK;
        for (int q = 0; q < 4; ++q) {
            dot16_many(a->Whh, H, q * H + j0, nv, hp + b0 * H, H, nbat, pre + q, 4);
            if (T == 1) dot16_many(a->Wih, D, q * H + j0, nv, a->X + b0 * D, D, nbat, prex + q, 4);
        }
        for (int64_t i = 0; i < nbat; ++i) {
            const int64_t b = b0 + i;
            __m512 g[4];
            for (int q = 0; q < 4; ++q) {
                __m512 xp = T > 1 ? _mm512_maskz_loadu_ps(m, XP + (t * B + b) * G4 + q * H + j0) : prex[i * 4 + q];
                g[q] = _mm512_add_ps(_mm512_add_ps(pre[i * 4 + q], xp), bias16(a, q * H + j0, m));
            }
            __m512 I = v_sigmoid(g[0]), F = v_sigmoid(g[1]), Ct = v_tanh(g[2]), O = v_sigmoid(g[3]);
            __m512 c_prev = _mm512_maskz_loadu_ps(m, cp + b * H + j0);
            __m512 c = _mm512_fmadd_ps(F, c_prev, _mm512_mul_ps(I, Ct));
            __m512 h = _mm512_mul_ps(O, v_tanh(c));
            if (a->len && t >= a->len[b]) {   /* finished row: state frozen, output 0 */
                c = c_prev;
                if (t == 0) _mm512_mask_storeu_ps(a->hn + b * H + j0, m, _mm512_maskz_loadu_ps(m, a->h0 + b * H + j0));
                h = _mm512_setzero_ps();
            } else {
                _mm512_mask_storeu_ps(a->hn + b * H + j0, m, h);
            }
            _mm512_mask_storeu_ps(co + b * H + j0, m, c);
            _mm512_mask_storeu_ps(a->Y + (t * B + b) * H + j0, m, h);
            if (a->G) {
                float *gs = a->G + (t * B + b) * G4 + j0;
                _mm512_mask_storeu_ps(gs, m, I);
                _mm512_mask_storeu_ps(gs + H, m, F);
                _mm512_mask_storeu_ps(gs + 2 * H, m, Ct);
                _mm512_mask_storeu_ps(gs + 3 * H, m, O);
            }
        }
    }
    if (a->G && t == T - 1)   /* saving: cn is also C[T-1] */
        for (int64_t b = 0; b < B; ++b)
            _mm512_mask_storeu_ps(a->cn + b * H + j0, m, _mm512_maskz_loadu_ps(m, co + b * H + j0));
}

/* Phases (thread_team.h): the input projection when T > 1, then one per step; item g: unit
 * blocks [g group, (g + 1) group). */
AVX512 static void fwd_item(const fwd_args *a, int64_t p, int64_t g) {
    const int64_t nb = (a->H + 15) / 16, jb1 = (g + 1) * a->group < nb ? (g + 1) * a->group : nb;
    for (int64_t jb = g * a->group; jb < jb1; ++jb)
        if (p < (a->T > 1)) fwd_projection(a, jb);
        else fwd_step(a, p - (a->T > 1), jb);
}
#define FWD_ITEM(p, g) fwd_item(a, p, g)
AVX512 static void fwd_worker(void *arg, int tid) {
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
    team_phases ph;
} bwd_args;

/* Gate gradients of step t for units [j0, j0+16) of every row (as sequence_kernels.c). */
AVX512 static void bwd_cell(const bwd_args *a, int64_t t, int64_t jb) {
    const int64_t B = a->B, H = a->H, G4 = 4 * H, j0 = jb * 16;
    const __mmask16 m = tail_mask(j0, H);
    const __m512 one = _mm512_set1_ps(1.0f);
    for (int64_t b = 0; b < B; ++b) {
        const int64_t o = b * H + j0;
        float *d = a->dG + (t * B + b) * G4 + j0;
        if (a->len && t >= a->len[b]) {   /* finished row: no gate gradients; dh, dc carried */
            for (int q = 0; q < 4; ++q) _mm512_mask_storeu_ps(d + q * H, m, _mm512_setzero_ps());
            continue;
        }
        const float *g = a->G + (t * B + b) * G4 + j0;
        __m512 dh = _mm512_maskz_loadu_ps(m, a->DH + o);
        if (a->dY) dh = _mm512_add_ps(_mm512_maskz_loadu_ps(m, a->dY + t * B * H + o), dh);
        __m512 dc = _mm512_maskz_loadu_ps(m, a->DC + o);
        __m512 I = _mm512_maskz_loadu_ps(m, g), F = _mm512_maskz_loadu_ps(m, g + H);
        __m512 Ct = _mm512_maskz_loadu_ps(m, g + 2 * H), O = _mm512_maskz_loadu_ps(m, g + 3 * H);
        __m512 c = _mm512_maskz_loadu_ps(m, a->C + t * B * H + o);
        __m512 cp = _mm512_maskz_loadu_ps(m, t > 0 ? a->C + (t - 1) * B * H + o : a->c0 + o);
        __m512 tc = v_tanh(c);
        __m512 dct = _mm512_fmadd_ps(_mm512_mul_ps(dh, O), _mm512_fnmadd_ps(tc, tc, one), dc);
        __m512 di = _mm512_mul_ps(_mm512_mul_ps(dct, Ct), _mm512_mul_ps(I, _mm512_sub_ps(one, I)));
        __m512 df = _mm512_mul_ps(_mm512_mul_ps(dct, cp), _mm512_mul_ps(F, _mm512_sub_ps(one, F)));
        __m512 dg = _mm512_mul_ps(_mm512_mul_ps(dct, I), _mm512_fnmadd_ps(Ct, Ct, one));
        __m512 dO = _mm512_mul_ps(_mm512_mul_ps(dh, tc), _mm512_mul_ps(O, _mm512_sub_ps(one, O)));
        _mm512_mask_storeu_ps(d, m, di);
        _mm512_mask_storeu_ps(d + H, m, df);
        _mm512_mask_storeu_ps(d + 2 * H, m, dg);
        _mm512_mask_storeu_ps(d + 3 * H, m, dO);
        _mm512_mask_storeu_ps(a->DC + o, m, _mm512_mul_ps(dct, F));
        if (a->db) {   /* rows in order b = 0..B-1, steps T-1..0: a fixed order */
            float *bq = a->db + j0;
            _mm512_mask_storeu_ps(bq, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, bq), di));
            _mm512_mask_storeu_ps(bq + H, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, bq + H), df));
            _mm512_mask_storeu_ps(bq + 2 * H, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, bq + 2 * H), dg));
            _mm512_mask_storeu_ps(bq + 3 * H, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, bq + 3 * H), dO));
        }
    }
}

/* DH[b, n0..n0+16) = sum over r = 0..4H-1 (in order) of dG_t[b, r] * W_hh[r, n0..], for up to
 * 4 rows b at once (frozen rows keep the dh carried through). */
AVX512 static void bwd_dh(const bwd_args *a, int64_t t, int64_t n0) {
    const int64_t B = a->B, H = a->H, G4 = 4 * H;
    const __mmask16 m = tail_mask(n0, H);
    for (int64_t b0 = 0; b0 < B; b0 += 4) {
        const int64_t nbat = B - b0 < 4 ? B - b0 : 4;
        const float *d0 = a->dG + (t * B + b0) * G4;
        const float *d1 = nbat > 1 ? d0 + G4 : d0, *d2 = nbat > 2 ? d0 + 2 * G4 : d0, *d3 = nbat > 3 ? d0 + 3 * G4 : d0;
        __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
        __m512 u0 = s0, u1 = s0, u2 = s0, u3 = s0;   /* odd r: two chains per row, summed at the end */
        int64_t r = 0;
        for (; r + 2 <= G4; r += 2) {
            __m512 w = _mm512_maskz_loadu_ps(m, a->Whh + r * H + n0);
            __m512 w1 = _mm512_maskz_loadu_ps(m, a->Whh + (r + 1) * H + n0);
            s0 = _mm512_fmadd_ps(_mm512_set1_ps(d0[r]), w, s0);
            u0 = _mm512_fmadd_ps(_mm512_set1_ps(d0[r + 1]), w1, u0);
            s1 = _mm512_fmadd_ps(_mm512_set1_ps(d1[r]), w, s1);
            u1 = _mm512_fmadd_ps(_mm512_set1_ps(d1[r + 1]), w1, u1);
            s2 = _mm512_fmadd_ps(_mm512_set1_ps(d2[r]), w, s2);
            u2 = _mm512_fmadd_ps(_mm512_set1_ps(d2[r + 1]), w1, u2);
            s3 = _mm512_fmadd_ps(_mm512_set1_ps(d3[r]), w, s3);
            u3 = _mm512_fmadd_ps(_mm512_set1_ps(d3[r + 1]), w1, u3);
        }
        /* 4H is even: no r left */
        __m512 v[4] = {_mm512_add_ps(s0, u0), _mm512_add_ps(s1, u1), _mm512_add_ps(s2, u2), _mm512_add_ps(s3, u3)};
        for (int64_t i = 0; i < nbat; ++i) {
            const int64_t b = b0 + i;
            if (a->len && t >= a->len[b]) continue;
            _mm512_mask_storeu_ps(a->DH + b * H + n0, m, v[i]);
        }
    }
}

/* B == 1: DH[0, n0..) for up to 4 column blocks at once (jb0.., nblk of them), each block's two
 * chains (even r, odd r) exactly as bwd_dh's: bitwise its result. One broadcast of dG_t[r] then
 * serves 4 column blocks (64 contiguous floats of the row), where bwd_dh at B = 1 would run its 4
 * batch chains on the same row (4x the FMAs) on one 16-column line per row. */
AVX512 static void bwd_dh1(const bwd_args *a, int64_t t, int64_t jb0, int nblk) {
    const int64_t H = a->H, G4 = 4 * H;
    if (a->len && t >= a->len[0]) return;
    const float *d = a->dG + t * G4;
    __mmask16 m[4];
    __m512 s[4], u[4];
    for (int c = 0; c < 4; ++c) {
        m[c] = c < nblk ? tail_mask((jb0 + c) * 16, H) : (__mmask16)0;
        s[c] = u[c] = _mm512_setzero_ps();
    }
    for (int64_t r = 0; r + 2 <= G4; r += 2) {   /* 4H is even: no r left */
        const __m512 d0 = _mm512_set1_ps(d[r]), d1 = _mm512_set1_ps(d[r + 1]);
        const float *w0 = a->Whh + r * H + jb0 * 16, *w1 = w0 + H;
        for (int c = 0; c < 4; ++c) {
            s[c] = _mm512_fmadd_ps(d0, _mm512_maskz_loadu_ps(m[c], w0 + 16 * c), s[c]);
            u[c] = _mm512_fmadd_ps(d1, _mm512_maskz_loadu_ps(m[c], w1 + 16 * c), u[c]);
        }
    }
    for (int c = 0; c < nblk; ++c) _mm512_mask_storeu_ps(a->DH + (jb0 + c) * 16, m[c], _mm512_add_ps(s[c], u[c]));
}

/* Blocks per bwd_dh1 call at B == 1 (its 64 columns per broadcast), else 1: backward items are
 * whole multiples of it. */
static inline int64_t bwd_unit(const bwd_args *a) { return a->B == 1 ? 4 : 1; }

/* Phases (thread_team.h): phase p < T is step t = T-1-p, its item g (blocks [g group, (g + 1)
 * group)) first turns dG[t+1] into those blocks' DH columns (p > 0), then runs their cell: both
 * read and write only the item's own columns of DH and DC, and dG[t+1] is complete at the phase's
 * start. Phase T is the last DH (dh_0). Each DH column's sum is the same whoever computes it. */
AVX512 static void bwd_item(const bwd_args *a, int64_t p, int64_t g) {
    const int64_t T = a->T, t = T - 1 - p, nb = (a->H + 15) / 16;
    const int64_t jb0 = g * a->group, jb1 = jb0 + a->group < nb ? jb0 + a->group : nb;
    if (p > 0) {
        if (a->B == 1)
            for (int64_t jb = jb0; jb < jb1; jb += 4) bwd_dh1(a, t + 1, jb, jb1 - jb < 4 ? (int)(jb1 - jb) : 4);
        else
            for (int64_t jb = jb0; jb < jb1; ++jb) bwd_dh(a, t + 1, jb * 16);
    }
    if (p < T)
        for (int64_t jb = jb0; jb < jb1; ++jb) bwd_cell(a, t, jb);
}
#define BWD_ITEM(p, g) bwd_item(a, p, g)
AVX512 static void bwd_worker(void *arg, int tid) {
    bwd_args *a = (bwd_args *)arg;
    TEAM_PHASES(&a->ph, tid, a->T + 1, BWD_ITEM)
}
#endif /* LSTM_X86 */

/* ---------------------------------------------------------------- Python bindings */
static PyObject *py_available(PyObject *self, PyObject *unused) { return PyBool_FromLong(avx512_ok()); }

static PyObject *py_forward(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 20) { PyErr_SetString(PyExc_TypeError, "forward takes 20 arguments"); return NULL; }
    if (!avx512_ok()) { PyErr_SetString(PyExc_RuntimeError, "small-batch kernels need AVX-512"); return NULL; }
#if LSTM_X86
    void *p[14];
    if (ptrs(args, 14, p)) return NULL;
    fwd_args a = {p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9], p[10], p[11], p[12], p[13],
                  PyLong_AsLongLong(args[14]), PyLong_AsLongLong(args[15]), PyLong_AsLongLong(args[16]),
                  PyLong_AsLongLong(args[17]), (int)PyLong_AsLong(args[18])};
    a.len = args[19] == Py_None ? NULL : PyLong_AsVoidPtr(args[19]);
    if (PyErr_Occurred()) return NULL;
    /* claimed phases over the unit blocks; saving calls on OpenMP's team, the others as the
     * inference policy says (thread_team.h) */
    const int64_t nb = (a.H + 15) / 16;
    a.nthreads = team_size(a.nthreads, nb);
    a.group = team_item_group(nb, a.nthreads);
    team_phases_init(&a.ph, a.nthreads, (nb + a.group - 1) / a.group, a.T + (a.T > 1));
    launch_team(fwd_worker, &a, &a.ph, a.G ? &train_policy : &infer_policy);
#endif
    Py_RETURN_NONE;
}

static PyObject *py_backward(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 14) { PyErr_SetString(PyExc_TypeError, "backward takes 14 arguments"); return NULL; }
    if (!avx512_ok()) { PyErr_SetString(PyExc_RuntimeError, "small-batch kernels need AVX-512"); return NULL; }
#if LSTM_X86
    void *p[9];
    if (ptrs(args, 9, p)) return NULL;
    bwd_args a = {p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], PyLong_AsLongLong(args[9]),
                  PyLong_AsLongLong(args[10]), PyLong_AsLongLong(args[11]), (int)PyLong_AsLong(args[12])};
    a.len = args[13] == Py_None ? NULL : PyLong_AsVoidPtr(args[13]);
    if (PyErr_Occurred()) return NULL;
    const int64_t nb = (a.H + 15) / 16, units = (nb + bwd_unit(&a) - 1) / bwd_unit(&a);
    a.nthreads = team_size(a.nthreads, units);
    a.group = team_item_group(units, a.nthreads) * bwd_unit(&a);
    team_phases_init(&a.ph, a.nthreads, (nb + a.group - 1) / a.group, a.T + 1);
    launch_team(bwd_worker, &a, &a.ph, &train_policy);
#endif
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"available", py_available, METH_NOARGS, "whether this CPU runs the small-batch kernels (AVX-512)"},
    {"forward", (PyCFunction)(void (*)(void))py_forward, METH_FASTCALL, "small-batch LSTM forward over T steps"},
    {"backward", (PyCFunction)(void (*)(void))py_backward, METH_FASTCALL, "small-batch backward through time"},
    TEAM_TEST_METHODS
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_small_batch_kernels",
                                    "Small-batch LSTM kernels (float32, AVX-512, weights in nn.LSTM layout).", -1, methods};

PyMODINIT_FUNC PyInit__small_batch_kernels(void) { return PyModule_Create(&module); }
