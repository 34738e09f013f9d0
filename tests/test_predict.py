"""stage=predict on new images agrees with the submission's test predictions, also from
a run directory moved elsewhere."""

import shutil

import numpy as np
import pandas as pd
import pytest

from comp import Competition
from tests.helpers import CLASSES, leaderboard, run_comp, tiny_overrides


# 32 px shrinks the 40 px images (a cache at 32 px); 64 px enlarges them: read from the
# 40 px cache, resized on read, and decoded from the files at 64 px by stage=predict
@pytest.mark.slow
@pytest.mark.parametrize("size", ["32", "64"])
def test_predict_matches_test_predictions_from_a_moved_run(tmp_path, competition, size):
    overrides = tiny_overrides(tmp_path, competition, backbones="[small_cnn,mobilenet_025]",
                               **{"model.image_size": size, "classic.models": "[pixels+logreg]",
                                  "ensemble.methods": "[greedy,stacked]"})
    assert run_comp("stage=all", *overrides) == 0
    moved = tmp_path / "elsewhere"
    shutil.copytree(tmp_path / "runs", moved)
    shutil.rmtree(tmp_path / "runs")
    cols = [f"p_{c}" for c in CLASSES]
    for using, folder in (("ensemble-greedy", "ensemble/greedy-*"),
                          ("ensemble-stacked", "ensemble/stacked-*"), (None, None)):
        out = tmp_path / f"pred_{using}.csv"
        extra = [f"runs_dir={moved}", "stage=predict", f"predict.input={competition / 'test'}",
                 f"predict.output={out}"] + ([f"predict.using={using}"] if using else [])
        assert run_comp(*overrides, *extra) == 0
        got = pd.read_csv(out).set_index("id")
        if folder is None:  # the best by CV: whichever it is, it has a test.csv
            name = leaderboard(tmp_path).name[0]
            folder = (f"ensemble/{name.removeprefix('ensemble-')}"
                      if name.startswith("ensemble-") else f"preds/{name}")
        (where,) = (moved / "tiny").glob(folder)
        expected = pd.read_csv(where / "test.csv").set_index("id")
        assert sorted(got.index) == sorted(expected.index)
        assert np.allclose(got.loc[expected.index, cols], expected[cols], atol=1e-5)
        assert (got.label == got[cols].idxmax(axis=1).str[2:]).all()
        # the API's predictor: the same models built once, called twice, the same numbers
        predictor = Competition.load(moved / "tiny").predictor(using)
        for _ in range(2):
            loaded = predictor.predict_proba(competition / "test")
            assert np.allclose(loaded.loc[expected.index].to_numpy(),
                               got.loc[expected.index, cols].to_numpy(), atol=1e-6)


def test_predict_needs_an_input(tmp_path, competition, capsys):
    assert run_comp("stage=predict", *tiny_overrides(tmp_path, competition)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("comp: error: ") and "predict.input" in err[0]


def test_an_unknown_model_names_the_finished_ones(tmp_path, competition, capsys):
    """predict.using= and export.using= with a name that is not there said 'see
    submissions/<name>/leaderboard.csv' (a path with a placeholder); they list the names."""
    from tests.helpers import fake_prediction_set, run_path

    fake_prediction_set(run_path(tmp_path), competition, "small_cnn-one")
    fake_prediction_set(run_path(tmp_path), competition, "small_cnn-two", seed=1)
    fake_prediction_set(run_path(tmp_path), competition, "pixels@32+logreg-x", seed=2,
                        model_kind="classic")
    overrides = tiny_overrides(tmp_path, competition)
    assert run_comp("stage=predict", "predict.using=small_cnn-three",
                    f"predict.input={competition / 'test'}", *overrides) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith(
        "no finished model or ensemble 'small_cnn-three'; finished: pixels@32+logreg-x, "
        "small_cnn-one, small_cnn-two"), err
    assert run_comp("stage=export", "export.using=small_cnn-three", *overrides) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith(
        "no finished model 'small_cnn-three'; finished fine-tuned models: small_cnn-one, "
        "small_cnn-two"), err  # a classic head is not exported: not listed


def _oriented_competition(root):
    """Two classes told apart only by where a bright bar is (top or bottom): a flip or a
    half turn makes one class the other."""
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = ["id,label"]
    for split, count in (("train", 16), ("test", 4)):
        (root / split).mkdir(parents=True)
        for i in range(count):
            label = ("top", "bottom")[i % 2]
            image = rng.integers(0, 60, (32, 32, 3)).astype(np.uint8)
            image[(0, 24)[i % 2]:(8, 32)[i % 2]] += 150
            Image.fromarray(image).save(root / split / f"{label}{i}.png")
            if split == "train":
                rows.append(f"{label}{i}.png,{label}")
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    (root / "sample_submission.csv").write_text(
        "id,label\n" + "".join(f"{p.name},top\n" for p in sorted((root / "test").iterdir())))
    return root


@pytest.mark.slow
def test_chosen_views_train_and_predict_the_image_alone(tmp_path):
    competition = _oriented_competition(tmp_path / "oriented")
    overrides = tiny_overrides(tmp_path, competition, **{
        "backbone_overrides.small_cnn.augment.dihedral": "true",
        "augment.choose_views": "true", "augment.tta": "dihedral", "train.epochs": "3"})
    assert run_comp("stage=train", *overrides) == 0
    metrics = sorted((tmp_path / "runs" / "tiny" / "models").glob("*/fold*/metrics.json"))
    assert len(metrics) == 2
    assert all(pd.read_json(m, typ="series")["views"] == "identity" for m in metrics)
    out = tmp_path / "pred.csv"
    assert run_comp(*overrides, "stage=predict", f"predict.input={competition / 'test'}",
                    f"predict.output={out}") == 0
    (model_dir,) = (tmp_path / "runs" / "tiny" / "preds").iterdir()
    expected = pd.read_csv(model_dir / "test.csv").set_index("id")
    got = pd.read_csv(out).set_index("id").loc[expected.index]
    cols = ["p_bottom", "p_top"]
    assert np.allclose(got[cols], expected[cols], atol=1e-5)
