"""Tiny competition folders made on the fly: no network, no ../shared."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

CLASSES = ["alpha", "beta", "gamma"]
TINT = {"alpha": (200, 60, 60), "beta": (60, 200, 60), "gamma": (60, 60, 200)}


def synthetic_image(rng: np.random.Generator, label: str, size: int = 40) -> Image.Image:
    """A noisy texture tinted by class: every image distinct, classes separable."""
    noise = rng.integers(0, 90, size=(size // 4, size // 4, 3)).astype(np.uint8)
    texture = np.asarray(Image.fromarray(noise).resize((size, size), Image.Resampling.BILINEAR))
    tint = np.array(TINT[label], dtype=np.int16)
    array = np.clip(texture.astype(np.int16) + tint - 45, 0, 255).astype(np.uint8)
    return Image.fromarray(array)


def make_competition(root: Path, per_class: dict[str, int] | None = None, n_test: int = 6,
                     n_unlabeled: int = 4, size: int = 40, seed: int = 0,
                     layout: str = "csv") -> Path:
    """Write a competition folder (train.csv + train/, test/, sample_submission.csv,
    unlabeled/) or the folder-per-class layout with `layout="folders"`."""
    rng = np.random.default_rng(seed)
    per_class = per_class or {c: 8 for c in CLASSES}
    (root / "train").mkdir(parents=True)
    rows = []
    for label, count in per_class.items():
        for i in range(count):
            name = f"{label}_{i:03d}.png"
            folder = root / "train" / label if layout == "folders" else root / "train"
            folder.mkdir(exist_ok=True)
            synthetic_image(rng, label, size).save(folder / name)
            rows.append({"id": name, "label": label})
    if layout == "csv":
        pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    for split, count in (("test", n_test), ("unlabeled", n_unlabeled)):
        (root / split).mkdir()
        for i in range(count):
            label = list(per_class)[i % len(per_class)]
            synthetic_image(rng, label, size).save(root / split / f"{split}_{i:03d}.png")
    ids = sorted(p.name for p in (root / "test").iterdir())
    pd.DataFrame({"id": ids, "label": list(per_class)[0]}).to_csv(
        root / "sample_submission.csv", index=False)
    return root


@pytest.fixture
def competition(tmp_path: Path) -> Path:
    return make_competition(tmp_path / "comp")


def tiny_overrides(tmp_path: Path, data_dir: Path, **extra: str) -> list[str]:
    """Overrides for a fast run: small CNN at 32 px, 2 folds, 2 epochs, random init, and
    stage=all without pseudo-label rounds or tuning unless `extra` asks for them."""
    settings = {
        "data.dir": str(data_dir), "runs_dir": str(tmp_path / "runs"),
        "submissions_dir": str(tmp_path / "submissions"), "name": "tiny",
        "backbones": "[small_cnn]", "weights": "none", "data.folds": "2",
        "train.epochs": "2", "train.patience": "2", "train.batch_size": "8",
        "augment.tta": "flips", "quiet": "true", "pseudo.rounds": "0", "tune.n_trials": "0",
        "backbone_overrides.small_cnn.model.image_size": "32",
    }
    settings.update(extra)
    return [f"{k}={v}" for k, v in settings.items()]
