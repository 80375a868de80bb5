"""logit_growth: a classifier's learned temperature grows until its softmax is one-hot.

The model is a user's cosine classifier with a learned logit scale, as in CLIP
(:func:`temperature_model`, the task
``stability_lab.catalogue.logit_growth:temperature_model``): logits = s * cos(x, w_c)
with s = exp(t) trained beside the class prototypes w_c, which start at the class means
(as a zero-shot head starts from its text embeddings). Every example is classified
correctly from the start, so the cross-entropy keeps rewarding a larger s and nothing
bounds it (CLIP clamps s at 100 for this reason). The classes are 0.1 apart on a common
offset of 10, so their cosines differ by about 1e-3 and a confident softmax needs s in
the thousands: under Adam at lr 0.1 the largest logit grows from 14 to past 1e3 within
100 steps, where the softmax is one-hot in any format. The lab's ``z_loss`` rule adds
the z-loss 1e-4 * log(Z)^2 on the logits, which pulls log Z, and with it s, back (the
fit then goes on more slowly: the z-loss trades confidence for bounded logits).
"""

from __future__ import annotations

import math
from pathlib import Path

from stability_lab.catalogue.common import spec_scenario
from stability_lab.catalogue.registry import Repro, scenario
from stability_lab.spec import RunSpec

TASK = "stability_lab.catalogue.logit_growth:temperature_model"


def temperature_model():
    """A user model (``build()`` of :mod:`stability_lab.tasks.user`): a cosine classifier
    with a learned logit scale exp(t) (t = log(1/0.07) at the start, CLIP's) and class
    prototypes starting at the class means, on 2000 generated samples of 16 features in
    10 classes (a common offset of norm 10, class centers N(0, 0.1^2), noise N(0,
    0.05^2)), one full batch, cross-entropy."""
    import numpy as np
    import torch
    from torch import nn

    class CosineClassifier(nn.Module):
        def __init__(self, prototypes: np.ndarray) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.tensor(prototypes, dtype=torch.float32))
            self.log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

        def forward(self, x):
            F = nn.functional
            return self.log_scale.exp() * F.normalize(x, dim=-1) @ F.normalize(
                self.weight, dim=-1).T

    rng = np.random.default_rng(5)
    n, d, classes = 2000, 16, 10
    offset = rng.standard_normal(d)
    offset *= 10 / np.linalg.norm(offset)
    centers = rng.standard_normal((classes, d)) * 0.1
    y = rng.integers(0, classes, n)
    X = offset + centers[y] + 0.05 * rng.standard_normal((n, d))
    prototypes = np.stack([X[y == c].mean(axis=0) for c in range(classes)])
    inputs = torch.tensor(X, dtype=torch.float32)
    targets = torch.tensor(y, dtype=torch.int64)
    return (CosineClassifier(prototypes), [(inputs, targets)],
            torch.nn.functional.cross_entropy)


@scenario(
    "logit_growth",
    "a cosine classifier with a learned logit scale (as in CLIP) under Adam: the scale "
    "grows until the largest logit passes 1e3",
)
def reproduce(ws: Path) -> Repro:
    base = RunSpec(task=TASK, policy="float32", lr=0.1, epochs=100).replace(optimizer="adam")
    return spec_scenario("logit_growth", base, [])
