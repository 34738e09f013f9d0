"""Classic heads on one fold: embeddings once per image and view, then a scikit-learn fit.

A fold trains on every training view of its training rows (and its pseudo-labelled
rows), picks the head's regularisation by an inner stratified group K-fold of those
rows (views of one image, and near-duplicates, never straddle an inner split), and
predicts as the average over the TTA views. A fold takes seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import joblib
import numpy as np
from threadpoolctl import threadpool_limits

from comp.artifacts import atomic_path
from comp.data.folder import SPLITS
from comp.data.views import TTA_VIEWS
from comp.models.heads import (
    GridAverage,
    fit_weight_param,
    get_head,
    head_estimator,
    view_average_proba,
)
from comp.training.embeddings import (
    COLOR,
    PIXELS,
    backbone_encoder,
    cached_embeddings,
    color_encoder,
    depth_widths,
    embed,
    pixel_embeddings,
    pixel_encoder,
    pooled_model,
)
from comp.training.lite import lite_folder
from comp.training.units import Unit, UnitResult
from comp.workspace import DISTILL_SPLIT, FOLD_ESTIMATOR


class ClassicFeatures:
    """The embeddings of every split for a classic spec: `features[split]` (V, N, D), the
    spec's parts concatenated."""

    distils = False  # hard labels only: no distillation targets (pseudo.distill)

    def __init__(self, spec, prepared):
        self.views = TTA_VIEWS[spec.views]
        cache = prepared.run.embedding_cache
        self.features = {}
        widths = []
        for split in SPLITS:
            parts = []
            for name, size in spec.parts:
                images = prepared.images(split, size)
                if name == PIXELS:
                    parts.append(pixel_embeddings(images, self.views))
                    continue
                views = part_views(name, self.views)
                key = {"source": name, "size": size, "views_kind": spec.views,
                       **part_identity(spec, name), "n": len(images),
                       "data": prepared.split_key(split), "comp_embeddings": 4}
                part = cached_embeddings(cache, key, split, images, views,
                                         partial(part_encoder, spec, name, size,
                                                 prepared.run.lite_cache))
                parts.append(np.repeat(part, len(self.views) // len(views), axis=0))
            widths = widths or [part.shape[-1] for part in parts]
            self.features[split] = (parts[0] if len(parts) == 1
                                    else np.concatenate(parts, axis=-1))
        self.column_sets = (depth_column_sets(spec, widths)
                            if spec.depth_choice else {})


def depth_column_sets(spec, widths: list[int]) -> dict[str, np.ndarray]:
    """Column subsets of the concatenated embeddings the inner CV may choose from: all of
    them, and for each pooled depth of the backbone part, that depth alone beside the
    other parts (pixels, colour); {} where there is nothing to choose."""
    from comp.models.registry import get_backbone

    starts = np.concatenate([[0], np.cumsum(widths)])
    sets = {"all depths": np.arange(starts[-1])}
    for index, (name, size) in enumerate(spec.parts):
        if name in (PIXELS, COLOR) or len(spec.depths) < 2:
            continue
        others = np.concatenate([np.arange(starts[i], starts[i + 1])
                                 for i in range(len(widths)) if i != index] or [[]])
        depth_starts = starts[index] + np.concatenate(
            [[0], np.cumsum(depth_widths(get_backbone(name), size, list(spec.depths)))])
        for depth, lo, hi in zip(spec.depths, depth_starts[:-1], depth_starts[1:],
                                 strict=True):
            sets[depth] = np.sort(np.concatenate([others, np.arange(lo, hi)])).astype(int)
    return sets if len(sets) > 1 else {}


def part_identity(spec, name: str) -> dict:
    """What a part's embeddings depend on besides its name and size."""
    if name in (PIXELS, COLOR):
        return {}
    return {"depths": list(spec.depths), "weights": spec.weights.identity}


def part_encoder(spec, name: str, size: int, lite_cache: Path | None = None):
    """The encoder of one embedding part: uint8 images at `size` -> (N, D) floats (a
    backbone's frozen pass converted to TFLite is kept in `lite_cache`, where given)."""
    if name == PIXELS:
        return pixel_encoder()
    if name == COLOR:
        return color_encoder()
    from comp.models.build import build_backbone
    from comp.models.registry import get_backbone

    backbone = get_backbone(name)
    base = build_backbone(backbone, size, spec.weights, spec.seed)
    return backbone_encoder(pooled_model(base, backbone, list(spec.depths)),
                            backbone.preprocess, lite_folder(backbone, lite_cache))


def part_encoders(spec, lite_cache: Path | None = None) -> dict[tuple[str, int], Callable]:
    """The encoder of each embedding part of a classic spec (part_encoder), by (name, size):
    built once, for every prediction of a loaded model."""
    return {(name, size): part_encoder(spec, name, size, lite_cache)
            for name, size in spec.parts}


def embed_images(spec, paths: list[str], decoding, lite_cache: Path | None = None,
                 encoders: dict[tuple[str, int], Callable] | None = None) -> np.ndarray:
    """(V, N, D) embeddings of image files for a classic spec (for prediction), with its
    `encoders` (part_encoders; None: built for this call)."""
    from comp.data.images import load_images

    encoders = encoders if encoders is not None else part_encoders(spec, lite_cache)
    parts = []
    for name, size in spec.parts:
        images = load_images(paths, size, decoding.max_pixels, desc=f"decode {size}px",
                             intensity_range=decoding.intensity_range)
        views = TTA_VIEWS[spec.views]
        made = part_views(name, views)
        part = embed(images, made, encoders[name, size], desc=f"embed {name}")
        parts.append(np.repeat(part, len(views) // len(made), axis=0))
    return np.concatenate(parts, axis=-1)


def part_views(name: str, views: tuple[int, ...]) -> tuple[int, ...]:
    """The views a part's embeddings are made in, of the spec's `views`: colour
    histograms are the same in every dihedral view, so made in the first and repeated."""
    return views[:1] if name == COLOR else views


@dataclass(frozen=True)
class HeadRows:
    """The rows a classic head fits on: (V, N, D) `features` (view 0: the image as is),
    their class `labels`, their `groups` (one per image or near-duplicate group: inner
    splits never part one) and loss `weights` (None: all ones)."""

    features: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    weights: np.ndarray | None = None


@dataclass(frozen=True)
class _Candidates:
    """What the inner CV chooses among: view subsets, column subsets (None: all) and the
    head's grid values (fitted together and averaged when `average`)."""

    views: dict[str, list[int]]
    columns: dict[str, np.ndarray | None]
    grid: list[dict]
    average: bool

    @property
    def any_choice(self) -> bool:
        return len(self.grid) > 1 or len(self.views) > 1 or len(self.columns) > 1


@dataclass(frozen=True)
class _Choice:
    """The chosen view subset, column subset and grid values, with their inner log loss
    (None: nothing was scored)."""

    views: str
    columns: str
    params: list[dict]
    inner_loss: float | None


def fit_classic(spec, rows: HeadRows, n_classes: int,
                column_sets: dict[str, np.ndarray] | None = None):
    """Fit the spec's head on the views of `rows`.

    An inner stratified group K-fold (one group per image or near-duplicate group)
    chooses whether the views help at all: all views, or view 0 alone (flips and
    rotations hurt where orientation carries the class, as for digits). With
    `spec.regularisation == "average"` the head is fitted at every value of its grid and
    the fits' probabilities averaged, and each view choice is scored by that average;
    with "best" the inner CV also picks one grid value. With `column_sets` (name ->
    feature columns, e.g. one pooled depth of the backbone) it also picks the columns.
    Choices are scored by log loss on the average over their views (V times cheaper;
    each image counts once). The chosen heads are then fitted on every chosen view;
    `estimator.comp_views_` records them, `comp_columns_` the columns (None: all).
    Returns (estimator, chosen settings, inner log loss)."""
    from sklearn.model_selection import ParameterGrid

    head = get_head(spec.head)
    views, n, _ = rows.features.shape
    if rows.weights is None:
        rows = replace(rows, weights=np.ones(n))
    candidates = _Candidates(
        {"all": list(range(views))} | ({"identity": [0]} if views > 1 else {}),
        dict(column_sets or {}) or {"all depths": None},
        list(ParameterGrid(head.grid or {})), spec.regularisation == "average")
    splits = _inner_splits(spec, rows, candidates)
    if splits is None:
        choice = _Choice("all", next(iter(candidates.columns)),
                         candidates.grid if candidates.average else [{}], None)
    else:
        choice = _inner_choice(head, candidates, rows, n_classes, splits)
    estimator = _fit_chosen(head, spec.seed, rows, candidates, choice)
    chosen = {"views": choice.views, "regularisation": spec.regularisation,
              "params": choice.params, **({"depths": choice.columns} if column_sets else {})}
    return estimator, chosen, choice.inner_loss


def _inner_splits(spec, rows: HeadRows, candidates: _Candidates) -> list | None:
    """The inner CV's (fit, held) splits, or None where there is nothing to choose or a
    class has too few images for two splits."""
    from sklearn.model_selection import StratifiedGroupKFold

    counts = np.bincount(rows.labels)
    inner = min(spec.inner_folds, int(counts[counts > 0].min()))
    if not candidates.any_choice or inner < 2:
        return None
    return list(StratifiedGroupKFold(inner, shuffle=True, random_state=spec.seed)
                .split(np.zeros(rows.features.shape[1]), rows.labels, rows.groups))


def _inner_choice(head, candidates: _Candidates, rows: HeadRows, n_classes: int,
                  splits: list) -> _Choice:
    """The candidates with the lowest inner log loss (the first listed on a tie)."""
    probs = {}
    for name, subset in candidates.views.items():
        mean = _views_of(rows.features, subset).mean(axis=0)
        for column_name, cols in candidates.columns.items():
            chosen_columns = mean if cols is None else mean[:, cols]
            for i, params in enumerate(candidates.grid):
                probs[name, column_name, i] = _inner_probs(
                    head, params, chosen_columns, rows, splits, n_classes)
    indices = range(len(candidates.grid))
    members = [list(indices)] if candidates.average else [[i] for i in indices]
    scored = [(_log_loss([probs[name, column_name, i] for i in group], rows.labels),
               name, column_name, group)
              for name in candidates.views for column_name in candidates.columns
              for group in members]
    inner_loss, views, columns, group = min(scored, key=lambda item: item[0])
    return _Choice(views, columns, [candidates.grid[i] for i in group], inner_loss)


def _fit_chosen(head, seed: int, rows: HeadRows, candidates: _Candidates, choice: _Choice):
    """The head fitted at the chosen grid values (averaged where several) on every chosen
    view of `rows`, restricted to the chosen columns."""
    from sklearn.model_selection import StratifiedGroupKFold

    kept, cols = candidates.views[choice.views], candidates.columns[choice.columns]
    chosen_features = _views_of(rows.features, kept)
    if cols is not None:
        chosen_features = chosen_features[..., cols]
    dims = chosen_features.shape[-1]
    x = chosen_features.reshape(len(kept) * rows.features.shape[1], dims)
    y, g = np.tile(rows.labels, len(kept)), np.tile(rows.groups, len(kept))
    calibration = 3
    if head.calibrate:  # group-aware splits: an image's views never straddle them
        calibration = list(StratifiedGroupKFold(
            _calibration_folds(rows.labels), shuffle=True, random_state=seed).split(x, y, g))
    fitted = []
    for params in choice.params:
        estimator = head_estimator(head, params, len(x), dims, calibration)
        estimator.fit(x, y, **_weights(head, np.tile(rows.weights, len(kept))))
        fitted.append(estimator)
    estimator = fitted[0] if len(fitted) == 1 else GridAverage(fitted)
    estimator.comp_views_ = kept
    estimator.comp_columns_ = cols
    return estimator


def _views_of(features: np.ndarray, views: list[int]) -> np.ndarray:
    """`features[views]` of (V, N, D) `features`, without a copy where the views are a run
    of consecutive ones (all of them, or view 0 alone: a pixel head's 8 views of 2,000
    images are 200 MB)."""
    if list(views) == list(range(views[0], views[0] + len(views))):
        return features[views[0]:views[0] + len(views)]
    return features[views]


def _inner_probs(head, params: dict, features: np.ndarray, rows: HeadRows, splits: list,
                 n_classes: int) -> np.ndarray | None:
    """(N, n_classes) inner out-of-fold probabilities of `head` with `params` on (N, D)
    `features` (the view-averaged, column-chosen features of `rows`), or None where a fit
    fails (too few images of a class in a split)."""
    labels, weights = rows.labels, rows.weights
    out = np.zeros((len(labels), n_classes))
    for fit_rows, held in splits:
        est = head_estimator(head, params, len(fit_rows), features.shape[1],
                             _calibration_folds(labels[fit_rows]))
        try:
            est.fit(features[fit_rows], labels[fit_rows], **_weights(head, weights[fit_rows]))
        except ValueError:
            return None
        out[held] = view_average_proba(est, features[None, held], n_classes,
                                       np.asarray(est.classes_))
    return out


def _log_loss(probs: list, labels: np.ndarray) -> float:
    """Log loss of the mean of `probs` (inf when any is missing)."""
    if any(p is None for p in probs):
        return float("inf")
    mean = np.mean(probs, axis=0)
    return float(-np.mean(np.log(np.clip(mean[np.arange(len(labels)), labels], 1e-7, 1))))


def _calibration_folds(labels: np.ndarray) -> int:
    """Folds of a sigmoid calibration: 3, or fewer where a class has fewer images."""
    counts = np.bincount(labels)
    return max(2, min(3, int(counts[counts > 0].min())))


def _weights(head, weights: np.ndarray) -> dict:
    name = fit_weight_param(head)
    return {name: weights} if name else {}


def train_classic_fold(featured: ClassicFeatures, spec, unit: Unit, out: Path) -> UnitResult:
    """Train and predict `unit` (a fold of one repeat) of a classic spec; its fitted head
    goes into the unit's fresh folder `out`."""
    prepared, fold, pseudo = unit.prepared, unit.fold, unit.pseudo
    classes = prepared.competition.classes
    rows, val = prepared.unit_train_rows(fold), prepared.unit_val_rows(fold)
    train = featured.features["train"]
    head_rows = _head_rows(train, rows, prepared.labels, prepared.folds["group"].to_numpy(),
                           pseudo)
    # one BLAS thread: OpenBLAS threads spin-wait against TensorFlow's and each other's on
    # a small machine (a PCA ran 6x slower with 2 threads than with 1 here)
    with threadpool_limits(1):
        estimator, chosen, inner_score = fit_classic(spec, head_rows, len(classes),
                                                     featured.column_sets)
    seen = np.asarray(estimator.classes_)
    val_probs = view_average_proba(estimator, train[:, val], len(classes), seen)
    split_probs = {s: view_average_proba(estimator, featured.features[s], len(classes), seen)
                   for s in ("test", "unlabeled")}
    if unit.in_sample:  # a later round's distillation targets (pseudo.distill)
        split_probs[DISTILL_SPLIT] = view_average_proba(estimator, train[:, rows],
                                                        len(classes), seen)
    with atomic_path(out / FOLD_ESTIMATOR, suffix=".joblib") as tmp:
        joblib.dump(estimator, tmp)
    return UnitResult(val_probs, split_probs, {
        "best_epoch": None, "n_train": int(len(rows)), "chosen": chosen,
        "inner_log_loss": inner_score, "settings": spec.describe(),
    })


def _head_rows(train: np.ndarray, rows: np.ndarray, labels: np.ndarray, groups: np.ndarray,
               pseudo) -> HeadRows:
    """The unit's training `rows` of the (V, N, D) `train` embeddings, then its pseudo
    rows (hard labels, one new group each, their weights), if any. Made view by view
    into one array (a pixel head's 8 views of 2,000 images are 200 MB a copy)."""
    y, g = labels[rows], groups[rows]
    w = np.ones(len(rows))
    if pseudo is None or not len(pseudo.targets):
        return HeadRows(train[:, rows], y, g, w)
    views, n = train.shape[0], len(rows)
    extra = pseudo.features  # (V', P, D): view v of the pool is view v % V'
    x = np.empty((views, n + extra.shape[1], train.shape[2]),
                 np.result_type(train.dtype, extra.dtype))
    for view in range(views):
        x[view, :n] = train[view, rows]
        x[view, n:] = extra[view % extra.shape[0]]
    return HeadRows(x, np.concatenate([y, pseudo.targets.argmax(1)]),
                    np.concatenate([g, groups.max() + 1 + np.arange(len(pseudo.targets))]),
                    np.concatenate([w, pseudo.weights]))
