/*
 * One fused Sinkhorn-Knopp sweep over rows of a float32 kernel matrix, for the CPU.
 *
 * For every row i of W (row-major, K columns) in [lo, hi):
 *
 *     u_i  = r / (W_i . v)          the row scaling that makes row i sum to r
 *     acc += u_i * W_i               its contribution to the column sums W^T u
 *
 * Both products use the row while it is in the L1 cache, so the matrix is read from memory
 * once per sweep; this is what makes a Sinkhorn iteration run at the memory-bandwidth floor.
 * With two BLAS matrix-vector calls per cache block (the pure-torch path in iterations.py) the
 * second read comes from L2 and each call pays dispatch costs, about twice the floor.
 *
 * The column sums are accumulated in float32 over FLUSH_ROWS rows and then added to a float64
 * vector, so rounding does not grow with the number of rows.
 *
 * The function releases the GIL: iterations.py calls it from several Python threads, one
 * contiguous row range each, and adds their float64 vectors.
 *
 * The caller guarantees (checked in iterations.py): W, v and u are contiguous float32 CPU
 * buffers, acc a contiguous float64 buffer of length K, 0 <= lo <= hi <= rows of W, and the
 * buffers stay alive for the call. The addresses are passed as integers (tensor.data_ptr()).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define FLUSH_ROWS 64

/* An AVX2+FMA clone next to the baseline one, picked at load time by the CPU (GCC/clang on
 * x86-64); other compilers and machines get the portable build. */
#if defined(__x86_64__) && defined(__GNUC__) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define SKSL_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#endif
#endif
#ifndef SKSL_CLONES
#define SKSL_CLONES
#endif

static void flush(double *restrict acc, float *restrict part, Py_ssize_t K)
{
    for (Py_ssize_t k = 0; k < K; k++) {
        acc[k] += (double)part[k];
        part[k] = 0.0f;
    }
}

SKSL_CLONES
static void fused_rows(const float *restrict W, Py_ssize_t K, Py_ssize_t lo, Py_ssize_t hi,
                       const float *restrict v, float r, float *restrict u,
                       double *restrict acc, float *restrict part)
{
    int pending = 0;
    for (Py_ssize_t i = lo; i < hi; i++) {
        const float *restrict w = W + (size_t)i * (size_t)K;
        float s = 0.0f;
#pragma omp simd reduction(+ : s)
        for (Py_ssize_t k = 0; k < K; k++)
            s += w[k] * v[k];
        const float ui = r / s;
        u[i] = ui;
#pragma omp simd
        for (Py_ssize_t k = 0; k < K; k++)
            part[k] += ui * w[k];
        if (++pending == FLUSH_ROWS) {
            flush(acc, part, K);
            pending = 0;
        }
    }
    flush(acc, part, K);
}

static PyObject *sweep(PyObject *self, PyObject *args)
{
    unsigned long long w_addr, v_addr, u_addr, acc_addr;
    Py_ssize_t K, lo, hi;
    float r;
    (void)self;
    if (!PyArg_ParseTuple(args, "KnnnKfKK", &w_addr, &K, &lo, &hi, &v_addr, &r, &u_addr,
                          &acc_addr))
        return NULL;
    if (K <= 0 || lo < 0 || hi < lo) {
        PyErr_SetString(PyExc_ValueError, "sweep: need K > 0 and 0 <= lo <= hi");
        return NULL;
    }
    float *part = (float *)calloc((size_t)K, sizeof(float));
    if (part == NULL)
        return PyErr_NoMemory();
    Py_BEGIN_ALLOW_THREADS
    fused_rows((const float *)(uintptr_t)w_addr, K, lo, hi, (const float *)(uintptr_t)v_addr,
               r, (float *)(uintptr_t)u_addr, (double *)(uintptr_t)acc_addr, part);
    Py_END_ALLOW_THREADS
    free(part);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"sweep", sweep, METH_VARARGS,
     "sweep(W, K, lo, hi, v, r, u, acc): one fused Sinkhorn sweep over rows [lo, hi) of a "
     "float32 kernel (addresses as integers); writes u[lo:hi], adds W[lo:hi]^T u to acc."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fused",
    "Compiled fused Sinkhorn sweep for the CPU (private; see skselflabel/_solver/iterations.py).", -1,
    methods,
};

PyMODINIT_FUNC PyInit__fused(void) { return PyModule_Create(&module); }
