"""stage=prepare: validate the competition folder, decode every split once, and write
folds.csv once (reused while the training images stay the same)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from comp.artifacts import fingerprint, read_json, write_csv, write_json
from comp.data.folder import SPLITS, Competition, read_competition
from comp.data.folds import duplicate_groups, make_folds, perceptual_hashes
from comp.data.images import cached_images
from comp.errors import CompError
from comp.log import get_logger
from comp.predictions import class_indices, read_table
from comp.workspace import RunDir, run_dir

HASH_SIZE = 64  # images are hashed at 64 px: enough for a 32x32 perceptual hash


@dataclass(frozen=True)
class Decoding:
    """How images are decoded: comp's pixel limit and the high-bit-depth value range."""

    max_pixels: int
    intensity_range: tuple[float, float] | None = None


@dataclass(frozen=True)
class Prepared:
    """A validated competition and its folds."""

    competition: Competition
    folds: pd.DataFrame  # id, label, fold, group[, hash], in train.csv order
    run: RunDir
    decoding: Decoding = Decoding(40_000_000)

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

    def split_key(self, split: str) -> str:
        """Fingerprint of `split`'s ids, content hashes and order (train, test, unlabeled):
        key anything computed from a split's images with it."""
        return self.competition.split_key(split)

    def images(self, split: str, size: int) -> np.ndarray:
        """`split`'s decoded images at `size` (a memory map of the content-keyed cache)."""
        frame = self.competition.frame(split)
        return cached_images(self.run.image_cache, split, frame["path"].tolist(), size,
                             self.decoding.max_pixels, frame["hash"].tolist(),
                             self.decoding.intensity_range)


def decoding(cfg: DictConfig) -> Decoding:
    """The decoding settings of `cfg` (data.max_image_pixels, data.intensity_range)."""
    value_range = cfg.data.get("intensity_range")  # checked by comp.validate
    return Decoding(int(cfg.data.max_image_pixels),
                    None if value_range is None else tuple(float(v) for v in value_range))


def load_competition(cfg: DictConfig) -> Competition:
    """The competition folder of `cfg` (data.dir, data.id_column, data.label_column)."""
    return read_competition(cfg.data.dir, cfg.data.get("id_column"),
                            cfg.data.get("label_column"))


def train_key(train: pd.DataFrame) -> str:
    """What the folds depend on: train ids, labels and image contents, in order."""
    return fingerprint({"ids": train["id"].tolist(), "labels": train["label"].tolist(),
                        "hashes": train["hash"].tolist()})


def _old_train_key(train: pd.DataFrame) -> str:
    # the key of run directories prepared before content hashes (ids and labels only)
    return fingerprint({"ids": train["id"].tolist(), "labels": train["label"].tolist()})


def changed_train(recorded: pd.DataFrame, train: pd.DataFrame) -> str:
    """One phrase saying how the training data differs from folds.csv's."""
    old = recorded.set_index("id")
    new = train.set_index("id")
    parts = []
    added = [i for i in new.index if i not in old.index]
    removed = [i for i in old.index if i not in new.index]
    both = [i for i in new.index if i in old.index]
    relabelled = [i for i in both if old.at[i, "label"] != new.at[i, "label"]]
    replaced = [i for i in both if "hash" in old.columns and old.at[i, "hash"] != new.at[i, "hash"]]
    for what, ids in (("replaced", replaced), ("relabelled", relabelled), ("added", added),
                      ("removed", removed)):
        if ids:
            parts.append(f"{len(ids)} image(s) {what}, e.g. {ids[:3]}")
    if not parts and old.index.tolist() != new.index.tolist():
        parts.append("the rows are in another order")
    return "; ".join(parts) or "the data differs"


def prepare(cfg: DictConfig) -> Prepared:
    """Read the folder, decode every split once (so a bad image in test/ or unlabeled/
    fails here), and reuse folds.csv if it matches the training data, else write it.

    Folds depend on the training images only: a changed test/ folder or sample
    submission keeps them (what is computed from the test images is keyed by
    `Prepared.split_key("test")`); a replaced, added, removed or relabelled training
    image is an error naming the images, since models were trained on those folds."""
    competition = load_competition(cfg)
    run = run_dir(cfg.runs_dir, cfg.name)
    data_key = train_key(competition.train)
    settings = {"folds": cfg.data.folds, "seed": cfg.data.fold_seed, "dedup": cfg.data.dedup,
                "max_distance": cfg.data.dedup_max_distance}
    prepared = Prepared(competition, pd.DataFrame(), run, decoding(cfg))
    images = {split: prepared.images(split, HASH_SIZE) for split in SPLITS}
    if run.folds_csv.exists() and run.data_json.exists():
        recorded = read_json(run.data_json)
        folds = read_table(run.folds_csv)
        if recorded.get("data_key") not in (data_key, _old_train_key(competition.train)):
            raise CompError(
                f"{run.root}: was prepared from other training data than {cfg.data.dir} "
                f"({changed_train(folds, competition.train)}); its models were trained on "
                "those folds: use another name=<experiment> (or delete that run directory)"
            )
        if recorded.get("settings") != settings:
            raise CompError(
                f"{run.folds_csv}: written with other fold settings {recorded.get('settings')}; "
                "folds are fixed once models train on them: use another name=<experiment>"
            )
        if recorded.get("data_key") != data_key:  # an older run directory: record hashes
            folds["hash"] = competition.train["hash"].to_numpy()
            write_csv(run.folds_csv, folds)
            recorded = {**recorded, "data_key": data_key}
            write_json(run.data_json, recorded)
        _note_changes(recorded, competition, run)
        return Prepared(competition, folds, run, prepared.decoding)
    train = competition.train
    if cfg.data.dedup:
        groups = duplicate_groups(perceptual_hashes(images["train"]),
                                  cfg.data.dedup_max_distance)
    else:
        groups = pd.RangeIndex(len(train)).to_numpy()
    folds = make_folds(train["id"].tolist(), train["label"].tolist(), groups,
                       cfg.data.folds, cfg.data.fold_seed)
    folds["hash"] = train["hash"].to_numpy()
    sizes = folds.groupby("group").size()
    summary = {
        "data_key": data_key, "settings": settings, "data_dir": str(cfg.data.dir),
        "n_train": len(train), "n_test": len(competition.test),
        "n_unlabeled": len(competition.unlabeled), "classes": competition.classes,
        "duplicate_groups": int((sizes > 1).sum()),
        "images_in_duplicate_groups": int(sizes[sizes > 1].sum()),
        "class_counts": train["label"].value_counts().sort_index().to_dict(),
        "split_keys": {split: competition.split_key(split) for split in SPLITS},
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
    return Prepared(competition, folds, run, prepared.decoding)


def _note_changes(recorded: dict, competition: Competition, run: RunDir) -> None:
    """Say, in one line, which splits other than train changed since the last run (what
    depends on them is recomputed), and record the new keys."""
    keys = {split: competition.split_key(split) for split in SPLITS}
    before = recorded.get("split_keys") or {}
    changed = [s for s in ("test", "unlabeled") if s in before and before[s] != keys[s]]
    if changed:
        get_logger().info("prepare: the %s image(s) changed since the last run (content, "
                          "ids or order); what depends on them is recomputed",
                          " and ".join(changed))
    if before != keys:
        write_json(run.data_json, {**recorded, "split_keys": keys,
                                   "n_test": len(competition.test),
                                   "n_unlabeled": len(competition.unlabeled)})


def run(cfg: DictConfig) -> None:
    """Entry point of stage=prepare."""
    prepare(cfg)
