"""The signature catalogue: for each failure signature, a reproduction and its verified fixes.

One module per scenario. Each reproduces its signature on real (breast_cancer, digits)
or generated data in a few seconds, diagnoses the run with the lab's detectors, collects
the recommendations (the lab's own rules where they fire on the scenario's small matched
sweep, plus the scenario's evidence-driven mitigations), and verifies them with
:func:`stability_lab.remedies.verify.verify_run`: the baseline re-run with each
mitigation alone and all together, with the same seed, data order and precision (unless
the mitigation changes it). A row is ``fixed`` when the target signature is no longer
detected and the verdict is not a failure; a mitigation that does not fix it stays in
the table.

Training scenarios are RunSpecs of the lab's tasks, run by the engine (a scenario that
prepares data writes it as a CSV into its work folder first; ``gradient_underflow``'s
model is a user model of its own module, trained by the deep loop; ``collapse_to_chance``
trains the lab's digits ``mlp``, five 200-step runs, about 15 seconds; the deep-net
scenarios after it train the ``mlp`` and ``attention`` tasks for 14 to 120 steps, and
``logit_growth`` a user model of its own module for 100).
The two that are not training runs, a least-squares solve (``ill_conditioned_blowup``)
and one spec run under several summation orders (``nondeterminism``), are small
computations of their module, configured by a dict.

``repro(name, out)`` runs one scenario and returns a :class:`Repro`; ``docs/playbook.md``
is generated from the scenarios (``stability-lab playbook --write docs/playbook.md``).
"""

from stability_lab.catalogue.registry import (
    RUNNERS,
    SCENARIOS,
    Repro,
    Scenario,
    evidence_line,
    get,
    names,
    repro,
    scenario,
)

# each module registers its scenario on import: this order is the playbook's
from stability_lab.catalogue import (  # noqa: F401
    overflow,
    nan_creation,
    divergence,
    edge_of_stability,
    loss_spike,
    stagnation,
    gradient_underflow,
    catastrophic_cancellation,
    ill_conditioned_blowup,
    rank_deficiency,
    silent_digit_loss,
    nondeterminism,
    saturation,
    collapse_to_chance,
    nonfinite_created,
    loss_scale_collapse,
    attention_logit_growth,
    headroom_shrinking,
    exploding_gradients,
    vanishing_gradients,
    dying_relu,
    logit_growth,
)

__all__ = ["RUNNERS", "SCENARIOS", "Repro", "Scenario", "evidence_line", "get", "names",
           "repro", "scenario"]
