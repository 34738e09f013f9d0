"""Choosing the entry to submit: the nested CV of picking the best entry."""

from __future__ import annotations

import numpy as np

from comp.selection import nested_selection


def _probs(y: np.ndarray, correct: np.ndarray, n_classes: int = 3) -> np.ndarray:
    """One-hot-ish probabilities that are right exactly where `correct`."""
    predicted = np.where(correct, y, (y + 1) % n_classes)
    out = np.full((len(y), n_classes), 0.1)
    out[np.arange(len(y)), predicted] = 0.8
    return out


def _entries(extra_right: int, n: int = 200, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    single_right = rng.random(n) < 0.8
    ensemble_right = single_right.copy()
    wrong, right = np.nonzero(~single_right)[0], np.nonzero(single_right)[0]
    # the ensemble fixes 2 + `extra_right` rows the single model gets wrong, and breaks 2
    ensemble_right[wrong[:2 + extra_right]] = True
    ensemble_right[right[:2]] = False
    return y, {"single": _probs(y, single_right), "ensemble": _probs(y, ensemble_right)}


def test_nested_selection_scores_each_fold_with_the_entry_picked_on_the_others():
    y, entries = _entries(extra_right=25)
    folds = np.arange(len(y)) % 4
    oof, chosen = nested_selection(entries, y, folds, "accuracy")
    assert set(chosen) == {0, 1, 2, 3}
    for fold, name in chosen.items():
        assert np.array_equal(oof[folds == fold], entries[name][folds == fold])
        others = folds != fold
        best = max(entries, key=lambda k: (entries[k][others].argmax(1) == y[others]).mean())
        assert name == best
