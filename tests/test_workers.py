"""Several worker processes on one Optuna study: PostgreSQL (a real server started here)
and SQLite on one machine. Trial count exact, no duplicates, a killed worker's trial
retried by the others."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from tests.conftest import tiny_overrides
from tests.pg_server import missing_reason, postgres_server

ROOT = Path(__file__).resolve().parent.parent
FAST = {"tune.epochs": "2", "tune.params": "[model.dropout,train.lr]"}
DONE = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


@pytest.fixture(scope="module")
def postgres_url():
    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    with postgres_server() as url:
        yield url


def _worker(overrides: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "comp.run", "stage=tune", *overrides],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _finish(workers: list[subprocess.Popen]) -> None:
    for worker in workers:
        out, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err[-3000:]


def _study(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=url)


def _assert_exact(study: optuna.Study, n_trials: int) -> None:
    trials = study.get_trials(deepcopy=False)
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))  # no duplicates
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    counted = [t for t in trials if t.number not in retried]
    assert len(counted) == n_trials, [(t.number, t.state) for t in trials]  # none lost, none extra
    assert all(t.state in DONE for t in counted)


def test_workers_share_one_postgres_study(tmp_path, competition, postgres_url):
    overrides = tiny_overrides(tmp_path, competition, **FAST, **{
        "tune.storage": postgres_url, "tune.n_trials": "5", "name": "shared"})
    _finish([_worker(overrides) for _ in range(3)])
    workers = set()
    for fold in (0, 1):
        study = _study(postgres_url, f"shared-small_cnn-fold{fold}")
        _assert_exact(study, 5)
        assert [t.number for t in study.trials] == [0, 1, 2, 3, 4]
        assert study.trials[0].params["model.dropout"] == 0.3  # one default trial, first
        workers |= {t.user_attrs["worker"] for t in study.trials}
        tuned = yaml.safe_load((tmp_path / "runs/shared/tuned/small_cnn.yaml").read_text())
        assert tuned["folds"][str(fold)]["best"] == study.best_trial.params
    assert len(workers) >= 2  # the work was shared


def test_a_killed_workers_trial_is_retried_by_the_others(tmp_path, competition, postgres_url):
    overrides = tiny_overrides(tmp_path, competition, **{
        **FAST, "tune.storage": postgres_url, "tune.n_trials": "4", "name": "killed",
        "tune.heartbeat_grace": "3", "tune.epochs": "6"})
    doomed = _worker(overrides)
    deadline = time.time() + 300
    running = []
    while not running and time.time() < deadline:
        time.sleep(0.2)
        if "killed-small_cnn-fold0" in optuna.get_all_study_names(postgres_url):
            running = _study(postgres_url, "killed-small_cnn-fold0").get_trials(
                states=(optuna.trial.TrialState.RUNNING,))
    assert running, "the first worker never started a trial"
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.wait()
    _finish([_worker(overrides) for _ in range(2)])
    study = _study(postgres_url, "killed-small_cnn-fold0")
    _assert_exact(study, 4)
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert [t.number for t in failed] == [running[0].number]
    retry = [t for t in study.trials if t.system_attrs.get("failed_trial") == failed[0].number]
    assert len(retry) == 1 and retry[0].state in DONE
    assert retry[0].params == failed[0].params
    _assert_exact(_study(postgres_url, "killed-small_cnn-fold1"), 4)


def test_sqlite_works_for_several_local_workers(tmp_path, competition):
    overrides = tiny_overrides(tmp_path, competition, **FAST, **{"tune.n_trials": "4"})
    _finish([_worker(overrides) for _ in range(2)])
    url = f"sqlite:///{tmp_path / 'runs' / 'tiny' / 'optuna.db'}"
    for fold in (0, 1):
        _assert_exact(_study(url, f"tiny-small_cnn-fold{fold}"), 4)
