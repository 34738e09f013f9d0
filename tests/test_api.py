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
