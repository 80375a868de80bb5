"""divergence: gradient descent with lr above the stability bound 2/L."""

from __future__ import annotations

from pathlib import Path

from stability_lab.catalogue.common import lr_bound, spec_scenario
from stability_lab.catalogue.registry import Repro, scenario
from stability_lab.formatting import round_sig
from stability_lab.spec import RunSpec


@scenario(
    "divergence",
    "gradient descent with lr 2.5x the stability bound 2/L on a ridge-logistic problem",
)
def reproduce(ws: Path) -> Repro:
    base = RunSpec(data="synthetic:n=500,d=10,kappa=10,seed=0", scale="standardized",
                   lam=1.0)
    base = base.replace(lr=round_sig(2.5 * lr_bound(base)))
    return spec_scenario("divergence", base, [])
