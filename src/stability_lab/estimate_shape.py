"""The data's shape, for the estimate, without loading it.

:func:`data_shape` tells a ``--data`` value's rows and feature columns from what is
cheap to read: the built-in shapes (:data:`BUILTIN_SHAPES`), a synthetic source's
parameters, a NIST problem's design, a CSV's header and line count.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

#: the shapes of the built-in data sets (rows, feature columns)
BUILTIN_SHAPES = {"breast_cancer": (569, 30), "digits": (1797, 64)}


# -- the data, without loading it --------------------------------------------------------
@dataclass(frozen=True)
class Shape:
    rows: int
    cols: int
    #: "builtin", "synthetic", "csv" or "nist"
    kind: str
    #: bytes of the file read (CSV), else 0
    file_bytes: int = 0


def data_shape(task: str, source: str, target: str | None = None) -> Shape | None:
    """Rows and feature columns of a ``--data`` value without loading it: the built-in
    shapes, a synthetic source's ``n`` and ``d``, a NIST problem's design, a CSV's header
    (its columns less the target) and its line count. None when it cannot be told (a
    missing or unreadable file: the loader says why when the sweep starts)."""
    source = str(source).strip()
    try:
        if source in BUILTIN_SHAPES:
            n, p = BUILTIN_SHAPES[source]
            return Shape(n, p + (1 if task == "linear_regression" else 0), "builtin")
        if source.startswith("synthetic"):
            from stability_lab.tasks.datasets import parse_synthetic

            params = parse_synthetic(source)
            return Shape(int(params["n"]), int(params["d"]), "synthetic")
        if source.startswith("nist:"):
            from stability_lab.linalg.nist import load_problem

            rows, cols = load_problem(source.partition(":")[2]).design().shape
            return Shape(int(rows), int(cols), "nist")
        return _csv_shape(source, task)
    except Exception:  # any fault is the loader's to report, with its own message
        return None


def _csv_shape(path: str, task: str) -> Shape | None:
    import csv

    from stability_lab.tasks.datasets import sniff_delimiter

    size = os.path.getsize(path)
    with open(path, newline="", encoding="utf-8-sig") as fh:
        head = fh.read(65536)
    delim = sniff_delimiter(head)
    header = next(csv.reader(head.splitlines()[:1], delimiter=delim), [])
    if len(header) < 2:
        return None
    lines, last = 0, b"\n"
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    lines += last != b"\n"
    cols = len(header) - 1 + (1 if task == "linear_regression" else 0)  # intercept
    return Shape(max(lines - 1, 0), cols, "csv", size)
