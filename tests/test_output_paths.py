"""Every output path is checked before work with one line; a full disk is one line naming
the file and its disk."""

import errno

import pandas as pd
import pytest

from comp.run import main
from tests.helpers import fake_prediction_set, run_path, tiny_overrides


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("comp: error: "), err
    return err[0]


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "a_file.txt"
    path.write_text("not a folder")
    return path


@pytest.mark.parametrize("stage, key, where", [
    ("prepare", "runs_dir", "file"), ("prepare", "runs_dir", "through"),
    ("submit", "submissions_dir", "file"), ("submit", "submissions_dir", "through"),
    ("predict", "predict.output", "through"),
    ("export", "export.output", "file"), ("export", "export.output", "through"),
])
def test_an_output_that_is_or_goes_through_a_file(tmp_path, competition, a_file, capsys,
                                                  stage, key, where):
    fake_prediction_set(run_path(tmp_path), competition)
    target = a_file if where == "file" else a_file / "sub" / "out.csv"
    extra = [f"predict.input={competition / 'test'}"] if stage == "predict" else []
    code = main([f"stage={stage}", *extra, *tiny_overrides(tmp_path, competition),
                 f"{key}={target}"])
    line = _one_line(capsys)
    assert code == 2 and f"{key}=" in line and str(a_file) in line
    assert ("goes through the file" if where == "through" else "is a file") in line
    assert not (tmp_path / "submissions").exists()


@pytest.mark.parametrize("key", ["runs_dir", "submissions_dir", "predict.output",
                                 "export.output"])
def test_an_output_that_cannot_be_written(tmp_path, competition, capsys, monkeypatch, key):
    """Tests run as root, for whom chmod stops no write: the writability check is told
    that the folder is read-only instead."""
    import comp.workspace

    locked = tmp_path / "locked"
    locked.mkdir()
    real = comp.workspace.os.access
    monkeypatch.setattr(comp.workspace.os, "access",
                        lambda path, mode: real(path, mode) and locked not in
                        [comp.workspace.Path(path), *comp.workspace.Path(path).parents])
    stage = {"submissions_dir": "submit", "predict.output": "predict",
             "export.output": "export"}.get(key, "prepare")
    fake_prediction_set(run_path(tmp_path), competition)
    code = main([f"stage={stage}", f"predict.input={competition / 'test'}",
                 *tiny_overrides(tmp_path, competition), f"{key}={locked / 'out' / 'x.csv'}"])
    line = _one_line(capsys)
    assert code == 2 and f"{key}=" in line and "not writable" in line


def test_a_full_disk_while_writing_a_csv_is_one_line(tmp_path, competition, capsys,
                                                     monkeypatch):
    fake_prediction_set(run_path(tmp_path), competition)
    real = pd.DataFrame.to_csv

    def full(frame, path=None, *args, **kwargs):
        if "submissions" in str(path):
            raise OSError(errno.ENOSPC)  # errno in the arguments only, as some writers do
        return real(frame, path, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    assert main(["stage=submit", *tiny_overrides(tmp_path, competition)]) == 2
    line = _one_line(capsys)
    assert "No space left on device" in line and str(tmp_path / "submissions") in line
    assert "__cv-" in line  # the file that could not be written
    monkeypatch.setattr(pd.DataFrame, "to_csv", real)
    assert main(["stage=submit", *tiny_overrides(tmp_path, competition)]) == 0


@pytest.mark.slow
def test_a_full_disk_while_writing_weights_is_one_line_and_the_rerun_resumes(
        tmp_path, competition, capsys, monkeypatch):
    import keras

    real = keras.Model.save_weights

    def full(model, path, *args, **kwargs):  # how h5py reports it
        raise OSError(f"Unable to synchronously create file (file write failed: filename = "
                      f"'{path}', errno = 28, error message = 'No space left on device')")

    monkeypatch.setattr(keras.Model, "save_weights", full)
    assert main(["stage=train", *tiny_overrides(tmp_path, competition)]) == 2
    line = _one_line(capsys)
    assert "No space left on device on the disk holding" in line and "model.weights.h5" in line
    assert not list(run_path(tmp_path).glob("models/*/fold*/metrics.json"))
    monkeypatch.setattr(keras.Model, "save_weights", real)
    assert main(["stage=train", *tiny_overrides(tmp_path, competition)]) == 0
    assert len(list(run_path(tmp_path).glob("models/*/fold*/metrics.json"))) == 2


@pytest.mark.slow
def test_too_little_space_for_weights_stops_before_h5py_writes(tmp_path, competition, capsys,
                                                               monkeypatch):
    import shutil
    from collections import namedtuple

    import keras

    writes = []
    monkeypatch.setattr(keras.Model, "save_weights", lambda *a, **k: writes.append(a))
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(1 << 30, 0, 4096))
    assert main(["stage=train", *tiny_overrides(tmp_path, competition)]) == 2
    line = _one_line(capsys)
    assert "No space left on device on the disk holding" in line and "model.weights.h5" in line
    assert writes == []  # h5py never started the file


def _snapshot(folder):
    return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*")}


@pytest.mark.slow
def test_predict_and_export_from_a_read_only_run(tmp_path, trained, monkeypatch):
    """A trained run attached read-only (a Kaggle dataset): predict and export with their
    output elsewhere read it and change nothing. Tests run as root, for whom chmod stops
    no write, so the run directory is also reported read-only to the writability check and
    compared file by file before and after."""
    import os
    import stat

    import comp.workspace

    run = run_path(tmp_path)
    (run / ".lock").unlink()  # a copy may come without one
    before = _snapshot(run)
    for path in [run, *run.rglob("*")]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    real = comp.workspace.os.access
    monkeypatch.setattr(comp.workspace.os, "access", lambda path, mode: real(path, mode) and not (
        mode & os.W_OK and run in [comp.workspace.Path(path), *comp.workspace.Path(path).parents]))
    try:
        overrides = tiny_overrides(tmp_path, trained)
        out = tmp_path / "out"
        assert main(["stage=predict", *overrides, f"predict.input={trained / 'test'}",
                     f"predict.output={out}/"]) == 0
        written = list(out.iterdir())
        assert len(written) == 1
        assert written[0].name.startswith("test__small_cnn-") and written[0].suffix == ".csv"
        assert len(pd.read_csv(written[0])) == 6
        assert main(["stage=export", *overrides, f"export.output={tmp_path / 'export'}"]) == 0
        assert (tmp_path / "export" / "model.keras").exists()
        assert main(["stage=predict", *overrides, f"predict.input={trained / 'test'}"]) == 2
        assert _snapshot(run) == before
    finally:
        for path in [run, *run.rglob("*")]:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)


def test_fold_paths_are_the_fold_folders_in_unit_order(tmp_path):
    from comp.workspace import FOLD_WEIGHTS, fold_path, fold_paths

    for fold in (10, 2, 0):
        fold_path(tmp_path, fold).mkdir()
    (tmp_path / ".fold3.lock").touch()  # a lock, not a fold
    (tmp_path / "fold7").touch()  # a file, not a folder
    (tmp_path / "folds").mkdir()  # not a unit
    (fold_path(tmp_path, 2) / FOLD_WEIGHTS).touch()
    assert list(fold_paths(tmp_path)) == [0, 2, 10]
    assert fold_paths(tmp_path, FOLD_WEIGHTS) == {2: tmp_path / "fold2"}


def test_pseudo_rounds_are_numbered_folders_in_numeric_order(tmp_path):
    from comp.workspace import RunDir

    for name in ("round2", "round10", "round1", "round_old", ".round3.partial"):
        (tmp_path / "pseudo" / name).mkdir(parents=True)
    assert RunDir(tmp_path).pseudo_rounds() == [1, 2, 10]
