"""stage=tune: per-fold Optuna studies over a backbone's settings (resumable).

Prints and saves runs/<name>/tuned/<backbone>.yaml (each fold's best settings);
`stage=train params=best` then trains each fold with its own best settings.
"""

from __future__ import annotations

from omegaconf import DictConfig

from comp.data.prepared import prepare
from comp.tuning.search import tune_backbone, tuned_backbones


def run(cfg: DictConfig) -> dict:
    """Run (or continue) the studies of every backbone and fold; return best settings."""
    prepared = prepare(cfg)
    return {name: tune_backbone(cfg, prepared, name) for name in tuned_backbones(cfg)}
