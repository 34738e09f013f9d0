"""stage=prepare: validate the competition folder and write folds.csv once."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from comp.artifacts import fingerprint, read_json, write_csv, write_json
from comp.data.folder import Competition, read_competition
from comp.data.folds import duplicate_groups, make_folds, perceptual_hashes
from comp.data.images import cached_images
from comp.errors import CompError
from comp.log import get_logger
from comp.predictions import class_indices
from comp.workspace import RunDir, run_dir

HASH_SIZE = 64  # images are hashed at 64 px: enough for a 32x32 perceptual hash


@dataclass(frozen=True)
class Prepared:
    """A validated competition and its folds."""

    competition: Competition
    folds: pd.DataFrame  # id, label, fold, group, in train.csv order
    run: RunDir

    @property
    def n_folds(self) -> int:
        return int(self.folds["fold"].max()) + 1

    @property
    def labels(self) -> np.ndarray:
        """Each training image's class index, in folds.csv order."""
        return class_indices(self.folds["label"], self.competition.classes)

    @property
    def folds_key(self) -> str:
        return fingerprint(self.folds[["id", "label", "fold"]].to_dict("list"))


def prepare(cfg: DictConfig) -> Prepared:
    """Read the folder; reuse folds.csv if it matches the data, else write it."""
    competition = read_competition(cfg.data.dir)
    run = run_dir(cfg.runs_dir, cfg.name)
    data_key = fingerprint({"ids": competition.train["id"].tolist(),
                            "labels": competition.train["label"].tolist()})
    settings = {"folds": cfg.data.folds, "seed": cfg.data.fold_seed, "dedup": cfg.data.dedup,
                "max_distance": cfg.data.dedup_max_distance}
    if run.folds_csv.exists() and run.data_json.exists():
        recorded = read_json(run.data_json)
        if recorded.get("data_key") != data_key:
            raise CompError(
                f"{run.root}: was prepared from other training data than {cfg.data.dir}; "
                "use another name=<experiment> (or delete that run directory)"
            )
        if recorded.get("settings") == settings:
            folds = pd.read_csv(run.folds_csv, dtype={"id": str, "label": str})
            return Prepared(competition, folds, run)
        raise CompError(
            f"{run.folds_csv}: written with other fold settings {recorded.get('settings')}; "
            "folds are fixed once models train on them: use another name=<experiment>"
        )
    train = competition.train
    if cfg.data.dedup:
        images = cached_images(run.image_cache, "train", train["path"].tolist(), HASH_SIZE,
                               cfg.data.max_image_pixels)
        groups = duplicate_groups(perceptual_hashes(images), cfg.data.dedup_max_distance)
    else:
        groups = pd.RangeIndex(len(train)).to_numpy()
    folds = make_folds(train["id"].tolist(), train["label"].tolist(), groups,
                       cfg.data.folds, cfg.data.fold_seed)
    sizes = folds.groupby("group").size()
    summary = {
        "data_key": data_key, "settings": settings, "data_dir": str(cfg.data.dir),
        "n_train": len(train), "n_test": len(competition.test),
        "n_unlabeled": len(competition.unlabeled), "classes": competition.classes,
        "duplicate_groups": int((sizes > 1).sum()),
        "images_in_duplicate_groups": int(sizes[sizes > 1].sum()),
        "class_counts": train["label"].value_counts().sort_index().to_dict(),
    }
    write_csv(run.folds_csv, folds)
    write_json(run.data_json, summary)
    get_logger().info(
        "prepare: %d train / %d test / %d unlabeled images, %d classes, %d folds; "
        "%d near-duplicate group(s) holding %d images kept within one fold -> %s",
        len(train), len(competition.test), len(competition.unlabeled),
        len(competition.classes), cfg.data.folds, summary["duplicate_groups"],
        summary["images_in_duplicate_groups"], run.folds_csv,
    )
    return Prepared(competition, folds, run)


def run(cfg: DictConfig) -> None:
    """Entry point of stage=prepare."""
    prepare(cfg)
