"""Several worker processes on one Optuna study: PostgreSQL (a real server started here)
and SQLite on one machine. Trial count exact, no duplicates, a killed worker's trial
retried by the others."""

from __future__ import annotations

import optuna
import pytest
import yaml

from comp.crashpoints import EXIT_CODE
from tests.helpers import (
    DONE,
    TUNE_FAST,
    comp_process,
    finish,
    load_study,
    optuna_url,
    run_path,
    study_of,
    tiny_overrides,
)
from tests.pg_server import missing_reason, postgres_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def postgres_url():
    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    with postgres_server() as url:
        yield url


def _workers(overrides: list[str], n: int) -> None:
    """n stage=tune workers at once, each its own process; all must succeed."""
    children = [comp_process("stage=tune", *overrides) for _ in range(n)]
    for child in children:
        finish(child)


def _assert_exact(study: optuna.Study, n_trials: int) -> None:
    trials = study.get_trials(deepcopy=False)
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))  # no duplicates
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    counted = [t for t in trials if t.number not in retried]
    assert len(counted) == n_trials, [(t.number, t.state) for t in trials]  # none lost, none extra
    assert all(t.state.name in DONE for t in counted)


def test_workers_share_one_postgres_study(tmp_path, competition, postgres_url):
    overrides = tiny_overrides(tmp_path, competition, **TUNE_FAST, **{
        "tune.storage": postgres_url, "tune.n_trials": "4", "name": "shared"})
    _workers(overrides, 3)
    workers = set()
    for fold in (0, 1):
        study = load_study(postgres_url, f"shared-small_cnn-fold{fold}")
        _assert_exact(study, 4)
        assert [t.number for t in study.trials] == [0, 1, 2, 3]
        assert study.trials[0].params["model.dropout"] == 0.3  # one default trial, first
        workers |= {t.user_attrs["worker"] for t in study.trials}
        tuned = yaml.safe_load((run_path(tmp_path, "shared") / "tuned/small_cnn.yaml")
                               .read_text())
        assert tuned["folds"][str(fold)]["best"] == study.best_trial.params
    assert len(workers) >= 2  # the work was shared


def test_a_killed_workers_trial_is_retried_by_the_others(tmp_path, competition, postgres_url):
    overrides = tiny_overrides(tmp_path, competition, **{
        **TUNE_FAST, "tune.storage": postgres_url, "tune.n_trials": "4", "name": "killed",
        "tune.heartbeat_grace": "3", "tune.epochs": "6"})
    doomed = comp_process("stage=tune", *overrides, crash_at="trial:1")
    assert doomed.wait(timeout=600) == EXIT_CODE, doomed.stderr.read()[-2000:]
    running = load_study(postgres_url, study_of(postgres_url, "killed-small_cnn", 0)).get_trials(
        states=(optuna.trial.TrialState.RUNNING,))
    assert [t.number for t in running] == [1]  # killed at the start of trial 1
    _workers(overrides, 2)
    study = load_study(postgres_url, study_of(postgres_url, "killed-small_cnn", 0))
    _assert_exact(study, 4)
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert [t.number for t in failed] == [1]
    retry = [t for t in study.trials if t.system_attrs.get("failed_trial") == failed[0].number]
    assert len(retry) == 1 and retry[0].state.name in DONE
    assert retry[0].params == failed[0].params
    assert retry[0].user_attrs["worker"] != failed[0].user_attrs["worker"]
    _assert_exact(load_study(postgres_url, study_of(postgres_url, "killed-small_cnn", 1)), 4)


def test_sqlite_works_for_several_local_workers(tmp_path, competition):
    overrides = tiny_overrides(tmp_path, competition, **TUNE_FAST, **{"tune.n_trials": "4"})
    _workers(overrides, 2)
    for fold in (0, 1):
        study = load_study(optuna_url(tmp_path), f"tiny-small_cnn-fold{fold}")
        _assert_exact(study, 4)
        tuned = yaml.safe_load((run_path(tmp_path) / "tuned/small_cnn.yaml").read_text())
        assert tuned["folds"][str(fold)]["best"] == study.best_trial.params


def _journal(tmp_path, name: str = "journal.log") -> tuple[str, object]:
    from comp.tuning.studies import optuna_storage

    path = tmp_path / "shared" / name
    path.parent.mkdir(exist_ok=True)
    return f"journal:{path}", optuna_storage(f"journal:{path}")


def _study(storage, prefix: str, fold: int) -> optuna.Study:
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)
             if s.study_name.startswith(prefix + "-") and s.study_name.endswith(f"-fold{fold}")]
    assert len(names) == 1, names
    return optuna.load_study(study_name=names[0], storage=storage)


def test_three_workers_share_one_journal_study_as_one_process_would(tmp_path, competition):
    """tune.storage=journal:<file>: three workers end with exactly n_trials per study, as
    one process on a journal file does, the default trial first in both."""
    url, storage = _journal(tmp_path)
    shared = tiny_overrides(tmp_path, competition, **TUNE_FAST, **{
        "tune.storage": url, "tune.n_trials": "3", "name": "shared"})
    _workers(shared, 3)
    alone_url, alone_storage = _journal(tmp_path, "alone.log")
    _workers(tiny_overrides(tmp_path, competition, **TUNE_FAST, **{
        "tune.storage": alone_url, "tune.n_trials": "3", "name": "alone"}), 1)
    workers = set()
    for fold in (0, 1):
        study = _study(storage, "shared-small_cnn", fold)
        _assert_exact(study, 3)
        assert [t.number for t in study.trials] == [0, 1, 2]
        workers |= {t.user_attrs["worker"] for t in study.trials}
        alone = _study(alone_storage, "alone-small_cnn", fold)
        _assert_exact(alone, 3)
        assert alone.trials[0].params == study.trials[0].params  # the default trial
    assert len(workers) >= 2  # the work was shared


def test_a_killed_workers_journal_trial_is_retried(tmp_path, competition):
    url, storage = _journal(tmp_path)
    overrides = tiny_overrides(tmp_path, competition, **{
        **TUNE_FAST, "tune.storage": url, "tune.n_trials": "3", "name": "killed"})
    doomed = comp_process("stage=tune", *overrides, crash_at="trial:1")
    assert doomed.wait(timeout=600) == EXIT_CODE, doomed.stderr.read()[-2000:]
    running = _study(storage, "killed-small_cnn", 0).get_trials(
        states=(optuna.trial.TrialState.RUNNING,))
    assert [t.number for t in running] == [1]
    _workers(overrides, 2)
    study = _study(storage, "killed-small_cnn", 0)
    _assert_exact(study, 3)
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert [t.number for t in failed] == [1]
    retry = [t for t in study.trials if t.system_attrs.get("failed_trial") == 1]
    assert len(retry) == 1 and retry[0].state.name in DONE
    assert retry[0].params == failed[0].params
