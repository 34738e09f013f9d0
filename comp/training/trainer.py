"""Train a model spec on every unit: features once, then one fit per unit, resumable.

A unit is one fold of one repeat of the K-fold split (unit u = repeat * K + fold; with
data.repeats=1 the units are the folds). Each unit writes into models/<model_id>/fold<u>/:
model.weights.h5 (the weights train.epoch_choice keeps: by default the last epoch's),
history.csv, val.csv, test.csv, unlabeled.csv
and, last, metrics.json, whose presence marks the unit done. A unit without it is
cleared and trained again.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from comp import __version__
from comp.artifacts import (
    atomic_path,
    cached_npy,
    ensure_free_space,
    fingerprint,
    read_json,
    write_csv,
    write_json,
)
from comp.config import AugmentSettings
from comp.crashpoints import crash_point
from comp.data.folder import SPLITS
from comp.errors import CompError
from comp.log import get_logger, progress, quiet_tensorflow, unit_done
from comp.metrics import scores
from comp.models.build import (
    build_backbone,
    create_head,
    for_training,
    split_backbone,
    weight_bytes,
)
from comp.models.registry import get_backbone
from comp.models.spec import ClassicSpec, ModelSpec, labelled_epochs, lineage
from comp.predictions import SINGLE, probs_frame, read_table, write_prediction_set
from comp.training.classic import ClassicFeatures, train_classic_fold
from comp.training.compute import model_scope
from comp.training.features import Encoder, FeatureStore, ViewPlan, ViewSet
from comp.training.lite import lite_folder
from comp.training.units import TrainOptions, Unit, UnitResult
from comp.training.viewchoice import ALL, IDENTITY, PROBE_TOL, choose_views, unit_descriptors
from comp.workspace import (
    DISTILL_SPLIT,
    FOLD_HISTORY,
    FOLD_METRICS,
    FOLD_WEIGHTS,
    SPEC_JSON,
    TEST_CSV,
    unit_lock,
)

if TYPE_CHECKING:
    from comp.training.fit import FoldData


def fit_module():
    """comp.training.fit (Keras and TensorFlow), imported where a fold trains, with
    TensorFlow's start-up lines silenced: a process that only plans units and hands
    them to workers never loads TensorFlow (84-194 MiB less peak memory on the bench
    folders, bench/README.md "The four folders at this stop's HEAD")."""
    quiet_tensorflow()
    from comp.training import fit

    return fit


@dataclass
class PseudoRows:
    """Extra training rows for one fold: features (V, M, ...), soft targets, weights, and
    each row's image id and split (`train`: a labelled row's distillation target)."""

    features: np.ndarray
    targets: np.ndarray
    weights: np.ndarray
    ids: list[str] = field(default_factory=list)
    splits: list[str] = field(default_factory=list)


class FeaturedModel:
    """A spec's backbone cut into frozen prefix and trainable body, with its features.

    Built once per spec; `new_head(seed)` resets the body to its loaded weights and puts
    a fresh head on it for one fold.
    """

    distils = True  # a pseudo round's distillation targets train it (pseudo.distill)

    def __init__(self, spec: ModelSpec, prepared):
        backbone = get_backbone(spec.backbone)
        with model_scope(spec.compute):
            base = build_backbone(backbone, spec.image_size, spec.weights, spec.train.seed)
            self.split = for_training(split_backbone(base, backbone, spec.model.unfreeze))
        self.initial_body = self.split.body.get_weights() if self.split.body is not None else []
        self.plan = ViewPlan.from_augment(spec.augment)
        key = {"backbone": spec.backbone, "size": spec.image_size,
               "weights": spec.weights.identity, "cut": self.split.cut}
        if spec.weights.path is None:
            key["init_seed"] = spec.train.seed  # a random prefix depends on its seed
        if spec.precision != "float32":
            key["precision"] = spec.precision
        store = FeatureStore(prepared.run.feature_cache, key)
        # what the train split's features are, for the caches of choices made on them
        self.train_key = {**key, "train": prepared.split_key("train")}
        self.choice_cache = prepared.run.view_choice_cache
        encoder = Encoder(self.split.prefix, backbone.preprocess,
                          lite_folder(backbone, prepared.run.lite_cache))
        self.features: dict[str, np.ndarray] = {}
        for split in SPLITS:
            images = prepared.images(split, spec.image_size)  # keyed by content hashes
            views = ViewSet.of_split(self.plan, split, spec.augment, spec.train.seed)
            self.features[split] = store.features(split, images, encoder, views,
                                                  prepared.split_key(split))

    def new_head(self, spec: ModelSpec, n_classes: int, seed: int):
        """A fresh trainable model for one fold (body weights reset to the loaded ones)."""
        if self.split.body is not None:
            self.split.body.set_weights(self.initial_body)
        with model_scope(spec.compute):
            return create_head(self.split, spec, n_classes, seed)


@dataclass(frozen=True)
class RowSplit:
    """The rows of the train split one fit uses: `train` to learn from and `val` to score,
    with the labels of every train-split row, the number of classes and the rows'
    near-duplicate `groups` (None: each row its own)."""

    labels: np.ndarray
    n_classes: int
    train: np.ndarray
    val: np.ndarray
    groups: np.ndarray | None = None


def fold_data(featured: FeaturedModel, spec: ModelSpec, split: RowSplit,
              pseudo: PseudoRows | None = None, views: str = ALL) -> FoldData:
    """The training rows of `split` (+ pseudo rows) and its validation rows; `views`
    IDENTITY trains on the image alone (and its random views) and validates on the image
    alone (comp.training.viewchoice).

    `train.epoch_choice` says which rows choose the epoch: `last` (default) none (the
    last epoch is kept), `inner` an inner stratified group holdout of `rows`
    (`train.stop_fraction` of them, which then do not train), `outer` the validation rows
    themselves (optimistic: the scored fold picks its own epoch).
    """
    plan, train = featured.plan, spec.train
    labels, n_classes, rows, val = split.labels, split.n_classes, split.train, split.val
    choice = train.epoch_choice
    stop = None
    if choice == "outer":
        stop = val
    elif choice == "inner":
        rows, stop = inner_holdout(rows, labels, split.groups, train.stop_fraction, train.seed)
    fit = fit_module()
    per_class = fit.class_weights(labels[rows], n_classes, train.class_weight)
    targets = np.eye(n_classes)[labels]
    weights = per_class[labels]
    pseudo_features = None
    labelled = len(rows)
    if pseudo is not None and len(pseudo.targets):
        pseudo_features = pseudo.features
        rows = np.concatenate([rows, len(labels) + np.arange(len(pseudo.targets))])
        targets = np.concatenate([targets, pseudo.targets])
        soft_class = pseudo.targets.argmax(1)
        weights = np.concatenate([weights, pseudo.weights * per_class[soft_class]])
    train_views, tta_views = view_arms(plan, spec.augment)[views]
    return fit.FoldData(featured.features["train"], train_views, rows, targets[rows],
                    weights[rows], val, labels[val], tta_views, pseudo_features, stop,
                    None if stop is None else labels[stop],
                    labelled if labelled_epochs(spec) else None)


def unit_views(featured: FeaturedModel, spec: ModelSpec, labels: np.ndarray,
               rows: np.ndarray, groups: np.ndarray | None, max_rows: int = 2000) -> str:
    """ALL or IDENTITY for one unit (`augment.choose_views`; ALL when it is off or
    there is nothing to choose): decided on the unit's training `rows` alone, once for
    every spec and round that asks it of the same features and rows (the run's
    view-choice cache)."""
    arms = view_arms(featured.plan, spec.augment)
    if not spec.augment.choose_views or arms[ALL] == arms[IDENTITY]:
        return ALL
    seed = spec.train.seed
    if len(rows) > max_rows:  # a stratified sample is enough for a linear probe
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_rows, replace=False))
    unit_groups = None if groups is None else groups[rows]

    def decide(path: Path) -> None:
        descriptors = unit_descriptors(featured.features["train"], rows)
        choice = choose_views(descriptors, arms, labels[rows], unit_groups, seed)
        np.save(path, np.array(choice == IDENTITY))

    key = {"features": featured.train_key, "arms": arms, "seed": seed, "probe_tol": PROBE_TOL,
           "rows": fingerprint(rows.tolist(), 16), "labels": fingerprint(labels[rows].tolist(), 16),
           "groups": None if unit_groups is None else fingerprint(unit_groups.tolist(), 16)}
    identity = cached_npy(featured.choice_cache, key, "views", decide)
    return IDENTITY if bool(identity) else ALL


def view_arms(plan: ViewPlan,
              augment: AugmentSettings) -> dict[str, tuple[list[int], list[int]]]:
    """Per view choice, the positions on the train split's views axis that train and
    that validate: ALL the configured views (dihedral where augment.dihedral, random
    views) and TTA; IDENTITY the image and its random views, validated on the image."""
    return {ALL: (plan.train_positions(augment.dihedral), plan.tta_positions("train")),
            IDENTITY: (plan.train_positions(False), [0])}


def split_positions(plan: ViewPlan, split: str, views: str) -> list[int]:
    """Positions of the views a unit predicts `split` with."""
    positions = plan.tta_positions(split)
    return positions[:1] if views == IDENTITY else positions


def inner_holdout(rows: np.ndarray, labels: np.ndarray, groups: np.ndarray | None,
                  fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split `rows` into (fit, holdout) by stratified groups: about `fraction` of the rows
    (whole near-duplicate groups) are held out; every class keeps rows on both sides
    where it has at least two groups."""
    from sklearn.model_selection import StratifiedGroupKFold

    n_splits = max(2, int(round(1 / fraction)))
    groups = rows if groups is None else groups[rows]
    counts = np.bincount(labels[rows])
    n_splits = min(n_splits, max(2, int(counts[counts > 0].min())))
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    fit, held = next(splitter.split(rows, labels[rows], groups))
    return rows[fit], rows[held]


def split_keys(prepared) -> dict:
    """Content fingerprints of the splits a fold predicts besides its validation rows."""
    return {"test": prepared.split_key("test"), "unlabeled": prepared.split_key("unlabeled")}


def fold_done(folder, splits: dict | None = None) -> bool:
    """A fold is done when its metrics.json reads back, was written by this comp version
    and (given `splits`) predicted the test and unlabeled images as they are now;
    anything else (interrupted, corrupt, older version, changed test set) is trained
    again, so a stale prediction never reaches a submission."""
    try:
        metrics = read_json(folder / FOLD_METRICS)
    except (OSError, ValueError):
        return False
    if metrics.get("comp") != __version__:
        return False
    return splits is None or metrics.get("splits") == splits


def train_spec(spec: ModelSpec, prepared, info: dict,
               options: TrainOptions | None = None) -> dict | None:
    """Train `spec` on every unfinished unit (fold of a repeat) and, when all are done,
    write its prediction set (preds/<model_id>/). Returns its cv.json content, or None
    when some units are left (`options.folds` limits this call to those units)."""
    options = options or TrainOptions()
    run = prepared.run
    write_json(run.model_dir(spec.model_id) / SPEC_JSON, spec.describe())
    n_units = prepared.n_units
    wanted = range(n_units) if options.folds is None else options.folds
    splits = split_keys(prepared)
    todo = [k for k in wanted if not fold_done(run.fold_dir(spec.model_id, k), splits)]
    stale = [k for k in todo if fold_done(run.fold_dir(spec.model_id, k))]
    if stale:
        get_logger().info("train: %s folds %s predicted other test or unlabeled images than "
                          "those now in the folder; trained again", spec.model_id, stale)
    featured_models: dict[str, FeaturedModel] = {}
    bar = progress(todo, desc=f"train {spec.model_id}")
    for fold in bar:
        if options.deadline is not None and options.deadline.passed(
                f"{spec.model_id} fold {fold}"):
            break
        _train_unit(spec, Unit(prepared, spec.model_id, fold, None, bar, options.tensorboard,
                               options.in_sample), featured_models, options)
    done = [k for k in range(n_units) if fold_done(run.fold_dir(spec.model_id, k), splits)]
    if len(done) < n_units:
        return None
    result = collect_predictions(spec, prepared, {**info, "lineage": lineage(spec)})
    cv = result["cv"]
    repeats = f" x {prepared.n_repeats} repeats" if prepared.n_repeats > 1 else ""
    get_logger().info(
        "train: %s  CV accuracy %.4f  macro-F1 %.4f  AUC %.4f  (%d folds%s)",
        spec.model_id, cv["accuracy"], cv["macro_f1"], cv["auc"], prepared.n_folds, repeats)
    return result


def pending_units(specs: list, prepared, folds: list[int] | None = None) -> list[tuple]:
    """The (spec, unit) pairs of `specs` not yet done (of `folds`; None: every unit), in
    the order the one-process loop trains them."""
    splits = split_keys(prepared)
    wanted = range(prepared.n_units) if folds is None else folds
    return [(spec, unit) for spec in specs for unit in wanted
            if not fold_done(prepared.run.fold_dir(spec.model_id, unit), splits)]


def warm_features(units: list[tuple], prepared) -> None:
    """Compute into the run's caches the features each (spec, unit) of `units` trains on,
    each set once, so worker processes only read them (comp.training.workers)."""
    import gc

    done = set()
    for spec, unit in units:
        fold_spec = spec.for_fold(unit)
        key = (spec.model_id, fold_spec.features_key())
        if key not in done:
            KINDS[type(spec)][0](fold_spec, prepared)
            done.add(key)
            gc.collect()  # one backbone and its mapped features at a time


def round_options(setup, folds: list[int] | None = None, deadline=None) -> TrainOptions:
    """How a round's units train (`setup`: a comp.training.workers.WorkerSetup), in this
    process or a worker alike: from round 1 on with the round's pseudo-label files, and
    predicting their own training rows where the run distils (pseudo.distill)."""
    from comp.pseudo.rows import pseudo_loader

    loader = None if setup.round_ == 0 else pseudo_loader(
        setup.prepared, setup.round_, setup.pseudo_weight, setup.pseudo_distill)
    return TrainOptions(loader, folds, setup.tensorboard, deadline,
                        in_sample=setup.pseudo_distill is not None)


class UnitTrainer:
    """What a worker process does (comp.training.workers): `train(spec, unit)` trains one
    unit as the one-process loop would, keeping the features of the model it trained
    last (one model's in memory at a time); `warm(units)` computes the features of
    (spec, unit) pairs into the run's caches (warm_features)."""

    def __init__(self, setup):
        self.setup = setup
        self.options = round_options(setup)
        self.featured_models: dict = {}
        self.model_id = None

    def warm(self, units: list[tuple]) -> None:
        """warm_features(units) on this worker's prepared competition."""
        warm_features(units, self.setup.prepared)

    def train(self, spec, unit: int) -> None:
        """Train `unit` of `spec` (unless done or locked by another process)."""
        if spec.model_id != self.model_id:
            self.featured_models.clear()
            self.model_id = spec.model_id
        bar = progress(total=0, disable=True)
        _train_unit(spec, Unit(self.setup.prepared, spec.model_id, unit, None, bar,
                               self.options.tensorboard, self.options.in_sample),
                    self.featured_models, self.options)


def _train_unit(spec, unit: Unit, featured_models: dict, options: TrainOptions) -> None:
    """Train `unit` of `spec` under its lock, unless another process holds it or it has
    finished meanwhile; `featured_models` keeps the features its units share."""
    prepared, fold, run = unit.prepared, unit.fold, unit.prepared.run
    with unit_lock(run.fold_lock(spec.model_id, fold)) as mine:
        if not mine:
            get_logger().info("train: %s fold %d is being trained by another process; "
                              "skipped", spec.model_id, fold)
            return
        if fold_done(run.fold_dir(spec.model_id, fold), split_keys(prepared)):
            return  # finished meanwhile
        fold_spec = spec.for_fold(fold)
        features, train_unit = KINDS[type(spec)]
        key = fold_spec.features_key()
        if key not in featured_models:
            featured_models[key] = features(fold_spec, prepared)
        featured = featured_models[key]
        if options.pseudo_for_fold is not None:
            unit = replace(unit, pseudo=options.pseudo_for_fold(fold, featured))
        out = _fresh_fold_dir(run.fold_dir(spec.model_id, fold))
        started = time.time()
        write_fold_outputs(out, unit, train_unit(featured, fold_spec, unit, out),
                           time.time() - started)
        metrics = read_json(out / FOLD_METRICS)
        unit_done("fold", model=spec.model_id, fold=fold, best_epoch=metrics["best_epoch"],
                  val_auc=round(metrics["auc"], 4), seconds=metrics["seconds"])


def _train_fold(featured: FeaturedModel, spec: ModelSpec, unit: Unit, out: Path) -> UnitResult:
    """Train and predict `unit` (a fold of one repeat) of a fine-tuned model (`spec`: its
    settings for that unit) into its fresh folder `out`."""
    prepared, fold, pseudo, bar = unit.prepared, unit.fold, unit.pseudo, unit.bar
    labels = prepared.labels
    classes = prepared.competition.classes
    seed = spec.train.seed + fold
    model = featured.new_head(spec, len(classes), seed)
    first_epoch = warm_start(model, spec, prepared.run, fold)
    val = prepared.unit_val_rows(fold)
    rows, groups = prepared.unit_train_rows(fold), prepared.folds["group"].to_numpy()
    views = unit_views(featured, spec, labels, rows, groups)
    data = fold_data(featured, spec, RowSplit(labels, len(classes), rows, val, groups), pseudo,
                     views)

    def show(epoch: int, logs: dict) -> None:
        bar.set_postfix(fold=fold, epoch=epoch, val_auc=f"{logs['val_auc']:.3f}")

    fit = fit_module()
    history, best_epoch = fit.fit_fold(model, data, spec.train, seed, show,
                                   str(out / "logs") if unit.tensorboard else None,
                                   spec.compute, first_epoch)
    val_probs = fit.predict_views(model, featured.features["train"], data.tta_views, val)
    split_probs = {split: fit.predict_tta(model, featured.features[split],
                                      split_positions(featured.plan, split, views))
                   for split in ("test", "unlabeled")}
    if unit.in_sample:  # a later round's distillation targets (pseudo.distill)
        split_probs[DISTILL_SPLIT] = fit.predict_views(model, featured.features["train"],
                                                       data.tta_views, rows)
    ensure_free_space(out / FOLD_WEIGHTS, weight_bytes(model))
    with atomic_path(out / FOLD_WEIGHTS, suffix=".weights.h5") as tmp:
        model.save_weights(tmp)
    write_csv(out / FOLD_HISTORY, history)
    optimistic = int(history["val_monitor"].idxmax())
    return UnitResult(val_probs, split_probs, {
        "best_epoch": best_epoch, "epochs_run": len(history),
        "epoch_choice": spec.train.epoch_choice, "views": views,
        "n_train": int(len(data.rows)),
        "epoch_batches": data.epoch_batches(spec.train.batch_size, spec.train.max_batches),
        "n_stop": 0 if data.stop_rows is None else int(len(data.stop_rows)),
        "optimistic": {"epoch": optimistic, **{
            k: float(history[f"val_{k}"][optimistic])
            for k in ("accuracy", "macro_f1", "auc", "log_loss")}},
        # the fold's own settings (tuned folds differ) under the model's id
        "settings": {**spec.describe(), "model_id": unit.model_id},
    })


def warm_start(model, spec: ModelSpec, run, fold: int) -> int:
    """Where a fine-tune of unit `fold` starts (pseudo.warm_epochs): with the spec's
    pseudo settings marking a warm start, `model` takes the weights of that unit of the
    model it replaces, and the schedule begins its last epochs; returns the first epoch
    (0: a cold start, the model as built)."""
    warm = (spec.pseudo or {}).get("warm_start")
    if warm is None:
        return 0
    weights = run.fold_dir(warm["from"], fold) / FOLD_WEIGHTS
    if not weights.exists():
        raise CompError(f"{weights}: missing; pseudo.warm_epochs starts round "
                        f"{spec.pseudo['round']}'s {spec.backbone} from it: train round "
                        f"{spec.pseudo['round'] - 1} first, or unset pseudo.warm_epochs")
    model.load_weights(weights)
    return max(0, spec.train.epochs - warm["epochs"])


def _fresh_fold_dir(out):
    if out.exists():
        shutil.rmtree(out)  # an interrupted fold restarts cleanly
    out.mkdir(parents=True)
    return out


def write_fold_outputs(out: Path, unit: Unit, result: UnitResult, seconds: float) -> None:
    """A finished unit's val/test/unlabeled predictions, then metrics.json (written last:
    its presence marks the unit done)."""
    prepared, fold, pseudo = unit.prepared, unit.fold, unit.pseudo
    val_probs, split_probs = result.val, result.splits
    classes = prepared.competition.classes
    held = prepared.unit_val_mask(fold)
    val_ids = prepared.folds["id"].to_numpy()[held]
    write_csv(out / "val.csv", probs_frame(val_ids, val_probs, classes))
    for split, frame in (("test", prepared.competition.test),
                         ("unlabeled", prepared.competition.unlabeled)):
        write_csv(out / f"{split}.csv",
                  probs_frame(frame["id"].tolist(), split_probs[split], classes))
    if DISTILL_SPLIT in split_probs:
        train_ids = prepared.folds["id"].to_numpy()[prepared.unit_train_rows(fold)]
        write_csv(out / f"{DISTILL_SPLIT}.csv",
                  probs_frame(train_ids, split_probs[DISTILL_SPLIT], classes))
    write_json(out / FOLD_METRICS, {
        **scores(prepared.labels[held], val_probs), "comp": __version__,
        "fold": fold, "repeat": fold // prepared.n_folds, "splits": split_keys(prepared),
        **result.record,
        "n_pseudo": 0 if pseudo is None else len(pseudo.targets),
        "pseudo_ids": [] if pseudo is None else list(pseudo.ids),
        "seconds": round(seconds, 2),
        "process": f"{socket.gethostname()}:{os.getpid()}",  # which worker trained it
    })
    crash_point(f"fold:{fold}")  # tests: COMP_CRASH_AT=fold:<k> dies here


# per spec class: the features its units train on, and how one unit is trained
KINDS = {ModelSpec: (FeaturedModel, _train_fold),
         ClassicSpec: (ClassicFeatures, train_classic_fold)}


def read_ids_table(path) -> pd.DataFrame:
    """A CSV comp wrote with an `id` column: ids as text, no NA guessing (read_table)."""
    return read_table(path)


def collect_predictions(spec: ModelSpec, prepared, info: dict) -> dict:
    """Join the units' val/test predictions into the spec's prediction set.

    An image's OOF prediction is the mean over the repeats of the prediction of the unit
    that held it out (each from a model that never saw it); the OOF table keeps repeat
    0's fold. Test predictions are the mean over every unit."""
    run, classes = prepared.run, prepared.competition.classes
    cols = [f"p_{c}" for c in classes]
    ids = prepared.folds["id"]
    oof_sum = pd.DataFrame(0.0, index=pd.Index(ids, name="id"), columns=cols)
    test_ids = prepared.competition.test["id"].tolist()
    test_sum = np.zeros((len(test_ids), len(classes)))
    optimistic = []
    for unit in range(prepared.n_units):
        folder = run.fold_dir(spec.model_id, unit)
        metrics = folder / FOLD_METRICS
        optimistic.append(read_json(metrics).get("optimistic") if metrics.exists() else None)
        val = read_ids_table(folder / "val.csv").set_index("id")
        expected = ids[prepared.unit_val_mask(unit)]
        if sorted(val.index) != sorted(expected):
            raise CompError(f"{folder / 'val.csv'}: not the validation images of unit "
                            f"{unit}; delete {folder} and rerun")
        oof_sum.loc[expected, cols] += val.loc[expected, cols].to_numpy()
        test = read_ids_table(folder / TEST_CSV).set_index("id")
        missing = sorted(set(test_ids) - set(test.index))
        if missing:
            raise CompError(f"{folder / 'test.csv'}: no prediction for {len(missing)} test "
                            f"id(s), e.g. {missing[:3]}; delete {folder} and rerun")
        test_sum += test.loc[test_ids, cols].to_numpy()  # joined by id, never by position
    oof = probs_frame(ids.tolist(), oof_sum.to_numpy() / prepared.n_repeats, classes,
                      fold=prepared.folds["fold"].to_numpy(),
                      label=prepared.folds["label"].to_numpy())
    test_probs = test_sum / prepared.n_units
    test_frame = probs_frame(test_ids, test_probs, classes)
    extra = {}
    if all(optimistic):  # fine-tuned units: each scored fold at its own best epoch too
        sizes = [prepared.unit_val_mask(u).sum() for u in range(prepared.n_units)]
        extra["cv_optimistic"] = {
            "note": "each unit at the epoch best on its own validation rows (not honest; "
                    "scored on the first TTA view where epoch_choice=last); mean over "
                    "units weighted by their sizes",
            **{k: float(np.average([o[k] for o in optimistic], weights=sizes))
               for k in ("accuracy", "macro_f1", "auc")}}
    return write_prediction_set(
        run.preds_dir(spec.model_id), oof, test_frame, classes,
        {"kind": SINGLE, "model_kind": spec.kind, "model_id": spec.model_id,
         "backbone": spec.backbone, "tuned": spec.fold_params is not None,
         "models": [spec.model_id], "repeats": prepared.n_repeats, **info, **extra},
    )
