/* What the CPU kernel files share (included by sequence_kernels.c and bf16_sequence_kernels.c,
 * through sequence_templates.h):
 * torch's OpenMP runtime (libgomp, found among the loaded libraries, so our threads are torch's
 * own pool), the AVX-512 vector math of the LSTM cell (exp, sigmoid, tanh), a 16 x 16 register
 * transpose (and an 8 x 8 AVX2 one), the AVX2 + FMA 8-lane cell math and masks, tail masks, the
 * register-tile row split and the Python pointer-argument parser.
 * Every vector function carries its own target attribute, so a file including this still loads
 * on any x86-64. */
#ifndef LSTM_FAST_KERNEL_SUPPORT_H
#define LSTM_FAST_KERNEL_SUPPORT_H
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>

#if defined(__x86_64__) && defined(__GNUC__)
#define LSTM_X86 1
#include <immintrin.h>
#define AVX512 __attribute__((target("avx512f,avx512dq,fma")))
#define INLINE static inline __attribute__((always_inline))
#else
#define LSTM_X86 0
#endif

/* Whether this CPU runs the float32 AVX-512 kernels (the sequence and small-batch modules). */
static inline int avx512_ok(void) {
#if LSTM_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
#else
    return 0;
#endif
}

/* Whether this CPU runs the AVX2 + FMA kernels (the small-batch and sequence AVX2 modules). */
static inline int avx2_ok(void) {
#if LSTM_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

/* ---------------------------------------------------------------- torch's OpenMP runtime */
typedef void (*gomp_parallel_t)(void (*)(void *), void *, unsigned, unsigned);
typedef void (*gomp_barrier_t)(void);
typedef int (*omp_int_t)(void);
static gomp_parallel_t p_parallel;
static gomp_barrier_t p_barrier;
static omp_int_t p_thread_num, p_num_threads;

static void resolve_gomp(void) {
    static int tried = 0;
    if (tried) return;
    tried = 1;
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f) return;
    char line[4096], path[4096];
    int found = 0;
    while (!found && fgets(line, sizeof line, f)) {
        char *p = strchr(line, '/');
        if (p && strstr(p, "libgomp")) {
            size_t n = strcspn(p, "\n");
            if (n < sizeof path) { memcpy(path, p, n); path[n] = 0; found = 1; }
        }
    }
    fclose(f);
    if (!found) return;
    void *h = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
    if (!h) return;
    p_parallel = (gomp_parallel_t)dlsym(h, "GOMP_parallel");
    p_barrier = (gomp_barrier_t)dlsym(h, "GOMP_barrier");
    p_thread_num = (omp_int_t)dlsym(h, "omp_get_thread_num");
    p_num_threads = (omp_int_t)dlsym(h, "omp_get_num_threads");
    if (!p_parallel || !p_barrier || !p_thread_num || !p_num_threads) p_parallel = NULL;
}

typedef struct { int tid, nth; } team_t;

static team_t team(int requested) {
    team_t t = {0, 1};
    if (requested > 1 && p_parallel) { t.tid = p_thread_num(); t.nth = p_num_threads(); }
    return t;
}

static void barrier(team_t t) { if (t.nth > 1) p_barrier(); }

static void run(void (*fn)(void *), void *arg, int nthreads) {
    if (nthreads > 1 && p_parallel) p_parallel(fn, arg, (unsigned)nthreads, 0);
    else fn(arg);
}

static int ptrs(PyObject *const *args, Py_ssize_t n, void **out) {
    for (Py_ssize_t k = 0; k < n; ++k) {
        if (args[k] == Py_None) { out[k] = NULL; continue; }
        out[k] = PyLong_AsVoidPtr(args[k]);
        if (!out[k] && PyErr_Occurred()) return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------- spin-then-yield barrier */
/* (the small-batch kernels: small_batch_kernels.c, small_batch_avx2_kernels.c) */
/* A sense (generation) barrier: the last thread to arrive bumps the generation. Waiters spin
 * with pause for SPIN_PAUSES rounds (~20 us on a core whose pause is ~50 ns: several steps' worth,
 * so on an idle machine no thread ever sleeps), then sched_yield() between checks, so on an
 * oversubscribed machine the thread it waits for gets the core instead of a spinning waiter. */
#define SPIN_PAUSES 400
typedef struct { int count, gen; } sb_barrier;

static inline void sb_wait(sb_barrier *b, int nth) {
    if (nth <= 1) return;
    int gen = __atomic_load_n(&b->gen, __ATOMIC_ACQUIRE);
    if (__atomic_add_fetch(&b->count, 1, __ATOMIC_ACQ_REL) == nth) {
        __atomic_store_n(&b->count, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&b->gen, gen + 1, __ATOMIC_RELEASE);
        return;
    }
    for (int spins = 0; __atomic_load_n(&b->gen, __ATOMIC_ACQUIRE) == gen;) {
        if (spins < SPIN_PAUSES) {
#if LSTM_X86
            _mm_pause();
#endif
            ++spins;
        } else {
            sched_yield();
        }
    }
}

/* How many 6-row tiles to use before 4-row ones: cover B exactly where possible (32 = 4*6 + 2*4),
 * else as many 6-row tiles as fit, the rest in 4-row tiles. */
static int64_t six_row_tiles(int64_t B) {
    for (int64_t a6 = B / 6; a6 >= 0; --a6)
        if ((B - 6 * a6) % 4 == 0) return a6;
    return B / 6;
}

#if LSTM_X86
/* ---------------------------------------------------------------- vector math */
AVX512 INLINE __m512 v_exp(__m512 x) {
    x = _mm512_max_ps(_mm512_set1_ps(-104.0f), x);      /* NaN in x survives: max returns src2 */
    x = _mm512_min_ps(_mm512_set1_ps(89.0f), x);
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

AVX512 INLINE __m512 v_sigmoid(__m512 x) {
    const __m512 one = _mm512_set1_ps(1.0f);
    return _mm512_div_ps(one, _mm512_add_ps(one, v_exp(_mm512_sub_ps(_mm512_setzero_ps(), x))));
}

AVX512 INLINE __m512 v_tanh(__m512 x) {
    const __m512 one = _mm512_set1_ps(1.0f);
    __m512 e = v_exp(_mm512_add_ps(x, x));
    return _mm512_sub_ps(one, _mm512_div_ps(_mm512_set1_ps(2.0f), _mm512_add_ps(one, e)));
}

/* r[0..15] (16 rows of 16 lanes of any 32-bit data: only moved, never computed on) transposed in
 * place, r[j] lane i becoming r[i] lane j: the 4-stage network of 32- and 64-bit unpacks, then two
 * rounds of 128-bit lane shuffles (64 shuffles where scalar moves take 256). */
AVX512 INLINE void v_transpose16(__m512 *r) {
    __m512 t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
        r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
        r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
        r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
    }
    /* r[4g + c], 128-bit lane l: column 4l + c of rows 4g..4g+3; gather lane l of the four groups */
    for (int c = 0; c < 4; ++c) {
        t[c] = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x88);          /* lanes 0, 2 of each */
        t[4 + c] = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xDD);      /* lanes 1, 3 */
        t[8 + c] = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x88);
        t[12 + c] = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xDD);
    }
    for (int c = 0; c < 4; ++c) {
        r[c] = _mm512_shuffle_f32x4(t[c], t[8 + c], 0x88);
        r[8 + c] = _mm512_shuffle_f32x4(t[c], t[8 + c], 0xDD);
        r[4 + c] = _mm512_shuffle_f32x4(t[4 + c], t[12 + c], 0x88);
        r[12 + c] = _mm512_shuffle_f32x4(t[4 + c], t[12 + c], 0xDD);
    }
}

/* r[0..7] (8 rows of 8 lanes, AVX2) transposed in place, r[j] lane i becoming r[i] lane j: 32-bit
 * unpacks, 64-bit shuffles, then 128-bit lane swaps (the AVX2 small-batch kernels' reduction and
 * the stepwise route's dG^T in cell_kernel.c). target("avx2") only, so it inlines into callers
 * built for avx2 or for avx2 + fma. */
__attribute__((target("avx2"))) INLINE void v_transpose8(__m256 *r) {
    __m256 t[8], u[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
        u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
        u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    /* u[c] (c < 4): 128-bit half h holds column 4h + c of rows 0-3; u[4 + c]: of rows 4-7 */
    for (int c = 0; c < 4; ++c) {
        r[c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x20);       /* column c of rows 0-7 */
        r[4 + c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x31);   /* column 4 + c */
    }
}

/* ---------------------------------------------------------------- 8-lane (AVX2 + FMA) helpers */
/* (the AVX2 small-batch and whole-sequence kernels: small_batch_avx2_kernels.c,
 * sequence_avx2_kernels.c) */
#define AVX2 __attribute__((target("avx2,fma")))

static const int32_t MASK_TABLE8[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

/* The lanes of [j0, j0 + 8) below n, as a vmaskmov mask (all ones: lane taken). */
AVX2 INLINE __m256i v8_tail(int64_t j0, int64_t n) {
    int64_t k = n - j0;
    k = k < 0 ? 0 : (k > 8 ? 8 : k);
    return _mm256_loadu_si256((const __m256i *)(MASK_TABLE8 + 8 - k));
}

/* Masked load and store, the plain instruction where the mask is full: vmaskmovps stores are
 * microcoded on AMD Zen 2/3 (tens of cycles each; the AVX2 weight-gradient product spent 350-550 us
 * of a 1 ms B1 T1 H256 backward in them, measured on an EPYC), so only a tail takes them. */
AVX2 INLINE int v8_full(__m256i m) { return _mm256_movemask_ps(_mm256_castsi256_ps(m)) == 0xFF; }
AVX2 INLINE __m256 v8_mload(__m256i m, const float *p) { return v8_full(m) ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, m); }
AVX2 INLINE void v8_mstore(float *p, __m256i m, __m256 v) {
    if (v8_full(m)) _mm256_storeu_ps(p, v);
    else _mm256_maskstore_ps(p, m, v);
}

/* p * 2^n for integral n in [-150, 128] (as a float vector), in two normal factors. */
AVX2 INLINE __m256 v8_mul_pow2(__m256 p, __m256 n) {
    __m256i ni = _mm256_cvtps_epi32(n);
    __m256i n1 = _mm256_srai_epi32(ni, 1), n2 = _mm256_sub_epi32(ni, n1);
    const __m256i bias = _mm256_set1_epi32(127);
    __m256 f1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
    __m256 f2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
    return _mm256_mul_ps(_mm256_mul_ps(p, f1), f2);
}

/* exp, sigmoid and tanh on 8 lanes: the polynomial and range reduction of v_exp above. */
AVX2 INLINE __m256 v8_exp(__m256 x) {
    x = _mm256_max_ps(_mm256_set1_ps(-104.0f), x);      /* NaN in x survives: max returns its second operand */
    x = _mm256_min_ps(_mm256_set1_ps(89.0f), x);
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    return v8_mul_pow2(p, n);
}

AVX2 INLINE __m256 v8_sigmoid(__m256 x) {
    const __m256 one = _mm256_set1_ps(1.0f);
    return _mm256_div_ps(one, _mm256_add_ps(one, v8_exp(_mm256_sub_ps(_mm256_setzero_ps(), x))));
}

AVX2 INLINE __m256 v8_tanh(__m256 x) {
    const __m256 one = _mm256_set1_ps(1.0f);
    __m256 e = v8_exp(_mm256_add_ps(x, x));
    return _mm256_sub_ps(one, _mm256_div_ps(_mm256_set1_ps(2.0f), _mm256_add_ps(one, e)));
}

static inline __mmask16 tail_mask(int64_t j0, int64_t H) {
    int64_t n = H - j0;
    return n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1u);
}
#endif /* LSTM_X86 */
#endif /* LSTM_FAST_KERNEL_SUPPORT_H */
