"""Bad input: one clear line naming the file or key, exit code 2, nothing trusted written."""

from __future__ import annotations

import errno
import os
import shutil

import pandas as pd
import pytest
from PIL import Image

from comp.run import main
from tests.conftest import tiny_overrides


def _train(root):
    return pd.read_csv(root / "train.csv")


def _write_train(root, frame):
    frame.to_csv(root / "train.csv", index=False)


def _set_id(root, new_id):
    frame = _train(root)
    frame.loc[0, "id"] = new_id
    _write_train(root, frame)


def _replace_image(root, data: bytes):
    (root / "train" / _train(root).id[0]).write_bytes(data)


def _truncated(root):
    name = _train(root).id[0]
    Image.new("RGB", (64, 64), (200, 10, 10)).save(root / "train" / "x.jpg")
    data = (root / "train" / "x.jpg").read_bytes()
    (root / "train" / "x.jpg").unlink()
    (root / "train" / name).write_bytes(data[: len(data) // 2])


def _without_labels(root):
    """train.csv removed, and train/'s files renamed so that their names carry no class."""
    _rm(root / "train.csv")
    for number, path in enumerate(sorted((root / "train").iterdir())):
        path.rename(path.with_name(f"img{number:03d}.png"))


def _rm(path):
    if path.is_dir():
        import shutil

        shutil.rmtree(path)
    else:
        path.unlink()


CASES = {
    "missing train.csv": (_without_labels, [], "train.csv: not found"),
    "missing test folder": (lambda r: _rm(r / "test"), [], "test image folder not found"),
    "missing sample submission, no test image": (
        lambda r: [_rm(p) for p in (r / "sample_submission.csv", *(r / "test").iterdir())], [],
        "sample_submission.csv: not found, and"),
    "missing data folder": (lambda r: None, ["data.dir=/nonexistent/comp"],
                            "competition folder not found"),
    "a zip, not a folder": (lambda r: shutil.make_archive(str(r.parent / "afile"), "zip", r),
                            ["data.dir=AFILE.zip"], "afile.zip: a zip archive, not a folder; "
                            "unzip it"),
    "a file, not a folder": (lambda r: (r.parent / "afile").write_text("x"),
                             ["data.dir=AFILE"], "afile: not a folder; set data.dir"),
    "empty train.csv": (lambda r: (r / "train.csv").write_text(""), [], "file is empty"),
    "header only": (lambda r: (r / "train.csv").write_text("id,label\n"), [], "no rows"),
    "wrong columns": (lambda r: _write_train(r, _train(r).rename(columns={"id": "picture"})),
                      [], "set data.id_column"),
    "duplicate ids": (lambda r: _write_train(r, pd.concat([_train(r), _train(r).head(2)])), [],
                      "duplicate id"),
    "listed file missing": (lambda r: _rm(r / "train" / _train(r).id[3]), [], "missing from"),
    "id with slash": (lambda r: _set_id(r, "sub/x.png"), [], "not a plain file name"),
    "id with backslash": (lambda r: _set_id(r, "sub\\x.png"), [], "not a plain file name"),
    "id dot-dot": (lambda r: _set_id(r, ".."), [], "not a plain file name"),
    "absolute id": (lambda r: _set_id(r, "/etc/passwd"), [], "not a plain file name"),
    "empty label": (lambda r: _write_train(r, _train(r).assign(
        label=lambda f: f.label.where(f.index != 2, ""))), [], "empty label"),
    "single class": (lambda r: _write_train(r, _train(r).assign(label="alpha")), [],
                     "only one class"),
    "class smaller than folds": (lambda r: None, ["data.folds=9"], "fewer than data.folds=9"),
    "truncated jpeg": (_truncated, [], "cannot read image"),
    "zero-byte image": (lambda r: _replace_image(r, b""), [], "0 bytes"),
    "text file named png": (lambda r: _replace_image(r, b"hello, not an image"), [],
                            "cannot read image"),
    "image over the pixel limit": (lambda r: None, ["data.max_image_pixels=100"],
                                   "over data.max_image_pixels=100"),
    "sample ids not in test": (lambda r: pd.DataFrame({"id": ["ghost.png"], "label": ["a"]})
                               .to_csv(r / "sample_submission.csv", index=False), [],
                               "have no image in"),
    "sample columns unknown": (lambda r: pd.DataFrame({"id": ["x"], "a": [1], "b": [2]})
                               .to_csv(r / "sample_submission.csv", index=False), [],
                               "neither one label column nor the classes"),
    "unknown config key": (lambda r: None, ["trian.epochs=3"], "unknown key 'trian'"),
    "wrong value type": (lambda r: None, ["train.epochs=many"], "train.epochs"),
    "unknown backbone": (lambda r: None, ["backbones=[resnet999]"], "unknown backbone"),
    "unknown stage": (lambda r: None, ["stage=deploy"], "unknown stage 'deploy'"),
    "bad experiment name": (lambda r: None, ["name=a/b"], "plain folder name"),
    "bad params value": (lambda r: None, ["stage=train", "params=worst"], "params='worst'"),
    "unfreeze point not in model": (lambda r: None, [
        "stage=train", "backbones=[mobilenet_025]", "model.image_size=32",
        "model.unfreeze=block99"], "has no layer 'block99'"),
    "missing weight file": (lambda r: None, ["stage=train", "backbones=[mobilenet_025]",
                                             "weights=/nowhere/w.h5"], "file not found"),
    "run directory not creatable": (lambda r: (r.parent / "afile").write_text("x"),
                                    ["runs_dir=AFILE"], "afile: is a file, not a folder"),
    "pseudo split unknown": (lambda r: None, ["stage=pseudo", "pseudo.splits=[bogus]"],
                             "pseudo.splits"),
    "tuning an unknown backbone": (lambda r: None, ["stage=tune", "tune.backbones=[vgg16]"],
                                   "tune.backbones"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input(case, tmp_path, competition, capsys):
    mutate, extra, needle = CASES[case]
    mutate(competition)
    extra = [e.replace("AFILE", str(competition.parent / "afile")) for e in extra]
    code = main(["stage=prepare", *tiny_overrides(tmp_path, competition), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("comp: error: ") and needle in err[0], err
    assert not list(tmp_path.glob("runs/*/folds.csv")) or "stage=" in " ".join(extra)


def test_unlisted_and_extra_files_only_warn(tmp_path, competition, capsys):
    Image.new("RGB", (8, 8)).save(competition / "train" / "stray.png")
    Image.new("RGB", (8, 8)).save(competition / "test" / "stray.png")
    assert main(["stage=prepare", *tiny_overrides(tmp_path, competition)]) == 0


@pytest.mark.slow
def test_disk_full_while_writing_predictions(tmp_path, competition, monkeypatch, capsys):
    import comp.artifacts

    real = comp.artifacts.write_csv

    def full(target, frame):
        if str(target).endswith("val.csv"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))
        real(target, frame)

    monkeypatch.setattr("comp.training.trainer.write_csv", full)
    code = main(["stage=train", *tiny_overrides(tmp_path, competition)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "No space left on device" in err[-1] and "val.csv" in err[-1]
    assert not list(tmp_path.glob("runs/tiny/models/*/fold*/metrics.json"))  # nothing trusted
    monkeypatch.setattr("comp.training.trainer.write_csv", real)
    assert main(["stage=train", *tiny_overrides(tmp_path, competition)]) == 0


def test_a_second_process_on_the_same_run_is_refused(tmp_path, competition, capsys):
    from comp.workspace import run_dir, run_lock

    with run_lock(run_dir(str(tmp_path / "runs"), "tiny"), "train"):
        assert main(["stage=prepare", *tiny_overrides(tmp_path, competition)]) == 2
    assert "already in use" in capsys.readouterr().err


def test_a_csv_to_predict_without_pixels_is_one_line(tmp_path):
    from comp.errors import CompError
    from comp.inference import input_images

    rows = tmp_path / "new_rows.csv"
    rows.write_text("id,label\na.png,0\n")
    with pytest.raises(CompError, match="new_rows.csv: a CSV without pixel columns"):
        input_images(rows, tmp_path / "pixels")
