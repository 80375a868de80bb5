"""Callbacks that attach :func:`stability_lab.watch` to training frameworks.

``stability_lab.integrations.lightning.StabilityCallback`` (``pip install
'stability-lab[lightning]'``) and ``stability_lab.integrations.transformers.
StabilityCallback`` (``pip install 'stability-lab[transformers]'``). Each creates the
watcher when training starts, closes it (diagnosis, replay, store) when training ends,
and exposes ``.watcher``, ``.report`` and ``.run_id``.
"""
