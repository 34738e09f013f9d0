"""Kill -9 at random points of stage=all: the rerun finishes, redoes only the interrupted
units, and its predictions equal those of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from tests.conftest import tiny_overrides

ROOT = Path(__file__).resolve().parent.parent


def _start(overrides: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "comp.run", "stage=all", *overrides],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _predictions(run: Path) -> dict[str, pd.DataFrame]:
    found = {}
    for path in sorted(run.glob("preds/*/*.csv")) + sorted(run.glob("ensemble/*/*.csv")):
        found[str(path.relative_to(run))] = pd.read_csv(path)
    return found


def test_killed_runs_resume_to_the_same_predictions(tmp_path, competition):
    extra = {"pseudo.rounds": "1", "train.epochs": "3", "train.patience": "3",
             "backbones": "[small_cnn,small_cnn-b]"}
    variant = "+backbone_overrides.small_cnn-b.model.dropout=0.1"
    reference = [*tiny_overrides(tmp_path / "reference", competition, **extra), variant]
    resumed = [*tiny_overrides(tmp_path / "resumed", competition, **extra), variant]
    child = _start(reference)
    assert child.wait(timeout=600) == 0, child.stderr.read().decode()[-2000:]

    rng = np.random.default_rng(7)
    run = tmp_path / "resumed" / "runs" / "tiny"
    kills = interrupted = 0
    for _ in range(3):
        child = _start(resumed)
        time.sleep(float(rng.uniform(5, 14)))
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
            kills += 1
            interrupted += sum(not (d / "metrics.json").exists()
                               for d in run.glob("models/*/fold*"))
    child = _start(resumed)
    assert child.wait(timeout=600) == 0, child.stderr.read().decode()[-2000:]

    expected = _predictions(tmp_path / "reference" / "runs" / "tiny")
    got = _predictions(run)
    assert kills >= 1 and sorted(got) == sorted(expected) and len(got) > 8
    for name, frame in expected.items():
        pd.testing.assert_frame_equal(got[name], frame, check_exact=False, atol=1e-6)
    print(f"kills {kills}, interrupted fold units redone {interrupted}, "
          f"{len(got)} prediction files equal")
