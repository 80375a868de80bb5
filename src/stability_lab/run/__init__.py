"""Running specs: the engine, its training loops and their monitors, and the executors.

- :mod:`.engine`: groups specs into cohorts (same task, data variant and precision) and
  runs each cohort in lockstep; a run that raises becomes an error trace;
- :mod:`.executor`: runs cohorts on other processes or machines (Dask);
- :mod:`.loop`: the deep-net training loop (precision policy, loss scaling, clipping,
  monitors) that turns a task's problem into a :class:`~stability_lab.trace.Trace`;
- :mod:`.scaler`: dynamic loss scaling (the GradScaler algorithm);
- :mod:`.attribution`: per-layer statistics and the creator of a non-finite value.

Importing this package imports nothing heavy; the loop and attribution import torch.
"""
