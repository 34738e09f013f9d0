"""stage=ensemble: combine finished models' OOF/test predictions; honest (nested) CV."""

from __future__ import annotations

from dataclasses import dataclass

import joblib
import numpy as np
from omegaconf import DictConfig

from comp.artifacts import atomic_path, fingerprint, read_json
from comp.crashpoints import crash_point
from comp.data.prepared import Prepared, prepare
from comp.ensemble import (
    METHODS,
    fit_method,
    member_weights,
    nested_predictions,
    weight_study_name,
)
from comp.errors import CompError
from comp.log import get_logger
from comp.metrics import scores
from comp.predictions import (
    ENSEMBLE,
    current_sets,
    info_round,
    is_keras_model,
    mark_unfinished,
    probs_frame,
    read_prediction_set,
    superseded,
    write_prediction_set,
)
from comp.workspace import CV_JSON, ENSEMBLE_STATE

FITS = "fits"  # the entry name of one model's fits averaged: ensemble-fits-<members key>


@dataclass(frozen=True)
class _Members:
    """The finished models an ensemble combines: their prediction sets, their (M, N, C)
    OOF and (M, T, C) test probabilities in folds.csv and test order, and `key`, the
    fingerprint of the folds and the members."""

    sets: list
    oof: np.ndarray
    test: np.ndarray
    key: str

    @property
    def model_ids(self) -> list[str]:
        return [s.info["model_id"] for s in self.sets]


def run(cfg: DictConfig, prepared: Prepared | None = None) -> list[dict]:
    """stage=ensemble: each method in ensemble.methods over the chosen finished single
    models, each at its latest pseudo-label round; where a later round finished (and
    ensemble.members names none), over round 0's models too, so that round 0's pick in
    the choice of rank 1 (comp.selection.pick_round) and the levers table's round 0 have
    their ensembles as the latest round has (without them a round's measured gain would
    hold the ensembles' own), and each fine-tune's fits over the rounds averaged
    (average_fits). The latest round's records. `prepared`: the run's data as stage=all
    read it (None: read here)."""
    prepared = prepare(cfg) if prepared is None else prepared
    finished = [read_prediction_set(p) for p in prepared.run.single_sets()]  # read once
    rounds = [info_round(s.info) for s in finished]
    averaged = []
    if not cfg.ensemble.members and max(rounds, default=0) > 0:
        if rounds.count(0) > 1:
            build(cfg, prepared, finished, last_round=0)
        if cfg.pseudo.average_fits:
            averaged = average_fits(cfg, prepared, finished)
    gone = superseded({s.info["model_id"]: s.info for s in finished})
    if averaged and len(finished) - len(gone) < 2:
        return averaged  # one model, fitted in several rounds: its mean is the ensemble
    return build(cfg, prepared, finished)


def has_work(cfg: DictConfig, run) -> bool:
    """Whether stage=ensemble has something to build in `run`: two or more current single
    models, or (pseudo.average_fits) a fine-tune fitted in several rounds, whose fits it
    averages even where it is the only model."""
    singles = run.single_sets()
    if len(current_sets(singles)) > 1:
        return True
    if not cfg.pseudo.average_fits or cfg.ensemble.members:
        return False
    return any(info_round(info) > 0 and _refitted(info)
               for info in (read_json(p / CV_JSON) for p in singles))


def _refitted(info: dict) -> bool:
    """Whether a single model's fits over the rounds are averaged (average_fits): a
    fine-tune in a lineage of pseudo-label rounds."""
    return bool(info.get("lineage")) and is_keras_model(info)


def average_fits(cfg: DictConfig, prepared, finished: list) -> list[dict]:
    """For each fine-tuned model fitted in more than one pseudo-label round (the same
    `lineage`), the mean of its fits in every round (pseudo.average_fits): the records of
    those entries, which stand for the model in the choice of rank 1
    (comp.predictions.superseded). Only fine-tunes: two fits of a network differ by their
    random steps as well as by the pseudo-labels, and their mean gained on every bench
    folder; a classic head fits its cached features the same way each time, so its mean
    only dilutes what the round taught it (the glyphs' heads: -0.002 to -0.010 against
    the round's fit, bench/README.md). A round trained again with other settings in the
    same run directory (pseudo.epoch_rows, pseudo.soft, ...) left a second fit of that
    round: every fit of the model is averaged, in the order of their rounds and ids, not
    one of them picked by the order the folders were read."""
    fits: dict[str, list] = {}
    for s in finished:
        if _refitted(s.info):
            fits.setdefault(s.info["lineage"], []).append(s)
    out = []
    for lineage, sets in fits.items():
        if len({info_round(s.info) for s in sets}) < 2:
            continue
        members = _members(prepared, sorted(
            sets, key=lambda s: (info_round(s.info), s.info["model_id"])))
        out.append(_build(cfg, prepared, "mean", members, fits_of=lineage))
    if out:
        get_logger().info("ensemble: %d fine-tuned model(s) fitted in several rounds: each "
                          "one's fits averaged, its entry in the choice of rank 1 "
                          "(pseudo.average_fits)", len(out))
    return out


def build(cfg: DictConfig, prepared, finished: list,
          last_round: int | None = None) -> list[dict]:
    """Each method in ensemble.methods over the chosen models of `finished` (the run's
    single models' prediction sets): each at its latest pseudo-label round, or with
    `last_round` as it stood after that round."""
    members = _members(prepared, _chosen_sets(cfg, prepared.run, finished, last_round))
    best_single = max(s.info["cv"]["accuracy"] for s in members.sets)
    # says whose, first: where a pseudo-label round finished, each round's set is built
    whose = (f" as after round {max(info_round(s.info) for s in members.sets)}"
             if any(info_round(s.info) for s in finished) else "")
    get_logger().info("ensemble: %d models%s; best single model CV accuracy %.4f",
                      len(members.sets), whose, best_single)
    return [_build(cfg, prepared, name, members) for name in cfg.ensemble.methods]


def _chosen_sets(cfg: DictConfig, run, finished: list, last_round: int | None) -> list:
    """The prediction sets of `finished` that ensemble.members names (all where it is
    empty), each model at its latest pseudo-label round (up to `last_round`) unless named
    by its id; at least two."""
    chosen = set(cfg.ensemble.members)
    sets = [s for s in finished
            if last_round is None or info_round(s.info) <= last_round]
    known = {s.info["model_id"] for s in sets} | {s.info.get("backbone") for s in sets}
    unknown = sorted(chosen - known)
    if unknown:
        raise CompError(f"config: ensemble.members has {unknown[0]!r}, neither a finished "
                        f"model id nor its backbone; finished: {sorted(known - {None})}")
    gone = superseded({s.info["model_id"]: s.info for s in sets})
    sets = [s for s in sets if s.info["model_id"] in chosen
            or (s.info["model_id"] not in gone
                and (not chosen or s.info.get("backbone") in chosen))]
    if len(sets) < 2:
        raise CompError(f"{run.preds_root}: ensembling needs at least two finished models, "
                        f"found {len(sets)}; train more backbones or set ensemble.members")
    return sets


def _members(prepared, sets: list) -> _Members:
    ids, test_ids = prepared.folds["id"].tolist(), prepared.competition.test["id"].tolist()
    columns = [f"p_{c}" for c in prepared.competition.classes]
    oof = np.stack([s.oof.set_index("id").loc[ids, columns].to_numpy() for s in sets])
    test = np.stack([s.test.set_index("id").loc[test_ids, columns].to_numpy() for s in sets])
    key = fingerprint([prepared.folds_key, [s.info["model_id"] for s in sets]])
    return _Members(sets, oof, test, key)


def _build(cfg: DictConfig, prepared, name: str, members: _Members,
           fits_of: str | None = None) -> dict:
    """Fit the method `name` on the members' OOF, write its state and its (nested) OOF
    and test predictions; the prediction set's record. `fits_of`: the members are one
    model's fits over pseudo-label rounds, this lineage's (entry `ensemble-fits-...`)."""
    classes, y = prepared.competition.classes, prepared.labels
    folds = prepared.folds["fold"].to_numpy()
    method = _method(cfg, prepared, name, members.key)
    state = fit_method(method, members.oof, y, cfg.tune.seed)
    honest = nested_predictions(method, members.oof, y, folds, cfg.tune.seed)
    entry = FITS if fits_of else name
    info = _info(name, entry, method, state, members, prepared)
    if fits_of:
        info["fits_of"] = fits_of
    target = prepared.run.ensemble_dir(entry, members.key)
    mark_unfinished(target)
    with atomic_path(target / ENSEMBLE_STATE, suffix=".joblib") as tmp:
        joblib.dump(state, tmp)
    crash_point(f"ensemble:{name}")  # tests: a kill between an ensemble's files
    oof_frame = probs_frame(prepared.folds["id"].tolist(), honest, classes, fold=folds,
                            label=prepared.folds["label"])
    test_frame = probs_frame(prepared.competition.test["id"].tolist(),
                             method.apply(members.test, state), classes)
    result = write_prediction_set(target, oof_frame, test_frame, classes, info)
    cv = result["cv"]
    get_logger().info(
        "ensemble: %-9s nested CV accuracy %.4f macro-F1 %.4f AUC %.4f "
        "(in-sample accuracy %.4f)%s", name, cv["accuracy"], cv["macro_f1"], cv["auc"],
        info["cv_in_sample"]["accuracy"], "" if method.labels else "; AUC only")
    return result


def _info(name: str, entry: str, method, state, members: _Members, prepared) -> dict:
    """The cv.json record of the ensemble by method `name` named `ensemble-<entry>-<key>`,
    before its CV scores are added."""
    model_ids = members.model_ids
    weights = member_weights(method, state, len(members.sets))
    return {
        "kind": ENSEMBLE, "name": f"ensemble-{entry}-{members.key}", "method": name,
        "labels": method.labels, "models": model_ids,
        "round": max(info_round(s.info) for s in members.sets),
        "repeats": prepared.n_repeats,
        "weights": None if weights is None else dict(zip(model_ids, weights.tolist(),
                                                         strict=True)),
        "cv_in_sample": scores(prepared.labels, method.apply(members.oof, state),
                               prepared.competition.classes),
    }


def _method(cfg: DictConfig, prepared, name: str, members_key: str):
    method = METHODS[name]
    if name != "optuna":
        return method
    # its own studies in the tuning storage: one per outer fold and one on all rows
    from comp.tuning.search import storage_url
    from comp.tuning.studies import optuna_storage

    storage = optuna_storage(storage_url(cfg, prepared))

    def fit(members, y, seed):
        rows = fingerprint([members.shape, y.tolist(), float(members.sum())])
        study = weight_study_name(cfg.name, members_key, rows)
        return method.fit(members, y, seed, n_trials=cfg.ensemble.optuna_trials,
                          storage=storage, study_name=study)

    return type(method)(method.name, fit, method.apply, method.labels)

