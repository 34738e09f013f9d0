"""Shared test helpers: tiny competitions made on the fly (no network, no /work/shared),
overrides for a fast run, comp in-process or as a subprocess (optionally crashing at a
named unit), and readers for what a run writes."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from comp.crashpoints import ENV as CRASH_ENV

ROOT = Path(__file__).resolve().parent.parent  # the checkout: subprocesses run comp from here
CLASSES = ["alpha", "beta", "gamma"]
P_COLS = [f"p_{c}" for c in CLASSES]
TINT = {"alpha": (200, 60, 60), "beta": (60, 200, 60), "gamma": (60, 60, 200)}
TUNE_FAST = {"tune.epochs": "2", "tune.inner_folds": "2", "tune.params": "[model.dropout,train.lr]"}
DONE = ("COMPLETE", "PRUNED")  # names of the Optuna trial states that count as finished


def synthetic_image(rng: np.random.Generator, label: str, size: int = 40) -> Image.Image:
    """A noisy texture tinted by class: every image distinct, classes separable."""
    noise = rng.integers(0, 90, size=(size // 4, size // 4, 3)).astype(np.uint8)
    texture = np.asarray(Image.fromarray(noise).resize((size, size), Image.Resampling.BILINEAR))
    tint = np.array(TINT[label], dtype=np.int16)
    array = np.clip(texture.astype(np.int16) + tint - 45, 0, 255).astype(np.uint8)
    return Image.fromarray(array)


def make_competition(root: Path, per_class: dict[str, int] | None = None, n_test: int = 6,
                     n_unlabeled: int = 4, size: int = 40, seed: int = 0,
                     layout: str = "csv") -> Path:
    """Write a competition folder (train.csv + train/, test/, sample_submission.csv,
    unlabeled/) or the folder-per-class layout with `layout="folders"`."""
    rng = np.random.default_rng(seed)
    per_class = per_class or {c: 8 for c in CLASSES}
    (root / "train").mkdir(parents=True)
    rows = []
    for label, count in per_class.items():
        for i in range(count):
            name = f"{label}_{i:03d}.png"
            folder = root / "train" / label if layout == "folders" else root / "train"
            folder.mkdir(exist_ok=True)
            synthetic_image(rng, label, size).save(folder / name)
            rows.append({"id": name, "label": label})
    if layout == "csv":
        pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    for split, count in (("test", n_test), ("unlabeled", n_unlabeled)):
        (root / split).mkdir()
        for i in range(count):
            label = list(per_class)[i % len(per_class)]
            synthetic_image(rng, label, size).save(root / split / f"{split}_{i:03d}.png")
    ids = sorted(p.name for p in (root / "test").iterdir())
    pd.DataFrame({"id": ids, "label": list(per_class)[0]}).to_csv(
        root / "sample_submission.csv", index=False)
    return root


def tiny_overrides(tmp_path: Path, data_dir: Path, **extra: str) -> list[str]:
    """Overrides for a fast run: small CNN at 32 px, 2 folds, 2 epochs, random init, and
    stage=all without pseudo-label rounds, tuning, classic heads or the Optuna ensemble
    unless `extra` asks for them (a round asked for is trained whatever its tiny
    teacher's precision: pseudo.min_precision=null); units one at a time in this process
    (no worker processes: tests/test_workers.py runs those); float32 on every machine
    (`auto` trains small_cnn in bfloat16 on a CPU with AMX: tests/test_compute.py), so
    the tests' tolerances hold wherever they run."""
    settings = {
        "data.dir": str(data_dir), "runs_dir": str(tmp_path / "runs"),
        "submissions_dir": str(tmp_path / "submissions"), "name": "tiny",
        "backbones": "[small_cnn]", "weights": "none", "data.folds": "2",
        "train.epochs": "2", "train.patience": "2", "train.batch_size": "8",
        "augment.tta": "flips", "quiet": "true", "pseudo.rounds": "0", "tune.n_trials": "0",
        "backbone_overrides.small_cnn.model.image_size": "32", "classic.models": "[]",
        "ensemble.methods": "[mean]", "compute.workers": "1", "pseudo.min_precision": "null",
        "compute.precision": "float32",
    }
    settings.update(extra)
    for key in ("epochs", "patience"):  # else small_cnn's own schedule (config.yaml, 40) wins
        settings.setdefault(f"backbone_overrides.small_cnn.train.{key}", settings[f"train.{key}"])
    return [f"{k}={v}" for k, v in settings.items()]


def run_comp(*args: str) -> int:
    """comp in this process (`python -m comp.run <args>`); its exit code."""
    from comp.run import main  # imports TensorFlow: only once a test runs comp

    return main(list(args))


def comp_process(*args: str, crash_at: str | None = None, **popen) -> subprocess.Popen:
    """comp as a child process from the checkout; COMP_CRASH_AT=`crash_at` when given."""
    env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
    if crash_at:
        env[CRASH_ENV] = crash_at
    popen.setdefault("stdout", subprocess.DEVNULL)
    popen.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen([sys.executable, "-m", "comp.run", *args], cwd=ROOT, env=env,
                            text=True, **popen)


def run_comp_process(*args: str, crash_at: str | None = None, timeout: float = 600
                     ) -> subprocess.CompletedProcess:
    """comp as a child process, waited for: returncode, stdout and stderr (text)."""
    child = comp_process(*args, crash_at=crash_at, stdout=subprocess.PIPE)
    out, err = child.communicate(timeout=timeout)
    return subprocess.CompletedProcess(child.args, child.returncode, out, err)


def finish(child: subprocess.Popen, timeout: float = 600) -> None:
    """Wait for a comp child started by comp_process and assert that it succeeded."""
    _, err = child.communicate(timeout=timeout)
    assert child.returncode == 0, (err or "")[-3000:]


def copy_tree(source: Path, target: Path) -> Path:
    """Copy a built run (competition, runs/, submissions/) into `target`, keeping file
    modification times, so that a test gets its own copy of a module-scoped build."""
    shutil.copytree(source, target, dirs_exist_ok=True)
    return target


def run_path(tmp_path: Path, name: str = "tiny") -> Path:
    """runs/<name>/ of a run made with tiny_overrides(tmp_path, ...)."""
    return tmp_path / "runs" / name


def model_ids(tmp_path: Path, name: str = "tiny") -> list[str]:
    """The models with a folder under runs/<name>/models/, sorted."""
    return sorted(p.name for p in (run_path(tmp_path, name) / "models").iterdir())


def finished_models(tmp_path: Path, name: str = "tiny") -> list[str]:
    """The models with a prediction set under runs/<name>/preds/, sorted."""
    folder = run_path(tmp_path, name) / "preds"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def fold_metrics(tmp_path: Path, name: str = "tiny") -> list[Path]:
    """Every models/<model_id>/fold<k>/metrics.json of the run, sorted."""
    return sorted(run_path(tmp_path, name).glob("models/*/fold*/metrics.json"))


def submissions(tmp_path: Path, name: str = "tiny") -> Path:
    """submissions/<name>/ of a run made with tiny_overrides(tmp_path, ...)."""
    return tmp_path / "submissions" / name


def leaderboard(tmp_path: Path, name: str = "tiny") -> pd.DataFrame:
    """submissions/<name>/leaderboard.csv of a run made with tiny_overrides(tmp_path, ...)."""
    return pd.read_csv(submissions(tmp_path, name) / "leaderboard.csv")


def round_entries(board: pd.DataFrame, last_round: int = 1) -> pd.DataFrame:
    """The leaderboard's entries of `last_round`, once any other entry is checked to be
    round 0's pick kept at rank 1 (submit.round_margin: a round that does not lead it by
    half a paired standard error leaves it there, as a tiny run's round may)."""
    earlier = board[board["round"] != last_round]
    assert len(earlier) <= 1 and (earlier.empty or earlier["rank"].iloc[0] == 1), earlier
    return board[board["round"] == last_round]


def ensemble_dir(run: Path, method: str) -> Path:
    """The one ensemble/<method>-<members>/ folder of run directory `run`."""
    (folder,) = run.glob(f"ensemble/{method}-*/")
    return folder


def prediction_files(run: Path) -> dict[str, pd.DataFrame]:
    """Every preds/*/*.csv and ensemble/*/*.csv of run directory `run`, by relative path."""
    paths = sorted(run.glob("preds/*/*.csv")) + sorted(run.glob("ensemble/*/*.csv"))
    return {str(path.relative_to(run)): pd.read_csv(path) for path in paths}


def assert_same_predictions(got: Path, expected: Path) -> int:
    """The two run directories hold the same prediction files with equal values (to 1e-6);
    returns how many files were compared."""
    mine, theirs = prediction_files(got), prediction_files(expected)
    assert sorted(mine) == sorted(theirs) and theirs
    for name, frame in theirs.items():
        pd.testing.assert_frame_equal(mine[name], frame, check_exact=False, atol=1e-6)
    return len(theirs)


def optuna_url(tmp_path: Path, name: str = "tiny") -> str:
    """The default SQLite storage of a run made with tiny_overrides(tmp_path, ...)."""
    return f"sqlite:///{run_path(tmp_path, name) / 'optuna.db'}"


def load_study(url: str, name: str):
    """The Optuna study `name` in storage `url`; `<experiment>-<backbone>-fold<k>` names
    the study of that fold whatever its folds fingerprint."""
    import optuna

    match = re.fullmatch(r"(.+)-fold(\d+)", name)
    names = {s.study_name for s in optuna.get_all_study_summaries(url)}
    if name not in names and match:
        name = study_of(url, match.group(1), int(match.group(2)))
    return optuna.load_study(study_name=name, storage=url)


def study_names(url: str) -> list[str]:
    """Every study in storage `url`, sorted."""
    import optuna

    return sorted(optuna.get_all_study_names(url))


def study_of(url: str, prefix: str, fold: int) -> str:
    """The name of the study `<prefix>-<folds fingerprint>-fold<fold>` in `url`."""
    import optuna

    names = [s.study_name for s in optuna.get_all_study_summaries(url)
             if s.study_name.startswith(prefix + "-") and s.study_name.endswith(f"-fold{fold}")]
    assert len(names) == 1, names
    return names[0]


def make_pixel_competition(root: Path, side: int = 8, per_class: int = 10, n_test: int = 6,
                           test_ids: bool = False, seed: int = 0,
                           colour: str | None = None) -> Path:
    """Write a pixel-CSV competition (Digit Recognizer layout): train.csv =
    label,pixel0,...; test.csv = pixel rows (with an `id` column when `test_ids`, as
    Kannada-MNIST); sample_submission.csv = ImageId,Label (ImageId 1..N, or the ids).
    Labels 0, 1, 2: noise over a bright row band whose place is the class. With `colour`
    (interleaved or planar) each row is a colour image (a bluish background of little
    noise, a yellow band), its 3 x side^2 values in that order; the images as
    (N, side, side, 3) are kept in `colour_images.npy` (train rows, then test rows)."""
    rng = np.random.default_rng(seed)
    channels = 3 if colour else 1
    columns = [f"pixel{i}" for i in range(channels * side * side)]
    images: list[np.ndarray] = []

    def image(label: int) -> np.ndarray:
        band = slice(label * side // 3, (label + 1) * side // 3)
        if colour:
            array = rng.integers(0, 20, size=(side, side, 3)) + np.array([30, 90, 150])
            array[band] += np.array([200, 140, 0])
        else:
            array = rng.integers(0, 60, size=(side, side, 1))
            array[band] += 180
        images.append(array.astype(np.uint8))
        return (array.transpose(2, 0, 1) if colour == "planar" else array).reshape(-1)

    labels = [k for k in range(3) for _ in range(per_class)]
    root.mkdir(parents=True)
    train = pd.DataFrame([image(k) for k in labels], columns=columns)
    train.insert(0, "label", labels)
    train.to_csv(root / "train.csv", index=False)
    test = pd.DataFrame([image(i % 3) for i in range(n_test)], columns=columns)
    ids = [f"t{i}" for i in range(n_test)] if test_ids else list(range(1, n_test + 1))
    if test_ids:
        test.insert(0, "id", ids)
    test.to_csv(root / "test.csv", index=False)
    name = "id" if test_ids else "ImageId"
    pd.DataFrame({name: ids, "Label": 0}).to_csv(root / "sample_submission.csv", index=False)
    if colour:
        np.save(root / "colour_images.npy", np.stack(images))
    return root


def fake_prediction_set(run: Path, competition: Path, model_id: str = "small_cnn-fake",
                        seed: int = 0, oof_probs: np.ndarray | None = None,
                        test_probs: np.ndarray | None = None, **info: object) -> Path:
    """Write preds/<model_id>/ into run directory `run` as training would (oof.csv,
    test.csv, cv.json last), with random probabilities for `competition`'s images (or
    `oof_probs` for the train rows, in train.csv's order, and `test_probs` for the test
    images in read_competition's order) and `info` added to cv.json: enough for
    stage=submit, ensemble and the leaderboard without training a model."""
    from comp.data.folder import read_competition
    from comp.predictions import probs_frame, write_prediction_set

    rng = np.random.default_rng(seed)
    train = pd.read_csv(competition / "train.csv", dtype=str)
    test_ids = read_competition(competition).test["id"].tolist()
    classes = sorted(train["label"].unique())
    folds = np.arange(len(train)) % 2
    if oof_probs is None:
        oof_probs = rng.dirichlet(np.ones(len(classes)), len(train))
    oof = probs_frame(train["id"].tolist(), oof_probs, classes, fold=folds,
                      label=train["label"].tolist())
    if test_probs is None:
        test_probs = rng.dirichlet(np.ones(len(classes)), len(test_ids))
    test = probs_frame(test_ids, test_probs, classes)
    folder = run / "preds" / model_id
    write_prediction_set(folder, oof, test, classes,
                         {"model_id": model_id, "kind": "single", **info})
    return folder
