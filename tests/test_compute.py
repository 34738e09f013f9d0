"""compute.*: mixed precision, XLA and a MirroredStrategy run the same code path (on this
CPU: bfloat16, XLA on CPU, one replica)."""

import json

import numpy as np
import pandas as pd
import pytest

from tests.helpers import P_COLS, run_comp, tiny_overrides


@pytest.mark.slow
def test_mixed_precision_xla_and_mirrored_train_and_predict(tmp_path, trained):
    competition = trained  # a float32 small_cnn is trained there already
    overrides = tiny_overrides(tmp_path, competition)
    assert run_comp("stage=train", *overrides) == 0
    fast = ["compute.precision=mixed_bfloat16", "compute.jit_compile=true",
            "compute.distribute=mirrored"]
    assert run_comp("stage=train", *overrides, *fast) == 0
    preds = sorted((tmp_path / "runs/tiny/preds").iterdir())
    assert len(preds) == 2  # bfloat16 is a model of its own (its weights differ)
    for folder in preds:
        oof = pd.read_csv(folder / "oof.csv")
        probs = oof.filter(like="p_").to_numpy()
        assert np.allclose(probs.sum(1), 1, atol=1e-3) and np.isfinite(probs).all()
    specs = {p.name: json.loads((tmp_path / "runs/tiny/models" / p.name / "spec.json")
                                .read_text()) for p in preds}
    mixed = next(name for name, spec in specs.items() if spec.get("precision"))
    assert specs[mixed]["precision"] == "mixed_bfloat16"
    assert run_comp("stage=predict", *overrides, *fast, f"predict.using={mixed}",
                    f"predict.input={competition / 'test'}") == 0
    (written,) = (tmp_path / "runs/tiny/predictions").glob("*.csv")
    again = pd.read_csv(written).set_index("id")
    test = pd.read_csv(tmp_path / "runs/tiny/preds" / mixed / "test.csv").set_index("id")
    assert sorted(again.index) == sorted(test.index)
    assert np.abs(again.loc[test.index, P_COLS].to_numpy() - test[P_COLS].to_numpy()
                  ).max() < 0.05  # bfloat16 has 8 bits of mantissa


def test_a_bad_compute_value_is_one_line(tmp_path, competition, capsys):
    overrides = tiny_overrides(tmp_path, competition)
    assert run_comp("stage=train", *overrides, "compute.precision=half") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("comp: error: ")
    assert "compute.precision='half'" in err[0]
    assert not list(tmp_path.glob("runs/tiny/models/*/fold*/metrics.json"))


def test_precision_auto_is_mixed_float16_with_a_gpu_and_float32_without():
    from comp.training.compute import check

    assert check({"precision": "auto"}, gpus=1)["precision"] == "mixed_float16"
    assert check({"precision": "auto"}, gpus=0, amx=False)["precision"] == "float32"
    assert check(None, gpus=2)["precision"] == "mixed_float16"  # auto is the default
    assert check({"precision": "mixed_bfloat16"}, gpus=0)["precision"] == "mixed_bfloat16"
    assert check({"precision": "float32"}, gpus=1)["precision"] == "float32"


def test_precision_auto_is_bfloat16_on_an_amx_cpu_only_for_models_it_speeds_up():
    from comp.training.compute import check

    def auto(**machine) -> str:
        return check({"precision": "auto"}, **machine)["precision"]

    assert auto(gpus=0, amx=True, amx_bfloat16=True) == "mixed_bfloat16"
    assert auto(gpus=0, amx=True, amx_bfloat16=False) == "float32"  # MobileNet's row
    assert auto(gpus=0, amx=False, amx_bfloat16=True) == "float32"  # no AMX
    assert auto(gpus=1, amx=True, amx_bfloat16=True) == "mixed_float16"  # a GPU first
    assert check({"precision": "float32"}, gpus=0, amx=True,
                 amx_bfloat16=True)["precision"] == "float32"  # a set value stays


def test_amx_is_read_from_the_cpu_flags(tmp_path):
    from comp.training.compute import cpu_has_amx

    def flags(line: str) -> bool:
        cpuinfo = tmp_path / f"cpuinfo{len(list(tmp_path.iterdir()))}"
        cpuinfo.write_text(f"processor\t: 0\nmodel name\t: x\n{line}\n\n")
        return cpu_has_amx(cpuinfo)

    assert flags("flags\t\t: fpu avx512f amx_bf16 amx_tile amx_int8")
    assert not flags("flags\t\t: fpu avx512f avx512_bf16")  # bfloat16 without AMX tiles
    assert not flags("model name\t: amx_bf16")  # only the flags line counts
    assert not cpu_has_amx(tmp_path / "missing")


def _default_model_id(monkeypatch, backbone: str, amx: bool, *overrides: str) -> str:
    from comp.config import load_config
    from comp.models.spec import make_spec

    monkeypatch.setattr("comp.training.compute.cpu_has_amx", lambda: amx)
    cfg = load_config(["weights=none", f"backbones=[{backbone}]", *overrides])
    return make_spec(cfg, backbone, "folds0").model_id


def test_the_default_precision_keeps_a_cpu_runs_model_ids(monkeypatch):
    """On a CPU without AMX `auto` resolves to float32, which the model id leaves out: the
    same id as an explicit float32, another one with mixed float16."""
    default = _default_model_id(monkeypatch, "small_cnn", False)
    assert default == _default_model_id(monkeypatch, "small_cnn", False,
                                        "compute.precision=float32")
    assert default != _default_model_id(monkeypatch, "small_cnn", False,
                                        "compute.precision=mixed_float16")


def test_an_amx_cpu_trains_small_cnn_in_bfloat16_and_mobilenet_in_float32(monkeypatch):
    """With AMX, small_cnn's default spec is its mixed-bfloat16 one (another model id);
    MobileNet's stays float32, the id it has without AMX."""
    from comp.config import load_config
    from comp.models.spec import make_spec

    assert _default_model_id(monkeypatch, "small_cnn", True) == _default_model_id(
        monkeypatch, "small_cnn", False, "compute.precision=mixed_bfloat16")
    assert _default_model_id(monkeypatch, "mobilenet_025", True) == _default_model_id(
        monkeypatch, "mobilenet_025", False)
    monkeypatch.setattr("comp.training.compute.cpu_has_amx", lambda: True)
    cfg = load_config(["weights=none", "backbones=[small_cnn]"])
    assert make_spec(cfg, "small_cnn", "folds0").precision == "mixed_bfloat16"


@pytest.mark.slow
def test_mixed_float16_trains_and_predicts_on_this_cpu(tmp_path, competition):
    """The GPU default's dtype policy, run here on the CPU: the fit (with Keras's loss
    scaling) and the prediction give finite probabilities from a float32 output."""
    overrides = tiny_overrides(tmp_path, competition)
    assert run_comp("stage=train", *overrides, "compute.precision=mixed_float16") == 0
    (model,) = (tmp_path / "runs/tiny/models").iterdir()
    assert json.loads((model / "spec.json").read_text())["precision"] == "mixed_float16"
    probs = pd.read_csv(tmp_path / "runs/tiny/preds" / model.name / "oof.csv"
                        ).filter(like="p_").to_numpy()
    assert np.isfinite(probs).all() and np.allclose(probs.sum(1), 1, atol=1e-3)


def test_prediction_batches_hold_about_two_million_numbers_on_a_cpu(monkeypatch):
    """A CPU's prediction batch shrinks as the rows grow (MobileNet 0.25's 224 px
    features, 14 x 14 x 128 a row: 64 rows; its 128 px ones: 256; 28 px images: 512, the
    most), within 32-512 rows; with a GPU it is 512 whatever the rows; predict_views
    reads its chunks so when no batch is given."""
    from comp.training import callbacks, compute

    monkeypatch.setattr(compute, "visible_gpus", lambda: 0)
    rows = compute.prediction_batch_rows
    assert [rows(14 * 14 * 128), rows(8 * 8 * 128), rows(28 * 28 * 3)] == [64, 256, 512]
    assert rows(1) == 512 and rows(10**8) == 32
    monkeypatch.setattr(compute, "visible_gpus", lambda: 1)
    assert rows(14 * 14 * 128) == 512
    monkeypatch.setattr(compute, "visible_gpus", lambda: 0)

    class Recorder:  # predict_on_batch's batch sizes, one probability column
        sizes: list[int] = []

        def predict_on_batch(self, batch):
            self.sizes.append(len(batch))
            return np.ones((len(batch), 1))

    model = Recorder()
    features = np.zeros((1, 200, 64, 64, 8), np.float16)  # 32,768 numbers a row: 64 rows
    assert callbacks.predict_views(model, features, [0]).shape == (200, 1)
    assert model.sizes == [64, 64, 64, 8]


def test_a_gpu_driver_is_told_by_its_device_files(tmp_path):
    from comp.training.compute import gpu_driver_present

    assert not gpu_driver_present(tmp_path)
    (tmp_path / "nvidiactl").touch()
    assert gpu_driver_present(tmp_path)


def test_the_main_process_plans_a_run_without_loading_tensorflow():
    """stage=all's and stage=train's modules import without TensorFlow, and on a machine
    without a GPU driver the GPU count needs none: the main process hands training to
    workers and never holds TensorFlow's 0.45 GB (the units import it where they train)."""
    import subprocess
    import sys

    from comp.training.compute import gpu_driver_present

    check = ("import sys; import comp.run, comp.stages.all, comp.stages.train, comp.rounds, "
             "comp.tuning.search, comp.pseudo.files; "
             "from comp.models.choice import detect_hardware; gpus = detect_hardware().gpus; "
             "print('tensorflow' in sys.modules, gpus)")
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[0] == ("True" if gpu_driver_present() else "False")


def test_the_train_line_names_the_models_that_do_not_train_in_float32():
    from types import SimpleNamespace

    from comp.training.workers import precision_note

    def unit(backbone: str, precision: str) -> tuple:
        return SimpleNamespace(backbone=backbone, precision=precision), 0

    assert precision_note([unit("small_cnn", "mixed_bfloat16"), unit("small_cnn", "mixed_bfloat16"),
                           unit("mobilenet_025", "float32")]) == "; small_cnn in mixed_bfloat16"
    classic = SimpleNamespace(model_id="pixels@32+svm_rbf-1")  # no precision: a classic head
    assert precision_note([unit("mobilenet_025", "float32"), (classic, 0)]) == ""
