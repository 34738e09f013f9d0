"""Learning-rate schedules as pure functions of the epoch (0-based)."""

from __future__ import annotations

import math
from collections.abc import Callable


def step_decay(epoch: int, initial: float, drop: float, every: int) -> float:
    """initial * drop ** floor(epoch / every): the step decay of the seed notebooks."""
    return initial * drop ** (epoch // max(1, every))


def cosine_decay(epoch: int, initial: float, epochs: int) -> float:
    """Cosine from `initial` at epoch 0 to 0 at `epochs`."""
    return 0.5 * initial * (1 + math.cos(math.pi * min(epoch, epochs) / max(1, epochs)))


def warmed_up(schedule: Callable[[int], float], warmup: int) -> Callable[[int], float]:
    """`schedule` with a linear warm-up: epoch e < warmup runs at (e + 1) / (warmup + 1)
    of the scheduled rate."""
    if warmup <= 0:
        return schedule
    return lambda e: schedule(e) * min(1.0, (e + 1) / (warmup + 1))


# train.schedule's values: name -> (epoch, initial, drop, every, epochs) -> learning rate
SCHEDULES: dict[str, Callable[[int, float, float, int, int], float]] = {
    "step": lambda e, initial, drop, every, epochs: step_decay(e, initial, drop, every),
    "cosine": lambda e, initial, drop, every, epochs: cosine_decay(e, initial, epochs),
    "constant": lambda e, initial, drop, every, epochs: initial,
}


def make_schedule(name: str, initial: float, drop: float, every: int,
                  epochs: int, warmup: int = 0) -> Callable[[int], float]:
    """The schedule `name` of `SCHEDULES` as epoch -> learning rate, after `warmup` epochs
    of linear warm-up."""
    schedule = SCHEDULES[name]
    return warmed_up(lambda e: schedule(e, initial, drop, every, epochs), warmup)
