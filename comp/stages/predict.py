"""stage=predict: class probabilities for new images from a finished model or ensemble.

Each fold's saved head is put back on its backbone (weights found again through the
config, and checked against the identity recorded at training); the images go through
the same decoding, views and TTA as in training; folds are averaged, and ensembles are
combined with their saved method and weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from comp.artifacts import read_json, write_csv
from comp.data.folder import IMAGE_SUFFIXES, check_id
from comp.data.images import load_images
from comp.ensemble import combine
from comp.errors import CompError
from comp.log import get_logger, progress
from comp.metrics import HIGHER_IS_BETTER
from comp.models.build import build_backbone, build_head_model, split_backbone
from comp.models.registry import get_backbone
from comp.models.spec import ModelSpec
from comp.models.weights import ResolvedWeights, resolve_weights
from comp.predictions import probs_frame
from comp.training.compute import model_scope
from comp.training.features import ViewPlan, compute_features
from comp.training.fit import predict_tta
from comp.workspace import RunDir, run_dir


def run(cfg: DictConfig) -> pd.DataFrame:
    """Predict `predict.input` with `predict.using` (default: the best by CV)."""
    if not cfg.predict.input:
        raise CompError("config: predict.input is not set; give an image file or a folder")
    run = run_dir(cfg.runs_dir, cfg.name)
    paths = input_images(Path(cfg.predict.input))
    using = cfg.predict.using or best_prediction_set(run, cfg.submit.metric)
    folder = run.ensemble_dir(using.removeprefix("ensemble-")) if using.startswith(
        "ensemble-") else run.preds_dir(using)
    if not (folder / "cv.json").exists():
        raise CompError(f"{folder}: no finished model or ensemble {using!r}; see "
                        "submissions/leaderboard.csv for the names")
    info = read_json(folder / "cv.json")
    classes = info["classes"]
    if info["kind"] == "ensemble":
        members = np.stack([predict_model(cfg, run, m, paths, len(classes))
                            for m in info["models"]])
        weights = np.array([info["weights"][m] for m in info["models"]])
        probs = combine(info["method"], members, weights)
    else:
        probs = predict_model(cfg, run, using, paths, len(classes))
    frame = probs_frame([p.name for p in paths], probs, classes)
    frame.insert(1, "label", [classes[i] for i in probs.argmax(1)])
    target = Path(cfg.predict.output) if cfg.predict.output else (
        run.root / "predictions" / f"{Path(cfg.predict.input).stem}__{using}.csv")
    write_csv(target, frame)
    get_logger().info("predict: %d image(s) with %s -> %s", len(frame), using, target)
    return frame


def input_images(path: Path) -> list[Path]:
    """The image files of `path` (a file or a folder), checked to be plain names."""
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.iterdir()
                       if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    else:
        raise CompError(f"predict.input={path}: no such file or folder")
    if not files:
        raise CompError(f"predict.input={path}: no image files in it")
    for file in files:
        check_id(file.name, str(path))
    return files


def best_prediction_set(run: RunDir, metric: str) -> str:
    """The name of the finished model or ensemble with the best CV `metric`."""
    sets = [read_json(p / "cv.json") for p in run.prediction_sets()]
    if not sets:
        raise CompError(f"{run.root}: no finished models; run stage=train first")
    sign = 1 if HIGHER_IS_BETTER[metric] else -1
    best = max(sets, key=lambda s: sign * s["cv"][metric])
    return best.get("model_id") or best["name"]


def predict_model(cfg: DictConfig, run: RunDir, model_id: str, paths: list[Path],
                  n_classes: int) -> np.ndarray:
    """Fold-averaged TTA probabilities of one trained model on `paths`."""
    spec = load_spec(cfg, run, model_id)
    images = load_images([str(p) for p in paths], spec.image_size, cfg.data.max_image_pixels,
                         desc=f"decode {spec.image_size}px")
    return predict_images(spec, run.model_dir(model_id), images, n_classes)


def predict_images(spec: ModelSpec, model_dir: Path, images: np.ndarray,
                   n_classes: int) -> np.ndarray:
    """Fold-averaged TTA probabilities of the model in `model_dir` on decoded `images`.

    The frozen prefix runs once per image and view for every fold that shares its cut
    (all of them, unless tuning gave folds different unfreeze points); each fold's head
    then runs on those features.
    """
    backbone = get_backbone(spec.backbone)
    folds = sorted(int(p.name[4:]) for p in model_dir.glob("fold*") if p.is_dir())
    total = np.zeros((len(images), n_classes))
    shared: dict[str, tuple] = {}
    for fold in progress(folds, desc=f"predict {model_dir.name}"):
        fold_spec = spec.for_fold(fold)
        plan = ViewPlan.from_augment(fold_spec.augment)
        key = f"{fold_spec.model['unfreeze']}|{plan.tta}"
        if key not in shared:
            with model_scope(spec.compute):
                base = build_backbone(backbone, spec.image_size, spec.weights,
                                      spec.train["seed"])
                split = split_backbone(base, backbone, fold_spec.model["unfreeze"])
            shared[key] = (split, compute_features(images, split.prefix, backbone.preprocess,
                                                   plan.tta, 0, fold_spec.augment, 0))
        split, features = shared[key]
        m = fold_spec.model
        with model_scope(spec.compute):
            head = build_head_model(split, n_classes, m["pooling"], m["dense_units"],
                                    m["dropout"], m["bn_trainable"], 0)
        head.load_weights(model_dir / f"fold{fold}" / "model.weights.h5")
        total += predict_tta(head, features, list(range(len(plan.tta))))
    return total / len(folds)


def load_spec(cfg: DictConfig, run: RunDir, model_id: str) -> ModelSpec:
    """The spec recorded in spec.json, with its weight file found again on this machine."""
    recorded = read_json(run.model_dir(model_id) / "spec.json")
    backbone = get_backbone(recorded["backbone"])
    if recorded["weights"] == "random-init":
        weights = ResolvedWeights(None, "random-init")
    else:
        weights = resolve_weights(backbone, recorded["image_size"], cfg.weights,
                                  cfg.weights_dir)
        if weights.identity != recorded["weights"]:
            raise CompError(
                f"{weights.path}: not the weight file {model_id} was trained with "
                f"({recorded['weights']}); point weights_dir or weights= at that file")
    return ModelSpec(recorded["backbone"], recorded["image_size"], weights,
                     recorded["model"], recorded["train"], recorded["augment"],
                     recorded["folds"], recorded["pseudo"], recorded.get("fold_params"),
                     {**OmegaConf.to_container(cfg.compute, resolve=True),
                      "precision": recorded.get("precision", "float32")})
