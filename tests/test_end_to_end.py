"""stage=all on a tiny competition: files, formats, leaderboard, resume."""

import json

import pandas as pd
import pytest

from comp.run import main
from tests.conftest import CLASSES, tiny_overrides


@pytest.fixture
def finished_run(tmp_path, competition):
    overrides = tiny_overrides(tmp_path, competition)
    assert main(["stage=all", *overrides]) == 0
    return tmp_path, competition, overrides


def test_all_writes_predictions_submission_and_leaderboard(finished_run):
    tmp_path, competition, _ = finished_run
    run = tmp_path / "runs" / "tiny"
    folds = pd.read_csv(run / "folds.csv")
    assert list(folds.columns) == ["id", "label", "fold", "group"] and folds.fold.nunique() == 2
    (model_dir,) = (run / "preds").iterdir()
    assert model_dir.name.startswith("small_cnn-")
    oof = pd.read_csv(model_dir / "oof.csv")
    assert list(oof.columns) == ["id", "fold", "label", *[f"p_{c}" for c in CLASSES]]
    assert len(oof) == 24 and oof.id.tolist() == folds.id.tolist()
    assert (oof.fold == folds.fold).all()
    assert oof[[f"p_{c}" for c in CLASSES]].sum(axis=1).round(4).eq(1).all()
    test = pd.read_csv(model_dir / "test.csv")
    assert list(test.columns) == ["id", *[f"p_{c}" for c in CLASSES]] and len(test) == 6
    for fold in (0, 1):
        fold_dir = run / "models" / model_dir.name / f"fold{fold}"
        for name in ("model.weights.h5", "history.csv", "val.csv", "test.csv", "metrics.json"):
            assert (fold_dir / name).exists(), name
        metrics = json.loads((fold_dir / "metrics.json").read_text())
        assert {"accuracy", "auc", "log_loss", "macro_f1"} <= set(metrics)
    assert (run / "config.yaml").exists()
    board = pd.read_csv(tmp_path / "submissions" / "leaderboard.csv")
    assert board["rank"].tolist() == [1] and board.kind[0] == "single"
    submission = pd.read_csv(tmp_path / "submissions" / board.file[0])
    sample = pd.read_csv(competition / "sample_submission.csv")
    assert list(submission.columns) == list(sample.columns)
    assert submission.id.tolist() == sample.id.tolist() and submission.label.isin(CLASSES).all()
    cv = json.loads((model_dir / "cv.json").read_text())["cv"]["accuracy"]
    assert f"cv-acc{cv:.4f}" in board.file[0]


def test_rerun_skips_finished_folds_and_redoes_an_interrupted_one(finished_run):
    tmp_path, _, overrides = finished_run
    run = tmp_path / "runs" / "tiny"
    (model_id,) = [p.name for p in (run / "models").iterdir()]
    stamps = {k: (run / "models" / model_id / f"fold{k}" / "metrics.json").stat().st_mtime_ns
              for k in (0, 1)}
    assert main(["stage=train", *overrides]) == 0
    assert all((run / "models" / model_id / f"fold{k}" / "metrics.json").stat().st_mtime_ns
               == stamps[k] for k in (0, 1))
    (run / "models" / model_id / "fold1" / "metrics.json").unlink()  # as if killed mid-fold
    assert main(["stage=train", *overrides]) == 0
    assert (run / "models" / model_id / "fold0" / "metrics.json").stat().st_mtime_ns == stamps[0]
    assert (run / "models" / model_id / "fold1" / "metrics.json").stat().st_mtime_ns != stamps[1]


def test_changed_setting_gets_a_new_model_id(finished_run):
    tmp_path, _, overrides = finished_run
    assert main(["stage=train", *overrides, "model.dropout=0.1"]) == 0
    assert len(list((tmp_path / "runs" / "tiny" / "preds").iterdir())) == 2


def test_probability_submission_format(tmp_path, competition):
    sample = pd.read_csv(competition / "sample_submission.csv")
    pd.DataFrame({"id": sample.id, **{c: 0.0 for c in CLASSES}}).to_csv(
        competition / "sample_submission.csv", index=False)
    assert main(["stage=all", *tiny_overrides(tmp_path, competition)]) == 0
    board = pd.read_csv(tmp_path / "submissions" / "leaderboard.csv")
    submission = pd.read_csv(tmp_path / "submissions" / board.file[0])
    assert list(submission.columns) == ["id", *CLASSES]
    assert submission[CLASSES].sum(axis=1).round(4).eq(1).all()


def test_pretrained_backbone_with_a_cut_and_other_data_refused(tmp_path, competition):
    overrides = tiny_overrides(tmp_path, competition, backbones="[mobilenet_025]",
                               **{"model.image_size": "32", "model.unfreeze": "block12"})
    assert main(["stage=train", *overrides]) == 0
    (model_dir,) = (tmp_path / "runs" / "tiny" / "preds").iterdir()
    spec = json.loads((tmp_path / "runs/tiny/models" / model_dir.name / "spec.json").read_text())
    assert spec["weights"] == "random-init"
    (competition / "train.csv").write_text(
        (competition / "train.csv").read_text().replace("gamma_007.png,gamma\n", ""))
    assert main(["stage=train", *overrides]) == 2  # run dir holds folds of other data


def test_corrupt_or_foreign_fold_results_are_retrained(finished_run):
    tmp_path, _, overrides = finished_run
    run = tmp_path / "runs" / "tiny"
    (model_id,) = [p.name for p in (run / "models").iterdir()]
    fold0, fold1 = (run / "models" / model_id / f"fold{k}" / "metrics.json" for k in (0, 1))
    fold0.write_text("{ half a fi")  # corrupt
    fold1.write_text(json.dumps({**json.loads(fold1.read_text()), "comp": "0.0.1"}))
    assert main(["stage=train", *overrides]) == 0
    for path in (fold0, fold1):
        assert json.loads(path.read_text())["comp"] != "0.0.1"


def test_tensorboard_event_files(tmp_path, competition):
    import pytest

    pytest.importorskip("tensorboard", reason="tensorboard not installed")
    assert main(["stage=train", *tiny_overrides(tmp_path, competition), "tensorboard=true"]) == 0
    assert list((tmp_path / "runs/tiny/models").glob("*/fold0/logs/train/events.out.tfevents*"))
