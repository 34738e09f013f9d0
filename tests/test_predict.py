"""stage=predict on new images agrees with the submission's test predictions, also from
a run directory moved elsewhere."""

import shutil

import numpy as np
import pandas as pd
import pytest

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
    for using, folder in (("ensemble-greedy", "ensemble/greedy"),
                          ("ensemble-stacked", "ensemble/stacked"), (None, None)):
        out = tmp_path / f"pred_{using}.csv"
        extra = [f"runs_dir={moved}", "stage=predict", f"predict.input={competition / 'test'}",
                 f"predict.output={out}"] + ([f"predict.using={using}"] if using else [])
        assert run_comp(*overrides, *extra) == 0
        got = pd.read_csv(out).set_index("id")
        if folder is None:  # the best by CV: whichever it is, it has a test.csv
            name = leaderboard(tmp_path).name[0]
            folder = (f"ensemble/{name.removeprefix('ensemble-')}"
                      if name.startswith("ensemble-") else f"preds/{name}")
        expected = pd.read_csv(moved / "tiny" / folder / "test.csv").set_index("id")
        assert sorted(got.index) == sorted(expected.index)
        assert np.allclose(got.loc[expected.index, cols], expected[cols], atol=1e-5)
        assert (got.label == got[cols].idxmax(axis=1).str[2:]).all()


def test_predict_needs_an_input(tmp_path, competition, capsys):
    assert run_comp("stage=predict", *tiny_overrides(tmp_path, competition)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("comp: error: ") and "predict.input" in err[0]
