"""stage=all: the whole chain, each stage skipping work that is already done."""

from __future__ import annotations

from omegaconf import DictConfig

from comp.stages import submit
from comp.stages.prepare import prepare
from comp.stages.pseudo import make_pseudo_labels
from comp.stages.train import train_round


def run(cfg: DictConfig):
    """prepare -> train round 0 -> (pseudo -> train round r) x pseudo.rounds -> submit."""
    prepared = prepare(cfg)
    train_round(cfg, prepared, 0)
    for round_ in range(1, cfg.pseudo.rounds + 1):
        make_pseudo_labels(cfg, prepared, round_)
        train_round(cfg, prepared, round_)
    return submit.run(cfg)
