"""Prediction from a finished run: saved fold models and ensembles on new images.

Each fold's saved model is put back on its features: a fine-tuned head on its backbone's
frozen prefix (weights found again through the config and checked against the identity
recorded at training), or a classic head on the same pooled embeddings. The images go
through the same decoding, views and TTA as in training; folds are averaged; ensembles
are combined with their saved method and state.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from comp.artifacts import read_json
from comp.data.folder import check_id, images_in, pixel_csv_images
from comp.data.images import load_images
from comp.data.pixels import is_pixel_csv
from comp.data.prepared import decoding
from comp.ensemble import METHODS
from comp.errors import CompError
from comp.log import progress
from comp.metrics import AUTO_METRIC
from comp.models.build import (
    SplitBackbone,
    build_backbone,
    create_head,
    fold_batch_norms,
    refold_batch_norms,
    split_backbone,
)
from comp.models.heads import view_average_proba
from comp.models.registry import get_backbone
from comp.models.spec import ClassicSpec, ModelSpec, spec_class
from comp.models.weights import ResolvedWeights, resolve_weights
from comp.predictions import (
    current_sets,
    is_ensemble,
    probs_frame,
    read_prediction_set,
    round_zero_sets,
)
from comp.selection import best_entry
from comp.training.compute import model_scope
from comp.training.features import Encoder, ViewPlan, ViewSet, compute_features
from comp.training.fit import predict_tta
from comp.training.lite import lite_folder
from comp.training.viewchoice import IDENTITY, recorded_views
from comp.workspace import (
    CV_JSON,
    ENSEMBLE_STATE,
    FOLD_ESTIMATOR,
    FOLD_WEIGHTS,
    SPEC_JSON,
    RunDir,
    fold_path,
    fold_paths,
)

# image files -> probabilities (N, classes), of a model or ensemble built once
PathPredictor = Callable[[list[Path]], np.ndarray]


def prediction_folder(run: RunDir, using: str) -> Path:
    """The folder of a finished model (`<model_id>`) or ensemble
    (`ensemble-<method>-<members>`, or `ensemble-<method>`: the latest of that method)."""
    folder = run.find_ensemble(using) if using.startswith("ensemble-") else run.preds_dir(
        using)
    if not (folder / CV_JSON).exists():
        raise CompError(f"{folder}: no finished model or ensemble {using!r}; finished: "
                        f"{run.finished_names()}")
    return folder


def prediction_set(cfg: DictConfig, run: RunDir, using: str, lite_cache: Path | None
                   ) -> tuple[PathPredictor, list[str]]:
    """(a function image files -> probabilities, classes) of `using` (a model id or an
    ensemble entry), its models built once: every call predicts with the same built
    folds (the API's `Competition.predictor`), where stage=predict makes one call.
    Converted frozen networks are kept in `lite_cache` (None: converted again each
    time they are built)."""
    folder = prediction_folder(run, using)
    info = read_json(folder / CV_JSON)
    classes = info["classes"]
    if not info.get("labels", True):
        raise CompError(f"predict.using={using}: its scores are rank averages, not "
                        "probabilities (AUC only, never a submission); use another ensemble "
                        "method or a model")
    if not is_ensemble(info):
        return model_predictor(cfg, run, using, len(classes), lite_cache), classes
    members = [model_predictor(cfg, run, m, len(classes), lite_cache) for m in info["models"]]
    method, state = METHODS[info["method"]], joblib.load(folder / ENSEMBLE_STATE)

    def predict(paths: list[Path]) -> np.ndarray:
        return method.apply(np.stack([member(paths) for member in members]), state)

    return predict, classes


def predict_paths(cfg: DictConfig, run: RunDir, using: str, paths: list[Path]
                  ) -> tuple[np.ndarray, list[str]]:
    """(probabilities, classes) of `using` (a model id or an ensemble entry) on `paths`."""
    # with predict.output set nothing is written into the run directory (it may be
    # read-only): the frozen networks are converted again instead of kept there
    predict, classes = prediction_set(cfg, run, using,
                                      None if cfg.predict.output else run.lite_cache)
    return predict(paths), classes


def prediction_frame(ids: list, probs: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """Predictions as a frame: id, label (the most probable class), p_<class>... ."""
    frame = probs_frame(ids, probs, classes)
    frame.insert(1, "label", [classes[i] for i in probs.argmax(1)])
    return frame


def input_images(path: Path, pixel_dir: Path | None = None, pixel_order: str = "auto",
                 trained_order: str | None = None) -> dict[str, Path]:
    """The image files of `path` by id: a file (its name), a folder (its images' names)
    or a folder of sub-folders only (test/<class>/<image>: `<sub-folder>/<file name>`),
    the names checked to be plain; or a pixel CSV's rows (comp.data.pixels), written as
    PNGs under `pixel_dir` once, by its ids, a colour row's values in the order the run
    read its own rows in (`trained_order`) unless `pixel_order` says otherwise
    (comp.data.folder.pixel_csv_images)."""
    if path.is_file() and path.suffix.lower() == ".csv":
        if not is_pixel_csv(path):
            raise CompError(f"predict.input={path}: a CSV without pixel columns "
                            "(pixel0,... or 1x1,...); give an image file, a folder of them "
                            "or a CSV of pixel rows")
        if pixel_dir is None:
            raise ValueError(f"{path} holds pixel rows: give pixel_dir, where their images go")
        return pixel_csv_images(path, pixel_dir, pixel_order, trained_order)
    if path.is_file():
        files = {path.name: path}
    elif path.is_dir():
        files = images_in(path)
    else:
        raise CompError(f"predict.input={path}: no such file or folder")
    if not files:
        raise CompError(f"predict.input={path}: no image files in it")
    for file in files.values():
        check_id(file.name, str(path))
    return dict(sorted(files.items()))


def _cv_info(folder: Path, metric: str) -> dict:
    """cv.json of a prediction set, its scores recomputed where it predates `metric`."""
    info = read_json(folder / CV_JSON)
    return info if metric in info["cv"] else read_prediction_set(folder).info


def submitted_metric(run: RunDir, metric: str) -> str:
    """submit.metric `metric`, with `auto` (comp.submission.submission_metric) as
    stage=submit resolved it for this run (its selection.json; accuracy before any
    submit): stage=predict and stage=export read the run directory, not the folder."""
    if metric != AUTO_METRIC:
        return metric
    recorded = read_json(run.selection_json) if run.selection_json.exists() else {}
    return recorded.get("metric", "accuracy")


def best_prediction_set(run: RunDir, rank_by: str) -> str:
    """The name of the finished model or ensemble that stage=submit ranks first: the entry
    it picked (selection.json, comp.selection.pick_round) where that is still a current
    entry or round 0's, else the best CV `rank_by` score (comp.selection.ranking_metric) among those
    that give probabilities, each model at its latest pseudo-label round."""
    selected = read_json(run.selection_json) if run.selection_json.exists() else None
    current = current_sets(run.prediction_sets(),  # the entries stage=submit ranked
                           averaged=bool(selected and selected.get("average_fits")))
    sets = {info.get("model_id") or info["name"]: info["cv"]
            for info in (_cv_info(p, rank_by) for p in current)
            if info.get("labels", True)}
    if not sets:
        raise CompError(f"{run.root}: no finished models; run stage=train first")
    if selected is not None:
        kept = {info.get("model_id") or info["name"]  # round 0's pick, where it stayed
                for info in map(read_json, (p / CV_JSON for p in
                                            round_zero_sets(run.prediction_sets())))}
        if (selected.get("rank_by") == rank_by
                and selected.get("final_choice") in set(sets) | kept):
            return selected["final_choice"]
    return best_entry(sets, rank_by)


def model_predictor(cfg: DictConfig, run: RunDir, model_id: str, n_classes: int,
                    lite_cache: Path | None) -> PathPredictor:
    """One trained model's saved folds, built once: a function image files ->
    fold-averaged TTA probabilities."""
    spec = load_spec(cfg, run, model_id)
    return PREDICTORS[type(spec)](cfg, spec, run.model_dir(model_id), n_classes, lite_cache)


def _finetuned_predictor(cfg: DictConfig, spec: ModelSpec, model_dir: Path, n_classes: int,
                         lite_cache: Path | None) -> PathPredictor:
    settings = decoding(cfg)
    predictor = FinetunedPredictor(spec, model_dir, n_classes, lite_cache)

    def predict(paths: list[Path]) -> np.ndarray:
        return predictor(load_images([str(p) for p in paths], spec.image_size,
                                     settings.max_pixels, desc=f"decode {spec.image_size}px",
                                     intensity_range=settings.intensity_range))

    return predict


def _classic_predictor(cfg: DictConfig, spec: ClassicSpec, model_dir: Path, n_classes: int,
                       lite_cache: Path | None) -> PathPredictor:
    from comp.training.classic import embed_images, part_encoders

    settings = decoding(cfg)
    encoders = part_encoders(spec, lite_cache)
    estimators = [joblib.load(path / FOLD_ESTIMATOR)
                  for path in fold_paths(model_dir, FOLD_ESTIMATOR).values()]

    def predict(paths: list[Path]) -> np.ndarray:
        features = embed_images(spec, [str(p) for p in paths], settings, encoders=encoders)
        return classic_probabilities(estimators, features, n_classes)

    return predict


def classic_probabilities(estimators: list, features: np.ndarray, n_classes: int
                          ) -> np.ndarray:
    """The mean over a classic model's fold `estimators` of their view-averaged
    probabilities on (V, N, D) embeddings."""
    total = np.zeros((features.shape[1], n_classes))
    for estimator in estimators:
        total += view_average_proba(estimator, features, n_classes,
                                    np.asarray(estimator.classes_))
    return total / len(estimators)


class FinetunedPredictor:
    """A fine-tuned model's saved folds, built once, to predict decoded images any number
    of times: the backbone's frozen prefix for each cut its folds use (all of them, unless
    tuning gave folds different unfreeze points; on a CPU its TFLite form from
    `lite_cache` where stored) and one head per build with its batch norms folded, each
    fold's weights read once and swapped in where folds share a head (no new copy, no new
    trace: comp.models.build.refold_batch_norms). A call runs the prefix once per image
    and view for every fold that shares it, then each fold's head on those features."""

    def __init__(self, spec: ModelSpec, model_dir: Path, n_classes: int,
                 lite_cache: Path | None = None):
        backbone = get_backbone(spec.backbone)
        self.n_classes = n_classes
        # per cut and TTA views: the split backbone, its prefix's encoder, the views
        self.encoders: dict[str, tuple[SplitBackbone, Encoder, tuple[int, ...]]] = {}
        self.heads: dict[tuple, list] = {}  # per build: [trained, folded, fold it holds]
        self.folds: list[tuple[str, tuple, list, list[int]]] = []
        for fold in progress(list(fold_paths(model_dir)), desc=f"load {model_dir.name}"):
            fold_spec = spec.for_fold(fold)
            plan = ViewPlan.from_augment(fold_spec.augment)
            key = f"{fold_spec.model.unfreeze}|{plan.tta}"
            if key not in self.encoders:
                with model_scope(spec.compute):
                    base = build_backbone(backbone, spec.image_size, spec.weights,
                                          spec.train.seed)
                    split = split_backbone(base, backbone, fold_spec.model.unfreeze)
                self.encoders[key] = (split, Encoder(split.prefix, backbone.preprocess,
                                                     lite_folder(backbone, lite_cache)),
                                      plan.tta)
            split = self.encoders[key][0]
            # the head's build: what its layers and weights' shapes depend on (not dropout)
            build = (key, fold_spec.model.pooling, fold_spec.model.dense_units)
            if build not in self.heads:
                with model_scope(spec.compute):
                    trained = create_head(split, fold_spec, n_classes, 0, online=False)
                trained.load_weights(fold_path(model_dir, fold) / FOLD_WEIGHTS)
                # the trained body's batch norms too: it predicts only
                self.heads[build] = [trained, fold_batch_norms(trained), fold]
            else:
                self.heads[build][0].load_weights(fold_path(model_dir, fold) / FOLD_WEIGHTS)
                self.heads[build][2] = None  # holds this fold's weights, unfolded
            positions = list(range(len(plan.tta)))  # view 0, the image itself, comes first
            if recorded_views(fold_path(model_dir, fold)) == IDENTITY:
                positions = positions[:1]
            self.folds.append((fold, build, self.heads[build][0].get_weights(), positions))

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Fold-averaged TTA probabilities on decoded `images` (N, size, size, 3)."""
        features = {key: compute_features(images, encoder, ViewSet(tta))
                    for key, (_, encoder, tta) in self.encoders.items()}
        total = np.zeros((len(images), self.n_classes))
        for fold, build, weights, positions in self.folds:
            head = self.heads[build]
            if head[2] != fold:  # another fold's weights: this fold's, folded the same way
                head[0].set_weights(weights)
                refold_batch_norms(head[0], head[1])
                head[2] = fold
            total += predict_tta(head[1], features[build[0]], positions)
        return total / len(self.folds)


def predict_images(spec: ModelSpec, model_dir: Path, images: np.ndarray,
                   n_classes: int, lite_cache: Path | None = None) -> np.ndarray:
    """Fold-averaged TTA probabilities of the model in `model_dir` on decoded `images`
    (FinetunedPredictor, built for this one call)."""
    return FinetunedPredictor(spec, model_dir, n_classes, lite_cache)(images)


def load_spec(cfg: DictConfig, run: RunDir, model_id: str) -> ModelSpec | ClassicSpec:
    """The spec recorded in spec.json, with its weight file found again on this machine."""
    recorded = read_json(run.model_dir(model_id) / SPEC_JSON)
    kind = spec_class(recorded)
    source = kind.weights_source(recorded)
    if recorded["weights"] in ("random-init", "none") or source == "pixels":
        weights = ResolvedWeights(None, recorded["weights"])
    else:
        backbone = get_backbone(source)
        weights = resolve_weights(backbone, recorded["image_size"], cfg.weights,
                                  cfg.weights_dir)
        if weights.identity != recorded["weights"]:
            raise CompError(
                f"{weights.path}: not the weight file {model_id} was trained with "
                f"({recorded['weights']}); point weights_dir or weights= at that file")
    return kind.from_json(recorded, weights, OmegaConf.to_container(cfg.compute, resolve=True))


# per spec class: how its finished folds are built to predict new images
PREDICTORS = {ModelSpec: _finetuned_predictor, ClassicSpec: _classic_predictor}
