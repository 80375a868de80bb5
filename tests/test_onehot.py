"""The one-hot incident: reproduced, diagnosed, and each fix verified on the same data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stability_lab.errors import UsageError
from stability_lab.linalg.onehot import design_from_codes, make_onehot, onehot_report

# results depend on the BLAS kernel's rounding: re-run under other kernels by .ci/run
pytestmark = pytest.mark.blas


def test_generator_shapes_and_duplicates():
    d = make_onehot(5000, 4, 10, n_unique=300, seed=2)
    assert d.X.shape == (5000, 1 + 40)
    assert np.all(np.diff(d.X.indptr) == 5)  # intercept + one per feature
    assert d.n_unique == 300
    # duplicated rows carry different labels
    g = d.group == d.group[0]
    assert g.sum() > 1 and np.ptp(d.y[g]) > 0
    # every level used: no empty column
    assert np.all(np.asarray(d.X.sum(axis=0)).ravel() > 0)
    r = make_onehot(5000, 4, 10, n_unique=300, seed=2, drop_reference=True)
    assert r.X.shape == (5000, 1 + 36)
    assert np.array_equal(r.codes, d.codes)


def test_generator_scales():
    d = make_onehot(200_000, 10, 1000, n_unique=20_000, seed=0)
    assert d.X.shape == (200_000, 10_001) and d.X.nnz == 200_000 * 11


def test_unseen_category_is_an_all_zero_block():
    X = design_from_codes(np.array([[1, -1]]), 3).toarray()
    assert X.tolist() == [[1.0, 0, 1, 0, 0, 0, 0]]


@pytest.fixture(scope="module")
def report():
    return onehot_report()


def test_blow_up_is_reproduced(report):
    b = report.before
    assert b.blown_up
    assert b.max_abs_coef > 1e10  # weights ~1e12
    assert b.n_score_overflow > 0  # exp(prediction) = inf on rows with an unseen category
    assert b.max_abs_train_prediction < 10  # ... while the training fit looks fine


def test_diagnosis(report):
    d = report.diagnosis
    assert d["rank_deficiency"] == d["expected_rank_deficiency"] == 4
    assert d["condition_number"] == float("inf")
    assert d["singular_value_ratio_at_gap"] > 1e12
    assert d["duplicated_row_fraction"] > 0.9
    assert 0.4 < d["pure_error_sd"] < 0.6  # the generator's noise is 0.5


@pytest.mark.parametrize("name, fitted_tol", [
    ("ridge", 0.05), ("drop_reference", 1e-12), ("damped_lsqr", 1e-3),
    ("aggregate_duplicates", 1e-10), ("honest_cutoff", 1e-10)])
def test_each_fix_removes_the_blow_up(report, name, fitted_tol):
    fix = {f.name: f for f in report.fixes}[name]
    assert not fix.blown_up
    assert fix.n_score_overflow == 0
    assert fix.max_abs_coef < 10
    assert fix.max_fitted_diff < fitted_tol


def test_report_is_json_and_has_a_verdict(report):
    d = json.loads(json.dumps(report.to_dict()))
    assert d["all_fixed"] is True
    assert d["before"]["blown_up"] is True
    assert "rank-deficient by 4" in d["verdict"]
    assert len(d["fixes"]) == 5


def test_honest_cutoff_on_a_bigger_scenario():
    rep = onehot_report(n_rows=6000, n_features=6, n_levels=8, seed=3, n_score=40)
    assert rep.before.blown_up and rep.all_fixed


def test_bad_parameters():
    with pytest.raises(UsageError, match="n_levels"):
        make_onehot(100, 2, 1)
    with pytest.raises(UsageError, match="rcond"):
        onehot_report(rcond=-1.0)
