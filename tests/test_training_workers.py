"""compute.workers: training units on several worker processes at once (comp.training.workers).

How many workers `auto` means is a pure function of the machine; the worker's request loop
is tested with an in-memory pipe; the slow tests train on real worker processes."""

from __future__ import annotations

import io
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from comp.crashpoints import ENV as CRASH_ENV
from comp.errors import CompError
from comp.training.compute import WORKER_MEMORY, check, worker_count
from comp.training.workers import _WORKER_MAIN, next_unit_index, serve
from tests.helpers import ROOT, comp_process, run_comp, tiny_overrides


def test_auto_is_one_worker_per_core_on_a_cpu_and_one_with_gpus():
    assert worker_count("auto", gpus=0, cpus=2) == 2
    assert worker_count("auto", gpus=0, cpus=1) == 1
    assert worker_count("auto", gpus=0, cpus=64) == 4  # at most 4
    assert worker_count("auto", gpus=1, cpus=16) == 1  # one process fills the GPU
    assert worker_count("auto", gpus=0, cpus=8, distribute="mirrored") == 1
    assert worker_count(3, gpus=1, cpus=2) == 3  # a number is taken as it is


def test_auto_workers_fit_in_the_memory_available():
    assert worker_count("auto", gpus=0, cpus=4, memory=2.5 * WORKER_MEMORY) == 2
    assert worker_count("auto", gpus=0, cpus=4, memory=0.1 * WORKER_MEMORY) == 1


def test_workers_stay_out_of_a_models_compute_settings():
    filled = check({"precision": "float32", "workers": 2})
    assert "workers" not in filled  # spec.json and model ids do not depend on it
    assert filled["precision"] == "float32"


def test_workers_take_different_models_and_keep_to_their_own():
    pending = ["svm", "svm", "svm", "cnn", "cnn", "logreg"]
    assert next_unit_index(pending, None, set()) == 0  # the first worker: the first unit
    assert next_unit_index(pending, None, {"svm"}) == 3  # the second: another model
    assert next_unit_index(pending, "cnn", {"svm"}) == 3  # its own model's next fold
    assert next_unit_index(pending, "svm", {"cnn"}) == 0
    # its model is done: the first of a model nobody holds, else the first unit
    assert next_unit_index(["cnn", "cnn", "logreg"], "svm", {"cnn"}) == 2
    assert next_unit_index(["cnn", "cnn"], "svm", {"cnn"}) == 0
    # under a time limit the queue's order: a model's folds finish before the next starts
    assert next_unit_index(pending, None, {"svm"}, in_order=True) == 0
    assert next_unit_index(pending, "cnn", {"svm"}, in_order=True) == 0


def _served(requests: list, handler) -> list:
    inbox = io.BytesIO()
    for request in [*requests, None]:
        pickle.dump(request, inbox)
    inbox.seek(0)
    outbox = io.BytesIO()
    serve(inbox, outbox, handler)
    outbox.seek(0)
    replies = []
    while outbox.tell() < len(outbox.getvalue()):
        replies.append(pickle.load(outbox))
    return replies


def test_a_worker_replies_done_or_says_what_went_wrong():
    trained = []

    class Handler:
        def train(self, spec, unit):
            if unit == 1:
                raise CompError("runs/x/pseudo/round1/fold1.csv: missing; rerun stage=pseudo")
            if unit == 2:
                raise ValueError("a bug")
            trained.append((spec, unit))

    replies = _served([("train", (spec, unit)) for spec, unit in
                       (("a", 0), ("a", 1), ("a", 2), ("b", 3))], Handler())
    assert trained == [("a", 0), ("b", 3)]  # a failed unit does not end the worker
    assert replies[0] == ("done", []) and replies[3] == ("done", [])
    assert replies[1] == ("error", "runs/x/pseudo/round1/fold1.csv: missing; rerun stage=pseudo",
                          [])
    assert replies[2][0] == "failed" and "ValueError: a bug" in replies[2][1]


def test_a_workers_log_lines_come_back_with_its_reply():
    logged: list = []

    class Handler:
        def train(self, spec, unit):
            logged.append((20, f"fold done: model={spec} fold={unit}"))

    inbox, outbox = io.BytesIO(), io.BytesIO()
    for request in [("train", ("m", 0)), ("train", ("m", 1)), None]:
        pickle.dump(request, inbox)
    inbox.seek(0)
    serve(inbox, outbox, Handler(), logged)
    outbox.seek(0)
    first, second = pickle.load(outbox), pickle.load(outbox)
    assert first == ("done", [(20, "fold done: model=m fold=0")])
    assert second == ("done", [(20, "fold done: model=m fold=1")])  # each line once


def _unit_metrics(run) -> dict:
    return {path.parent.parent.name + "/" + path.parent.name: json.loads(path.read_text())
            for path in sorted((run / "models").glob("*/fold*/metrics.json"))}


@pytest.mark.slow
def test_two_workers_train_every_unit_of_every_round(tmp_path, competition, monkeypatch):
    """stage=all with a pseudo-label round and a classic head on two worker processes:
    every unit is trained by a worker (not this process), both workers take units, and
    round 1's units get their pseudo-labelled rows there (with pseudo.distill, each unit
    writes its in-sample probabilities there too)."""
    monkeypatch.chdir(tmp_path)  # the workers inherit it: runs_dir is relative here
    overrides = tiny_overrides(tmp_path, competition, **{
        "runs_dir": "runs", "compute.workers": "2", "pseudo.rounds": "1",
        "pseudo.fraction": "1.0", "pseudo.min_confidence": "0",
        "classic.models": "[pixels+logreg]", "pseudo.distill": "0.5"})
    assert run_comp("stage=all", *overrides) == 0
    metrics = _unit_metrics(tmp_path / "runs/tiny")
    assert len(metrics) == 8  # (small_cnn + pixels+logreg) x 2 folds x rounds 0 and 1
    assert len(list((tmp_path / "runs/tiny/models").glob("*/fold*/train.csv"))) == 8
    here = f"{os.uname().nodename}:{os.getpid()}"
    processes = {m["process"] for m in metrics.values()}
    assert here not in processes and len(processes) == 4  # 2 workers in each round
    assert sum(m["n_pseudo"] for m in metrics.values()) > 0
    models = {path.name for path in (tmp_path / "runs/tiny/models").iterdir()}
    predicted = {path.name for path in (tmp_path / "runs/tiny/preds").iterdir()}
    assert len(models) == 4 and models <= predicted
    assert len(pd.read_csv(tmp_path / "submissions/tiny/leaderboard.csv")) >= 1


@pytest.mark.slow
def test_a_worker_that_dies_is_one_line_and_a_rerun_resumes(tmp_path, competition, capsys,
                                                           monkeypatch):
    overrides = tiny_overrides(tmp_path, competition, **{
        "compute.workers": "2", "quiet": "false", "progress": "lines"})
    monkeypatch.setenv(CRASH_ENV, "fold:1")  # the worker training fold 1 dies (kill -9)
    assert run_comp("stage=train", *overrides) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("comp: error: training worker")
    assert "exit code 137" in error and "fold 1" in error and "rerun" in error
    monkeypatch.delenv(CRASH_ENV)
    folds = sorted((tmp_path / "runs/tiny/models").glob("*/fold*/metrics.json"))
    before = {p: p.stat().st_mtime_ns for p in folds}
    assert run_comp("stage=train", *overrides) == 0
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())  # not trained again
    assert len(list((tmp_path / "runs/tiny/preds").iterdir())) == 1


def test_a_worker_whose_main_process_is_gone_ends_without_a_traceback():
    """A worker read EOF (or wrote into a closed pipe) as a traceback on the user's
    terminal when the main process had been killed."""
    worker = subprocess.run([sys.executable, "-c", _WORKER_MAIN], stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert worker.returncode == 1 and "Traceback" not in worker.stderr, worker.stderr


def _processes_with(marker: str) -> list[int]:
    """Pids of the processes whose environment holds `marker` (Linux's /proc)."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker.encode() in environ.read_bytes():
                found.append(int(environ.parent.name))
        except OSError:  # gone, or not ours
            continue
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux's /proc")
def test_sigterm_stops_the_run_and_its_workers_and_a_rerun_resumes(tmp_path, competition,
                                                                   monkeypatch):
    """`kill` (a scheduler's or a notebook host's stop) ended the main process at once:
    no line, and its training workers went on, each ending in a BrokenPipeError
    traceback. Now it is Ctrl-C's line with exit code 143, no worker outlives it, and
    the same command resumes."""
    marker = f"COMP_TEST_RUN={tmp_path.name}"
    monkeypatch.setenv("COMP_TEST_RUN", tmp_path.name)  # inherited by the workers
    overrides = tiny_overrides(tmp_path, competition, **{
        "compute.workers": "2", "quiet": "false", "progress": "lines",
        "train.epochs": "30", "backbone_overrides.small_cnn.train.epochs": "30"})
    child = comp_process("stage=train", *overrides)
    lines = []
    for line in child.stderr:  # until the training workers have units
        lines.append(line)
        if "units on 2 workers" in line:
            break
    time.sleep(3)
    assert len(_processes_with(marker)) == 3  # comp and its two workers
    child.send_signal(signal.SIGTERM)
    rest = child.stderr.read()
    assert child.wait(timeout=120) == 143
    assert rest.strip().splitlines()[-1] == (
        "comp: terminated; run the same command again to resume")
    assert "Traceback" not in "".join(lines) + rest
    deadline = time.time() + 30
    while _processes_with(marker) and time.time() < deadline:
        time.sleep(0.5)
    assert _processes_with(marker) == []
    assert run_comp("stage=train", *overrides) == 0
    assert len(list((tmp_path / "runs/tiny/models").glob("*/fold*/metrics.json"))) == 2


def test_frozen_batches_are_small_on_a_cpu_and_larger_with_a_gpu(monkeypatch):
    """The frozen pass's batch follows the machine: 32 where TensorFlow sees no GPU (a
    batch's activations stay in the CPU's caches), 128 where it sees one."""
    from comp.training import compute

    monkeypatch.setattr(compute, "visible_gpus", lambda: 0)
    assert compute.frozen_batch_size() == 32
    monkeypatch.setattr(compute, "visible_gpus", lambda: 1)
    assert compute.frozen_batch_size() == 128
