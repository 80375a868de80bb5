"""Linear algebra the lab judges with: least-squares solvers with their diagnostics,
double-double refinement, condition numbers at any size, NIST's certified problems and
the duplicated-rows one-hot scenario. Everything here computes in float64 or better,
whatever the precision of the run it judges; nothing here knows of specs, tasks or
stores.
"""

#: the least-squares solvers, in the order the ``solver`` axis lists them; each has one
#: record in the solver table of :mod:`stability_lab.linalg.solvers` (this tuple is here,
#: free of NumPy and SciPy, so that the command line can check ``--solver`` cheaply)
SOLVERS = ("normal", "cholesky", "qr", "svd", "pinv", "lstsq", "ridge", "lsqr", "cg", "gd",
           "auto")
