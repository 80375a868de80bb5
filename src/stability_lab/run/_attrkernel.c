/*
 * One-visit reductions for per-layer attribution (private; see attribution/kernel_path.py).
 *
 * The attribution step reduces every stashed activation and gradient (and every
 * parameter) to a few numbers. Done with torch, that is several kernel calls per tensor,
 * each reading the tensor again and each paying torch's dispatch cost. This module does
 * the whole step in one call: a table of jobs (built once per layout of shapes and
 * dtypes by attribution/kernel_path.py) and the data pointers of this step's tensors
 * go in, one float64 buffer of results comes out. Each tensor is read once for its
 * exact minimum and maximum (or its per-unit maxima) and then, while it is still in
 * cache, at its strided sample.
 *
 * Job kinds (a tensor may have several jobs; they are run in table order):
 *   K_MINMAX   out[o0] = min, out[o1] = max over all values (both NaN if any is NaN,
 *              as torch.amin/amax propagate NaN);
 *   K_SAMPLE   over values x[k * stride], k < nsample: out[o2] = count(|x| > 0),
 *              out[o3] = count(|x| >= thr) (NaN counts in neither);
 *   K_UNITMAX  the tensor as rows x width (row-major): out[o0 + j] = max over rows of
 *              column j (NaN if the column holds a NaN), as torch.amax(units, 0);
 *   K_UNITANY  out[o0 + j] = 1 if column j holds a non-zero value (NaN is non-zero), else 0;
 *   K_PARAM    out[o0] += sum g^2, out[o1] += sum w^2, out[o2] += sum u^2 in float64,
 *              u = before - w evaluated in the snapshot's dtype (float32 or float64),
 *              as attribution/torch_path.py does; a pointer index of -1 skips that sum.
 *
 * dtypes: float32, float64, float16, bfloat16. float16 and bfloat16 values are widened
 * exactly to float32 (subnormals included) and compared there; float64 is done in double.
 * Every comparison is between values representable in the tensor's dtype (the caller
 * rounds thresholds to it), so it gives the same answer in any wider type: the counts,
 * minima, maxima and unit values equal torch's bit for bit (up to the sign of a zero
 * minimum or maximum). Only the sums of squares differ from torch's, in summation order.
 *
 * Three copies of the loops are compiled (generic, AVX2+FMA, AVX-512F; see
 * ../_simd_copies.h), vectorised by the compiler from `#pragma omp simd` (-fopenmp-simd,
 * no OpenMP runtime); the best one the CPU supports is chosen once, at import. No
 * -ffast-math: NaN must propagate.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "../_simd_copies.h"

enum { K_MINMAX = 1, K_SAMPLE = 2, K_UNITMAX = 4, K_UNITANY = 8, K_PARAM = 16 };
enum { D_F32 = 0, D_F64 = 1, D_F16 = 2, D_BF16 = 3 };

/* One job: 14 int64 fields and a double (the layout attribution/kernel_path.py packs
 * with struct format "<14qd"). */
typedef struct {
    int64_t kind, dtype;
    int64_t a, b, c;      /* pointer indices: tensor (or grad, weight, before); -1: none */
    int64_t numel, rows, width, stride, nsample;
    int64_t o0, o1, o2, o3; /* output offsets */
    double thr;
} job_t;

/* K_PARAM jobs keep the snapshot's dtype (D_F32 or D_F64) in `rows`. */

static inline float h2f(uint16_t h)
{
    uint32_t s = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    union { uint32_t u; float f; } v;
    if (e == 0) {
        float f = (float)m * 5.9604644775390625e-8f; /* m * 2^-24, exact */
        return s ? -f : f;
    }
    v.u = s | (e == 31 ? (0x7f800000u | (m << 13)) : (((e + 112u) << 23) | (m << 13)));
    return v.f;
}

static inline float bf2f(uint16_t h)
{
    union { uint32_t u; float f; } v;
    v.u = (uint32_t)h << 16;
    return v.f;
}

#define LD_F32(p, i) (((const float *)(p))[i])
#define LD_F64(p, i) (((const double *)(p))[i])
#define LD_F16(p, i) h2f(((const uint16_t *)(p))[i])
#define LD_BF16(p, i) bf2f(((const uint16_t *)(p))[i])

/* The loops for one element type T loaded with LD; TGT: target attribute. */
#define DEFINE_LOOPS(SFX, TGT, T, LD, INF)                                             \
    static TGT void minmax_##SFX(const void *x, int64_t n, double *mn_o, double *mx_o) \
    {                                                                                  \
        T mn = INF, mx = -INF;                                                         \
        int nan = 0;                                                                   \
        _Pragma("omp simd reduction(min:mn) reduction(max:mx) reduction(|:nan)")       \
        for (int64_t i = 0; i < n; i++) {                                              \
            T v = LD(x, i);                                                            \
            mn = v < mn ? v : mn;                                                      \
            mx = v > mx ? v : mx;                                                      \
            nan |= (v != v);                                                           \
        }                                                                              \
        *mn_o = nan ? NAN : (double)mn;                                                \
        *mx_o = nan ? NAN : (double)mx;                                                \
    }                                                                                  \
    static TGT void sample_##SFX(const void *x, int64_t stride, int64_t n, T thr,      \
                                 double *nz_o, double *norm_o)                         \
    {                                                                                  \
        int64_t nz = 0, nm = 0;                                                        \
        for (int64_t k = 0; k < n; k++) {                                              \
            T v = LD(x, k * stride);                                                   \
            T a = v < 0 ? -v : v;                                                      \
            nz += a > 0;                                                               \
            nm += a >= thr;                                                            \
        }                                                                              \
        *nz_o = (double)nz;                                                            \
        *norm_o = (double)nm;                                                          \
    }                                                                                  \
    /* acc/flag: width scratch values (per column) */                                  \
    static TGT void unitmax_##SFX(const void *x, int64_t rows, int64_t w, T *acc,      \
                                  unsigned char *flag, double *out)                    \
    {                                                                                  \
        for (int64_t j = 0; j < w; j++) {                                              \
            acc[j] = -INF;                                                             \
            flag[j] = 0;                                                               \
        }                                                                              \
        for (int64_t r = 0; r < rows; r++) {                                           \
            int64_t base = r * w;                                                      \
            _Pragma("omp simd")                                                        \
            for (int64_t j = 0; j < w; j++) {                                          \
                T v = LD(x, base + j);                                                 \
                acc[j] = v > acc[j] ? v : acc[j];                                      \
                flag[j] |= (v != v);                                                   \
            }                                                                          \
        }                                                                              \
        for (int64_t j = 0; j < w; j++)                                                \
            out[j] = flag[j] ? NAN : (double)acc[j];                                   \
    }                                                                                  \
    static TGT void unitany_##SFX(const void *x, int64_t rows, int64_t w,              \
                                  unsigned char *flag, double *out)                    \
    {                                                                                  \
        memset(flag, 0, (size_t)w);                                                    \
        for (int64_t r = 0; r < rows; r++) {                                           \
            int64_t base = r * w;                                                      \
            _Pragma("omp simd")                                                        \
            for (int64_t j = 0; j < w; j++)                                            \
                flag[j] |= (LD(x, base + j) != 0);                                     \
        }                                                                              \
        for (int64_t j = 0; j < w; j++)                                                \
            out[j] = flag[j] ? 1.0 : 0.0;                                              \
    }                                                                                  \
    static TGT double sumsq_##SFX(const void *x, int64_t n)                            \
    {                                                                                  \
        double s = 0.0;                                                                \
        _Pragma("omp simd reduction(+:s)")                                             \
        for (int64_t i = 0; i < n; i++) {                                              \
            double v = (double)LD(x, i);                                               \
            s += v * v;                                                                \
        }                                                                              \
        return s;                                                                      \
    }                                                                                  \
    /* sum of (before - w)^2, the difference rounded to float32 */                     \
    static TGT double upd32_##SFX(const float *b, const void *w, int64_t n)            \
    {                                                                                  \
        double s = 0.0;                                                                \
        _Pragma("omp simd reduction(+:s)")                                             \
        for (int64_t i = 0; i < n; i++) {                                              \
            float d = b[i] - (float)LD(w, i);                                          \
            s += (double)d * (double)d;                                                \
        }                                                                              \
        return s;                                                                      \
    }                                                                                  \
    static TGT double upd64_##SFX(const double *b, const void *w, int64_t n)           \
    {                                                                                  \
        double s = 0.0;                                                                \
        _Pragma("omp simd reduction(+:s)")                                             \
        for (int64_t i = 0; i < n; i++) {                                              \
            double d = b[i] - (double)LD(w, i);                                        \
            s += d * d;                                                                \
        }                                                                              \
        return s;                                                                      \
    }

/* scratch for the per-column loops: float or double, by the dtype */
typedef struct {
    void (*minmax)(const void *, int64_t, double *, double *);
    void (*sample)(const void *, int64_t, int64_t, double, double *, double *);
    void (*unitmax)(const void *, int64_t, int64_t, void *, unsigned char *, double *);
    void (*unitany)(const void *, int64_t, int64_t, unsigned char *, double *);
    double (*sumsq)(const void *, int64_t);
    double (*upd32)(const float *, const void *, int64_t);
    double (*upd64)(const double *, const void *, int64_t);
} loops_t;

/* Adapters with one signature per slot (thresholds come in as double; for the float
 * loops the value is representable in the tensor's dtype, hence exact in float). */
#define DEFINE_SET(SFX, TGT, T, LD, INF)                                               \
    DEFINE_LOOPS(SFX, TGT, T, LD, INF)                                                 \
    static void sample_a_##SFX(const void *x, int64_t s, int64_t n, double thr,        \
                               double *nz, double *nm)                                 \
    {                                                                                  \
        sample_##SFX(x, s, n, (T)thr, nz, nm);                                         \
    }                                                                                  \
    static void unitmax_a_##SFX(const void *x, int64_t r, int64_t w, void *acc,        \
                                unsigned char *flag, double *out)                      \
    {                                                                                  \
        unitmax_##SFX(x, r, w, (T *)acc, flag, out);                                   \
    }                                                                                  \
    static const loops_t loops_##SFX = {minmax_##SFX, sample_a_##SFX, unitmax_a_##SFX, \
                                        unitany_##SFX, sumsq_##SFX, upd32_##SFX,       \
                                        upd64_##SFX};

#define DEFINE_TARGET(NAME, TGT)                                                       \
    DEFINE_SET(f32_##NAME, TGT, float, LD_F32, INFINITY)                               \
    DEFINE_SET(f64_##NAME, TGT, double, LD_F64, (double)INFINITY)                      \
    DEFINE_SET(f16_##NAME, TGT, float, LD_F16, INFINITY)                               \
    DEFINE_SET(bf16_##NAME, TGT, float, LD_BF16, INFINITY)                             \
    static const loops_t *const set_##NAME[4] = {&loops_f32_##NAME, &loops_f64_##NAME, \
                                                 &loops_f16_##NAME, &loops_bf16_##NAME};

DEFINE_TARGET(generic, )
#if SIMD_X86_COPIES
DEFINE_TARGET(avx2, COPY_AVX2)
DEFINE_TARGET(avx512, COPY_AVX512)
static const loops_t *const *const copy_sets[N_COPIES] = {set_avx512, set_avx2, set_generic};
#else
static const loops_t *const *const copy_sets[N_COPIES] = {NULL, NULL, set_generic};
#endif

/* The copies this CPU can run, best first. */
static copies_t copies;

/* Check a job table against the pointer count and output length; 0 or -1 (error set). */
static int check_jobs(const job_t *jobs, Py_ssize_t n_jobs, Py_ssize_t n_ptrs,
                      Py_ssize_t n_out, int64_t *widest)
{
    *widest = 1;
    for (Py_ssize_t i = 0; i < n_jobs; i++) {
        const job_t *j = &jobs[i];
        int ok = j->dtype >= 0 && j->dtype < 4 && j->a >= -1 && j->a < n_ptrs
                 && j->b >= -1 && j->b < n_ptrs && j->c >= -1 && j->c < n_ptrs
                 && j->numel > 0;
        switch (j->kind) {
        case K_MINMAX:
            ok = ok && j->a >= 0 && j->o0 >= 0 && j->o0 < n_out && j->o1 >= 0
                 && j->o1 < n_out;
            break;
        case K_SAMPLE:
            ok = ok && j->a >= 0 && j->stride >= 1 && j->nsample >= 1
                 && (j->nsample - 1) * j->stride < j->numel && j->o2 >= 0
                 && j->o2 < n_out && j->o3 >= 0 && j->o3 < n_out;
            break;
        case K_UNITMAX:
        case K_UNITANY:
            ok = ok && j->a >= 0 && j->rows >= 1 && j->width >= 1
                 && j->rows * j->width == j->numel && j->o0 >= 0
                 && j->o0 + j->width <= n_out;
            if (j->width > *widest)
                *widest = j->width;
            break;
        case K_PARAM:
            ok = ok && j->b >= 0 && (j->rows == D_F32 || j->rows == D_F64) && j->o0 >= 0
                 && j->o0 < n_out && j->o1 >= 0 && j->o1 < n_out && j->o2 >= 0
                 && j->o2 < n_out;
            break;
        default:
            ok = 0;
        }
        if (!ok) {
            PyErr_Format(PyExc_ValueError, "attr_reduce: job %zd is malformed", i);
            return -1;
        }
    }
    return 0;
}

static void run_jobs(const loops_t *const *set, const job_t *jobs, Py_ssize_t n_jobs,
                     void *const *ptr, double *out, void *acc, unsigned char *flag)
{
    for (Py_ssize_t i = 0; i < n_jobs; i++) {
        const job_t *j = &jobs[i];
        const loops_t *L = set[j->dtype];
        switch (j->kind) {
        case K_MINMAX:
            L->minmax(ptr[j->a], j->numel, &out[j->o0], &out[j->o1]);
            break;
        case K_SAMPLE:
            L->sample(ptr[j->a], j->stride, j->nsample, j->thr, &out[j->o2], &out[j->o3]);
            break;
        case K_UNITMAX:
            L->unitmax(ptr[j->a], j->rows, j->width, acc, flag, &out[j->o0]);
            break;
        case K_UNITANY:
            L->unitany(ptr[j->a], j->rows, j->width, flag, &out[j->o0]);
            break;
        case K_PARAM:
            if (j->a >= 0)
                out[j->o0] += L->sumsq(ptr[j->a], j->numel);
            out[j->o1] += L->sumsq(ptr[j->b], j->numel);
            if (j->c >= 0)
                out[j->o2] += j->rows == D_F32
                                  ? L->upd32((const float *)ptr[j->c], ptr[j->b], j->numel)
                                  : L->upd64((const double *)ptr[j->c], ptr[j->b], j->numel);
            break;
        }
    }
}

/* attr_reduce(ptrs, jobs, out, target=None): ptrs a list of int addresses; jobs a
 * bytes-like job table; out a writable float64 buffer (K_PARAM sums are added to it). */
static PyObject *attr_reduce(PyObject *self, PyObject *args)
{
    PyObject *ptrs_o, *jobs_o, *out_o;
    const char *want = NULL;
    if (!PyArg_ParseTuple(args, "O!OO|z", &PyList_Type, &ptrs_o, &jobs_o, &out_o, &want))
        return NULL;
    int copy = copies_pick(&copies, want, "attr_reduce");
    if (copy < 0)
        return NULL;
    const loops_t *const *set = copy_sets[copy];
    Py_ssize_t n_ptrs = PyList_GET_SIZE(ptrs_o);
    void *stack_ptrs[64];
    void **ptr = n_ptrs <= 64 ? stack_ptrs : PyMem_Malloc(sizeof(void *) * (size_t)n_ptrs);
    if (ptr == NULL)
        return PyErr_NoMemory();
    for (Py_ssize_t i = 0; i < n_ptrs; i++) {
        ptr[i] = PyLong_AsVoidPtr(PyList_GET_ITEM(ptrs_o, i));
        if (ptr[i] == NULL) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "attr_reduce: a null data pointer");
            goto fail_ptr;
        }
    }
    Py_buffer jv, ov;
    if (PyObject_GetBuffer(jobs_o, &jv, PyBUF_C_CONTIGUOUS) < 0)
        goto fail_ptr;
    if (jv.len % (Py_ssize_t)sizeof(job_t) != 0) {
        PyErr_SetString(PyExc_ValueError, "attr_reduce: the job table's length is not a "
                        "multiple of the job size");
        goto fail_j;
    }
    if (PyObject_GetBuffer(out_o, &ov, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE)
        < 0)
        goto fail_j;
    if (ov.itemsize != 8 || ov.format == NULL || strcmp(ov.format, "d") != 0) {
        PyErr_SetString(PyExc_ValueError, "attr_reduce: 'out' must be a C-contiguous "
                        "writable float64 buffer");
        goto fail_o;
    }
    const job_t *jobs = (const job_t *)jv.buf;
    Py_ssize_t n_jobs = jv.len / (Py_ssize_t)sizeof(job_t);
    int64_t widest;
    if (check_jobs(jobs, n_jobs, n_ptrs, ov.len / 8, &widest) < 0)
        goto fail_o;
    void *acc = PyMem_RawMalloc((size_t)widest * 8);
    unsigned char *flag = PyMem_RawMalloc((size_t)widest);
    if (acc == NULL || flag == NULL) {
        PyMem_RawFree(acc);
        PyMem_RawFree(flag);
        PyErr_NoMemory();
        goto fail_o;
    }
    Py_BEGIN_ALLOW_THREADS
    run_jobs(set, jobs, n_jobs, ptr, (double *)ov.buf, acc, flag);
    Py_END_ALLOW_THREADS
    PyMem_RawFree(acc);
    PyMem_RawFree(flag);
    PyBuffer_Release(&ov);
    PyBuffer_Release(&jv);
    if (ptr != stack_ptrs)
        PyMem_Free(ptr);
    Py_RETURN_NONE;
fail_o:
    PyBuffer_Release(&ov);
fail_j:
    PyBuffer_Release(&jv);
fail_ptr:
    if (ptr != stack_ptrs)
        PyMem_Free(ptr);
    return NULL;
}

static PyObject *targets(PyObject *self, PyObject *noargs)
{
    return copies_tuple(&copies);
}

static PyObject *job_size(PyObject *self, PyObject *noargs)
{
    return PyLong_FromSize_t(sizeof(job_t));
}

static PyMethodDef methods[] = {
    {"attr_reduce", attr_reduce, METH_VARARGS,
     "attr_reduce(ptrs, jobs, out, target=None): run a job table (see _attrkernel.c)"},
    {"targets", targets, METH_NOARGS,
     "the instruction-set copies this CPU can run, best (the default) first"},
    {"job_size", job_size, METH_NOARGS, "bytes per job in the table"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moddef = {
    PyModuleDef_HEAD_INIT, "_attrkernel",
    "One-visit reductions for per-layer attribution (private; see attribution/kernel_path.py).",
    -1, methods,
};

PyMODINIT_FUNC PyInit__attrkernel(void)
{
    copies_init(&copies); /* once, under the import lock: the calls only read it */
    return PyModule_Create(&moddef);
}
