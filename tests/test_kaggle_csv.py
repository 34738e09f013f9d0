"""Kaggle CSVs as they come: other column names, ids without extension, numeric labels,
one-hot labels; the sample's ids and columns written back verbatim; values read as text."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from comp.data.folder import read_competition
from comp.errors import CompError
from comp.predictions import PredictionSet, probs_frame, read_table
from comp.submission import submission_frame
from tests.conftest import make_competition


def _rewrite(root, train: pd.DataFrame | None = None, sample: pd.DataFrame | None = None):
    if train is not None:
        train.to_csv(root / "train.csv", index=False)
    if sample is not None:
        sample.to_csv(root / "sample_submission.csv", index=False)


def _fake_predictions(competition, classes=None, order=None) -> PredictionSet:
    classes = classes or competition.classes
    ids = competition.test["id"].tolist()
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(len(classes)), size=len(ids))
    test = probs_frame(ids, probs, classes)
    if order is not None:
        test = test.iloc[order].reset_index(drop=True)
    return PredictionSet(pd.DataFrame(), test, classes, {"model_id": "m"})


@pytest.fixture
def kaggle(tmp_path):
    """image_id,target with numeric targets and ids without extension."""
    root = make_competition(tmp_path / "k")
    train = pd.read_csv(root / "train.csv", dtype=str)
    codes = {"alpha": "0", "beta": "1", "gamma": "2"}
    frame = pd.DataFrame({"image_id": train["id"].str.removesuffix(".png"),
                          "target": train["label"].map(codes)})
    sample = pd.read_csv(root / "sample_submission.csv", dtype=str)
    _rewrite(root, frame, pd.DataFrame({"image_id": sample["id"].str.removesuffix(".png"),
                                        "target": "0"}))
    return root


def test_image_id_target_without_extensions(kaggle):
    comp = read_competition(kaggle)
    assert comp.classes == ["0", "1", "2"]
    assert comp.train["id"].str.endswith(".png").all()
    assert not comp.test["submission_id"].str.endswith(".png").any()
    sub = submission_frame(comp, _fake_predictions(comp))
    sample = pd.read_csv(kaggle / "sample_submission.csv", dtype=str)
    assert list(sub.columns) == ["image_id", "target"]
    assert sub["image_id"].tolist() == sample["image_id"].tolist()  # verbatim, no extension
    assert set(sub["target"]) <= {"0", "1", "2"}


def test_explicit_columns(tmp_path):
    root = make_competition(tmp_path / "k")
    train = pd.read_csv(root / "train.csv", dtype=str)
    _rewrite(root, pd.DataFrame({"pic": train["id"], "stage": train["label"],
                                 "notes": "x"}))
    with pytest.raises(CompError, match="data.id_column"):
        read_competition(root)
    comp = read_competition(root, id_column="pic", label_column="stage")
    assert comp.classes == ["alpha", "beta", "gamma"]
    with pytest.raises(CompError, match="no column data.label_column='nope'"):
        read_competition(root, id_column="pic", label_column="nope")


def test_one_hot_labels(tmp_path):
    root = make_competition(tmp_path / "k")
    train = pd.read_csv(root / "train.csv", dtype=str)
    hot = pd.get_dummies(train["label"]).astype(int)
    _rewrite(root, pd.concat([train[["id"]], hot], axis=1))
    comp = read_competition(root)
    assert comp.train["label"].tolist() == train["label"].tolist()
    broken = pd.concat([train[["id"]], hot.assign(alpha=1)], axis=1)
    _rewrite(root, broken)
    with pytest.raises(CompError, match="exactly one class"):
        read_competition(root)


def test_probability_sample_with_one_hot_columns(tmp_path):
    root = make_competition(tmp_path / "k")
    sample = pd.read_csv(root / "sample_submission.csv", dtype=str)
    _rewrite(root, sample=pd.DataFrame({"id": sample["id"].str.removesuffix(".png"),
                                        "gamma": 0, "alpha": 0, "beta": 0}))
    comp = read_competition(root)
    predictions = _fake_predictions(comp)
    sub = submission_frame(comp, predictions)
    assert list(sub.columns) == ["id", "gamma", "alpha", "beta"]
    expected = predictions.test.set_index("id")["p_gamma"].to_numpy()
    assert np.allclose(sub["gamma"].to_numpy(), expected)


def test_ambiguous_and_misspelt_ids(tmp_path):
    root = make_competition(tmp_path / "k")
    train = pd.read_csv(root / "train.csv", dtype=str)
    first = train["id"][0]
    (root / "train" / first.replace(".png", ".jpg")).write_bytes(
        (root / "train" / first).read_bytes())
    _rewrite(root, train.assign(id=train["id"].str.removesuffix(".png")))
    with pytest.raises(CompError, match="matches several files"):
        read_competition(root)
    _rewrite(root, train.assign(id=train["id"].where(train.index != 1, "alpha_0001.png")))
    with pytest.raises(CompError, match="did you mean 'alpha_001.png'"):
        read_competition(root)


def test_sample_order_is_kept_and_predictions_joined_by_id(tmp_path):
    root = make_competition(tmp_path / "k")
    sample = pd.read_csv(root / "sample_submission.csv", dtype=str)
    _rewrite(root, sample=sample.iloc[::-1])
    comp = read_competition(root)
    ordered = _fake_predictions(comp)
    shuffled = PredictionSet(ordered.oof, ordered.test.iloc[[2, 0, 5, 1, 4, 3]],
                             ordered.classes, ordered.info)
    a, b = submission_frame(comp, ordered), submission_frame(comp, shuffled)
    assert a["id"].tolist() == sample["id"].tolist()[::-1]
    pd.testing.assert_frame_equal(a, b)


def test_missing_prediction_ids_are_named(tmp_path):
    comp = read_competition(make_competition(tmp_path / "k"))
    predictions = _fake_predictions(comp)
    short = PredictionSet(predictions.oof, predictions.test.iloc[1:], predictions.classes,
                          predictions.info)
    with pytest.raises(CompError, match="lack 1 of the sample submission's ids.*test_000.png"):
        submission_frame(comp, short)
    stale = PredictionSet(predictions.oof, predictions.test, predictions.classes,
                          {"model_id": "m", "test_key": "0123"})
    with pytest.raises(CompError, match="other test images"):
        submission_frame(comp, stale)


@pytest.mark.parametrize("labels", [
    ["0", "1", "2"], ["True", "False", "None"], ["NA", "null", "nan"], ["1.0", "01", "1"],
])
def test_labels_and_ids_round_trip_as_written(tmp_path, labels):
    root = make_competition(tmp_path / "k")
    train = pd.read_csv(root / "train.csv", dtype=str)
    mapping = dict(zip(["alpha", "beta", "gamma"], labels, strict=True))
    # ids like 0000 (without extension) and labels with a trailing space
    new_ids = [f"{i:04d}" for i in range(len(train))]
    for name, new in zip(train["id"], new_ids, strict=True):
        (root / "train" / name).rename(root / "train" / f"{new}.png")
    frame = pd.DataFrame({"id": new_ids, "label": train["label"].map(mapping) + " "})
    frame.to_csv(root / "train.csv", index=False)
    comp = read_competition(root)
    assert comp.classes == sorted(labels)  # a trailing space is not a new class
    assert "0000.png" in comp.train["id"].tolist()
    out = tmp_path / "t.csv"
    comp.train.to_csv(out, index=False)
    back = read_table(out)
    assert back["label"].tolist() == comp.train["label"].tolist()
    assert back["id"].tolist() == comp.train["id"].tolist()
    sub = submission_frame(comp, _fake_predictions(comp))
    sub.to_csv(out, index=False)
    assert set(read_table(out)["label"]) <= set(labels)


def test_read_table_keeps_text_and_numbers():
    import io

    text = "id,fold,label,p_NA,p_0\n0000,1,NA,0.5,0.5\nTrue,0,None,0.25,0.75\n"
    frame = read_table(io.StringIO(text))
    assert frame["id"].tolist() == ["0000", "True"]
    assert frame["label"].tolist() == ["NA", "None"]
    assert frame["fold"].dtype.kind == "i" and frame["p_NA"].dtype.kind == "f"


def test_messy_but_clear_csvs_are_read(tmp_path):
    """';'-separated, a byte-order mark, spaces around ids and header names, upper-case
    extensions, a pandas index column in the sample."""
    root = make_competition(tmp_path / "k")
    train = pd.read_csv(root / "train.csv", dtype=str)
    messy = train.assign(id=" " + train["id"].str.replace(".png", ".PNG") + " ")
    (root / "train.csv").write_bytes(b"\xef\xbb\xbf" + messy.rename(
        columns={"label": " label"}).to_csv(index=False, sep=";").encode())
    pd.read_csv(root / "sample_submission.csv", dtype=str).to_csv(
        root / "sample_submission.csv")  # with pandas' unnamed index column
    comp = read_competition(root)
    assert comp.train["id"].tolist() == train["id"].tolist()
    assert comp.submission_columns == ["id", "label"]


def test_case_only_label_twins_warn(tmp_path, comp_caplog):
    root = make_competition(tmp_path / "k")
    train = pd.read_csv(root / "train.csv", dtype=str)
    train.loc[0, "label"] = "Alpha"
    train.to_csv(root / "train.csv", index=False)
    comp = read_competition(root)
    assert "Alpha" in comp.classes and "differ only in upper/lower case" in comp_caplog.text


def test_float_image_with_nan_decodes(tmp_path):
    from PIL import Image

    from comp.data.images import decode_image

    array = np.full((8, 8), 0.5, dtype=np.float32)
    array[0, 0] = np.nan
    Image.fromarray(array).save(tmp_path / "x.tif")
    out = decode_image(tmp_path / "x.tif", 8, 10_000)
    assert out[0, 0, 0] == 0 and out[4, 4, 0] in (127, 128)


def test_ids_with_their_folder_prefix(tmp_path):
    root = make_competition(tmp_path / "k")
    train = pd.read_csv(root / "train.csv", dtype=str)
    sample = pd.read_csv(root / "sample_submission.csv", dtype=str)
    _rewrite(root, train.assign(id="train/" + train["id"]),
             sample.assign(id="test/" + sample["id"]))
    comp = read_competition(root)
    assert comp.train["id"].tolist() == train["id"].tolist()
    sub = submission_frame(comp, _fake_predictions(comp))
    assert sub["id"].tolist() == ("test/" + sample["id"]).tolist()  # verbatim
    _rewrite(root, train.assign(id="images/" + train["id"]))
    with pytest.raises(CompError, match="not a plain file name"):
        read_competition(root)


def _binary(tmp_path, labels=("0", "1"), column="has_cactus", sample_value="0.5"):
    """A two-class folder in the Aerial Cactus layout: id,<column> with `labels`, and a
    sample of one `column` filled with `sample_value`."""
    root = make_competition(tmp_path / "b", per_class={"alpha": 6, "beta": 6})
    train = pd.read_csv(root / "train.csv", dtype=str)
    codes = dict(zip(["alpha", "beta"], labels, strict=True))
    sample = pd.read_csv(root / "sample_submission.csv", dtype=str)
    _rewrite(root, pd.DataFrame({"id": train["id"], column: train["label"].map(codes)}),
             pd.DataFrame({"id": sample["id"], column: sample_value}))
    return root


def test_a_two_class_sample_of_fractions_takes_the_positive_class_probability(tmp_path):
    """Aerial Cactus: id,has_cactus 0/1 and a sample of 0.5: AUC-scored, so the one column
    holds the probability of class 1, not a label (hard labels lose AUC)."""
    comp = read_competition(_binary(tmp_path))
    assert comp.classes == ["0", "1"] and comp.probability_columns == {"has_cactus": "1"}
    assert not comp.submits_labels
    predictions = _fake_predictions(comp)
    sub = submission_frame(comp, predictions)
    expected = predictions.test.set_index("id").loc[comp.test["id"], "p_1"].to_numpy()
    assert sub.columns.tolist() == ["id", "has_cactus"]
    assert np.allclose(sub["has_cactus"].to_numpy(dtype=float), expected)


def test_a_two_class_sample_of_whole_numbers_takes_labels_unless_told(tmp_path):
    """A sample of 0s (as Histopathologic Cancer's) reads as labels; the key says otherwise,
    and labels can be asked for where the sample holds fractions."""
    root = _binary(tmp_path, column="label", sample_value="0")
    assert read_competition(root).submits_labels
    told = read_competition(root, submission_values="probability")
    assert told.probability_columns == {"label": "1"}
    fractions = _binary(tmp_path / "f")
    assert read_competition(fractions, submission_values="labels").submits_labels


@pytest.mark.parametrize(("labels", "column", "positive"), [
    (("-1", "1"), "target", "1"), (("no", "yes"), "target", "yes"),
    (("False", "True"), "label", "True"), (("cat", "dog"), "dog", "dog")])
def test_the_positive_class_is_found_by_number_word_or_column_name(tmp_path, labels, column,
                                                                   positive):
    comp = read_competition(_binary(tmp_path, labels, column))
    assert comp.probability_columns == {column: positive}


def test_an_unclear_positive_class_or_a_wrong_one_is_one_clear_error(tmp_path):
    root = _binary(tmp_path, ("cat", "dog"), "label")
    with pytest.raises(CompError, match="name no positive one; set data.positive_class"):
        read_competition(root)
    assert read_competition(root, positive_class="cat").probability_columns == {"label": "cat"}
    with pytest.raises(CompError, match=r"data.positive_class='cow' is not a class"):
        read_competition(root, positive_class="cow")
    multi = make_competition(tmp_path / "m")
    with pytest.raises(CompError, match="3 classes; data.submission_values=probability"):
        read_competition(multi, submission_values="probability")
    with pytest.raises(CompError, match="submission_values=labels needs one label column"):
        classes = read_competition(multi).classes
        sample = pd.read_csv(multi / "sample_submission.csv", dtype=str)
        _rewrite(multi, sample=pd.DataFrame({"id": sample["id"], **{c: "0.3" for c in classes}}))
        read_competition(multi, submission_values="labels")


def test_a_multi_class_sample_of_fractions_in_one_column_still_takes_labels(tmp_path):
    root = make_competition(tmp_path / "m")
    sample = pd.read_csv(root / "sample_submission.csv", dtype=str)
    _rewrite(root, sample=sample.assign(label="0.5"))
    assert read_competition(root).submits_labels


def test_a_two_class_submission_says_what_its_column_holds(tmp_path):
    from comp.submission import values_note

    probability = read_competition(_binary(tmp_path))
    assert values_note(probability, "accuracy") == (
        "submit: 'has_cactus' holds the probability of class '1' (data.submission_values="
        "labels writes labels); submit.metric=auc ranks the entries by AUC")
    assert values_note(probability, "auc").endswith("writes labels)")
    labels = read_competition(_binary(tmp_path / "l", column="label", sample_value="0"))
    assert values_note(labels, "auc") == (
        "submit: 'label' holds labels (the sample's values are not fractions); for an "
        "AUC-scored competition set data.submission_values=probability")
    told = read_competition(_binary(tmp_path / "t"), submission_values="labels")
    assert "(data.submission_values=labels)" in values_note(told, "auc", "labels")
    (tmp_path / "l" / "b" / "sample_submission.csv").unlink()  # in-house: no sample at all
    unlisted = read_competition(tmp_path / "l" / "b")
    assert values_note(unlisted, "auc") == (
        "submit: 'label' holds labels (no sample_submission.csv: id,label by default); for "
        "an AUC-scored competition set data.submission_values=probability")
    assert values_note(read_competition(make_competition(tmp_path / "m")), "auc") is None


def test_a_group_column_beside_one_hot_labels_is_no_class(tmp_path):
    root = make_competition(tmp_path / "h")
    train = pd.read_csv(root / "train.csv", dtype=str)
    hot = pd.get_dummies(train["label"]).astype(int)
    pd.concat([train[["id"]], hot, pd.DataFrame({"patient": [f"p{i % 5}" for i in
                                                             range(len(train))]})],
              axis=1).to_csv(root / "train.csv", index=False)
    comp = read_competition(root, group_column="patient")
    assert comp.classes == sorted(train["label"].unique())
    assert comp.train["label"].tolist() == train["label"].tolist()
    assert comp.train["group_key"].nunique() == 5


def test_the_auto_metric_is_auc_where_the_submission_holds_probabilities(tmp_path):
    from comp.submission import submission_metric

    assert submission_metric("auto", read_competition(_binary(tmp_path))) == "auc"
    labels = read_competition(_binary(tmp_path / "l", column="label", sample_value="0"))
    assert submission_metric("auto", labels) == "accuracy"
    assert submission_metric("log_loss", labels) == "log_loss"  # as set, where it is set


def test_a_probability_submission_ranks_by_auc_unless_told(tmp_path):
    """Entries that accuracy and AUC order the other way round: one right at 0.5 on 11 of
    12 images with a positive ranked last (AUC 0.83), one below 0.5 on every image but
    ranking every positive first (accuracy 0.5, AUC 1)."""
    from comp.inference import submitted_metric
    from comp.predictions import write_prediction_set
    from comp.run import main
    from comp.selection import selection_headline
    from comp.workspace import RunDir
    from tests.helpers import leaderboard, run_path, tiny_overrides

    root = _binary(tmp_path)
    train = pd.read_csv(root / "train.csv", dtype=str)
    positive = (train["has_cactus"] == "1").to_numpy()
    sure = np.where(positive, 0.9, 0.1)
    sure[np.flatnonzero(positive)[0]] = 0.0
    ranked = np.where(positive, 0.4, 0.1)
    test_ids = sorted(p.name for p in (root / "test").iterdir())
    for model_id, p1 in (("small_cnn-sure", sure), ("small_cnn-ranked", ranked)):
        oof = probs_frame(train["id"].tolist(), np.c_[1 - p1, p1], ["0", "1"],
                          fold=np.arange(len(train)) % 2, label=train["has_cactus"].tolist())
        test = probs_frame(test_ids, np.full((len(test_ids), 2), 0.5), ["0", "1"])
        write_prediction_set(run_path(tmp_path) / "preds" / model_id, oof, test, ["0", "1"],
                             {"model_id": model_id, "kind": "single"})
    overrides = tiny_overrides(tmp_path, root)
    assert main(["stage=submit", *overrides]) == 0
    board = leaderboard(tmp_path)
    assert board["name"].tolist() == ["small_cnn-ranked", "small_cnn-sure"]
    assert board["file"][0].endswith("__cv-auc1.0000.csv")
    assert submitted_metric(RunDir(run_path(tmp_path)), "auto") == "auc"  # predict, export
    selected = json.loads((run_path(tmp_path) / "selection.json").read_text())
    assert selection_headline(selected).startswith(
        f"selected pipeline (nested CV over 2 folds): AUC {selected['cv']['auc']:.4f} ± "
        f"{selected['se']['auc']:.4f}, accuracy ")
    assert main(["stage=submit", *overrides, "submit.metric=accuracy"]) == 0
    assert leaderboard(tmp_path)["name"].tolist() == ["small_cnn-sure", "small_cnn-ranked"]
    assert submitted_metric(RunDir(run_path(tmp_path)), "auto") == "accuracy"
