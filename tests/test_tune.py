"""Per-fold Optuna studies: resume, pruning, params=best, honest inner holdout."""

import optuna
import pandas as pd
import yaml

from comp.run import main
from comp.tuning import inner_split
from tests.conftest import tiny_overrides

FAST = {"tune.epochs": "2", "tune.params": "[model.dropout,train.lr]"}


def _studies(tmp_path):
    url = f"sqlite:///{tmp_path / 'runs' / 'tiny' / 'optuna.db'}"
    return {s.study_name: s for s in optuna.get_all_study_summaries(url)}, url


def test_studies_resume_and_count_trials_once(tmp_path, competition):
    overrides = tiny_overrides(tmp_path, competition, **FAST)
    assert main(["stage=tune", *overrides, "tune.n_trials=2"]) == 0
    summaries, url = _studies(tmp_path)
    assert sorted(summaries) == ["tiny-small_cnn-fold0", "tiny-small_cnn-fold1"]
    assert all(s.n_trials == 2 for s in summaries.values())
    assert main(["stage=tune", *overrides, "tune.n_trials=2"]) == 0  # nothing left to do
    assert all(s.n_trials == 2 for s in _studies(tmp_path)[0].values())
    assert main(["stage=tune", *overrides, "tune.n_trials=3"]) == 0  # continues the study
    study = optuna.load_study(study_name="tiny-small_cnn-fold0", storage=url)
    assert [t.number for t in study.trials] == [0, 1, 2]
    assert study.trials[0].params["model.dropout"] == 0.3  # the defaults go first
    assert len(study.trials[1].intermediate_values) >= 1  # per-epoch reports
    tuned = yaml.safe_load((tmp_path / "runs/tiny/tuned/small_cnn.yaml").read_text())
    assert set(tuned["folds"]) == {"0", "1"}


def test_params_best_trains_each_fold_with_its_own_settings(tmp_path, competition):
    overrides = tiny_overrides(tmp_path, competition, **FAST)
    assert main(["stage=tune", *overrides, "tune.n_trials=2"]) == 0
    assert main(["stage=train", "params=best", *overrides]) == 0
    board_models = list((tmp_path / "runs/tiny/preds").iterdir())
    assert len(board_models) == 1
    import json

    spec = json.loads((tmp_path / "runs/tiny/models" / board_models[0].name / "spec.json")
                      .read_text())
    for fold in ("0", "1"):
        study = optuna.load_study(study_name=f"tiny-small_cnn-fold{fold}",
                                  storage=_studies(tmp_path)[1])
        assert spec["fold_params"][fold] == study.best_trial.params
    cv = json.loads((board_models[0] / "cv.json").read_text())
    assert cv["tuned"] is True


def test_pruned_trials_and_no_completed_trial_error(tmp_path, competition, monkeypatch,
                                                    capsys):
    class AlwaysPrune(optuna.pruners.BasePruner):
        def __init__(self, **kwargs):
            pass

        def prune(self, study, trial):
            return True

    monkeypatch.setattr(optuna.pruners, "MedianPruner", AlwaysPrune)
    overrides = tiny_overrides(tmp_path, competition, **FAST)
    assert main(["stage=tune", *overrides, "tune.n_trials=2"]) == 0
    study = optuna.load_study(study_name="tiny-small_cnn-fold0", storage=_studies(tmp_path)[1])
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.PRUNED] * 2
    assert main(["stage=train", "params=best", *overrides]) == 2
    assert "no completed trial" in capsys.readouterr().err


def test_inner_holdout_never_touches_the_outer_validation_fold():
    import numpy as np

    folds = np.arange(40) % 4
    labels = np.arange(40) % 2
    train, holdout = inner_split(np.nonzero(folds != 0)[0], labels, 0.25, 0)
    assert not (set(train) | set(holdout)) & set(np.nonzero(folds == 0)[0])
    assert len(holdout) == 8 and not set(train) & set(holdout)


def test_all_runs_every_stage_on_a_tiny_competition(tmp_path, competition):
    overrides = tiny_overrides(tmp_path, competition, **FAST, **{
        "tune.n_trials": "2", "pseudo.rounds": "1", "backbones": "[small_cnn,mobilenet_025]",
        "model.image_size": "32"})
    assert main(["stage=all", *overrides]) == 0
    board = pd.read_csv(tmp_path / "submissions" / "leaderboard.csv")
    # 2 backbones x (round 0, round 1) + the first one tuned + 4 ensembles
    assert len(board) == 9 and set(board.kind) == {"single", "ensemble"}
    assert board.loc[board.kind == "single", "name"].str.startswith("small_cnn").sum() == 3
    assert board["round"].max() == 1
    finished = (tmp_path / "runs/tiny/models").rglob("metrics.json")
    stamps = {p: p.stat().st_mtime_ns for p in finished}
    assert main(["stage=all", *overrides]) == 0  # rerun: nothing trained again
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())


def test_a_killed_trial_is_failed_and_retried(tmp_path, competition):
    import time

    from comp.tuning import open_study

    overrides = tiny_overrides(tmp_path, competition, **FAST, **{"tune.heartbeat_grace": "2"})
    assert main(["stage=tune", *overrides, "tune.n_trials=1"]) == 0
    url = _studies(tmp_path)[1]
    study = open_study("tiny-small_cnn-fold0", url, "auc", "median", 0, grace=2)
    trial = study.ask({"model.dropout": optuna.distributions.FloatDistribution(0, 0.6),
                       "train.lr": optuna.distributions.FloatDistribution(3e-4, 3e-2, log=True)})
    study._storage.record_heartbeat(trial._trial_id)  # a worker that then died (kill -9)
    time.sleep(3)
    assert main(["stage=tune", *overrides, "tune.n_trials=3"]) == 0
    states = [t.state for t in optuna.load_study(study_name="tiny-small_cnn-fold0",
                                                 storage=url).trials]
    assert states[1] == optuna.trial.TrialState.FAIL  # the killed one
    assert states.count(optuna.trial.TrialState.COMPLETE) >= 2  # its retry ran, study went on
