"""The Python API: Competition(...).fit / leaderboard / predict / report / export."""

import io
import logging
from pathlib import Path

import pandas as pd
import pytest

from comp import Competition
from comp.api import _value
from comp.errors import CompError
from tests.conftest import CLASSES, make_competition

P_COLS = [f"p_{c}" for c in CLASSES]


def tiny(tmp_path: Path, folder: Path, **extra) -> Competition:
    """The API twin of conftest.tiny_overrides."""
    settings = {
        "backbones": ["small_cnn"], "weights": "none", "data.folds": 2, "train.epochs": 2,
        "train.patience": 2, "train.batch_size": 8, "augment.tta": "flips", "quiet": True,
        "pseudo.rounds": 0, "tune.n_trials": 0, "classic.models": [],
        "backbone_overrides.small_cnn.model.image_size": 32,
        "backbone_overrides.small_cnn.train.epochs": 2, **extra,
    }
    return Competition(folder, name="tiny", runs_dir=tmp_path / "runs",
                       submissions_dir=tmp_path / "submissions", **settings)


def test_values_become_hydra_overrides():
    assert _value(None) == "null" and _value(True) == "true" and _value(3) == "3"
    assert _value(["a", "b-c"]) == "[a,b-c]" and _value(0.5) == "0.5"
    assert _value("/tmp/my folder") == "'/tmp/my folder'"


def test_no_folder_is_the_demo_and_settings_reach_the_config(tmp_path):
    demo = Competition(runs_dir=tmp_path / "runs", **{"train.epochs": 3})
    assert demo.name == "demo" and demo.config.train.epochs == 3
    assert Path(demo.config.data.dir) == Path(demo.config.weights_dir).parent / "wbc"
    assert Competition(overrides=["train.lr=0.01"]).config.train.lr == 0.01


def test_a_folder_names_the_experiment_and_bad_input_raises(tmp_path, competition):
    assert Competition(competition).name == competition.name
    with pytest.raises(CompError, match="no such folder"):
        Competition(tmp_path / "missing")
    with pytest.raises(CompError, match="unknown key"):
        Competition(competition, **{"train.nope": 1})


@pytest.mark.slow
def test_fit_leaderboard_predict_report(tmp_path, competition):
    comp = tiny(tmp_path, competition, progress="lines", quiet=False)
    with pytest.raises(CompError, match="fit"):
        comp.leaderboard()
    log = io.StringIO()
    handler = logging.StreamHandler(log)
    logging.getLogger("comp").addHandler(handler)
    try:
        assert comp.fit() is comp
    finally:
        logging.getLogger("comp").removeHandler(handler)
    assert "fold done: model=small_cnn-" in log.getvalue()
    board = comp.leaderboard()
    assert isinstance(board, pd.DataFrame) and len(board) == 1
    assert board.loc[0, "rank"] == 1 and board.loc[0, "name"].startswith("small_cnn-")
    frame = comp.predict(competition / "test")
    assert list(frame.columns) == ["id", "label", *[f"p_{c}" for c in CLASSES]]
    assert len(frame) == 6 and set(frame.label) <= set(CLASSES)
    some = sorted((competition / "test").iterdir())[:2]
    listed = comp.predict(some)
    assert listed.id.tolist() == [p.name for p in some]
    expected = frame.set_index("id").loc[listed.id, [f"p_{c}" for c in CLASSES]].to_numpy()
    assert abs(listed[[f"p_{c}" for c in CLASSES]].to_numpy() - expected).max() < 1e-5
    assert comp.report().name == "index.html" and comp.report().exists()
    # a finished fit reruns in no time and a second experiment ranks on its own
    assert len(comp.fit(["train", "submit"]).leaderboard()) == 1


def test_predicted_ids_and_labels_written_as_integers_are_integers():
    """A pixel CSV's ImageId 1..N and classes 0-9 come back as integers, as pandas reads
    the competition's CSVs (as strings, `frame.label == y` was silently all False and a
    merge with the sample submission failed); other ids and labels stay strings."""
    import pandas as pd

    from comp.api import _typed

    frame = _typed(pd.DataFrame({"id": ["1", "2", "10"], "label": ["0", "9", "-3"]}))
    assert frame["id"].tolist() == [1, 2, 10] and frame["id"].dtype == "int64"
    assert frame["label"].tolist() == [0, 9, -3]
    sample = pd.DataFrame({"ImageId": [10, 1], "Label": [0, 0]})
    assert sample.merge(frame, left_on="ImageId", right_on="id")["label"].tolist() == [-3, 0]
    for ids in (["007", "8"], ["a.png", "2"], ["1.0", "2"], ["1", "x/2"]):
        kept = _typed(pd.DataFrame({"id": ids, "label": ["cat", "7"]}))
        assert kept["id"].tolist() == ids and kept["label"].tolist() == ["cat", "7"]
    assert _typed(pd.DataFrame({"id": [0, 1], "label": ["b", "c"]}))["id"].tolist() == [0, 1]


def test_nested_dicts_are_settings(tmp_path):
    comp = Competition(runs_dir=tmp_path / "runs", train={"epochs": 3, "lr": 0.01},
                       model={"dropout": 0.1}, **{"augment.tta": "flips"},
                       backbone_overrides={"small_cnn": {"model": {"image_size": 48}}})
    cfg = comp.config
    assert (cfg.train.epochs, cfg.train.lr, cfg.model.dropout) == (3, 0.01, 0.1)
    assert cfg.augment.tta == "flips"
    assert cfg.backbone_overrides.small_cnn.model.image_size == 48


def _frames(competition: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    train = pd.read_csv(competition / "train.csv")
    train = pd.DataFrame({"path": [str(competition / "train" / i) for i in train["id"]],
                          "label": train["label"]})
    test = pd.DataFrame({"path": [str(p) for p in sorted((competition / "test").iterdir())]})
    return train, test


def test_from_frame_writes_a_competition_folder(tmp_path, competition):
    from comp.data.folder import read_competition

    train, test = _frames(competition)
    comp = Competition.from_frame(train, label="label", image="path", test_data=test,
                                  runs_dir=tmp_path / "runs")
    folder = tmp_path / "runs" / comp.name / "competition"
    assert comp.name.startswith("frame-") and Path(comp.config.data.dir) == folder
    written, original = read_competition(folder), read_competition(competition)
    assert written.train["hash"].tolist() == original.train["hash"].tolist()  # same images
    assert written.train["label"].tolist() == original.train["label"].tolist()
    assert sorted(written.test["hash"]) == sorted(original.test["hash"])
    again = Competition.from_frame(train, label="label", image="path", test_data=test,
                                   runs_dir=tmp_path / "runs")
    assert again.name == comp.name  # the same frame is the same experiment
    with pytest.raises(CompError, match="no label column 'target'"):
        Competition.from_frame(train, label="target", image="path", runs_dir=tmp_path)
    with pytest.raises(CompError, match="1 image file.s. not found"):
        Competition.from_frame(train.assign(path=lambda f: f.path.where(f.index > 0, "/no.png")),
                               image="path", runs_dir=tmp_path)


def test_predict_refuses_what_is_not_images(tmp_path, competition):
    import numpy as np

    comp = Competition(competition, runs_dir=tmp_path / "runs")
    with pytest.raises(CompError, match="cannot predict a dict; give an image file"):
        comp.predict({"a": 1})
    with pytest.raises(CompError, match="cannot predict a list"):
        comp.predict([1, 2])
    with pytest.raises(CompError, match="shape"):
        comp.predict(np.zeros((2, 2, 2, 2, 2), np.uint8))
    with pytest.raises(CompError, match="outside \\[0, 1\\]"):
        comp.predict(np.full((8, 8, 3), 2.0))
    assert not (tmp_path / "runs").exists()


def _stored_model(run: Path) -> str:
    (model,) = [p.name for p in (run / "preds").iterdir()]
    return model


def _stored_test_predictions(run: Path) -> pd.DataFrame:
    (model,) = [p for p in (run / "preds").iterdir()]
    return pd.read_csv(model / "test.csv").set_index("id")


@pytest.mark.slow
def test_load_predicts_files_arrays_and_pil_images_alike(trained, tmp_path, comp_caplog):
    import numpy as np
    from PIL import Image

    comp = Competition.load(tmp_path / "runs" / "tiny", quiet=False)
    assert comp.name == "tiny" and comp.config.augment.tta == "flips"
    files = sorted((trained / "test").iterdir())[:3]
    by_files = comp.predict([str(f) for f in files])
    stored = _stored_test_predictions(tmp_path / "runs" / "tiny")
    assert by_files["id"].tolist() == [f.name for f in files]
    assert np.abs(by_files[P_COLS].to_numpy() - stored.loc[by_files["id"], P_COLS].to_numpy()
                  ).max() < 1e-5  # the same settings as the training run
    arrays = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    pil = [Image.open(f) for f in files]
    for images in (arrays, arrays / 255.0, pil, list(arrays)):
        frame = comp.predict(images)
        assert frame["id"].tolist() == [0, 1, 2]
        assert np.abs(frame[P_COLS].to_numpy() - by_files[P_COLS].to_numpy()).max() < 1e-5
    single = comp.predict(arrays[1])
    assert np.abs(single[P_COLS].to_numpy() - by_files[P_COLS].to_numpy()[1:2]).max() < 1e-5
    proba = comp.predict_proba(pil)
    assert list(proba.columns) == CLASSES and proba.index.tolist() == [0, 1, 2]
    assert np.allclose(proba.to_numpy(), by_files[P_COLS].to_numpy(), atol=1e-6)
    logged = [r.getMessage().rsplit("-> ", 1)[1] for r in comp_caplog.records
              if r.getMessage().startswith("predict:")]
    assert len(logged) == 7 and all(Path(p).is_file() for p in logged), logged


def test_a_predictor_is_built_once_and_predicts_as_predict_does(trained, tmp_path,
                                                                 monkeypatch):
    """Competition.predictor: the models built once (a second call builds nothing), the
    same frames as Competition.predict for files, a folder and arrays, and nothing
    written under the run's predictions/."""
    import numpy as np
    from PIL import Image

    import comp.inference as inference

    comp = Competition.load(tmp_path / "runs" / "tiny")
    files = sorted((trained / "test").iterdir())[:3]
    expected = comp.predict([str(f) for f in files])
    written = sorted((tmp_path / "runs" / "tiny" / "predictions").iterdir())
    predictor = comp.predictor()
    assert predictor.using == _stored_model(tmp_path / "runs" / "tiny")
    assert predictor.classes == CLASSES

    def no_build(*args, **kwargs):
        raise AssertionError("a loaded predictor built a model again")

    monkeypatch.setattr(inference, "build_backbone", no_build)
    monkeypatch.setattr(inference, "create_head", no_build)
    by_files = predictor.predict([str(f) for f in files])
    assert by_files["id"].tolist() == [f.name for f in files]
    assert by_files["label"].tolist() == expected["label"].tolist()
    assert np.abs(by_files[P_COLS].to_numpy() - expected[P_COLS].to_numpy()).max() < 1e-6
    arrays = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    again = predictor.predict(arrays[::-1])
    assert again["id"].tolist() == [0, 1, 2]
    assert np.abs(again[P_COLS].to_numpy() - expected[P_COLS].to_numpy()[::-1]).max() < 1e-6
    folder = predictor.predict_proba(trained / "test")
    assert list(folder.columns) == CLASSES
    assert folder.index.tolist() == sorted(p.name for p in (trained / "test").iterdir())
    assert np.abs(folder.loc[[f.name for f in files]].to_numpy()
                  - expected[P_COLS].to_numpy()).max() < 1e-6
    assert sorted((tmp_path / "runs" / "tiny" / "predictions").iterdir()) == written
    with pytest.raises(CompError, match="cannot predict a dict"):
        predictor.predict({"a": 1})
    _calls_take_turns(predictor, [str(f) for f in files])


def _calls_take_turns(predictor, files: list[str]) -> None:
    """Four threads predicting at once: the built models serve one call at a time."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    inside, most, lock, predict = [0], [0], threading.Lock(), predictor._predict

    def watched(paths):
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.05)
        try:
            return predict(paths)
        finally:
            with lock:
                inside[0] -= 1

    predictor._predict = watched
    with ThreadPoolExecutor(4) as pool:
        frames = list(pool.map(lambda _: predictor.predict(files), range(4)))
    assert most[0] == 1 and all(f.equals(frames[0]) for f in frames)


def test_a_folder_of_sub_folders_is_predicted_by_sub_folder_and_name(trained, tmp_path):
    """predict.input=test/ where the images sit in sub-folders (test/<class>/<image>, a
    labelled holdout): ids `<sub-folder>/<file name>`, the same probabilities as the
    images in one folder."""
    import numpy as np

    comp = Competition.load(tmp_path / "runs" / "tiny")
    flat = comp.predict(trained / "test").set_index("id")
    nested = tmp_path / "nested"
    for i, path in enumerate(sorted((trained / "test").iterdir())):
        (nested / CLASSES[i % 3]).mkdir(parents=True, exist_ok=True)
        path.rename(nested / CLASSES[i % 3] / path.name)
    got = comp.predict(nested)
    assert got["id"].tolist() == sorted(f"{p.parent.name}/{p.name}"
                                        for p in nested.glob("*/*.png"))
    names = [i.split("/")[1] for i in got["id"]]
    assert np.abs(got[P_COLS].to_numpy() - flat.loc[names, P_COLS].to_numpy()).max() < 1e-6


@pytest.mark.slow
def test_evaluate_a_frame_or_class_folders(trained, tmp_path):
    import shutil

    import numpy as np

    comp = Competition.load(tmp_path / "runs" / "tiny")
    train = pd.read_csv(trained / "train.csv")
    frame = pd.DataFrame({"image": [str(trained / "train" / i) for i in train["id"]],
                          "label": train["label"]})
    got = comp.evaluate(frame)
    predicted = comp.predict(frame["image"].tolist())
    assert got["accuracy"] == pytest.approx(np.mean(predicted["label"] == frame["label"]))
    assert set(got) == {"accuracy", "macro_f1", "n"} and got["n"] == len(frame)
    folders = tmp_path / "labelled"
    for path, label in zip(frame["image"], frame["label"], strict=True):
        (folders / label).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, folders / label / Path(path).name)
    assert comp.evaluate(folders) == pytest.approx(got)
    with pytest.raises(CompError, match="not classes of the model"):
        comp.evaluate(frame.assign(label="delta"))


@pytest.mark.slow
def test_from_frame_fits_and_predicts(tmp_path, competition):
    train, test = _frames(competition)
    comp = Competition.from_frame(
        train, label="label", image="path", test_data=test, runs_dir=tmp_path / "runs",
        submissions_dir=tmp_path / "submissions", backbones=["small_cnn"], weights="none",
        quiet=True, data={"folds": 2}, augment={"tta": "flips"}, classic={"models": []},
        train={"epochs": 2, "patience": 2, "batch_size": 8},
        backbone_overrides={"small_cnn": {"model": {"image_size": 32},
                                          "train": {"epochs": 2}}})
    board = comp.fit(["train", "submit"]).leaderboard()
    assert len(board) == 1 and board.loc[0, "experiment"] == comp.name
    scores = comp.evaluate(train)  # the training frame's own columns (from_frame's names)
    assert 0 <= scores["accuracy"] <= 1 and scores["n"] == len(train)
def test_numpy_and_unicode_values_reach_the_config_as_values(tmp_path):
    import numpy as np

    comp = Competition(runs_dir=tmp_path / "runs", name="expé 'x'",
                       **{"train.lr": np.float64(0.0125), "train.epochs": np.int64(4),
                          "augment.tta": "flips", "train.label_smoothing": np.float32(0.5)})
    assert comp.name == "expé 'x'" and comp.config.train.lr == 0.0125
    assert comp.config.train.epochs == 4 and comp.config.train.label_smoothing == 0.5
    for text in ["C:\\data\\", "a\\'b", "v[1]", "実験", "a b,c"]:
        assert Competition(runs_dir=tmp_path / "runs", name=text).name == text


def test_a_folder_given_twice_with_two_values_is_refused(tmp_path, competition):
    other = make_competition(tmp_path / "other")
    with pytest.raises(CompError, match="give the folder once"):
        Competition(competition, **{"data.dir": str(other)})
    with pytest.raises(CompError, match="give the folder once"):
        Competition(competition, overrides=[f"data.dir={other}"])
    same = Competition(competition, **{"data.dir": str(competition)})
    assert Path(same.config.data.dir) == competition.resolve() and same.name == "comp"
