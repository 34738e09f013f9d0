"""Optuna studies: opening them, the per-study lock of many workers, claiming trials.

One study per (experiment, backbone, folds fingerprint, outer fold k). A trial is scored
by an inner stratified group K-fold of fold k's training rows, so the settings chosen for
fold k never saw fold k's validation images and the CV of the tuned model stays honest.
The defaults are enqueued as trial 0 of each study.

Any number of worker processes may work on one study through a shared storage
(PostgreSQL across machines, a journal file on a shared file system across machines
without a server, SQLite on one machine). Each worker counts the study's
trials and claims the next one (Optuna's ask: a queued trial or a new one) under a
per-study lock, so a study ends with exactly `n_trials` trials, however many workers
ran. A killed worker's trial is failed by Optuna's heartbeat and retried once by a
live worker; the retry takes the failed trial's place in the count. Optuna's
JournalStorage has no heartbeat: there a trial is stale when its worker (user attribute
`worker`, host:pid) is a process of this host that no longer runs; a killed worker on
another host is found by the next worker started on that host.
"""

from __future__ import annotations

import inspect
import time
import warnings
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import optuna
import portalocker

from comp.config import mask_url
from comp.errors import CompError
from comp.metrics import HIGHER_IS_BETTER
from comp.tuning.space import PRUNERS

JOURNAL = "journal:"  # tune.storage=journal:<path>: Optuna's JournalStorage on a file
POLL_SECONDS = 1.0  # a waiting worker looks again at other workers' running trials this often


@contextmanager
def quiet_optuna() -> Iterator[None]:
    """A context in which Optuna logs warnings only (not a line per study and trial: comp
    says what it does in its own lines), its earlier verbosity given back afterwards, so
    a caller's own Optuna logging is left as it was. Both users of Optuna studies (tuning
    and the Optuna-weighted ensemble) run theirs inside it."""
    saved = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(saved)


def journal_path(storage_url: str) -> Path | None:
    """The file of a `journal:<path>` storage (None for database URLs)."""
    return Path(storage_url[len(JOURNAL):]).expanduser() if storage_url.startswith(
        JOURNAL) else None


def optuna_storage(storage_url: str):
    """What Optuna takes as `storage` for tune.storage: a JournalStorage on the file of
    `journal:<path>` (one study over many machines on a shared file system, no server;
    Optuna's file lock, which works on NFS), else the database URL itself."""
    path = journal_path(storage_url)
    if path is None:
        return storage_url
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    if not path.parent.is_dir():
        raise CompError(f"tune.storage={storage_url}: folder {path.parent} not found; "
                        "create it (on a file system every worker sees)")
    return optuna.storages.JournalStorage(
        JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))


def open_study(name: str, storage_url: str, metric: str, pruner: str, seed: int,
               grace: int = 60) -> optuna.Study:
    """Create or load the study `name` (heartbeat: a killed trial is failed and retried)."""
    direction = "maximize" if HIGHER_IS_BETTER[metric] else "minimize"
    sampler = optuna.samplers.TPESampler(seed=seed)
    if journal_path(storage_url) is not None:  # no heartbeat in JournalStorage
        return optuna.create_study(study_name=name, storage=optuna_storage(storage_url),
                                   load_if_exists=True, direction=direction, sampler=sampler,
                                   pruner=PRUNERS[pruner]())
    # a killed worker's trial is failed after the grace period and retried once; the
    # callback's keyword was renamed in Optuna 4.9
    names = inspect.signature(optuna.storages.RDBStorage).parameters
    callback = ("heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in names
                else "failed_trial_callback")
    for attempt in range(5):  # workers starting together may race to create the tables
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # heartbeat is flagged experimental
                storage = optuna.storages.RDBStorage(
                    storage_url, heartbeat_interval=max(1, grace // 3), grace_period=grace,
                    engine_kwargs={"connect_args": {"timeout": 30}}
                    if storage_url.startswith("sqlite") else {},
                    **{callback: optuna.storages.RetryFailedTrialCallback(max_retry=1)},
                )
            break
        except Exception as exc:  # bad URL, unreachable server, missing driver
            if attempt == 4 or not _is_creation_race(exc):
                hint = ("; pip install 'comp[postgres]' for postgresql:// URLs"
                        if "DB access module" in str(exc) else "")
                raise CompError(f"tune.storage={mask_url(storage_url)}: cannot open "
                                f"({_first_line(exc)}){hint}") from None
            time.sleep(0.5 + attempt)
    return optuna.create_study(study_name=name, storage=storage, load_if_exists=True,
                               direction=direction, sampler=sampler, pruner=PRUNERS[pruner]())


def _is_creation_race(exc: Exception) -> bool:
    text = str(exc).lower()
    return any(word in text for word in ("already exists", "duplicate key", "unique constraint",
                                         "locked"))


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def counted_trials(trials: list[optuna.trial.FrozenTrial]) -> int:
    """Trials that take a place of n_trials: every trial except a failed one that was
    retried (its retry takes its place)."""
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    return sum(t.state != optuna.trial.TrialState.FAIL or t.number not in retried
               for t in trials)


class StudyLock:
    """A lock shared by every worker of one study: a PostgreSQL advisory lock, or a file
    lock beside a SQLite database or a journal file. Other storages get none (a warning
    says so)."""

    def __init__(self, storage_url: str, study_name: str):
        self._connection = None
        self._file = None
        self._key = zlib.crc32(study_name.encode())
        if storage_url.startswith("postgresql"):
            import sqlalchemy

            engine = sqlalchemy.create_engine(storage_url, poolclass=sqlalchemy.pool.NullPool)
            self._connection = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        elif storage_url.startswith("sqlite:///"):
            self._file = open(Path(storage_url[len("sqlite:///"):] + ".lock"), "a+")  # noqa: SIM115
        elif journal_path(storage_url) is not None:  # Optuna's own lock is <path>.lock
            self._file = open(f"{journal_path(storage_url)}.studies.lock", "a+")  # noqa: SIM115
        else:
            warnings.warn(f"tune.storage={storage_url.split(':')[0]}: comp holds no lock there, "
                          "so a study may run up to (workers - 1) trials over tune.n_trials; "
                          "use PostgreSQL or SQLite for an exact count", stacklevel=2)

    def acquire(self) -> None:
        if self._connection is not None:
            self._advisory("pg_advisory_lock")
        elif self._file is not None:
            portalocker.lock(self._file, portalocker.LockFlags.EXCLUSIVE)  # blocks

    def release(self) -> None:
        if self._connection is not None:
            self._advisory("pg_advisory_unlock")
        elif self._file is not None:
            portalocker.unlock(self._file)

    def _advisory(self, function: str) -> None:
        import sqlalchemy

        self._connection.execute(sqlalchemy.text(f"SELECT {function}(:k)"), {"k": self._key})

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> StudyLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def work_on(study: optuna.Study, objective: Callable[[optuna.Trial], float], n_trials: int,
            lock: StudyLock, wait: bool, on_trial: Callable | None = None) -> int:
    """Run trials of `study` in this process until it holds `n_trials` counted trials;
    with `wait`, also until none is running anywhere (a stale one is failed and retried
    here). Returns the number of trials this process ran."""
    state = optuna.trial.TrialState
    ran = 0
    while True:
        lock.acquire()
        held = True
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # fail_stale_trials is experimental
                optuna.storages.fail_stale_trials(study)
                if isinstance(study._storage, optuna.storages.JournalStorage):
                    fail_dead_workers_trials(study)
            trials = study.get_trials(deepcopy=False)
            claim = (any(t.state == state.WAITING for t in trials)
                     or counted_trials(trials) < n_trials)
            if not claim and not (wait and any(t.state == state.RUNNING for t in trials)):
                return ran
            if claim:
                def claimed(trial: optuna.Trial) -> float:
                    nonlocal held
                    lock.release()  # the trial is ours (asked under the lock): let others in
                    held = False
                    return objective(trial)

                study.optimize(claimed, n_trials=1, catch=(Exception,),
                               callbacks=[on_trial] if on_trial else None)
                ran += 1
        finally:
            if held:
                lock.release()
        if not claim:
            time.sleep(POLL_SECONDS)  # other workers' trials are still running


def fail_dead_workers_trials(study: optuna.Study) -> list[int]:
    """Fail (and retry once, as the heartbeat would) the RUNNING trials of `study` whose
    worker is a process of this host that no longer runs; their numbers."""
    import socket

    host = socket.gethostname()
    failed = []
    retry = optuna.storages.RetryFailedTrialCallback(max_retry=1)
    for trial in study.get_trials(deepcopy=False,
                                  states=(optuna.trial.TrialState.RUNNING,)):
        worker_host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
        if worker_host != host or not pid.isdigit() or _alive(int(pid)):
            continue
        study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
        retry(study, study._storage.get_trial(trial._trial_id))
        failed.append(trial.number)
    return failed


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def inner_splits(rows: np.ndarray, labels: np.ndarray, groups: np.ndarray, n_splits: int,
                 seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified group K-fold (fit rows, scored rows) splits of `rows`: near-duplicate
    groups never straddle a split; fewer splits where a class has too few groups."""
    from sklearn.model_selection import StratifiedGroupKFold

    counts = np.bincount(labels[rows])
    n_splits = max(2, min(n_splits, int(counts[counts > 0].min())))
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return [(rows[fit], rows[held])
            for fit, held in splitter.split(rows, labels[rows], groups[rows])]
