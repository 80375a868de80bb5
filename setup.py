"""Build of the optional C kernels; all metadata is in pyproject.toml.

Both extensions are optional: without a C compiler the install still succeeds.
stability_lab.numerics then uses its NumPy kernels (same results to within the documented
accuracy, slower on float32 log-sum-exp / log_softmax; see docs/numerics.md), and
stability_lab.run.attribution its torch reductions (same statistics, a slower
attribution step; see docs/deep.md).
"""

import sys

from setuptools import Extension, setup

if sys.platform == "win32":
    args = ["/O2"]
else:
    # -fopenmp-simd: honour `#pragma omp simd` (vectorised reductions) without linking an
    # OpenMP runtime. No -ffast-math: the kernel relies on IEEE rounding.
    args = ["-O3", "-fopenmp-simd"]

setup(
    ext_modules=[
        Extension(
            "stability_lab.numerics._lsekernel",
            ["src/stability_lab/numerics/_lsekernel.c"],
            depends=["src/stability_lab/_simd_copies.h"],
            extra_compile_args=args,
            optional=True,
        ),
        Extension(
            "stability_lab.run._attrkernel",
            ["src/stability_lab/run/_attrkernel.c"],
            depends=["src/stability_lab/_simd_copies.h"],
            extra_compile_args=args,
            optional=True,
        ),
    ]
)
