/* The register-tile GEMMs, thread workers and Python argument parsing that the float32
 * (sequence_kernels.c) and bfloat16 (bf16_sequence_kernels.c) whole-sequence kernels share: the
 * same code with another operand type, inner product step and target attribute. Each template is
 * a macro that defines its function where the including file invokes it (after the types and
 * cell functions it calls), so each file keeps its own definitions in its own order.
 *
 * The including file defines, before invoking a template:
 *   SEQ_TARGET                      the function attribute (AVX512, BF16)
 *   SEQ_T                           the GEMM operand element type (float, uint16_t bf16)
 *   SEQ_FWD_GEMM(K, P, jb, STEPS)   tile rows a0..a5 (K deep) times panel jb of forward panels P
 *   SEQ_BWD_GEMM(K, P, nb, STEPS)   the same over panel nb of backward panels P
 *   (STEPS: one k step of all tile rows, DECLS: the accumulators c<row><0..3>, both given at
 *   the FWD_TILE / BWD_TILE invocation), the types fwd_args and bwd_args (fields of the same
 *   names), fwd_cell() and bwd_cell(). */
#ifndef LSTM_FAST_SEQUENCE_TEMPLATES_H
#define LSTM_FAST_SEQUENCE_TEMPLATES_H
#include "kernel_support.h"

#if LSTM_X86
/* Register tiles of 6 or 4 rows x 4 vectors: 24 accumulators + 4 weight vectors fit the 32 zmm
 * registers (8 rows would spill); a last partial tile reads zero rows and stores only real rows.
 * 24 named accumulators c<row><vector>, so nothing lives on the stack. */
#define TILE_DECL(r) __m512 c##r##0 = _mm512_setzero_ps(), c##r##1 = c##r##0, c##r##2 = c##r##0, c##r##3 = c##r##0;
#define DECL4 TILE_DECL(0) TILE_DECL(1) TILE_DECL(2) TILE_DECL(3)
#define DECL6 DECL4 TILE_DECL(4) TILE_DECL(5)

/* Point a0..a5 at rows rb.. of a (rows, K) matrix, the zero row past the batch. */
#define TILE_ROWS(BASE, K)                                                                            \
    a0 = (BASE) + rb * (K); a1 = n > 1 ? a0 + (K) : zero; a2 = n > 2 ? a0 + 2 * (K) : zero;          \
    a3 = n > 3 ? a0 + 3 * (K) : zero; a4 = n > 4 ? a0 + 4 * (K) : zero; a5 = n > 5 ? a0 + 5 * (K) : zero;

/* gi, gf, gg, go += the bias of units j0.. (4 gate blocks of H), where there is a bias. */
#define ADD_GATE_BIAS(BIAS, j0, H, m, gi, gf, gg, go)                                               \
    if (BIAS) {                                                                                       \
        const float *b = (BIAS) + (j0);                                                               \
        gi = _mm512_add_ps(gi, _mm512_maskz_loadu_ps(m, b));                                          \
        gf = _mm512_add_ps(gf, _mm512_maskz_loadu_ps(m, b + (H)));                                    \
        gg = _mm512_add_ps(gg, _mm512_maskz_loadu_ps(m, b + 2 * (H)));                                \
        go = _mm512_add_ps(go, _mm512_maskz_loadu_ps(m, b + 3 * (H)));                                \
    }

/* db[units j0.., 4 gate blocks of H] += sb0..sb3 (a step's bias gradient), where db is given. */
#define ADD_BIAS_GRAD(DB, j0, H, m, sb0, sb1, sb2, sb3)                                               \
    if (DB) {                                                                                         \
        float *bq = (DB) + (j0);                                                                      \
        _mm512_mask_storeu_ps(bq, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, bq), sb0));               \
        _mm512_mask_storeu_ps(bq + (H), m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, bq + (H)), sb1));   \
        _mm512_mask_storeu_ps(bq + 2 * (H), m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, bq + 2 * (H)), sb2)); \
        _mm512_mask_storeu_ps(bq + 3 * (H), m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, bq + 3 * (H)), sb3)); \
    }

/* ---------------------------------------------------------------- forward */
/* SEQ_FWD_PREFETCH(a, t, rb, n, j0): optional, what a tile asks to be brought into the cache
 * before its GEMM (the float32 kernels: the rows of a precomputed input projection that its
 * epilogue adds). Nothing by default. */
#ifndef SEQ_FWD_PREFETCH
#define SEQ_FWD_PREFETCH(a, t, rb, n, j0)
#endif

/* Gates of rows [rb, rb+MR) x units [j0, j0+16) at step t (x_t @ W_ih^T + h_{t-1} @ W_hh^T), then
 * the cell. MR is 6 or 4 (see six_row_tiles); rows past the batch read zeros, are not stored. */
#define FWD_TILE(MR, DECLS, STEPS)                                                                    \
    SEQ_TARGET static void fwd_tile##MR(const fwd_args *a, int64_t t, int64_t rb, int64_t jb,        \
                                        const SEQ_T *hp, const float *cp, float *c_out) {             \
        const int64_t H = a->H, D = a->D, n = a->B - rb, j0 = jb * 16;                                \
        const SEQ_T *zero = a->zero, *a0, *a1, *a2, *a3, *a4, *a5;                                    \
        const __mmask16 m = tail_mask(j0, H);                                                         \
        SEQ_FWD_PREFETCH(a, t, rb, n, j0)                                                             \
        DECLS                                                                                         \
        TILE_ROWS(a->X + t * a->B * D, D)                                                             \
        SEQ_FWD_GEMM(D, a->Px, jb, STEPS)                                                             \
        TILE_ROWS(hp, H)                                                                              \
        SEQ_FWD_GEMM(H, a->Ph, jb, STEPS)                                                             \
        (void)a4; (void)a5;                                                                           \
        fwd_cell(a, t, rb, j0, m, c00, c01, c02, c03, cp, c_out);                                     \
        if (n > 1) fwd_cell(a, t, rb + 1, j0, m, c10, c11, c12, c13, cp, c_out);                      \
        if (n > 2) fwd_cell(a, t, rb + 2, j0, m, c20, c21, c22, c23, cp, c_out);                      \
        if (n > 3) fwd_cell(a, t, rb + 3, j0, m, c30, c31, c32, c33, cp, c_out);                      \
        FWD_TAIL##MR                                                                                  \
    }
#define FWD_TAIL4
#define FWD_TAIL6                                                                                     \
    if (n > 4) fwd_cell(a, t, rb + 4, j0, m, c40, c41, c42, c43, cp, c_out);                          \
    if (n > 5) fwd_cell(a, t, rb + 5, j0, m, c50, c51, c52, c53, cp, c_out);

/* Threads split the SEQ_FWD_UNITS-unit panels (16 unless the including file says otherwise);
 * every step ends at a barrier (step t + 1 reads all of h_t). C holds every step's cell state when
 * G is saved, else two alternating (B, H) buffers. */
#ifndef SEQ_FWD_UNITS
#define SEQ_FWD_UNITS 16
#endif
#define DEFINE_FWD_WORKER()                                                                           \
    SEQ_TARGET static void fwd_worker(void *arg) {                                                    \
        const fwd_args *a = (const fwd_args *)arg;                                                    \
        team_t tm = team(a->nthreads);                                                                \
        const int64_t B = a->B, H = a->H, nb = (H + SEQ_FWD_UNITS - 1) / SEQ_FWD_UNITS;               \
        const int64_t jlo = nb * tm.tid / tm.nth, jhi = nb * (tm.tid + 1) / tm.nth, n6 = six_row_tiles(B); \
        for (int64_t t = 0; t < a->T; ++t) {                                                          \
            const SEQ_T *hp = t == 0 ? a->h0 : a->Y + (t - 1) * B * H;                                \
            const float *cp = t == 0 ? a->c0 : (a->G ? a->C + (t - 1) * B * H : a->C + ((t - 1) & 1) * B * H); \
            float *c_out = a->G ? a->C + t * B * H : a->C + (t & 1) * B * H;                          \
            for (int64_t jb = jlo; jb < jhi; ++jb) {                                                  \
                int64_t rb = 0;                                                                       \
                for (int64_t i = 0; i < n6; ++i, rb += 6) fwd_tile6(a, t, rb, jb, hp, cp, c_out);     \
                for (; rb < B; rb += 4) fwd_tile4(a, t, rb, jb, hp, cp, c_out);                       \
            }                                                                                         \
            barrier(tm);                                                                              \
        }                                                                                             \
    }

/* ---------------------------------------------------------------- backward */
/* Phase B's epilogue: DH[row, units n0..n0+64) = the four accumulators (a finished row keeps the
 * dh carried through). */
#define DEFINE_BWD_STORE()                                                                            \
    SEQ_TARGET INLINE void bwd_store(const bwd_args *a, int64_t t, int64_t row, int64_t n0, __m512 v0, \
                                     __m512 v1, __m512 v2, __m512 v3) {                               \
        const int64_t H = a->H;                                                                       \
        if (a->len && t >= a->len[row]) return;                                                       \
        float *dh = a->DH + row * H;                                                                  \
        if (n0 < H) _mm512_mask_storeu_ps(dh + n0, tail_mask(n0, H), v0);                             \
        if (n0 + 16 < H) _mm512_mask_storeu_ps(dh + n0 + 16, tail_mask(n0 + 16, H), v1);              \
        if (n0 + 32 < H) _mm512_mask_storeu_ps(dh + n0 + 32, tail_mask(n0 + 32, H), v2);              \
        if (n0 + 48 < H) _mm512_mask_storeu_ps(dh + n0 + 48, tail_mask(n0 + 48, H), v3);              \
    }

/* Phase B: DH[rows rb..rb+MR, units n0..n0+64) = dG_t[rows, :] @ W_hh[:, n0..]. */
#define BWD_TILE(MR, DECLS, STEPS)                                                                    \
    SEQ_TARGET static void bwd_tile##MR(const bwd_args *a, int64_t t, int64_t rb, int64_t nb) {       \
        const int64_t H = a->H, K = 4 * H, n0 = nb * 64, n = a->B - rb;                               \
        const SEQ_T *zero = a->zero;                                                                  \
        const SEQ_T *a0 = a->dG + (t * a->B + rb) * K, *a1 = n > 1 ? a0 + K : zero;                   \
        const SEQ_T *a2 = n > 2 ? a0 + 2 * K : zero, *a3 = n > 3 ? a0 + 3 * K : zero;                 \
        const SEQ_T *a4 = n > 4 ? a0 + 4 * K : zero, *a5 = n > 5 ? a0 + 5 * K : zero;                 \
        (void)a4; (void)a5;                                                                           \
        DECLS                                                                                         \
        SEQ_BWD_GEMM(K, a->Wq, nb, STEPS)                                                             \
        bwd_store(a, t, rb, n0, c00, c01, c02, c03);                                                  \
        if (n > 1) bwd_store(a, t, rb + 1, n0, c10, c11, c12, c13);                                   \
        if (n > 2) bwd_store(a, t, rb + 2, n0, c20, c21, c22, c23);                                   \
        if (n > 3) bwd_store(a, t, rb + 3, n0, c30, c31, c32, c33);                                   \
        BWD_TAIL##MR                                                                                  \
    }
#define BWD_TAIL4
#define BWD_TAIL6                                                                                     \
    if (n > 4) bwd_store(a, t, rb + 4, n0, c40, c41, c42, c43);                                       \
    if (n > 5) bwd_store(a, t, rb + 5, n0, c50, c51, c52, c53);

/* Per step, from t = T-1 down: phase A (the cell: threads split the 16-unit blocks), a barrier,
 * phase B (dh_{t-1}: threads split the 64-column blocks), a barrier. */
#define DEFINE_BWD_WORKER()                                                                           \
    SEQ_TARGET static void bwd_worker(void *arg) {                                                    \
        const bwd_args *a = (const bwd_args *)arg;                                                    \
        team_t tm = team(a->nthreads);                                                                \
        const int64_t B = a->B, H = a->H, nb16 = (H + 15) / 16, nb64 = (H + 63) / 64;                 \
        const int64_t clo = nb16 * tm.tid / tm.nth, chi = nb16 * (tm.tid + 1) / tm.nth;              \
        const int64_t glo = nb64 * tm.tid / tm.nth, ghi = nb64 * (tm.tid + 1) / tm.nth, n6 = six_row_tiles(B); \
        for (int64_t t = a->T - 1; t >= 0; --t) {                                                     \
            for (int64_t jb = clo; jb < chi; ++jb) bwd_cell(a, t, jb);                                \
            barrier(tm);                                                                              \
            for (int64_t nb = glo; nb < ghi; ++nb) {                                                  \
                int64_t rb = 0;                                                                       \
                for (int64_t i = 0; i < n6; ++i, rb += 6) bwd_tile6(a, t, rb, nb);                    \
                for (; rb < B; rb += 4) bwd_tile4(a, t, rb, nb);                                      \
            }                                                                                         \
            barrier(tm);                                                                              \
        }                                                                                             \
    }

/* ---------------------------------------------------------------- Python bindings */
/* Run a worker on the thread team without the GIL, with ``n`` SEQ_T zeros at *zero_slot for the
 * lifetime of the call (the A row of tile rows past the batch). */
#define DEFINE_RUN_WITH_ZERO_ROW()                                                                    \
    static PyObject *run_with_zero_row(void (*fn)(void *), void *args, const SEQ_T **zero_slot, int64_t n, \
                                       int nthreads) {                                                \
        SEQ_T *zero = calloc((size_t)(n > 0 ? n : 1), sizeof(SEQ_T));                                 \
        if (!zero) return PyErr_NoMemory();                                                           \
        *zero_slot = zero;                                                                            \
        resolve_gomp();                                                                               \
        Py_BEGIN_ALLOW_THREADS                                                                        \
        run(fn, args, nthreads);                                                                      \
        Py_END_ALLOW_THREADS                                                                          \
        free(zero);                                                                                   \
        Py_RETURN_NONE;                                                                               \
    }

/* The float32 modules' argument blocks (sequence_kernels.c, sequence_avx2_kernels.c), in the field
 * order PARSE_FWD_ARGS and PARSE_BWD_ARGS fill. */
#define DEFINE_F32_ARGS()                                                                             \
    typedef struct {                                                                                  \
        const float *X, *Px, *bias, *Ph, *h0, *c0;                                                    \
        float *Y, *C, *G;                                                                             \
        int64_t T, B, D, H;                                                                           \
        int nthreads;                                                                                 \
        const float *zero;   /* max(D, H) zeros: the A row of tile rows past the batch */             \
        const int64_t *len;  /* per-row sequence lengths, or NULL: all rows run all T steps */        \
        const float *XG;     /* (T, B, 4H) precomputed input projection, or NULL */                   \
    } fwd_args;                                                                                       \
    typedef struct {                                                                                  \
        const float *dY, *Wq, *G, *C, *c0;                                                            \
        float *dG, *DH, *DC, *db;                                                                     \
        int64_t T, B, H;                                                                              \
        int nthreads;                                                                                 \
        const float *zero;   /* 4H zeros */                                                           \
        const int64_t *len;  /* per-row sequence lengths, or NULL */                                  \
    } bwd_args;

/* fwd_args a from forward_seq's arguments (X, Px, bias, Ph, h0, c0, Y, C, G, T, B, D, H, nthreads,
 * len); p[] (the 9 pointers) stays in scope. Returns NULL from the caller on a bad argument. */
#define PARSE_FWD_ARGS(a)                                                                             \
    void *p[9];                                                                                       \
    if (ptrs(args, 9, p)) return NULL;                                                                \
    fwd_args a = {p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], PyLong_AsLongLong(args[9]),   \
                  PyLong_AsLongLong(args[10]), PyLong_AsLongLong(args[11]), PyLong_AsLongLong(args[12]), \
                  (int)PyLong_AsLong(args[13])};                                                      \
    a.len = args[14] == Py_None ? NULL : PyLong_AsVoidPtr(args[14]);

/* bwd_args a from backward_seq's arguments (dY, Wq, G, C, c0, dG, DH, DC, db, T, B, H, nthreads,
 * len), as PARSE_FWD_ARGS. */
#define PARSE_BWD_ARGS(a)                                                                             \
    void *p[9];                                                                                       \
    if (ptrs(args, 9, p)) return NULL;                                                                \
    bwd_args a = {p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], PyLong_AsLongLong(args[9]),   \
                  PyLong_AsLongLong(args[10]), PyLong_AsLongLong(args[11]), (int)PyLong_AsLong(args[12])}; \
    a.len = args[13] == Py_None ? NULL : PyLong_AsVoidPtr(args[13]);
#endif /* LSTM_X86 */

/* A binding's checks: ``nargs`` must be N, and OK (the CPU check) true; else a Python error. */
#define CHECK_CALL(NAME, N, OK, NEEDS)                                                                \
    if (nargs != N) { PyErr_SetString(PyExc_TypeError, NAME " takes " #N " arguments"); return NULL; } \
    if (!(OK)) { PyErr_SetString(PyExc_RuntimeError, NAME " needs " NEEDS); return NULL; }
#endif /* LSTM_FAST_SEQUENCE_TEMPLATES_H */
