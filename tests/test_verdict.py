"""Each verdict on hand-made traces, with its onset."""

import numpy as np
import pytest

from stability_lab.diagnosis import decide
from stability_lab.spec import RunSpec
from stability_lab.trace import Trace


def make(loss, grad=None, precision="float64", **extra):
    loss = np.asarray(loss, dtype=float)
    n = len(loss)
    metrics = {
        "loss": loss,
        "grad_norm": np.asarray(grad if grad is not None else np.linspace(1, 1e-6, n), float),
        "nonfinite_weights": np.zeros(n),
        "nonfinite_grads": np.zeros(n),
    }
    metrics.update({k: np.asarray(v, float) for k, v in extra.items()})
    return Trace(spec=RunSpec(precision=precision), metrics=metrics)


def test_converged_onset_is_start_of_final_plateau():
    loss = np.concatenate([np.linspace(1.0, 0.2, 30), np.full(40, 0.2)])
    grad = np.concatenate([np.linspace(1, 1e-2, 30), np.full(40, 1e-5)])
    v = decide(make(loss, grad))
    assert v.status == "converged"
    # the loss reaches 0.2 at epoch 30; the 10-epoch window is flat from epoch 40
    assert v.onset == 40


def test_plateau_with_large_gradient_is_not_converged():
    loss = np.full(50, 0.5)
    v = decide(make(loss, np.full(50, 1.0)))
    assert v.status == "not_converged"
    assert "grad norm" in v.detail


def test_single_flat_step_is_not_convergence():
    loss = np.linspace(1, 0.5, 40)
    loss[-1] = loss[-2]  # one step without change
    v = decide(make(loss, np.linspace(1, 0.5, 40)))
    assert v.status == "not_converged"


def test_overflow_without_growth():
    loss = np.array([0.7, 0.69, np.inf])
    v = decide(make(loss))
    assert v.status == "overflow" and v.onset == 3
    assert str(v) == "overflow (loss=inf at epoch 3)"


def test_diverged_to_inf_brief_form():
    loss = np.concatenate([np.geomspace(1, 1e30, 13), [np.inf]])
    v = decide(make(loss))
    assert v.status == "diverged" and v.onset == 14
    assert str(v) == "diverged (loss=inf at epoch 14)"


def test_nan_from_nonfinite_weights():
    loss = np.array([0.7, 0.6, np.nan])
    v = decide(make(loss))
    assert v.status == "nan" and v.onset == 3


def test_nonfinite_gradient_counts_even_with_finite_loss():
    loss = np.array([0.7, 0.6, 0.5, 0.4])
    t = make(loss, nonfinite_grads=[0, 0, 3, 3])
    t.metrics["nonfinite_grads"] = np.array([0, 0, 3, 3.0])
    v = decide(t)
    assert v.failed and v.onset == 3 and "non-finite gradients" in v.detail


def test_finite_divergence_onset():
    loss = np.concatenate([np.linspace(1, 0.5, 10), np.geomspace(0.5, 100, 20)])
    v = decide(make(loss, np.linspace(1, 100, 30)))
    assert v.status == "diverged"
    assert 11 <= v.onset <= 14


def test_oscillating():
    loss = 0.5 + 0.1 * (-1.0) ** np.arange(60)
    v = decide(make(loss, np.full(60, 0.3)))
    assert v.status == "oscillating"
    assert v.evidence["sign_change_rate"] == pytest.approx(1.0)


def test_stagnated_when_updates_round_away():
    n = 60
    loss = np.concatenate([np.linspace(1, 0.6, 20), np.full(40, 0.6)])
    unchanged = np.concatenate([np.zeros(20), np.ones(40)])
    v = decide(make(loss, np.full(n, 0.5), precision="bfloat16", frac_unchanged=unchanged))
    assert v.status == "stagnated" and v.onset == 21


def test_low_precision_tolerance_is_floored_by_format():
    # a bfloat16 run whose loss wiggles at the 1e-3 level still converges
    rng = np.random.default_rng(0)
    loss = np.concatenate([np.linspace(1, 0.3, 30), 0.3 + 1e-4 * rng.standard_normal(30)])
    grad = np.concatenate([np.linspace(1, 0.05, 30), np.full(30, 0.05)])
    assert decide(make(loss, grad, precision="bfloat16")).status == "converged"
    assert decide(make(loss, grad, precision="float64")).status != "converged"


def test_error_trace():
    t = Trace(spec=RunSpec(), error="RuntimeError: boom")
    v = decide(t)
    assert v.status == "error" and "boom" in v.detail


def test_stochastic_step_traces_converge_on_windowed_means():
    rng = np.random.default_rng(0)
    n = 200
    loss = 2.0 * np.exp(-np.arange(n) / 20) + 0.05 + 0.01 * rng.standard_normal(n)
    t = make(loss, np.full(n, 0.5))  # noisy gradient that never settles
    t.step_unit = "step"
    v = decide(t)
    assert v.status == "converged" and "flat" in v.detail
    t2 = make(loss, np.full(n, 0.5))  # the same numbers as epochs: not converged
    assert decide(t2).status != "converged"


def test_stochastic_solved_task_and_still_learning():
    n = 200
    solved = make(np.geomspace(2.8, 1e-4, n), np.full(n, 0.5))
    solved.step_unit = "step"
    assert decide(solved).status == "converged"
    learning = make(np.linspace(2.8, 0.8, n), np.full(n, 0.5))
    learning.step_unit = "step"
    assert decide(learning).status == "not_converged"


def test_minibatch_noise_is_not_oscillation():
    rng = np.random.default_rng(1)
    loss = 1.0 + 0.3 * rng.standard_normal(60)  # pure noise around a level
    noisy = make(loss, np.full(60, 0.5))
    noisy.step_unit = "step"
    assert decide(noisy).status == "not_converged"
    alternating = make(1.0 + 0.3 * (-1.0) ** np.arange(60), np.full(60, 0.5))
    alternating.step_unit = "step"
    assert decide(alternating).status == "oscillating"
