"""stage=pseudo: pseudo-label files for round r from the round r-1 models of each fold."""

from __future__ import annotations

from omegaconf import DictConfig

from comp.data.prepared import prepare
from comp.pseudo.files import make_pseudo_labels


def run(cfg: DictConfig) -> dict:
    """Write pseudo/round<r>/fold<k>.csv for r = pseudo.round (default 1)."""
    return make_pseudo_labels(cfg, prepare(cfg), max(1, cfg.pseudo.round))
