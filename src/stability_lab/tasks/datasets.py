"""Data sources for the linear tasks, and feature transforms.

Sources (the ``--data`` value):

- ``breast_cancer`` (default): scikit-learn's Wisconsin diagnostic breast-cancer data,
  569 x 30, with its raw, badly scaled features (cond(X) about 1.5e6).
- ``digits``: scikit-learn's 8x8 digits, 1797 x 64 (10 classes; binary tasks use
  "digit is odd").
- ``synthetic:n=2000,d=20,kappa=1e8,seed=0``: X = sqrt(n) U diag(s) V^T with U, V
  random orthonormal and s geometric from 1 down to 1/kappa, so cond(X) = kappa to
  rounding (cond(X^T X) = kappa^2); labels drawn from a logistic model.
- ``path/to/file.csv`` with ``--target COLUMN``: a header row, numeric features.

Everything is float64 here; the engine rounds to the run's format.
"""

from __future__ import annotations

import csv
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stability_lab.errors import DataError, UsageError

BUILTIN = ("breast_cancer", "digits")


@dataclass
class Dataset:
    name: str
    X: np.ndarray
    y: np.ndarray
    feature_names: list[str] = field(default_factory=list)
    target_name: str = "target"
    classes: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return int(self.X.shape[0])

    @property
    def d(self) -> int:
        return int(self.X.shape[1])


def parse_synthetic(text: str) -> dict[str, float]:
    """``synthetic:n=2000,d=20,kappa=1e8,seed=0`` -> its parameters, checked."""
    params = {"n": 2000.0, "d": 20.0, "kappa": 1e8, "seed": 0.0}
    body = text.partition(":")[2]
    for item in filter(None, (s.strip() for s in body.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or key not in params:
            raise UsageError(
                f"Bad synthetic data parameter {item!r} in {text!r}; expected "
                "synthetic:n=2000,d=20,kappa=1e8,seed=0 (keys n, d, kappa, seed)."
            )
        try:
            params[key] = float(value)
        except ValueError:
            raise UsageError(
                f"The synthetic parameter {key!r} must be a number. Got {value!r} instead."
            ) from None
    n, d, kappa, seed = params["n"], params["d"], params["kappa"], params["seed"]
    if not (n == int(n) and d == int(d) and d >= 1 and n >= d + 1):
        raise UsageError(
            f"Synthetic data needs integers n > d >= 1. Got n={n:g}, d={d:g}; "
            "pass e.g. n=2000,d=20."
        )
    if not (math.isfinite(kappa) and kappa >= 1):
        raise UsageError(f"Synthetic 'kappa' must be a finite number >= 1. Got {kappa:g}.")
    if not (seed == int(seed) and seed >= 0):
        raise UsageError(f"Synthetic 'seed' must be an integer >= 0. Got {seed:g}.")
    return params


def synthetic(n: int = 2000, d: int = 20, kappa: float = 1e8, seed: int = 0) -> Dataset:
    """A design with cond(X) = kappa exactly (to rounding) and logistic labels."""
    rng = np.random.default_rng(int(seed))
    U, _ = np.linalg.qr(rng.standard_normal((int(n), int(d))))
    V, _ = np.linalg.qr(rng.standard_normal((int(d), int(d))))
    s = kappa ** (-np.linspace(0.0, 1.0, int(d))) if d > 1 else np.ones(1)
    X = math.sqrt(n) * (U * s) @ V.T
    w = rng.standard_normal(int(d))
    w /= np.linalg.norm(X @ w) / math.sqrt(n)  # logits of unit RMS: a learnable task
    p = 1.0 / (1.0 + np.exp(-2.0 * X @ w))
    y = (rng.random(int(n)) < p).astype(np.float64)
    name = f"synthetic:n={int(n)},d={int(d)},kappa={kappa:g},seed={int(seed)}"
    return Dataset(name, X, y, [f"x{i}" for i in range(int(d))], "y", ["0", "1"])


#: delimiters tried when a CSV's is sniffed, in order of preference
DELIMITERS = (",", ";", "\t", "|")
_DELIMITER_NAMES = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}


def sniff_delimiter(sample: str) -> str:
    """The delimiter of a CSV from its first lines (``sample``), ``,`` when unsure.

    Each candidate (comma, semicolon, tab, pipe) splits the first non-empty lines with
    the csv module's quoting rules; the one that gives the same number of fields (at
    least two) on every line and the most fields wins, comma on ties. A
    semicolon-separated file with decimal commas (``1,5;2,0``) is read as semicolon
    separated: its comma split is ragged.
    """
    lines = [line for line in sample.splitlines() if line.strip()][:20]
    if len(lines) > 1 and not sample.endswith(("\n", "\r")):
        lines = lines[:-1]  # the last line of a sample may be cut short
    best, best_fields = ",", 1
    for delim in DELIMITERS:
        try:
            counts = {len(row) for row in csv.reader(lines, delimiter=delim)}
        except csv.Error:
            continue
        if len(counts) == 1 and (fields := counts.pop()) > best_fields:
            best, best_fields = delim, fields
    return best


def check_header(header: list[str], path: str) -> None:
    """Duplicate column names are an error that names them (a CSV's header row)."""
    seen: dict[str, list[int]] = {}
    for i, name in enumerate(header, start=1):
        seen.setdefault(name, []).append(i)
    dups = {name: cols for name, cols in seen.items() if len(cols) > 1}
    if dups:
        listed = "; ".join(f"{name!r} (columns {', '.join(map(str, cols))})"
                           for name, cols in dups.items())
        raise DataError(f"Data file {path!r} has duplicate column names: {listed}; "
                        "rename the columns so each name appears once.")


def label_key(label: str):
    """How labels compare: as numbers when they parse as numbers (``1`` = ``1.0``)."""
    try:
        value = float(label)
    except ValueError:
        return label
    return value if math.isfinite(value) else label


def class_name(key) -> str:
    """A class's name from its :func:`label_key`: ``1`` for 1.0, ``0.5`` for 0.5."""
    if isinstance(key, float):
        return str(int(key)) if key.is_integer() and abs(key) < 2.0 ** 53 else repr(key)
    return key


def encode_labels(labels: list[str]) -> tuple[np.ndarray, list[str]]:
    """Labels -> (codes 0..k-1 as float64, class names); numbers before text, sorted."""
    keys = [label_key(v) for v in labels]
    distinct = sorted(set(keys), key=lambda k: (1, 0.0, k) if isinstance(k, str) else (0, k, ""))
    index = {k: i for i, k in enumerate(distinct)}
    return (np.array([index[k] for k in keys], dtype=np.float64),
            [class_name(k) for k in distinct])


def open_csv_path(path: str) -> Path:
    """The CSV's path, checked: exists, is a file (a folder gets its own message)."""
    p = Path(path)
    if p.is_dir():
        raise DataError(f"Data path {path!r} is a folder, not a CSV file; pass the path of "
                        "a .csv file inside it.")
    if not p.exists():
        raise DataError(f"Data file {path!r} does not exist; pass an existing CSV file.")
    if not p.is_file():
        raise DataError(f"Data path {path!r} is not a regular file; pass a CSV file.")
    return p


def load_csv(path: str, target: str | None) -> Dataset:
    """Read a CSV with a header row; every column but ``target`` is a numeric feature.

    A UTF-8 byte-order mark is dropped; the delimiter is sniffed (:func:`sniff_delimiter`);
    duplicate column names are an error; labels compare as numbers where they are
    numbers (``0``, ``0.0`` and ``1``, ``1.0`` are two classes).
    """
    if target is None:
        raise UsageError(
            f"--data {path} needs --target COLUMN naming the label column of the CSV."
        )
    p = open_csv_path(path)
    fast = _load_csv_fast(p, target)
    if fast is not None:
        return fast
    # the validating reader: every cell checked, each fault named with its row
    try:
        with p.open(newline="", encoding="utf-8-sig") as fh:
            delim = sniff_delimiter(fh.read(65536))
            fh.seek(0)
            rows = [r for r in csv.reader(fh, delimiter=delim) if any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"Cannot read data file {path!r}: {exc}; pass a UTF-8 CSV.") from None
    if rows and rows[0] and rows[0][0].startswith("\ufeff"):  # a BOM after a BOM
        rows[0][0] = rows[0][0].lstrip("\ufeff")
    if len(rows) < 2:
        raise DataError(
            f"Data file {path!r} is empty: expected a header row and at least one data row."
        )
    header = [h.strip() for h in rows[0]]
    check_header(header, path)
    if target not in header:
        hint = ""
        if len(header) == 1:
            hint = (" (one column: the file is not comma, semicolon, tab or pipe "
                    "separated with the same number of fields on every line)")
        raise DataError(
            f"Target column {target!r} is not in {path!r}; its columns are: "
            f"{', '.join(header)}{hint}."
        )
    ti = header.index(target)
    feats = [i for i in range(len(header)) if i != ti]
    if not feats:
        raise DataError(f"Data file {path!r} has no feature columns besides {target!r}.")
    X = np.empty((len(rows) - 1, len(feats)))
    labels = []
    sep = _DELIMITER_NAMES[delim]
    for r, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise DataError(
                f"Row {r} of {path!r} has {len(row)} {sep}-separated fields, the header has "
                f"{len(header)}; fix the CSV."
            )
        labels.append(row[ti].strip())
        for j, col in enumerate(feats):
            cell = row[col].strip()
            try:
                value = float(cell)
            except ValueError:
                comma = (" (a decimal comma? write 1.5, not 1,5)"
                         if re.fullmatch(r"[-+]?\d+,\d+", cell) else "")
                raise DataError(
                    f"Column {header[col]!r} of {path!r} has non-numeric value {cell!r} "
                    f"at row {r}{comma}; encode it as numbers or drop the column."
                ) from None
            if not math.isfinite(value):
                raise DataError(
                    f"Column {header[col]!r} of {path!r} has {cell!r} at row {r}; "
                    "remove or impute NaN/inf values first."
                )
            X[r - 2, j] = value
    missing = [i + 2 for i, v in enumerate(labels) if v.lower() in ("", "nan", "na", "null")]
    if missing:
        raise DataError(
            f"Target column {target!r} of {path!r} is empty or NaN at row {missing[0]} "
            f"({len(missing)} row(s) in all); drop or label those rows."
        )
    y, classes = encode_labels(labels)
    if len(classes) < 2:
        raise DataError(
            f"Target column {target!r} of {path!r} has one class ({classes[0]!r}); "
            "a classifier needs at least two."
        )
    return Dataset(p.name, X, y, [header[i] for i in feats], target, classes)


def _load_csv_fast(p: Path, target: str) -> Dataset | None:
    """A well-formed CSV through NumPy's C reader (``np.loadtxt``): features straight
    into one float64 array (no list of rows, no Python float per cell), labels in a
    second pass over one column. Returns None on anything unusual (a header fault,
    ragged rows, text or NaN/inf in a feature, a missing label, one class), and the
    validating reader then names the fault exactly as it always has."""
    try:
        with p.open(newline="", encoding="utf-8-sig") as fh:
            delim = sniff_delimiter(fh.read(65536))
            fh.seek(0)
            header = [h.strip().lstrip("\ufeff") for h in next(csv.reader(fh, delimiter=delim))]
        if (len(header) < 2 or target not in header or len(set(header)) != len(header)
                or any(not h for h in header)):
            return None
        ti = header.index(target)
        feats = [i for i in range(len(header)) if i != ti]
        opts = dict(delimiter=delim, skiprows=1, quotechar='"', encoding="utf-8-sig")
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # an empty file or line: the careful reader
            X = np.loadtxt(p, dtype=np.float64, usecols=feats, ndmin=2, **opts)
            labels = np.loadtxt(p, dtype=str, usecols=[ti], ndmin=1, **opts)
    except (OSError, UnicodeDecodeError, csv.Error, ValueError, StopIteration, Warning):
        return None
    if X.shape[0] == 0 or X.shape[0] != labels.shape[0] or not np.isfinite(X).all():
        return None
    labels = [str(v).strip() for v in labels]
    if any(v.lower() in ("", "nan", "na", "null") for v in labels):
        return None
    y, classes = encode_labels(labels)
    if len(classes) < 2:
        return None
    return Dataset(p.name, X, y, [header[i] for i in feats], target, classes)


#: the 10 measurements of a cell nucleus in scikit-learn's breast-cancer data; its 30
#: features are their means, standard errors and worst values, in that order
_NUCLEUS = ("radius", "texture", "perimeter", "area", "smoothness", "compactness",
            "concavity", "concave points", "symmetry", "fractal dimension")
BREAST_CANCER_FEATURES = ([f"mean {m}" for m in _NUCLEUS] + [f"{m} error" for m in _NUCLEUS]
                          + [f"worst {m}" for m in _NUCLEUS])


def _sklearn_data_file(name: str) -> Path | None:
    """The path of a data file scikit-learn ships (``sklearn/datasets/data/NAME``), found
    without importing scikit-learn; None where it is not there."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")  # locates the package, runs none of it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / name
    return path if path.is_file() else None


def breast_cancer() -> Dataset:
    """scikit-learn's breast-cancer data (569 x 30; target 0 = malignant, 1 = benign),
    read from the CSV file scikit-learn ships, without importing scikit-learn: importing
    ``sklearn.datasets`` (with SciPy's statistics) took 1.5-1.9 s of a process's start,
    on top of numpy, scipy.linalg and torch (three runs on a 2-core AMD EPYC). The
    values are those of ``sklearn.datasets.load_breast_cancer()`` bit for bit (decimal
    text parsed to float64, correctly rounded either way; tests/test_logistic.py compares).
    Falls back to that function where the file is not where scikit-learn keeps it."""
    path = _sklearn_data_file("breast_cancer.csv")
    if path is None:
        from sklearn.datasets import load_breast_cancer

        bunch = load_breast_cancer()
        return Dataset("breast_cancer", np.asarray(bunch.data, dtype=np.float64),
                       np.asarray(bunch.target, dtype=np.float64), list(bunch.feature_names),
                       "malignant=0/benign=1", list(bunch.target_names))
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    n, d = int(rows[0][0]), int(rows[0][1])
    table = np.array(rows[1:], dtype=np.float64)
    if table.shape != (n, d + 1) or d != len(BREAST_CANCER_FEATURES):
        raise ValueError(f"{path}: expected {n} rows of {d} features and a target")
    return Dataset("breast_cancer", np.ascontiguousarray(table[:, :d]), table[:, d].copy(),
                   list(BREAST_CANCER_FEATURES), "malignant=0/benign=1", rows[0][2:4])


def digits() -> Dataset:
    """scikit-learn's 8x8 handwritten digits (1797 x 64, pixel counts 0-16; target the
    digit 0-9), read from the gzipped CSV file scikit-learn ships, without importing
    scikit-learn (the import's cost: :func:`breast_cancer`). The values are those of
    ``sklearn.datasets.load_digits()`` bit for bit (small integers; tests/test_deep.py
    compares). Falls back to that function where the file is not where scikit-learn
    keeps it."""
    path = _sklearn_data_file("digits.csv.gz")
    if path is None:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        data, target = bunch.data, bunch.target
    else:
        import gzip

        with gzip.open(path, "rt", newline="") as fh:
            table = np.array(list(csv.reader(fh)), dtype=np.float64)
        if table.ndim != 2 or table.shape[1] != 65:
            raise ValueError(f"{path}: expected rows of 64 pixels and a digit")
        data, target = table[:, :64], table[:, 64]
    return Dataset("digits", np.ascontiguousarray(data, dtype=np.float64),
                   np.asarray(target, dtype=np.float64), [f"px{i}" for i in range(64)],
                   "digit", [str(i) for i in range(10)])


def digits_split() -> tuple[np.ndarray, np.ndarray]:
    """The digits mlp's train and test row indices: scikit-learn's stratified 80/20
    ``train_test_split(..., random_state=0)`` of :func:`digits`, shipped in
    ``stability_lab/data/digits_split.json`` so that no run imports scikit-learn (the
    file says how it was made; tests/test_deep.py compares it with the installed
    scikit-learn)."""
    import json
    from importlib.resources import files

    doc = json.loads(files("stability_lab.data").joinpath("digits_split.json").read_text())
    return np.asarray(doc["train"], dtype=np.intp), np.asarray(doc["test"], dtype=np.intp)


def load(source: str, target: str | None = None, kappa: float | None = None) -> Dataset:
    """Load a data source by its ``--data`` name (see the module docstring)."""
    source = str(source).strip()
    if source == "breast_cancer":
        return breast_cancer()
    if source == "digits":
        return digits()
    if source.startswith("synthetic"):
        params = parse_synthetic(source)
        if kappa is not None:
            params["kappa"] = kappa
        return synthetic(int(params["n"]), int(params["d"]), params["kappa"], int(params["seed"]))
    if _names_a_file(source):
        return load_csv(source, target)
    raise _unknown_source(source)


def check_source(source: str) -> None:
    """Cheap check of a ``--data`` value's form (reads no file, loads no data)."""
    source = str(source).strip()  # as load() reads it
    if source.startswith("synthetic"):
        parse_synthetic(source)
    elif source not in BUILTIN and not _names_a_file(source):
        raise _unknown_source(source)


def _names_a_file(source: str) -> bool:
    return (source.lower().endswith(".csv") or bool(Path(source).suffix) or "/" in source
            or Path(source).exists())


def _unknown_source(source: str) -> UsageError:
    return UsageError(
        f"Unknown data source {source!r}; expected breast_cancer, digits, "
        "synthetic:n=2000,d=20,kappa=1e8,seed=0, or a path to a .csv file with --target COLUMN."
    )


def scale_features(X: np.ndarray, scale: str) -> np.ndarray:
    """Apply ``raw`` (as is), ``standardized`` (zero mean, unit variance) or a factor.

    Standardization uses the two-pass mean and variance, which has no catastrophic
    cancellation when |mean| >> std (Higham, ASNA 2nd ed., section 1.9). A constant
    column is centred and left at zero rather than divided by zero.
    """
    if scale == "raw":
        return X
    if scale == "standardized":
        from stability_lab import numerics

        mean, var = numerics.mean_and_variance(X, 0)
        std = np.sqrt(var)
        std = np.where(std > 0, std, 1.0)
        return (X - mean) / std
    return X * float(scale)
