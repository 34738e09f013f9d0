"""Quadratic weighted kappa: scikit-learn's, on classes ordered as numbers when they are
numbers; a submit.metric, ranked higher-is-better."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from comp.config import load_config
from comp.errors import CompError
from comp.metrics import ordinal_order, quadratic_kappa, scores
from comp.selection import metric_value, nested_selection

CLASSES = sorted(["0", "1", "2", "10"])  # as comp sorts them: ['0', '1', '10', '2']


def test_numeric_classes_are_graded_by_value_others_by_name():
    assert ordinal_order(CLASSES).tolist() == [0, 1, 3, 2]
    assert ordinal_order(["high", "low", "mid"]).tolist() == [0, 1, 2]


def test_kappa_uses_the_numeric_grades():
    y = np.array([0, 1, 2, 3, 3, 2, 1, 0])          # indices into CLASSES
    predicted = np.array([0, 1, 0, 3, 3, 0, 1, 0])  # "10" taken for "0" twice
    grade = np.array([0, 1, 10, 2])[y], np.array([0, 1, 10, 2])[predicted]
    expected = cohen_kappa_score(*grade, weights="quadratic")
    assert quadratic_kappa(y, predicted, CLASSES) == pytest.approx(expected)
    by_index = cohen_kappa_score(y, predicted, weights="quadratic")
    assert abs(expected - by_index) > 0.01  # the order matters: index order would differ


def test_scores_and_selection_give_qwk_with_the_class_names():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 40)
    probs = rng.dirichlet(np.ones(4), 40)
    assert "qwk" not in scores(y, probs)
    value = scores(y, probs, CLASSES)["qwk"]
    assert value == pytest.approx(quadratic_kappa(y, probs.argmax(1), CLASSES))
    assert metric_value("qwk", y, probs, CLASSES) == pytest.approx(value)
    perfect = np.eye(4)[y]
    folds = np.arange(40) % 2
    _, chosen = nested_selection({"noise": probs, "perfect": perfect}, y, folds, "qwk", CLASSES)
    assert set(chosen.values()) == {"perfect"}


def test_qwk_is_a_submit_metric_not_a_tuning_one():
    assert load_config(["submit.metric=qwk"]).submit.metric == "qwk"
    with pytest.raises(CompError, match="tune.metric"):
        load_config(["tune.metric=qwk"])


def test_a_prediction_set_written_before_qwk_gets_it(tmp_path):
    from comp.artifacts import read_json, write_json
    from comp.inference import best_prediction_set
    from comp.predictions import probs_frame, read_prediction_set, write_prediction_set
    from comp.workspace import RunDir

    run = RunDir(tmp_path / "run")
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 20)
    for name, probs in (("good", np.eye(4)[labels] * 0.9 + 0.025),
                        ("noise", rng.dirichlet(np.ones(4), 20))):
        oof = probs_frame([f"{i}.png" for i in range(20)], probs, CLASSES,
                          fold=np.arange(20) % 2, label=[CLASSES[k] for k in labels])
        write_prediction_set(run.preds_dir(name), oof, oof.drop(columns=["fold", "label"]),
                             CLASSES, {"model_id": name})
        cv_json = run.preds_dir(name) / "cv.json"
        old = read_json(cv_json)
        assert "qwk" in old["cv"]
        del old["cv"]["qwk"]  # as an older comp wrote it
        write_json(cv_json, old)
    assert read_prediction_set(run.preds_dir("good")).info["cv"]["qwk"] == pytest.approx(1.0)
    assert best_prediction_set(run, "qwk") == "good"


@pytest.mark.parametrize("n_classes", [2, 4])
def test_macro_auc_is_scikit_learns_with_ties_and_absent_classes(n_classes):
    """The rank (Mann-Whitney) form of the one-vs-rest AUC against roc_auc_score: rounded
    probabilities make ties; class 0 absent from the rows is left out of the mean."""
    from sklearn.metrics import roc_auc_score

    from comp.metrics import macro_auc

    rng = np.random.default_rng(n_classes)
    probs = np.round(rng.dirichlet(np.ones(n_classes), 300), 1)
    y = rng.integers(1 if n_classes > 2 else 0, n_classes, 300)
    present = np.unique(y)
    expected = np.mean([roc_auc_score(y == c, probs[:, c]) for c in present])
    assert macro_auc(y, probs) == pytest.approx(expected, abs=1e-12)
    with warnings.catch_warnings():  # balanced accuracy on the rows without class 0
        warnings.simplefilter("ignore", UserWarning)
        assert metric_value("auc", y, probs) == macro_auc(y, probs) == scores(y, probs)["auc"]
    assert np.isnan(macro_auc(np.full(5, 1), probs[:5]))  # one class: no AUC
