/* The Python entry points both float32 whole-sequence modules share (sequence_kernels.c on
 * AVX-512, sequence_avx2_kernels.c on AVX2 + FMA): available, forward_seq, backward_seq,
 * pack_panels, pack_backward_panels (their arguments: sequence_kernels.c's header), and the
 * backward panels' packing itself, which differs between them only in the panel width.
 *
 * Included once, after the file's kernels, by a file that defines:
 *   SEQ_CPU_OK()     whether this CPU runs its kernels;   SEQ_CPU_NEEDS  its words for the error
 *   SEQ_BWD_COLS     the backward panels' width (64, 16); SEQ_FWD_UNITS (sequence_templates.h) the forward panels' units
 *   fwd_worker, bwd_worker, fwd_args, bwd_args, pack_panels (on x86-64). */
#ifndef LSTM_FAST_SEQUENCE_BINDINGS_H
#define LSTM_FAST_SEQUENCE_BINDINGS_H

/* Q[j][k][u] = W[k][j*N + u] (0 past H), N = SEQ_BWD_COLS: W_hh's K rows cut into N-column panels. */
static void pack_backward_panels(const float *W, int64_t H, int64_t K, float *Q) {
    const int64_t N = SEQ_BWD_COLS, nb = (H + N - 1) / N;
    for (int64_t j = 0; j < nb; ++j) {
        const int64_t n = H - j * N < N ? H - j * N : N;
        for (int64_t k = 0; k < K; ++k) {
            float *dst = Q + (j * K + k) * N;
            memcpy(dst, W + k * H + j * N, (size_t)n * sizeof(float));
            if (n < N) memset(dst + n, 0, (size_t)(N - n) * sizeof(float));
        }
    }
}

static PyObject *py_available(PyObject *self, PyObject *unused) { return PyBool_FromLong(SEQ_CPU_OK()); }

#if LSTM_X86
DEFINE_RUN_WITH_ZERO_ROW()
#endif

static PyObject *py_forward_seq(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    CHECK_CALL("forward_seq", 16, SEQ_CPU_OK(), SEQ_CPU_NEEDS)
#if LSTM_X86
    PARSE_FWD_ARGS(a)
    a.XG = args[15] == Py_None ? NULL : PyLong_AsVoidPtr(args[15]);
    if (PyErr_Occurred()) return NULL;
    return run_with_zero_row(fwd_worker, &a, &a.zero, a.D > a.H ? a.D : a.H, a.nthreads);
#else
    Py_RETURN_NONE;
#endif
}

static PyObject *py_backward_seq(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    CHECK_CALL("backward_seq", 14, SEQ_CPU_OK(), SEQ_CPU_NEEDS)
#if LSTM_X86
    PARSE_BWD_ARGS(a)
    if (PyErr_Occurred()) return NULL;
    return run_with_zero_row(bwd_worker, &a, &a.zero, 4 * a.H, a.nthreads);
#else
    Py_RETURN_NONE;
#endif
}

/* pack_panels(W, H, K, P) and pack_backward_panels(W, H, K, Q): W, P, Q as integer addresses. */
static int pack_args(PyObject *const *args, Py_ssize_t nargs, const char *name, const float **W, int64_t *H,
                     int64_t *K, float **P) {
    if (nargs != 4) { PyErr_Format(PyExc_TypeError, "%s takes 4 arguments", name); return -1; }
    *W = PyLong_AsVoidPtr(args[0]);
    *H = PyLong_AsLongLong(args[1]);
    *K = PyLong_AsLongLong(args[2]);
    *P = PyLong_AsVoidPtr(args[3]);
    return PyErr_Occurred() ? -1 : 0;
}

static PyObject *py_pack_panels(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    const float *W;
    float *P;
    int64_t H, K;
    CHECK_CALL("pack_panels", 4, SEQ_CPU_OK(), SEQ_CPU_NEEDS)   /* its fast path is ISA code */
    if (pack_args(args, nargs, "pack_panels", &W, &H, &K, &P)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    pack_panels(W, H, K, P);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *py_pack_backward_panels(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    const float *W;
    float *Q;
    int64_t H, K;
    if (pack_args(args, nargs, "pack_backward_panels", &W, &H, &K, &Q)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    pack_backward_panels(W, H, K, Q);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* The method-table entries of the five. */
#define SEQUENCE_METHODS                                                                              \
    {"available", py_available, METH_NOARGS, "whether this CPU runs these kernels"},                  \
    {"forward_seq", (PyCFunction)(void (*)(void))py_forward_seq, METH_FASTCALL, "LSTM forward over all steps"}, \
    {"backward_seq", (PyCFunction)(void (*)(void))py_backward_seq, METH_FASTCALL, "LSTM backward over all steps"}, \
    {"pack_panels", (PyCFunction)(void (*)(void))py_pack_panels, METH_FASTCALL, "forward weight panels"}, \
    {"pack_backward_panels", (PyCFunction)(void (*)(void))py_pack_backward_panels, METH_FASTCALL, "backward weight panels"},

/* The module object with FWD_PANEL_UNITS and BWD_PANEL_COLS (the panel shapes sequence.py sizes
 * its buffers from). */
static PyObject *sequence_module(PyModuleDef *def) {
    PyObject *m = PyModule_Create(def);
    if (m && (PyModule_AddIntConstant(m, "FWD_PANEL_UNITS", SEQ_FWD_UNITS) < 0 ||
              PyModule_AddIntConstant(m, "BWD_PANEL_COLS", SEQ_BWD_COLS) < 0)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
#endif /* LSTM_FAST_SEQUENCE_BINDINGS_H */
