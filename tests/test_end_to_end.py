"""stage=all on a tiny competition: files, formats, leaderboard, resume."""

import json

import numpy as np
import pandas as pd
import pytest

from comp import __version__
from comp.config import DEMO_DIR
from tests.helpers import (
    CLASSES,
    P_COLS,
    copy_tree,
    fold_metrics,
    leaderboard,
    model_ids,
    run_comp,
    run_path,
    submissions,
    tiny_overrides,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished_template(trained_template, tmp_path_factory):
    """stage=all once per module, on a copy of the session's trained run."""
    root = copy_tree(trained_template, tmp_path_factory.mktemp("finished"))
    assert run_comp("stage=all", *tiny_overrides(root, root / "comp")) == 0
    return root


@pytest.fixture
def finished_run(finished_template, tmp_path):
    """This test's copy of the finished run: (tmp_path, competition, overrides)."""
    copy_tree(finished_template, tmp_path)
    competition = tmp_path / "comp"
    return tmp_path, competition, tiny_overrides(tmp_path, competition)


def _stamps(tmp_path):
    return {p: p.stat().st_mtime_ns for p in fold_metrics(tmp_path)}


def test_all_writes_predictions_submission_and_leaderboard(finished_run):
    tmp_path, competition, _ = finished_run
    run = run_path(tmp_path)
    folds = pd.read_csv(run / "folds.csv")
    assert list(folds.columns) == ["id", "label", "fold", "group"] and folds.fold.nunique() == 2
    (model_dir,) = (run / "preds").iterdir()
    assert model_dir.name.startswith("small_cnn-")
    oof = pd.read_csv(model_dir / "oof.csv")
    assert list(oof.columns) == ["id", "fold", "label", *P_COLS]
    assert len(oof) == 24 and oof.id.tolist() == folds.id.tolist()
    assert (oof.fold == folds.fold).all() and (oof.label == folds.label).all()
    assert oof[P_COLS].sum(axis=1).round(4).eq(1).all()
    test = pd.read_csv(model_dir / "test.csv")
    assert list(test.columns) == ["id", *P_COLS] and len(test) == 6
    fold_tests = []
    for fold in (0, 1):
        fold_dir = run / "models" / model_dir.name / f"fold{fold}"
        for name in ("model.weights.h5", "history.csv", "val.csv", "test.csv", "metrics.json"):
            assert (fold_dir / name).exists(), name
        metrics = json.loads((fold_dir / "metrics.json").read_text())
        assert {"accuracy", "auc", "log_loss", "macro_f1"} <= set(metrics)
        assert metrics["fold"] == fold and metrics["comp"] == __version__
        val = pd.read_csv(fold_dir / "val.csv")  # each fold predicts its own validation rows
        assert sorted(val.id) == sorted(folds.id[folds.fold == fold])
        fold_tests.append(pd.read_csv(fold_dir / "test.csv")[P_COLS].to_numpy())
    assert np.allclose(test[P_COLS].to_numpy(), np.mean(fold_tests, axis=0), atol=1e-6)
    assert (run / "config.yaml").exists()
    board = leaderboard(tmp_path)
    assert board["rank"].tolist() == [1] and board.kind[0] == "single"
    submission = pd.read_csv(submissions(tmp_path) / board.file[0])
    sample = pd.read_csv(competition / "sample_submission.csv")
    assert list(submission.columns) == list(sample.columns)
    assert submission.id.tolist() == sample.id.tolist() and submission.label.isin(CLASSES).all()
    predicted = test.set_index("id").loc[submission.id, P_COLS].idxmax(axis=1).str[2:]
    assert submission.label.tolist() == predicted.tolist()  # the argmax of test.csv
    info = json.loads((model_dir / "cv.json").read_text())
    cv = info["cv"]["accuracy"]
    assert f"cv-acc{cv:.4f}" in board.file[0]
    assert cv == pytest.approx((oof[P_COLS].idxmax(axis=1).str[2:] == oof.label).mean())
    # beside the honest figure, the optimistic one (each fold at its own best epoch)
    units = [json.loads((run / "models" / model_dir.name / f"fold{k}" / "metrics.json")
                        .read_text()) for k in range(2)]
    optimistic = [u["optimistic"]["accuracy"] for u in units]
    assert min(optimistic) <= info["cv_optimistic"]["accuracy"] <= max(optimistic)


def test_rerun_skips_finished_folds_and_redoes_an_interrupted_one(finished_run):
    tmp_path, _, overrides = finished_run
    run = run_path(tmp_path)
    (model_id,) = model_ids(tmp_path)
    stamps = {k: (run / "models" / model_id / f"fold{k}" / "metrics.json").stat().st_mtime_ns
              for k in (0, 1)}
    assert run_comp("stage=train", *overrides) == 0
    assert all((run / "models" / model_id / f"fold{k}" / "metrics.json").stat().st_mtime_ns
               == stamps[k] for k in (0, 1))
    (run / "models" / model_id / "fold1" / "metrics.json").unlink()  # as if killed mid-fold
    assert run_comp("stage=train", *overrides) == 0
    assert (run / "models" / model_id / "fold0" / "metrics.json").stat().st_mtime_ns == stamps[0]
    assert (run / "models" / model_id / "fold1" / "metrics.json").stat().st_mtime_ns != stamps[1]


def test_changed_setting_gets_a_new_model_id(finished_run):
    tmp_path, _, overrides = finished_run
    (first,) = model_ids(tmp_path)
    stamps = _stamps(tmp_path)
    assert run_comp("stage=train", *overrides, "model.dropout=0.1") == 0
    assert len(list((run_path(tmp_path) / "preds").iterdir())) == 2
    (second,) = set(model_ids(tmp_path)) - {first}
    spec = json.loads((run_path(tmp_path) / "models" / second / "spec.json").read_text())
    assert spec["model"]["dropout"] == 0.1
    assert all(path.stat().st_mtime_ns == t for path, t in stamps.items())  # first untouched


def test_probability_submission_format(tmp_path, trained):
    sample = pd.read_csv(trained / "sample_submission.csv")
    pd.DataFrame({"id": sample.id, **{c: 0.0 for c in CLASSES}}).to_csv(
        trained / "sample_submission.csv", index=False)
    assert run_comp("stage=all", *tiny_overrides(tmp_path, trained)) == 0
    board = leaderboard(tmp_path)
    submission = pd.read_csv(submissions(tmp_path) / board.file[0])
    assert list(submission.columns) == ["id", *CLASSES]
    assert submission.id.tolist() == sample.id.tolist()
    assert submission[CLASSES].sum(axis=1).round(4).eq(1).all()
    test = pd.read_csv(run_path(tmp_path) / "preds" / board.name[0] / "test.csv")
    assert np.allclose(submission[CLASSES].to_numpy(),
                       test.set_index("id").loc[submission.id, P_COLS].to_numpy(), atol=1e-6)


def test_pretrained_backbone_with_a_cut_and_other_data_refused(tmp_path, competition, capsys):
    overrides = tiny_overrides(tmp_path, competition, backbones="[mobilenet_025]",
                               weights="imagenet", weights_dir=str(DEMO_DIR / "weights"),
                               **{"model.image_size": "32", "model.unfreeze": "block12"})
    assert run_comp("stage=train", *overrides) == 0
    (model_id,) = model_ids(tmp_path)
    spec = json.loads((run_path(tmp_path) / "models" / model_id / "spec.json").read_text())
    assert spec["weights"].startswith("sha256:dbdb03ee2a22fd89")  # the bundled ImageNet file
    assert spec["weights_path"] == str(DEMO_DIR / "weights" / "mobilenet_2_5_224_tf_no_top.h5")
    assert spec["image_size"] == 32 and spec["model"]["unfreeze"] == "block12"
    (competition / "train.csv").write_text(
        (competition / "train.csv").read_text().replace("gamma_007.png,gamma\n", ""))
    capsys.readouterr()
    assert run_comp("stage=train", *overrides) == 2  # run dir holds folds of other data
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("comp: error: "), err
    assert str(run_path(tmp_path)) in err[0] and "other training data" in err[0]
    assert "name=" in err[0]  # and says how to go on


def test_corrupt_or_foreign_fold_results_are_retrained(finished_run):
    tmp_path, _, overrides = finished_run
    run = run_path(tmp_path)
    (model_id,) = model_ids(tmp_path)
    fold0, fold1 = (run / "models" / model_id / f"fold{k}" / "metrics.json" for k in (0, 1))
    fold0.write_text("{ half a fi")  # corrupt
    fold1.write_text(json.dumps({**json.loads(fold1.read_text()), "comp": "0.0.1"}))
    assert run_comp("stage=train", *overrides) == 0
    for fold, path in enumerate((fold0, fold1)):
        metrics = json.loads(path.read_text())
        assert metrics["comp"] == __version__ and metrics["fold"] == fold


def test_tensorboard_event_files(tmp_path, trained):
    pytest.importorskip("tensorboard", reason="tensorboard not installed")
    (fold0,) = run_path(tmp_path).glob("models/*/fold0")
    (fold0 / "metrics.json").unlink()  # fold 0 is trained again, now with TensorBoard on
    assert run_comp("stage=train", *tiny_overrides(tmp_path, trained), "tensorboard=true") == 0
    assert list(fold0.glob("logs/train/events.out.tfevents*"))
    assert not list(run_path(tmp_path).glob("models/*/fold1/logs"))  # fold 1 was not redone


def test_a_warning_about_the_folder_is_said_once_a_run(finished_run, comp_caplog):
    """stage=all reads the folder once: its later stages (ensemble, submit, report) take
    what it read, so a file skipped in train/ is one warning line, not one a stage."""
    tmp_path, competition, _ = finished_run
    (competition / "train" / "notes.txt").write_text("not an image")
    assert run_comp("stage=all", *tiny_overrides(tmp_path, competition, quiet="false")) == 0
    warned = [r.getMessage() for r in comp_caplog.records if "notes.txt" in r.getMessage()]
    assert len(warned) == 1, warned
