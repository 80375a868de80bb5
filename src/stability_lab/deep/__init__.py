"""Deep-net machinery shared by the ``mlp``, ``attention`` and user-model tasks.

- :mod:`.policies`: precision policies as data, and the arithmetic that applies them
  (tensor-core emulation of 16-bit GEMMs, fp8 with per-tensor delayed scaling,
  autocast-style op lists);
- :mod:`.scaler`: dynamic loss scaling (the GradScaler algorithm);
- :mod:`.attribution`: per-layer statistics and the creator of a non-finite value;
- :mod:`.loop`: the shared training loop that produces a :class:`~stability_lab.trace.Trace`;
- :mod:`.detectors`: deep-net findings (pure functions of a trace);
- :mod:`.rules`: recommendation rules for those findings;
- :mod:`.report`: the policy evaluation report.

Importing this package imports nothing heavy; its submodules import torch.
"""
