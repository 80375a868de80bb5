"""``stability-lab nist``: every least-squares solver against NIST's certified answers.

Prints, per NIST StRD linear-regression problem and per solver, the condition numbers,
the digits of the coefficients and of the residual standard deviation that agree with
the certified values (LRE, capped at 15), the numerical rank and the digits predicted
from the condition number; solvers that fail are shown as failed. ``--json`` prints the
whole report (per-coefficient LRE included); ``--perturb REL`` adds the digits that
survive random relative perturbations of size REL. Does not import torch.
"""

from __future__ import annotations

import argparse
import json
import math

from stability_lab.errors import UsageError

HELP = "score every least-squares solver on the NIST StRD certified problems (LRE digits)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--problem", action="append", default=None, metavar="NAME",
                   help="problem(s) to run: Norris, Pontius, NoInt1, NoInt2, Longley, Filip, "
                        "Wampler1..Wampler5 (repeatable or comma-separated; default all)")
    p.add_argument("--solver", action="append", default=None, metavar="NAME",
                   help="solver(s) to run: normal, cholesky, qr, svd, pinv, lstsq, ridge, "
                        "lsqr, cg, gd, auto (repeatable or comma-separated; default all)")
    p.add_argument("--perturb", type=float, default=None, metavar="REL",
                   help="also re-solve under random relative perturbations of this size "
                        "(e.g. 1e-12) and report the digits that survive")
    p.add_argument("--trials", type=int, default=20, metavar="N",
                   help="perturbation trials per problem and solver (default 20)")
    p.add_argument("--seed", type=int, default=0, help="perturbation seed (default 0)")
    p.add_argument("--extended-design", action="store_true",
                   help="give 'auto' the polynomial design formed in double-double "
                        "(goes past the float64 ceiling on Filip)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead")


def main(args: argparse.Namespace) -> int:
    from stability_lab.linalg.nist import format_nist, run_nist

    perturb = args.perturb
    if perturb is not None and not (math.isfinite(perturb) and 0 < perturb < 1):
        raise UsageError(f"--perturb must be a relative size in (0, 1), e.g. 1e-12; got "
                         f"{perturb!r}.")
    trials = args.trials
    if trials < 1:
        raise UsageError(f"--trials must be an integer >= 1; got {trials}.")
    report = run_nist(problems=args.problem, solvers=args.solver, perturb=perturb,
                      trials=trials, seed=args.seed, extended_design=args.extended_design)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(format_nist(report))
    return 0


if __name__ == "__main__":  # python -m stability_lab.cli.commands.nist
    import sys

    from stability_lab import cli

    sys.exit(cli.main(["nist", *sys.argv[1:]]))
