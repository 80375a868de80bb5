"""A multi-layer perceptron on scikit-learn's digits (8x8 images, 10 classes).

Data: scikit-learn's digits (1797 images; :func:`~stability_lab.tasks.datasets.digits`
reads the file scikit-learn ships), the 0-16 pixel intensities divided by 16, then the
spec's ``scale`` (``raw`` keeps them, ``standardized`` or a factor). A fixed stratified
split (scikit-learn's ``train_test_split`` at random_state 0, shipped as row indices:
:func:`~stability_lab.tasks.datasets.digits_split`) keeps 20% of the images for the
test accuracy; every run of a sweep sees the same split.

Model: ``depth`` hidden layers ``fc<i>`` of ``width`` units, each followed by the
optional ``norm<i>`` (``layernorm`` or ``batchnorm``) and the activation ``act<i>``,
then the linear ``head``. Weights ~ N(0, (init_scale * gain)^2 / fan_in) with the
activation's gain (sqrt 2 for ReLU/GELU, 5/3 for tanh, 1 for sigmoid): He/Xavier at
``init_scale`` 1; biases zero. Loss: cross-entropy, plus ``z_loss * logsumexp(z)^2``
when set.

Training: full-batch by default (``batch_size`` for mini-batches, reshuffled every
epoch from the seed); one step per batch, ``epochs`` passes; optimizer ``momentum``
(SGD, 0.9) unless the ``optimizer`` parameter says otherwise.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from stability_lab.tasks.deep import DeepTask
from stability_lab.errors import UsageError
from stability_lab.spec import RunSpec

DEFAULTS = {"depth": 3, "width": 64, "activation": "relu", "init_scale": 1.0, "norm": "none",
            "z_loss": 0.0}
GAINS = {"relu": 2.0 ** 0.5, "gelu": 2.0 ** 0.5, "tanh": 5.0 / 3.0, "sigmoid": 1.0}


def _p(spec: RunSpec, name: str) -> Any:
    value = spec.param(name)
    return DEFAULTS[name] if value is None else value


class MLPTask(DeepTask):
    name = "mlp"

    def validate(self, spec: RunSpec) -> None:
        super().validate(spec)
        if spec.data not in ("digits", "breast_cancer"):  # breast_cancer: RunSpec default
            raise UsageError(f"The mlp task trains on the digits data; got --data {spec.data!r}. "
                             "Leave --data out or pass --data digits.")
        for name, low in (("depth", 1), ("width", 2)):
            v = _p(spec, name)
            if not isinstance(v, int) or v < low:
                raise UsageError(f"The '{name}' value must be an integer >= {low}. Got {v!r}.")

    def data_key(self, spec: RunSpec):
        return ("digits", spec.scale)

    def prepare(self, spec: RunSpec):
        import numpy as np

        from stability_lab.tasks import datasets

        ds = datasets.digits()
        X = datasets.scale_features(ds.X / 16.0, spec.scale)
        y = ds.y.astype(np.int64)
        train, test = datasets.digits_split()
        return {"train": (X[train], y[train]), "test": (X[test], y[test])}

    def conditioning(self, prepared) -> dict[str, Any]:
        Xtr, _ = prepared["train"]
        return {"n_train": int(Xtr.shape[0]), "n_test": int(prepared["test"][0].shape[0]),
                "d": int(Xtr.shape[1]), "classes": 10}

    def problem(self, spec: RunSpec, prepared):
        import torch

        from stability_lab.tasks.base import Problem

        Xtr, ytr = (torch.as_tensor(a) for a in prepared["train"])
        Xte, yte = (torch.as_tensor(a) for a in prepared["test"])
        Xtr, Xte = Xtr.float(), Xte.float()
        n = Xtr.shape[0]
        bs = spec.batch_size or n
        per_epoch = -(-n // bs)
        order_gen = torch.Generator().manual_seed(int(spec.seed) + 7919)
        orders: list = []

        def batch_at(i: int):
            epoch, j = divmod(i, per_epoch)
            if bs >= n:
                return Xtr, ytr
            while len(orders) <= epoch:
                orders.append(torch.randperm(n, generator=order_gen))
            idx = orders[epoch][j * bs:(j + 1) * bs]
            return Xtr[idx], ytr[idx]

        z = float(_p(spec, "z_loss"))

        def loss_fn(logits, targets):
            return ce_with_z_loss(logits, targets, z)

        def eval_fn(model, forward):
            logits = forward(Xte)
            loss = torch.nn.functional.cross_entropy(logits.float(), yte)
            acc = (logits.float().argmax(1) == yte).double().mean()
            return {"accuracy": float(acc), "eval_loss": float(loss)}

        return Problem(lambda: build_mlp(spec), batch_at, spec.epochs * per_epoch, loss_fn,
                       eval_fn, optimizer="momentum",
                       meta={"data": "sklearn digits (1797 x 64, /16), 80/20 split",
                             "batch_size": bs, "steps_per_epoch": per_epoch, "classes": 10})


def ce_with_z_loss(logits, targets, z: float):
    import torch

    loss = torch.nn.functional.cross_entropy(logits, targets)
    if z:
        loss = loss + z_loss(logits, z)
    return loss


def z_loss(logits, z: float):
    """The auxiliary z-loss ``z * log(Z)^2`` of logits with the classes in the last
    dimension, averaged over the others (PaLM, Chowdhery et al. 2022)."""
    import torch

    return z * torch.logsumexp(logits, dim=-1).pow(2).mean()


def build_mlp(spec: RunSpec, d_in: int = 64, d_out: int = 10):
    import torch
    from torch import nn

    depth, width = int(_p(spec, "depth")), int(_p(spec, "width"))
    act, norm = _p(spec, "activation"), _p(spec, "norm")
    scale = float(_p(spec, "init_scale"))
    acts = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "sigmoid": nn.Sigmoid}
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    fan = d_in
    for i in range(depth):
        fc = nn.Linear(fan, width)
        _init(fc, scale * GAINS[act])
        layers[f"fc{i}"] = fc
        if norm == "layernorm":
            layers[f"norm{i}"] = nn.LayerNorm(width)
        elif norm == "batchnorm":
            layers[f"norm{i}"] = nn.BatchNorm1d(width)
        layers[f"act{i}"] = acts[act]()
        fan = width
    head = nn.Linear(fan, d_out)
    _init(head, scale)
    layers["head"] = head
    with torch.no_grad():
        return nn.Sequential(layers)


def _init(layer, gain: float) -> None:
    import torch

    with torch.no_grad():
        layer.weight.normal_(0.0, gain / layer.weight.shape[1] ** 0.5)
        layer.bias.zero_()
