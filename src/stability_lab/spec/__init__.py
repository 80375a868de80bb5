"""Run specifications and sweeps.

A :class:`RunSpec` describes one run completely: task, data source and transforms,
number format, optimizer settings and seed (a mitigation is a change of these fields).
It is frozen and its hash (:attr:`RunSpec.run_id`) is the run's identity: the same spec
always gives the same numbers, so a stored run is never run twice.

A sweep is a base spec plus axes; :func:`expand` takes the Cartesian product in the
order the axes were given. Every spec of a sweep shares data, initial weights and
seed unless ``seed`` is itself an axis: comparisons are always between matched runs.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import math
import os
import stat
from dataclasses import dataclass, field
from typing import Any, Iterable

from stability_lab.spec.axes import AXES

DEFAULT_DATA = "breast_cancer"


@dataclass(frozen=True)
class RunSpec:
    task: str = "logistic_regression"
    data: str = DEFAULT_DATA
    target: str | None = None
    precision: str = "float64"
    lr: float = 0.01
    lam: float = 0.0
    epochs: int = 200
    batch_size: int | None = None
    clip: float | None = None
    scale: str = "raw"
    loss: str = "stable"
    seed: int = 0
    solver: str | None = None
    policy: str | None = None
    #: task-specific parameters (kappa, depth, width, ...), as sorted (name, value) pairs
    params: tuple[tuple[str, Any], ...] = ()

    # -- views -------------------------------------------------------------------
    def param(self, name: str, default: Any = None) -> Any:
        return dict(self.params).get(name, default)

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "params":
                value = {k: v for k, v in value}
            out["lambda" if f.name == "lam" else f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunSpec":
        data = dict(data)
        if "lambda" in data:
            data["lam"] = data.pop("lambda")
        data["params"] = tuple(sorted(dict(data.get("params") or {}).items()))
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @functools.cached_property
    def run_id(self) -> str:
        """The run's identity: a hash of the spec and, where the run reads a file (a
        CSV data file, the user's model file), of that file's content (SHA-256), so an
        edited file is a different run. Built-in data hashes the spec alone.

        Cached in the instance ``__dict__``: fields are frozen, and
        ``dataclasses.replace`` builds a new instance that hashes afresh.
        """
        doc = self.to_dict()
        # every spec used to carry an (always empty, never applied) list of mitigation
        # names; mitigations are spec fields now (lr, lam, clip, scale, policy, loss,
        # solver). The hashed document keeps the empty list so stored runs keep their ids.
        doc["mitigations"] = []
        content = content_digests(self)
        if content:
            doc["content"] = content
        blob = json.dumps(doc, sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]

    def replace(self, **changes: Any) -> "RunSpec":
        """A copy with fields changed; ``lambda`` and task params accepted by axis name."""
        params = dict(self.params)
        direct = {}
        for name, value in changes.items():
            ax = AXES.get(name)
            if ax is not None and ax.param:
                params[name] = value
            elif ax is not None:
                direct[ax.field] = value
            elif name == "params":
                params.update(value)
            else:
                direct[name] = value
        direct["params"] = tuple(sorted(params.items()))
        return dataclasses.replace(self, **direct)

    def get(self, axis_name: str) -> Any:
        ax = AXES.get(axis_name)
        if ax is not None and ax.param:
            return self.param(axis_name)
        if ax is not None:
            return getattr(self, ax.field)
        return getattr(self, axis_name, self.param(axis_name))

    def label(self, axes: Iterable[str]) -> str:
        """``float64 lr=0.01 lambda=0.001``: the values of the swept axes, brief-style."""
        parts = []
        axes = tuple(axes)
        for name in axes:
            value = self.get(name)
            if name == "precision" and self.policy and "policy" not in axes:
                value = self.policy  # a deep run's format is its policy
            if name in ("precision", "policy", "solver"):
                parts.append(str(value))
            elif name == "batch_size" and value is None:
                parts.append("batch_size=full")
            else:
                parts.append(f"{name}={format_value(value)}")
        return " ".join(parts)


#: (real path, mtime_ns, size, inode) -> SHA-256 of the file's bytes
_DIGESTS: dict[tuple, str] = {}
#: --data values that name no file
_NOT_FILES = ("breast_cancer", "digits", "generated", "user")


def file_digest(path: str) -> str | None:
    """SHA-256 of a regular file's bytes (None if it is not one); each version of a
    file is read once per process (keyed by its path, mtime, size and inode)."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    key = (os.path.realpath(path), st.st_mtime_ns, st.st_size, st.st_ino)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        try:
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        except OSError:
            return None
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def content_digests(spec: "RunSpec") -> dict[str, str]:
    """SHA-256 of the files a run reads: ``data_sha256`` for a data file,
    ``model_sha256`` for the user's model file (``--task file.py:build``, or the
    module's source file for ``package.module:build``). Empty for built-in data."""
    out = {}
    data = spec.data or ""
    if data not in _NOT_FILES and not data.startswith(("synthetic", "nist:")):
        digest = file_digest(data)
        if digest:
            out["data_sha256"] = digest
    where, colon, _ = spec.task.rpartition(":")
    if colon and where:
        path = where
        if not (where.endswith(".py") or "/" in where or "\\" in where):
            path = _module_file(where)
        digest = file_digest(path) if path else None
        if digest:
            out["model_sha256"] = digest
    return out


def _module_file(name: str) -> str | None:
    import importlib.util

    try:
        found = importlib.util.find_spec(name)
    except Exception:  # the task reports an unimportable module itself
        return None
    return found.origin if found is not None and found.has_location else None


def format_value(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


@dataclass
class Sweep:
    """A base spec and its axes; ``specs`` are the expanded, matched runs."""

    base: RunSpec
    axes: list[tuple[str, list[Any]]] = field(default_factory=list)

    @property
    def axis_names(self) -> list[str]:
        return [name for name, _ in self.axes]

    @property
    def specs(self) -> list[RunSpec]:
        return expand(self.base, self.axes)

    @property
    def size(self) -> int:
        """Number of specs, ``len(self.specs)``, without expanding the product."""
        return math.prod(len(values) for _, values in self.axes)


def expand(base: RunSpec, axes: list[tuple[str, list[Any]]]) -> list[RunSpec]:
    """Cartesian product of the axes over ``base``, first axis varying slowest."""
    if not axes:
        return [base]
    names = [name for name, _ in axes]
    specs = []
    for combo in itertools.product(*[values for _, values in axes]):
        specs.append(base.replace(**dict(zip(names, combo))))
    return specs


def merge_axes(axes: list[tuple[str, list[Any]]]) -> list[tuple[str, list[Any]]]:
    """Join repeated axes (``--sweep lr=1 --sweep lr=2``) keeping first-seen order."""
    merged: dict[str, list[Any]] = {}
    for name, values in axes:
        bucket = merged.setdefault(name, [])
        for v in values:
            if v not in bucket:
                bucket.append(v)
    return list(merged.items())
