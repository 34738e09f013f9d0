"""The rules that choose pseudo-labels for unlabeled (and, by option, test) images — per fold.

The pseudo-labels that train fold k of round r come only from the round r-1 models of
fold k, whose training never saw fold k's validation images; so fold k's validation
score cannot profit from its own labels. The selection rules are pure functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd



@dataclass(frozen=True)
class Votes:
    """The teacher's class probabilities `probs` (N, C) on the pool images: image i is
    `ids[i]` of split `splits[i]`. `voters` are the model ids behind them and `teacher`
    names what combined them (a model id, `mean` or `ensemble-<method>`). `labelled`:
    the same teacher's out-of-fold probabilities on the unit's training rows (folds.csv
    order), where known: what tells how often its labels are right."""

    ids: list[str]
    splits: list[str]
    probs: np.ndarray
    voters: list[str]
    teacher: str = "mean"
    labelled: np.ndarray | None = None

    def of_splits(self, splits: list[str]) -> Votes:
        """These votes on the images of `splits` only."""
        keep = np.array([s in splits for s in self.splits], dtype=bool)
        return Votes([i for i, k in zip(self.ids, keep, strict=True) if k],
                     [s for s, k in zip(self.splits, keep, strict=True) if k],
                     self.probs[keep], self.voters, self.teacher, self.labelled)


def sharpen(probs: np.ndarray, temperature: float) -> np.ndarray:
    """p ** (1 / T), renormalised: T < 1 sharpens, T = 1 leaves `probs` as they are."""
    powered = np.power(np.clip(probs, 1e-12, 1), 1.0 / temperature)
    return powered / powered.sum(axis=1, keepdims=True)


def select_pseudo_labels(
    probs: np.ndarray, labelled_counts: np.ndarray, threshold: float, top_fraction: float,
    class_cap: float,
) -> np.ndarray:
    """Indices of the rows of `probs` (N, C) to pseudo-label, most confident first.

    A row is kept when its top probability is >= `threshold`; per predicted class, only
    the `top_fraction` most confident of those, and at most `class_cap` times that
    class's labelled count (at least one where any passes), so the majority class cannot
    swamp the rare ones.
    """
    confidence = probs.max(axis=1)
    predicted = probs.argmax(axis=1)
    chosen = []
    for cls in range(probs.shape[1]):
        rows = np.nonzero((predicted == cls) & (confidence >= threshold))[0]
        rows = rows[np.argsort(-confidence[rows], kind="stable")]
        keep = int(np.ceil(len(rows) * top_fraction))
        cap = max(1, int(np.floor(class_cap * labelled_counts[cls]))) if len(rows) else 0
        chosen.append(rows[: min(keep, cap)])
    picked = np.concatenate(chosen) if chosen else np.zeros(0, dtype=int)
    return picked[np.argsort(-confidence[picked], kind="stable")]


def select_by_quota(probs: np.ndarray, prior: np.ndarray, fraction: float,
                    min_confidence: float) -> np.ndarray:
    """Indices of rows of `probs` (N, C) to pseudo-label, most confident first: for each
    class c, the rows predicted as c with the highest p_c, at most
    round(fraction * N * prior[c]) of them and only those with p_c >= `min_confidence`.

    Quotas follow the labelled class prior, so a rare class the models are rarely sure
    about still gets its share, and the majority class cannot swamp the others.
    """
    confidence = probs.max(axis=1)
    predicted = probs.argmax(axis=1)
    chosen = []
    for cls in range(probs.shape[1]):
        quota = int(round(fraction * len(probs) * prior[cls]))
        rows = np.nonzero((predicted == cls) & (confidence >= min_confidence))[0]
        rows = rows[np.argsort(-confidence[rows], kind="stable")]
        chosen.append(rows[:max(quota, 1 if len(rows) and prior[cls] > 0 else 0)])
    picked = np.concatenate(chosen) if chosen else np.zeros(0, dtype=int)
    return picked[np.argsort(-confidence[picked], kind="stable")]


def right_labels(probs: np.ndarray, labels: np.ndarray, picked: np.ndarray) -> int:
    """How many of the `picked` rows of `probs` (N, C) have their top class equal to
    `labels` (N,): the pseudo-labels a rule would have got right on labelled rows."""
    return int((probs[picked].argmax(axis=1) == labels[picked]).sum())


def pseudo_table(votes: Votes, classes: list[str], picked: np.ndarray, soft: bool,
                 temperature: float) -> pd.DataFrame:
    """The fold's pseudo-label file of the `picked` rows of `votes`: id, split, label,
    p_<class>..., confidence, sources (the voters behind the teacher).

    The p_ columns are the training targets: one-hot for hard labels, the (sharpened)
    vote for soft ones.
    """
    chosen = votes.probs[picked]
    targets = sharpen(chosen, temperature) if soft else np.eye(len(classes))[chosen.argmax(1)]
    import pandas as pd

    frame = pd.DataFrame({
        "id": [votes.ids[i] for i in picked], "split": [votes.splits[i] for i in picked],
        "label": [classes[i] for i in chosen.argmax(1)],
    })
    frame[[f"p_{c}" for c in classes]] = targets
    frame["confidence"] = chosen.max(axis=1) if len(chosen) else []
    frame["sources"] = " ".join(votes.voters)
    return frame
