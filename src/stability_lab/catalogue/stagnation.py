"""stagnation: bfloat16 weights whose updates fall below half an ulp."""

from __future__ import annotations

from pathlib import Path

from stability_lab.catalogue.common import lr_bound, spec_scenario
from stability_lab.catalogue.registry import Repro, scenario
from stability_lab.formatting import round_sig
from stability_lab.diagnosis.record import RunResult
from stability_lab.remedies.rules import Recommendation
from stability_lab.spec import RunSpec


@scenario(
    "stagnation",
    "bfloat16 weights with a small lr: updates fall below half an ulp and training stops",
)
def reproduce(ws: Path) -> Repro:
    base = RunSpec(precision="bfloat16", scale="standardized", lr=0.01, lam=0.1, epochs=300)
    B = lr_bound(base)

    def extra(first: RunResult) -> list[Recommendation]:
        ratio = first.trace.metric("update_ratio")
        return [Recommendation(
            "raise_lr", f"raise lr to {round_sig(0.5 * B):g} (half of 2/L)",
            f"the update/weight ratio is {ratio[-1]:.2g}, below half a bfloat16 ulp "
            f"({2.0 ** -9:.2g}); lr {base.lr:g} is {base.lr / B:.2g} of the stability bound "
            f"2/L = {B:.3g}", {"lr": round_sig(0.5 * B)}, (first.run_id,),
            {"update_ratio": float(ratio[-1]), "lr_bound": B})]

    return spec_scenario("stagnation", base, [("precision", ["bfloat16", "float32"])], extra)
