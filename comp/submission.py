"""Write submission files in the sample submission's format and rank them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from comp.artifacts import write_csv
from comp.data.folder import CompetitionFolder, sample_csv
from comp.errors import CompError
from comp.metrics import AUTO_METRIC, HIGHER_IS_BETTER, scores
from comp.predictions import PredictionSet, class_indices, info_round, read_table

LEADERBOARD_METRICS = ["accuracy", "macro_f1", "balanced_accuracy", "auc", "log_loss"]


def test_probabilities(competition: CompetitionFolder, predictions: PredictionSet
                       ) -> np.ndarray:
    """(test images, classes) probabilities of `predictions` in the sample's order, joined
    to the test predictions by id (never by position).

    Predictions that lack some of the sample's ids, or that were made from other test
    images (their recorded `test_key` differs), are a CompError, never a silently
    misaligned file."""
    name = predictions.name
    recorded = predictions.info.get("test_key")
    if recorded is not None and recorded != competition.split_key("test"):
        raise CompError(
            f"{name}: its test predictions were made from other test images than "
            f"{competition.root / 'test'} (changed content, ids or order); rerun stage=train "
            "(and stage=ensemble) to predict the current test set"
        )
    test = predictions.test.assign(id=predictions.test["id"].astype(str))
    duplicated = test["id"][test["id"].duplicated()].tolist()
    if duplicated:
        raise CompError(f"{name}: test predictions list ids twice, e.g. {duplicated[:3]}; "
                        "rerun stage=train")
    wanted = competition.test["id"]
    missing = [i for i in wanted if i not in set(test["id"])]
    if missing:
        raise CompError(
            f"{name}: test predictions lack {len(missing)} of the sample submission's ids, "
            f"e.g. {missing[:3]}; the test set changed since training: rerun stage=train "
            "(and stage=ensemble)"
        )
    probs = test.set_index("id").loc[wanted, [f"p_{c}" for c in predictions.classes]]
    return probs.to_numpy(dtype=float)


def holdout_scores(competition: CompetitionFolder, predictions: PredictionSet) -> dict | None:
    """Scores (comp.metrics.scores, with `n`) of `predictions` on the test images' own
    labels where the folder gives them (competition.test_labels); None where it does not."""
    if not competition.test_labels:
        return None
    truth = class_indices(pd.Series(competition.test_labels), predictions.classes)
    return {**scores(truth, test_probabilities(competition, predictions),
                     predictions.classes), "n": len(truth)}


def submission_frame(competition: CompetitionFolder, predictions: PredictionSet) -> pd.DataFrame:
    """The submission: the sample's ids and column names verbatim, and either labels or
    class probabilities (test_probabilities)."""
    probs = test_probabilities(competition, predictions)
    columns = competition.submission_columns
    frame = pd.DataFrame({columns[0]: competition.test["submission_id"].to_numpy()})
    if competition.submits_labels:
        frame[columns[1]] = [predictions.classes[i] for i in probs.argmax(1)]
    else:
        for column, label in competition.probability_columns.items():
            frame[column] = probs[:, predictions.classes.index(label)]
    if frame[columns[0]].tolist() != competition.test["submission_id"].tolist():
        raise CompError(f"{predictions.name}: submission ids differ from the sample "
                        "submission's")
    return frame


def submission_metric(metric: str, competition: CompetitionFolder) -> str:
    """The competition's score, `submit.metric`; `auto` stands for AUC where the
    submission holds probabilities (a two-class sample of fractions, as Aerial Cactus's,
    or one column per class), which such competitions score by AUC or log loss and which
    accuracy does not rank, and for accuracy where it holds labels."""
    if metric != AUTO_METRIC:
        return metric
    return "accuracy" if competition.submits_labels else "auc"


def values_note(competition: CompetitionFolder, metric: str,
                submission_values: str = "auto") -> str | None:
    """One line on what a two-class competition's one submission column holds, why, and
    how to change it (None for other competitions): labels lose to probabilities on AUC.
    `submission_values` is data.submission_values, the setting the folder was read with."""
    columns = competition.submission_columns
    if len(columns) != 2 or len(competition.classes) != 2:
        return None
    column = columns[1]
    if competition.submits_labels:
        sample = sample_csv(competition.root)
        why = ("data.submission_values=labels" if submission_values == "labels"
               else "the sample's values are not fractions" if sample.exists()
               else f"no {sample.name}: id,label by default")
        return (f"submit: {column!r} holds labels ({why}); for an AUC-scored competition "
                "set data.submission_values=probability")
    ranked = "" if metric == "auc" else "; submit.metric=auc ranks the entries by AUC"
    return (f"submit: {column!r} holds the probability of class "
            f"{competition.probability_columns[column]!r} (data.submission_values=labels "
            f"writes labels){ranked}")


def submission_name(name: str, metric: str, score: float) -> str:
    """<model id or ensemble entry>__cv-<metric><score>.csv (in submissions/<experiment>/)"""
    short = {"accuracy": "acc", "macro_f1": "f1", "balanced_accuracy": "bacc", "auc": "auc",
             "log_loss": "logloss", "qwk": "qwk"}[metric]
    return f"{name}__cv-{short}{score:.4f}.csv"


@dataclass(frozen=True)
class SubmissionTarget:
    """Where and how one experiment's submissions are written: its `folder`
    (submissions/<experiment>/), the `competition` whose sample submission they follow,
    the CV `metric` that names them and the CV `rank_by` score that ranks them (None:
    `metric`)."""

    folder: Path
    experiment: str
    competition: CompetitionFolder
    metric: str
    rank_by: str | None = None


def write_submission(target: SubmissionTarget, predictions: PredictionSet,
                     settings: str = "") -> dict:
    """Write one submission file into `target.folder`, named by its CV `target.metric`;
    return its leaderboard row (`settings`: what tells the entry apart, see
    entry_settings), with the CV `target.rank_by` score that ranks it."""
    info, cv = predictions.info, predictions.info["cv"]
    name, folder, metric = predictions.name, target.folder, target.metric
    path = folder / submission_name(name, metric, cv[metric])
    write_csv(path, submission_frame(target.competition, predictions))  # before the old one goes
    prefix = f"{name}__cv-"  # a name is text, never a glob pattern
    for stale in folder.iterdir():
        if stale.name.startswith(prefix) and stale.name.endswith(".csv") and stale != path:
            stale.unlink()
    return {
        "experiment": target.experiment, "kind": info.get("kind", "single"), "name": name,
        "settings": settings,
        "models": " ".join(info.get("models", [name])), "round": info_round(info),
        "tuned": bool(info.get("tuned", False)),
        **{f"cv_{m}": round(cv[m], 5)
           for m in dict.fromkeys([*LEADERBOARD_METRICS, metric, target.rank_by or metric])},
        "n_oof": predictions.info.get("n_oof"), "file": path.name,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
    }


# recorded in spec.json but told by other leaderboard columns (round, tuned) or the same
# for every model of a run
_NOT_SETTINGS = {"model_id", "weights_path", "folds", "pseudo", "fold_params", "kind"}


def _flat(spec: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in spec.items():
        if prefix == "" and key in _NOT_SETTINGS:
            continue
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def entry_settings(specs: dict[str, dict], ensembles: dict[str, dict]) -> dict[str, str]:
    """In words, what tells each leaderboard entry apart from the run's others.

    `specs`: model id -> its spec.json. A model gets the settings (`train.lr=0.01`) whose
    values differ among the run's models of the same backbone (or classic entry); a
    model alone of its kind gets "". `ensembles`: entry -> its cv.json; an ensemble gets
    "<method> of <n> models", plus `+<model id>` for each member that other ensembles of
    the same method lack."""
    groups: dict[str, list[str]] = {}
    for model_id in specs:
        groups.setdefault(model_id.rsplit("-", 1)[0], []).append(model_id)
    out = {}
    for ids in groups.values():
        flat = {i: _flat(specs[i]) for i in ids}
        keys = sorted({k for f in flat.values() for k in f})
        differing = [k for k in keys if len({repr(f.get(k)) for f in flat.values()}) > 1]
        for i in ids:
            out[i] = " ".join(f"{k}={flat[i].get(k)}" for k in differing)
    for name, info in ensembles.items():
        if info.get("fits_of"):  # one model's fits (pseudo.average_fits)
            out[name] = f"mean of {info['fits_of']}'s fits in rounds 0-{info.get('round', 0)}"
            continue
        members = set(info.get("models", []))
        others = [set(o.get("models", [])) for n, o in ensembles.items()
                  if n != name and o.get("method") == info.get("method")
                  and not o.get("fits_of")]
        extra = sorted(members - set.intersection(*others)) if others else []
        out[name] = " ".join([f"{info.get('method')} of {len(members)} models",
                              *[f"+{m}" for m in extra]])
    return out


def write_leaderboard(path: Path, rows: list[dict], rank_by: str,
                      first: str | None = None) -> pd.DataFrame:
    """Write one experiment's leaderboard.csv: its `rows` ranked 1.. by the CV `rank_by`
    score (comp.selection.ranking_metric), except that the entry named `first` (the one
    comp.selection.pick_entry picks, whose choice the selected pipeline's nested CV
    scores) is rank 1."""
    board = pd.DataFrame(rows)
    column = f"cv_{rank_by}"
    board = board.sort_values(column, ascending=not HIGHER_IS_BETTER[rank_by], kind="stable")
    if first is not None and first in set(board["name"]):
        board = pd.concat([board[board["name"] == first], board[board["name"] != first]])
    board.insert(0, "rank", range(1, len(board) + 1))
    write_csv(path, board.reset_index(drop=True))
    return board.reset_index(drop=True)


def read_leaderboard(path: Path) -> pd.DataFrame:
    """leaderboard.csv, only the rows whose submission file exists beside it (ranks as
    written; empty when there is none)."""
    if not path.exists():
        return pd.DataFrame()
    board = read_table(path)
    if board.empty:
        return board
    return board[[(path.parent / str(f)).is_file() for f in board["file"]]].reset_index(
        drop=True)

