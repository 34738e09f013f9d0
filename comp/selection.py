"""Choosing the final submission honestly, and the uncertainty of every CV figure.

Picking the best of many entries by their OOF score flatters the winner: its CV is the
maximum of noisy estimates. The honest figure of "pick the best entry" is nested: for
each outer fold, the entry that is best on the other folds' OOF rows is scored on the
held fold; the held folds' predictions together are the selected pipeline's OOF.

Standard errors and paired differences come from a bootstrap over rows (images); the
paired difference resamples the same rows for both entries, so shared hard images cancel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from comp.metrics import HIGHER_IS_BETTER, METRIC_NAMES, macro_auc, quadratic_kappa, scores
from comp.predictions import class_indices, combines_models, prob_columns

FAST_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "log_loss")
HEADLINE_METRICS = ("accuracy", "macro_f1")  # the selected pipeline's figures, always shown


def shown_metrics(metric: str | None) -> tuple[str, ...]:
    """The scores a line or table gives: `metric` (the one that ranks) first, then
    HEADLINE_METRICS."""
    return tuple(m for m in dict.fromkeys((metric, *HEADLINE_METRICS)) if m is not None)


@dataclass(frozen=True)
class Bootstrap:
    """Resamples of the rows: `n` of them (a quarter as many for the metrics outside
    FAST_METRICS), drawn with `seed`."""

    n: int = 400
    seed: int = 0

    def draws(self, metric: str, n_rows: int) -> np.ndarray:
        """(resamples, n_rows) row indices, drawn with replacement."""
        rng = np.random.default_rng(self.seed)
        count = self.n if metric in FAST_METRICS else self.n // 4
        return rng.integers(0, n_rows, size=(count, n_rows))


def ranking_metric(metric: str, rank_by: str) -> str:
    """The CV score that ranks entries and so picks rank 1 (submit.rank_by): `rank_by`
    itself, or for `auto` the competition's `metric`.

    log_loss is the option for a steadier choice: it moves with every probability, where
    accuracy on a few hundred OOF rows ties or differs by one image. It is not the
    default because it also favours well-calibrated mean ensembles over a more accurate
    single model (bench/README.md, "Choosing rank 1": better on digits, worse on wbc)."""
    return metric if rank_by == "auto" else rank_by


def best_entry(cv_scores: dict[str, dict], rank_by: str) -> str:
    """The name whose CV scores (name -> {metric: value}, as cv.json's "cv") are best by
    `rank_by`; the first listed on a tie."""
    sign = 1 if HIGHER_IS_BETTER[rank_by] else -1
    return max(cv_scores, key=lambda name: sign * cv_scores[name][rank_by])


def metric_value(metric: str, y: np.ndarray, probs: np.ndarray,
                 classes: list[str] | None = None) -> float:
    """One score of `probs` against `y` (see comp.metrics.scores); qwk needs the class
    names `classes` (the grades' order)."""
    if metric in FAST_METRICS:
        return _fast(metric, y, probs)
    if metric == "auc":  # not all of scores(): an AUC ranking bootstraps it per entry
        return macro_auc(y, probs)
    if metric == "qwk":
        if classes is None:
            raise ValueError("qwk needs the class names (classes=...)")
        return quadratic_kappa(y, probs.argmax(1), classes)
    return scores(y, probs)[metric]


def _fast(metric: str, y: np.ndarray, probs: np.ndarray) -> float:
    n_classes = probs.shape[1]
    if metric == "log_loss":
        clipped = np.clip(probs, 1e-7, 1)
        clipped = clipped / clipped.sum(1, keepdims=True)
        return float(-np.mean(np.log(clipped[np.arange(len(y)), y])))
    predicted = probs.argmax(1)
    if metric == "accuracy":
        return float(np.mean(predicted == y))
    true_count = np.bincount(y, minlength=n_classes)
    pred_count = np.bincount(predicted, minlength=n_classes)
    hits = np.bincount(y[predicted == y], minlength=n_classes)
    if metric == "balanced_accuracy":
        present = true_count > 0
        return float(np.mean(hits[present] / true_count[present]))
    denominator = true_count + pred_count
    f1 = np.divide(2 * hits, denominator, out=np.zeros(n_classes), where=denominator > 0)
    return float(f1.mean())


def bootstrap_se(metric: str, y: np.ndarray, probs: np.ndarray, n: int = 400,
                 seed: int = 0, classes: list[str] | None = None) -> float:
    """Standard error of the metric by a bootstrap over rows."""
    values = []
    for rows in Bootstrap(n, seed).draws(metric, len(y)):
        try:
            values.append(metric_value(metric, y[rows], probs[rows], classes))
        except ValueError:  # a resample without some class (AUC)
            continue
    return float(np.nanstd(values, ddof=1)) if len(values) > 1 else float("nan")


def paired_difference(metric: str, y: np.ndarray, probs: np.ndarray, reference: np.ndarray,
                      classes: list[str] | None = None,
                      bootstrap: Bootstrap = Bootstrap()) -> tuple[float, float]:
    """(metric(probs) - metric(reference), its bootstrap standard error on shared rows)."""
    difference = (metric_value(metric, y, probs, classes)
                  - metric_value(metric, y, reference, classes))
    values = []
    for rows in bootstrap.draws(metric, len(y)):
        try:
            values.append(metric_value(metric, y[rows], probs[rows], classes)
                          - metric_value(metric, y[rows], reference[rows], classes))
        except ValueError:
            continue
    return float(difference), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def pick_entry(candidates: dict[str, np.ndarray], y: np.ndarray, rank_by: str,
               classes: list[str] | None = None, ensembles: frozenset[str] = frozenset()
               ) -> str:
    """The entry "pick the best" chooses on these rows: the best by `rank_by`, except that
    an ensemble (a name in `ensembles`) is taken only where it beats the best single entry
    by more than one paired bootstrap standard error; else that single entry (the
    one-standard-error rule: the simpler entry unless the evidence for the other is
    clear). On 2,000 MNIST digits the Optuna ensemble led small_cnn by an image or two on
    the other folds in two folds and lost there (ensembling -0.0025 ± 0.0011 with the
    plain best); with the rule those folds keep small_cnn, while on the glyphs the
    ensemble's lead (+0.0035 ± 0.0023) keeps it (bench/README.md, "one-SE rule")."""
    value = {name: metric_value(rank_by, y, probs, classes)
             for name, probs in candidates.items()}
    best = best_entry({name: {rank_by: v} for name, v in value.items()}, rank_by)
    singles = [name for name in candidates if name not in ensembles]
    if best not in ensembles or not singles:
        return best
    single = best_entry({name: {rank_by: value[name]} for name in singles}, rank_by)
    gain, se = paired_difference(rank_by, y, candidates[best], candidates[single], classes)
    sign = 1 if HIGHER_IS_BETTER[rank_by] else -1
    return best if sign * gain > se else single


def pick_round(candidates: dict[str, np.ndarray], earlier: dict[str, np.ndarray],
               y: np.ndarray, rank_by: str, classes: list[str] | None = None,
               ensembles: frozenset[str] = frozenset(), margin: float | None = None) -> str:
    """The entry chosen where pseudo-label rounds ran: `candidates` are the latest rounds'
    entries (each model at its latest round), `earlier` round 0's. The latest rounds'
    pick (pick_entry) is taken where it beats round 0's pick by more than `margin`
    paired bootstrap standard errors of `rank_by` on these rows, else round 0's pick;
    `margin` None, or no `earlier` entries: the latest rounds' pick. On wbc the round's
    near-tied models made the per-fold pick flip among them (the selected pipeline -0.017
    on average over five runs, four negative); with a margin of half a standard error
    -0.004, while the glyphs, mnist2k and digits keep most of their gains
    (bench/README.md, "A pseudo-label round must earn its place")."""
    latest = pick_entry(candidates, y, rank_by, classes, ensembles)
    if margin is None or not earlier or set(earlier) == set(candidates):
        return latest
    first = pick_entry(earlier, y, rank_by, classes, ensembles)
    if first == latest:
        return latest
    gain, se = paired_difference(rank_by, y, candidates[latest], earlier[first], classes)
    sign = 1 if HIGHER_IS_BETTER[rank_by] else -1
    return latest if sign * gain > margin * se else first


def nested_selection(candidates: dict[str, np.ndarray], y: np.ndarray, folds: np.ndarray,
                     rank_by: str, classes: list[str] | None = None,
                     ensembles: frozenset[str] = frozenset(),
                     earlier: dict[str, np.ndarray] | None = None,
                     margin: float | None = None) -> tuple[np.ndarray, dict[int, str]]:
    """OOF of the procedure "pick the entry" (pick_entry: the best OOF `rank_by` score,
    an ensemble among `ensembles` only by a clear margin; with round 0's entries
    `earlier`, pick_round's choice between the two rounds' picks): each fold's rows come
    from the entry picked on the other folds' rows. Returns the OOF and the entry chosen
    for each fold."""
    earlier = earlier or {}
    every = {**earlier, **candidates}
    out = np.zeros_like(next(iter(candidates.values())))
    chosen = {}
    for fold in np.unique(folds):
        other = folds != fold
        best = pick_round({name: probs[other] for name, probs in candidates.items()},
                          {name: probs[other] for name, probs in earlier.items()},
                          y[other], rank_by, classes, ensembles, margin)
        out[~other] = every[best][~other]
        chosen[int(fold)] = best
    return out, chosen


def leaderboard_uncertainty(predictions: list, metric: str, rank_by: str,
                            earlier: list = (), margin: float | None = None) -> dict:
    """Per entry: bootstrap standard errors of its CV figures and its paired difference
    (in `metric`) to the entry picked by `rank_by` (rank 1); under "__selected__" the
    nested CV of that choice. `earlier`: round 0's prediction sets where pseudo-label
    rounds ran (`predictions` hold each model at its latest round), which compete with
    the latest rounds' entries as pick_round says (`margin`)."""
    classes = predictions[0].classes
    ids = predictions[0].oof["id"].tolist()
    y = class_indices(predictions[0].oof["label"], classes)
    folds = predictions[0].oof["fold"].to_numpy()
    every = {p.name: p for p in [*earlier, *predictions]}
    probs = {name: p.oof.set_index("id").loc[ids, prob_columns(classes)].to_numpy(float)
             for name, p in every.items()}

    def labelled(sets) -> dict[str, np.ndarray]:
        return {p.name: probs[p.name] for p in sets if p.gives_labels or metric == "auc"}

    latest, first = labelled(predictions), labelled(earlier)
    ensembles = frozenset(name for name, p in every.items() if combines_models(p.info))
    best = pick_round(latest, first, y, rank_by, classes, ensembles, margin)
    out = {}
    for name in {p.name for p in predictions} | {best}:
        diff, diff_se = paired_difference(metric, y, probs[name], probs[best], classes=classes)
        out[name] = {**{f"cv_{m}_se": round(bootstrap_se(m, y, probs[name]), 5)
                        for m in ("accuracy", "macro_f1")},
                     f"diff_{metric}_to_best": round(diff, 5), "diff_se": round(diff_se, 5)}
    selected, chosen = nested_selection(latest, y, folds, rank_by, classes, ensembles,
                                        first, margin)
    out["__selected__"] = {
        "metric": metric, "rank_by": rank_by, "chosen_per_fold": chosen, "final_choice": best,
        "cv": scores(y, selected, classes),
        "se": {m: bootstrap_se(m, y, selected, classes=classes)
               for m in shown_metrics(metric)},
    }
    if first and margin is not None:
        out["__selected__"]["round_margin"] = margin
    return out


def selection_headline(selected: dict) -> str:
    """One short line of the selected pipeline's nested CV (selection.json), e.g.
    `selected pipeline (nested CV over 5 folds): accuracy 0.8660 ± 0.0240, macro-F1
    0.8480 ± 0.0340; picks ensemble-mean-1a2b3c4d`, and its pick's scores on the labelled
    test images where the folder has them (`holdout`, comp.stages.submit)."""
    cv, se = selected["cv"], selected["se"]
    shown = [m for m in shown_metrics(selected.get("metric")) if m in se]
    figures = ", ".join(f"{METRIC_NAMES.get(m, m)} {cv[m]:.4f} ± {se[m]:.4f}" for m in shown)
    line = (f"selected pipeline (nested CV over {len(selected['chosen_per_fold'])} folds): "
            f"{figures}; picks {selected['final_choice']}")
    held_out = selected.get("holdout")  # the test images' own labels (test/<class>/)
    if held_out:
        line += "; on the {} labelled test images: {}".format(held_out["n"], ", ".join(
            f"{METRIC_NAMES.get(m, m)} {held_out[m]:.4f}" for m in shown if m in held_out))
    return line
