import pandas as pd
import pytest

from comp.data.folder import check_id, read_competition
from comp.errors import CompError
from tests.conftest import CLASSES, make_competition


def test_reads_csv_layout(competition):
    comp = read_competition(competition)
    assert comp.classes == CLASSES
    assert len(comp.train) == 24 and len(comp.test) == 6 and len(comp.unlabeled) == 4
    assert comp.submits_labels
    sample = pd.read_csv(competition / "sample_submission.csv")
    assert comp.test["id"].tolist() == sample["id"].tolist()


def test_reads_folder_per_class_layout(tmp_path):
    root = make_competition(tmp_path / "c", layout="folders")
    comp = read_competition(root)
    assert comp.classes == CLASSES and len(comp.train) == 24
    pairs = zip(comp.train.path, comp.train.label, strict=True)
    assert all(path.split("/")[-2] == label for path, label in pairs)


@pytest.mark.parametrize("layout", ["csv", "folders"])
def test_kaggles_split_images_folders_are_read_as_they_come(tmp_path, layout):
    """train_images/, test_images/ and unlabeled_images/ (APTOS, Cassava), ids carrying
    the folder too; where neither name exists the error names both."""
    root = make_competition(tmp_path / "k", layout=layout)
    for split in ("train", "test", "unlabeled"):
        (root / split).rename(root / f"{split}_images")
    if layout == "csv":
        train = pd.read_csv(root / "train.csv", dtype=str)
        train.assign(id="train_images/" + train["id"]).to_csv(root / "train.csv", index=False)
    comp = read_competition(root)
    assert len(comp.train) == 24 and len(comp.test) == 6 and len(comp.unlabeled) == 4
    assert all("/train_images/" in p for p in comp.train.path)
    assert all("/test_images/" in p for p in comp.test.path)
    (root / "test_images").rename(root / "elsewhere")
    with pytest.raises(CompError, match=r"/test: test image folder not found \(nor "
                                         r"test_images/\)"):
        read_competition(root)


def test_probability_submission_detected(competition):
    sample = pd.read_csv(competition / "sample_submission.csv")
    pd.DataFrame({"id": sample.id, **{c: 0.0 for c in CLASSES}}).to_csv(
        competition / "sample_submission.csv", index=False)
    assert not read_competition(competition).submits_labels


@pytest.mark.parametrize("bad", ["a/b.png", "a\\b.png", "..", "/etc/passwd", "x\x00.png", ""])
def test_ids_must_be_plain_file_names(bad):
    with pytest.raises(CompError):
        check_id(bad, "train.csv line 2")


def _edit_train(root, frame):
    frame.to_csv(root / "train.csv", index=False)


@pytest.mark.parametrize("mutate, needle", [
    (lambda r, f: _edit_train(r, pd.concat([f, f.head(1)])), "duplicate id"),
    (lambda r, f: _edit_train(r, f.assign(id=f.id.where(f.index != 0, "ghost.png"))),
     "missing from"),
    (lambda r, f: _edit_train(r, f.assign(id=f.id.where(f.index != 0, "../x.png"))),
     "not a plain file name"),
    (lambda r, f: _edit_train(r, f.rename(columns={"label": "kind"}).assign(note="x")),
     "data.label_column"),
    (lambda r, f: _edit_train(r, f.rename(columns={"id": "picture"}).assign(note="x")),
     "data.id_column"),
    (lambda r, f: (r / "train.csv").write_text(""), "file is empty"),
    (lambda r, f: (r / "train.csv").write_text("id,label\n"), "no rows"),
    (lambda r, f: _edit_train(r, f.assign(label="alpha")), "only one class"),
    (lambda r, f: (r / "sample_submission.csv").unlink(), "sample_submission.csv: not found"),
    (lambda r, f: pd.DataFrame({"id": ["nope.png"], "label": ["a"]}).to_csv(
        r / "sample_submission.csv", index=False), "have no image"),
    (lambda r, f: _edit_train(r, f.assign(label=f.label.where(f.index != 0, ""))), "empty label"),
])
def test_bad_folders_give_one_clear_line(competition, mutate, needle):
    frame = pd.read_csv(competition / "train.csv")
    mutate(competition, frame)
    with pytest.raises(CompError) as info:
        read_competition(competition)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_missing_folder(tmp_path):
    with pytest.raises(CompError, match="competition folder not found"):
        read_competition(tmp_path / "nowhere")


def test_unlisted_images_warn(competition, comp_caplog):
    (competition / "train" / "alpha_000.png").rename(competition / "train" / "extra.png")
    frame = pd.read_csv(competition / "train.csv")
    frame = frame[frame.id != "alpha_000.png"]
    frame.to_csv(competition / "train.csv", index=False)
    read_competition(competition)
    assert "not in train.csv" in comp_caplog.text
