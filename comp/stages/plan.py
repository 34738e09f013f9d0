"""stage=plan: the (model, unit) training units still to do, one line each, or as a
Slurm array script or a Kubernetes indexed Job manifest (`plan.format`).

A unit is fold k of repeat r, numbered r * data.folds + k (the folds themselves with
data.repeats=1). Each line is `only.model=<id> only.fold=<unit>`: appended to the same
`stage=train ...` command, it trains exactly that unit. Units can run as separate jobs
(a Slurm array task, a Kubernetes job) on any machine that sees the run directory, in
any order; the last one to finish writes the model's predictions. For a job array:
    python -m comp.run stage=plan <overrides> > units.txt
    python -m comp.run stage=train <overrides> $(sed -n "${TASK}p" units.txt)
or let comp write the whole job: `plan.format=slurm` (submit with sbatch) or
`plan.format=kubernetes` (kubectl apply -f), each task training its unit with this
run's settings written out as overrides.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

from comp.artifacts import write_text
from comp.data.prepared import prepare
from comp.log import get_logger
from comp.rounds import only_specs, specs_for_round
from comp.training.trainer import fold_done, split_keys

# keys that say what to run, not how: never copied into a unit's command
_NOT_SETTINGS = ("stage", "plan.", "only.")


def run(cfg: DictConfig) -> list[str]:
    """Print (or write to plan.output) and return the unfinished units of stage=train."""
    prepared = prepare(cfg)
    lines = [
        f"only.model={spec.model_id} only.fold={fold}"
        for spec in only_specs(cfg, specs_for_round(cfg, prepared, cfg.pseudo.round))
        for fold in range(prepared.n_units)
        if not fold_done(prepared.run.fold_dir(spec.model_id, fold), split_keys(prepared))
    ]
    writers = {"lines": lambda: "".join(f"{line}\n" for line in lines),
               "slurm": lambda: slurm_script(cfg, lines),
               "kubernetes": lambda: kubernetes_job(cfg, lines)}
    text = writers[cfg.plan.format]()
    if cfg.plan.output:
        write_text(cfg.plan.output, text)
    else:
        sys.stdout.write(text)
    get_logger().info("plan: %d unit(s) left%s", len(lines),
                      f" -> {cfg.plan.output}" if cfg.plan.output else "")
    return lines


def settings_overrides(cfg: DictConfig) -> list[str]:
    """This run's settings as `key=value` overrides of comp's defaults: every key whose
    value differs from the default config (stage, plan.* and only.* left out), so
    `stage=train <these>` composes the same config on any machine."""
    from comp.api import override_value
    from comp.config import load_config

    default = _flat(OmegaConf.to_container(load_config([])))
    mine = _flat(OmegaConf.to_container(cfg))
    overrides = []
    for key, value in mine.items():
        if key.startswith(_NOT_SETTINGS) or default.get(key, object()) == value:
            continue
        prefix = "++" if key.startswith("backbone_overrides.") else ""
        overrides.append(f"{prefix}{key}={override_value(value)}")
    return overrides


def _flat(node, prefix: str = "") -> dict:
    if isinstance(node, dict) and node:
        return {k: v for key, value in node.items()
                for k, v in _flat(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: node}


def _train_command(cfg: DictConfig) -> str:
    return shlex.join(["python", "-m", "comp.run", "stage=train", *settings_overrides(cfg)])


def _units_array(lines: list[str]) -> str:
    return "UNITS=(\n" + "".join(f"  {shlex.quote(line)}\n" for line in lines) + ")"


def _workdir(cfg: DictConfig) -> str:
    return str(Path(cfg.plan.workdir or os.getcwd()).resolve())


def slurm_script(cfg: DictConfig, lines: list[str]) -> str:
    """An sbatch script: a job array with one task per unit, each training its unit."""
    return "\n".join([
        "#!/bin/bash",
        f"# comp stage=plan: {len(lines)} training unit(s) of experiment {cfg.name}; "
        "submit with sbatch.",
        f"#SBATCH --job-name=comp-{cfg.name}",
        f"#SBATCH --array=0-{max(len(lines) - 1, 0)}",
        f"#SBATCH --output=comp-{cfg.name}-%A_%a.out",
        "set -euo pipefail",
        f"cd {shlex.quote(_workdir(cfg))}",
        _units_array(lines),
        f"{_train_command(cfg)} ${{UNITS[$SLURM_ARRAY_TASK_ID]}}",
        "",
    ])


def kubernetes_job(cfg: DictConfig, lines: list[str]) -> str:
    """An indexed Job manifest: one completion index per unit. The pods must mount the
    shared folder at plan.workdir (add the volume to the manifest)."""
    script = "\n".join(["set -euo pipefail", _units_array(lines),
                        f"exec {_train_command(cfg)} ${{UNITS[$JOB_COMPLETION_INDEX]}}"])
    name = "".join(c if c.isalnum() else "-" for c in f"comp-{cfg.name}".lower())[:52]
    job = {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": f"{name.strip('-')}-train"},
        "spec": {
            "completionMode": "Indexed", "completions": len(lines),
            "parallelism": len(lines), "backoffLimit": len(lines),
            "template": {"spec": {"restartPolicy": "Never", "containers": [{
                "name": "unit", "image": cfg.plan.image, "workingDir": _workdir(cfg),
                "command": ["bash", "-c", script]}]}},
        },
    }
    return (f"# comp stage=plan: {len(lines)} training unit(s) of experiment {cfg.name}; "
            "mount the shared folder at workingDir, then kubectl apply -f this file\n"
            + yaml.safe_dump(job, sort_keys=False))
