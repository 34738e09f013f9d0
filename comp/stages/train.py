"""stage=train: fine-tune every configured backbone on every fold (resumable)."""

from __future__ import annotations

from omegaconf import DictConfig

from comp.log import progress
from comp.models.spec import make_spec
from comp.stages.prepare import prepare
from comp.training.trainer import train_spec


def run(cfg: DictConfig) -> list[dict]:
    """Train each backbone in `cfg.backbones`; return the finished models' cv.json."""
    prepared = prepare(cfg)
    specs = [make_spec(cfg, name, prepared.folds_key) for name in cfg.backbones]
    results = []
    for spec in progress(specs, desc="models", disable=len(specs) < 2):
        result = train_spec(spec, prepared, cfg.data.max_image_pixels, {"round": 0})
        if result is not None:
            results.append(result)
    return results
