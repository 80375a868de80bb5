"""Lightning: ``trainer = L.Trainer(callbacks=[StabilityCallback(out="lab-runs")])``.

The watcher is attached to the LightningModule and the first optimizer when fitting
starts; each batch is announced in ``on_train_batch_start`` (``training_step`` need
not call the module's own forward); Lightning runs the forward and backward inside
``optimizer.step(closure)``, so the gradients are read in ``on_before_optimizer_step``
(after the backward, before the update). The loss of each batch is the one
``training_step`` returned. The scaler of a ``16-mixed`` precision plugin is picked up.
Replay re-runs ``training_step(batch, i)`` on the recorded batches.
"""

from __future__ import annotations

from typing import Any

try:
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - the extra is not installed
    try:
        import pytorch_lightning as pl
    except ImportError:
        raise ImportError("stability_lab.integrations.lightning needs Lightning: pip "
                          "install 'stability-lab[lightning]'") from None


class StabilityCallback(pl.Callback):
    """Watch a Lightning fit; keyword arguments go to :func:`stability_lab.watch`."""

    def __init__(self, out: str | None = "lab-runs", **watch_kwargs: Any) -> None:
        super().__init__()
        self.out = out
        self.watch_kwargs = watch_kwargs
        self.watcher = None
        self.report = None
        self.run_id: str | None = None

    def on_fit_start(self, trainer, pl_module) -> None:
        from stability_lab.watcher import watch

        opt = trainer.optimizers[0] if trainer.optimizers else None
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        kw = dict(self.watch_kwargs)
        kw.setdefault("name", type(pl_module).__name__)
        self.watcher = watch(pl_module, opt, out=self.out, scaler=scaler, **kw)
        self.watcher.manual_pre = True

        def step_fn(model, batch, _i=[0]):  # noqa: B006 (a counter)
            out = model.training_step(batch, _i[0])
            _i[0] += 1
            return out["loss"] if isinstance(out, dict) else out

        self.watcher.step_fn = step_fn

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.watcher is not None:
            self.watcher.begin_batch(batch)

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        if self.watcher is not None:
            self.watcher.end_forward()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self.watcher is not None:
            self.watcher.before_update(optimizer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.watcher is None:
            return
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.watcher.step(loss, batch=batch)

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.watcher is not None and self.report is None:
            self.report = self.watcher.close()
            self.run_id = self.watcher.run_id

    def on_exception(self, trainer, pl_module, exception) -> None:
        if self.watcher is not None and self.report is None:
            self.watcher.replay_k, self.watcher.ring = 0, None
            self.report = self.watcher.close()
            self.run_id = self.watcher.run_id
