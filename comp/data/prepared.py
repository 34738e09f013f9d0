"""A validated competition and its folds: read the folder, decode every split once,
and write folds.csv once (reused while the training images stay the same)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from comp.artifacts import fingerprint, read_json, write_csv, write_json
from comp.data.folder import SPLITS, CompetitionFolder, read_competition
from comp.data.folds import (
    duplicate_groups,
    fingerprints,
    joined_groups,
    make_folds,
    repeat_column,
)
from comp.data.images import Decoding, cached_images
from comp.errors import CompError
from comp.log import get_logger
from comp.predictions import class_indices, read_table
from comp.workspace import RunDir, run_dir, run_root

HASH_SIZE = 64  # images are hashed at 64 px: enough for a 32x32 perceptual hash


@dataclass(frozen=True)
class Prepared:
    """A validated competition and its folds."""

    competition: CompetitionFolder
    folds: pd.DataFrame  # id, label, fold, group[, fold_r1, ...], in train.csv order
    run: RunDir
    decoding: Decoding = Decoding(40_000_000)

    @property
    def n_folds(self) -> int:
        return int(self.folds["fold"].max()) + 1

    @property
    def n_repeats(self) -> int:
        """Repeats of the K-fold split (data.repeats): columns fold, fold_r1, ... ."""
        repeats = 1
        while repeat_column(repeats) in self.folds.columns:
            repeats += 1
        return repeats

    @property
    def n_units(self) -> int:
        """Training units of a model: one per (repeat r, fold k), unit u = r * K + k
        (models/<model_id>/fold<u>/); repeat 0's units are the folds 0..K-1."""
        return self.n_folds * self.n_repeats

    def unit_fold_column(self, unit: int) -> str:
        """The folds.csv column that splits unit `unit`'s repeat."""
        if not 0 <= unit < self.n_units:
            raise IndexError(f"unit {unit} is outside 0..{self.n_units - 1}")
        return repeat_column(unit // self.n_folds)

    def unit_val_mask(self, unit: int) -> np.ndarray:
        """Which training rows (folds.csv order) unit `unit` holds out for validation."""
        column = self.unit_fold_column(unit)
        return self.folds[column].to_numpy() == unit % self.n_folds

    def unit_val_rows(self, unit: int) -> np.ndarray:
        """The rows unit `unit` is validated on (and never trained on)."""
        return np.nonzero(self.unit_val_mask(unit))[0]

    def unit_train_rows(self, unit: int) -> np.ndarray:
        """The rows unit `unit` trains on: every row outside its validation fold."""
        return np.nonzero(~self.unit_val_mask(unit))[0]

    @property
    def labels(self) -> np.ndarray:
        """Each training image's class index, in folds.csv order."""
        return class_indices(self.folds["label"], self.competition.classes)

    @property
    def folds_key(self) -> str:
        columns = ["id", "label"] + [repeat_column(r) for r in range(self.n_repeats)]
        return fingerprint(self.folds[columns].to_dict("list"))

    def split_key(self, split: str) -> str:
        """Fingerprint of `split`'s ids, content hashes and order (train, test, unlabeled):
        key anything computed from a split's images with it."""
        return self.competition.split_key(split)

    def images(self, split: str, size: int) -> np.ndarray:
        """`split`'s decoded images at `size` (a memory map of the content-keyed cache)."""
        frame = self.competition.frame(split)
        return cached_images(self.run.image_cache, split, frame["path"].tolist(), size,
                             self.decoding, frame["hash"].tolist())


def decoding(cfg: DictConfig) -> Decoding:
    """The decoding settings of `cfg` (data.max_image_pixels, data.intensity_range)."""
    value_range = cfg.data.get("intensity_range")  # checked with the config
    return Decoding(int(cfg.data.max_image_pixels),
                    None if value_range is None else tuple(float(v) for v in value_range))


def load_competition(cfg: DictConfig) -> CompetitionFolder:
    """The competition folder of `cfg` (data.dir, data.id_column, data.label_column,
    data.submission_values, data.positive_class, data.group_column, data.pixel_order); a
    pixel-CSV competition's images are written into the run directory's cache."""
    return read_competition(cfg.data.dir, cfg.data.get("id_column"),
                            cfg.data.get("label_column"),
                            RunDir(run_root(cfg.runs_dir, cfg.name)).pixel_images,
                            cfg.data.get("submission_values", "auto"),
                            cfg.data.get("positive_class"), cfg.data.get("group_column"),
                            cfg.data.get("pixel_order", "auto"))


def train_key(train: pd.DataFrame) -> str:
    """What the folds depend on: train ids, labels and image contents, in order (and the
    images' groups, data.group_column, where given)."""
    groups = {"groups": train["group_key"].tolist()} if "group_key" in train else {}
    return fingerprint({"ids": train["id"].tolist(), "labels": train["label"].tolist(),
                        "hashes": train["hash"].tolist(), **groups})


def _old_train_key(train: pd.DataFrame) -> str:
    # the key of run directories prepared before content hashes (ids and labels only)
    return fingerprint({"ids": train["id"].tolist(), "labels": train["label"].tolist()})


def hashes_csv(run: RunDir) -> Path:
    """runs/<name>/hashes.csv: split, id, hash of every image the run was prepared from."""
    return run.hashes_csv


def _write_hashes(run: RunDir, competition: CompetitionFolder) -> None:
    write_csv(hashes_csv(run), pd.concat(
        [competition.frame(s)[["id", "hash"]].assign(split=s) for s in SPLITS]
    )[["split", "id", "hash"]])


def describe_change(old: pd.DataFrame, new: pd.DataFrame,
                    otherwise: str = "the data differs") -> str:
    """One phrase naming how `new` differs from `old` (frames of id, hash and maybe
    label): images replaced, relabelled, added, removed, or only reordered; `otherwise`
    where none of these."""
    old, new = old.set_index("id"), new.set_index("id")
    both = [i for i in new.index if i in old.index]
    changes = {
        "replaced": [i for i in both if old.at[i, "hash"] not in (new.at[i, "hash"], "")],
        "relabelled": [i for i in both if "label" in old and old.at[i, "label"]
                       != new.at[i, "label"]],
        "added": [i for i in new.index if i not in old.index],
        "removed": [i for i in old.index if i not in new.index],
    }
    parts = [f"{len(ids)} image(s) {what}, e.g. {ids[:3]}" for what, ids in changes.items()
             if ids]
    if not parts and old.index.tolist() != new.index.tolist():
        parts.append("the same images in another order")
    return "; ".join(parts) or otherwise


def _recorded(run: RunDir, split: str, folds: pd.DataFrame | None = None) -> pd.DataFrame:
    """id, hash (and label for train) of `split` as recorded by the last prepare."""
    hashes = read_table(hashes_csv(run)) if hashes_csv(run).exists() else pd.DataFrame(
        columns=["split", "id", "hash"])
    recorded = hashes[hashes["split"] == split][["id", "hash"]]
    if folds is None:
        return recorded
    return folds[["id", "label"]].merge(recorded, on="id", how="left").fillna({"hash": ""})


def prepare(cfg: DictConfig) -> Prepared:
    """Read the folder, decode every split once (so a bad image in test/ or unlabeled/
    fails here), and reuse folds.csv if it matches the training data, else write it.

    Folds depend on the training images only: a changed test/ folder or sample
    submission keeps them (what is computed from the test images is keyed by
    `Prepared.split_key("test")`); a replaced, added, removed or relabelled training
    image is an error naming the images, since models were trained on those folds."""
    competition = load_competition(cfg)
    run = run_dir(cfg.runs_dir, cfg.name)
    prepared = Prepared(competition, pd.DataFrame(), run, decoding(cfg))
    images = {split: prepared.images(split, HASH_SIZE) for split in SPLITS}
    if run.folds_csv.exists() and run.data_json.exists():
        folds = _recorded_folds(cfg, competition, run)
    else:
        for note in competition.notes:  # once, as the run's folds are made
            get_logger().info("%s", note)
        folds = _write_folds(cfg, competition, run, images["train"])
    return Prepared(competition, folds, run, prepared.decoding)


# the settings the folds are made with: their names in data.json -> their config keys
FOLD_SETTINGS = {"folds": "data.folds", "seed": "data.fold_seed", "dedup": "data.dedup",
                 "max_distance": "data.dedup_max_distance",
                 "min_correlation": "data.dedup_min_correlation", "repeats": "data.repeats",
                 "group_column": "data.group_column"}


def _fold_settings(cfg: DictConfig) -> dict:
    """The data.* settings the folds are made with (recorded in data.json)."""
    return {name: OmegaConf.select(cfg, key) for name, key in FOLD_SETTINGS.items()}


def _recorded_folds(cfg: DictConfig, competition: CompetitionFolder, run: RunDir) -> pd.DataFrame:
    """folds.csv of an earlier prepare, checked to be made from the same training data
    with the same settings (else a CompError); what changed in the other splits is said
    and recorded."""
    data_key = train_key(competition.train)
    recorded = read_json(run.data_json)
    folds = read_table(run.folds_csv)
    then, now = _with_defaults(recorded.get("settings")), _fold_settings(cfg)
    if then != now:  # first: a changed data.group_column changes the data key too
        changed = ", ".join(f"{FOLD_SETTINGS[name]}={value}, made with {(then or {}).get(name)}"
                            for name, value in now.items() if (then or {}).get(name) != value)
        raise CompError(
            f"{run.folds_csv}: written with other fold settings ({changed}); folds are "
            "fixed once models train on them: use another name=<experiment>, or set the "
            "data.* keys back"
        )
    if recorded.get("data_key") not in (data_key, _old_train_key(competition.train)):
        change = describe_change(_recorded(run, "train", folds), competition.train,
                                 *(["its data.group_column values differ"]
                                   if "group_key" in competition.train else []))
        raise CompError(
            f"{run.root}: was prepared from other training data than {cfg.data.dir} "
            f"({change}); its models were trained on "
            "those folds: use another name=<experiment> (or delete that run directory)"
        )
    if recorded.get("data_key") != data_key:  # an older run directory: record hashes
        recorded = {**recorded, "data_key": data_key}
        write_json(run.data_json, recorded)
    _note_changes(recorded, competition, run)
    return folds


def _write_folds(cfg: DictConfig, competition: CompetitionFolder, run: RunDir,
                 train_images: np.ndarray) -> pd.DataFrame:
    """New folds of the training images (near-duplicates kept in one fold with
    data.dedup, and the images of one data.group_column value), written with hashes.csv
    and data.json."""
    settings = _fold_settings(cfg)
    train = competition.train
    if cfg.data.dedup:
        groups = duplicate_groups(fingerprints(train_images), cfg.data.dedup_max_distance,
                                  cfg.data.dedup_min_correlation)
    else:
        groups = pd.RangeIndex(len(train)).to_numpy()
    if "group_key" in train:  # data.group_column: a patient's or slide's images share a fold
        groups = joined_groups(groups, train["group_key"].to_numpy())
    folds = make_folds(train["id"].tolist(), train["label"].tolist(), groups,
                       cfg.data.folds, cfg.data.fold_seed, settings["repeats"])
    summary = _data_summary(cfg, competition, folds, settings)
    _write_hashes(run, competition)
    write_csv(run.folds_csv, folds)
    write_json(run.data_json, summary)
    get_logger().info(
        "prepare: %d train / %d test / %d unlabeled images, %d classes, %d folds%s; "
        "%d near-duplicate group(s) holding %d images kept within one fold%s -> %s",
        len(train), len(competition.test), len(competition.unlabeled),
        len(competition.classes), cfg.data.folds,
        f" x {settings['repeats']} repeats" if settings["repeats"] > 1 else "",
        summary["duplicate_groups"], summary["images_in_duplicate_groups"],
        f"; {train['group_key'].nunique()} groups of {settings['group_column']!r}, each in "
        "one fold" if "group_key" in train else "", run.folds_csv,
    )
    return folds


def _data_summary(cfg: DictConfig, competition: CompetitionFolder, folds: pd.DataFrame,
                  settings: dict) -> dict:
    """data.json: what the folds were made from and with, and the data's counts."""
    train = competition.train
    sizes = folds.groupby("group").size()
    return {
        "data_key": train_key(train), "settings": settings, "data_dir": str(cfg.data.dir),
        "n_train": len(train), "n_test": len(competition.test),
        "n_unlabeled": len(competition.unlabeled), "classes": competition.classes,
        "duplicate_groups": int((sizes > 1).sum()),
        "images_in_duplicate_groups": int(sizes[sizes > 1].sum()),
        "class_counts": train["label"].value_counts().sort_index().to_dict(),
        "split_keys": {split: competition.split_key(split) for split in SPLITS},
    }


def _with_defaults(settings: dict | None) -> dict | None:
    """Recorded fold settings, where run directories prepared before data.repeats
    existed count as one repeat, those before data.dedup_min_correlation as grouped
    by the hashes alone (-1), and those before data.group_column without one."""
    return settings if settings is None else {"repeats": 1, "min_correlation": -1.0,
                                              "group_column": None, **settings}


def _note_changes(recorded: dict, competition: CompetitionFolder, run: RunDir) -> None:
    """Say, in one line, which splits other than train changed since the last run (what
    depends on them is recomputed), and record the new keys."""
    keys = {split: competition.split_key(split) for split in SPLITS}
    before = recorded.get("split_keys") or {}
    for split in ("test", "unlabeled"):
        if split in before and before[split] != keys[split]:
            get_logger().info(
                "prepare: the %s images changed since the last run (%s); what depends on "
                "them is recomputed", split,
                describe_change(_recorded(run, split), competition.frame(split)))
    if before != keys:
        _write_hashes(run, competition)
        write_json(run.data_json, {**recorded, "split_keys": keys,
                                   "n_test": len(competition.test),
                                   "n_unlabeled": len(competition.unlabeled)})
