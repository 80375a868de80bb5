"""Tasks: data, model and loss for a :class:`~stability_lab.spec.RunSpec`.

A task knows nothing of sweeps or stores; the engine (:mod:`stability_lab.run`) runs it.
The registry of names is :data:`stability_lab.spec.tasks.TASKS` (declared records: a
name maps to a ``module:Class`` string, so looking a task up imports nothing heavy;
torch is imported only when a task runs).

A user's own model is ``path/to/file.py:build`` or ``package.module:build``.
"""

from __future__ import annotations

import importlib

from stability_lab.errors import UsageError
from stability_lab.spec.tasks import TASKS, USER_TASK, is_user_task

#: the --data value each task uses when none is given (a user's model brings its own)
DEFAULT_DATA: dict[str, str] = {name: e.default_data for name, e in TASKS.items()}


def available() -> list[str]:
    """Registered task names whose module is present in this installation."""
    import importlib.util

    out = []
    for name, entry in TASKS.items():
        module = entry.target.partition(":")[0]
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
    target = (USER_TASK if is_user_task(name) else TASKS[name]).target
    module, _, cls = target.partition(":")
    task_cls = getattr(importlib.import_module(module), cls)
    return task_cls(name) if is_user_task(name) else task_cls()
