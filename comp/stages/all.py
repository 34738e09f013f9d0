"""stage=all: the whole chain, each stage skipping work that is already done."""

from __future__ import annotations

from omegaconf import DictConfig

from comp.stages import prepare, submit, train


def run(cfg: DictConfig):
    """prepare -> train -> submit."""
    prepare.run(cfg)
    train.run(cfg)
    return submit.run(cfg)
