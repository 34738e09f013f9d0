"""Classic heads: scikit-learn classifiers on pooled backbone features or raw pixels.

One table, HEADS: name -> how to build the estimator and the small grid of its
regularisation that an inner, group-aware cross-validation chooses within each outer
fold's training rows (so the outer fold's validation images never choose it).
Adding a head is one entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Head:
    """A registered classic head: `build()` -> an unfitted sklearn estimator; `grid` the
    parameter values the inner CV picks from (a value list per parameter name, e.g.
    "clf__C"); `calibrate`: its probabilities come from a sigmoid calibration on
    group-aware splits (SVMs)."""

    name: str
    build: Callable[[], object]
    grid: dict[str, list] = field(default_factory=dict)
    text: str = ""
    weight_param: str | None = "clf__sample_weight"  # fit keyword for sample weights
    calibrate: bool = False


def _logreg():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    return Pipeline([("scale", StandardScaler()),
                     ("clf", LogisticRegression(C=0.3, max_iter=1000,
                                                class_weight="balanced"))])


def _svm_rbf():
    from sklearn.decomposition import PCA
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    # PCA first: the kernel on 64 whitened components instead of thousands of pixels
    return Pipeline([("scale", StandardScaler()),
                     ("pca", PCA(n_components=64, whiten=True, svd_solver="randomized",
                                 random_state=0)),
                     ("clf", SVC(C=3.0, kernel="rbf", gamma="scale",
                                 class_weight="balanced"))])


def _svm_linear():
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    return Pipeline([("scale", StandardScaler()),
                     ("clf", LinearSVC(C=0.01, class_weight="balanced", max_iter=5000))])


def _knn():
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import Normalizer

    # cosine neighbours: L2-normalised embeddings, Euclidean distance
    return Pipeline([("norm", Normalizer()),
                     ("clf", KNeighborsClassifier(n_neighbors=15, weights="distance"))])


def _gbm():
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05,
                                          class_weight="balanced", random_state=0)


HEADS: dict[str, Head] = {h.name: h for h in [
    Head("logreg", _logreg, {"clf__C": [0.03, 0.3, 3.0]},
         "logistic regression (standardised features, balanced classes)"),
    Head("svm_rbf", _svm_rbf, {"clf__C": [1.0, 10.0]},
         "RBF SVM on 64 PCA components, sigmoid-calibrated probabilities", calibrate=True),
    Head("svm_linear", _svm_linear, {"clf__C": [0.001, 0.01, 0.1]},
         "linear SVM, sigmoid-calibrated probabilities", calibrate=True),
    Head("knn", _knn, {"clf__n_neighbors": [5, 15, 40]},
         "k nearest neighbours on L2-normalised embeddings", weight_param=None),
    Head("gbm", _gbm, {}, "histogram gradient boosting (slow on wide features)",
         weight_param="sample_weight"),
]}


def get_head(name: str) -> Head:
    """The registered head `name`, or CompError listing the known ones."""
    from comp.errors import CompError

    if name not in HEADS:
        raise CompError(f"config: unknown classic head {name!r}; choose from "
                        f"{', '.join(HEADS)}")
    return HEADS[name]


def head_estimator(head: Head, params: dict, n_rows: int, n_dims: int, calibration_cv=3):
    """`head` built with `params`; PCA and kNN sized to the data; SVMs wrapped in a sigmoid
    calibration on `calibration_cv` (a fold count or precomputed splits)."""
    from sklearn.calibration import CalibratedClassifierCV

    estimator = head.build().set_params(**params)
    if hasattr(estimator, "named_steps") and "pca" in estimator.named_steps:
        wanted = estimator.named_steps["pca"].n_components
        estimator.set_params(pca__n_components=max(1, min(wanted, n_rows - 1, n_dims)))
    neighbours = estimator.get_params().get("clf__n_neighbors")
    if neighbours is not None:  # never more neighbours than training rows
        estimator.set_params(clf__n_neighbors=max(1, min(neighbours, n_rows - 1)))
    if head.calibrate:
        estimator = CalibratedClassifierCV(estimator, cv=calibration_cv, method="sigmoid",
                                           ensemble=False)
    return estimator


def fit_weight_param(head: Head) -> str | None:
    """The fit keyword that takes sample weights; calibrated heads take none (sklearn's
    calibration cannot route them into a pipeline), so pseudo rows count fully there."""
    return None if head.calibrate else head.weight_param


class GridAverage:
    """Fitted heads, one per value of a regularisation grid, predicting the mean of their
    probabilities (a soft vote over the grid; every member saw the same rows)."""

    def __init__(self, members: list):
        self.members = members
        self.classes_ = np.asarray(members[0].classes_)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return np.mean([member.predict_proba(x) for member in self.members], axis=0)


def view_average_proba(estimator, features: np.ndarray, n_classes: int,
                       classes_seen: np.ndarray) -> np.ndarray:
    """Mean predict_proba over the views of (V, N, D) `features` that the estimator was
    trained on (`comp_views_`, default all) and on its columns (`comp_columns_`, default
    all), as (N, n_classes): classes the estimator never saw get probability 0."""
    out = np.zeros((features.shape[1], n_classes))
    if features.shape[1] == 0:
        return out
    views = getattr(estimator, "comp_views_", range(len(features)))
    columns = getattr(estimator, "comp_columns_", None)
    for view in views:
        chosen = features[view] if columns is None else features[view][:, columns]
        out[:, classes_seen] += estimator.predict_proba(chosen)
    return out / len(views)
