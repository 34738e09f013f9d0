"""Messy data and settings that used to end in a traceback, a silent change or a message
pointing the wrong way: each is one line naming the real cause (or a warning)."""

import shutil

import pandas as pd
import pytest

from comp.run import main
from tests.helpers import fake_prediction_set, run_path, tiny_overrides


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("comp: error: "), err
    return err[0]


def _one_hot(competition, **columns):
    train = pd.read_csv(competition / "train.csv", dtype=str)
    hot = pd.get_dummies(train["label"]).astype(int).assign(**columns)
    pd.concat([train[["id"]], hot], axis=1).to_csv(competition / "train.csv", index=False)
    return hot


def test_an_all_zero_one_hot_column_is_named_in_a_warning(tmp_path, competition, comp_caplog):
    _one_hot(competition, delta=0)
    assert main(["stage=prepare", *tiny_overrides(tmp_path, competition)]) == 0
    warned = [r.getMessage() for r in comp_caplog.records if "one-hot" in r.getMessage()]
    assert len(warned) == 1 and "['delta']" in warned[0] and "0 on every row" in warned[0]


@pytest.mark.parametrize("alpha, count", [(0, "0"), (1, "2")])
def test_a_one_hot_row_with_no_class_or_two(tmp_path, competition, capsys, alpha, count):
    train = pd.read_csv(competition / "train.csv", dtype=str)
    hot = _one_hot(competition)
    row = int((train["label"] == ("beta" if alpha else "alpha")).to_numpy().argmax())
    hot.loc[row, "alpha"] = alpha
    pd.concat([train[["id"]], hot], axis=1).to_csv(competition / "train.csv", index=False)
    assert main(["stage=prepare", *tiny_overrides(tmp_path, competition)]) == 2
    line = _error(capsys)
    assert f"line {row + 2}: {count} of the one-hot label columns" in line


def test_a_class_folder_with_only_hidden_files_is_named(tmp_path, competition, capsys):
    train = pd.read_csv(competition / "train.csv", dtype=str)
    for image_id, label in zip(train["id"], train["label"], strict=True):
        (competition / "train" / label).mkdir(exist_ok=True)
        shutil.move(competition / "train" / image_id, competition / "train" / label / image_id)
    (competition / "train.csv").unlink()
    (competition / "train" / "delta").mkdir()
    (competition / "train" / "delta" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    assert main(["stage=prepare", *tiny_overrides(tmp_path, competition)]) == 2
    line = _error(capsys)
    assert str(competition / "train" / "delta") in line and "holds no image" in line


def test_a_dedup_distance_joining_every_image_is_one_line(tmp_path, competition, capsys):
    code = main(["stage=prepare", *tiny_overrides(tmp_path, competition),
                 "data.dedup_max_distance=64", "data.dedup_min_correlation=-1"])
    line = _error(capsys)
    assert code == 2 and "data.dedup_max_distance" in line and "1 group(s)" in line
    assert "n_splits" not in line


def test_a_sample_with_the_ids_second_names_the_column_order(tmp_path, competition, capsys):
    sample = pd.read_csv(competition / "sample_submission.csv", dtype=str)
    sample[["label", "id"]].to_csv(competition / "sample_submission.csv", index=False)
    assert main(["stage=prepare", *tiny_overrides(tmp_path, competition)]) == 2
    line = _error(capsys)
    assert "['label', 'id']" in line and "ids must come first" in line
    assert "duplicate" not in line


def test_a_typo_in_ensemble_members_is_named(tmp_path, competition, capsys):
    for seed, model_id in enumerate(["small_cnn-aaaa", "small_cnn-bbbb"]):
        fake_prediction_set(run_path(tmp_path), competition, model_id, seed)
    code = main(["stage=ensemble", *tiny_overrides(tmp_path, competition),
                 "ensemble.members=[small_cnn-aaaa,small_cnn-bbbx]"])
    line = _error(capsys)
    assert code == 2 and "ensemble.members has 'small_cnn-bbbx'" in line
    assert "small_cnn-bbbb" in line  # what exists


@pytest.mark.parametrize("entry, needle", [
    ("pixels@0+logreg", "size 0 after @"),
    ("color@0+logreg", "size 0 after @"),
    ("mobilenet_025@8+logreg", "mobilenet_025 takes images of at least 32 px, not 8"),
])
def test_a_classic_entry_size_names_the_entry(tmp_path, competition, capsys, entry, needle):
    code = main(["stage=train", *tiny_overrides(tmp_path, competition), "backbones=[]",
                 f"classic.models=[{entry}]"])
    line = _error(capsys)
    assert code == 2 and f"classic.models entry '{entry}'" in line and needle in line
    assert "model.image_size" not in line
