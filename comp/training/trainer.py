"""Train a model spec on every fold: features once, then one fit per fold, resumable.

Each fold writes into models/<model_id>/fold<k>/: model.weights.h5 (the best-AUC
epoch), history.csv, val.csv, test.csv, unlabeled.csv and, last, metrics.json, whose
presence marks the fold done. A fold without it is cleared and trained again.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from comp import __version__
from comp.artifacts import atomic_path, read_json, write_csv, write_json
from comp.log import get_logger, progress
from comp.metrics import scores
from comp.models.build import build_backbone, build_head_model, split_backbone
from comp.models.registry import get_backbone
from comp.models.spec import ModelSpec
from comp.predictions import probs_frame, write_prediction_set
from comp.training.callbacks import predict_views
from comp.training.compute import model_scope
from comp.training.features import ViewPlan, feature_cache
from comp.training.fit import FoldData, class_weights, fit_fold, predict_tta
from comp.workspace import unit_lock

SPLITS = ("train", "test", "unlabeled")


@dataclass
class PseudoRows:
    """Extra training rows for one fold: features (V, M, ...), soft targets, weights."""

    features: np.ndarray
    targets: np.ndarray
    weights: np.ndarray
    ids: list[str] = field(default_factory=list)


class FeaturedModel:
    """A spec's backbone cut into frozen prefix and trainable body, with its features.

    Built once per spec; `new_head(seed)` resets the body to its loaded weights and puts
    a fresh head on it for one fold.
    """

    def __init__(self, spec: ModelSpec, prepared, max_pixels: int):
        backbone = get_backbone(spec.backbone)
        with model_scope(spec.compute):
            base = build_backbone(backbone, spec.image_size, spec.weights, spec.train["seed"])
            self.split = split_backbone(base, backbone, spec.model["unfreeze"])
        self.initial_body = self.split.body.get_weights() if self.split.body is not None else []
        self.plan = ViewPlan.from_augment(spec.augment)
        key = {"backbone": spec.backbone, "size": spec.image_size,
               "weights": spec.weights.identity, "cut": self.split.cut}
        if spec.weights.path is None:
            key["init_seed"] = spec.train["seed"]  # a random prefix depends on its seed
        if spec.precision != "float32":
            key["precision"] = spec.precision
        self.features: dict[str, np.ndarray] = {}
        for split in SPLITS:
            images = prepared.images(split, spec.image_size)  # keyed by content hashes
            self.features[split] = feature_cache(
                prepared.run.feature_cache, key, split, images, self.split.prefix,
                backbone.preprocess, self.plan, spec.augment, spec.train["seed"],
                data_key=prepared.split_key(split))

    @staticmethod
    def key(spec: ModelSpec) -> str:
        """Specs with equal keys share one FeaturedModel (same cut and training views)."""
        return json.dumps([spec.model["unfreeze"], spec.augment], sort_keys=True)

    def new_head(self, spec: ModelSpec, n_classes: int, seed: int):
        """A fresh trainable model for one fold (body weights reset to the loaded ones)."""
        if self.split.body is not None:
            self.split.body.set_weights(self.initial_body)
        m = spec.model
        with model_scope(spec.compute):
            return build_head_model(self.split, n_classes, m["pooling"], m["dense_units"],
                                    m["dropout"], m["bn_trainable"], seed)


def fold_data(featured: FeaturedModel, spec: ModelSpec, labels: np.ndarray,
              rows: np.ndarray, val: np.ndarray, n_classes: int,
              pseudo: PseudoRows | None = None) -> FoldData:
    """Training rows `rows` (+ pseudo rows) and validation rows `val` of the train split."""
    plan, train = featured.plan, spec.train
    per_class = class_weights(labels[rows], n_classes, train["class_weight"])
    targets = np.eye(n_classes)[labels]
    weights = per_class[labels]
    pseudo_features = None
    if pseudo is not None and len(pseudo.targets):
        pseudo_features = pseudo.features
        rows = np.concatenate([rows, len(labels) + np.arange(len(pseudo.targets))])
        targets = np.concatenate([targets, pseudo.targets])
        soft_class = pseudo.targets.argmax(1)
        weights = np.concatenate([weights, pseudo.weights * per_class[soft_class]])
    return FoldData(featured.features["train"], plan.train_positions(spec.augment["dihedral"]),
                    rows, targets[rows], weights[rows], val, labels[val],
                    plan.tta_positions("train"), pseudo_features)


def fold_done(folder) -> bool:
    """A fold is done when its metrics.json reads back and was written by this comp
    version; anything else (interrupted, corrupt, older version) is trained again."""
    try:
        return read_json(folder / "metrics.json").get("comp") == __version__
    except (OSError, ValueError):
        return False


def train_spec(spec: ModelSpec, prepared, max_pixels: int, info: dict,
               pseudo_for_fold=None, folds_to_run: list[int] | None = None,
               tensorboard: bool = False) -> dict | None:
    """Train `spec` on every unfinished fold and, when all are done, write its
    prediction set (preds/<model_id>/). Returns its cv.json content, or None when some
    folds are left (`folds_to_run` limits this call to those folds)."""
    run = prepared.run
    model_dir = run.model_dir(spec.model_id)
    write_json(model_dir / "spec.json", spec.describe())
    n_folds = prepared.n_folds
    wanted = range(n_folds) if folds_to_run is None else folds_to_run
    todo = [k for k in wanted if not fold_done(run.fold_dir(spec.model_id, k))]
    labels = prepared.labels
    folds = prepared.folds["fold"].to_numpy()
    featured_models: dict[str, FeaturedModel] = {}
    bar = progress(todo, desc=f"train {spec.model_id}")
    for fold in bar:
        with unit_lock(run.fold_lock(spec.model_id, fold)) as mine:
            if not mine:
                get_logger().info("train: %s fold %d is being trained by another process; "
                                  "skipped", spec.model_id, fold)
                continue
            if fold_done(run.fold_dir(spec.model_id, fold)):  # finished meanwhile
                continue
            fold_spec = spec.for_fold(fold)
            key = FeaturedModel.key(fold_spec)
            if key not in featured_models:
                featured_models[key] = FeaturedModel(fold_spec, prepared, max_pixels)
            featured = featured_models[key]
            pseudo = pseudo_for_fold(fold, featured) if pseudo_for_fold else None
            _train_fold(featured, spec.model_id, fold_spec, prepared, labels, folds, fold,
                        pseudo, bar, tensorboard)
    done = [k for k in range(n_folds) if fold_done(run.fold_dir(spec.model_id, k))]
    if len(done) < n_folds:
        return None
    result = collect_predictions(spec, prepared, info)
    cv = result["cv"]
    get_logger().info(
        "train: %s  CV accuracy %.4f  macro-F1 %.4f  AUC %.4f  (%d folds)",
        spec.model_id, cv["accuracy"], cv["macro_f1"], cv["auc"], n_folds)
    return result


def _train_fold(featured: FeaturedModel, model_id: str, spec: ModelSpec, prepared, labels,
                folds, fold, pseudo, bar, tensorboard: bool = False) -> None:
    run, classes = prepared.run, prepared.competition.classes
    out = run.fold_dir(model_id, fold)
    if out.exists():
        shutil.rmtree(out)  # an interrupted fold restarts cleanly
    out.mkdir(parents=True)
    started = time.time()
    seed = spec.train["seed"] + fold
    model = featured.new_head(spec, len(classes), seed)
    data = fold_data(featured, spec, labels, np.nonzero(folds != fold)[0],
                     np.nonzero(folds == fold)[0], len(classes), pseudo)

    def show(epoch: int, logs: dict) -> None:
        bar.set_postfix(fold=fold, epoch=epoch, val_auc=f"{logs['val_auc']:.3f}")

    history, best_epoch = fit_fold(model, data, spec.train, seed, show,
                                   str(out / "logs") if tensorboard else None, spec.compute)
    val_ids = prepared.folds["id"].to_numpy()[folds == fold]
    val_probs = predict_views(model, featured.features["train"],
                              featured.plan.tta_positions("train"), np.nonzero(folds == fold)[0])
    fold_scores = scores(labels[folds == fold], val_probs)
    write_csv(out / "val.csv", probs_frame(val_ids, val_probs, classes))
    for split, frame in (("test", prepared.competition.test),
                         ("unlabeled", prepared.competition.unlabeled)):
        probs = predict_tta(model, featured.features[split], featured.plan.tta_positions(split))
        write_csv(out / f"{split}.csv", probs_frame(frame["id"].tolist(), probs, classes))
    with atomic_path(out / "model.weights.h5", suffix=".weights.h5") as tmp:
        model.save_weights(tmp)
    write_csv(out / "history.csv", history)
    write_json(out / "metrics.json", {
        **fold_scores, "comp": __version__, "fold": fold, "best_epoch": best_epoch,
        "epochs_run": len(history),
        "n_train": int(len(data.rows)), "n_pseudo": 0 if pseudo is None else len(pseudo.targets),
        "pseudo_ids": [] if pseudo is None else list(pseudo.ids),
        "seconds": round(time.time() - started, 2), "settings": spec.describe(),
    })


def collect_predictions(spec: ModelSpec, prepared, info: dict) -> dict:
    """Join the folds' val/test predictions into the spec's prediction set."""
    run, classes = prepared.run, prepared.competition.classes
    cols = [f"p_{c}" for c in classes]
    oof_parts, test_sum = [], None
    for fold in range(prepared.n_folds):
        folder = run.fold_dir(spec.model_id, fold)
        val = pd.read_csv(folder / "val.csv", dtype={"id": str})
        val.insert(1, "fold", fold)
        oof_parts.append(val)
        test = pd.read_csv(folder / "test.csv", dtype={"id": str})
        test_sum = test[cols].to_numpy() if test_sum is None else test_sum + test[cols].to_numpy()
    oof = pd.concat(oof_parts).set_index("id").loc[prepared.folds["id"]].reset_index()
    oof.insert(2, "label", prepared.folds["label"].to_numpy())
    test_probs = test_sum / prepared.n_folds
    test_frame = probs_frame(prepared.competition.test["id"].tolist(), test_probs, classes)
    return write_prediction_set(
        run.preds_dir(spec.model_id), oof, test_frame, classes,
        {"kind": "single", "model_id": spec.model_id, "backbone": spec.backbone,
         "tuned": spec.fold_params is not None,
         "models": [spec.model_id], **info},
    )
