"""stage=submit: a submission per finished model/ensemble, ranked in leaderboard.csv."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from comp.artifacts import write_json
from comp.data.prepared import load_competition
from comp.errors import CompError
from comp.log import get_logger
from comp.predictions import read_prediction_set
from comp.selection import leaderboard_uncertainty
from comp.submission import update_leaderboard, write_submission
from comp.workspace import run_dir


def run(cfg: DictConfig):
    """Write submissions for every finished prediction set of this experiment."""
    run = run_dir(cfg.runs_dir, cfg.name)
    sets = run.prediction_sets()
    if not sets:
        raise CompError(f"{run.root}: no finished models to submit; run stage=train first")
    competition = load_competition(cfg)
    folder = Path(cfg.submissions_dir)
    metric = cfg.submit.metric
    predictions = [read_prediction_set(s) for s in sets]
    labelled = [p for p in predictions if p.gives_labels]
    if not labelled:
        raise CompError(f"{run.root}: no entry gives labels; add a model or another method")
    # rank averages are not probabilities: never turned into a submission (AUC in cv.json)
    rows = [write_submission(folder, cfg.name, competition, p, metric) for p in labelled]
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

