"""stage=plan + one unit per process, in any order, equals one stage=train."""

import subprocess
import sys
from pathlib import Path

import pandas as pd

from comp.run import main
from tests.conftest import tiny_overrides

ROOT = Path(__file__).resolve().parent.parent
EXTRA = {"backbones": "[small_cnn,small_cnn-b]"}
VARIANT = "+backbone_overrides.small_cnn-b.model.dropout=0.1"


def test_units_as_separate_processes_equal_one_training(tmp_path, competition, capsys):
    single = [*tiny_overrides(tmp_path / "single", competition, **EXTRA), VARIANT]
    assert main(["stage=train", *single]) == 0
    fanned = [*tiny_overrides(tmp_path / "fanned", competition, **EXTRA), VARIANT]
    capsys.readouterr()
    assert main(["stage=plan", *fanned]) == 0
    units = [line for line in capsys.readouterr().out.splitlines() if line.startswith("only.")]
    assert len(units) == 4  # 2 models x 2 folds
    for unit in reversed(units):  # any order, each its own process
        done = subprocess.run([sys.executable, "-m", "comp.run", "stage=train", *fanned,
                               *unit.split()], cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
    assert main(["stage=plan", *fanned]) == 0
    assert "only." not in capsys.readouterr().out  # nothing left
    for name in ("oof.csv", "test.csv"):
        for path in sorted((tmp_path / "single/runs/tiny/preds").glob(f"*/{name}")):
            other = tmp_path / "fanned/runs/tiny/preds" / path.parent.name / name
            pd.testing.assert_frame_equal(pd.read_csv(other), pd.read_csv(path),
                                          check_exact=False, atol=1e-6)


def test_only_names_a_unit_that_exists(tmp_path, competition, capsys):
    overrides = tiny_overrides(tmp_path, competition)
    assert main(["stage=train", *overrides, "only.model=nope"]) == 2
    assert main(["stage=train", *overrides, "only.fold=7"]) == 2
    err = capsys.readouterr().err
    assert "only.model='nope'" in err and "only.fold=7" in err


def test_units_run_at_once_and_twice_over_equal_one_training(tmp_path, competition, capsys):
    single = tiny_overrides(tmp_path / "single", competition)
    assert main(["stage=train", *single]) == 0
    fanned = tiny_overrides(tmp_path / "fanned", competition)
    assert main(["stage=prepare", *fanned]) == 0
    capsys.readouterr()
    assert main(["stage=plan", *fanned]) == 0
    units = [line for line in capsys.readouterr().out.splitlines() if line.startswith("only.")]
    jobs = [subprocess.Popen([sys.executable, "-m", "comp.run", "stage=train", *fanned,
                              *unit.split()], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
            for unit in units * 2]  # every unit started twice, all at the same time
    for job in jobs:
        _, err = job.communicate(timeout=600)
        assert job.returncode == 0, err[-2000:]
    path = next((tmp_path / "single/runs/tiny/preds").glob("*/oof.csv"))
    other = tmp_path / "fanned/runs/tiny/preds" / path.parent.name / "oof.csv"
    pd.testing.assert_frame_equal(pd.read_csv(other), pd.read_csv(path),
                                  check_exact=False, atol=1e-6)


def test_a_fold_held_by_another_process_is_skipped_not_wiped(tmp_path, competition):
    from comp.workspace import RunDir, unit_lock

    overrides = tiny_overrides(tmp_path, competition)
    assert main(["stage=train", *overrides]) == 0
    fold0 = next((tmp_path / "runs/tiny/models").glob("*/fold0"))
    (fold0 / "metrics.json").unlink()  # as if its trainer were still at work
    (fold0 / "partial").write_text("work in progress")
    command = [sys.executable, "-m", "comp.run", "stage=train", *overrides, "only.fold=0"]
    with unit_lock(RunDir(tmp_path / "runs/tiny").fold_lock(fold0.parent.name, 0)) as mine:
        assert mine
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        assert (fold0 / "partial").exists() and not (fold0 / "metrics.json").exists()
    assert subprocess.run(command, cwd=ROOT, capture_output=True).returncode == 0
    assert (fold0 / "metrics.json").exists() and not (fold0 / "partial").exists()
