"""Dynamic loss scaling, the algorithm of ``torch.amp.GradScaler``.

Algorithm: multiply the loss by the scale ``S`` before the backward pass so that small
gradients stay above float16's smallest subnormal (6e-8); after the backward pass
unscale the gradients by ``1/S`` (computed in float64) and check them. If any value is
inf or NaN the step is skipped and ``S`` is multiplied by ``backoff`` (0.5); after
``growth_interval`` consecutive clean steps ``S`` is multiplied by ``growth`` (2).

Defaults: ``S0 = 2**16`` and ``backoff``/``growth`` as in PyTorch; the growth interval
is 100 steps rather than PyTorch's 2000 because the lab's runs are a few hundred steps
long. The state is a small record (:class:`ScalerState`) that the trace stores per step.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ScalerState:
    scale: float
    clean_steps: int = 0
    skipped: int = 0


class DynamicLossScaler:
    def __init__(self, init_scale: float = 2.0 ** 16, growth: float = 2.0,
                 backoff: float = 0.5, growth_interval: int = 100) -> None:
        if not (init_scale > 0 and growth > 1 and 0 < backoff < 1 and growth_interval >= 1):
            raise ValueError("loss scaler: need init_scale > 0, growth > 1, 0 < backoff < 1, "
                             "growth_interval >= 1")
        self.growth = growth
        self.backoff = backoff
        self.growth_interval = growth_interval
        self.state = ScalerState(float(init_scale))

    @property
    def scale(self) -> float:
        return self.state.scale

    def update(self, found_nonfinite: bool) -> bool:
        """Advance the state after a backward pass; True when the step must be skipped."""
        st = self.state
        if found_nonfinite:
            st.scale *= self.backoff
            st.clean_steps = 0
            st.skipped += 1
            return True
        st.clean_steps += 1
        if st.clean_steps >= self.growth_interval:
            st.scale *= self.growth
            st.clean_steps = 0
        return False
