"""NumPy / torch dispatch, argument validation and dtype policy (private).

torch is never imported here: a value is a tensor only if torch is already in
``sys.modules`` (it must be, for someone to have made a tensor) and the value is an
instance of ``torch.Tensor``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from stability_lab.errors import UsageError

_F16, _F32, _F64 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)
_NAMES = "float16, bfloat16, float32 or float64"

# Compute-dtype policies (input dtype name -> NumPy compute dtype):
#  ELEMENTWISE: half formats in float32 (rounded once at the end), float32 in float64 so
#    the 2-ulp contract does not depend on the accuracy of NumPy's SIMD float32 exp/log;
#  REDUCE (log-sum-exp family): half formats in float32, float32 and float64 as they are
#    (the speed of these matters; their accuracy is governed by conditioning anyway);
#  SOFTMAX: as ELEMENTWISE. Each output is exp(x_i - a) / (1 + s): float32 arithmetic
#    there stacks exp's error, the sum's and the division's to more than 2 ulp on flat
#    rows of 9-1000 small values, where softmax is well conditioned; in float64 it is
#    rounded once (python -m stability_lab.numerics.accuracy, the rows of 1-40 and 1000);
#  ACCUMULATE (stable_sum, mean_and_variance, l2_norm): everything in float64.
ELEMENTWISE = {"float16": _F32, "bfloat16": _F32, "float32": _F64, "float64": _F64}
REDUCE = {"float16": _F32, "bfloat16": _F32, "float32": _F32, "float64": _F64}
SOFTMAX = ELEMENTWISE
ACCUMULATE = {"float16": _F64, "bfloat16": _F64, "float32": _F64, "float64": _F64}


def is_tensor(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


@dataclass(frozen=True)
class Like:
    """What the output must look like: kind ('numpy'/'torch'), dtype name, torch dtype/device."""

    kind: str
    name: str
    tdtype: Any = None
    device: Any = None


def _type_error(fn: str, arg: str, got: str, kind: str) -> TypeError:
    hint = f"{arg}.double()" if kind == "torch" else f"{arg}.astype(np.float64)"
    if "complex" in got:
        return TypeError(
            f"{fn}: '{arg}' must be a real floating-point "
            f"{'tensor' if kind == 'torch' else 'array'}"
            f" ({_NAMES}); got complex dtype {got}. These functions are defined for real"
            " inputs only."
        )
    return TypeError(
        f"{fn}: '{arg}' must be a floating-point {'tensor' if kind == 'torch' else 'array'}"
        f" ({_NAMES}); got dtype {got}. Convert it first, e.g. {hint}."
    )


def check_float(x: Any, fn: str, arg: str, promote_int: str | None = None
                ) -> tuple[Any, Like]:
    """Validate a floating input; return (array-or-tensor, Like).

    ``promote_int``: integer and boolean input is promoted as the ecosystem does it.
    Tensors: to torch's default dtype (as torch.logsumexp / torch.softmax). NumPy arrays:
    ``"float64"`` (scipy.special.logsumexp's rule) or ``"ufunc"`` (NumPy's rule for
    ``np.exp``, which scipy.special.softmax/log_softmax inherit: int8/uint8/bool ->
    float16, int16/uint16 -> float32, wider -> float64)."""
    if is_tensor(x):
        torch = sys.modules["torch"]
        names = {torch.float16: "float16", torch.bfloat16: "bfloat16",
                 torch.float32: "float32", torch.float64: "float64"}
        name = names.get(x.dtype)
        if (name is None and promote_int and not x.is_floating_point()
                and not x.is_complex()):
            x = x.to(torch.get_default_dtype())
            name = names.get(x.dtype)
        if name is None:
            raise _type_error(fn, arg, str(x.dtype).replace("torch.", ""), "torch")
        return x, Like("torch", name, x.dtype, x.device)
    try:
        a = np.asarray(x)
    except (ValueError, TypeError) as exc:  # ragged lists and the like
        raise TypeError(
            f"{fn}: '{arg}' must be a NumPy array or torch tensor of {_NAMES}; got "
            f"{type(x).__name__} that NumPy cannot convert ({exc})."
        ) from None
    dt = a.dtype
    if promote_int and dt.kind in "biu":
        dt = _F64 if promote_int == "float64" else np.result_type(dt, np.float16)
        a = a.astype(dt)
    if dt in (_F16, _F32, _F64):
        return a, Like("numpy", dt.name)
    raise _type_error(fn, arg, dt.name, "numpy")


_UNSET: Any = type("_Unset", (), {"__repr__": lambda self: "<unset>"})()


def alias(fn: str, name: str, value: Any, alt_name: str, alt: Any, default: Any) -> Any:
    """One value from a scipy/NumPy spelling and its torch spelling (``axis``/``dim``,
    ``keepdims``/``keepdim``); both given and different is an error."""
    if alt is _UNSET:
        return default if value is _UNSET else value
    if value is _UNSET or value == alt:
        return alt
    raise UsageError(f"{fn}: '{name}' and '{alt_name}' are two spellings of the same "
                     f"argument; got {name}={value!r} and {alt_name}={alt!r}. Pass one.")


def norm_axes(axis: Any, ndim: int, fn: str) -> tuple[int, ...] | None:
    """``axis`` (None, an int or a tuple of ints) as sorted non-negative axes, or None
    for all of them (a 0-d input counts as 1-d)."""
    if axis is None:
        return None
    if isinstance(axis, (tuple, list)):
        axes = tuple(norm_dim(d, ndim, fn) for d in axis)
        if len(set(axes)) != len(axes):
            raise UsageError(f"{fn}: 'axis' has a repeated axis; got {tuple(axis)!r}.")
        return tuple(sorted(axes))
    return (norm_dim(axis, ndim, fn),)


def to_compute(x: Any, like: Like, policy: dict) -> np.ndarray:
    """NumPy array in the compute dtype. For CPU tensors this is a zero-copy view when the
    dtype already matches: callers must not write into it."""
    cd = policy[like.name]
    if like.kind == "torch":
        torch = sys.modules["torch"]
        t = x.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        if t.dtype in (torch.float16, torch.bfloat16):
            t = t.to(torch.float32)  # exact
        return t.numpy().astype(cd, copy=False)
    return x.astype(cd, copy=False)


def from_compute(r: np.ndarray, like: Like):
    """Round once to the input's dtype and return the input's kind (0-d NumPy -> scalar)."""
    r = np.asarray(r)
    if like.kind == "torch":
        torch = sys.modules["torch"]
        if not r.flags.c_contiguous or not r.flags.writeable:
            r = r.copy()
        t = torch.from_numpy(r)  # torch's float32 -> half casts round to nearest even
        return t.to(dtype=like.tdtype, device=like.device)
    with np.errstate(over="ignore"):  # a result beyond the format's max rounds to inf
        out = r.astype(np.dtype(like.name), copy=False)
    return out[()] if out.ndim == 0 else out


def norm_dim(dim: Any, ndim: int, fn: str, allow_none: bool = False) -> int | None:
    """Normalise ``dim`` to a non-negative axis (a 0-d input counts as 1-d)."""
    if dim is None and allow_none:
        return None
    nd = max(ndim, 1)
    if isinstance(dim, (bool, np.bool_)) or not isinstance(dim, (int, np.integer)):
        raise UsageError(
            f"{fn}: 'dim' must be an integer{' or None' if allow_none else ''}; got "
            f"{type(dim).__name__} {dim!r}."
        )
    if not -nd <= dim < nd:
        raise UsageError(
            f"{fn}: 'dim' must be in [{-nd}, {nd - 1}] for a {ndim}-d input; got {dim}."
        )
    return int(dim) % nd


def check_reduction(reduction: Any, fn: str) -> str:
    if reduction not in ("mean", "sum", "none"):
        raise UsageError(
            f"{fn}: 'reduction' must be 'mean', 'sum' or 'none'; got {reduction!r}."
        )
    return reduction
