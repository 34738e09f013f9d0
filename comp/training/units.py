"""What one unit's training is given and gives back, shared by the two model kinds.

A unit is one fold of one repeat of the K-fold split. The trainer's unit loop makes a
`Unit`, hands it to the kind's unit trainer (comp.training.trainer.KINDS), and writes the
`UnitResult` it returns: the predictions, then metrics.json.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Unit:
    """Unit `fold` of the model `model_id` on `prepared`, with its pseudo-labelled rows
    (a comp.training.trainer.PseudoRows, or None), the progress bar it reports to,
    whether it writes TensorBoard logs, and whether it predicts its own training rows
    (`in_sample`: a later round's distillation targets, pseudo.distill)."""

    prepared: Any
    model_id: str
    fold: int
    pseudo: Any = None
    bar: Any = None
    tensorboard: bool = False
    in_sample: bool = False


@dataclass(frozen=True)
class UnitResult:
    """A trained unit's probabilities: `val` on its validation rows, `splits` on the test
    and unlabeled images (and on its own training rows where the unit was asked for
    them: comp.workspace.DISTILL_SPLIT), and what its metrics.json records besides the
    scores."""

    val: np.ndarray
    splits: dict[str, np.ndarray]
    record: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TrainOptions:
    """How comp.training.trainer.train_spec runs a model's units: `folds` (None: every
    unit), each unit's pseudo-labelled rows (`pseudo_for_fold(unit, featured)`, None: no
    pseudo-labels), TensorBoard logs or not, the run's `deadline` (a
    comp.deadline.Deadline; None: no limit), and whether each unit predicts its own
    training rows (`in_sample`: only a run that distils, pseudo.distill, reads them)."""

    pseudo_for_fold: Callable | None = None
    folds: list[int] | None = None
    tensorboard: bool = False
    deadline: Any = None
    in_sample: bool = False
