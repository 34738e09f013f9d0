"""Write submission files in the sample submission's format and rank them."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from comp.artifacts import write_csv
from comp.data.folder import Competition
from comp.errors import CompError
from comp.metrics import HIGHER_IS_BETTER
from comp.predictions import PredictionSet

LEADERBOARD_METRICS = ["accuracy", "macro_f1", "balanced_accuracy", "auc", "log_loss"]


def submission_frame(competition: Competition, predictions: PredictionSet) -> pd.DataFrame:
    """The submission: the sample's id column and either labels or class probabilities."""
    test = predictions.test.set_index("id").loc[competition.test["id"]]
    id_column = competition.submission_columns[0]
    probs = test[[f"p_{c}" for c in predictions.classes]].to_numpy()
    frame = pd.DataFrame({id_column: competition.test["id"].to_numpy()})
    if competition.submission_kind == "label":
        frame[competition.submission_columns[1]] = [predictions.classes[i] for i in probs.argmax(1)]
    else:
        for column in competition.submission_columns[1:]:
            frame[column] = probs[:, predictions.classes.index(column)]
    return frame


def submission_name(experiment: str, name: str, metric: str, score: float) -> str:
    """<experiment>__<model or ensemble>__cv<metric><score>.csv"""
    short = {"accuracy": "acc", "macro_f1": "f1", "balanced_accuracy": "bacc", "auc": "auc",
             "log_loss": "logloss"}[metric]
    return f"{experiment}__{name}__cv-{short}{score:.4f}.csv"


def write_submission(folder: Path, experiment: str, competition: Competition,
                     predictions: PredictionSet, metric: str) -> dict:
    """Write one submission file; return its leaderboard row."""
    if metric not in HIGHER_IS_BETTER:
        raise CompError(f"config: submit.metric={metric!r}; use one of {sorted(HIGHER_IS_BETTER)}")
    info, cv = predictions.info, predictions.info["cv"]
    name = info.get("model_id") or info.get("name")
    path = folder / submission_name(experiment, name, metric, cv[metric])
    for stale in folder.glob(f"{experiment}__{name}__cv-*.csv"):
        if stale != path:
            stale.unlink()
    write_csv(path, submission_frame(competition, predictions))
    return {
        "experiment": experiment, "kind": info.get("kind", "single"), "name": name,
        "models": " ".join(info.get("models", [name])), "round": info.get("round", 0),
        "tuned": bool(info.get("tuned", False)),
        **{f"cv_{m}": round(cv[m], 5) for m in LEADERBOARD_METRICS},
        "n_oof": predictions.info.get("n_oof"), "file": path.name,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
    }


def update_leaderboard(path: Path, rows: list[dict], metric: str) -> pd.DataFrame:
    """Upsert `rows` (by file) into leaderboard.csv, ranked by the CV `metric`."""
    board = pd.read_csv(path) if path.exists() else pd.DataFrame()
    new = pd.DataFrame(rows)
    if not board.empty:
        keys = set(zip(new["experiment"], new["name"], strict=True))
        keep = [(e, n) not in keys for e, n in zip(board["experiment"], board["name"], strict=True)]
        board = board[keep]
    board = pd.concat([board, new], ignore_index=True).drop(columns="rank", errors="ignore")
    column = f"cv_{metric}"
    board = board.sort_values(column, ascending=not HIGHER_IS_BETTER[metric], kind="stable")
    board.insert(0, "rank", range(1, len(board) + 1))
    write_csv(path, board)
    return board

