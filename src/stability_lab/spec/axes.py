"""The one place that declares what every option and sweep axis accepts.

Each :class:`Axis` names a field of :class:`~stability_lab.spec.RunSpec` (or a
task-specific parameter), the parser that turns a command-line string into a value
(raising :class:`~stability_lab.errors.UsageError` with one line that says what was
expected), and the values ``--sweep NAME`` uses when no values are given.

This module must stay importable without torch: the CLI builds its parser and checks
every argument from it before any heavy import.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from stability_lab.errors import UsageError
from stability_lab.linalg import SOLVERS
from stability_lab.spec.tasks import DEEP_TASKS, is_user_task
from stability_lab.precision import POLICIES, POLICY_COST  # noqa: F401  (the policy axis' values)

PRECISIONS = ("float64", "float32", "bfloat16", "float16")
#: every solver name accepted by stability_lab.linalg.solvers.solve, in display order (declared
#: here, in the torch- and scipy-free table, so the CLI can check it without importing them)


def _float(name: str, text: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise UsageError(
            f"The '{name}' value must be a number. Got {text!r} instead; pass e.g. --{name} 0.01."
        ) from None
    if math.isnan(value) or math.isinf(value):
        raise UsageError(f"The '{name}' value must be finite. Got {text!r} instead.")
    return value


def positive_float(name: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = _float(name, text)
        if value <= 0:
            raise UsageError(
                f"The '{name}' value must be a positive number. Got {text!r} instead; "
                f"pass e.g. --{name} 0.01."
            )
        return value

    return parse


def nonnegative_float(name: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = _float(name, text)
        if value < 0:
            raise UsageError(
                f"The '{name}' value must be a number >= 0. Got {text!r} instead; "
                f"pass e.g. --{name} 1e-3 (0 turns it off)."
            )
        return value

    return parse


def int_at_least(name: str, low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(str(text), 10)
        except (TypeError, ValueError):
            raise UsageError(
                f"The '{name}' value must be an integer >= {low}. Got {text!r} instead."
            ) from None
        if value < low:
            raise UsageError(
                f"The '{name}' value must be an integer >= {low}. Got {text!r} instead."
            )
        return value

    return parse


def choice(name: str, options: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = str(text).strip()
        if value not in options:
            raise UsageError(
                f"Unknown {name} {text!r}; expected one of: {', '.join(options)}."
            )
        return value

    return parse


def optional_positive_float(name: str, off: str = "none") -> Callable[[str], float | None]:
    inner = positive_float(name)

    def parse(text: str) -> float | None:
        if str(text).strip().lower() in (off, "0", "off", "no"):
            return None
        return inner(text)

    return parse


def optional_positive_int(name: str, off: str = "full") -> Callable[[str], int | None]:
    inner = int_at_least(name, 1)

    def parse(text: str) -> int | None:
        if str(text).strip().lower() in (off, "none", "0"):
            return None
        return inner(text)

    return parse


def parse_scale(text: str) -> str:
    """``raw``, ``standardized``, or a positive factor applied to every feature."""
    value = str(text).strip().lower()
    if value in ("raw", "standardized"):
        return value
    if value in ("standardize", "std", "standard"):
        return "standardized"
    try:
        factor = float(value.lstrip("x"))
    except ValueError:
        raise UsageError(
            f"The 'scale' value must be raw, standardized or a positive factor such as 1e3. "
            f"Got {text!r} instead."
        ) from None
    if not (factor > 0 and math.isfinite(factor)):
        raise UsageError(
            f"The 'scale' factor must be a positive finite number. Got {text!r} instead."
        )
    return repr(factor)


@dataclass(frozen=True)
class Axis:
    """A sweepable setting.

    ``field`` is the RunSpec attribute it sets; ``param=True`` means it lives in the
    spec's task-specific ``params`` mapping instead. ``tasks`` restricts it to the
    tasks that understand it (None: every task).
    """

    name: str
    field: str
    parse: Callable[[str], Any]
    defaults: tuple[str, ...]
    help: str
    tasks: tuple[str, ...] | None = None
    param: bool = False


#: the axes that label a run when its sweep has none
DEFAULT_LABEL_AXES = ("precision", "lr", "lambda")


def default_label_axes(task: str | None) -> tuple[str, ...]:
    """The axes that label a run of ``task`` when its sweep has none (a least-squares
    solve has no lr or lambda: its solver and format name it)."""
    return ("precision", "solver") if task == "linear_regression" else DEFAULT_LABEL_AXES



AXES: dict[str, Axis] = {}


def register_axis(axis: Axis) -> Axis:
    """Add an axis to the table (tasks add their own parameters here)."""
    AXES[axis.name] = axis
    return axis


for _axis in (
    Axis("precision", "precision", choice("precision", PRECISIONS), PRECISIONS,
         "number format of parameters, data and arithmetic"),
    Axis("lr", "lr", positive_float("lr"), ("0.01", "0.2", "1"), "learning rate (step size)"),
    Axis("lambda", "lam", nonnegative_float("lambda"), ("0", "1e-3", "0.1"),
         "L2 penalty (lambda/2)*||w||^2 on the weights (not the intercept)"),
    Axis("epochs", "epochs", int_at_least("epochs", 1), ("50", "200", "1000"),
         "passes over the data"),
    Axis("scale", "scale", parse_scale, ("raw", "standardized"),
         "feature scaling: raw, standardized, or a factor applied to every feature"),
    Axis("clip", "clip", optional_positive_float("clip"), ("none", "1"),
         "clip the gradient to this global norm (none: off)"),
    Axis("seed", "seed", int_at_least("seed", 0), ("0", "1", "2"),
         "seed of the initial weights and of the mini-batch order"),
    Axis("loss", "loss", choice("loss", ("stable", "naive", "mse")), ("stable", "naive"),
         "stable: fused log-loss (BCE with logits); naive: sigmoid then log; mse: squared "
         "error of the sigmoid output (its gradient vanishes at saturation)"),
    Axis("batch_size", "batch_size", optional_positive_int("batch_size"), ("full", "32"),
         "mini-batch size (full: full-batch gradient descent)"),
    Axis("warmup", "warmup", int_at_least("warmup", 0), ("0", "20", "100"),
         "lr schedule: linear warm-up from lr/K to lr over the first K steps, then constant "
         "(0: constant lr)", tasks=("logistic_regression",) + DEEP_TASKS, param=True),
    Axis("kappa", "kappa", positive_float("kappa"), ("1e2", "1e5", "1e8"),
         "condition number of the synthetic design (synthetic data only)", param=True),
    Axis("solver", "solver", choice("solver", SOLVERS), SOLVERS,
         "least-squares solver (linear_regression)", tasks=("linear_regression",)),
):
    register_axis(_axis)


def axis(name: str, task: str | None = None) -> Axis:
    """Look an axis up by name, with an error that lists the valid ones."""
    found = AXES.get(name)
    user = task is not None and is_user_task(task)
    valid = sorted(a.name for a in AXES.values() if task is None or a.tasks is None
                   or task in a.tasks or (user and "user" in a.tasks))
    if found is None:
        raise UsageError(
            f"Unknown sweep axis {name!r}; expected one of: {', '.join(valid)}."
        )
    if task is not None and found.tasks is not None and task not in found.tasks:
        if not (user and "user" in found.tasks):
            raise UsageError(
                f"The axis {name!r} does not apply to task {task!r}; "
                f"its axes are: {', '.join(valid)}."
            )
    return found


def parse_sweep_arg(text: str, task: str | None = None) -> list[tuple[str, list[Any]]]:
    """Parse one ``--sweep`` argument.

    ``precision,lr,lambda`` takes each axis with its default values;
    ``lr=1e-3,0.1,1`` sets the values of one axis.
    """
    text = str(text).strip()
    if not text:
        raise UsageError("The '--sweep' value is empty; pass e.g. --sweep precision,lr,lambda.")
    if "=" in text:
        name, _, values = text.partition("=")
        ax = axis(name.strip(), task)
        items = [v for v in (s.strip() for s in values.split(",")) if v]
        if not items:
            raise UsageError(
                f"The sweep axis {name!r} has no values; pass e.g. --sweep {name}=a,b."
            )
        return [(ax.name, _dedupe([ax.parse(v) for v in items]))]
    out = []
    for name in (s.strip() for s in text.split(",")):
        if not name:
            continue
        ax = axis(name, task)
        out.append((ax.name, _dedupe([ax.parse(v) for v in ax.defaults])))
    return out


def _dedupe(values: list[Any]) -> list[Any]:
    seen: list[Any] = []
    for v in values:
        if v not in seen:
            seen.append(v)
    return seen


# -- the deep-net tasks' axes (mlp, attention, user models) ---------------------------

ACTIVATIONS = ("relu", "tanh", "gelu", "sigmoid")
NORMS = ("none", "layernorm", "batchnorm")
OPTIMIZERS = ("sgd", "momentum", "adam")


def parse_policy(text: str) -> str:
    value = str(text).strip().lower()
    aliases = {"fp32": "float32", "fp64": "float64", "bf16": "bfloat16", "fp16": "float16",
               "amp-bf16": "mixed-bf16", "amp-fp16": "mixed-fp16", "fp8-e4m3": "fp8"}
    value = aliases.get(value, value)
    if value not in POLICIES:
        raise UsageError(
            f"Unknown policy {text!r}; expected one of: {', '.join(POLICIES)}."
        )
    return value


def parse_bool(name: str):
    def parse(text: str) -> bool:
        value = str(text).strip().lower()
        if value in ("1", "true", "yes", "on"):
            return True
        if value in ("0", "false", "no", "off", "none"):
            return False
        raise UsageError(f"The '{name}' value must be true or false. Got {text!r} instead.")

    return parse


def parse_attribute_every(text: str) -> int:
    value = str(text).strip().lower()
    if value in ("off", "none", "no"):
        return 0
    try:
        k = int(value, 10)
    except ValueError:
        raise UsageError(
            f"The 'attribute_every' value must be an integer >= 0 (0: off). Got {text!r} "
            "instead; pass e.g. --attribute 10."
        ) from None
    if k < 0:
        raise UsageError(
            f"The 'attribute_every' value must be an integer >= 0 (0: off). Got {text!r} instead."
        )
    return k


for _axis in (
    Axis("policy", "policy", parse_policy, POLICIES,
         "precision policy of a deep-net run: pure float32/bfloat16/float16, mixed "
         "(fp32 master weights) bf16/fp16 with or without loss scaling, emulated fp8",
         tasks=DEEP_TASKS),
    Axis("depth", "depth", int_at_least("depth", 1), ("2", "4", "8"),
         "number of hidden layers (mlp) or of transformer blocks (attention)",
         tasks=DEEP_TASKS, param=True),
    Axis("width", "width", int_at_least("width", 2), ("32", "64", "128"),
         "hidden width (mlp) or model dimension (attention)", tasks=DEEP_TASKS, param=True),
    Axis("activation", "activation", choice("activation", ACTIVATIONS), ACTIVATIONS,
         "hidden activation of the mlp", tasks=DEEP_TASKS, param=True),
    Axis("init_scale", "init_scale", positive_float("init_scale"), ("0.1", "1", "3"),
         "multiplier on the variance-preserving init std (1: He/Xavier)",
         tasks=DEEP_TASKS, param=True),
    Axis("norm", "norm", choice("norm", NORMS), NORMS,
         "normalization after each hidden linear layer (mlp)", tasks=DEEP_TASKS, param=True),
    Axis("optimizer", "optimizer", choice("optimizer", OPTIMIZERS), OPTIMIZERS,
         "optimizer: sgd, momentum (SGD, 0.9) or adam; default momentum for mlp and user "
         "models, adam for attention", tasks=DEEP_TASKS, param=True),
    Axis("seq_len", "seq_len", int_at_least("seq_len", 2), ("8", "16", "32"),
         "sequence length of the attention task", tasks=DEEP_TASKS, param=True),
    Axis("heads", "heads", int_at_least("heads", 1), ("1", "2", "4"),
         "attention heads per block (must divide width)", tasks=DEEP_TASKS, param=True),
    Axis("qk_layernorm", "qk_layernorm", parse_bool("qk_layernorm"), ("false", "true"),
         "layer-normalize queries and keys before their product (Wortsman et al. 2023)",
         tasks=DEEP_TASKS, param=True),
    Axis("z_loss", "z_loss", nonnegative_float("z_loss"), ("0", "1e-4"),
         "coefficient of the auxiliary z-loss z * log(Z)^2 on the output logits",
         tasks=DEEP_TASKS, param=True),
    Axis("attribute_every", "attribute_every", parse_attribute_every, ("0", "10", "1"),
         "per-layer attribution every K steps (0: off); non-finite creators are named "
         "whatever K is", tasks=DEEP_TASKS, param=True),
):
    register_axis(_axis)
