"""stage=prepare: validate the competition folder, decode every split once, and write
folds.csv once (reused while the training images stay the same)."""

from __future__ import annotations

from omegaconf import DictConfig

from comp.data.prepared import prepare


def run(cfg: DictConfig) -> None:
    """Entry point of stage=prepare."""
    prepare(cfg)
