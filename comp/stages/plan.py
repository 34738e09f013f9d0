"""stage=plan: the (model, unit) training units still to do, one line each.

A unit is fold k of repeat r, numbered r * data.folds + k (the folds themselves with
data.repeats=1). Each line is `only.model=<id> only.fold=<unit>`: appended to the same
`stage=train ...` command, it trains exactly that unit. Units can run as separate jobs
(a Slurm array task, a Kubernetes job) on any machine that sees the run directory, in
any order; the last one to finish writes the model's predictions. For a job array:
    python -m comp.run stage=plan <overrides> > units.txt
    python -m comp.run stage=train <overrides> $(sed -n "${TASK}p" units.txt)
"""

from __future__ import annotations

from omegaconf import DictConfig

from comp.data.prepared import prepare
from comp.log import get_logger
from comp.rounds import only_specs, specs_for_round
from comp.training.trainer import fold_done, split_keys


def run(cfg: DictConfig) -> list[str]:
    """Print and return the unfinished units of stage=train under `cfg`."""
    prepared = prepare(cfg)
    lines = [
        f"only.model={spec.model_id} only.fold={fold}"
        for spec in only_specs(cfg, specs_for_round(cfg, prepared, cfg.pseudo.round))
        for fold in range(prepared.n_units)
        if not fold_done(prepared.run.fold_dir(spec.model_id, fold), split_keys(prepared))
    ]
    for line in lines:
        print(line)
    get_logger().info("plan: %d unit(s) left", len(lines))
    return lines
