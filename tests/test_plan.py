"""stage=plan + one unit per process, in any order, equals one stage=train."""

import os
import re
import shlex
import subprocess

import pytest
import yaml
from omegaconf import OmegaConf

from comp.workspace import RunDir, unit_lock
from tests.helpers import (
    ROOT,
    assert_same_predictions,
    comp_process,
    finish,
    fold_metrics,
    run_comp,
    run_comp_process,
    run_path,
    tiny_overrides,
)

EXTRA = {"backbones": "[small_cnn,small_cnn-b]"}
VARIANT = "+backbone_overrides.small_cnn-b.model.dropout=0.1"


def _units(capsys, overrides: list[str]) -> list[str]:
    capsys.readouterr()
    assert run_comp("stage=plan", *overrides) == 0
    return [line for line in capsys.readouterr().out.splitlines() if line.startswith("only.")]


@pytest.mark.slow
def test_units_as_separate_processes_equal_one_training(tmp_path, trained, capsys):
    single = [*tiny_overrides(tmp_path, trained, **EXTRA), VARIANT]  # small_cnn is trained
    assert run_comp("stage=train", *single) == 0
    fanned = [*tiny_overrides(tmp_path / "fanned", trained, **EXTRA), VARIANT]
    units = _units(capsys, fanned)
    assert len(units) == 4  # 2 models x 2 folds
    assert len(set(units)) == 4 and {u.split()[-1] for u in units} == {"only.fold=0",
                                                                        "only.fold=1"}
    for unit in reversed(units):  # any order, each its own process
        finish(comp_process("stage=train", *fanned, *unit.split()))
    assert _units(capsys, fanned) == []  # nothing left
    assert len(fold_metrics(tmp_path / "fanned")) == 4
    assert_same_predictions(run_path(tmp_path / "fanned"), run_path(tmp_path))


def test_only_names_a_unit_that_exists(tmp_path, competition, capsys):
    overrides = tiny_overrides(tmp_path, competition)
    assert run_comp("stage=train", *overrides, "only.model=nope") == 2
    assert run_comp("stage=train", *overrides, "only.fold=7") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("comp: error: ") for line in err), err
    assert "only.model='nope'" in err[0] and "only.fold=7" in err[1]
    assert not fold_metrics(tmp_path)  # nothing trained


@pytest.mark.slow
def test_units_run_at_once_and_twice_over_equal_one_training(tmp_path, trained, capsys):
    fanned = tiny_overrides(tmp_path / "fanned", trained)
    assert run_comp("stage=prepare", *fanned) == 0
    units = _units(capsys, fanned)
    assert len(units) == 2
    # every unit started twice, all at the same time
    children = [comp_process("stage=train", *fanned, *unit.split()) for unit in units * 2]
    for child in children:
        finish(child)
    assert len(fold_metrics(tmp_path / "fanned")) == 2
    assert_same_predictions(run_path(tmp_path / "fanned"), run_path(tmp_path))


@pytest.mark.slow
def test_a_fold_held_by_another_process_is_skipped_not_wiped(tmp_path, trained):
    overrides = tiny_overrides(tmp_path, trained)
    (fold0,) = run_path(tmp_path).glob("models/*/fold0")
    (fold0 / "metrics.json").unlink()  # as if its trainer were still at work
    (fold0 / "partial").write_text("work in progress")
    args = ("stage=train", *overrides, "only.fold=0")
    with unit_lock(RunDir(run_path(tmp_path)).fold_lock(fold0.parent.name, 0)) as mine:
        assert mine
        done = run_comp_process(*args)
        assert done.returncode == 0, done.stderr[-2000:]
        assert (fold0 / "partial").exists() and not (fold0 / "metrics.json").exists()
    done = run_comp_process(*args)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (fold0 / "metrics.json").exists() and not (fold0 / "partial").exists()


def _plan_file(tmp_path, overrides, fmt: str) -> str:
    target = tmp_path / f"plan.{fmt}"
    assert run_comp("stage=plan", *overrides, f"plan.format={fmt}",
                    f"plan.output={target}", f"plan.workdir={ROOT}") == 0
    return target.read_text()


def _job_script(text: str, fmt: str) -> str:
    """The bash text that a Slurm task or a Kubernetes pod runs."""
    if fmt == "slurm":
        return text
    job = yaml.safe_load(text)
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert job["spec"]["completionMode"] == "Indexed" and container["command"][:2] == [
        "bash", "-c"]
    return container["command"][2]


@pytest.mark.parametrize("fmt, index", [("slurm", "SLURM_ARRAY_TASK_ID"),
                                        ("kubernetes", "JOB_COMPLETION_INDEX")])
def test_plan_writes_a_job_whose_tasks_compose_the_runs_config(tmp_path, competition, fmt,
                                                               index):
    from comp.config import load_config

    overrides = [*tiny_overrides(tmp_path, competition, **EXTRA), VARIANT,
                 "train.lr=0.0123", "name=plan run"]
    text = _plan_file(tmp_path, overrides, fmt)
    script = _job_script(text, fmt)
    units = re.findall(r"^  '?(only\.model=\S+ only\.fold=\d)'?$", script, re.MULTILINE)
    assert len(units) == 4
    if fmt == "slurm":
        assert "#SBATCH --array=0-3" in text
    else:
        assert yaml.safe_load(text)["spec"]["completions"] == 4
    command = next(line for line in script.splitlines() if "comp.run stage=train" in line)
    assert command.endswith(f"${{UNITS[${index}]}}")
    args = shlex.split(command.removeprefix("exec ").rsplit(" ", 1)[0])[3:]
    cfg = load_config([*args, *units[0].split()])
    wanted = load_config([*overrides, "stage=train", *units[0].split()])
    assert OmegaConf.to_container(cfg) == OmegaConf.to_container(wanted)
    assert cfg.name == "plan run" and cfg.train.lr == 0.0123


@pytest.mark.slow
def test_the_jobs_tasks_as_separate_processes_equal_one_training(tmp_path, trained):
    """Each task of the Slurm array (and the Kubernetes Job) run by bash as its scheduler
    would, with its index set: together they train what one process trains."""
    single = [*tiny_overrides(tmp_path, trained, **EXTRA), VARIANT]  # small_cnn is trained
    assert run_comp("stage=train", *single) == 0
    for fmt, index in (("slurm", "SLURM_ARRAY_TASK_ID"), ("kubernetes", "JOB_COMPLETION_INDEX")):
        fanned = [*tiny_overrides(tmp_path / fmt, trained, **EXTRA), VARIANT]
        script = _job_script(_plan_file(tmp_path, fanned, fmt), fmt)
        tasks = [subprocess.run(["bash", "-c", script], env={**os.environ, index: str(i)},
                                capture_output=True, text=True, timeout=900)
                 for i in (3, 0, 2, 1)]  # any order
        assert all(t.returncode == 0 for t in tasks), [t.stderr[-2000:] for t in tasks]
        assert len(fold_metrics(tmp_path / fmt)) == 4
        assert_same_predictions(run_path(tmp_path / fmt), run_path(tmp_path))
