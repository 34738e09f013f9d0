"""stage=export: a plain Keras model (no comp) reproduces stage=predict's probabilities."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from comp.artifacts import write_json
from comp.export import export_choice
from comp.run import main
from comp.workspace import RunDir
from tests.conftest import CLASSES, tiny_overrides

# run in a fresh interpreter that never imports comp: only Keras, NumPy, Pillow
LOAD = """
import json, sys
import numpy as np, keras
from PIL import Image
folder, images, size = sys.argv[1], sys.argv[2:-1], int(sys.argv[-1])
model = keras.saving.load_model(folder + "/model.keras")
batch = np.stack([np.asarray(Image.open(p).convert("RGB").resize(
    (size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)) for p in images])
probs = model.predict(batch, verbose=0)
assert not any(m == "comp" or m.startswith("comp.") for m in sys.modules), "comp imported"
print(json.dumps(probs.tolist()))
"""


def _plain_keras(folder, images, size):
    result = subprocess.run([sys.executable, "-c", LOAD, str(folder), *map(str, images),
                             str(size)], capture_output=True, text=True, timeout=300,
                            cwd=folder)
    assert result.returncode == 0, result.stderr[-2000:]
    return np.array(json.loads(result.stdout.strip().splitlines()[-1]))


def model_id(tmp_path) -> str:
    (model,) = (tmp_path / "runs/tiny/models").iterdir()
    return model.name


@pytest.mark.slow
@pytest.mark.parametrize("tta", ["flips", "none"])
def test_export_reproduces_predict_in_plain_keras(tmp_path, competition, tta):
    overrides = tiny_overrides(tmp_path, competition, **{  # small_cnn's own default: none
        "augment.tta": tta, "backbone_overrides.small_cnn.augment.tta": tta,
        "backbone_overrides.small_cnn.train.epochs": "2"})
    assert main(["stage=train", *overrides]) == 0
    output = tmp_path / "pred.csv"
    assert main(["stage=predict", *overrides, f"predict.input={competition / 'test'}",
                 f"predict.output={output}"]) == 0
    predicted = pd.read_csv(output)
    export = tmp_path / "export"
    # export.tta left at its default: the export must give stage=predict's probabilities
    assert main(["stage=export", *overrides, f"export.tflite={tta == 'none'}",
                 f"export.output={export}"]) == 0
    assert (export / "model.tflite").exists() == (tta == "none")
    for name in ("model.keras", "saved_model/saved_model.pb", "MODEL_CARD.md", "classes.json"):
        assert (export / name).exists(), name
    assert json.loads((export / "classes.json").read_text()) == CLASSES
    card = (export / "MODEL_CARD.md").read_text()
    assert "keras.saving.load_model" in card and "accuracy" in card and "32" in card
    probs = _plain_keras(export, [competition / "test" / i for i in predicted.id], 32)
    expected = predicted[[f"p_{c}" for c in CLASSES]].to_numpy()
    assert probs.shape == expected.shape
    assert np.abs(probs - expected).max() < 1e-4
    # the model card's own snippet, run as a user would, gives the same probabilities
    snippet = card.split("```python\n")[1].split("```")[0].replace(
        '"x.png"', repr(str(competition / "test" / predicted.id[0])))
    result = subprocess.run([sys.executable, "-c", snippet + "print(json.dumps(probs.tolist()))"],
                            capture_output=True, text=True, timeout=300, cwd=export)
    assert result.returncode == 0, result.stderr[-2000:]
    card_probs = np.array(json.loads(result.stdout.strip().splitlines()[-1]))
    assert np.abs(card_probs - expected[0]).max() < 1e-4
    if tta == "flips":  # a fold that chose the image alone weighs as much as the other
        folds = tmp_path / "runs/tiny/models" / model_id(tmp_path)
        recorded = {k: json.loads((folds / f"fold{k}/metrics.json").read_text()) for k in (0, 1)}
        for k, views in ((0, "identity"), (1, "all")):
            write_json(folds / f"fold{k}/metrics.json", {**recorded[k], "views": views})
        assert main(["stage=predict", *overrides, f"predict.input={competition / 'test'}",
                     f"predict.output={output}"]) == 0
        mixed = pd.read_csv(output)[[f"p_{c}" for c in CLASSES]].to_numpy()
        assert main(["stage=export", *overrides, f"export.output={tmp_path / 'mixed'}"]) == 0
        probs = _plain_keras(tmp_path / "mixed", [competition / "test" / i
                                                  for i in predicted.id], 32)
        assert np.abs(probs - mixed).max() < 1e-4
        for k in (0, 1):
            write_json(folds / f"fold{k}/metrics.json", recorded[k])
    # the same export again: nothing redone; other settings: exported again
    written = {p: p.stat().st_mtime_ns for p in export.rglob("*")}
    assert main(["stage=export", *overrides, f"export.tflite={tta == 'none'}",
                 f"export.output={export}"]) == 0
    assert {p: p.stat().st_mtime_ns for p in export.rglob("*")} == written
    assert main(["stage=export", *overrides, f"export.tflite={tta != 'none'}",
                 f"export.output={export}"]) == 0
    assert (export / "model.tflite").exists() == (tta != "none")
    assert (export / "model.keras").stat().st_mtime_ns != written[export / "model.keras"]


def test_export_refuses_an_ensemble_in_one_line(tmp_path, capsys):
    overrides = [f"runs_dir={tmp_path / 'runs'}", "name=tiny", "weights=none"]
    run = RunDir(tmp_path / "runs/tiny")
    _fine_tune(run, "small_cnn-a", 0.7)
    _finished(run.preds_dir("pixels+logreg-c"), 0.85, model_id="pixels+logreg-c",
              model_kind="classic")
    _finished(run.ensemble_dir("mean", "k"), 0.90, kind="ensemble", name="ensemble-mean-k",
              models=["small_cnn-a", "pixels+logreg-c"])
    assert main(["stage=export", *overrides, "export.using=ensemble-mean-k"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("comp: error: export.using=ensemble-mean-k: an ensemble is exported "
                          "only where its members are fine-tunes of one backbone")
    assert "classic" in err and len(err.splitlines()) == 1


def _fine_tune(run: RunDir, model_id: str, cv: float, backbone: str = "small_cnn",
               size: int = 32, **info) -> None:
    _finished(run.preds_dir(model_id), cv, model_id=model_id, model_kind="finetune", **info)
    write_json(run.model_dir(model_id) / "spec.json", {"backbone": backbone,
                                                       "image_size": size})


def test_export_takes_round_zeros_pick_where_it_stayed_rank_1(tmp_path):
    """submit.round_margin kept round 0's fine-tune at rank 1, although the model's fits
    mean stands for it in the current entries: export ships round 0's pick as is."""
    run = RunDir(tmp_path / "run")
    _fine_tune(run, "small_cnn-a", 0.80)
    _fine_tune(run, "small_cnn-b", 0.80, round=1, lineage="small_cnn-a")
    _finished(run.ensemble_dir("fits", "k"), 0.805, kind="ensemble", name="ensemble-fits-k",
              models=["small_cnn-a", "small_cnn-b"], fits_of="small_cnn-a", method="mean",
              round=1)
    write_json(run.selection_json, {"average_fits": True, "final_choice": "small_cnn-a",
                                    "rank_by": "accuracy"})
    assert export_choice(run, "accuracy") == ("small_cnn-a", None)


def test_an_ensemble_of_one_backbones_fits_is_exported_with_its_weights(tmp_path):
    from comp.errors import CompError
    from comp.export import export_members

    run = RunDir(tmp_path / "run")
    _fine_tune(run, "small_cnn-a", 0.80)
    _fine_tune(run, "small_cnn-b", 0.81)
    _finished(run.ensemble_dir("fits", "k"), 0.83, kind="ensemble", name="ensemble-fits-k",
              models=["small_cnn-a", "small_cnn-b"], fits_of="small_cnn-a", method="mean",
              weights={"small_cnn-a": 0.5, "small_cnn-b": 0.5})
    info, members, weights = export_members(run, "ensemble-fits-k")
    assert members == ["small_cnn-a", "small_cnn-b"] and weights == [0.5, 0.5]
    assert info["cv"]["accuracy"] == 0.83
    write_json(run.selection_json, {"average_fits": True})  # stage=submit ranked the means
    assert export_choice(run, "accuracy") == ("ensemble-fits-k", None)  # rank 1, exported
    assert export_members(run, "small_cnn-b")[1:] == (["small_cnn-b"], [1.0])
    _fine_tune(run, "small_cnn-c", 0.79, size=64)  # another input size: not one model
    _finished(run.ensemble_dir("optuna", "j"), 0.84, kind="ensemble",
              name="ensemble-optuna-j", models=["small_cnn-a", "small_cnn-c"],
              weights={"small_cnn-a": 0.7, "small_cnn-c": 0.3})
    with pytest.raises(CompError, match="one backbone at one input size"):
        export_members(run, "ensemble-optuna-j")
    model, note = export_choice(run, "accuracy")  # the best entry that exports instead
    assert model == "ensemble-fits-k" and "ensemble-optuna-j, an ensemble of other" in note
    assert "0.8300 against 0.8400" in note
    with pytest.raises(CompError, match="no finished model 'small_cnn-z'"):
        export_members(run, "small_cnn-z")


def _finished(folder, cv: float, **info) -> None:
    write_json(folder / "cv.json", {"cv": {"accuracy": cv}, "classes": CLASSES, **info})


def test_export_takes_rank_1_or_says_why_it_takes_the_best_fine_tuned_model(tmp_path):
    run = RunDir(tmp_path / "run")
    _finished(run.preds_dir("small_cnn-a"), 0.70, model_id="small_cnn-a",
              model_kind="finetune")
    _finished(run.preds_dir("small_cnn-b"), 0.80, model_id="small_cnn-b",
              model_kind="finetune")
    assert export_choice(run, "accuracy") == ("small_cnn-b", None)  # rank 1 is fine-tuned
    _finished(run.preds_dir("pixels+logreg-c"), 0.85, model_id="pixels+logreg-c",
              model_kind="classic")
    model, note = export_choice(run, "accuracy")
    assert model == "small_cnn-b"
    assert "rank 1 on the leaderboard is pixels+logreg-c, a classic" in note
    _finished(run.ensemble_dir("mean", "k"), 0.90, kind="ensemble", name="ensemble-mean-k",
              models=["small_cnn-b", "pixels+logreg-c"])
    model, note = export_choice(run, "accuracy")
    assert model == "small_cnn-b" and "ensemble-mean-k, an ensemble" in note
    assert "0.8000 against 0.9000" in note


@pytest.mark.slow
def test_a_models_fits_over_the_rounds_export_as_one_model_giving_predicts_probabilities(
        tmp_path, trained):
    """After a pseudo-label round rank 1 is the mean of small_cnn's two fits
    (pseudo.average_fits); stage=export ships that mean, and plain Keras gives
    stage=predict's probabilities for it."""
    overrides = tiny_overrides(tmp_path, trained, **{
        "pseudo.rounds": "1", "pseudo.rule": "threshold", "pseudo.threshold": "0.0",
        "pseudo.class_cap": "10", "pseudo.splits": "[unlabeled,test]"})
    assert main(["stage=all", *overrides]) == 0
    (fits,) = [json.loads(p.read_text()) for p in
               (tmp_path / "runs/tiny/ensemble").glob("fits-*/cv.json")]
    assert len(fits["models"]) == 2
    output = tmp_path / "pred.csv"
    assert main(["stage=predict", *overrides, f"predict.input={trained / 'test'}",
                 f"predict.output={output}", f"predict.using={fits['name']}"]) == 0
    predicted = pd.read_csv(output)
    export = tmp_path / "export"
    assert main(["stage=export", *overrides, f"export.using={fits['name']}",
                 f"export.output={export}"]) == 0
    card = (export / "MODEL_CARD.md").read_text()
    assert all(f"`{m}` (weight 0.5)" in card for m in fits["models"])
    assert "2 fits of a small_cnn" in card
    assert all(f"{m}/fold1/" in card for m in fits["models"])  # every fit's weights hashed
    probs = _plain_keras(export, [trained / "test" / i for i in predicted.id], 32)
    expected = predicted[[f"p_{c}" for c in CLASSES]].to_numpy()
    assert np.abs(probs - expected).max() < 1e-4
    singles = [_plain_keras(_export_one(overrides, tmp_path, m), [trained / "test" / i
                                                                 for i in predicted.id], 32)
               for m in fits["models"]]
    assert np.abs(probs - np.mean(singles, axis=0)).max() < 1e-4
    assert np.abs(singles[0] - singles[1]).max() > 1e-5  # two fits, not one twice


def _export_one(overrides: list[str], tmp_path, model: str):
    assert main(["stage=export", *overrides, f"export.using={model}",
                 f"export.output={tmp_path / model}"]) == 0
    return tmp_path / model
