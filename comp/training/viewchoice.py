"""Per unit, do the flip/rotation views help a fine-tuned model? (`augment.choose_views`)

Some labels survive a flip or a quarter turn (a cell is a cell), others do not (a 6 turned
is a 9). As the classic heads do, an inner stratified group K-fold of the unit's training
rows decides, on cheap descriptors of the cached features (block means that keep the
layout), whether a linear probe trained on all views and averaged over the TTA views
beats one trained and predicting on the image alone (with its orientation-keeping random
views, where there are any). The unit's validation rows play no part, so its score stays
honest. The choice is recorded in the unit's metrics.json (`views`), which prediction and
export read.
"""

from __future__ import annotations

import numpy as np

from comp.workspace import FOLD_METRICS

ALL, IDENTITY = "all", "identity"
INNER_FOLDS = 3  # splits of the inner CV (fewer where a class has fewer images)
# The probe's stopping tolerance: at sklearn's 1e-4 a probe of 2,000 glyph rows took 45 s a
# unit on this 2-core machine; at 1e-3 it takes 14 s, its inner log losses move by at most
# 0.021 while the two choices' losses differ by at least 0.11, and all 30 units of wbc,
# digits and the glyphs choose as before (bench/README.md, "view_choice.py").
PROBE_TOL = 1e-3


def probe_descriptors(features: np.ndarray, grid: int | None = None) -> np.ndarray:
    """(V, N, D) float32 block means of (V, N, H, W, C) features (images or prefix
    outputs): a grid x grid layout of channel means (8 x 8 for images, 2 x 2 for wide
    feature maps), so a turned image gets other descriptors; 3-D input is kept."""
    x = np.asarray(features, dtype=np.float32)
    if x.ndim != 5:
        return x.reshape(x.shape[0], x.shape[1], -1)
    channels = x.shape[-1]
    grid = grid or (8 if channels <= 4 else 2)
    grid = max(1, min(grid, x.shape[2], x.shape[3]))
    rows = np.array_split(np.arange(x.shape[2]), grid)
    cols = np.array_split(np.arange(x.shape[3]), grid)
    blocks = [x[:, :, r][:, :, :, c].mean(axis=(2, 3)) for r in rows for c in cols]
    return np.concatenate(blocks, axis=-1)


def unit_descriptors(features: np.ndarray, rows: np.ndarray, chunk: int = 256) -> np.ndarray:
    """probe_descriptors of `rows` of (V, N, ...) cached `features`, read a chunk at a
    time (a memory-mapped cache is never copied whole)."""
    from comp.training.features import unmap

    parts = []
    for start in range(0, len(rows), chunk):
        parts.append(probe_descriptors(features[:, rows[start:start + chunk]]))
        unmap(features)
    return np.concatenate(parts, axis=1)


def choose_views(descriptors: np.ndarray, arms: dict[str, tuple[list[int], list[int]]],
                 labels: np.ndarray, groups: np.ndarray | None, seed: int) -> str:
    """ALL or IDENTITY for (V, n, D) `descriptors` of a unit's training rows: the one
    with the lower inner-CV log loss (`probe_losses`; ties: ALL). `arms` gives each its
    (training view positions, prediction view positions); position 0 is the image itself."""
    if inner_splits(labels) < 2 or set(arms[ALL][0]) == set(arms[IDENTITY][0]):
        return ALL
    losses = probe_losses(descriptors, arms, labels, groups, seed)
    return IDENTITY if losses[IDENTITY] < losses[ALL] else ALL


def inner_splits(labels: np.ndarray) -> int:
    """The probe's inner folds: INNER_FOLDS, fewer where a class has fewer rows."""
    counts = np.bincount(labels)
    return min(INNER_FOLDS, int(counts[counts > 0].min()))


def probe_losses(descriptors: np.ndarray, arms: dict[str, tuple[list[int], list[int]]],
                 labels: np.ndarray, groups: np.ndarray | None, seed: int,
                 tol: float = PROBE_TOL) -> dict[str, float]:
    """Each arm's mean inner-CV log loss of a linear probe (standardised logistic
    regression, C=0.1, stopping at `tol`) trained on its training views and averaged over
    its prediction views, on a stratified group K-fold of the rows (INNER_FOLDS, fewer
    where a class has fewer rows; at least 2)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n_splits = max(2, inner_splits(labels))
    groups = np.arange(len(labels)) if groups is None else groups
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    classes = np.unique(labels)
    losses = dict.fromkeys(arms, 0.0)
    for fit, held in splitter.split(descriptors[0], labels, groups):
        for choice, (fit_views, predict_views) in arms.items():
            model = make_pipeline(StandardScaler(),
                                  LogisticRegression(C=0.1, tol=tol, max_iter=200))
            x = np.concatenate([descriptors[v, fit] for v in fit_views])
            model.fit(x, np.tile(labels[fit], len(fit_views)))
            probs = np.mean([_proba(model, descriptors[v, held], classes)
                             for v in predict_views], axis=0)
            losses[choice] += log_loss(labels[held], probs, labels=classes) * len(held)
    return {choice: total / len(labels) for choice, total in losses.items()}


def recorded_views(fold_dir) -> str:
    """The views a finished unit chose (its metrics.json; ALL before the choice existed)."""
    from comp.artifacts import read_json

    try:
        return read_json(fold_dir / FOLD_METRICS).get("views", ALL)
    except (OSError, ValueError):
        return ALL


def _proba(model, x: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Probabilities over every class of the unit (a class missing from an inner fit
    gets a floor)."""
    out = np.full((len(x), len(classes)), 1e-6)
    out[:, np.searchsorted(classes, model.classes_)] = model.predict_proba(x)
    return out / out.sum(axis=1, keepdims=True)
