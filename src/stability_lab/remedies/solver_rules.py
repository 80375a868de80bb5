"""The solver rule (linear regression): switch to the solver that kept more digits.

- ``switch_solver``: on the same matched problem (data, scaling, precision), a solver
  agreed with the reference to 2+ fewer digits than the best one -> that solver. A lone
  solver that works on the normal equations (cond(X)^2) and lost 2+ digits, with no
  better solver beside it -> ``auto`` (kept only if verification shows the digits rise).
"""

from __future__ import annotations

import math

from stability_lab.linalg.records import LRE_CAP
from stability_lab.linalg import SOLVER_TABLE
from stability_lab.precision import FORMATS
from stability_lab.remedies.rules import Context, Recommendation, register_rule


@register_rule
def switch_solver(ctx: Context) -> list[Recommendation]:
    """A solver lost 2+ digits more than the best solver on the same matched problem."""
    groups: dict[tuple, list] = {}
    for r in ctx.results:
        digits = r.trace.probes.get("end", {}).get("digits")
        if r.spec.task != "linear_regression" or digits is None:
            continue
        groups.setdefault((r.spec.data, r.spec.scale, r.spec.precision), []).append(r)
    out = []
    for (_data, _scale, precision), runs in groups.items():
        def digits(x):
            value = x.trace.probes["end"]["digits"]
            return value if isinstance(value, float) and math.isfinite(value) else 0.0

        best = max(runs, key=digits)
        worse = [x for x in runs if digits(best) - digits(x) >= 2.0]
        if not worse:
            if all(x.spec.solver != "auto" for x in runs):
                out.extend(_lone_solver(x, digits(x), precision) for x in runs
                           if _squares_kappa_and_lost_digits(x, digits(x)))
            continue
        worst = min(worse, key=digits)
        out.append(Recommendation(
            "switch_solver",
            f"switch solver to {best.spec.solver} (digits {digits(worst):.1f} -> "
            f"{digits(best):.1f})",
            f"on {best.spec.data} in {precision}, {len(worse)} solver(s) agree with the "
            f"reference to 2+ fewer digits than {best.spec.solver}: "
            + ", ".join(f"{x.spec.solver} {digits(x):.1f}" for x in worse)
            + f"; cond(X^T X) = {best.trace.probes['start']['cond_XtX']:.2g}",
            {"solver": best.spec.solver}, tuple(x.run_id for x in worse),
            {"best": best.spec.solver, "best_digits": digits(best),
             "digits": {x.spec.solver: digits(x) for x in runs}},
        ))
    return out


#: solvers whose error bound grows with cond(X)^2: the normal equations (formed, or by
#: Cholesky), and CGLS and gradient descent, which iterate on them
_SQUARING = tuple(s.name for s in SOLVER_TABLE if s.on_normal_equations)


def _squares_kappa_and_lost_digits(run, digits: float) -> bool:
    """A lone run of a solver that works on the normal equations lost 2+ digits."""
    if run.spec.solver not in _SQUARING or run.trace.error:
        return False
    return digits <= LRE_CAP - 2.0


def _lone_solver(run, digits: float, precision: str) -> Recommendation:
    """No better solver ran beside this one: propose the lab's ``auto`` path.

    The normal equations square cond(X); a backward-stable path (Householder QR, on the
    double-double design for a polynomial) loses about log10 cond(X) digits instead of
    twice that. Verification re-runs the same problem with ``solver=auto`` and keeps the
    advice only if the digits rise.
    """
    kappa = run.trace.probes.get("start", {}).get("condition_number")
    u_digits = FORMATS[precision].digits
    if isinstance(kappa, (int, float)) and math.isfinite(kappa) and kappa > 0:
        stable = max(0.0, min(u_digits - math.log10(kappa), LRE_CAP))
        bound = (f"cond(X) = {kappa:.2g}: {run.spec.solver} works on X^T X (cond "
                 f"{kappa * kappa:.2g}), a backward-stable solve's bound keeps about "
                 f"{stable:.1f} digits")
    else:
        stable, bound = None, f"{run.spec.solver} works on X^T X"
    return Recommendation(
        "switch_solver",
        f"switch solver to auto (digits {digits:.1f} with {run.spec.solver})",
        f"on {run.spec.data} in {precision}, {run.spec.solver} agrees with the reference to "
        f"{digits:.1f} digits; {bound}",
        {"solver": "auto"}, (run.run_id,),
        {"best": "auto", "best_digits": None, "digits": {run.spec.solver: digits},
         "stable_bound_digits": stable},
    )
