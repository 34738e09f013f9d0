"""Prediction sets on disk: the interface between training, ensembling and submitting.

A prediction set is a folder with
  oof.csv   id, fold, label, p_<class>...   out-of-fold probabilities of the labelled images
  test.csv  id, p_<class>...                test probabilities (fold-averaged, TTA)
  cv.json   scores of oof.csv (overall and per fold) and what produced it
Single models live in preds/<model_id>/, ensembles in ensemble/<name>/.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from comp.artifacts import read_json, write_csv, write_json
from comp.metrics import scores
from comp.workspace import CV_JSON, OOF_CSV, TEST_CSV

TEXT_COLUMNS = ("id", "label", "split", "submission_id", "hash", "name", "model_id",
                "experiment", "kind", "models", "file", "backbone", "sources")


SINGLE, ENSEMBLE = "single", "ensemble"  # cv.json "kind": one model's set, or an ensemble's


def is_ensemble(info: dict) -> bool:
    """Whether the cv.json `info` is an ensemble's (else one model's)."""
    return info.get("kind", SINGLE) == ENSEMBLE


def info_round(info: dict) -> int:
    """The pseudo-label round of the cv.json `info` (0: trained without pseudo-labels, or
    an ensemble of such models; older cv.json files have no key)."""
    return int(info.get("round", 0))


def is_keras_model(info: dict) -> bool:
    """Whether the cv.json `info` is one fine-tuned model's (a Keras model that stage=export
    can ship), not an ensemble's or a classic head's."""
    return not is_ensemble(info) and info.get("model_kind", "finetune") == "finetune"


def is_model_fits(info: dict) -> bool:
    """Whether the cv.json `info` is one model's fits over its pseudo-label rounds
    averaged (an ensemble entry that stands for that model, `fits_of` its lineage:
    pseudo.average_fits), not an ensemble of several models."""
    return is_ensemble(info) and bool(info.get("fits_of"))


def combines_models(info: dict) -> bool:
    """Whether the cv.json `info` is an ensemble of several models: the entries the
    one-standard-error rule holds to a clear lead (comp.selection.pick_entry)."""
    return is_ensemble(info) and not is_model_fits(info)


def superseded(infos: dict[str, dict], averaged: bool = False) -> set[str]:
    """The entries (name -> cv.json) that a later pseudo-label round replaced: a single
    model of round r whose `lineage` (the id its settings have without pseudo-labels) has
    a finished model of a later round, and an ensemble with such a member (a model's
    averaged fits only where its newest fit is replaced). A round's models are their
    teachers' successors: ensembles, ranking and the selection take the latest round of
    each model, and the levers table compares the two. With `averaged` (the choice of
    rank 1 under pseudo.average_fits), also a latest-round model whose fits over the
    rounds are averaged in an entry of that round (is_model_fits): the model's entry is
    then that mean; without it, every such mean."""
    latest: dict[str, int] = {}
    for name, info in infos.items():
        if not is_ensemble(info):
            lineage = info.get("lineage", name)
            latest[lineage] = max(latest.get(lineage, 0), info_round(info))
    old = {name for name, info in infos.items() if not is_ensemble(info)
           and info_round(info) < latest[info.get("lineage", name)]}
    gone = old | {name for name, info in infos.items() if combines_models(info)
                  and set(info.get("models", [])) & old}
    gone |= {name for name, info in infos.items() if is_model_fits(info)
             and info_round(info) < latest.get(info["fits_of"], 0)}
    if not averaged:
        return gone | {name for name, info in infos.items() if is_model_fits(info)}
    fits = {(info["fits_of"], info_round(info)) for name, info in infos.items()
            if is_model_fits(info) and name not in gone}
    return gone | {name for name, info in infos.items() if not is_ensemble(info)
                   and (info.get("lineage", name), info_round(info)) in fits}


def current_sets(folders: list[Path], averaged: bool = False) -> list[Path]:
    """The finished prediction sets in `folders` that no later pseudo-label round
    replaced (superseded; `averaged`: the choice of rank 1's entries, each model's
    averaged fits in place of its latest fit)."""
    infos = {folder: read_json(folder / CV_JSON) for folder in folders}
    named = {info.get("model_id") or info.get("name") or str(folder): info
             for folder, info in infos.items()}
    gone = superseded(named, averaged)
    return [folder for folder, info in infos.items()
            if (info.get("model_id") or info.get("name") or str(folder)) not in gone]


def round_zero_sets(folders: list[Path]) -> list[Path]:
    """The finished prediction sets of round 0 (models trained without pseudo-labels and
    ensembles of them) where a later pseudo-label round finished too; else none. They
    compete with the latest rounds' entries in the choice of rank 1
    (comp.selection.pick_round)."""
    rounds = {folder: info_round(read_json(folder / CV_JSON)) for folder in folders}
    if not any(rounds.values()):
        return []
    return [folder for folder, round_ in rounds.items() if round_ == 0]


def read_table(path: str | Path, text_columns: tuple[str, ...] = TEXT_COLUMNS) -> pd.DataFrame:
    """Read a CSV that comp wrote, values as written: ids, labels and other names stay
    text (`0000`, `1`, `True`, `NA` and `None` are not numbers, booleans or missing),
    no NA guessing anywhere; numeric columns (probabilities, folds, scores) are numbers.
    Use it for every CSV comp reads back (folds.csv, oof.csv, test.csv, val.csv,
    pseudo-label files, leaderboard.csv, history.csv)."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[])
    for column in frame.columns:  # numbers stay numbers; an empty cell is NaN there only
        if column in text_columns or column.startswith("label"):
            continue
        values = frame[column]
        converted = pd.to_numeric(values.where(values != "", None), errors="coerce")
        if converted.notna().sum() == (values != "").sum():
            frame[column] = converted
    return frame


def class_indices(labels: pd.Series, classes: list[str]) -> np.ndarray:
    """Labels as indices into `classes`."""
    return labels.map({c: i for i, c in enumerate(classes)}).to_numpy()


def prob_columns(classes: list[str]) -> list[str]:
    """The probability column names, p_<class>."""
    return [f"p_{c}" for c in classes]


def probs_frame(ids: list[str], probs: np.ndarray, classes: list[str], **extra) -> pd.DataFrame:
    """A frame id, [extra columns], p_<class>... ."""
    frame = pd.DataFrame({"id": list(ids), **extra})
    frame[prob_columns(classes)] = probs
    return frame


@dataclass
class PredictionSet:
    """OOF and test predictions of one model or ensemble, with its scores and info."""

    oof: pd.DataFrame
    test: pd.DataFrame
    classes: list[str]
    info: dict

    @property
    def name(self) -> str:
        """The model id of a single model, ensemble-<method> of an ensemble."""
        return self.info.get("model_id") or self.info.get("name") or "predictions"

    @property
    def gives_labels(self) -> bool:
        """False for entries that are not probabilities (rank averages: AUC only)."""
        return self.info.get("labels", True)


def cv_scores(oof: pd.DataFrame, classes: list[str]) -> dict:
    """Overall and per-fold scores of an OOF frame (id, fold, label, p_...)."""
    y = class_indices(oof["label"], classes)
    probs = oof[prob_columns(classes)].to_numpy(dtype=np.float64)
    per_fold = {
        int(k): scores(y[oof["fold"].to_numpy() == k], probs[oof["fold"].to_numpy() == k],
                       classes)
        for k in sorted(oof["fold"].unique())
    }
    return {"cv": scores(y, probs, classes), "folds": per_fold, "n_oof": len(oof)}


def write_prediction_set(folder: Path, oof: pd.DataFrame, test: pd.DataFrame,
                         classes: list[str], info: dict) -> dict:
    """Write oof.csv and test.csv, then cv.json last (its presence marks the set done).

    Call mark_unfinished first when the set's other files (an ensemble's state) are
    rewritten before this."""
    mark_unfinished(folder)
    write_csv(folder / OOF_CSV, oof)
    write_csv(folder / TEST_CSV, test)
    result = {**cv_scores(oof, classes), "classes": classes, **info}
    write_json(folder / CV_JSON, result)
    return result


def mark_unfinished(folder: Path) -> None:
    """Remove the set's cv.json before any of its files is rewritten, so that a kill in
    between leaves a set that no stage takes as done (never an old cv.json beside new
    files)."""
    (folder / CV_JSON).unlink(missing_ok=True)


def read_prediction_set(folder: Path) -> PredictionSet:
    """Read a finished prediction set (its CV scores recomputed from oof.csv where
    cv.json was written before a metric existed, e.g. qwk)."""
    info = read_json(folder / CV_JSON)
    classes = [str(c) for c in info["classes"]]
    oof = read_table(folder / OOF_CSV)
    if "qwk" not in info["cv"]:
        info = {**info, **cv_scores(oof, classes)}
    return PredictionSet(oof, read_table(folder / TEST_CSV), classes, info)
