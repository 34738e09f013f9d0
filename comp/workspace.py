"""The run directory layout (runs/<name>/...), one place that knows every path."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import portalocker

from comp.artifacts import read_json, write_text
from comp.errors import CompError

# portalocker: flock on POSIX, LockFileEx on Windows; shared and exclusive modes
_EXCLUSIVE = portalocker.LockFlags.EXCLUSIVE | portalocker.LockFlags.NON_BLOCKING
_SHARED = portalocker.LockFlags.SHARED | portalocker.LockFlags.NON_BLOCKING

# the files inside a model's folder (models/<id>/), its folds' (models/<id>/fold<k>/) and
# a prediction set's (preds/<id>/, ensemble/<method>/): each name written here only
SPEC_JSON = "spec.json"  # models/<id>/: what the model is (ModelSpec.describe)
FOLD_WEIGHTS = "model.weights.h5"  # fold<k>/: a fine-tuned fold's trained head and body
FOLD_ESTIMATOR = "model.joblib"  # fold<k>/: a classic fold's fitted scikit-learn head
FOLD_HISTORY = "history.csv"  # fold<k>/: a fine-tuned fold's scores per epoch
FOLD_METRICS = "metrics.json"  # fold<k>/: written last, so its presence marks the fold done
# fold<k>/<split>.csv: a unit's probabilities on the test and unlabeled images, and on its
# own training rows where pseudo.distill is set (in-sample, split DISTILL_SPLIT: a later
# round's distillation targets)
DISTILL_SPLIT = "train"
CV_JSON = "cv.json"  # a prediction set's CV figures, written after its CSVs
OOF_CSV = "oof.csv"  # a prediction set's out-of-fold probabilities
TEST_CSV = "test.csv"  # a prediction set's test probabilities
ENSEMBLE_STATE = "state.joblib"  # an ensemble's fitted weights or stacker
PSEUDO_SUMMARY = "summary.json"  # pseudo/round<r>/: written last: the round's files are complete
EXPORTED_JSON = "exported.json"  # export/<id>/: the model and settings the export holds
PSEUDO_NOT_TRAINED = "not_trained.json"  # pseudo/round<r>/: why stage=all left the round untrained


def fold_path(model_dir: Path, fold: int) -> Path:
    """Unit `fold`'s folder inside the model folder `model_dir`."""
    return model_dir / f"fold{fold}"


def fold_paths(model_dir: Path, holding: str | None = None) -> dict[int, Path]:
    """The fold folders of `model_dir` by unit, in order; with `holding`, only those that
    hold that file (e.g. FOLD_WEIGHTS)."""
    found = {int(p.name.removeprefix("fold")): p for p in model_dir.glob("fold*")
             if p.is_dir() and p.name.removeprefix("fold").isdigit()}
    return {k: found[k] for k in sorted(found)
            if holding is None or (found[k] / holding).exists()}


@dataclass(frozen=True)
class RunDir:
    """Paths of one experiment's run directory (README.md's "Stages and outputs" shows
    the layout)."""

    root: Path

    @property
    def folds_csv(self) -> Path:
        return self.root / "folds.csv"

    @property
    def config_yaml(self) -> Path:
        """The settings of the run's last command (configs/<stage>.yaml: each stage's)."""
        return self.root / "config.yaml"

    def stage_yaml(self, stage: str) -> Path:
        return self.root / "configs" / f"{stage}.yaml"

    @property
    def data_json(self) -> Path:
        return self.root / "data.json"

    @property
    def image_cache(self) -> Path:
        return self.root / "cache" / "images"

    @property
    def frame_competition(self) -> Path:
        """The competition folder written from a DataFrame (Competition.from_frame)."""
        return self.root / "competition"

    @property
    def pixel_images(self) -> Path:
        """PNG images written from a pixel-CSV competition's rows (comp.data.pixels)."""
        return self.root / "cache" / "pixels"

    @property
    def feature_cache(self) -> Path:
        return self.root / "cache" / "features"

    @property
    def view_choice_cache(self) -> Path:
        """Each unit's `augment.choose_views` decision, keyed by what decides it (a pseudo-label
        round's units decide on the same rows as round 0's: comp.training.trainer.unit_views)."""
        return self.root / "cache" / "view_choice"

    @property
    def lite_cache(self) -> Path:
        """Frozen networks converted to TFLite, one file per network (comp.training.lite)."""
        return self.root / "cache" / "lite"

    @property
    def embedding_cache(self) -> Path:
        """Pooled embeddings of the classic heads, one folder per part (comp.training.classic)."""
        return self.root / "cache" / "embeddings"

    @property
    def hashes_csv(self) -> Path:
        """Every image's content hash, as prepare read it (comp.data.prepared)."""
        return self.root / "hashes.csv"

    @property
    def selection_json(self) -> Path:
        """stage=submit's rank 1 and the nested-selection figure."""
        return self.root / "selection.json"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    @property
    def predictions_dir(self) -> Path:
        """stage=predict's CSVs where `predict.output` is not given."""
        return self.root / "predictions"

    def export_dir(self, name: str) -> Path:
        """stage=export's folder of model `name` where `export.output` is not given."""
        return self.root / "export" / name

    def tuned_yaml(self, backbone: str) -> Path:
        """Each fold's best tuned settings of `backbone` (comp.tuning.search)."""
        return self.root / "tuned" / f"{backbone}.yaml"

    def model_dir(self, model_id: str) -> Path:
        return self.root / "models" / model_id

    def fold_dir(self, model_id: str, fold: int) -> Path:
        return fold_path(self.model_dir(model_id), fold)

    def fold_lock(self, model_id: str, fold: int) -> Path:
        """Held while a process trains that fold (hidden: not matched by fold*)."""
        return self.model_dir(model_id) / f".fold{fold}.lock"

    @property
    def preds_root(self) -> Path:
        """preds/: one prediction set per finished single model."""
        return self.root / "preds"

    def preds_dir(self, model_id: str) -> Path:
        return self.preds_root / model_id

    def ensemble_dir(self, method: str, members_key: str) -> Path:
        """ensemble/<method>-<members_key>/: other members are another folder, so an
        ensemble that takes in a new model never overwrites the earlier one."""
        return self.root / "ensemble" / f"{method}-{members_key}"

    def find_ensemble(self, entry: str) -> Path:
        """The folder of entry `ensemble-<method>-<members_key>`, or for
        `ensemble-<method>` that method's ensemble of the latest pseudo-label round, the
        most recently built of them (where none is finished: the folder it would have,
        for the caller's error message)."""
        name = entry.removeprefix("ensemble-")
        exact = self.root / "ensemble" / name
        if (exact / CV_JSON).exists():
            return exact
        built = sorted(self.root.glob(f"ensemble/{name}-*/cv.json"),  # round 0's beside
                       key=lambda p: (int(read_json(p).get("round", 0)), p.stat().st_mtime_ns))
        return built[-1].parent if built else exact

    def pseudo_csv(self, round_: int, fold: int) -> Path:
        return self.pseudo_dir(round_) / f"fold{fold}.csv"

    def pseudo_dir(self, round_: int) -> Path:
        return self.root / "pseudo" / f"round{round_}"

    def pseudo_summary(self, round_: int) -> Path:
        return self.pseudo_dir(round_) / PSEUDO_SUMMARY

    def pseudo_not_trained(self, round_: int) -> Path:
        """Why stage=all did not train round `round_` on its pseudo-labels (time_limit, or
        its teacher's labels right less often than pseudo.min_precision)."""
        return self.pseudo_dir(round_) / PSEUDO_NOT_TRAINED

    def pseudo_rounds(self) -> list[int]:
        """The pseudo-label rounds that have a folder (pseudo/round<r>/), in order."""
        numbers = (p.name.removeprefix("round") for p in self.root.glob("pseudo/round*"))
        return sorted(int(n) for n in numbers if n.isdigit())  # not a stray round_old/

    def model_dirs(self) -> list[Path]:
        """Every model's folder (finished or not)."""
        return sorted(p for p in (self.root / "models").glob("*") if p.is_dir())

    @property
    def optuna_db(self) -> Path:
        return self.root / "optuna.db"

    def prediction_sets(self) -> list[Path]:
        """Finished prediction sets (single models and ensembles) with a cv.json."""
        return self.single_sets() + self.ensemble_sets()

    def finished_names(self, keep: Callable[[dict], bool] | None = None) -> str:
        """The finished entries' names as text for a message: model ids, then
        `ensemble-<method>-<members>`, those whose cv.json `keep` accepts (None: all), at
        most eight shown."""
        entries = [(p.name, p) for p in self.single_sets()] + [
            (f"ensemble-{p.name}", p) for p in self.ensemble_sets()]
        names = [name for name, folder in entries
                 if keep is None or keep(read_json(folder / CV_JSON))]
        shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8
                                         else "")
        return shown or "none yet"

    def single_sets(self) -> list[Path]:
        """Finished single models' prediction sets (preds/<model_id>/ with a cv.json)."""
        return self._finished(self.preds_root)

    def ensemble_sets(self) -> list[Path]:
        """Finished ensembles' prediction sets (ensemble/<name>/ with a cv.json)."""
        return self._finished(self.root / "ensemble")

    @staticmethod
    def _finished(parent: Path) -> list[Path]:
        if not parent.is_dir():
            return []
        return sorted(p for p in parent.iterdir() if (p / CV_JSON).exists())


def submissions_folder(submissions_dir: str | Path, name: str) -> Path:
    """submissions/<name>/: experiment `name`'s submission files and its leaderboard."""
    return Path(submissions_dir) / name


def leaderboard_path(submissions_dir: str | Path, name: str) -> Path:
    """submissions/<name>/leaderboard.csv: experiment `name`'s entries, ranked by CV."""
    return submissions_folder(submissions_dir, name) / "leaderboard.csv"


def run_root(runs_dir: str, name: str) -> Path:
    """runs_dir/name, the name checked to be one folder name; nothing is created."""
    if not name or "/" in name or "\\" in name or name in {".", ".."} or "\0" in name:
        raise CompError(f"config: name={name!r} must be a plain folder name")
    return Path(runs_dir) / name


def run_dir(runs_dir: str, name: str, writable: bool = True) -> RunDir:
    """The run directory of experiment `name`, created and checked writable; with
    `writable=False` (stages that only read it) it must exist and may be read-only."""
    root = run_root(runs_dir, name)
    if not writable:
        if not root.is_dir():
            raise CompError(f"{root}: no such run directory; train first (stage=train) or set "
                            "runs_dir= and name= to a finished run")
        return RunDir(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CompError(f"{root}: cannot create the run directory ({exc.strerror}); "
                        "set runs_dir=<writable folder>") from None
    if not os.access(root, os.W_OK):
        raise CompError(f"{root}: run directory is not writable; set runs_dir=<writable folder>")
    return RunDir(root)


def check_folder_target(path: str | Path, key: str) -> None:
    """`path`, set by config key `key`, can be (or become) a folder that comp writes into:
    it is not a file, no part of it is a file, and its nearest existing folder is writable."""
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        where = "is a file" if existing == path else f"goes through the file {existing}"
        raise CompError(f"{key}={path}: {where}, not a folder; set {key}=<folder>")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CompError(f"{key}={path}: {existing} is not writable; set {key}=<writable folder>")


def is_folder_target(path: str | Path) -> bool:
    """An output file path given as a folder, with a trailing slash (`predictions/`)."""
    return str(path).endswith(("/", os.sep))


def check_file_target(path: str | Path, key: str) -> None:
    """`path`, set by `key`, can be written as a file (or is a folder, see is_folder_target)."""
    if is_folder_target(path):
        check_folder_target(path, key)
        return
    check_folder_target(Path(path).parent, key)
    if not os.access(path, os.W_OK) and Path(path).exists():
        raise CompError(f"{key}={path}: the file is not writable; set {key}=<writable path>")


@contextmanager
def config_record(run: RunDir, stage: str, text: str, created: bool, exclusive: bool):
    """Write the run's config record (config.yaml, configs/<stage>.yaml) once, for the
    stage about to run; if the stage then fails with a CompError before writing anything
    else, undo it: the previous record comes back, and a run directory this call created
    is removed, so a failed run leaves the record saying what was really run."""
    paths = [run.config_yaml, run.stage_yaml(stage)]
    before = {path: path.read_text() if path.exists() else None for path in paths}
    started = time.time()
    for path in paths:
        write_text(path, text)
    try:
        yield
    except CompError:
        if exclusive and not _written_since(run.root, started, set(paths)):
            if created:
                shutil.rmtree(run.root, ignore_errors=True)
            else:
                for path, old in before.items():
                    if old is None:
                        path.unlink(missing_ok=True)
                    else:
                        write_text(path, old)
                _remove_empty_folders(run.root, started)
        raise


def _written_since(root: Path, started: float, ignored: set[Path]) -> bool:
    """Whether any file under `root` (lock files and `ignored` aside) changed since
    `started`."""
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            if path in ignored or name.endswith(".lock"):
                continue
            try:
                if path.stat().st_mtime >= started:
                    return True
            except FileNotFoundError:
                continue
    return False


def _remove_empty_folders(root: Path, started: float) -> None:
    """Remove the empty folders under `root` made since `started` (deepest first)."""
    for folder, subfolders, names in os.walk(root, topdown=False):
        path = Path(folder)
        if path == root or names or any((path / s).exists() for s in subfolders):
            continue
        if path.stat().st_mtime >= started:
            path.rmdir()


@contextmanager
def reader_lock(run: RunDir):
    """For stages that only read the run directory: a shared lock on its .lock when that
    can be opened (so no exclusive stage rewrites what is read), none on a read-only copy
    without one."""
    try:
        handle = open(run.root / ".lock")
    except OSError:
        yield
        return
    with handle:
        try:
            portalocker.lock(handle, _SHARED)
        except portalocker.AlreadyLocked:
            raise CompError(f"{run.root}: already in use by another stage; wait for it to "
                            "finish") from None
        try:
            yield
        finally:
            portalocker.unlock(handle)


@contextmanager
def run_lock(run: RunDir, stage: str, shared: bool = False):
    """Lock the run directory, or fail with 'already in use'.

    Worker stages (tuning workers on one study, single training units from stage=plan)
    share the lock with each other; every other stage holds it alone.
    """
    path = run.root / ".lock"
    with open(path, "a+") as handle:
        try:
            portalocker.lock(handle, _SHARED if shared else _EXCLUSIVE)
        except portalocker.AlreadyLocked:
            try:
                handle.seek(0)
                holder = handle.read().strip()
            except OSError:  # Windows: a locked region cannot be read by other processes
                holder = ""
            holder = holder or "worker processes (stage=tune or train units)"
            raise CompError(
                f"{run.root}: already in use by {holder}; wait for it to finish or use "
                "another name=<experiment>"
            ) from None
        if not shared:
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} (stage={stage})")
            handle.flush()
        try:
            yield
        finally:
            if not shared:
                handle.seek(0)
                handle.truncate()
            portalocker.unlock(handle)


@contextmanager
def unit_lock(path: Path):
    """Try to lock one unit of work (a model's fold); yields False when another process
    holds it, so concurrent jobs never train, or wipe, the same fold twice."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            portalocker.lock(handle, _EXCLUSIVE)
        except portalocker.AlreadyLocked:
            yield False
            return
        try:
            yield True
        finally:
            portalocker.unlock(handle)
