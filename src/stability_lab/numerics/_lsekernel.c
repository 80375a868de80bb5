/*
 * One-pass-per-row log-sum-exp / log_softmax kernel for float32 rows (private).
 *
 * Same algorithm as the NumPy kernel _core._lse_blocked_rows (Blanchard, Higham &
 * Higham 2021, Alg. 4.1 with the log1p split), fused so that each row is read from
 * memory once and stays in L1 cache for its three sweeps:
 *
 *   1. m = max_j x_j (and whether the row holds a NaN);
 *   2. s = sum_{x_j < m} exp(x_j - m) + (count_{x_j == m} - 1), summed in float64, so
 *      the max term's 1 is never added to the other terms and the sum carries no
 *      rounding error of size u * 1;  L = log1p(s) in float64;
 *   3. log_softmax_j = ((x_j - m) - L) evaluated in float64 and rounded once to float32.
 *
 * Rows whose max is not finite (+inf, all -inf) or that hold a NaN are not computed
 * here: they are flagged in `special` and the caller handles them with the NumPy kernel,
 * which owns the special-value rules.
 *
 * exp(t), t = x_j - m formed in float32 as in the NumPy kernel: Cody-Waite reduction
 * t = k ln2 + r, |r| <= ln2/2, and Cephes' expf polynomial for exp(r), in float32
 * vector lanes; 2^k is then built in float64 and the product summed in float64, so terms
 * below float32's normal range keep their relative accuracy. Terms with t < -700 are 0.
 * Measured: lse([0, t]) for 2e6 values t in [-103, 0) is within 1.45 ulp of float64's
 * log1p(exp(t)) (the NumPy kernel: 3.05 ulp).
 *
 * The vector code uses GCC/Clang vector extensions. Three copies are compiled: generic
 * (whatever the baseline ISA gives), AVX2+FMA (8 lanes) and AVX-512F (16 lanes); the
 * best one the CPU supports is chosen at run time (__builtin_cpu_supports). No
 * -ffast-math: the rounding trick k = (t*log2e + 1.5*2^23) - 1.5*2^23 relies on IEEE
 * arithmetic. The max and the final sweep are plain loops vectorised by the compiler
 * (`#pragma omp simd`, compiled with -fopenmp-simd, which needs no OpenMP runtime).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "../_simd_copies.h"

/* float32 exp pieces (Cephes expf, as in sse_mathfun's exp_ps): ln 2 split so that
 * k * LN2_HI_F is exact for |k| < 2^15, and the degree-7 polynomial
 * exp(r) ~ 1 + r + r^2 * P(r) on |r| <= ln2/2 (relative error ~1 ulp of float32). */
#define LOG2E_F 1.44269504088896341f
#define SHIFT_F 12582912.0f /* 1.5 * 2^23 */
#define LN2_HI_F 0.693359375f
#define LN2_LO_F (-2.12194440e-4f)
#define P0 1.9875691500e-4f
#define P1 1.3981999507e-3f
#define P2 8.3334519073e-3f
#define P3 4.1665795894e-2f
#define P4 1.6666665459e-1f
#define P5 5.0000001201e-1f
#define T_MIN_F (-700.0f)

typedef float vf8 __attribute__((vector_size(32)));
typedef int32_t vi8 __attribute__((vector_size(32)));
typedef double vd4 __attribute__((vector_size(32)));
typedef int64_t vl4 __attribute__((vector_size(32)));
typedef float vf16 __attribute__((vector_size(64)));
typedef int32_t vi16 __attribute__((vector_size(64)));
typedef double vd8 __attribute__((vector_size(64)));
typedef int64_t vl8 __attribute__((vector_size(64)));
#define LO8(v) __builtin_shufflevector(v, v, 0, 1, 2, 3)
#define HI8(v) __builtin_shufflevector(v, v, 4, 5, 6, 7)
#define LO16(v) __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7)
#define HI16(v) __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15)

/* Add exp(t) over the W lanes of t = x - m to the float64 accumulators s0 and s1 (low
 * and high half of the lanes), and count t == 0 in ties. Lanes with t >= 0 or
 * t < T_MIN_F add 0. exp(t) = 2^k * p(r): p(r) in float32, then widened and multiplied
 * by 2^k built in float64, so terms far below float32's normal range (down to e^-700)
 * keep their relative accuracy. VF/VI: W floats / int32; VD/VL: W/2 doubles / int64. */
#define EXP_ACC(VF, VI, VD, VL, LO, HI, t, s0, s1, ties)                        \
    do {                                                                        \
        const VF zf_ = {0};                                                     \
        VI keep_ = ((t) < 0.0f) & ((t) >= T_MIN_F);                             \
        VI lo_ = (t) < T_MIN_F;                                                 \
        VF tc_ = (VF)(((VI)(zf_ + T_MIN_F) & lo_) | ((VI)(t) & ~lo_));          \
        VF kf_ = tc_ * LOG2E_F + SHIFT_F;                                       \
        VI ki_ = (VI)kf_ - (VI)(zf_ + SHIFT_F);                                 \
        VF k_ = kf_ - SHIFT_F;                                                  \
        VF r_ = tc_ - k_ * LN2_HI_F;                                            \
        r_ = r_ - k_ * LN2_LO_F;                                                \
        VF p_ = P0 + zf_;                                                       \
        p_ = p_ * r_ + P1;                                                      \
        p_ = p_ * r_ + P2;                                                      \
        p_ = p_ * r_ + P3;                                                      \
        p_ = p_ * r_ + P4;                                                      \
        p_ = p_ * r_ + P5;                                                      \
        p_ = p_ * (r_ * r_) + r_ + 1.0f;                                        \
        p_ = (VF)((VI)p_ & keep_);                                              \
        VL k0_ = __builtin_convertvector(LO(ki_), VL);                          \
        VL k1_ = __builtin_convertvector(HI(ki_), VL);                          \
        k0_ = (k0_ + 1023) << 52;                                               \
        k1_ = (k1_ + 1023) << 52;                                               \
        VD c0_, c1_;                                                            \
        memcpy(&c0_, &k0_, sizeof c0_);                                         \
        memcpy(&c1_, &k1_, sizeof c1_);                                         \
        (s0) += __builtin_convertvector(LO(p_), VD) * c0_;                      \
        (s1) += __builtin_convertvector(HI(p_), VD) * c1_;                      \
        (ties) += ((t) == 0.0f) & 1;                                            \
    } while (0)

/* s = sum over one row of exp(x_j - m) for x_j < m, ties = count of x_j == m. */
#define DEFINE_EXPSUM(NAME, ATTR, W, VF, VI, VD, VL, LO, HI)                    \
ATTR static void NAME(const float *xr, Py_ssize_t n, float mx,                  \
                      double *s_out, double *ties_out)                          \
{                                                                               \
    const VF mv = (VF){0} + mx;                                                 \
    VD s0 = {0}, s1 = {0};                                                      \
    VI tv = {0};                                                                \
    Py_ssize_t j = 0;                                                           \
    for (; j + W <= n; j += W) {                                                \
        VF xf;                                                                  \
        memcpy(&xf, xr + j, sizeof xf);                                         \
        VF t = xf - mv;                                                         \
        EXP_ACC(VF, VI, VD, VL, LO, HI, t, s0, s1, tv);                         \
    }                                                                           \
    if (j < n) { /* tail padded with -inf: adds 0 and no tie */                 \
        VF xf = (VF){0} - INFINITY;                                             \
        for (Py_ssize_t q = 0; j + q < n; q++)                                  \
            xf[q] = xr[j + q];                                                  \
        VF t = xf - mv;                                                         \
        EXP_ACC(VF, VI, VD, VL, LO, HI, t, s0, s1, tv);                         \
    }                                                                           \
    VD sv = s0 + s1;                                                            \
    double s = 0.0;                                                             \
    for (int q = 0; q < W / 2; q++)                                             \
        s += sv[q];                                                             \
    long long ties = 0;                                                         \
    for (int q = 0; q < W; q++)                                                 \
        ties += tv[q];                                                          \
    *s_out = s;                                                                 \
    *ties_out = (double)ties;                                                   \
}

/* The row kernel, instantiated once per target. Returns the number of special rows. */
#define DEFINE_KERNEL(NAME, ATTR, EXPSUM)                                               \
ATTR static Py_ssize_t NAME(const float *x, Py_ssize_t rows, Py_ssize_t n,     \
                            float *m_out, float *l_out, float *lsm,             \
                            unsigned char *special)                             \
{                                                                               \
    Py_ssize_t nspecial = 0;                                                    \
    for (Py_ssize_t i = 0; i < rows; i++) {                                     \
        const float *xr = x + i * n;                                            \
        float mx = -INFINITY;                                                   \
        int bad = 0;                                                            \
        _Pragma("omp simd reduction(max:mx) reduction(|:bad)")                  \
        for (Py_ssize_t j = 0; j < n; j++) {                                    \
            float v = xr[j];                                                    \
            mx = v > mx ? v : mx;                                               \
            bad |= (v != v);                                                    \
        }                                                                       \
        if (bad || !isfinite(mx)) {                                             \
            special[i] = 1;                                                     \
            nspecial++;                                                         \
            continue;                                                           \
        }                                                                       \
        special[i] = 0;                                                         \
        const double md = (double)mx;                                           \
        double s, ties;                                                         \
        EXPSUM(xr, n, mx, &s, &ties);                                           \
        s += ties - 1.0;                                                        \
        const double L = log1p(s);                                              \
        m_out[i] = mx;                                                          \
        l_out[i] = (float)L;                                                    \
        if (lsm != NULL) {                                                      \
            float *yr = lsm + i * n;                                            \
            _Pragma("omp simd")                                                 \
            for (Py_ssize_t j = 0; j < n; j++)                                  \
                yr[j] = (float)(((double)xr[j] - md) - L);                      \
        }                                                                       \
    }                                                                           \
    return nspecial;                                                            \
}

DEFINE_EXPSUM(expsum_generic, , 8, vf8, vi8, vd4, vl4, LO8, HI8)
DEFINE_KERNEL(rows_generic, , expsum_generic)

typedef Py_ssize_t (*kernel_fn)(const float *, Py_ssize_t, Py_ssize_t, float *, float *,
                                float *, unsigned char *);

#if SIMD_X86_COPIES
DEFINE_EXPSUM(expsum_avx2, COPY_AVX2, 8, vf8, vi8, vd4, vl4, LO8, HI8)
DEFINE_KERNEL(rows_avx2, COPY_AVX2, expsum_avx2)
DEFINE_EXPSUM(expsum_avx512, COPY_AVX512, 16, vf16, vi16, vd8, vl8, LO16, HI16)
DEFINE_KERNEL(rows_avx512, COPY_AVX512, expsum_avx512)
static const kernel_fn copy_fns[N_COPIES] = {rows_avx512, rows_avx2, rows_generic};
#else
static const kernel_fn copy_fns[N_COPIES] = {NULL, NULL, rows_generic};
#endif

/* The copies this CPU can run, best first. */
static copies_t copies;

static int get_buf(PyObject *obj, Py_buffer *view, const char *name, const char *fmt,
                   Py_ssize_t itemsize, Py_ssize_t count, int writable)
{
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0)
        return -1;
    if (view->itemsize != itemsize || view->format == NULL || strcmp(view->format, fmt) != 0
        || view->len != count * itemsize) {
        PyErr_Format(PyExc_ValueError,
                     "lse_rows_f32: '%s' must be a C-contiguous buffer of %zd items of "
                     "format '%s'", name, count, fmt);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static PyObject *lse_rows_f32(PyObject *self, PyObject *args)
{
    PyObject *xo, *mo, *lo, *lsmo, *so;
    Py_ssize_t rows, n;
    const char *want = NULL;
    if (!PyArg_ParseTuple(args, "OnnOOOO|z", &xo, &rows, &n, &mo, &lo, &lsmo, &so, &want))
        return NULL;
    int copy = copies_pick(&copies, want, "lse_rows_f32");
    if (copy < 0)
        return NULL;
    kernel_fn fn = copy_fns[copy];
    if (rows < 0 || n <= 0) {
        PyErr_SetString(PyExc_ValueError, "lse_rows_f32: need rows >= 0 and n >= 1");
        return NULL;
    }
    Py_buffer xv, mv, lv, sv, yv;
    int have_y = lsmo != Py_None;
    if (get_buf(xo, &xv, "x", "f", 4, rows * n, 0) < 0)
        return NULL;
    if (get_buf(mo, &mv, "m", "f", 4, rows, 1) < 0)
        goto fail_x;
    if (get_buf(lo, &lv, "L", "f", 4, rows, 1) < 0)
        goto fail_m;
    if (get_buf(so, &sv, "special", "B", 1, rows, 1) < 0)
        goto fail_l;
    if (have_y && get_buf(lsmo, &yv, "lsm", "f", 4, rows * n, 1) < 0)
        goto fail_s;
    Py_ssize_t ns;
    Py_BEGIN_ALLOW_THREADS
    ns = fn((const float *)xv.buf, rows, n, (float *)mv.buf, (float *)lv.buf,
            have_y ? (float *)yv.buf : NULL, (unsigned char *)sv.buf);
    Py_END_ALLOW_THREADS
    if (have_y)
        PyBuffer_Release(&yv);
    PyBuffer_Release(&sv);
    PyBuffer_Release(&lv);
    PyBuffer_Release(&mv);
    PyBuffer_Release(&xv);
    return PyLong_FromSsize_t(ns);
fail_s:
    PyBuffer_Release(&sv);
fail_l:
    PyBuffer_Release(&lv);
fail_m:
    PyBuffer_Release(&mv);
fail_x:
    PyBuffer_Release(&xv);
    return NULL;
}

static PyObject *targets(PyObject *self, PyObject *noargs)
{
    return copies_tuple(&copies);
}

static PyMethodDef methods[] = {
    {"lse_rows_f32", lse_rows_f32, METH_VARARGS,
     "lse_rows_f32(x, rows, n, m, L, lsm_or_None, special, target=None) -> number of "
     "special rows"},
    {"targets", targets, METH_NOARGS,
     "the instruction-set copies of the kernel this CPU can run, best (the default) first"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moddef = {
    PyModuleDef_HEAD_INIT, "_lsekernel",
    "Fused float32 log-sum-exp / log_softmax row kernel (private; see _core.lse_rows).",
    -1, methods,
};

PyMODINIT_FUNC PyInit__lsekernel(void)
{
    copies_init(&copies); /* once, under the import lock: the calls only read it */
    return PyModule_Create(&moddef);
}
