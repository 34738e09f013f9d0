"""stage=train: train every configured model on every fold (resumable).

`pseudo.round=r` (r >= 1) trains round r with the pseudo-labels of stage=pseudo.
"""

from __future__ import annotations

from omegaconf import DictConfig

from comp.data.prepared import prepare
from comp.rounds import train_round


def run(cfg: DictConfig) -> list[dict]:
    """Entry point of stage=train."""
    return train_round(cfg, prepare(cfg), cfg.pseudo.round)
