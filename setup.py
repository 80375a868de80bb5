"""Build of the optional C kernel; all metadata is in pyproject.toml.

The extension is optional: without a C compiler the install still succeeds and
stability_lab.numerics uses its NumPy kernels (same results to within the documented
accuracy, slower on float32 log-sum-exp / log_softmax; see docs/numerics.md).
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
            extra_compile_args=args,
            optional=True,
        )
    ]
)
