"""Ensembles of prediction sets: mean, weighted mean, rank average, geometric mean.

Weighted-mean weights are fitted on OOF predictions (log loss on the simplex, scipy).
Weights fitted on the OOF they are scored on overfit, so the honest figure is nested:
for each fold, weights fitted on the other folds' OOF rows predict the held fold.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.optimize import minimize
from scipy.special import softmax
from scipy.stats import rankdata

from comp.errors import CompError


def combine(method: str, members: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Combine member probabilities (M, N, C) into (N, C) rows that sum to 1."""
    m = members.shape[0]
    w = np.full(m, 1.0 / m) if weights is None else np.asarray(weights, dtype=float)
    if method in ("mean", "weighted"):
        out = np.tensordot(w, members, axes=1)
    elif method == "geometric":
        out = np.exp(np.tensordot(w, np.log(np.clip(members, 1e-9, 1)), axes=1))
    elif method == "rank":
        ranks = np.stack([np.apply_along_axis(rankdata, 0, p) / len(p) for p in members])
        out = np.tensordot(w, ranks, axes=1)
    else:
        raise CompError(
            f"config: ensemble method {method!r}; use mean, weighted, rank or geometric"
        )
    return out / out.sum(axis=1, keepdims=True)


def fit_weights(members: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Simplex weights minimising the log loss of the weighted mean on (members, y)."""
    m = members.shape[0]
    if m == 1:
        return np.ones(1)
    rows = np.arange(len(y))

    def loss(logits: np.ndarray) -> float:
        mixed = np.tensordot(softmax(logits), members[:, rows, y], axes=1)
        return float(-np.mean(np.log(np.clip(mixed, 1e-12, None))))

    result = minimize(loss, np.zeros(m), method="Nelder-Mead",
                      options={"maxiter": 400 * m, "xatol": 1e-4, "fatol": 1e-7})
    return softmax(result.x)


def nested_predictions(members: np.ndarray, y: np.ndarray, folds: np.ndarray,
                       fit: Callable[[np.ndarray, np.ndarray], np.ndarray] = fit_weights
                       ) -> np.ndarray:
    """OOF of the weighted mean where each fold's weights never saw that fold's rows."""
    out = np.zeros(members.shape[1:])
    for fold in np.unique(folds):
        held = folds == fold
        weights = fit(members[:, ~held], y[~held])
        out[held] = combine("weighted", members[:, held], weights)
    return out
