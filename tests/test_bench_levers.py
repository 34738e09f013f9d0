"""bench/levers.py: the commands it runs and its tuning lever on a tiny competition."""

import importlib.util
import sys

import pandas as pd
import pytest

from tests.helpers import ROOT, TUNE_FAST, make_competition


def load_levers():
    spec = importlib.util.spec_from_file_location("levers", ROOT / "bench" / "levers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tuned_runs_stage_all_again_with_trials_and_keeps_overrides(tmp_path, monkeypatch,
                                                                     capsys):
    # --tuned used to train params=best with pseudo.round=1 hard-coded, which fails when
    # pseudo.rounds=0: no round-1 pseudo-labels; and `-- overrides` after
    # the options were rejected by argparse
    levers = load_levers()
    calls = []
    monkeypatch.setattr(levers, "run_comp", lambda overrides: calls.append(overrides) or (1, 1))
    frame = pd.DataFrame({"entry": ["x"]})
    frame.attrs.update(levers=["lever line"], chosen={"0": "x"})
    monkeypatch.setattr(levers, "table", lambda run, truth: frame.copy())
    monkeypatch.setattr(levers, "tuning_levers", lambda before, after: ["tuning line"])
    monkeypatch.setattr(levers, "selected_gain", lambda lever, before, after: ["gain line"])
    monkeypatch.setattr(sys, "argv", ["levers.py", str(tmp_path), "--name", "n", "--runs-dir",
                                      str(tmp_path / "runs"), "--tuned", "3", "--",
                                      "train.epochs=2", "pseudo.rounds=0"])
    levers.main()
    assert [c[0] for c in calls] == ["stage=all", "stage=all"]
    assert calls[1][-1] == "tune.n_trials=3"  # last: it wins over the overrides
    assert calls[0][1:] == calls[1][1:-1]  # the same run directory and overrides
    assert calls[0][-2:] == ["train.epochs=2", "pseudo.rounds=0"]
    assert not any(o.startswith("pseudo.round=") for c in calls for o in c)
    out = capsys.readouterr().out
    # the defaults' table with its lever lines, then the tuned table with the lever's gain
    assert "tuning line" in out and "gain line" in out and out.count("lever line") == 1


def test_a_pseudo_lever_runs_in_a_copy_holding_round_zero_alone(tmp_path, monkeypatch):
    """A lever on the rounds in the defaults' directory had the defaults' round-1 models
    in its ensembles and choice: it runs in `<name>-lever`, round 0 alone."""
    import json

    levers = load_levers()
    run = tmp_path / "runs" / "n"
    for model, round_ in (("cnn-a", 0), ("cnn-b", 1)):
        for folder in ("preds", "models"):
            (run / folder / model).mkdir(parents=True)
        (run / "preds" / model / "cv.json").write_text(json.dumps({"round": round_}))
    (run / "ensemble" / "mean-k").mkdir(parents=True)
    (run / "ensemble" / "mean-k" / "cv.json").write_text("{}")
    (run / "pseudo" / "round1").mkdir(parents=True)
    (run / "pseudo" / "round1" / "fold0.csv").write_text("id\n")
    (run / "selection.json").write_text("{}")
    calls = []
    monkeypatch.setattr(levers, "run_comp", lambda overrides: calls.append(overrides) or (1, 1))
    frame = pd.DataFrame({"entry": ["x"]})
    frame.attrs.update(levers=[], chosen={"0": "x"})
    tables = []
    monkeypatch.setattr(levers, "table", lambda run, truth: tables.append(run) or frame.copy())
    monkeypatch.setattr(levers, "selected_gain", lambda lever, before, after: [])
    monkeypatch.setattr(sys, "argv", ["levers.py", str(tmp_path), "--name", "n", "--runs-dir",
                                      str(tmp_path / "runs"), "--lever",
                                      "pseudo.epoch_rows=labelled"])
    levers.main()
    copy = tmp_path / "runs" / "n-lever"
    assert tables == [run, copy] and "name=n-lever" in calls[1] and "name=n" not in calls[1]
    assert calls[1][-1] == "pseudo.epoch_rows=labelled"
    assert sorted(p.name for p in (copy / "preds").iterdir()) == ["cnn-a"]
    assert sorted(p.name for p in (copy / "models").iterdir()) == ["cnn-a"]
    assert not list((copy / "ensemble").iterdir()) and not (copy / "selection.json").exists()
    assert (copy / "pseudo" / "round1" / "fold0.csv").exists()
    assert (run / "preds" / "cnn-b").exists()  # the defaults' directory is left as it was


@pytest.mark.parametrize("override", ["runs_dir=/elsewhere", "++name=other",
                                      "submissions_dir=/x", "data.dir=/y"])
def test_an_override_of_what_the_bench_sets_is_refused_before_the_run(tmp_path, monkeypatch,
                                                                      override):
    """`-- runs_dir=...` ran stage=all for two hours, then the table found no run where
    the bench looks (IndexError): now one line, before the run."""
    levers = load_levers()
    calls = []
    monkeypatch.setattr(levers, "run_comp", lambda overrides: calls.append(overrides) or (1, 1))
    monkeypatch.setattr(sys, "argv", ["levers.py", str(tmp_path), "--", "train.epochs=2",
                                      override])
    with pytest.raises(SystemExit, match="give (--runs-dir|--name|DATA_DIR) instead"):
        levers.main()
    assert calls == []


def test_test_labels_come_from_a_labelled_test_folder_without_truth(tmp_path):
    levers = load_levers()
    plain = make_competition(tmp_path / "plain")
    assert levers.holdout_truth(plain) is None  # Kaggle's layout: test labels withheld
    held = make_competition(tmp_path / "held", n_test=4)
    (held / "sample_submission.csv").unlink()
    for i, path in enumerate(sorted((held / "test").iterdir())):
        label = ("alpha", "beta")[i % 2]
        (held / "test" / label).mkdir(exist_ok=True)
        path.rename(held / "test" / label / path.name)
    truth = levers.holdout_truth(held)
    assert truth == {"alpha/test_000.png": "alpha", "beta/test_001.png": "beta",
                     "alpha/test_002.png": "alpha", "beta/test_003.png": "beta"}


@pytest.mark.slow
def test_tuned_lever_table_on_a_tiny_competition(tmp_path, monkeypatch, capsys):
    competition = make_competition(tmp_path / "comp")
    levers = load_levers()
    monkeypatch.chdir(ROOT)  # the child `python -m comp.run` runs this checkout
    monkeypatch.setattr(sys, "argv", [
        "levers.py", str(competition), "--name", "tiny", "--runs-dir", str(tmp_path / "runs"),
        "--tuned", "1", "--", "backbones=[small_cnn]", "weights=none", "data.folds=2",
        "train.epochs=2", "train.patience=2", "train.batch_size=8", "augment.tta=flips",
        "backbone_overrides.small_cnn.model.image_size=32", "classic.models=[pixels+logreg]",
        *(f"{k}={v}" for k, v in TUNE_FAST.items())])
    levers.main()
    out = capsys.readouterr().out
    assert "tuning (small_cnn-" in out
    assert "tune.n_trials=1 (selected, with the lever - defaults)" in out
    # the defaults ran one pseudo-label round: its lever line, from the one run
    defaults = out[:out.index("stage=all tune.n_trials=1")]
    assert "pseudo-label rounds (selected pipeline - round 0 selected): accuracy" in defaults
    last = out[out.index("stage=all tune.n_trials=1"):]
    rows = [line.split() for line in last.splitlines() if line.lstrip().startswith("small_cnn-")]
    assert {row[2] for row in rows} == {"0", "1"}  # entry kind round tuned ...
    assert {row[3] for row in rows} == {"False", "True"}  # the tuned model beside them
