"""Hugging Face: ``Trainer(..., callbacks=[StabilityCallback(out="lab-runs")])``.

The watcher is attached to the Trainer's model when training begins; the optimizer is
found by its step hooks (accelerate wraps it), the loss of each micro-batch is the
``loss`` the model returned (``ModelOutput.loss``), one watched step per optimizer step
(``on_step_end``, after all gradient-accumulation micro-batches). Replay re-runs
``model(**inputs).loss`` on the recorded inputs.
"""

from __future__ import annotations

from typing import Any

try:
    from transformers import TrainerCallback
except ImportError:  # pragma: no cover - the extra is not installed
    raise ImportError("stability_lab.integrations.transformers needs transformers: pip "
                      "install 'stability-lab[transformers]'") from None


class StabilityCallback(TrainerCallback):
    """Watch a Trainer run; keyword arguments go to :func:`stability_lab.watch`."""

    def __init__(self, out: str | None = "lab-runs", **watch_kwargs: Any) -> None:
        self.out = out
        self.watch_kwargs = watch_kwargs
        self.watcher = None
        self.report = None
        self.run_id: str | None = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        from stability_lab.watcher import watch

        kw = dict(self.watch_kwargs)
        kw.setdefault("name", type(model).__name__)
        self.watcher = watch(model, None, out=self.out, **kw)

    def on_step_end(self, args, state, control, **kwargs):
        if self.watcher is not None:
            self.watcher.step(None)

    def on_train_end(self, args, state, control, **kwargs):
        if self.watcher is not None and self.report is None:
            self.report = self.watcher.close()
            self.run_id = self.watcher.run_id
