"""stage=all killed hard (COMP_CRASH_AT, as kill -9) at named units, again and again: each
rerun goes on from where the last one died, and the predictions at the end equal those of
an uninterrupted run."""

from __future__ import annotations

import pytest

from comp.crashpoints import EXIT_CODE
from tests.helpers import (
    assert_same_predictions,
    comp_process,
    finish,
    finished_models,
    fold_metrics,
    run_comp,
    run_path,
    tiny_overrides,
)

pytestmark = pytest.mark.slow


def test_killed_runs_resume_to_the_same_predictions(tmp_path, competition):
    extra = {"pseudo.rounds": "1", "train.epochs": "3", "train.patience": "3",
             "backbones": "[small_cnn,small_cnn-b]"}
    variant = "+backbone_overrides.small_cnn-b.model.dropout=0.1"
    reference = [*tiny_overrides(tmp_path / "reference", competition, **extra), variant]
    resumed = [*tiny_overrides(tmp_path / "resumed", competition, **extra), variant]
    assert run_comp("stage=all", *reference) == 0  # uninterrupted, in this process

    # each run dies right after the next fold 1 is written: a model with all its folds
    # done and no prediction set yet (round 0: small_cnn, small_cnn-b; round 1: small_cnn)
    done = []
    for kill in range(3):
        child = comp_process("stage=all", *resumed, crash_at="fold:1")
        assert child.wait(timeout=600) == EXIT_CODE, child.stderr.read()[-2000:]
        folds = fold_metrics(tmp_path / "resumed")
        assert len(folds) == 2 * (kill + 1)  # two more folds each time, none trained twice
        assert all(path.stat().st_mtime_ns == t for path, t in done)  # earlier folds kept
        done = [(path, path.stat().st_mtime_ns) for path in folds]
        assert len(finished_models(tmp_path / "resumed")) == kill  # the last one is unfinished
    assert (run_path(tmp_path / "resumed") / "pseudo" / "round1").is_dir()  # got to round 1
    finish(comp_process("stage=all", *resumed))

    assert len(fold_metrics(tmp_path / "resumed")) == 8  # 2 backbones x 2 rounds x 2 folds
    assert all(path.stat().st_mtime_ns == t for path, t in done)
    compared = assert_same_predictions(run_path(tmp_path / "resumed"),
                                       run_path(tmp_path / "reference"))
    assert compared > 8
