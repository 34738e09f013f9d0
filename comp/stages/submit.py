"""stage=submit: a submission per finished model/ensemble, ranked in leaderboard.csv."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from comp.errors import CompError
from comp.log import get_logger
from comp.predictions import read_prediction_set
from comp.stages.prepare import load_competition
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
    rows = [write_submission(folder, cfg.name, competition, read_prediction_set(s), metric)
            for s in sets]
    board = update_leaderboard(folder / "leaderboard.csv", rows, metric)
    best = board[board["experiment"] == cfg.name].iloc[0]
    get_logger().info(
        "submit: best %s (%s) CV %s %.4f -> %s ; leaderboard: %s",
        best["name"], best["kind"], metric, best[f"cv_{metric}"], folder / best["file"],
        folder / "leaderboard.csv",
    )
    return board
