"""Tuning a backbone: per-unit Optuna studies whose trials fit on cached features.

A unit is an outer fold of one repeat (unit u = repeat * K + fold; the folds with
data.repeats=1). Each trial is scored by an inner stratified group K-fold of the unit's
training rows; runs/<name>/tuned/<backbone>.yaml records each unit's best settings, and
`params=best` trains each unit with its own (tuned_spec).
"""

from __future__ import annotations

import gc
import os
import socket
import time
from dataclasses import replace
from functools import partial

import numpy as np
import optuna
from omegaconf import DictConfig

from comp.artifacts import write_yaml
from comp.config import mask_url
from comp.crashpoints import crash_point
from comp.data.prepared import Prepared
from comp.errors import CompError
from comp.log import get_logger, progress, quiet_tensorflow, unit_done
from comp.models.registry import Backbone, get_backbone
from comp.models.spec import ModelSpec, make_spec, native_side, with_params
from comp.training.trainer import FeaturedModel, RowSplit, fit_module, fold_data
from comp.tuning.space import default_trial, suggest
from comp.tuning.studies import (
    StudyLock,
    counted_trials,
    inner_splits,
    open_study,
    quiet_optuna,
    work_on,
)


def storage_url(cfg: DictConfig, prepared: Prepared) -> str:
    """tune.storage, or the run directory's SQLite file."""
    return cfg.tune.storage or f"sqlite:///{prepared.run.optuna_db.resolve()}"


def study_name(cfg: DictConfig, backbone: str, fold: int, folds_key: str) -> str:
    """<experiment>-<backbone>-<folds fingerprint>-fold<u> (u: the unit): a study is
    never reused on other folds, repeats or data."""
    return f"{cfg.name}-{backbone}-{folds_key}-fold{fold}"


def tuned_backbones(cfg: DictConfig) -> list[str]:
    """tune.backbones, or the first entry of backbones."""
    chosen = list(cfg.tune.backbones) or list(cfg.backbones)[:1]
    unknown = [b for b in chosen if b not in cfg.backbones]
    if unknown:
        raise CompError(f"config: tune.backbones has {unknown}, not in backbones="
                        f"{list(cfg.backbones)}")
    return chosen


def tune_backbone(cfg: DictConfig, prepared: Prepared, backbone_name: str) -> dict:
    """Bring each unit's study of `backbone_name` to tune.n_trials finished trials
    (Optuna's own logging kept to warnings for the while: quiet_optuna)."""
    quiet_tensorflow()  # the trials train in this process
    with quiet_optuna():
        return _tune_backbone(cfg, prepared, backbone_name)


def _tune_backbone(cfg: DictConfig, prepared: Prepared, backbone_name: str) -> dict:
    backbone = get_backbone(backbone_name)
    native = native_side(prepared.competition.train["path"].tolist())
    base = make_spec(cfg, backbone_name, prepared.folds_key, native=native)
    base = with_params(base, {"train.epochs": cfg.tune.epochs})
    names = list(cfg.tune.params)
    started = time.time()
    studies = _open_studies(cfg, prepared, backbone_name, base, names)
    objective = _objective(cfg, prepared, base, backbone, names)
    # first every study's open trials, then wait for other workers' running ones (and
    # retry any whose worker died), so that every worker ends with the same summary
    for wait in (False, True):
        for fold, study, lock, splits in studies:
            already = counted_trials(study.get_trials(deepcopy=False))
            with progress(total=cfg.tune.n_trials, initial=min(already, cfg.tune.n_trials),
                          desc=f"tune {backbone_name} fold {fold}") as bar:
                work_on(study, partial(objective, fold=fold, splits=splits),
                        cfg.tune.n_trials, lock, wait, on_trial=partial(_trial_done, bar))
    summary = {}
    for fold, study, lock, *_ in studies:
        lock.close()
        summary[str(fold)] = _fold_summary(study)
    _write_and_report(cfg, prepared, backbone_name, summary, time.time() - started)
    return summary


def _open_studies(cfg: DictConfig, prepared: Prepared, backbone_name: str, base: ModelSpec,
                  names: list[str]) -> list[tuple]:
    """(unit, study, its lock, inner splits of the unit's training rows) per unit; a new
    study gets the default settings as its first trial."""
    backbone = get_backbone(backbone_name)
    labels = prepared.labels
    groups = prepared.folds["group"].to_numpy()
    studies = []
    for fold in range(prepared.n_units):
        study = open_study(study_name(cfg, backbone_name, fold, prepared.folds_key),
                           storage_url(cfg, prepared),
                           cfg.tune.metric, cfg.tune.pruner, cfg.tune.seed + fold,
                           cfg.tune.heartbeat_grace)
        lock = StudyLock(storage_url(cfg, prepared), study.study_name)
        with lock:  # one default trial however many workers start together
            if cfg.tune.n_trials > 0 and not study.get_trials(deepcopy=False):
                study.enqueue_trial(default_trial(base, names, backbone))
        splits = inner_splits(prepared.unit_train_rows(fold), labels, groups,
                              cfg.tune.inner_folds, cfg.tune.seed + fold)
        studies.append((fold, study, lock, splits))
    return studies


def _objective(cfg: DictConfig, prepared: Prepared, base: ModelSpec, backbone: Backbone,
               names: list[str]):
    """objective(trial, fold, splits): the trial's mean inner-CV score on the unit `fold`;
    the featured models (one per features key) are shared by all the trials."""
    classes = prepared.competition.classes
    labels = prepared.labels
    featured_models: dict[str, FeaturedModel] = {}

    def objective(trial: optuna.Trial, fold: int, splits) -> float:
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        spec = with_params(base, suggest(trial, backbone, names))
        key = spec.features_key()
        if key not in featured_models:
            featured_models[key] = FeaturedModel(spec, prepared)
        featured = featured_models[key]
        metric = cfg.tune.metric
        values = []
        # inner stratified group K-fold of the outer fold's training rows, each inner fit
        # scored on its held rows: at the last epoch when the folds train that way (the
        # same rule as the final fit), else at the best epoch on those rows
        if spec.train.epoch_choice != "last":
            spec = with_params(spec, {"train.epoch_choice": "outer"})
        for step, (fit_rows, held) in enumerate(splits):
            data = fold_data(featured, spec, RowSplit(labels, len(classes), fit_rows, held))
            model = featured.new_head(spec, len(classes), spec.train.seed + fold)
            if step == 0:
                crash_point(f"trial:{trial.number}")  # tests: COMP_CRASH_AT=trial:<n> dies
            history, best_epoch = fit_module().fit_fold(model, data, spec.train,
                                           spec.train.seed + fold, compute=spec.compute)
            values.append(float(history[f"val_{metric}"][best_epoch]))
            del model
            trial.report(float(np.mean(values)), step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        gc.collect()  # the trial's models go now, not at the end of the study
        return float(np.mean(values))

    return objective


def _trial_done(bar, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    bar.update(1)
    seconds = (trial.duration.total_seconds() if trial.duration is not None else float("nan"))
    unit_done("trial", study=study.study_name, trial=trial.number,
              value=trial.value if trial.value is not None else trial.state.name.lower(),
              seconds=round(seconds, 1))


def _fold_summary(study: optuna.Study) -> dict:
    states = [t.state.name.lower() for t in study.get_trials(deepcopy=False)]
    completed = [t for t in study.get_trials(deepcopy=False)
                 if t.state == optuna.trial.TrialState.COMPLETE]
    if not completed:
        return {"study": study.study_name, "trials": {s: states.count(s) for s in set(states)},
                "best": None}
    best = study.best_trial
    default = study.get_trials(deepcopy=False)[0]
    return {
        "study": study.study_name,
        "trials": {s: states.count(s) for s in sorted(set(states))},
        "best_value": best.value, "best_trial": best.number,
        "default_value": default.value, "best": best.params,
    }


def _write_and_report(cfg, prepared, backbone_name, summary, seconds) -> None:
    path = prepared.run.tuned_yaml(backbone_name)
    write_yaml(path, {"backbone": backbone_name, "metric": cfg.tune.metric,
                      "storage": mask_url(storage_url(cfg, prepared)), "folds": summary})
    log = get_logger()
    for fold, item in summary.items():
        if item["best"] is None:
            log.info("tune: %s fold %s: no completed trial (%s)", backbone_name, fold,
                     item["trials"])
            continue
        log.info("tune: %s fold %s: best inner %s %.4f (defaults %s) trials %s; %s",
                 backbone_name, fold, cfg.tune.metric, item["best_value"],
                 "n/a" if item["default_value"] is None else f"{item['default_value']:.4f}",
                 item["trials"], item["best"])
    log.info("tune: %s done in %.0f s -> %s (train with params=best)", backbone_name,
             seconds, path)


def tuned_spec(cfg: DictConfig, prepared: Prepared, backbone_name: str,
               pseudo: dict | None) -> ModelSpec:
    """The spec of `backbone_name` with each unit's best tuned settings (params=best)."""
    base = make_spec(cfg, backbone_name, prepared.folds_key, pseudo,
                     native=native_side(prepared.competition.train["path"].tolist()))
    fold_params = {}
    for fold in range(prepared.n_units):
        with quiet_optuna():  # no "Using an existing study" line per unit
            study = open_study(study_name(cfg, backbone_name, fold, prepared.folds_key),
                               storage_url(cfg, prepared),
                               cfg.tune.metric, cfg.tune.pruner, cfg.tune.seed + fold,
                               cfg.tune.heartbeat_grace)
        try:
            fold_params[str(fold)] = study.best_trial.params
        except ValueError:
            raise CompError(f"study {study.study_name}: no completed trial; run stage=tune "
                            "first") from None
    return replace(base, fold_params=fold_params)

