"""stage=export: the chosen fine-tuned model as one plain Keras model with a model card
(see comp/export.py)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from comp.export import export_model


def run(cfg: DictConfig) -> Path:
    """Entry point of stage=export."""
    return export_model(cfg)
