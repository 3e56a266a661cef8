/* Fused LSTM cell passes for the CPU implementation (float32), one pass over a (B, 4H) step each.
 *
 * Why C: in eager PyTorch the cell update is ~8 separate ops per step (each 3-14 us of dispatch
 * and memory traffic at B32 H256), more than the recurrent GEMM's own cost difference to a fused
 * LSTM. These two functions do the whole elementwise part of a step in one pass; the GEMMs stay
 * in oneDNN/BLAS. Gate order is lstm_fast's internal (o, i, f, g); d2l names: O, I, F, C_tilda.
 *
 * exp is our own (Cephes-style, ~2 ulp) so loops vectorise without -ffast-math, and NaN/Inf
 * propagate as in torch. Functions are cloned for AVX-512/AVX2/baseline and picked at load time.
 *
 *   forward(rec, xg, act, c_prev, c_out, h_out, B, H)
 *     act = activations(rec + xg)  (sigmoid on o, i, f; tanh on g); c = f*c_prev + i*g;
 *     h = o*tanh(c).  No two arrays may overlap.
 *   backward(dh_a, dh_b, dc, act, c, c_prev, dg, B, H)
 *     dh = dh_a (+ dh_b if given); with tc = tanh(c):  dct = dc + dh*o*(1-tc^2);
 *     dg = [dh*tc*o(1-o), dct*g*i(1-i), dct*c_prev*f(1-f), dct*i*(1-g^2)];  dc <- dct*f.
 *   transpose(src, rows, cols, dst)
 *     dst (cols, rows) = src (rows, cols)^T.
 * All arrays are contiguous row-major; pointers are passed as integers (tensor.data_ptr()).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CLONES
#endif

static inline float fexp(float x) {
    float xc = x < -87.3f ? -87.3f : (x > 88.0f ? 88.0f : x);
    float t = xc * 1.44269504088896341f + 12582912.0f;   /* round to nearest via 1.5 * 2^23 */
    float n = t - 12582912.0f;
    float r = xc - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    float res = p * scale;
    return x != x ? x : res;
}

static inline float fsigmoid(float x) { return 1.0f / (1.0f + fexp(-x)); }
static inline float ftanh(float x) { return 1.0f - 2.0f / (1.0f + fexp(2.0f * x)); }

#define R __restrict__

CLONES static void cell_forward(const float *R rec, const float *R xg, float *R act, const float *R c_prev,
                                float *R c_out, float *R h_out, int64_t B, int64_t H) {
    const int64_t G = 4 * H;
    for (int64_t b = 0; b < B; ++b) {
        const float *R r = rec + b * G, *R x = xg + b * G;
        float *R a = act + b * G;
        for (int64_t j = 0; j < 3 * H; ++j) a[j] = fsigmoid(r[j] + x[j]);
        for (int64_t j = 3 * H; j < G; ++j) a[j] = ftanh(r[j] + x[j]);
        const float *R o = a, *R i = a + H, *R f = a + 2 * H, *R g = a + 3 * H, *R cp = c_prev + b * H;
        float *R c = c_out + b * H, *R h = h_out + b * H;
        for (int64_t k = 0; k < H; ++k) {
            float ck = f[k] * cp[k] + i[k] * g[k];
            c[k] = ck;
            h[k] = o[k] * ftanh(ck);
        }
    }
}

CLONES static void cell_backward(const float *R dh_a, const float *R dh_b, float *R dc, const float *R act,
                                 const float *R c, const float *R c_prev, float *R dg, int64_t B, int64_t H) {
    const int64_t G = 4 * H;
    for (int64_t b = 0; b < B; ++b) {
        const float *a = act + b * G;
        const float *R o = a, *R i = a + H, *R f = a + 2 * H, *R g = a + 3 * H;
        const float *R ha = dh_a + b * H;
        const float *R cb = c + b * H, *R cp = c_prev + b * H;
        float *R d = dg + b * G, *R dcb = dc + b * H;
#define LSTM_BWD_BODY(DH)                                                    \
        for (int64_t k = 0; k < H; ++k) {                                    \
            float dh = (DH);                                                 \
            float tc = ftanh(cb[k]);                                         \
            float dct = dcb[k] + dh * o[k] * (1.0f - tc * tc);               \
            d[k] = dh * tc * o[k] * (1.0f - o[k]);                           \
            d[H + k] = dct * g[k] * i[k] * (1.0f - i[k]);                    \
            d[2 * H + k] = dct * cp[k] * f[k] * (1.0f - f[k]);               \
            d[3 * H + k] = dct * i[k] * (1.0f - g[k] * g[k]);                \
            dcb[k] = dct * f[k];                                             \
        }
        if (dh_b) {
            const float *R hb = dh_b + b * H;
            LSTM_BWD_BODY(ha[k] + hb[k])
        } else {
            LSTM_BWD_BODY(ha[k])
        }
    }
}

/* dst (cols, rows) = src (rows, cols)^T, both contiguous float32: the stepwise backward's dG^T
 * (oneDNN's weight-gradient product wants the summed T*B dimension innermost). torch's strided
 * copy took ~2.4 ms for the d2l shape's (1120, 1024) dG on the AVX2 EPYC (2 threads); this walks
 * 16-row strips in 8 x 8 register transposes, so every destination line is written whole. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"   /* its OpenMP and AVX-512 helpers: unused here */
#include "kernel_support.h"
#pragma GCC diagnostic pop
#if LSTM_X86
__attribute__((target("avx2"))) static void transpose8(const float *src, int64_t ld_src, float *dst, int64_t ld_dst) {
    __m256 r[8];
    for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * ld_src);
    v_transpose8(r);
    for (int c = 0; c < 8; ++c) _mm256_storeu_ps(dst + c * ld_dst, r[c]);
}

__attribute__((target("avx2"))) static void transpose_avx2(const float *src, int64_t rows, int64_t cols, float *dst) {
    const int64_t r8 = rows & ~(int64_t)7, c8 = cols & ~(int64_t)7;
    for (int64_t i0 = 0; i0 < r8; i0 += 16) {
        const int64_t i1 = i0 + 16 <= r8 ? i0 + 16 : r8;
        for (int64_t j0 = 0; j0 < c8; j0 += 8)
            for (int64_t i = i0; i < i1; i += 8) transpose8(src + i * cols + j0, cols, dst + j0 * rows + i, rows);
        for (int64_t i = i0; i < i1; ++i)          /* the columns past the last 8-block */
            for (int64_t j = c8; j < cols; ++j) dst[j * rows + i] = src[i * cols + j];
    }
    for (int64_t i = r8; i < rows; ++i)            /* the rows past the last 8-block */
        for (int64_t j = 0; j < cols; ++j) dst[j * rows + i] = src[i * cols + j];
}
#define HAVE_AVX2_TRANSPOSE 1
#endif

static void transpose(const float *R src, int64_t rows, int64_t cols, float *R dst) {
#ifdef HAVE_AVX2_TRANSPOSE
    if (__builtin_cpu_supports("avx2")) { transpose_avx2(src, rows, cols, dst); return; }
#endif
    for (int64_t i0 = 0; i0 < rows; i0 += 16)
        for (int64_t j = 0; j < cols; ++j)
            for (int64_t i = i0; i < rows && i < i0 + 16; ++i) dst[j * rows + i] = src[i * cols + j];
}

static int get_ptrs(PyObject *const *args, Py_ssize_t n, void **out, int nullable_index) {
    for (Py_ssize_t k = 0; k < n; ++k) {
        if (k == nullable_index && args[k] == Py_None) { out[k] = NULL; continue; }
        out[k] = PyLong_AsVoidPtr(args[k]);
        if (out[k] == NULL) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "null pointer");
            return -1;
        }
    }
    return 0;
}

static PyObject *py_forward(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    void *p[6];
    if (nargs != 8) { PyErr_SetString(PyExc_TypeError, "forward takes 8 arguments"); return NULL; }
    if (get_ptrs(args, 6, p, -1)) return NULL;
    int64_t B = PyLong_AsLongLong(args[6]), H = PyLong_AsLongLong(args[7]);
    if (PyErr_Occurred()) return NULL;
    cell_forward(p[0], p[1], p[2], p[3], p[4], p[5], B, H);
    Py_RETURN_NONE;
}

static PyObject *py_backward(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    void *p[7];
    if (nargs != 9) { PyErr_SetString(PyExc_TypeError, "backward takes 9 arguments"); return NULL; }
    if (get_ptrs(args, 7, p, 1)) return NULL;
    int64_t B = PyLong_AsLongLong(args[7]), H = PyLong_AsLongLong(args[8]);
    if (PyErr_Occurred()) return NULL;
    cell_backward(p[0], p[1], p[2], p[3], p[4], p[5], p[6], B, H);
    Py_RETURN_NONE;
}

static PyObject *py_transpose(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    void *p[2];
    if (nargs != 4) { PyErr_SetString(PyExc_TypeError, "transpose takes 4 arguments"); return NULL; }
    PyObject *const ptrs[2] = {args[0], args[3]};
    if (get_ptrs(ptrs, 2, p, -1)) return NULL;
    int64_t rows = PyLong_AsLongLong(args[1]), cols = PyLong_AsLongLong(args[2]);
    if (PyErr_Occurred()) return NULL;
    if (rows < 0 || cols < 0) { PyErr_SetString(PyExc_ValueError, "transpose: negative size"); return NULL; }
    Py_BEGIN_ALLOW_THREADS
    transpose(p[0], rows, cols, p[1]);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"forward", (PyCFunction)(void (*)(void))py_forward, METH_FASTCALL, "fused LSTM cell forward (float32)"},
    {"backward", (PyCFunction)(void (*)(void))py_backward, METH_FASTCALL, "fused LSTM cell backward (float32)"},
    {"transpose", (PyCFunction)(void (*)(void))py_transpose, METH_FASTCALL, "transpose(src, rows, cols, dst): dst = src^T (float32)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_cell_kernel", "Fused LSTM cell passes (float32).", -1, methods};

PyMODINIT_FUNC PyInit__cell_kernel(void) { return PyModule_Create(&module); }
