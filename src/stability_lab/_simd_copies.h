/*
 * The instruction-set copies of the package's C kernels (private; included by
 * numerics/_lsekernel.c and deep/_attrkernel.c).
 *
 * On x86-64 with GCC or Clang each kernel is compiled three times: generic (the baseline
 * ISA), AVX2+FMA and AVX-512F, by target attributes on the same source. At import the
 * module asks which copies this CPU runs (copies_init); callers may name one (for tests
 * and benchmarks) and get a clear ValueError for one the CPU lacks. Elsewhere only the
 * generic copy exists.
 */
#ifndef STABILITY_LAB_SIMD_COPIES_H
#define STABILITY_LAB_SIMD_COPIES_H

#include <Python.h>
#include <string.h>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(_M_X64))
#define SIMD_X86_COPIES 1
#define COPY_AVX2 __attribute__((target("avx2,fma")))
#define COPY_AVX512 __attribute__((target("avx512f,avx2,fma")))
#else
#define SIMD_X86_COPIES 0
#endif

/* Copy indices: a kernel keeps its functions in a table in this order. */
enum { COPY_AVX512F = 0, COPY_AVX2FMA = 1, COPY_GENERIC = 2, N_COPIES = 3 };
static const char *const COPY_NAMES[N_COPIES] = {"avx512f", "avx2+fma", "generic"};

/* The copies this CPU runs, best first (indices into COPY_NAMES). */
typedef struct {
    int idx[N_COPIES];
    int n;
} copies_t;

static void copies_init(copies_t *c)
{
    c->n = 0;
#if SIMD_X86_COPIES
    __builtin_cpu_init();
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (avx2 && __builtin_cpu_supports("avx512f"))
        c->idx[c->n++] = COPY_AVX512F;
    if (avx2)
        c->idx[c->n++] = COPY_AVX2FMA;
#endif
    c->idx[c->n++] = COPY_GENERIC;
}

/* The copy to run: the best one for want == NULL, else the one named; -1 with a
 * ValueError (naming `fname`) when this CPU does not run it. */
static int copies_pick(const copies_t *c, const char *want, const char *fname)
{
    if (want == NULL)
        return c->idx[0];
    for (int i = 0; i < c->n; i++)
        if (strcmp(want, COPY_NAMES[c->idx[i]]) == 0)
            return c->idx[i];
    PyErr_Format(PyExc_ValueError, "%s: target '%s' is not available on this CPU (see "
                 "targets())", fname, want);
    return -1;
}

/* The names of the copies this CPU runs, best first, as a tuple. */
static PyObject *copies_tuple(const copies_t *c)
{
    PyObject *out = PyTuple_New(c->n);
    if (out == NULL)
        return NULL;
    for (int i = 0; i < c->n; i++) {
        PyObject *name = PyUnicode_FromString(COPY_NAMES[c->idx[i]]);
        if (name == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyTuple_SET_ITEM(out, i, name);
    }
    return out;
}

#endif
