"""Task registry.

A task builds data and a differentiable loss for a :class:`~stability_lab.spec.RunSpec`
and runs it, returning a :class:`~stability_lab.trace.Trace`. Tasks know nothing of
sweeps or stores. Names map to ``module:Class`` strings so that looking a task up
imports nothing heavy; torch is imported only when a task runs.

A user's own model is ``path/to/file.py:build`` or ``package.module:build``.
"""

from __future__ import annotations

import importlib

from stability_lab.errors import UsageError
from stability_lab.spec.axes import is_user_task

TASKS: dict[str, str] = {
    "logistic_regression": "stability_lab.tasks.logistic:LogisticRegression",
    "linear_regression": "stability_lab.tasks.linear_regression:LinearRegressionTask",
    "mlp": "stability_lab.tasks.mlp:MLPTask",
    "attention": "stability_lab.tasks.attention:AttentionTask",
}
USER_TASK = "stability_lab.tasks.user:UserTask"

#: the --data value each task uses when none is given (a user's model brings its own)
DEFAULT_DATA: dict[str, str] = {
    "logistic_regression": "breast_cancer",
    "linear_regression": "nist:Longley",
    "mlp": "digits",
    "attention": "generated",
}


def available() -> list[str]:
    """Registered task names whose module is present in this installation."""
    import importlib.util

    out = []
    for name, target in TASKS.items():
        module = target.partition(":")[0]
        if importlib.util.find_spec(module) is not None:
            out.append(name)
    return out


def check_task_name(name: str) -> None:
    """Raise a one-line error for an unknown task (cheap: imports nothing heavy)."""
    if name in available() or is_user_task(name):
        return
    raise UsageError(
        f"Unknown task {name!r}; expected one of: {', '.join(available())}, "
        "or your own model as path/to/file.py:build or package.module:build."
    )


def get_task(name: str):
    """The task object for a name (instantiated; imports its module)."""
    check_task_name(name)
    target = USER_TASK if is_user_task(name) else TASKS[name]
    module, _, cls = target.partition(":")
    task_cls = getattr(importlib.import_module(module), cls)
    return task_cls(name) if is_user_task(name) else task_cls()
