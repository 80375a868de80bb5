"""loss_spike: lr far above 2/L, where the loss spikes whenever the weights reach a sharp
region and recovers once the iterate is thrown to a flatter one (a catapult)."""

from __future__ import annotations

from pathlib import Path

from stability_lab.catalogue.common import lr_bound, spec_scenario
from stability_lab.catalogue.registry import Repro, scenario
from stability_lab.formatting import round_sig
from stability_lab.diagnosis.record import RunResult
from stability_lab.remedies.rules import Recommendation, safe_lr
from stability_lab.spec import RunSpec

#: the run's lr, in multiples of the stability bound 2/L
LR_TIMES_BOUND = 20


@scenario(
    "loss_spike",
    "lr 20x 2/L with L2 0.01 on standardized breast cancer: the loss spikes, recovers, "
    "and spikes again",
)
def reproduce(ws: Path) -> Repro:
    base = RunSpec(scale="standardized", lam=0.01)
    B = lr_bound(base)
    base = base.replace(lr=round_sig(LR_TIMES_BOUND * B))

    def extra(first: RunResult) -> list[Recommendation]:
        return [Recommendation("lower_lr", f"lower lr to {safe_lr(B):g}",
                               f"2/L = {B:.3g}: no step below it can overshoot the valley",
                               {"lr": safe_lr(B)}, (first.run_id,), {"lr_bound": B})]

    return spec_scenario("loss_spike", base, [], extra)
