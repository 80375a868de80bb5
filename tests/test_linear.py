"""stability_lab.linalg.solvers and the modules under it: solvers, double-double, auto's
accuracy against mpmath, diagnostics, errors, the solver table."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import mpmath
import numpy as np
import pytest
import scipy.sparse
from hypothesis import given, settings
from hypothesis import strategies as st

from stability_lab.errors import DataError, UsageError
from stability_lab.linalg import SOLVERS
from stability_lab.linalg.doubledouble import dd_residual, dd_sum, two_prod, two_sum
from stability_lab.linalg.perturbation import perturbation_digits
from stability_lab.linalg.records import lre
from stability_lab.linalg.solvers import solve
from stability_lab.linalg import SOLVER_TABLE
pytestmark = pytest.mark.blas


def exact_ls(X, y, dps=60):
    with mpmath.workdps(dps):
        A = mpmath.matrix([[mpmath.mpf(float(v)) for v in row] for row in X])
        b = mpmath.matrix([mpmath.mpf(float(v)) for v in y])
        x = mpmath.lu_solve(A.T * A, A.T * b)
        return np.array([float(x[i]) for i in range(X.shape[1])])


def graded_problem(m=40, n=6, kappa=1e6, resid=1e3, seed=0):
    """X = U diag(s) V^T with condition number kappa, columns then scaled over 8 orders
    of magnitude, and y with a residual ``resid`` times the fitted part."""
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((m, m)))
    V, _ = np.linalg.qr(rng.standard_normal((n, n)))
    s = np.logspace(0, -math.log10(kappa), n)
    X = (U[:, :n] * s) @ V.T
    X = X * np.logspace(-4, 4, n)
    b = rng.standard_normal(n)
    y = X @ b + resid * np.linalg.norm(X @ b) * U[:, n] / math.sqrt(m)
    return X, y


# ------------------------------------------------------------------ primitives


def test_lre_definition():
    assert lre(1.0, 1.0)[0] == 15.0
    assert abs(lre(1.001, 1.0)[0] - 3.0) < 1e-9
    assert abs(lre(1e-5, 0.0)[0] - 5.0) < 1e-9  # certified zero: -log10 |b|
    assert lre(np.nan, 1.0)[0] == 0.0
    assert lre(np.inf, 1.0)[0] == 0.0
    assert lre(-5.0, 1.0)[0] == 0.0  # clipped at 0, never negative
    assert str(lre(-5.0, 1.0)[0]) == "0.0"
    assert np.allclose(lre([1.0, 2.0], [1.0, 2.000002]), [15.0, 6.0], atol=1e-6)


def test_two_sum_and_two_prod_are_error_free():
    rng = np.random.default_rng(1)
    a = rng.standard_normal(200) * 10.0 ** rng.integers(-20, 20, 200)
    b = rng.standard_normal(200) * 10.0 ** rng.integers(-20, 20, 200)
    s, e = two_sum(a, b)
    p, f = two_prod(a, b)
    for i in range(200):
        fa, fb = Fraction(float(a[i])), Fraction(float(b[i]))
        assert Fraction(float(s[i])) + Fraction(float(e[i])) == fa + fb
        assert Fraction(float(p[i])) + Fraction(float(f[i])) == fa * fb


def test_dd_sum_is_twice_as_accurate_as_float64():
    # sum with heavy cancellation: 1e16 + 1 - 1e16 ... exact answer known in Fractions
    rng = np.random.default_rng(2)
    v = rng.standard_normal(1001) * 10.0 ** rng.integers(-8, 16, 1001)
    v = np.concatenate([v, -v[:500]])
    exact = sum(Fraction(float(t)) for t in v)
    hi, lo = dd_sum(v[:, None], np.zeros((v.size, 1)), axis=0)
    got = Fraction(float(hi[0])) + Fraction(float(lo[0]))
    scale = sum(abs(Fraction(float(t))) for t in v)
    assert abs(got - exact) <= scale * Fraction(1, 10 ** 28)


def test_dd_residual_matches_exact_residual():
    X, y = graded_problem()
    x = np.linalg.lstsq(X, y, rcond=None)[0]
    rh, rl = dd_residual(X, y, (x, np.zeros_like(x)))
    for i in (0, 7, 39):
        exact = Fraction(float(y[i])) - sum(Fraction(float(X[i, j])) * Fraction(float(x[j]))
                                            for j in range(X.shape[1]))
        got = Fraction(float(rh[i])) + Fraction(float(rl[i]))
        assert abs(got - exact) <= abs(exact) * Fraction(1, 10 ** 25) + Fraction(1, 10 ** 300)


# ------------------------------------------------------------------ solvers


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("precision, tol", [("float64", 1e-9), ("float32", 2e-3)])
def test_every_solver_on_a_well_conditioned_problem(solver, precision, tol):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((60, 5))
    y = X @ np.arange(1.0, 6.0) + 0.1 * rng.standard_normal(60)
    ref = exact_ls(X, y)
    opts = {"max_iter": 20000} if solver == "gd" else {}
    sol = solve(X, y, solver=solver, precision=precision, reference=ref, **opts)
    assert sol.ok
    assert np.allclose(sol.coef, ref, rtol=tol, atol=tol if solver != "ridge" else 1e-6)
    d = sol.diagnostics
    assert d.numerical_rank == 5 and d.rank_cutoff > 0
    assert d.condition_number >= 1 and d.condition_number < 10  # a Gaussian 60 x 5 design
    assert d.lre_min is not None and len(d.lre) == 5
    json.dumps(sol.to_dict())


@pytest.mark.parametrize("solver", ["cg", "gd"])
def test_low_precision_iterative_solvers(solver):
    rng = np.random.default_rng(4)
    X = rng.standard_normal((50, 3))
    y = X @ np.array([1.0, -2.0, 0.5])
    sol = solve(X, y, solver=solver, precision="float16")
    assert np.allclose(sol.coef, [1.0, -2.0, 0.5], rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("kappa, resid", [(1e3, 1e-3), (1e6, 1.0), (1e7, 1e4), (1e10, 1e2)])
def test_auto_reaches_the_exact_solution_of_the_float64_data(kappa, resid):
    X, y = graded_problem(kappa=kappa, resid=resid, seed=int(math.log10(kappa)))
    xe = exact_ls(X, y)
    sol = solve(X, y, solver="auto", reference=xe)
    assert sol.diagnostics.lre_min >= 12.0, sol.diagnostics.lre
    qr = solve(X, y, solver="qr", reference=xe)
    if kappa >= 1e6 and resid >= 1:  # plain QR pays kappa^2 tan(theta) here
        assert qr.diagnostics.lre_min < sol.diagnostics.lre_min - 2


@settings(max_examples=25, deadline=None)
@given(m=st.integers(4, 30), n=st.integers(1, 4), log_kappa=st.floats(0, 9),
       log_resid=st.floats(-6, 4), seed=st.integers(0, 2**16))
def test_auto_property_any_problem(m, n, log_kappa, log_resid, seed):
    n = min(n, m - 1)
    X, y = graded_problem(m=m, n=n, kappa=10 ** log_kappa, resid=10 ** log_resid, seed=seed)
    xe = exact_ls(X, y)
    sol = solve(X, y, solver="auto")
    assert np.min(lre(sol.coef, xe)) >= 11.5


def test_auto_rank_deficient_reports_rank_and_gives_minimum_norm():
    rng = np.random.default_rng(5)
    A = rng.standard_normal((30, 3))
    X = np.column_stack([A, A[:, 0] + A[:, 1]])  # exactly dependent column
    y = rng.standard_normal(30)
    sol = solve(X, y, solver="auto")
    d = sol.diagnostics
    assert d.numerical_rank == 3 and d.rank_deficiency == 1
    assert any("rank-deficient" in w for w in d.warnings)
    ls = np.linalg.lstsq(X, y, rcond=None)[0]
    assert np.allclose(X @ sol.coef, X @ ls, atol=1e-12)
    assert np.all(np.abs(sol.coef) < 10)


def test_auto_float32_refines_in_mixed_precision():
    X, y = graded_problem(kappa=1e3, resid=1e-2, seed=7)
    X32 = X.astype(np.float32).astype(np.float64)
    y32 = y.astype(np.float32).astype(np.float64)
    xe = exact_ls(X32, y32)
    sol = solve(X, y, solver="auto", precision="float32", reference=xe)
    assert sol.diagnostics.factor_precision == "float32"
    assert sol.diagnostics.lre_min >= 12
    X, y = graded_problem(kappa=1e9, resid=1e-2, seed=8)
    sol = solve(X, y, solver="auto", precision="float32")
    assert sol.diagnostics.factor_precision == "float64"


def test_sparse_inputs():
    rng = np.random.default_rng(6)
    Xd = rng.standard_normal((200, 8)) * (rng.random((200, 8)) < 0.3)
    Xd[np.arange(8), np.arange(8)] += 1.0
    y = Xd @ np.arange(8.0) + 0.01 * rng.standard_normal(200)
    X = scipy.sparse.csr_matrix(Xd)
    ref = np.linalg.lstsq(Xd, y, rcond=None)[0]
    for solver in ("lsqr", "cg", "auto"):
        assert np.allclose(solve(X, y, solver=solver).coef, ref, rtol=1e-8, atol=1e-8)
    with pytest.raises(UsageError, match="sparse"):
        solve(X, y, solver="qr")


def test_sparse_auto_large_path(monkeypatch):
    import stability_lab.linalg.auto as auto

    monkeypatch.setattr(auto, "AUTO_DENSIFY_LIMIT", 10)
    rng = np.random.default_rng(9)
    Xd = rng.standard_normal((300, 6)) * np.logspace(-3, 3, 6)
    y = Xd @ np.ones(6)
    sol = solve(scipy.sparse.csr_matrix(Xd), y, solver="auto")
    assert "LSQR" in sol.diagnostics.path
    assert np.allclose(sol.coef, 1.0, rtol=1e-9)


def test_failures_are_reported_not_raised():
    p = np.linspace(1, 2, 20)
    X = np.column_stack([p ** k for k in range(12)])
    sol = solve(X, np.ones(20), solver="cholesky")
    assert sol.diagnostics.status == "failed" and not sol.ok
    assert "positive definite" in sol.diagnostics.message
    assert np.all(np.isnan(sol.coef))


def test_predicted_digits_lost():
    X, y = graded_problem(kappa=1e5, resid=1e-8, seed=10)
    n = solve(X, y, solver="normal").diagnostics
    q = solve(X, y, solver="qr").diagnostics
    k = q.condition_number_equilibrated
    assert abs(n.predicted_digits_lost - 2 * math.log10(k)) < 1e-9
    assert abs(q.predicted_digits_lost - math.log10(k)) < 0.1


def test_svd_reports_its_cutoff():
    X, y = graded_problem(kappa=1e10, resid=1e-3, seed=11)
    d = solve(X, y, solver="svd", rcond=1e-8).diagnostics
    assert d.rank_cutoff == 1e-8 and d.rank_cutoff_absolute > 0 and d.rank_decided_by == "solver"


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("X, y, exc, msg", [
    (np.ones((5, 2)), np.ones(4), DataError, "X has 5 rows but y has 4"),
    (np.ones((2, 3)), np.ones(2), DataError, "fewer rows .* than columns.*ridge"),
    (np.array([[1.0, np.nan], [2.0, 3.0], [1.0, 1.0]]), np.ones(3), DataError,
     "X contains NaN.*row 0, column 1"),
    (np.ones((3, 1)), np.array([1.0, np.inf, 2.0]), DataError, "y contains inf"),
    (np.array([[1, "red"], [2, "blue"], [3, "red"]], dtype=object), np.ones(3), DataError,
     "column 1 is not numeric"),
    (np.ones(4), np.ones(4), DataError, "must be 2-D"),
    (np.ones((0, 2)), np.ones(0), DataError, "empty"),
])
def test_bad_inputs(X, y, exc, msg):
    with pytest.raises(exc, match=msg):
        solve(X, y)


def test_bad_solver_and_options():
    X, y = np.eye(3), np.ones(3)
    with pytest.raises(UsageError, match="valid solvers are: normal, cholesky, qr"):
        solve(X, y, solver="magic")
    with pytest.raises(UsageError, match="unknown option.*accepted options: alpha"):
        solve(X, y, solver="ridge", damp=1.0)
    with pytest.raises(UsageError, match="float16"):
        solve(X, y, solver="qr", precision="float16")
    with pytest.raises(UsageError, match="valid precisions"):
        solve(X, y, precision="float8")
    with pytest.raises(UsageError, match="'alpha' option .* >= 0"):
        solve(X, y, solver="ridge", alpha=-1.0)
    with pytest.raises(UsageError, match="X_lo"):
        solve(X, y, solver="qr", X_lo=np.zeros((3, 3)))


def test_the_solver_table_has_one_record_per_solver_name():
    # SOLVERS (the name tuple the command line checks without SciPy) and the table agree
    # one to one, in order
    assert len(set(SOLVERS)) == len(SOLVERS)
    assert [s.name for s in SOLVER_TABLE] == list(SOLVERS)
    for s in SOLVER_TABLE:
        assert set(s.precisions) <= {"float64", "float32", "float16"}, s.name
        assert not s.squares_kappa or s.on_normal_equations, s.name
    # the message refusing a sparse X names every solver that takes one
    with pytest.raises(UsageError) as err:
        solve(scipy.sparse.eye(3, format="csr"), np.ones(3), solver="qr")
    named = {s for s in SOLVERS if f"'{s}'" in str(err.value)}
    assert named == {s.name for s in SOLVER_TABLE if s.sparse_input}


def test_underdetermined_allowed_for_minimum_norm_solvers():
    X = np.array([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    sol = solve(X, np.array([1.0, 2.0]), solver="svd")
    assert np.allclose(X @ sol.coef, [1.0, 2.0])


def test_pandas_like_frame_names_the_bad_column():
    import pandas as pd  # a test dependency (pyproject [test])
    df = pd.DataFrame({"a": [1.0, 2.0, 3.0], "colour": ["r", "g", "b"]})
    with pytest.raises(DataError, match="'colour'"):
        solve(df, np.ones(3))


# ------------------------------------------------------------------ perturbation digits


def test_perturbation_digits_follow_the_condition_number():
    X, y = graded_problem(kappa=1e4, resid=1e-3, seed=12)
    rep = perturbation_digits(X, y, solver="auto", rel=1e-12, trials=10, seed=0)
    assert len(rep.digits_mean) == X.shape[1]
    # first-order theory, per coefficient: an upper bound on the loss, typically within
    # a digit or two of what happens
    got, pred = np.array(rep.digits_mean), np.array(rep.predicted_digits)
    assert np.all(got >= pred - 0.5), (got, pred)
    assert np.all(got <= pred + 2.5), (got, pred)
    # the normwise prediction is blind to the spread between coefficients (1.7 to 11)
    assert got.max() - got.min() > 5 and rep.predicted_digits_normwise > got.min() + 4
    again = perturbation_digits(X, y, solver="auto", rel=1e-12, trials=10, seed=0)
    assert again.digits_mean == rep.digits_mean  # matched seeds reproduce
    n = perturbation_digits(X, y, solver="normal", rel=1e-12, trials=3, seed=0)
    k = rep.condition_number_equilibrated
    assert abs(n.predicted_digits_min - (12 - 2 * math.log10(k))) < 1e-9  # 2 log10 kappa
    json.dumps(rep.to_dict())


def test_perturbation_digits_bad_arguments():
    with pytest.raises(UsageError, match="rel"):
        perturbation_digits(np.eye(3), np.ones(3), rel=0.0)
    with pytest.raises(UsageError, match="trials"):
        perturbation_digits(np.eye(3), np.ones(3), trials=0)
