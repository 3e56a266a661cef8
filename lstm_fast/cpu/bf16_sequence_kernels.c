/* Whole-sequence LSTM kernels for the CPU in bfloat16 (AVX512-BF16): one call walks all T steps.
 *
 * Why: under torch.autocast("cpu", dtype=torch.bfloat16) (or with bf16 parameters) the float32
 * kernels of sequence_kernels.c ran on upcast operands: bf16-exact, but at float32 speed, while
 * nn.LSTM runs oneDNN's bf16 RNN. Here the matmul operands are bf16 and each vdpbf16ps
 * (_mm512_dpbf16_ps) does 32 multiply-adds into 16 float32 accumulators: accumulation, the cell
 * state and the gate activations stay float32. Same structure as the float32 kernels: weights
 * packed once per weight change into contiguous panels, a 6 (or 4) row x 64 column register tile,
 * the LSTM cell in the GEMM epilogue, threads from torch's own OpenMP pool.
 *
 * Autocast semantics: h_t is rounded to bf16 (it is the bf16 output Y[t], and the next step's
 * matmul operand); in the backward the gate gradients dG_t are computed in float32 and rounded to
 * bf16 as the operand of dh_{t-1} = dG_t W_hh and of the weight-gradient GEMMs (run by the caller,
 * oneDNN bf16 GEMMs with float32 accumulation); dh, dc and the bias gradient stay float32.
 *
 * bf16 is stored as uint16_t (the high half of a float32). vdpbf16ps multiplies bf16 pairs: lane i
 * of the accumulator gets a[2i] b[2i] + a[2i+1] b[2i+1], so a panel row holds, for each of 64
 * output columns, the weights of two consecutive k interleaved, and the A side broadcasts the pair
 * (a[k], a[k+1]) as one 32-bit value. An odd K ends with a half pair (the panel's second slot is
 * zero, the A side broadcasts a[K-1] with a zero high half: no read past a row).
 *
 * forward_seq(X, Px, bias|None, Ph, h0, c0, Y, C, G|None, T, B, D, H, nthreads, len|None)
 *   X (T, B, D) bf16; Px (ceil(H/16), ceil(D/2), 128) and Ph (ceil(H/16), ceil(H/2), 128) bf16
 *   forward panels (pack_panels); bias (4H) float32 = b_ih + b_hh or None; h0 (B, H) bf16;
 *   c0 (B, H) float32; Y (T, B, H) bf16 outputs; C (T, B, H) float32 cell states when G is given,
 *   else (2, B, H) scratch; G bf16 (T, ceil(H/16), B, 5, 16): activated gates i, f, g, o and
 *   tanh(c_t) per step, block of 16 units and row (saved), or None;
 *   len (B) int64 lengths or None (as in sequence_kernels.c: finished rows frozen, output 0).
 * backward_seq(dY, Wq, G, C, c0, dG, DH, DC, db|None, T, B, H, nthreads, len|None)
 *   dY (T, B, H) bf16; Wq (ceil(H/64), 2H, 128) bf16 backward panels of W_hh
 *   (pack_backward_panels); G (bf16), C (float32) as saved; c0 float32; dG (T, B, 4H) bf16 out (the gate
 *   gradients, rounded: the GEMM operand); DH (B, H) float32 in: dh_n, out: dh_0; DC (B, H)
 *   float32 in: dc_n, out: dc_0; db (4H) float32 zeros in, out: the bias gradient (from the
 *   unrounded gate gradients).
 * pack_panels(W, w_is_f32, H, K, Kpad, P, nthreads)
 *   W (4H, K) float32 or bf16 as nn.LSTM stores it -> P (ceil(H/16), ceil(Kpad/2), 128) bf16:
 *   P[j][p][(q*16 + u)*2 + s] = bf16(W[q*H + j*16 + u][2p + s]), zero past H and K.
 * pack_backward_panels(W, w_is_f32, H, Kpad, P)
 *   W_hh (4H, H) float32 or bf16 -> P (ceil(H/64), Kpad/2, 128) bf16:
 *   P[j][p][u*2 + s] = bf16(W[2p + s][j*64 + u]), zero past H and past row 4H.
 * forward_seq_amx / backward_seq_amx: the same on AMX tiles, operands in zero-padded buffers
 *   (see the AMX section); transpose_bf16: the blocked transpose around the weight-gradient GEMM.
 * available() -> bool: this CPU has AVX512-BF16 (and AVX512 F/BW/VL/DQ): the caller falls back
 *   to the float32 kernels on upcast operands otherwise. amx_available() -> bool: AMX-BF16 too,
 *   and the kernel granted this process the tile state.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include "sequence_templates.h"
#include "thread_team.h"
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#include <time.h>

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#if LSTM_X86
#define BF16 __attribute__((target("avx512f,avx512bf16,avx512vl,avx512dq,avx512bw,fma")))
/* The register tiles, workers and argument parsing of sequence_templates.h, on bf16 operands. */
#define SEQ_TARGET BF16
#define SEQ_T uint16_t

BF16 INLINE __m512 load_bf16(__mmask16 m, const uint16_t *p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
}

BF16 INLINE void store_bf16(uint16_t *p, __mmask16 m, __m512 v) {
    _mm256_mask_storeu_epi16(p, m, (__m256i)_mm512_cvtneps_pbh(v));
}

/* The gate activations, lean: the cell's vector work shares the core's vector ports with the AMX
 * tile multiplies running beside it (the forward time is close to the sum of the two), so every
 * instruction of the cell costs. Accuracy ~3e-6 relative, far below the bf16 rounding (4e-3) of
 * the operands and outputs these gates feed.
 * 2^t: t clamped to [-126, 115] (NaN survives: max/min return src2), f = t - floor(t) in [0, 1)
 * by one vreduceps, a degree-4 fit of 2^f (max relative error 2.7e-6), scaled by 2^floor(t) in
 * vscalefps (which floors t itself): 8 instructions where v_exp takes 15. */
BF16 INLINE __m512 v_exp2_lean(__m512 t) {
    t = _mm512_min_ps(_mm512_set1_ps(115.0f), _mm512_max_ps(_mm512_set1_ps(-126.0f), t));
    const __m512 f = _mm512_reduce_ps(t, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(1.353416778e-02f), f, _mm512_set1_ps(5.201146379e-02f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.414427549e-01f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.930038333e-01f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.000002623e+00f));
    return _mm512_scalef_ps(p, t);
}

/* 1 / d for d in [1, 2^116): vrcp14ps and one Newton step (~23 bits; vdivps is 16+ cycles per zmm). */
BF16 INLINE __m512 v_recip(__m512 d) {
    const __m512 r = _mm512_rcp14_ps(d);
    return _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.0f)));
}

/* sigmoid(x) = 1 / (1 + 2^(-x log2 e)) */
BF16 INLINE __m512 v_sigmoid_fast(__m512 x) {
    const __m512 e = v_exp2_lean(_mm512_mul_ps(x, _mm512_set1_ps(-1.44269504088896341f)));
    return v_recip(_mm512_add_ps(_mm512_set1_ps(1.0f), e));
}

/* tanh(x) = 1 - 2 / (1 + 2^(2x log2 e)) */
BF16 INLINE __m512 v_tanh_fast(__m512 x) {
    const __m512 one = _mm512_set1_ps(1.0f);
    const __m512 e = v_exp2_lean(_mm512_mul_ps(x, _mm512_set1_ps(2.88539008177792682f)));
    return _mm512_fnmadd_ps(_mm512_set1_ps(2.0f), v_recip(_mm512_add_ps(one, e)), one);
}

/* The pair (a[k], a[k+1]) as one 32-bit lane value, broadcast to all 16 lanes. */
BF16 INLINE __m512bh pair(const uint16_t *a, int64_t k) {
    uint32_t v;
    memcpy(&v, a + k, 4);
    return (__m512bh)_mm512_set1_epi32((int)v);
}

/* The half pair (a[k], 0) for the last k of an odd K. */
BF16 INLINE __m512bh half_pair(const uint16_t *a, int64_t k) { return (__m512bh)_mm512_set1_epi32((int)a[k]); }

/* One pair step of tile row r: the pair LOAD(a_r, 2p) times the 64 panel columns b0..b3. */
#define TILE_DP(r, LOAD)                                                             \
    {                                                                                \
        __m512bh x = LOAD(a##r, 2 * p);                                              \
        c##r##0 = _mm512_dpbf16_ps(c##r##0, x, b0);                                  \
        c##r##1 = _mm512_dpbf16_ps(c##r##1, x, b1);                                  \
        c##r##2 = _mm512_dpbf16_ps(c##r##2, x, b2);                                  \
        c##r##3 = _mm512_dpbf16_ps(c##r##3, x, b3);                                  \
    }
#define DP4(L) TILE_DP(0, L) TILE_DP(1, L) TILE_DP(2, L) TILE_DP(3, L)
#define DP6(L) DP4(L) TILE_DP(4, L) TILE_DP(5, L)
/* Pair row p of a panel (128 bf16: 64 columns x 2 k) as b0..b3, then DPS(LOAD) on it. */
#define PAIR_ROW(P, LOAD, DPS)                                                       \
    {                                                                                \
        const uint16_t *wk = (P) + p * 128;                                          \
        __m512bh b0 = (__m512bh)_mm512_loadu_si512(wk);                              \
        __m512bh b1 = (__m512bh)_mm512_loadu_si512(wk + 32);                         \
        __m512bh b2 = (__m512bh)_mm512_loadu_si512(wk + 64);                         \
        __m512bh b3 = (__m512bh)_mm512_loadu_si512(wk + 96);                         \
        DPS(LOAD)                                                                    \
    }
/* K deep over a panel of 128 bf16 per pair row: full pairs, then the half pair of an odd K. */
#define PAIRS_K(K, P, DPS)                                                           \
    {                                                                                \
        const int64_t np_ = (K) / 2;                                                 \
        int64_t p = 0;                                                               \
        for (; p < np_; ++p) PAIR_ROW(P, pair, DPS)                                  \
        if ((K) & 1) PAIR_ROW(P, half_pair, DPS)                                     \
    }
/* Forward panels hold ceil(K/2) pair rows, backward ones K/2 (K = 4H is even). */
#define SEQ_FWD_GEMM(K, P, jb, DPS) PAIRS_K(K, (P) + (jb) * (((K) + 1) / 2) * 128, DPS)
#define SEQ_BWD_GEMM(K, P, nb, DPS) PAIRS_K(K, (P) + (nb) * ((K) / 2) * 128, DPS)

/* ---------------------------------------------------------------- forward */
typedef struct {
    const uint16_t *X, *Px;
    const float *bias;
    const uint16_t *Ph, *h0;
    const float *c0;
    uint16_t *Y;
    float *C;
    uint16_t *G;            /* bf16 (T, ceil(H/16), B, 5, 16): i, f, g, o and tanh(c_t), or NULL */
    int64_t T, B, D, H;
    int nthreads;
    const uint16_t *zero;   /* max(D, H) + 1 zeros: the A row of tile rows past the batch */
    const int64_t *len;
    /* AMX only: X padded to (T, Bp, Dp), h operand buffers Hb (2, Bp, Hp) (h_{t-1} in
     * Hb[(t + 1) & 1]), zero padded; Bp a multiple of 16, Dp and Hp of 32. Each Hb[i] is
     * tile-blocked, (Bp / 16, Hp / 32, 16, 32): every A tile one contiguous kilobyte (strided
     * 16-row tiles measured ~10% slower multiplies where the weights fill L2). */
    uint16_t *Hb;
    int64_t Bp, Dp, Hp;
    int split_batch;        /* AMX only: threads own 16-row blocks of the batch (see fwd_worker_amx) */
    const float *bias_tiles; /* AMX only: the bias (4, H16), H16 = H rounded up to 16, zero padded, loaded
                              * as the accumulator tiles' initial value (bias is NULL then) */
    int prefetch;           /* AMX only: prefetch the next panel's W_hh part into L2 (see fwd_worker_amx) */
    int64_t group;          /* vdpbf16ps forward: 16-unit blocks per claimed item (see fwd_worker) */
    team_phases ph;
} fwd_args;

/* The LSTM cell for one row and 16 hidden units, from that row's four gate accumulators. */
BF16 INLINE void fwd_cell(const fwd_args *a, int64_t t, int64_t row, int64_t j0, __mmask16 m,
                          __m512 gi, __m512 gf, __m512 gg, __m512 go, const float *cp, float *c_out) {
    const int64_t H = a->H;
    ADD_GATE_BIAS(a->bias, j0, H, m, gi, gf, gg, go)
    __m512 I = v_sigmoid_fast(gi), F = v_sigmoid_fast(gf), Ct = v_tanh_fast(gg), O = v_sigmoid_fast(go);
    __m512 c_prev = _mm512_maskz_loadu_ps(m, cp + row * H + j0);
    __m512 c = _mm512_fmadd_ps(F, c_prev, _mm512_mul_ps(I, Ct));
    __m512 tc = v_tanh_fast(c);
    __m512 h = _mm512_mul_ps(O, tc);
    if (a->len && t >= a->len[row]) {
        c = c_prev;
        h = _mm512_setzero_ps();
    }
    _mm512_mask_storeu_ps(c_out + row * H + j0, m, c);
    const __m256i hb = (__m256i)_mm512_cvtneps_pbh(h);
    _mm256_mask_storeu_epi16(a->Y + (t * a->B + row) * H + j0, m, hb);
    if (a->Hb)   /* tile-blocked: [16-row block][32-unit block][16 rows][32 units] */
        _mm256_mask_storeu_epi16(a->Hb + (t & 1) * a->Bp * a->Hp + ((row >> 4) * (a->Hp >> 5) + (j0 >> 5)) * 512 +
                                 (row & 15) * 32 + (j0 & 31), m, hb);
    if (a->G) {
        /* bf16 (half the bytes of the largest saved tensor), blocked per step and 16 units:
         * G[t][j0/16][row][q][16], so the backward reads each (t, unit block) as one stream */
        uint16_t *g = a->G + ((t * ((H + 15) / 16) + j0 / 16) * a->B + row) * 80;
        /* all 16 lanes (a block of G always has them; the backward reads only the unit lanes), two
         * gates per conversion and store: [I | F], [C_tilda | O], tanh(c_t) (not recomputed) */
        _mm512_storeu_si512(g, (__m512i)_mm512_cvtne2ps_pbh(F, I));
        _mm512_storeu_si512(g + 32, (__m512i)_mm512_cvtne2ps_pbh(O, Ct));
        _mm256_storeu_si256((__m256i *)(g + 64), (__m256i)_mm512_cvtneps_pbh(tc));
    }
}

FWD_TILE(6, DECL6, DP6)
FWD_TILE(4, DECL4, DP4)

/* A batch of one row: a 4-row tile there reads three zero rows and does 4x the multiply-adds
 * (vdpbf16ps-bound: ~28 us a step at H 256 on the Zen 4 EPYC), so it runs this one-row tile on NJ
 * (1 or 2) unit blocks at once instead: 4 * NJ accumulator chains, each block's sums the same
 * chain in k order (x pairs, then h pairs, then the bias in fwd_cell) as a row of FWD_TILE's
 * tiles: bitwise their result. */
BF16 INLINE void row1_gemm(const uint16_t *a, int64_t K, const uint16_t *P, int64_t jb, __m512 acc[2][4],
                           const int NJ) {
    const int64_t np = (K + 1) / 2, full = K / 2;
    const uint16_t *w = P + jb * np * 128;
    for (int64_t p = 0; p < np; ++p) {
        const __m512bh x = p < full ? pair(a, 2 * p) : half_pair(a, 2 * p);
        for (int j = 0; j < NJ; ++j) {
            const uint16_t *wk = w + j * np * 128 + p * 128;
            for (int q = 0; q < 4; ++q)
                acc[j][q] = _mm512_dpbf16_ps(acc[j][q], x, (__m512bh)_mm512_loadu_si512(wk + 32 * q));
        }
    }
}

BF16 INLINE void fwd_row1(const fwd_args *a, int64_t t, int64_t jb, const uint16_t *hp, const float *cp,
                          float *c_out, const int NJ) {
    __m512 acc[2][4];
    for (int j = 0; j < 2; ++j)
        for (int q = 0; q < 4; ++q) acc[j][q] = _mm512_setzero_ps();
    row1_gemm(a->X + t * a->D, a->D, a->Px, jb, acc, NJ);
    row1_gemm(hp, a->H, a->Ph, jb, acc, NJ);
    for (int j = 0; j < NJ; ++j) {
        const int64_t j0 = (jb + j) * 16;
        fwd_cell(a, t, 0, j0, tail_mask(j0, a->H), acc[j][0], acc[j][1], acc[j][2], acc[j][3], cp, c_out);
    }
}

/* The vdpbf16ps forward on a claimed-phase team (thread_team.h), as the small-batch kernels: one
 * phase per step, an item `group` 16-unit blocks (an even number at B = 1: the one-row tile's
 * pairs) for every row. A thread does its own items first and takes those of a thread that has not
 * started, so a step never waits for a thread the scheduler has not run (beside a busy process
 * the fixed split and its OpenMP join took ~11 ms for a one-step call at H 512, 2 threads, on the
 * Zen 4 EPYC: a peers --competitor 1 run at b997dfa, not kept). Who computes an item never
 * changes its sums. */
BF16 static void fwd_item(const fwd_args *a, int64_t t, int64_t g) {
    const int64_t B = a->B, H = a->H, nb = (H + 15) / 16, n6 = six_row_tiles(B);
    const int64_t jb0 = g * a->group, jb1 = jb0 + a->group < nb ? jb0 + a->group : nb;
    const uint16_t *hp = t == 0 ? a->h0 : a->Y + (t - 1) * B * H;
    const float *cp = t == 0 ? a->c0 : (a->G ? a->C + (t - 1) * B * H : a->C + ((t - 1) & 1) * B * H);
    float *c_out = a->G ? a->C + t * B * H : a->C + (t & 1) * B * H;
    int64_t jb = jb0;
    if (B == 1) {
        for (; jb + 2 <= jb1; jb += 2) fwd_row1(a, t, jb, hp, cp, c_out, 2);
        if (jb < jb1) fwd_row1(a, t, jb, hp, cp, c_out, 1);
        return;
    }
    for (; jb < jb1; ++jb) {
        int64_t rb = 0;
        for (int64_t i = 0; i < n6; ++i, rb += 6) fwd_tile6(a, t, rb, jb, hp, cp, c_out);
        for (; rb < B; rb += 4) fwd_tile4(a, t, rb, jb, hp, cp, c_out);
    }
}
#define FWD_ITEM(p, g) fwd_item(a, p, g)
BF16 static void fwd_worker(void *arg, int tid) {
    fwd_args *a = (fwd_args *)arg;
    TEAM_PHASES(&a->ph, tid, a->T, FWD_ITEM)
}
/* Whole sequences (T > 1) always run on torch's OpenMP team: a plain call's own torch ops (the
 * casts around it) keep OpenMP's threads spinning on the cores the pool's worker would need. On
 * the pool, or on a policy free to move there, a B32 T35 H256 autocast call ran ~2x slower than
 * on OpenMP's team (59.7 against 123.6 us a step, the pool's worker late at 35 of 50 calls: Zen 4
 * EPYC, 2 threads, ad hoc). One-step calls (a stream has no torch op between its steps) start on
 * the pool, as the small-batch kernels' inference calls do. */
static team_policy seq_policy = TEAM_POLICY(TEAM_OPENMP, 1);

/* ---------------------------------------------------------------- backward */
typedef struct {
    const uint16_t *dY, *Wq, *G;
    const float *C, *c0;
    uint16_t *dG;
    float *DH, *DC, *db;
    int64_t T, B, H;
    int nthreads;
    const uint16_t *zero;   /* 4H zeros */
    const int64_t *len;
    int64_t Bp, Kp;         /* dG is (T, Bp, Kp): B, 4H here; padded to 16 rows, 32 columns for AMX */
    int split_batch;        /* AMX only: threads own 16-row blocks of the batch (see bwd_worker_amx) */
    float *db_parts;        /* AMX split_batch: per-thread bias gradients (nthreads, 4H), summed after */
} bwd_args;

/* Phase A: gate gradients of step t for units [j0, j0+16) of rows [b0, b1) (float32, stored
 * bf16); their sum over the rows added to db (where given). */
BF16 INLINE void bwd_cell_rows(const bwd_args *a, int64_t t, int64_t jb, int64_t b0, int64_t b1, float *db) {
    const int64_t B = a->B, H = a->H, j0 = jb * 16;
    const __mmask16 m = tail_mask(j0, H);
    const __m512 one = _mm512_set1_ps(1.0f);
    __m512 sb0 = _mm512_setzero_ps(), sb1 = sb0, sb2 = sb0, sb3 = sb0;
    for (int64_t b = b0; b < b1; ++b) {
        const int64_t o = b * H + j0;
        uint16_t *d = a->dG + (t * a->Bp + b) * a->Kp + j0;
        if (a->len && t >= a->len[b]) {   /* finished row: no gate gradients; dh, dc carried */
            for (int q = 0; q < 4; ++q) _mm256_mask_storeu_epi16(d + q * H, m, _mm256_setzero_si256());
            continue;
        }
        const uint16_t *g = a->G + ((t * ((H + 15) / 16) + jb) * B + b) * 80;
        __m512 dh = _mm512_add_ps(load_bf16(m, a->dY + t * B * H + o), _mm512_maskz_loadu_ps(m, a->DH + o));
        __m512 dc = _mm512_maskz_loadu_ps(m, a->DC + o);
        __m512 I = load_bf16(m, g), F = load_bf16(m, g + 16);
        __m512 Ct = load_bf16(m, g + 32), O = load_bf16(m, g + 48), tc = load_bf16(m, g + 64);
        __m512 cp = _mm512_maskz_loadu_ps(m, t > 0 ? a->C + (t - 1) * B * H + o : a->c0 + o);
        __m512 dct = _mm512_fmadd_ps(_mm512_mul_ps(dh, O), _mm512_fnmadd_ps(tc, tc, one), dc);
        __m512 di = _mm512_mul_ps(_mm512_mul_ps(dct, Ct), _mm512_mul_ps(I, _mm512_sub_ps(one, I)));
        __m512 df = _mm512_mul_ps(_mm512_mul_ps(dct, cp), _mm512_mul_ps(F, _mm512_sub_ps(one, F)));
        __m512 dg = _mm512_mul_ps(_mm512_mul_ps(dct, I), _mm512_fnmadd_ps(Ct, Ct, one));
        __m512 dO = _mm512_mul_ps(_mm512_mul_ps(dh, tc), _mm512_mul_ps(O, _mm512_sub_ps(one, O)));
        store_bf16(d, m, di);
        store_bf16(d + H, m, df);
        store_bf16(d + 2 * H, m, dg);
        store_bf16(d + 3 * H, m, dO);
        _mm512_mask_storeu_ps(a->DC + o, m, _mm512_mul_ps(dct, F));
        sb0 = _mm512_add_ps(sb0, di);
        sb1 = _mm512_add_ps(sb1, df);
        sb2 = _mm512_add_ps(sb2, dg);
        sb3 = _mm512_add_ps(sb3, dO);
    }
    ADD_BIAS_GRAD(db, j0, H, m, sb0, sb1, sb2, sb3)
}

/* Phase A for every row (the template workers' and the hidden-split AMX worker's). */
BF16 INLINE void bwd_cell(const bwd_args *a, int64_t t, int64_t jb) { bwd_cell_rows(a, t, jb, 0, a->B, a->db); }

/* Phase B: DH[rows rb.., units n0..n0+64) = dG_t[rows, :] @ W_hh[:, n0..] (bf16 x bf16, float32). */
DEFINE_BWD_STORE()
BWD_TILE(6, DECL6, DP6)
BWD_TILE(4, DECL4, DP4)
DEFINE_BWD_WORKER()

/* ---------------------------------------------------------------- AMX (tile) variants */
/* Where the CPU has AMX-BF16 (Intel Sapphire Rapids and later), the same recurrences with the
 * GEMMs on tile registers: TDPBF16PS multiplies a 16 x 32 bf16 A tile by a 16 pair-row x 16 column
 * B tile into a 16 x 16 float32 C tile (8192 multiply-adds per instruction; vdpbf16ps does 32).
 * The weight panels above are already in AMX's B layout: pair row p of a panel holds 64 columns
 * x 2 bf16 (256 bytes), so the B tile of gate (or column block) q is 16 pair rows of 64 bytes at
 * offset q * 64, stride 256. A tiles are 16 batch rows x 32 k of X, h or dG, so those operands
 * live in zero-padded buffers (rows to Bp = 16n, k to 32n). Tiles 0-3 accumulate the four gates
 * (forward) or four 16-column blocks of dh (backward); tile 4 is A; tiles 5-7 take B in turn. The
 * accumulators go through a per-thread 4 KB scratch to the same epilogues as above. */
#define AMX __attribute__((target("avx512f,avx512bf16,avx512vl,avx512dq,avx512bw,fma,amx-tile,amx-bf16")))

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_config;

AMX static void amx_configure(void) {
    tile_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int i = 0; i < 8; ++i) { cfg.colsb[i] = 64; cfg.rows[i] = 16; }
    _tile_loadconfig(&cfg);
}

/* C tiles 0-3 += A (16 rows at A, row stride LDA bytes, 32 k per step, step k's tile at A + k
 * AK bytes, NK steps) x the four B tiles of each step's 16 pair rows of panel P (256 bytes per
 * pair row); AFTER after each step. Row-major operands: LDA = the row's bytes, AK = 64; the h
 * operand's tile-blocked buffer (see fwd_args.Hb): LDA = 64, AK = 1024. */
#define AMX_KLOOP_THEN(A, LDA, AK, P, NK, AFTER)                                                      \
    for (int64_t kb = 0; kb < (NK); ++kb) {                                                           \
        const char *pb = (const char *)(P) + kb * 16 * 256;                                           \
        _tile_loadd(4, (const char *)(A) + kb * (AK), (LDA));                                         \
        _tile_loadd(5, pb, 256);                                                                      \
        _tile_dpbf16ps(0, 4, 5);                                                                      \
        _tile_loadd(6, pb + 64, 256);                                                                 \
        _tile_dpbf16ps(1, 4, 6);                                                                      \
        _tile_loadd(7, pb + 128, 256);                                                                \
        _tile_dpbf16ps(2, 4, 7);                                                                      \
        _tile_loadd(5, pb + 192, 256);                                                                \
        _tile_dpbf16ps(3, 4, 5);                                                                      \
        AFTER                                                                                         \
    }
#define AMX_KLOOP(A, LDA, P, NK) AMX_KLOOP_THEN(A, LDA, 64, P, NK, )
/* Two row blocks at once, two gates (columns q0, q0 + 1 of the panel) at a time: C tiles 0, 1 +=
 * rows A0 x gates q0, q0 + 1; tiles 2, 3 += rows A1 x the same. Each B tile (weights, from L2)
 * serves two row blocks: half the weight loads of AMX_KLOOP_THEN per multiply, which is what
 * bounds the forward once the batch has 32 rows or more. */
#define AMX_KLOOP22_THEN(A0, A1, LDA, AK, P, Q0, NK, AFTER)                                           \
    for (int64_t kb = 0; kb < (NK); ++kb) {                                                           \
        const char *pb = (const char *)(P) + kb * 16 * 256 + (Q0) * 64;                               \
        _tile_loadd(4, (const char *)(A0) + kb * (AK), (LDA));                                        \
        _tile_loadd(6, pb, 256);                                                                      \
        _tile_dpbf16ps(0, 4, 6);                                                                      \
        _tile_loadd(7, pb + 64, 256);                                                                 \
        _tile_dpbf16ps(1, 4, 7);                                                                      \
        _tile_loadd(5, (const char *)(A1) + kb * (AK), (LDA));                                        \
        _tile_dpbf16ps(2, 5, 6);                                                                      \
        _tile_dpbf16ps(3, 5, 7);                                                                      \
        AFTER                                                                                         \
    }
/* Accumulator tile T starts as gate Q's bias for units j0.. in every row (a row stride of 0), or 0:
 * the bias add leaves the cell, whose vector work shares ports with the tile multiplies. */
#define AMX_INIT(T, Q)                                                                                \
    if (a->bias_tiles) _tile_loadd(T, a->bias_tiles + (Q) * ((H + 15) / 16 * 16) + j0, 0);            \
    else _tile_zero(T);
#define AMX_STORE4(SCR)                                                                               \
    _tile_stored(0, (SCR), 64); _tile_stored(1, (SCR) + 256, 64);                                     \
    _tile_stored(2, (SCR) + 512, 64); _tile_stored(3, (SCR) + 768, 64);

/* The cell of a block whose gates are in scratch, run a few rows at a time between the tile
 * instructions of the next block, so the vector units work while the tile unit multiplies
 * (the cell is most of the forward's time; run after the GEMM it left the tile unit idle).
 * Up to 32 rows: row r's gate q at scr[(r / 16) * 1024 + q * 256 + (r % 16) * 16]. */
typedef struct {
    const float *scr, *cp;
    float *c_out;
    int64_t t, rb, j0, n, next;
    __mmask16 m;
} pending_cell;

AMX INLINE void cell_rows(const fwd_args *a, pending_cell *p, int64_t upto) {
    const int64_t end = upto < p->n ? upto : p->n;
    for (; p->next < end; ++p->next) {
        const float *g = p->scr + (p->next >> 4) * 1024 + (p->next & 15) * 16;
        fwd_cell(a, p->t, p->rb + p->next, p->j0, p->m, _mm512_load_ps(g), _mm512_load_ps(g + 256),
                 _mm512_load_ps(g + 512), _mm512_load_ps(g + 768), p->cp, p->c_out);
    }
}

/* AMX_KLOOP with ``rows`` rows of the pending cell after each k step. */
#define AMX_KLOOP_CELL(A, LDA, AK, P, NK, rows) AMX_KLOOP_THEN(A, LDA, AK, P, NK, cell_rows(a, &pend, pend.next + (rows));)
/* The same for AMX_KLOOP22: twice the rows after every second k step (measured ~4% faster at
 * B64 H512 than a row after each, ~10% faster than the whole cell between blocks). */
#define AMX_KLOOP22_CELL(A0, A1, LDA, AK, P, Q0, NK, rows)                                            \
    AMX_KLOOP22_THEN(A0, A1, LDA, AK, P, Q0, NK, if (kb & 1) cell_rows(a, &pend, pend.next + 2 * (rows)); \
                     for (int i_ = 0; i_ < PF_LINES && pf_left > 0; ++i_, --pf_left, pf += 64)              \
                         _mm_prefetch(pf, _MM_HINT_T1);)
/* Where one thread's weights do not fit its L2 (B64 H512 on one thread: 2.6 MB), each panel's
 * first pass waits on L3: so, PF_LINES cache lines a k step, the next panel's W_hh part is
 * prefetched into L2 while this one multiplies (B64 H512, one thread: ~10% faster; more lines a
 * step, or W_ih's part too, measured slower). */
#define PF_LINES 16

/* Two ways to split a step among threads. Hidden split (default): each thread owns a slice of
 * the 16-unit blocks for every row, so every step ends at a barrier (step t + 1 reads all of h_t)
 * and each core reads only its slice of the weights. Batch split (split_batch): each thread owns
 * whole 16-row blocks of the batch for all units; rows never read each other, so there is no
 * barrier and no h_t crossing between cores, but each core reads all of the weights every step:
 * the caller picks it where they fit a core's L2 and the row blocks divide among the threads. */
AMX static void fwd_worker_amx(void *arg) {
    const fwd_args *a = (const fwd_args *)arg;
    team_t tm = team(a->nthreads);
    const int64_t B = a->B, H = a->H, Bp = a->Bp, Dp = a->Dp, Hp = a->Hp, nb = (H + 15) / 16, nrb = Bp / 16;
    const int sb = a->split_batch && tm.nth > 1;
    const int64_t jlo = sb ? 0 : nb * tm.tid / tm.nth, jhi = sb ? nb : nb * (tm.tid + 1) / tm.nth;
    const int64_t rlo = sb ? nrb * tm.tid / tm.nth * 16 : 0, rhi = sb ? nrb * (tm.tid + 1) / tm.nth * 16 : B;
    const int64_t r1 = rhi < B ? rhi : B;
    const int64_t nk = Dp / 32 + Hp / 32, per_k = (16 + nk - 1) / nk;   /* cell rows per k step */
    float scr[2][2048] __attribute__((aligned(64)));
    const char *pf = NULL;
    int64_t pf_left = 0;
    amx_configure();
    for (int64_t t = 0; t < a->T; ++t) {
        const uint16_t *hp = a->Hb + ((t + 1) & 1) * Bp * Hp;
        const float *cp = t == 0 ? a->c0 : (a->G ? a->C + (t - 1) * B * H : a->C + ((t - 1) & 1) * B * H);
        float *c_out = a->G ? a->C + t * B * H : a->C + (t & 1) * B * H;
        pending_cell pend = {scr[0], cp, c_out, t, 0, 0, 0, 0, 0};   /* nothing pending (n = 0) */
        int cur = 0;
        for (int64_t jb = jlo; jb < jhi; ++jb) {
            const int64_t j0 = jb * 16;
            for (int64_t rb = rlo; rb < r1;) {
                const int64_t rows = rb + 16 < r1 ? 32 : 16;   /* two row blocks where there are */
                if (rows == 32) {
                    const uint16_t *x0 = a->X + (t * Bp + rb) * Dp, *h0 = hp + rb * Hp;   /* row block rb of either layout */
                    if (a->prefetch && rb == rlo) {   /* the next panel (after the last: the first, for step t + 1) */
                        pf = (const char *)(a->Ph + (jb + 1 < jhi ? jb + 1 : jlo) * (Hp / 2) * 128);
                        pf_left = Hp / 2 * 256 / 64;
                    }
                    for (int q0 = 0; q0 < 4; q0 += 2) {
                        AMX_INIT(0, q0) AMX_INIT(1, q0 + 1) AMX_INIT(2, q0) AMX_INIT(3, q0 + 1)
                        AMX_KLOOP22_CELL(x0, x0 + 16 * Dp, Dp * 2, 64, a->Px + jb * (Dp / 2) * 128, q0, Dp / 32, per_k)
                        AMX_KLOOP22_CELL(h0, h0 + 16 * Hp, 64, 1024, a->Ph + jb * (Hp / 2) * 128, q0, Hp / 32, per_k)
                        float *s = scr[cur] + q0 * 256;
                        _tile_stored(0, s, 64); _tile_stored(1, s + 256, 64);
                        _tile_stored(2, s + 1024, 64); _tile_stored(3, s + 1280, 64);
                    }
                } else {
                    AMX_INIT(0, 0) AMX_INIT(1, 1) AMX_INIT(2, 2) AMX_INIT(3, 3)
                    AMX_KLOOP_CELL(a->X + (t * Bp + rb) * Dp, Dp * 2, 64, a->Px + jb * (Dp / 2) * 128, Dp / 32, per_k)
                    AMX_KLOOP_CELL(hp + rb * Hp, 64, 1024, a->Ph + jb * (Hp / 2) * 128, Hp / 32, per_k)
                    AMX_STORE4(scr[cur])
                }
                cell_rows(a, &pend, 32);
                pending_cell next = {scr[cur], cp, c_out, t, rb, j0, B - rb < rows ? B - rb : rows, 0, tail_mask(j0, H)};
                pend = next;
                cur ^= 1;
                rb += rows;
            }
        }
        cell_rows(a, &pend, 32);
        if (!sb) barrier(tm);
    }
    _tile_release();
}

/* Hidden split: phase A (the cell) over a slice of the 16-unit blocks, a barrier, phase B (dh)
 * over a slice of the 64-column blocks, a barrier. Batch split (see fwd_worker_amx): both phases
 * over the thread's own row blocks, no barrier; the bias gradient goes to the thread's own row
 * of db_parts (summed by the caller). */
AMX static void bwd_worker_amx(void *arg) {
    const bwd_args *a = (const bwd_args *)arg;
    team_t tm = team(a->nthreads);
    const int64_t B = a->B, H = a->H, Bp = a->Bp, Kp = a->Kp, nb16 = (H + 15) / 16, nb64 = (H + 63) / 64, nrb = Bp / 16;
    const int sb = a->split_batch && tm.nth > 1;
    const int64_t clo = sb ? 0 : nb16 * tm.tid / tm.nth, chi = sb ? nb16 : nb16 * (tm.tid + 1) / tm.nth;
    const int64_t glo = sb ? 0 : nb64 * tm.tid / tm.nth, ghi = sb ? nb64 : nb64 * (tm.tid + 1) / tm.nth;
    const int64_t rlo = sb ? nrb * tm.tid / tm.nth * 16 : 0, rhi = sb ? nrb * (tm.tid + 1) / tm.nth * 16 : B;
    float *db = sb && a->db ? a->db_parts + tm.tid * 4 * H : a->db;
    const int64_t r1 = rhi < B ? rhi : B;
    float scr[2048] __attribute__((aligned(64)));   /* up to 32 rows: as the forward's pending cell */
    amx_configure();
    for (int64_t t = a->T - 1; t >= 0; --t) {
        for (int64_t jb = clo; jb < chi; ++jb) bwd_cell_rows(a, t, jb, rlo, r1, db);
        if (!sb) barrier(tm);
        for (int64_t nb = glo; nb < ghi; ++nb)
            for (int64_t rb = rlo; rb < r1;) {
                const uint16_t *g0 = a->dG + (t * Bp + rb) * Kp;
                const char *wq = (const char *)(a->Wq + nb * (Kp / 2) * 128);
                const int64_t rows = rb + 16 < r1 ? 32 : 16;   /* two row blocks per weight tile where there are */
                if (rows == 32) {
                    for (int q0 = 0; q0 < 4; q0 += 2) {
                        _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
                        AMX_KLOOP22_THEN(g0, g0 + 16 * Kp, Kp * 2, 64, wq, q0, Kp / 32, )
                        _tile_stored(0, scr + q0 * 256, 64); _tile_stored(1, scr + q0 * 256 + 256, 64);
                        _tile_stored(2, scr + 1024 + q0 * 256, 64); _tile_stored(3, scr + 1280 + q0 * 256, 64);
                    }
                } else {
                    _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
                    AMX_KLOOP(g0, Kp * 2, wq, Kp / 32)
                    AMX_STORE4(scr)
                }
                const int64_t n = B - rb < rows ? B - rb : rows;
                for (int64_t r = 0; r < n; ++r) {
                    const float *g = scr + (r >> 4) * 1024 + (r & 15) * 16;
                    bwd_store(a, t, rb + r, nb * 64, _mm512_load_ps(g), _mm512_load_ps(g + 256),
                              _mm512_load_ps(g + 512), _mm512_load_ps(g + 768));
                }
                rb += rows;
            }
        if (!sb) barrier(tm);
    }
    _tile_release();
}
#endif /* LSTM_X86 */

/* ---------------------------------------------------------------- panel packing */
/* Row r of a row-major (rows, K) float32 or bf16 matrix as K bf16 in dst (round to nearest even). */
#if LSTM_X86
BF16 static void row_to_bf16(const void *W, int w_is_f32, int64_t r, int64_t K, uint16_t *dst) {
    if (!w_is_f32) { memcpy(dst, (const uint16_t *)W + r * K, (size_t)K * 2); return; }
    const float *src = (const float *)W + r * K;
    for (int64_t k = 0; k < K; k += 16) {
        const __mmask16 m = tail_mask(k, K);
        store_bf16(dst + k, m, _mm512_maskz_loadu_ps(m, src + k));
    }
}
#else
static void row_to_bf16(const void *W, int w_is_f32, int64_t r, int64_t K, uint16_t *dst) {
    (void)W; (void)w_is_f32; (void)r; (void)K; (void)dst;
}
#endif

/* P32[j][p][q*16 + u] = the pair (W[q*H + j*16 + u][2p], [2p + 1]); rows past H and k past K
 * are zero. Threads split the panels j. Per gate q and 16 pair rows: the 16 units' rows are read
 * (32 k each, converted with vcvtne2ps2bf16, or loaded for bf16), transposed as a 16 x 16 block
 * of 32-bit pairs in registers, and stored as 16 contiguous 64-byte runs. One pass over W per call
 * (run on every call, never cached: see prepare()). */
#if LSTM_X86
typedef struct {
    const void *W;
    int w_is_f32;
    int64_t H, K, Kpad;
    uint32_t *P32;
    int nthreads;
} pack_args;

/* The 16 bf16 pairs (W[r][k0 + 2i], W[r][k0 + 2i + 1]), i < 16, as the 32-bit lanes of one
 * vector (zero at k >= K). */
BF16 INLINE __m512 row_pairs(const pack_args *a, int64_t r, int64_t k0) {
    const int64_t left = a->K - k0;
    const __mmask16 m0 = left >= 16 ? 0xFFFF : left > 0 ? (__mmask16)((1u << left) - 1u) : 0;
    const __mmask16 m1 = left >= 32 ? 0xFFFF : left > 16 ? (__mmask16)((1u << (left - 16)) - 1u) : 0;
    if (a->w_is_f32) {
        const float *src = (const float *)a->W + r * a->K + k0;
        return (__m512)_mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(m1, src + 16), _mm512_maskz_loadu_ps(m0, src));
    }
    return (__m512)_mm512_maskz_loadu_epi16((__mmask32)m0 | (__mmask32)m1 << 16, (const uint16_t *)a->W + r * a->K + k0);
}

BF16 static void pack_worker(void *arg) {
    const pack_args *a = (const pack_args *)arg;
    team_t tm = team(a->nthreads);
    const int64_t H = a->H, nb = (H + 15) / 16, np = (a->Kpad + 1) / 2;
    for (int64_t j = nb * tm.tid / tm.nth; j < nb * (tm.tid + 1) / tm.nth; ++j)
        for (int q = 0; q < 4; ++q)
            for (int64_t p0 = 0; p0 < np; p0 += 16) {
                __m512 v[16];   /* v[u]: 16 pairs of unit j*16 + u; transposed, v[i]: pair p0 + i of 16 units */
                for (int u = 0; u < 16; ++u)
                    v[u] = j * 16 + u < H ? row_pairs(a, q * H + j * 16 + u, 2 * p0) : _mm512_setzero_ps();
                v_transpose16(v);
                const int64_t n = np - p0 < 16 ? np - p0 : 16;
                for (int64_t i = 0; i < n; ++i) _mm512_storeu_ps((float *)(a->P32 + (j * np + p0 + i) * 64 + q * 16), v[i]);
            }
}
#endif

static int pack_panels(const void *W, int w_is_f32, int64_t H, int64_t K, int64_t Kpad, uint16_t *P, int nthreads) {
#if LSTM_X86
    pack_args a = {W, w_is_f32, H, K, Kpad, (uint32_t *)P, nthreads};
    resolve_gomp();
    run(pack_worker, &a, nthreads);
    return 0;
#else
    (void)W; (void)w_is_f32; (void)H; (void)K; (void)Kpad; (void)P; (void)nthreads;
    return -1;
#endif
}

/* P32[j][p][u] = the pair (W[2p][j*64 + u], W[2p + 1][j*64 + u]); zero past H and past 4H rows. */
static int pack_backward_panels(const void *W, int w_is_f32, int64_t H, int64_t Kpad, uint16_t *P) {
    const int64_t nb = (H + 63) / 64, np = Kpad / 2;   /* 4H rows of W_hh (zero rows to Kpad) in pairs */
    uint16_t *r0 = calloc((size_t)(2 * (nb * 64)), sizeof(uint16_t));
    if (!r0) return -1;
    uint16_t *r1 = r0 + nb * 64;
    uint32_t *P32 = (uint32_t *)P;
    for (int64_t p = 0; p < np; ++p) {
        if (2 * p < 4 * H) row_to_bf16(W, w_is_f32, 2 * p, H, r0); else memset(r0, 0, (size_t)H * 2);
        if (2 * p + 1 < 4 * H) row_to_bf16(W, w_is_f32, 2 * p + 1, H, r1); else memset(r1, 0, (size_t)H * 2);
        for (int64_t j = 0; j < nb; ++j) {
            uint32_t *dst = P32 + (j * np + p) * 64;
            for (int64_t u = 0; u < 64; ++u)
                dst[u] = (uint32_t)r0[j * 64 + u] | (uint32_t)r1[j * 64 + u] << 16;   /* zeros past H */
        }
    }
    free(r0);
    return 0;
}

/* ---------------------------------------------------------------- transpose */
/* dst (N, R) = src (R, N)^T, src bf16 with row stride ld, dst float32 or bf16 with row stride
 * ldd. Two uses around the weight-gradient GEMM dW^T = [X | h_prev]^T dG (oneDNN runs it at AMX
 * speed with both operands row-major; a transposed bf16 operand ran ~4x slower): building its
 * [X | h_prev]^T operand, and turning its (D + H, 4H) result into nn.LSTM's (4H, D) and (4H, H)
 * weight gradients. torch's strided copy ran at ~2 ns an element (0.24 ms of a 4 ms d2l training
 * step at one thread, for the gradients alone); here 16 x 16 blocks go through registers: 16 row
 * loads widened to float32, the 4-stage unpack/shuffle transpose, 16 row stores. Threads split
 * the 16-column blocks of src. */
typedef struct {
    const uint16_t *src;
    int64_t ld, R, N;
    void *dst;
    int64_t ldd;
    int dst_is_f32, nthreads;
} tr_args;

#if LSTM_X86
BF16 static void tr_worker(void *arg) {
    const tr_args *a = (const tr_args *)arg;
    team_t tm = team(a->nthreads);
    const int64_t nnb = (a->N + 15) / 16;
    for (int64_t nb = nnb * tm.tid / tm.nth; nb < nnb * (tm.tid + 1) / tm.nth; ++nb) {
        const int64_t n0 = nb * 16, nn = a->N - n0 < 16 ? a->N - n0 : 16;
        const __mmask16 mn = tail_mask(n0, a->N);
        for (int64_t r0 = 0; r0 < a->R; r0 += 16) {
            const __mmask16 mr = tail_mask(r0, a->R);
            __m512 v[16];
            for (int i = 0; i < 16; ++i)
                v[i] = r0 + i < a->R ? load_bf16(mn, a->src + (r0 + i) * a->ld + n0) : _mm512_setzero_ps();
            v_transpose16(v);
            for (int j = 0; j < nn; ++j) {   /* v[j]: column n0 + j, rows r0.. */
                if (a->dst_is_f32) _mm512_mask_storeu_ps((float *)a->dst + (n0 + j) * a->ldd + r0, mr, v[j]);
                else store_bf16((uint16_t *)a->dst + (n0 + j) * a->ldd + r0, mr, v[j]);
            }
        }
    }
}
#endif

/* ---------------------------------------------------------------- dot-product throughput probe */
/* Whether vdpbf16ps pays on this CPU is a property of the core, not of the ISA flags: on Intel
 * cores measured here (Xeon with AMX, AMX off) one vdpbf16ps zmm (32 multiply-adds) issues every
 * ~2 cycles, a quarter of the rate of vfmadd231ps (16 each, 2 a cycle): half the multiply-adds,
 * so the float32 kernels on exactly upcast operands beat the bf16 ones; AMD's Zen 4 issues
 * vdpbf16ps zmm at its FMA rate (twice the multiply-adds). probe_dot_rates() times both on 12
 * independent accumulators (throughput, not latency) and returns nanoseconds per instruction. */
#if LSTM_X86
#define PROBE_ACCS 12
BF16 static double probe_dp(long n) {
    __m512 c[PROBE_ACCS];
    for (int i = 0; i < PROBE_ACCS; ++i) c[i] = _mm512_setzero_ps();
    __m512bh x = (__m512bh)_mm512_set1_epi32(0x3c003c00), y = x;   /* tiny values: no overflow */
    const double t0 = now_seconds();
    for (long k = 0; k < n; ++k) {
        for (int i = 0; i < PROBE_ACCS; ++i) c[i] = _mm512_dpbf16_ps(c[i], x, y);
        __asm__ volatile("" : "+v"(x));   /* keep the loop: x may change */
    }
    const double t = now_seconds() - t0;
    float sink = 0;
    for (int i = 0; i < PROBE_ACCS; ++i) sink += _mm512_reduce_add_ps(c[i]);
    __asm__ volatile("" : : "x"(sink));
    return t / ((double)n * PROBE_ACCS) * 1e9;
}

BF16 static double probe_fma(long n) {
    __m512 c[PROBE_ACCS];
    for (int i = 0; i < PROBE_ACCS; ++i) c[i] = _mm512_setzero_ps();
    __m512 x = _mm512_set1_ps(1e-3f), y = x;
    const double t0 = now_seconds();
    for (long k = 0; k < n; ++k) {
        for (int i = 0; i < PROBE_ACCS; ++i) c[i] = _mm512_fmadd_ps(x, y, c[i]);
        __asm__ volatile("" : "+v"(x));
    }
    const double t = now_seconds() - t0;
    float sink = 0;
    for (int i = 0; i < PROBE_ACCS; ++i) sink += _mm512_reduce_add_ps(c[i]);
    __asm__ volatile("" : : "x"(sink));
    return t / ((double)n * PROBE_ACCS) * 1e9;
}
#endif

static int bf16_ok(void);

/* probe_dot_rates(iterations) -> (ns per vdpbf16ps, ns per vfmadd231ps), each the best of 5
 * interleaved runs (a busy machine slows a run, never speeds one up). */
static PyObject *py_probe_dot_rates(PyObject *self, PyObject *arg) {
    long n = PyLong_AsLong(arg);
    if (PyErr_Occurred()) return NULL;
    if (n <= 0) { PyErr_SetString(PyExc_ValueError, "probe_dot_rates: iterations must be positive"); return NULL; }
    if (!bf16_ok()) { PyErr_SetString(PyExc_RuntimeError, "probe_dot_rates needs AVX512-BF16"); return NULL; }
    double dp = 1e30, fm = 1e30;
#if LSTM_X86
    Py_BEGIN_ALLOW_THREADS
    for (int r = 0; r < 5; ++r) {
        const double a = probe_dp(n), b = probe_fma(n);
        dp = a < dp ? a : dp;
        fm = b < fm ? b : fm;
    }
    Py_END_ALLOW_THREADS
#endif
    return Py_BuildValue("(dd)", dp, fm);
}

/* ---------------------------------------------------------------- Python bindings */
static int bf16_ok(void) {
#if LSTM_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512bf16");
#else
    return 0;
#endif
}

static PyObject *py_available(PyObject *self, PyObject *unused) { return PyBool_FromLong(bf16_ok()); }

/* AMX-BF16 and AMX-TILE in CPUID leaf 7, and the kernel's permission for the tile state
 * (ARCH_REQ_XCOMP_PERM for XTILEDATA: process-wide, granted once; oneDNN asks the same). */
static int amx_ok(void) {
#if LSTM_X86 && defined(__linux__)
    static int state = -1;
    if (state >= 0) return state;
    state = 0;
    if (!bf16_ok()) return state;
    unsigned eax, ebx, ecx, edx;
    __asm__ volatile("cpuid" : "=a"(eax), "=b"(ebx), "=c"(ecx), "=d"(edx) : "a"(7), "c"(0));
    if (!((edx >> 22) & 1) || !((edx >> 24) & 1)) return state;
    state = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) == 0;
    return state;
#else
    return 0;
#endif
}

static PyObject *py_amx_available(PyObject *self, PyObject *unused) { return PyBool_FromLong(amx_ok()); }

#if LSTM_X86
DEFINE_RUN_WITH_ZERO_ROW()
#endif

static PyObject *py_forward_seq(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    CHECK_CALL("forward_seq", 15, bf16_ok(), "AVX512-BF16")
#if LSTM_X86
    PARSE_FWD_ARGS(a)
    if (PyErr_Occurred()) return NULL;
    const int64_t nb = (a.H + 15) / 16, pair = a.B == 1 ? 2 : 1, units = (nb + pair - 1) / pair;
    a.nthreads = team_size(a.nthreads, units);
    a.group = team_item_group(units, a.nthreads) * pair;
    team_phases_init(&a.ph, a.nthreads, (nb + a.group - 1) / a.group, a.T);
    uint16_t *zero = calloc((size_t)((a.D > a.H ? a.D : a.H) + 2), sizeof(uint16_t));
    if (!zero) return PyErr_NoMemory();
    a.zero = zero;
    /* saving calls (training) and whole sequences on OpenMP's team (seq_policy), one-step calls
     * (streams) as the inference policy says */
    launch_team(fwd_worker, &a, &a.ph, a.G ? &train_policy : a.T > 1 ? &seq_policy : &infer_policy);
    free(zero);
    Py_RETURN_NONE;
#else
    Py_RETURN_NONE;
#endif
}

/* forward_seq_amx(Xp, Px, bias|None, Ph, h0, c0, Y, C, G|None, T, B, D, H, nthreads, len|None, Bp, Dp, Hp,
 * split_batch, Hb, prefetch): forward_seq's arguments with X padded to (T, Bp, Dp), the bias as (4, H16),
 * H16 = H rounded up to 16, zero padded, and Hb (2, Bp, Hp) the zeroed, tile-blocked h operand
 * buffers (fwd_args.Hb; h0 (B, H) is copied into Hb[1] here); split_batch: threads own row
 * blocks instead of unit blocks; prefetch: the next panel into L2 (both fwd_worker_amx). */
static PyObject *py_forward_seq_amx(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    CHECK_CALL("forward_seq_amx", 21, amx_ok(), "AMX-BF16")
#if LSTM_X86
    PARSE_FWD_ARGS(a)
    a.Bp = PyLong_AsLongLong(args[15]);
    a.Dp = PyLong_AsLongLong(args[16]);
    a.Hp = PyLong_AsLongLong(args[17]);
    a.split_batch = PyObject_IsTrue(args[18]);
    a.Hb = PyLong_AsVoidPtr(args[19]);
    a.prefetch = PyObject_IsTrue(args[20]);
    a.bias_tiles = a.bias;   /* (4, H16) here: into the accumulator tiles, not the cell */
    a.bias = NULL;
    if (PyErr_Occurred()) return NULL;
    if (a.Bp % 16 || a.Bp < a.B || a.Dp % 32 || a.Dp < a.D || a.Hp % 32 || a.Hp < a.H) {
        PyErr_SetString(PyExc_ValueError, "forward_seq_amx: bad padding");
        return NULL;
    }
    uint16_t *h1 = a.Hb + a.Bp * a.Hp;   /* h0 into Hb[1], blocked as the cell stores h_t */
    for (int64_t r = 0; r < a.B; ++r)
        for (int64_t j0 = 0; j0 < a.H; j0 += 16)
            memcpy(h1 + ((r >> 4) * (a.Hp >> 5) + (j0 >> 5)) * 512 + (r & 15) * 32 + (j0 & 31), a.h0 + r * a.H + j0,
                   (size_t)(a.H - j0 < 16 ? a.H - j0 : 16) * 2);
    a.h0 = NULL;
    return run_with_zero_row(fwd_worker_amx, &a, &a.zero, 1, a.nthreads);
#else
    Py_RETURN_NONE;
#endif
}

/* backward_seq_amx(dY, Wq, G, C, c0, dG, DH, DC, db|None, T, B, H, nthreads, len|None, Bp, Kp, split_batch):
 * backward_seq's arguments with dG (T, Bp, Kp) zero padded and Wq packed to Kp rows; split_batch as
 * in forward_seq_amx. */
static PyObject *py_backward_seq_amx(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    CHECK_CALL("backward_seq_amx", 17, amx_ok(), "AMX-BF16")
#if LSTM_X86
    PARSE_BWD_ARGS(a)
    a.Bp = PyLong_AsLongLong(args[14]);
    a.Kp = PyLong_AsLongLong(args[15]);
    a.split_batch = PyObject_IsTrue(args[16]);
    if (PyErr_Occurred()) return NULL;
    if (a.Bp % 16 || a.Bp < a.B || a.Kp % 32 || a.Kp < 4 * a.H) {
        PyErr_SetString(PyExc_ValueError, "backward_seq_amx: bad padding");
        return NULL;
    }
    const int nparts = a.nthreads > 1 ? a.nthreads : 1;
    if (a.split_batch && a.db) {   /* per-thread bias gradients: rows of one thread only, no race */
        a.db_parts = calloc((size_t)(nparts * 4 * a.H), sizeof(float));
        if (!a.db_parts) return PyErr_NoMemory();
    }
    PyObject *r = run_with_zero_row(bwd_worker_amx, &a, &a.zero, 1, a.nthreads);
    if (a.db_parts) {
        for (int i = 0; r && i < nparts; ++i)
            for (int64_t k = 0; k < 4 * a.H; ++k) a.db[k] += a.db_parts[i * 4 * a.H + k];
        free(a.db_parts);
    }
    return r;
#else
    Py_RETURN_NONE;
#endif
}

static PyObject *py_backward_seq(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    CHECK_CALL("backward_seq", 14, bf16_ok(), "AVX512-BF16")
#if LSTM_X86
    PARSE_BWD_ARGS(a)
    a.Bp = a.B;
    a.Kp = 4 * a.H;
    if (PyErr_Occurred()) return NULL;
    return run_with_zero_row(bwd_worker, &a, &a.zero, 4 * a.H + 2, a.nthreads);
#else
    Py_RETURN_NONE;
#endif
}

static PyObject *py_pack_panels(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    CHECK_CALL("pack_panels", 7, bf16_ok(), "AVX512-BF16")
    const void *W = PyLong_AsVoidPtr(args[0]);
    int w_is_f32 = PyObject_IsTrue(args[1]);
    int64_t H = PyLong_AsLongLong(args[2]), K = PyLong_AsLongLong(args[3]), Kpad = PyLong_AsLongLong(args[4]);
    uint16_t *P = PyLong_AsVoidPtr(args[5]);
    int nthreads = (int)PyLong_AsLong(args[6]);
    if (PyErr_Occurred()) return NULL;
    if (Kpad < K) { PyErr_SetString(PyExc_ValueError, "pack_panels: Kpad < K"); return NULL; }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = pack_panels(W, w_is_f32, H, K, Kpad, P, nthreads);
    Py_END_ALLOW_THREADS
    if (rc) { PyErr_SetString(PyExc_RuntimeError, "pack_panels needs x86-64"); return NULL; }
    Py_RETURN_NONE;
}

static PyObject *py_pack_backward_panels(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5) { PyErr_SetString(PyExc_TypeError, "pack_backward_panels takes 5 arguments"); return NULL; }
    const void *W = PyLong_AsVoidPtr(args[0]);
    int w_is_f32 = PyObject_IsTrue(args[1]);
    int64_t H = PyLong_AsLongLong(args[2]), Kpad = PyLong_AsLongLong(args[3]);
    uint16_t *P = PyLong_AsVoidPtr(args[4]);
    if (PyErr_Occurred()) return NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = pack_backward_panels(W, w_is_f32, H, Kpad, P);
    Py_END_ALLOW_THREADS
    if (rc) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* transpose_bf16(src, ld, R, N, dst, ldd, dst_is_f32, nthreads): dst (N, R) = src (R, N)^T, row
 * strides ld (src) and ldd (dst). */
static PyObject *py_transpose_bf16(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    CHECK_CALL("transpose_bf16", 8, bf16_ok(), "AVX512-BF16")
#if LSTM_X86
    tr_args a = {PyLong_AsVoidPtr(args[0]), PyLong_AsLongLong(args[1]), PyLong_AsLongLong(args[2]),
                 PyLong_AsLongLong(args[3]), PyLong_AsVoidPtr(args[4]), PyLong_AsLongLong(args[5]),
                 PyObject_IsTrue(args[6]), (int)PyLong_AsLong(args[7])};
    if (PyErr_Occurred()) return NULL;
    if (a.ld < a.N || a.ldd < a.R) { PyErr_SetString(PyExc_ValueError, "transpose_bf16: row stride below row length"); return NULL; }
    resolve_gomp();
    Py_BEGIN_ALLOW_THREADS
    run(tr_worker, &a, a.nthreads);
    Py_END_ALLOW_THREADS
#endif
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"probe_dot_rates", py_probe_dot_rates, METH_O, "(ns per vdpbf16ps, ns per vfmadd231ps) on this core"},
    {"transpose_bf16", (PyCFunction)(void (*)(void))py_transpose_bf16, METH_FASTCALL, "bf16 (R, N) -> (N, R) float32 or bf16"},
    {"available", py_available, METH_NOARGS, "whether this CPU runs the AVX512-BF16 sequence kernels"},
    {"amx_available", py_amx_available, METH_NOARGS, "whether this CPU (and kernel) runs the AMX-BF16 variants"},
    {"forward_seq_amx", (PyCFunction)(void (*)(void))py_forward_seq_amx, METH_FASTCALL, "bf16 LSTM forward on AMX tiles"},
    {"backward_seq_amx", (PyCFunction)(void (*)(void))py_backward_seq_amx, METH_FASTCALL, "bf16 LSTM backward on AMX tiles"},
    {"forward_seq", (PyCFunction)(void (*)(void))py_forward_seq, METH_FASTCALL, "bf16 LSTM forward over all steps"},
    TEAM_TEST_METHODS
    {"backward_seq", (PyCFunction)(void (*)(void))py_backward_seq, METH_FASTCALL, "bf16 LSTM backward over all steps"},
    {"pack_panels", (PyCFunction)(void (*)(void))py_pack_panels, METH_FASTCALL, "bf16 forward weight panels"},
    {"pack_backward_panels", (PyCFunction)(void (*)(void))py_pack_backward_panels, METH_FASTCALL, "bf16 backward weight panels"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_bf16_sequence_kernels",
                                    "Whole-sequence LSTM kernels (bfloat16 operands, float32 accumulation, AVX512-BF16).",
                                    -1, methods};

PyMODINIT_FUNC PyInit__bf16_sequence_kernels(void) { return PyModule_Create(&module); }
