"""The learning rate of a training run, step by step.

A constant rate (the default) leaves Adam's step noise at the level it had in the first epoch,
so validation stops improving while the loss could still fall: the field's answer is a short
linear warm-up (Adam's moments are unreliable over the first steps, most of all with large
batches and large rates) and a decay over the run's budget, which lets a short run end where a
long constant one plateaus. The decay spans the `--epochs` budget of each training run: a joint
iteration's retraining (`--retrain-epochs`) starts a schedule of its own from fresh optimisers,
a warm restart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SCHEDULES = ("constant", "cosine", "linear")


@dataclass(frozen=True)
class LrSchedule:
    """lr(step) for steps 0 .. total_steps - 1: `warmup_steps` rising linearly to `base`, then
    constant, or decaying (cosine or linearly) to `floor` x base at the last step."""

    base: float
    kind: str = "constant"
    total_steps: int = 1
    warmup_steps: int = 0
    floor: float = 0.0  # the final rate as a share of `base`

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"lr schedule must be one of {SCHEDULES}, got {self.kind!r}")

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.base * (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return self.base
        span = max(self.total_steps - self.warmup_steps - 1, 1)
        progress = min((step - self.warmup_steps) / span, 1.0)
        shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if self.kind == "cosine" else 1.0 - progress
        return self.base * (self.floor + (1.0 - self.floor) * shape)
