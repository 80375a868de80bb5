"""Contract tests for the Task and Policy registries: every declared record is tested
by being declared (the Signature and Solver registries have their own contract tests).

A task entry must import, be a Task of a known kind, run its default data through the
engine and record exactly the metrics the one metric table says its monitor records.
A policy entry must name formats the lab knows, describe its semantics, and train a
small model through the engine's loop with the parameter format it declares.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from stability_lab.precision import _TABLE as POLICY_TABLE
from stability_lab.precision import FORMATS, POLICIES, POLICY_COST, get_policy
from stability_lab.run.engine import run_specs
from stability_lab.metrics import COHORT, LOOP, METRICS, SOLVE, SQUARED_ERROR_ONLY, metric_names
from stability_lab.spec import RunSpec
from stability_lab.spec.axes import AXES, axis
from stability_lab.spec.tasks import DEEP_TASKS, TASKS, USER_TASK, task_entry
from stability_lab.tasks import available, get_task
from stability_lab.tasks.base import Task

#: the smallest run of each kind of task that still takes a few steps
SMALL = {"mlp": dict(epochs=1, depth=1, width=8), "attention": dict(epochs=3, depth=1, width=8,
                                                                    seq_len=4, heads=1)}


@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_entry_runs_its_default_data_and_records_the_declared_metrics(name):
    entry = TASKS[name]
    assert name in available() and task_entry(name) is entry
    task = get_task(name)
    assert isinstance(task, Task) and task.kind in ("problem", "cohort", "solve")
    assert entry.family in ("linear", "deep")
    assert (name in DEEP_TASKS) == (entry.family == "deep")
    spec = RunSpec(task=name, data=entry.default_data, epochs=2).replace(**SMALL.get(name, {}))
    if entry.family == "deep":
        spec = spec.replace(policy="float32", lr=0.01)
    (trace,) = run_specs([spec])
    assert trace.error is None, trace.error
    assert trace.spec == spec and trace.n_steps >= 1
    monitor = {"cohort": COHORT, "problem": LOOP, "solve": SOLVE}[task.kind]
    recorded = [k for k in trace.metrics if k in {m.name for m in METRICS}]
    # the loss scale is recorded by runs that scale the loss (none here: float32), the
    # saturation metrics by squared-error runs (none here: the default loss form)
    assert recorded == [k for k in metric_names(monitor)
                        if k != "loss_scale" and k not in SQUARED_ERROR_ONLY]
    assert math.isfinite(trace.final_loss)


def test_deep_axes_apply_to_deep_tasks_and_a_users_model_only():
    assert USER_TASK.family == "deep" and "user" in DEEP_TASKS
    for name, entry in TASKS.items():
        has_policy = "policy" in {a.name for a in AXES.values()
                                  if a.tasks is None or name in a.tasks}
        assert has_policy == (entry.family == "deep")
    assert axis("depth", "models.py:build").name == "depth"


def test_metric_table_names_are_unique_and_each_monitor_records_some():
    names = [m.name for m in METRICS]
    assert len(names) == len(set(names))
    for monitor in ("cohort", "loop", "watch", "solve"):
        assert metric_names(monitor)[0] == "loss"
    with pytest.raises(ValueError):
        metric_names("nope")


@pytest.mark.parametrize("name", POLICIES)
def test_policy_entry_is_consistent_and_trains(name):
    policy = get_policy(name)
    assert policy is POLICY_TABLE[name] and policy.name == name
    assert POLICY_COST[name] == policy.cost > 0
    assert policy.param_dtype in FORMATS and policy.output in FORMATS
    assert policy.compute in FORMATS or policy.compute == "fp8"
    assert policy.act_format.name in FORMATS and policy.grad_format.name in FORMATS
    assert policy.semantics()
    if policy.loss_scaling or policy.autocast:
        assert policy.master  # scaling and op lists are mixed-precision features
    spec = RunSpec(task="mlp", data="digits", policy=name, lr=0.01).replace(**SMALL["mlp"])
    (trace,) = run_specs([spec])
    assert trace.error is None, trace.error
    assert trace.extras["policy"] == name
    assert trace.extras["format"]["name"] == policy.param_dtype
    assert ("loss_scale" in trace.metrics) == policy.loss_scaling
    assert np.isfinite(trace.metrics["loss"][0])


def test_policy_table_is_the_policy_axis():
    assert AXES["policy"].defaults == POLICIES
    assert list(POLICY_COST) == list(POLICIES)
