"""Per-fold Optuna studies: resume, pruning, params=best, honest inner holdout."""

import json
import sqlite3

import numpy as np
import optuna
import pytest
import yaml

from comp.crashpoints import EXIT_CODE
from comp.tuning.studies import counted_trials, inner_splits
from tests.helpers import (
    DONE,
    TUNE_FAST,
    copy_tree,
    fold_metrics,
    leaderboard,
    load_study,
    make_competition,
    optuna_url,
    round_entries,
    run_comp,
    run_comp_process,
    run_path,
    study_names,
    study_of,
    tiny_overrides,
)

FAIL, COMPLETE = optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE


@pytest.fixture(scope="module")
def tuned_template(tmp_path_factory):
    """stage=tune with 2 trials per fold, once per module."""
    root = tmp_path_factory.mktemp("tuned")
    competition = make_competition(root / "comp")
    assert run_comp("stage=tune", *tiny_overrides(root, competition, **TUNE_FAST),
                    "tune.n_trials=2") == 0
    return root


@pytest.fixture
def tuned(tuned_template, tmp_path):
    """This test's copy of tuned_template: the overrides that made it."""
    copy_tree(tuned_template, tmp_path)
    return tiny_overrides(tmp_path, tmp_path / "comp", **TUNE_FAST)


@pytest.mark.slow
def test_studies_resume_and_count_trials_once(tmp_path, tuned):
    url = optuna_url(tmp_path)
    names = study_names(url)
    assert [n.split("-")[-1] for n in names] == ["fold0", "fold1"] and len(set(
        n.split("-")[-2] for n in names)) == 1  # one folds fingerprint in both names
    assert all(len(load_study(url, name).trials) == 2 for name in study_names(url))
    assert run_comp("stage=tune", *tuned, "tune.n_trials=2") == 0  # nothing left to do
    assert all(len(load_study(url, name).trials) == 2 for name in study_names(url))
    assert run_comp("stage=tune", *tuned, "tune.n_trials=3") == 0  # continues the study
    study = load_study(url, study_of(url, "tiny-small_cnn", 0))
    assert [t.number for t in study.trials] == [0, 1, 2]
    assert all(t.state.name in DONE for t in study.trials)
    assert study.trials[0].params["model.dropout"] == 0.3  # the defaults go first
    assert study.trials[0].params["train.lr"] != study.trials[1].params["train.lr"]
    assert len(study.trials[1].intermediate_values) >= 1  # per-epoch reports
    tuned_yaml = yaml.safe_load((run_path(tmp_path) / "tuned/small_cnn.yaml").read_text())
    assert set(tuned_yaml["folds"]) == {"0", "1"}
    assert tuned_yaml["folds"]["0"]["best"] == study.best_trial.params


@pytest.mark.slow
def test_params_best_trains_each_fold_with_its_own_settings(tmp_path, tuned):
    import logging

    optuna_lines = []  # Optuna's own INFO lines ("Using an existing study ...") stay quiet
    handler = logging.Handler()
    handler.emit = optuna_lines.append
    logging.getLogger("optuna").addHandler(handler)
    try:
        assert run_comp("stage=train", "params=best", *tuned) == 0
    finally:
        logging.getLogger("optuna").removeHandler(handler)
    assert not [r.getMessage() for r in optuna_lines if r.levelno < logging.WARNING]
    board_models = list((run_path(tmp_path) / "preds").iterdir())
    assert len(board_models) == 1
    spec = json.loads((run_path(tmp_path) / "models" / board_models[0].name / "spec.json")
                      .read_text())
    for fold in ("0", "1"):
        study = load_study(optuna_url(tmp_path), f"tiny-small_cnn-fold{fold}")
        assert spec["fold_params"][fold] == study.best_trial.params
        metrics = json.loads((run_path(tmp_path) / "models" / board_models[0].name
                              / f"fold{fold}" / "metrics.json").read_text())
        trained = metrics["settings"]
        for name, value in study.best_trial.params.items():  # the fold trained with them
            section, key = name.split(".")
            assert trained[section][key] == value, (fold, name)
    cv = json.loads((board_models[0] / "cv.json").read_text())
    assert cv["tuned"] is True


@pytest.mark.slow
def test_pruned_trials_and_no_completed_trial_error(tmp_path, competition, monkeypatch,
                                                    capsys):
    class AlwaysPrune(optuna.pruners.BasePruner):
        def __init__(self, **kwargs):
            pass

        def prune(self, study, trial):
            return True

    monkeypatch.setattr(optuna.pruners, "MedianPruner", AlwaysPrune)
    overrides = tiny_overrides(tmp_path, competition, **TUNE_FAST)
    assert run_comp("stage=tune", *overrides, "tune.n_trials=2") == 0
    study = load_study(optuna_url(tmp_path), "tiny-small_cnn-fold0")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.PRUNED] * 2
    assert all(len(t.intermediate_values) == 1 for t in study.trials)  # pruned at epoch 0
    capsys.readouterr()
    assert run_comp("stage=train", "params=best", *overrides) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no completed trial" in err[0] and "tiny-small_cnn-" in err[0]


def test_inner_folds_never_touch_the_outer_validation_fold():
    folds = np.arange(48) % 4
    labels = np.arange(48) % 2
    groups = np.arange(48) // 2  # pairs of near-duplicates
    outer_train = np.nonzero(folds != 0)[0]
    splits = inner_splits(outer_train, labels, groups, 3, 0)
    assert len(splits) == 3
    held_all = []
    for fit, held in splits:
        assert not (set(fit) | set(held)) & set(np.nonzero(folds == 0)[0])
        assert not set(fit) & set(held)
        assert sorted([*fit, *held]) == outer_train.tolist()  # nothing dropped
        assert not set(groups[fit]) & set(groups[held])  # a group never straddles a split
        assert set(labels[held]) == {0, 1}  # stratified
        held_all += held.tolist()
    assert sorted(held_all) == outer_train.tolist()  # every row scores a trial once


@pytest.mark.slow
def test_all_runs_every_stage_on_a_tiny_competition(tmp_path, competition):
    overrides = tiny_overrides(tmp_path, competition, **TUNE_FAST, **{
        "tune.n_trials": "2", "pseudo.rounds": "1", "backbones": "[small_cnn,mobilenet_025]",
        "model.image_size": "32", "ensemble.methods": "[mean,greedy]"})
    assert run_comp("stage=all", *overrides) == 0
    board = leaderboard(tmp_path)
    # 2 backbones at round 1, each ranked as the mean of its round-0 and round-1 fits
    # (pseudo.average_fits), + the first one tuned (round 1 only) + 2 ensembles
    current = round_entries(board)
    assert len(current) == 5 and set(current.kind) == {"single", "ensemble"}
    assert current["name"].str.startswith("ensemble-fits-").sum() == 2
    assert current.loc[current.kind == "single", "name"].str.startswith("small_cnn").sum() == 1
    stamps = {p: p.stat().st_mtime_ns for p in fold_metrics(tmp_path)}
    assert len(stamps) == 5 * 2  # 5 models x 2 folds
    assert run_comp("stage=all", *overrides) == 0  # rerun: nothing trained again
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    assert len(fold_metrics(tmp_path)) == len(stamps)


def _has_heartbeat(url: str, trial_id: int) -> bool:
    with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
        return bool(db.execute("SELECT 1 FROM trial_heartbeats WHERE trial_id = ?",
                               (trial_id,)).fetchall())


@pytest.mark.slow
def test_a_killed_trial_is_failed_and_retried(tmp_path, competition):
    overrides = tiny_overrides(tmp_path, competition, **TUNE_FAST,
                               **{"tune.heartbeat_grace": "2", "tune.n_trials": "3"})
    killed = run_comp_process("stage=tune", *overrides, crash_at="trial:1")
    assert killed.returncode == EXIT_CODE, killed.stderr[-2000:]  # died at trial 1's start
    url = optuna_url(tmp_path)
    before = load_study(url, study_of(url, "tiny-small_cnn", 0)).trials
    assert [t.state for t in before] == [COMPLETE, optuna.trial.TrialState.RUNNING]
    assert _has_heartbeat(url, before[1]._trial_id)  # else Optuna could never fail it

    assert run_comp("stage=tune", *overrides) == 0  # a live worker: fails it, retries it
    trials = load_study(url, study_of(url, "tiny-small_cnn", 0)).trials
    failed = [t for t in trials if t.state == FAIL]
    assert [t.number for t in failed] == [1]  # the killed one
    assert failed[0].user_attrs["worker"] == before[1].user_attrs["worker"]
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == 1]
    assert len(retries) == 1 and retries[0].state.name in DONE
    assert retries[0].system_attrs["retry_history"] == [1]
    assert retries[0].params == failed[0].params  # the same settings, run again
    assert retries[0].user_attrs["worker"] != failed[0].user_attrs["worker"]
    assert counted_trials(trials) == 3 and len(trials) == 4  # the retry took its place
    other = load_study(url, study_of(url, "tiny-small_cnn", 1))
    assert [t.state for t in other.trials] == [COMPLETE] * 3


@pytest.mark.parametrize("pruner", ["median", "hyperband"])
def test_pruners_stop_trials_within_three_inner_fits(tmp_path, pruner):
    # a trial reports one step per inner fit (tune.inner_folds=3): a warm-up (median) or
    # minimum resource (hyperband) of 5 steps never pruned anything
    from comp.tuning.studies import open_study, quiet_optuna

    study = open_study("s", f"sqlite:///{tmp_path / 'optuna.db'}", "auc", pruner, 0)

    def objective(trial):
        value = 0.9 if trial.number < 4 else 0.1  # later trials are worse at every step
        for step in range(3):
            trial.report(value, step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return value

    with quiet_optuna():  # no line per trial, and the worker's Optuna logging left alone
        study.optimize(objective, n_trials=16)
    states = [t.state for t in study.trials]
    assert states[:4] == [COMPLETE] * 4
    assert optuna.trial.TrialState.PRUNED in states[4:]
