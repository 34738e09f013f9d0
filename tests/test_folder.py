import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from comp.data.folder import check_id, image_files, read_competition
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
                                         r"test_images/ or images/\)"):
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
    (lambda r, f: ((r / "sample_submission.csv").unlink(),
                   [p.unlink() for p in (r / "test").iterdir()]), "holds no image to predict"),
    (lambda r, f: ((r / "sample_submission.csv").unlink(), shutil.rmtree(r / "test")),
     "sample_submission.csv: not found"),
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


def test_without_a_sample_submission_every_test_image_is_predicted(competition):
    """An in-house folder (train + test, no sample): the submission is id,label over the
    test folder's images, ids their file names, said in a note; one probability column per
    class with data.submission_values=probability."""
    (competition / "sample_submission.csv").unlink()
    folder = read_competition(competition)
    names = sorted(p.name for p in (competition / "test").iterdir())
    assert folder.test["id"].tolist() == names == folder.test["submission_id"].tolist()
    assert folder.submission_columns == ["id", "label"] and folder.submits_labels
    assert any("no sample_submission.csv" in note and "id,label" in note
               for note in folder.notes)
    probabilities = read_competition(competition, submission_values="probability")
    assert probabilities.submission_columns == ["id", *CLASSES]
    assert probabilities.probability_columns == {c: c for c in CLASSES}


def _test_in_class_folders(root: Path) -> list[str]:
    """Move test/'s images into test/<class>/ by the class make_competition drew each as
    (image i: class i mod 3), drop the sample submission; the labels in test order."""
    (root / "sample_submission.csv").unlink()
    labels = []
    for i, path in enumerate(sorted((root / "test").iterdir())):
        labels.append(CLASSES[i % len(CLASSES)])
        (root / "test" / labels[-1]).mkdir(exist_ok=True)
        path.rename(root / "test" / labels[-1] / path.name)
    return labels


def test_a_test_folder_of_class_folders_is_a_labelled_holdout(competition):
    """test/<class>/<image> without a sample (an in-house split into train and test class
    folders): every image is predicted, ids <class>/<file name>, the labels kept apart
    (test_labels, for stage=submit's score), said in a note; a sub-folder that is no class
    is one error line."""
    labels = _test_in_class_folders(competition)
    folder = read_competition(competition)
    ids = [f"{label}/{path.name}" for label in CLASSES
           for path in sorted((competition / "test" / label).iterdir())]
    assert folder.test["id"].tolist() == ids == folder.test["submission_id"].tolist()
    assert list(folder.test_labels) == [i.split("/")[0] for i in ids]
    assert sorted(folder.test_labels) == sorted(labels) and "label" not in folder.test
    assert folder.submission_columns == ["id", "label"]
    assert any("labelled holdout" in note for note in folder.notes)
    (competition / "test" / "zeta").mkdir()
    with pytest.raises(CompError) as info:
        read_competition(competition)
    assert "'zeta'" in str(info.value) and "not classes" in str(info.value)
    assert "\n" not in str(info.value)


def test_a_sample_submission_lists_a_labelled_holdout_by_file_name(competition,
                                                                    comp_caplog):
    """test/<class>/<image> beside a sample submission of plain file names (was: "id(s)
    have no image"): the sample's order and ids, the labels kept apart; a name in two
    class folders is one error line, an image the sample leaves out one warning."""
    sample = pd.read_csv(competition / "sample_submission.csv")
    _test_in_class_folders(competition)
    listed = sample.iloc[::-1].assign(id=lambda f: f["id"].str.replace(".png", ""))
    listed.to_csv(competition / "sample_submission.csv", index=False)
    folder = read_competition(competition)
    assert folder.test["submission_id"].tolist() == listed["id"].tolist()
    assert [i.split("/")[1] for i in folder.test["id"]] == [f"{i}.png" for i in listed["id"]]
    assert list(folder.test_labels) == [i.split("/")[0] for i in folder.test["id"]]
    assert set(folder.test_labels) == set(CLASSES) and "label" not in folder.test
    assert any("lists the 6 images" in note and "labelled holdout" in note
               for note in folder.notes)
    listed.iloc[1:].to_csv(competition / "sample_submission.csv", index=False)
    assert len(read_competition(competition).test) == 5
    assert "are neither predicted nor scored" in comp_caplog.text
    first = sorted((competition / "test" / "alpha").iterdir())[0]
    first.rename(competition / "test" / "beta" / first.name)
    (competition / "test" / "alpha" / first.name).write_bytes(
        (competition / "test" / "beta" / first.name).read_bytes())
    with pytest.raises(CompError) as info:
        read_competition(competition)
    assert f"['{first.name}']" in str(info.value) and "\n" not in str(info.value)


def test_submit_scores_rank_1_on_the_labelled_test_images(tmp_path, competition):
    """stage=submit scores its rank 1 on test/<class>/'s labels, after choosing it: the
    entry whose OOF is right everywhere is rank 1 (its test predictions right too), the
    other one's test predictions are right everywhere but its OOF is random."""
    from comp.artifacts import read_json
    from comp.run import main
    from comp.selection import selection_headline
    from tests.helpers import fake_prediction_set, run_path, tiny_overrides

    _test_in_class_folders(competition)
    truth = read_competition(competition)
    train = pd.read_csv(competition / "train.csv")
    one_hot = lambda labels: np.eye(len(CLASSES))[[CLASSES.index(c) for c in labels]]  # noqa: E731
    fake_prediction_set(run_path(tmp_path), competition, "small_cnn-good",
                        oof_probs=one_hot(train["label"]) * 0.9 + 0.1 / len(CLASSES),
                        test_probs=np.where(np.arange(6)[:, None] % 2 == 0,
                                            one_hot(truth.test_labels),
                                            np.roll(one_hot(truth.test_labels), 1, axis=1)))
    fake_prediction_set(run_path(tmp_path), competition, "small_cnn-lucky", seed=1,
                        test_probs=one_hot(truth.test_labels))
    assert main(["stage=submit", *tiny_overrides(tmp_path, competition)]) == 0
    board = pd.read_csv(tmp_path / "submissions" / "tiny" / "leaderboard.csv")
    assert board["name"].iloc[0] == "small_cnn-good"
    submission = pd.read_csv(tmp_path / "submissions" / "tiny" / board["file"].iloc[0])
    assert submission["id"].tolist() == truth.test["id"].tolist()
    selected = read_json(run_path(tmp_path) / "selection.json")
    # rank 1's test predictions are right on every other image (the other entry's on all)
    assert selected["holdout"]["n"] == len(truth.test_labels) == 6
    assert selected["holdout"]["accuracy"] == 0.5
    assert "on the 6 labelled test images: accuracy 0.5000" in selection_headline(selected)


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


@pytest.mark.parametrize("layout", ["csv", "folders"])
def test_kaggles_zips_unpacked_into_a_folder_of_their_own_name_are_read_through(tmp_path,
                                                                                 layout):
    """train.zip unpacks into train/train/ (test/test/, ...), maybe beside macOS's
    __MACOSX/ and hidden files; such a wrapper is read through, a folder that holds
    anything else beside it is not."""
    root = make_competition(tmp_path / "k", layout=layout)
    for split in ("train", "test", "unlabeled"):
        (root / split).rename(root / f"{split}.tmp")
        (root / split).mkdir()
        (root / f"{split}.tmp").rename(root / split / split)
    (root / "train" / "__MACOSX").mkdir()
    (root / "test" / ".DS_Store").write_bytes(b"\0")
    comp = read_competition(root)
    assert comp.classes == CLASSES
    assert len(comp.train) == 24 and len(comp.test) == 6 and len(comp.unlabeled) == 4
    assert all("/train/train/" in p for p in comp.train.path)
    assert all("/test/test/" in p for p in comp.test.path)
    assert sorted(image_files(root / "test")) == sorted(comp.test["id"])  # predict.input=test
    (root / "test" / "notes.txt").write_text("not a wrapper any more")
    with pytest.raises(CompError, match="have no image in"):
        read_competition(root)


@pytest.mark.parametrize("layout", ["csv", "folders"])
def test_what_the_os_leaves_in_a_folder_is_skipped_without_a_warning(tmp_path, layout,
                                                                      comp_caplog):
    """Windows's Thumbs.db and desktop.ini, macOS's .DS_Store and ._ resource forks, in the
    class folders, the test folder and beside them: never images, never a warning line;
    another file that is no image still gets one."""
    root = make_competition(tmp_path / "k", layout=layout)
    folders = [p for p in (root / "train").rglob("*") if p.is_dir()] + [root / "train",
                                                                        root / "test"]
    for folder in folders:
        (folder / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0" + bytes(60))
        (folder / "desktop.ini").write_text("[.ShellClassInfo]\n")
        (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "train" / "__MACOSX").mkdir()
    comp = read_competition(root)
    assert comp.classes == CLASSES and len(comp.train) == 24 and len(comp.test) == 6
    assert not [r.getMessage() for r in comp_caplog.records if r.levelname == "WARNING"]
    (root / "test" / "notes.txt").write_text("not an image")
    assert sorted(image_files(root / "test")) == sorted(comp.test["id"])
    warned = [r.getMessage() for r in comp_caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "['notes.txt']" in warned[0]


@pytest.mark.parametrize("name", ["train_labels.csv", "trainLabels.csv", "labels.csv"])
def test_the_train_csv_is_read_under_kaggles_other_names(tmp_path, name):
    """Histopathologic Cancer's train_labels.csv, Diabetic Retinopathy's trainLabels.csv,
    Dog Breed's labels.csv; train.csv first where there are two."""
    root = make_competition(tmp_path / "k")
    frame = pd.read_csv(root / "train.csv", dtype=str)
    renamed = {i: f"img{n:03d}.png" for n, i in enumerate(frame["id"])}  # no class in names
    for old, new in renamed.items():
        (root / "train" / old).rename(root / "train" / new)
    frame = frame.assign(id=frame["id"].map(renamed))
    frame.to_csv(root / name, index=False)
    (root / "train.csv").unlink()
    comp = read_competition(root)
    assert comp.classes == CLASSES and len(comp.train) == 24
    frame.assign(label=frame["label"].str.upper()).to_csv(root / "train.csv", index=False)
    assert read_competition(root).classes == [c.upper() for c in CLASSES]


@pytest.mark.parametrize("name", ["sampleSubmission.csv", "submission_format.csv"])
def test_the_sample_submission_is_read_under_its_other_names(tmp_path, name):
    """Older Kaggle competitions' sampleSubmission.csv, DrivenData's submission_format.csv."""
    root = make_competition(tmp_path / "k")
    (root / "sample_submission.csv").rename(root / name)
    comp = read_competition(root)
    assert len(comp.test) == 6 and comp.submission_columns == ["id", "label"]


def test_one_images_folder_of_train_and_test_is_read_by_both(tmp_path, comp_caplog):
    """Plant Pathology's images/ holds the train and the test images, which train.csv and
    the sample submission tell apart; no warning lists the other split's images."""
    root = make_competition(tmp_path / "k")
    (root / "images").mkdir()
    for split in ("train", "test"):
        for path in (root / split).iterdir():
            path.rename(root / "images" / path.name)
        (root / split).rmdir()
    comp = read_competition(root)
    assert comp.classes == CLASSES
    assert len(comp.train) == 24 and len(comp.test) == 6 and len(comp.unlabeled) == 4
    assert all("/images/" in p for p in [*comp.train.path, *comp.test.path])
    assert not set(comp.train["id"]) & set(comp.test["id"])
    assert "not in" not in comp_caplog.text


@pytest.mark.parametrize("separator", [".", "_", "-"])
def test_train_images_named_after_their_class_are_labelled_by_name(tmp_path, comp_caplog,
                                                                    separator):
    """No train.csv and no class folders: Dogs vs Cats' cat.0.jpg names the class before
    the first '.', '_' or '-', with one info line saying so."""
    root = make_competition(tmp_path / "k")
    (root / "train.csv").unlink()
    for path in (root / "train").iterdir():  # alpha_000.png -> alpha<sep>000.png
        path.rename(path.with_name(path.name.replace("_", separator, 1)))
    comp = read_competition(root)
    assert comp.classes == CLASSES and len(comp.train) == 24
    assert all(i.split(separator)[0] == label for i, label in zip(comp.train.id,
                                                                  comp.train.label,
                                                                  strict=True))
    assert len(comp.notes) == 1 and "labels read from the file names" in comp.notes[0]
    assert "alpha 8, beta 8, gamma 8" in comp.notes[0]
    assert "labels read" not in comp_caplog.text  # said by the run that makes the folds


def test_labels_read_from_names_are_said_once_by_the_run_that_makes_its_folds(
        tmp_path, comp_caplog):
    from comp.run import main
    from tests.helpers import tiny_overrides

    root = make_competition(tmp_path / "k")
    (root / "train.csv").unlink()
    overrides = [*tiny_overrides(tmp_path, root), "quiet=false"]  # info lines shown
    assert main(["stage=prepare", *overrides]) == 0
    assert comp_caplog.text.count("train labels read from the file names") == 1
    assert main(["stage=prepare", *overrides]) == 0  # the folds are there: not again
    assert comp_caplog.text.count("train labels read from the file names") == 1


@pytest.mark.parametrize("name", [lambda i: f"img_{i:03d}.png",  # one class only
                                  lambda i: f"case{i:03d}.png",  # every image a class
                                  lambda i: f"p{i % 24}_{i}.png"])  # 24 > MAX_NAMED_CLASSES
def test_names_that_do_not_read_as_classes_give_one_clear_line(tmp_path, name):
    root = make_competition(tmp_path / "k", per_class={"alpha": 24, "beta": 24})
    (root / "train.csv").unlink()
    for i, path in enumerate(sorted((root / "train").iterdir())):
        path.rename(path.with_name(name(i)))
    with pytest.raises(CompError) as info:
        read_competition(root)
    assert "nor files named <class>.<n>.jpg" in str(info.value)
    assert "\n" not in str(info.value)


def test_an_unnamed_label_column_is_suggested_by_its_few_values(competition):
    """HAM10000's metadata (image_id, dx, sex, age...): the label column has no name comp
    knows, so the error line asks for data.label_column and names the columns that read
    like labels, with their counts; ids and constant columns are not among them."""
    frame = pd.read_csv(competition / "train.csv")
    frame = frame.rename(columns={"id": "image_id", "label": "lesion_type"}).assign(
        site="back", age=[str(20 + i) for i in range(len(frame))])
    frame.to_csv(competition / "train.csv", index=False)
    with pytest.raises(CompError) as info:
        read_competition(competition)
    message = str(info.value)
    assert "data.label_column" in message and "lesion_type (3 values)" in message
    assert "site (" not in message and "age (" not in message and "\n" not in message
