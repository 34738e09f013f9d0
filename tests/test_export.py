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


@pytest.mark.slow
@pytest.mark.parametrize("tta", ["flips", "none"])
def test_export_reproduces_predict_in_plain_keras(tmp_path, competition, tta):
    overrides = tiny_overrides(tmp_path, competition, **{
        "augment.tta": tta, "backbone_overrides.small_cnn.train.epochs": "2"})
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
    # the same export again: nothing redone; other settings: exported again
    written = {p: p.stat().st_mtime_ns for p in export.rglob("*")}
    assert main(["stage=export", *overrides, f"export.tflite={tta == 'none'}",
                 f"export.output={export}"]) == 0
    assert {p: p.stat().st_mtime_ns for p in export.rglob("*")} == written
    assert main(["stage=export", *overrides, f"export.tflite={tta != 'none'}",
                 f"export.output={export}"]) == 0
    assert (export / "model.tflite").exists() == (tta != "none")
    assert (export / "model.keras").stat().st_mtime_ns != written[export / "model.keras"]


def test_export_refuses_an_ensemble_in_one_line(tmp_path, competition, capsys):
    overrides = tiny_overrides(tmp_path, competition)
    assert main(["stage=export", *overrides, "export.using=ensemble-mean"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("comp: error: export.using=ensemble-mean: ensembles are not")
    assert len(err.splitlines()) == 1


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
    _finished(run.ensemble_dir("mean", "k"), 0.90, kind="ensemble", name="ensemble-mean-k")
    model, note = export_choice(run, "accuracy")
    assert model == "small_cnn-b" and "ensemble-mean-k, an ensemble" in note
    assert "0.8000 against 0.9000" in note
