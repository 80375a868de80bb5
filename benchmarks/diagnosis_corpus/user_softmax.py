"""A user's model for the diagnosis corpus: softmax regression on generated data.

``build()`` returns (model, batches, loss_fn) as ``--task file.py:build`` expects: four
well-separated Gaussian classes in 8 dimensions, 4 batches of 128, cross-entropy.
"""

import torch


def build():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 8, generator=g) * 2.0
    labels = torch.randint(0, 4, (512,), generator=g)
    x = centers[labels] + torch.randn(512, 8, generator=g)
    batches = [(x[i:i + 128], labels[i:i + 128]) for i in range(0, 512, 128)]
    model = torch.nn.Linear(8, 4)
    return model, batches, torch.nn.functional.cross_entropy
