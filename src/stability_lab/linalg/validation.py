"""Input validation for the least-squares solvers: one-line errors naming the input.

:func:`validate_inputs` checks that X is 2-D, numeric and finite (dense, pandas or SciPy
sparse) and y 1-D, numeric, finite and as long as X; a bad column is named by its label
or index and the first non-finite entry by its position, with what to do about it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse

from stability_lab.errors import DataError, UsageError

__all__ = ["as_numeric_2d", "check_finite", "validate_inputs"]


def validate_inputs(X: Any, y: Any, *, allow_sparse: bool = True) -> tuple[Any, np.ndarray]:
    """Check and convert ``X`` (2-D, numeric, finite) and ``y`` (1-D, same length).

    Returns ``(X, y)`` as float64 (``X`` stays a CSR matrix when sparse). Raises
    :class:`DataError` naming the input and what to do.
    """
    if scipy.sparse.issparse(X):
        if not allow_sparse:
            raise UsageError("Input X is a sparse matrix; this solver needs a dense array: "
                             "pass X.toarray() or use solver='lsqr', 'cg', 'gd' or 'auto'.")
        Xs = scipy.sparse.csr_matrix(X)
        if not np.issubdtype(Xs.dtype, np.number) or np.iscomplexobj(Xs.data):
            raise DataError(f"Input X has non-numeric dtype {Xs.dtype}; expected real numbers.")
        Xs = Xs.astype(np.float64)
        if Xs.ndim != 2:
            raise DataError("Input X must be 2-D.")
        check_finite(Xs.data, "X", shape=None)
        Xa: Any = Xs
        m = Xs.shape[0]
    else:
        Xa = as_numeric_2d(X)
        m = Xa.shape[0]
    ya = as_numeric_1d(y)
    if ya.shape[0] != m:
        raise DataError(f"X has {m} rows but y has {ya.shape[0]} entries; they must match "
                        "(one label per row of X).")
    if m == 0 or Xa.shape[1] == 0:
        raise DataError(f"Input X is empty (shape {Xa.shape}); need at least one row and "
                        "one column.")
    if not scipy.sparse.issparse(Xa):
        check_finite(Xa, "X", shape=Xa.shape)
    check_finite(ya, "y", shape=ya.shape)
    return Xa, ya


def as_numeric_2d(X: Any) -> np.ndarray:
    """``X`` as a dense 2-D float64 array (X itself when it already is one); a column
    that is not numeric is named (pandas label or index) in the DataError."""
    dtypes = getattr(X, "dtypes", None)  # pandas DataFrame: name the bad column
    if dtypes is not None and hasattr(dtypes, "items"):
        for j, (name, dt) in enumerate(dtypes.items()):
            # pandas extension dtypes (StringDtype, Int64, ...) are not NumPy dtypes: ask
            # for their kind, which both expose (i/u/f/b numeric, O/U/S/M... not)
            if getattr(dt, "kind", "O") not in "iufb":
                raise DataError(f"Input X column {name!r} (index {j}) is not numeric (dtype "
                                f"{dt}); encode it first (e.g. one-hot) or drop it.")
    arr = np.asarray(X)
    if arr.ndim == 1:
        raise DataError(f"Input X must be 2-D (rows x features); got shape {arr.shape}. "
                        "Pass X.reshape(-1, 1) for a single feature.")
    if arr.ndim != 2:
        raise DataError(f"Input X must be 2-D (rows x features); got shape {arr.shape}.")
    if np.iscomplexobj(arr):
        raise DataError("Input X is complex; expected real numbers.")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        for j in range(arr.shape[1]):
            for i, v in enumerate(arr[:, j]):
                try:
                    float(v)
                except (TypeError, ValueError):
                    raise DataError(
                        f"Input X column {j} is not numeric (row {i} holds {v!r}); encode "
                        "it first (e.g. one-hot) or drop it.") from None
        arr = arr.astype(np.float64)
    return np.array(arr, dtype=np.float64, copy=True) if arr.dtype != np.float64 else arr


def as_numeric_1d(y: Any) -> np.ndarray:
    """A 1-D float64 array of ``y`` (a column or row vector is flattened)."""
    arr = np.asarray(y)
    if arr.ndim == 2 and 1 in arr.shape:
        arr = arr.ravel()
    if arr.ndim != 1:
        raise DataError(f"Input y must be 1-D (one label per row); got shape {arr.shape}.")
    if np.iscomplexobj(arr):
        raise DataError("Input y is complex; expected real numbers.")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError):
            raise DataError(f"Input y is not numeric (dtype {arr.dtype}); expected real "
                            "numbers.") from None
    return arr.astype(np.float64)


def check_finite(a: np.ndarray, name: str, shape: tuple[int, ...] | None) -> None:
    """Raise a DataError when ``a`` holds NaN or inf, with the count and, given the
    array's ``shape``, the position of the first one."""
    bad = ~np.isfinite(a)
    if bad.any():
        kind = "NaN" if np.isnan(a[bad]).any() else "inf"
        where = ""
        if shape is not None:
            idx = np.unravel_index(int(np.flatnonzero(bad.ravel())[0]), shape)
            where = (f", first at row {idx[0]}, column {idx[1]}" if len(idx) == 2
                     else f", first at index {idx[0]}")
        raise DataError(f"Input {name} contains {kind} ({int(bad.sum())} non-finite "
                        f"entries{where}); drop or impute those rows first.")
