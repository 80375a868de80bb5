"""The machine's software and thread settings, printed at the top of every benchmark.

Timings mean little without them: the BLAS build and its core type (this environment
sets ``OPENBLAS_CORETYPE=Haswell``, which halves numpy's GEMM speed), and the thread
counts of numpy's BLAS and of torch.
"""

from __future__ import annotations

import os
import platform
import sys

ENV = ("OPENBLAS_CORETYPE", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
       "STABILITY_LAB_TORCH_THREADS")


def settings() -> str:
    """Versions, BLAS and threads; torch's only if this process has imported it."""
    import numpy as np
    import scipy

    try:
        import threadpoolctl

        blas = "; ".join(f"{i['internal_api']} {i['version']} ({i['num_threads']} threads, "
                         f"{i.get('architecture')})"
                         for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas")
    except ImportError:
        blas = "unknown (threadpoolctl not installed)"
    lines = [f"python {platform.python_version()}, numpy {np.__version__}, "
             f"scipy {scipy.__version__}; cpus {os.cpu_count()} "
             f"({platform.processor() or platform.machine()})",
             f"BLAS: {blas}"]
    torch = sys.modules.get("torch")
    if torch is not None:
        lines.append(f"torch {torch.__version__}: {torch.get_num_threads()} intra-op threads, "
                     f"{torch.get_num_interop_threads()} inter-op, "
                     f"cpu capability {torch.backends.cpu.get_cpu_capability()}")
    lines.append("env: " + ", ".join(f"{k}={os.environ.get(k, '<unset>')}" for k in ENV))
    return "\n".join(lines)
