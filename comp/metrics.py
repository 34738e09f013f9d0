"""Scores of class-probability predictions, all from scikit-learn (imported when a score
is computed, so the config can name the metrics without it)."""

from __future__ import annotations

import numpy as np

HIGHER_IS_BETTER = {
    "accuracy": True, "balanced_accuracy": True, "macro_f1": True, "auc": True, "log_loss": False,
    "qwk": True,
}
AUTO_METRIC = "auto"  # submit.metric: the competition's score from its submission's kind
# how a log line names each (the key itself where it is not here)
METRIC_NAMES = {"auc": "AUC", "macro_f1": "macro-F1", "log_loss": "log loss",
                "balanced_accuracy": "balanced accuracy", "qwk": "QWK"}
# what a tuning trial can score by: qwk needs the class names, so it is a submission metric
TUNING_METRICS = tuple(name for name in HIGHER_IS_BETTER if name != "qwk")


def ordinal_order(classes: list[str]) -> np.ndarray:
    """The class indices from lowest to highest grade, for quadratic weighted kappa: by
    numeric value when every class name is a number ("2" before "10"), else in the
    classes' sorted order."""
    try:
        values = [float(c) for c in classes]
    except ValueError:
        return np.argsort(np.array(classes, dtype=object), kind="stable")
    return np.argsort(values, kind="stable")


def quadratic_kappa(y_true: np.ndarray, predicted: np.ndarray, classes: list[str]) -> float:
    """Quadratic weighted kappa (Cohen's kappa, quadratic weights, scikit-learn) of class
    indices `predicted` against `y_true`, on the grades of `ordinal_order(classes)`."""
    from sklearn.metrics import cohen_kappa_score

    return float(cohen_kappa_score(y_true, predicted, labels=ordinal_order(classes),
                                   weights="quadratic"))


def macro_auc(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Macro one-vs-rest ROC AUC over the classes present in `y_true` (nan if < 2 present).

    Each class's AUC is the Mann-Whitney statistic of its column (ties ranked by their
    average rank): scikit-learn's `roc_auc_score` to float rounding (a test checks it), at
    a fraction of its cost, which counts where a bootstrap computes it hundreds of times
    (comp.selection: the standard errors and paired differences of an AUC ranking)."""
    from scipy.stats import rankdata

    y_true = np.asarray(y_true)
    present = np.unique(y_true)
    if len(present) < 2:
        return float("nan")
    aucs = []
    for c in present:
        positive = y_true == c
        n_pos, n_neg = int(positive.sum()), int((~positive).sum())
        ranks = rankdata(probs[:, c])
        aucs.append((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return float(np.mean(aucs))


def scores(y_true: np.ndarray, probs: np.ndarray,
           classes: list[str] | None = None) -> dict[str, float]:
    """accuracy, balanced_accuracy, macro_f1, auc (macro one-vs-rest) and log_loss; with
    the class names `classes` (the columns of `probs`), also qwk (quadratic_kappa)."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, log_loss

    y_true = np.asarray(y_true)
    predicted = probs.argmax(axis=1)
    labels = np.arange(probs.shape[1])
    clipped = np.clip(probs, 1e-7, 1)
    kappa = {} if classes is None else {"qwk": quadratic_kappa(y_true, predicted, classes)}
    return {
        "accuracy": float(accuracy_score(y_true, predicted)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, predicted)),
        "macro_f1": float(f1_score(y_true, predicted, labels=labels, average="macro",
                                   zero_division=0)),
        "auc": macro_auc(y_true, probs),
        "log_loss": float(log_loss(y_true, clipped / clipped.sum(1, keepdims=True),
                                   labels=labels)),
        **kappa,
    }
