"""The task registry: one declared record per task, free of torch and NumPy.

A record names the task, the class that implements it (``module:Class``, imported only
when the task runs, so that ``--help`` and argument checks stay fast), the data it uses
when ``--data`` is not given, and its family: ``"linear"`` tasks take the linear-model
axes (lr, lambda, scale, solver, ...), ``"deep"`` tasks also take the deep-net axes
(policy, depth, width, ...). A user's own model (``path/to/file.py:build`` or
``package.module:build``) is a deep task too. Adding a task is one file under
``stability_lab/tasks/`` and one entry here (``docs/extending.md``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskEntry:
    name: str
    #: "module:Class" of the implementation (a subclass of stability_lab.tasks.base.Task)
    target: str
    #: the --data value the task uses when none is given
    default_data: str
    #: "linear" or "deep": which axes apply
    family: str


TASKS: dict[str, TaskEntry] = {e.name: e for e in (
    TaskEntry("logistic_regression", "stability_lab.tasks.logistic:LogisticRegression",
              "breast_cancer", "linear"),
    TaskEntry("linear_regression", "stability_lab.tasks.linear_regression:LinearRegressionTask",
              "nist:Longley", "linear"),
    TaskEntry("mlp", "stability_lab.tasks.mlp:MLPTask", "digits", "deep"),
    TaskEntry("attention", "stability_lab.tasks.attention:AttentionTask", "generated", "deep"),
)}

#: a user's own model: the task name is its ``path.py:build`` or ``module:build``
USER_TASK = TaskEntry("user", "stability_lab.tasks.user:UserTask", "user", "deep")

#: the deep-net tasks (and "user", for a user's own model): where the deep axes apply
DEEP_TASKS = tuple(n for n, e in TASKS.items() if e.family == "deep") + ("user",)


def is_user_task(name: str) -> bool:
    """A user's own model is named ``module:Class`` (no registered task has a colon)."""
    return ":" in name


def task_entry(name: str) -> TaskEntry | None:
    """The record of a registered task or of a user's model; None for an unknown name."""
    return USER_TASK if is_user_task(name) else TASKS.get(name)
