"""stage=report: runs/<name>/report/index.html with plots of the run."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from comp.artifacts import read_json
from comp.data.prepared import Prepared, prepare
from comp.errors import CompError
from comp.log import get_logger
from comp.report import build_report
from comp.selection import selection_headline
from comp.submission import read_leaderboard
from comp.workspace import leaderboard_path


def run(cfg: DictConfig, prepared: Prepared | None = None) -> Path:
    """Build the report from the run directory and the leaderboard. `prepared`: the run's
    data as stage=all read it (None: read here)."""
    prepared = prepare(cfg) if prepared is None else prepared
    board_path = leaderboard_path(cfg.submissions_dir, cfg.name)
    if not board_path.exists():
        raise CompError(f"{board_path}: no leaderboard yet; run stage=submit first")
    board = read_leaderboard(board_path)
    paths = dict(zip(prepared.competition.train["id"], prepared.competition.train["path"],
                     strict=True))
    db = prepared.run.optuna_db
    storage = cfg.tune.storage or (f"sqlite:///{db.resolve()}" if db.exists() else None)
    selection = prepared.run.selection_json
    headline = selection_headline(read_json(selection)) if selection.exists() else None
    page = build_report(prepared.run, board, paths, storage, headline)
    get_logger().info("report: %s", page)
    return page
