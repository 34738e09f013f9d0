"""Data that changes under a run directory: keys by content, checks before work.

Fast tests (prepare only, tiny images): content hashes and split keys, a replaced
training image named in the error, test-only changes keeping the folds, every split
decoded in prepare, skipped and nested files named in one warning line.
Slow tests (they train): after a change in test/ or the sample submission, the rerun's
submission equals a fresh run's on the new data.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from comp.data.folder import read_competition
from comp.run import main
from tests.conftest import make_competition, synthetic_image, tiny_overrides
from tests.helpers import copy_tree


def _prepare(tmp_path: Path, root: Path, capsys, **extra) -> tuple[int, list[str]]:
    code = main(["stage=prepare", *tiny_overrides(tmp_path, root, **extra)])
    return code, capsys.readouterr().err.strip().splitlines()


def _replace(path: Path, seed: int) -> None:
    import numpy as np

    synthetic_image(np.random.default_rng(seed), "beta", 40).save(path)


def test_hashes_and_split_keys_follow_content_and_order(competition):
    first = read_competition(competition)
    assert first.train["hash"].str.len().eq(32).all() and first.test["hash"].is_unique
    keys = {s: first.split_key(s) for s in ("train", "test", "unlabeled")}
    _replace(competition / "test" / "test_002.png", 99)
    second = read_competition(competition)
    assert second.split_key("test") != keys["test"]
    assert second.split_key("train") == keys["train"]
    sample = pd.read_csv(competition / "sample_submission.csv", dtype=str)
    sample.iloc[::-1].to_csv(competition / "sample_submission.csv", index=False)
    third = read_competition(competition)
    assert third.split_key("test") not in (keys["test"], second.split_key("test"))


def test_replaced_train_image_is_named(tmp_path, competition, capsys):
    assert _prepare(tmp_path, competition, capsys)[0] == 0
    _replace(competition / "train" / "gamma_003.png", 5)
    code, err = _prepare(tmp_path, competition, capsys)
    assert code == 2 and len(err) == 1
    assert "1 image(s) replaced" in err[0] and "gamma_003.png" in err[0]
    assert "name=<experiment>" in err[0]


def test_relabelled_and_added_train_images_are_named(tmp_path, competition, capsys):
    assert _prepare(tmp_path, competition, capsys)[0] == 0
    train = pd.read_csv(competition / "train.csv", dtype=str)
    train.loc[0, "label"] = "beta"
    shutil.copy(competition / "train" / "beta_000.png", competition / "train" / "new.png")
    train = pd.concat([train, pd.DataFrame({"id": ["new.png"], "label": ["beta"]})])
    train.to_csv(competition / "train.csv", index=False)
    code, err = _prepare(tmp_path, competition, capsys)
    assert code == 2 and "1 image(s) relabelled" in err[0] and "1 image(s) added" in err[0]
    assert "replaced" not in err[0]
    assert "alpha_000.png" in err[0] and "new.png" in err[0]


def test_test_only_changes_keep_the_folds(tmp_path, competition, capsys, comp_caplog):
    assert _prepare(tmp_path, competition, capsys)[0] == 0
    folds = (tmp_path / "runs" / "tiny" / "folds.csv").read_text()
    _replace(competition / "test" / "test_001.png", 7)
    sample = pd.read_csv(competition / "sample_submission.csv", dtype=str)
    sample.iloc[::-1].to_csv(competition / "sample_submission.csv", index=False)
    code = main(["stage=prepare", *tiny_overrides(tmp_path, competition, quiet="false")])
    assert code == 0
    assert (tmp_path / "runs" / "tiny" / "folds.csv").read_text() == folds
    assert "the test images changed since the last run (1 image(s) replaced, e.g. " \
        "['test_001.png'])" in comp_caplog.text


def test_image_cache_is_keyed_by_content_not_mtime(tmp_path, competition, capsys):
    import os

    assert _prepare(tmp_path, competition, capsys)[0] == 0
    cache = tmp_path / "runs" / "tiny" / "cache" / "images"
    before = sorted(p.name for p in cache.glob("test_*.npy"))
    path = competition / "test" / "test_000.png"
    data = path.read_bytes()
    path.write_bytes(data)  # same bytes, new mtime: cache still valid
    os.utime(path, (1, 1))
    assert _prepare(tmp_path, competition, capsys)[0] == 0
    assert sorted(p.name for p in cache.glob("test_*.npy")) == before
    _replace(path, 11)  # new content, same name and size class: decoded again
    assert _prepare(tmp_path, competition, capsys)[0] == 0
    assert len(list(cache.glob("test_*.npy"))) == len(before) + 1


@pytest.mark.parametrize("split, name", [("test", "test_003.png"),
                                         ("unlabeled", "unlabeled_001.png")])
def test_truncated_file_in_test_or_unlabeled_fails_in_prepare(tmp_path, competition, capsys,
                                                             split, name):
    path = competition / split / name
    path.write_bytes(path.read_bytes()[:60])
    code, err = _prepare(tmp_path, competition, capsys)
    assert code == 2 and len(err) == 1 and name in err[0] and "cannot read image" in err[0]


def test_non_image_in_unlabeled_listed_as_png_fails_in_prepare(tmp_path, competition, capsys):
    (competition / "unlabeled" / "notes.png").write_text("not an image")
    code, err = _prepare(tmp_path, competition, capsys)
    assert code == 2 and "notes.png" in err[0]


def test_class_folders_take_every_image_and_name_the_rest(tmp_path, comp_caplog):
    root = make_competition(tmp_path / "c", layout="folders")
    alpha = root / "train" / "alpha"
    Image.open(alpha / "alpha_000.png").convert("RGB").save(alpha / "extra.jfif", "JPEG")
    Image.open(alpha / "alpha_001.png").save(alpha / "no_suffix_png", "PNG")
    (alpha / "readme.txt").write_text("hi")
    (alpha / "Thumbs.db").write_bytes(b"\x00\x01")
    (alpha / "deeper").mkdir()
    Image.open(alpha / "alpha_002.png").save(alpha / "deeper" / "lost.png")
    comp = read_competition(root)
    ids = set(comp.train["id"])
    assert {"extra.jfif", "no_suffix_png"} <= ids and "readme.txt" not in ids
    skipped = [r.getMessage() for r in comp_caplog.records if "not images" in r.getMessage()]
    assert len(skipped) == 1 and "1 file(s)" in skipped[0] and "alpha/readme.txt" in skipped[0]
    assert "Thumbs.db" not in skipped[0]  # what Windows leaves: skipped without a word
    assert any("1 sub-folder(s)" in r.getMessage() and "alpha/deeper" in r.getMessage()
               for r in comp_caplog.records)



def test_class_folders_with_the_same_file_names_take_the_folder_into_the_id(tmp_path):
    """An export that numbers each class folder's images from 0001.jpg: every image is
    read, its id <class>/<file name>, instead of a duplicate-id error."""
    root = make_competition(tmp_path / "c", layout="folders")
    for folder in (root / "train").iterdir():
        for i, path in enumerate(sorted(folder.iterdir())):
            path.rename(folder / f"{i:04d}.png")
    comp = read_competition(root)
    assert len(comp.train) == 24 and comp.train["id"].is_unique
    assert set(comp.train["id"]) == {f"{c}/{i:04d}.png" for c in ("alpha", "beta", "gamma")
                                     for i in range(8)}
    assert (comp.train["id"].str.split("/").str[0] == comp.train["label"]).all()
    assert any("<class folder>/<file name>" in note for note in comp.notes)  # said once
    assert all(Path(p).is_file() and Path(p).name == i.split("/")[1]
               for i, p in zip(comp.train["id"], comp.train["path"], strict=True))


# ---- slow: the rerun after a data change equals a fresh run on the new data ----------

def _run_all(tmp_path: Path, root: Path, where: str) -> pd.DataFrame:
    overrides = tiny_overrides(tmp_path / where, root)
    assert main(["stage=all", *overrides]) == 0
    files = sorted((tmp_path / where / "submissions" / "tiny").glob("*__cv-*.csv"))
    assert files
    return {f.name.split("__")[0]: pd.read_csv(f, dtype={"id": str, "image_id": str,
                                                         "target": str, "label": str},
                                               keep_default_na=False)
            for f in files}


def _probability_sample(root: Path) -> None:
    """A sample with one column per class: submissions carry probabilities, so a stale
    or misaligned prediction cannot hide behind an equal argmax."""
    sample = pd.read_csv(root / "sample_submission.csv", dtype=str)
    pd.DataFrame({"id": sample["id"], "alpha": 0.3, "beta": 0.3, "gamma": 0.4}).to_csv(
        root / "sample_submission.csv", index=False)


@pytest.fixture(scope="module")
def ran_before_change(tmp_path_factory) -> Path:
    """Built once for the module: a tiny competition (probability sample) in comp/ and its
    stage=all run in rerun/; each test changes its own copy (copy_tree)."""
    base = tmp_path_factory.mktemp("before_change")
    root = make_competition(base / "comp")
    _probability_sample(root)
    _run_all(base, root, "rerun")
    return base


def _rerun_equals_fresh(tmp_path: Path, root: Path, change) -> None:
    """`root` was run in tmp_path/rerun before: after `change`, the rerun there equals a
    fresh run on a copy of the changed folder."""
    change(root)
    rerun = _run_all(tmp_path, root, "rerun")
    fresh_root = tmp_path / "fresh_data"
    shutil.copytree(root, fresh_root)
    fresh = _run_all(tmp_path, fresh_root, "fresh")
    assert sorted(rerun) == sorted(fresh)
    for name, frame in fresh.items():
        pd.testing.assert_frame_equal(rerun[name], frame, check_exact=False, atol=1e-6)


def _replace_test_image(root: Path) -> None:
    _replace(root / "test" / "test_000.png", 21)
    _replace(root / "test" / "test_004.png", 22)


def _reorder_sample(root: Path) -> None:
    sample = pd.read_csv(root / "sample_submission.csv", dtype=str)
    sample.iloc[[3, 0, 5, 1, 4, 2]].to_csv(root / "sample_submission.csv", index=False)


def _new_test_set_same_size(root: Path) -> None:
    import numpy as np

    rng = np.random.default_rng(42)
    shutil.rmtree(root / "test")
    (root / "test").mkdir()
    names = [f"stage2_{i:03d}.png" for i in range(6)]
    for i, name in enumerate(names):
        synthetic_image(rng, ["gamma", "alpha", "beta"][i % 3], 40).save(root / "test" / name)
    pd.DataFrame({"id": names, "alpha": 0.3, "beta": 0.3, "gamma": 0.4}).to_csv(
        root / "sample_submission.csv", index=False)


def _add_test_image(root: Path) -> None:
    _replace(root / "test" / "test_999.png", 23)
    sample = pd.read_csv(root / "sample_submission.csv", dtype=str)
    extra = pd.DataFrame({"id": ["test_999.png"], "alpha": [0.3], "beta": [0.3],
                          "gamma": [0.4]})
    pd.concat([sample, extra]).to_csv(root / "sample_submission.csv", index=False)


@pytest.mark.slow
@pytest.mark.parametrize("change", [_replace_test_image, _reorder_sample,
                                    _new_test_set_same_size, _add_test_image],
                         ids=["replace-test-image", "reorder-sample", "new-test-set",
                              "add-test-image"])
def test_rerun_after_test_change_equals_fresh_run(tmp_path, ran_before_change, change):
    copy_tree(ran_before_change, tmp_path)
    _rerun_equals_fresh(tmp_path, tmp_path / "comp", change)


@pytest.mark.slow
def test_rerun_after_train_image_replaced_is_refused_with_the_id(tmp_path, competition, capsys):
    _run_all(tmp_path, competition, "rerun")
    _replace(competition / "train" / "beta_004.png", 31)
    code = main(["stage=all", *tiny_overrides(tmp_path / "rerun", competition)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "beta_004.png" in err[-1] and "replaced" in err[-1]


@pytest.mark.slow
def test_kaggle_style_folder_runs_end_to_end(tmp_path, competition):
    """image_id,target with numeric targets, ids without extension, 0000-like ids and a
    label NA: stage=all runs, and the submission has the sample's ids and labels as
    written."""
    train = pd.read_csv(competition / "train.csv", dtype=str)
    codes = {"alpha": "0", "beta": "1", "gamma": "NA"}
    pd.DataFrame({"image_id": train["id"].str.removesuffix(".png"),
                  "target": train["label"].map(codes)}).to_csv(competition / "train.csv",
                                                              index=False)
    sample = pd.read_csv(competition / "sample_submission.csv", dtype=str)
    for i, name in enumerate(sample["id"]):
        (competition / "test" / name).rename(competition / "test" / f"{i:04d}.png")
    ids = [f"{i:04d}" for i in range(len(sample))]
    pd.DataFrame({"image_id": ids, "target": "0"}).to_csv(
        competition / "sample_submission.csv", index=False)
    subs = _run_all(tmp_path, competition, "k")
    for frame in subs.values():
        assert list(frame.columns) == ["image_id", "target"]
        assert frame["image_id"].tolist() == ids
        assert set(frame["target"]) <= {"0", "1", "NA"}
