"""edge_of_stability: lr times the sharpness above 2 at the optimum, so the loss oscillates."""

from __future__ import annotations

from pathlib import Path

from stability_lab.catalogue.common import lr_bound, spec_scenario
from stability_lab.catalogue.registry import Repro, scenario
from stability_lab.formatting import round_sig
from stability_lab.spec import RunSpec


@scenario(
    "edge_of_stability",
    "lr 6x 2/L with L2 0.1 on standardized breast cancer: the loss oscillates and never settles",
)
def reproduce(ws: Path) -> Repro:
    base = RunSpec(scale="standardized", lam=0.1)
    base = base.replace(lr=round_sig(6.0 * lr_bound(base)))
    return spec_scenario("edge_of_stability", base, [])
