"""stage=submit: a submission per finished model/ensemble, ranked in leaderboard.csv."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from comp.artifacts import write_json
from comp.data.folder import read_competition
from comp.errors import CompError
from comp.log import get_logger
from comp.metrics import HIGHER_IS_BETTER, scores
from comp.predictions import class_indices, prob_columns, read_prediction_set
from comp.selection import bootstrap_se, metric_value, nested_selection, paired_difference
from comp.submission import update_leaderboard, write_submission
from comp.workspace import run_dir


def run(cfg: DictConfig):
    """Write submissions for every finished prediction set of this experiment."""
    run = run_dir(cfg.runs_dir, cfg.name)
    sets = run.prediction_sets()
    if not sets:
        raise CompError(f"{run.root}: no finished models to submit; run stage=train first")
    competition = read_competition(cfg.data.dir)
    folder = Path(cfg.submissions_dir)
    metric = cfg.submit.metric
    predictions = [read_prediction_set(s) for s in sets]
    labelled = [p for p in predictions if p.info.get("labels", True)]
    if metric not in ("auc",) and not labelled:
        raise CompError(f"{run.root}: no entry gives labels; add a model or another method")
    rows = [write_submission(folder, cfg.name, competition, p, metric) for p in predictions]
    uncertainty = leaderboard_uncertainty(predictions, metric)
    for row in rows:
        row.update(uncertainty.get(row["name"], {}))
    board = update_leaderboard(folder / "leaderboard.csv", rows, metric)
    best = board[board["experiment"] == cfg.name].iloc[0]
    selected = uncertainty["__selected__"]
    write_json(run.root / "selection.json", selected)
    get_logger().info(
        "submit: rank 1 %s (%s) CV %s %.4f -> %s ; selected pipeline (best entry chosen "
        "per fold on the other folds, nested) CV accuracy %.4f ± %.4f, macro-F1 %.4f ± "
        "%.4f ; leaderboard: %s",
        best["name"], best["kind"], metric, best[f"cv_{metric}"], folder / best["file"],
        selected["cv"]["accuracy"], selected["se"]["accuracy"], selected["cv"]["macro_f1"],
        selected["se"]["macro_f1"], folder / "leaderboard.csv",
    )
    return board


def leaderboard_uncertainty(predictions: list, metric: str) -> dict:
    """Per entry: bootstrap standard errors of its CV figures and its paired difference
    (in `metric`) to the best entry; under "__selected__" the nested-selection CV."""
    classes = predictions[0].classes
    ids = predictions[0].oof["id"].tolist()
    y = class_indices(predictions[0].oof["label"], classes)
    folds = predictions[0].oof["fold"].to_numpy()
    probs = {}
    for p in predictions:
        frame = p.oof.set_index("id").loc[ids]
        probs[p.info.get("model_id") or p.info["name"]] = frame[prob_columns(classes)].to_numpy(
            dtype=float)
    labelled = {n: v for n, v in probs.items() if next(
        p for p in predictions if (p.info.get("model_id") or p.info["name"]) == n
    ).info.get("labels", True) or metric == "auc"}
    sign = 1 if HIGHER_IS_BETTER[metric] else -1
    best = max(labelled, key=lambda n: sign * metric_value(metric, y, labelled[n]))
    out = {}
    for name, p in probs.items():
        diff, diff_se = paired_difference(metric, y, p, probs[best])
        out[name] = {**{f"cv_{m}_se": round(bootstrap_se(m, y, p), 5)
                        for m in ("accuracy", "macro_f1")},
                     f"diff_{metric}_to_best": round(diff, 5), "diff_se": round(diff_se, 5)}
    selected, chosen = nested_selection(labelled, y, folds, metric)
    out["__selected__"] = {
        "metric": metric, "chosen_per_fold": chosen, "final_choice": best,
        "cv": scores(y, selected),
        "se": {m: bootstrap_se(m, y, selected) for m in ("accuracy", "macro_f1")},
    }
    return out
