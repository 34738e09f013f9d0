"""Learning-rate schedules as pure functions of the epoch (0-based)."""

from __future__ import annotations

import math
from collections.abc import Callable

from comp.errors import CompError


def step_decay(epoch: int, initial: float, drop: float, every: int) -> float:
    """initial * drop ** floor(epoch / every): the step decay of the seed notebooks."""
    return initial * drop ** (epoch // max(1, every))


def cosine_decay(epoch: int, initial: float, epochs: int) -> float:
    """Cosine from `initial` at epoch 0 to 0 at `epochs`."""
    return 0.5 * initial * (1 + math.cos(math.pi * min(epoch, epochs) / max(1, epochs)))


def make_schedule(name: str, initial: float, drop: float, every: int,
                  epochs: int) -> Callable[[int], float]:
    """The schedule `name` (step | cosine | constant) as epoch -> learning rate."""
    schedules = {
        "step": lambda e: step_decay(e, initial, drop, every),
        "cosine": lambda e: cosine_decay(e, initial, epochs),
        "constant": lambda e: initial,
    }
    if name not in schedules:
        raise CompError(f"config: train.schedule={name!r}; use one of {sorted(schedules)}")
    return schedules[name]
