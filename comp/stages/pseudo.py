"""stage=pseudo: pseudo-label files for round r from the round r-1 models of each fold."""

from __future__ import annotations

from omegaconf import DictConfig

from comp.data.prepared import prepare
from comp.errors import CompError
from comp.pseudo.files import empty_pool, make_pseudo_labels


def run(cfg: DictConfig) -> dict:
    """Write pseudo/round<r>/fold<k>.csv for r = pseudo.round (default 1); an empty pool
    (no unlabeled or unlabelled test image in pseudo.splits) is a CompError."""
    prepared = prepare(cfg)
    empty = empty_pool(list(cfg.pseudo.splits), prepared.competition)
    if empty:
        raise CompError(f"stage=pseudo: {empty}; add images to unlabeled/ or set "
                        "pseudo.splits to a split that has some")
    return make_pseudo_labels(cfg, prepared, max(1, cfg.pseudo.round))
