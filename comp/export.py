"""stage=export: one trained model as a full, plain Keras model (no comp needed to run it).

The exported model takes RGB images at the model's input size (values 0..255, uint8 or
float, shape (N, size, size, 3)) and returns class probabilities. Inside it: the
backbone's preprocessing (as a fixed 1x1 convolution: every keras.applications
preprocessing is a per-pixel affine map), the frozen prefix, and for each fold that
fold's trained body and head; the folds' probabilities are averaged. With
`export.tta=true` (the default) the model's TTA views (flips / 90-degree rotations)
are taken inside the graph too and averaged, as stage=predict does, so the export gives
comp's own predictions; `export.tta=false` takes the image alone. The frozen prefix's
output is rounded to float16, as in comp's feature cache that the heads were trained and
evaluated on, so the export reproduces stage=predict's probabilities.

Writes `model.keras`, `saved_model/` (Keras 3 `Model.export`), optionally
`model.tflite`, `classes.json`, `MODEL_CARD.md` and `exported.json` (the model and
settings inside, so a second call with the same ones does nothing), into a temporary
folder that then takes the export folder's place (artifacts.atomic_dir: an interrupted
export leaves the earlier one whole). An ensemble whose members are all fine-tunes of one
backbone at one input size (a model's fits averaged over the pseudo-label rounds,
`pseudo.average_fits`, the usual rank 1 after a round) is exported the same way: each
member's fold average, then the ensemble's weights over the members, the frozen prefix
run once. Other ensembles (classic heads, several backbones) are not exported yet.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from comp import __version__
from comp.artifacts import (
    atomic_dir,
    ensure_free_space,
    file_sha256,
    read_json,
    write_json,
    write_text,
)
from comp.errors import CompError
from comp.log import get_logger
from comp.models.registry import get_backbone
from comp.predictions import current_sets, is_ensemble, is_keras_model
from comp.selection import best_entry, ranking_metric
from comp.training.features import is_identity_preprocess
from comp.workspace import (
    CV_JSON,
    EXPORTED_JSON,
    FOLD_WEIGHTS,
    SPEC_JSON,
    RunDir,
    fold_paths,
    run_dir,
)


@dataclass(frozen=True)
class Exported:
    """What stage=export wrote into `out`: the model `model_id`, taking `size` x `size`
    images and averaging over the dihedral `views`."""

    model_id: str
    size: int
    views: tuple[int, ...]
    out: Path
    members: tuple[str, ...] = ()  # the fine-tuned models inside; () : model_id alone

    @property
    def models(self) -> tuple[str, ...]:
        return self.members or (self.model_id,)


def export_model(cfg: DictConfig) -> Path:
    """Export `export.using` (default: the entry stage=submit ranks first, or the best
    fine-tuned model where that is an ensemble or a classic head); the folder."""
    from comp.inference import submitted_metric

    run = run_dir(cfg.runs_dir, cfg.name, writable=not cfg.export.output)
    model_id, note = (cfg.export.using, None) if cfg.export.using else export_choice(
        run, ranking_metric(submitted_metric(run, cfg.submit.metric), cfg.submit.rank_by))
    if note:
        get_logger().info("export: %s", note)
    info, members, weights = export_members(run, model_id)
    suffix = "" if cfg.export.tta else "-notta"
    out = Path(cfg.export.output) if cfg.export.output else (
        run.export_dir(f"{model_id}{suffix}"))
    what = {"model_id": model_id, "tta": bool(cfg.export.tta),
            "tflite": bool(cfg.export.tflite), "comp": __version__}
    if (out / EXPORTED_JSON).exists() and read_json(out / EXPORTED_JSON) == what:
        get_logger().info("export: %s is already there (the same model and settings); "
                          "delete it to export again", out)
        return out
    model, size, views = build_export_model(cfg, run, members, len(info["classes"]),
                                            cfg.export.tta, weights)
    from comp.models.build import weight_bytes

    ensure_free_space(out, 3 * weight_bytes(model))  # .keras, SavedModel, TFLite
    with atomic_dir(out) as folder:  # a kill leaves the earlier export whole, or none
        model.save(folder / "model.keras")
        model.export(str(folder / "saved_model"), verbose=False)
        if cfg.export.tflite:
            _write_tflite(folder / "saved_model", folder / "model.tflite")
        write_json(folder / "classes.json", info["classes"])
        write_text(folder / "MODEL_CARD.md",
                   model_card(run, info, Exported(model_id, size, views, folder,
                                                  tuple(members) if is_ensemble(info)
                                                  else ()), note))
        write_json(folder / EXPORTED_JSON, what)  # what is inside, for the next call
    folds = sum(len(_folds(run.model_dir(member))) for member in members)
    get_logger().info("export: %s (%s%d folds%s) -> %s", model_id,
                      f"{len(members)} fine-tuned models, " if len(members) > 1 else "",
                      folds, f", TTA over {len(views)} views" if len(views) > 1 else "", out)
    return out


def export_members(run: RunDir, name: str) -> tuple[dict, list[str], list[float]]:
    """What exporting entry `name` takes: (its cv.json, the fine-tuned models inside, their
    weights). A fine-tuned model is itself; an ensemble its members and weights where
    every member is a fine-tuned model of one backbone at one input size (a model's fits
    over the rounds, `ensemble-fits-...`); anything else is refused in one line."""
    from comp.inference import prediction_folder

    if not name.startswith("ensemble-") and not (run.preds_dir(name) / CV_JSON).exists():
        raise CompError(f"{run.preds_dir(name) / CV_JSON}: no finished model {name!r}; "
                        f"finished fine-tuned models: {run.finished_names(is_keras_model)}")
    info = read_json(prediction_folder(run, name) / CV_JSON)
    if not is_ensemble(info):
        if not is_keras_model(info):
            raise CompError(f"export.using={name}: only fine-tuned models are exported as "
                            "Keras models (classic heads are scikit-learn: use stage=predict)")
        return info, [name], [1.0]
    members = list(info.get("models", []))
    found = {m: read_json(p) for m in members if (p := run.preds_dir(m) / CV_JSON).exists()}
    specs = {m: read_json(run.model_dir(m) / SPEC_JSON) for m in members
             if m in found and is_keras_model(found[m])
             and (run.model_dir(m) / SPEC_JSON).exists()}
    shapes = {(spec["backbone"], spec["image_size"]) for spec in specs.values()}
    if not members or len(specs) < len(members) or len(shapes) != 1:
        kinds = sorted({found[m].get("model_kind", "?") if m in found else "missing"
                        for m in members} | {b for b, _ in shapes})
        raise CompError(f"export.using={name}: an ensemble is exported only where its members "
                        f"are fine-tunes of one backbone at one input size (this one holds "
                        f"{', '.join(kinds)}); give export.using=<model_id> of a fine-tuned "
                        "model (see the leaderboard) or use stage=predict")
    weights = info.get("weights") or {}
    return info, members, [float(weights.get(m, 1.0 / len(members))) for m in members]


def export_choice(run: RunDir, metric: str) -> tuple[str, str | None]:
    """The entry stage=export takes by default: (rank 1, None) where the leaderboard's
    rank 1 (best by the CV `metric` that ranks, comp.selection.ranking_metric, under the
    one-SE rule: comp.inference.best_prediction_set) exports as one Keras model
    (`export_members`); else (the best entry that does, a sentence saying why rank 1 was
    not exported)."""
    from comp.inference import best_prediction_set, prediction_folder

    first = best_prediction_set(run, metric)  # round 0's pick where it stayed rank 1
    info = read_json(prediction_folder(run, first) / CV_JSON)
    try:
        export_members(run, first)
        return first, None
    except CompError:
        pass
    exportable = exportable_entries(run)
    what = ("an ensemble of other models than fine-tunes of one backbone" if is_ensemble(info)
            else "a classic (scikit-learn) head")
    if not exportable:
        raise CompError(f"{run.root}: no finished fine-tuned model to export; set backbones "
                        "and run stage=train")
    best = best_entry(exportable, metric)
    return best, (f"rank 1 on the leaderboard is {first}, {what}, which is not one Keras "
                  f"model; exported the best entry that is, {best}, instead "
                  f"(CV {metric} {exportable[best][metric]:.4f} against "
                  f"{info['cv'][metric]:.4f})")


def exportable_entries(run: RunDir) -> dict[str, dict]:
    """{name: CV scores} of the leaderboard's entries (as stage=submit ranked them: each
    model at its latest round, a fine-tune's fits averaged where selection.json says so)
    that export as one Keras model: fine-tuned models, and ensembles of one backbone's
    fine-tunes (`export_members`)."""
    selected = read_json(run.selection_json) if run.selection_json.exists() else None
    out = {}
    for folder in current_sets(run.prediction_sets(),
                               averaged=bool(selected and selected.get("average_fits"))):
        info = read_json(folder / CV_JSON)
        name = info.get("model_id") or info.get("name")
        if not info.get("labels", True) or not name:
            continue
        if is_keras_model(info) and info.get("model_id"):
            out[name] = info["cv"]
        elif is_ensemble(info):
            try:
                export_members(run, name)
            except CompError:
                continue
            out[name] = info["cv"]
    return out


def _folds(model_dir: Path) -> list[int]:
    return list(fold_paths(model_dir, FOLD_WEIGHTS))


def build_export_model(cfg: DictConfig, run: RunDir, members: list[str], n_classes: int,
                       tta: bool, weights: list[float] | None = None):
    """The Keras model of fine-tuned models `members` (one backbone, one input size): each
    one's fold average, then their mean weighted by `weights` (None: equal); (model,
    input size, dihedral views)."""
    import keras
    from keras import layers

    from comp.data.views import TTA_VIEWS
    from comp.inference import load_spec

    specs = [load_spec(cfg, run, member) for member in members]
    spec = specs[0]
    views = tuple(TTA_VIEWS[spec.augment.tta]) if tta else (0,)
    size = spec.image_size
    image = keras.Input((size, size, 3), name="image")
    backbone = get_backbone(spec.backbone)
    x = _preprocess_layer(backbone.preprocess, backbone.name)
    x = image if x is None else x(image)
    flip = _FlipW(size)
    shared: dict[str, list] = {}  # cut -> features per view: the frozen prefix runs once
    per_model = [_folds_average(run, member, member_spec, n_classes, (x, flip, views),
                                shared, "" if len(members) == 1 else f"fit{i}_")
                 for i, (member, member_spec) in enumerate(zip(members, specs, strict=True))]
    if len(per_model) == 1:
        probs = per_model[0]
    elif weights is None or len(set(weights)) == 1:
        probs = layers.Average(name="members")(per_model)
    else:
        total = sum(weights)
        probs = layers.Add(name="members")([
            layers.Rescaling(w / total, name=f"fit{i}_weight")(p)
            for i, (w, p) in enumerate(zip(weights, per_model, strict=True))])
    probs = layers.Identity(name="probabilities", dtype="float32")(probs)
    return keras.Model(image, probs, name=f"comp_{spec.backbone}"), size, views


def _folds_average(run: RunDir, model_id: str, spec, n_classes: int, inputs: tuple,
                   shared: dict[str, list], prefix: str):
    """`model_id`'s fold-averaged probabilities on the preprocessed image: each fold's
    views averaged first, then the folds, as stage=predict does (a fold that chose the
    image alone weighs as much as one that averages 8 views). `inputs` is (the
    preprocessed image, the width mirror, the views); `shared` holds each cut's frozen
    prefix features per view, built once for all the models."""
    from keras import layers

    from comp.models.build import build_backbone, split_backbone
    from comp.training.viewchoice import IDENTITY, recorded_views

    x, flip, views = inputs
    backbone = get_backbone(spec.backbone)
    folds = _folds(run.model_dir(model_id))
    if not folds:
        raise CompError(f"{run.model_dir(model_id)}: no trained fold weights to export")
    round_features = not is_identity_preprocess(backbone.preprocess)
    per_fold = []
    for fold in folds:
        fold_spec = spec.for_fold(fold)
        base = build_backbone(backbone, spec.image_size, spec.weights, spec.train.seed)
        split = split_backbone(base, backbone, fold_spec.model.unfreeze)
        if split.cut not in shared:
            shared[split.cut] = [_prefix_features(_dihedral(x, view, flip), split, round_features)
                                 for view in views]
        head = _fold_head(split, fold_spec, n_classes, run.fold_dir(model_id, fold),
                          f"{prefix}fold{fold}")
        fold_views = shared[split.cut]  # view 0, the image itself, comes first
        if recorded_views(run.fold_dir(model_id, fold)) == IDENTITY:
            fold_views = fold_views[:1]
        fold_probs = [head(features) for features in fold_views]
        per_fold.append(fold_probs[0] if len(fold_probs) == 1
                        else layers.Average(name=f"{prefix}fold{fold}_views")(fold_probs))
    return per_fold[0] if len(per_fold) == 1 else layers.Average(
        name=f"{prefix}average")(per_fold)


def _prefix_features(features, split, round_features: bool):
    """One view's input to the heads: the frozen prefix's output (if any), rounded to
    float16 where the feature cache stored it so."""
    from keras import layers

    if split.prefix is not None:
        features = split.prefix(features)
    if split.prefix is not None or round_features:
        # the feature cache stores float16: the heads saw these numbers
        features = layers.Identity(dtype="float16")(features)
    return features


def _fold_head(split, fold_spec, n_classes: int, fold_dir: Path, name: str):
    """A unit's trained body and head (its weights from `fold_dir`), named `name`."""
    import keras

    from comp.models.build import create_head

    head = create_head(split, fold_spec, n_classes, 0, online=False)
    head.load_weights(fold_dir / FOLD_WEIGHTS)
    return keras.Model(head.input, head.output, name=name)


def _preprocess_layer(preprocess, name: str):
    """keras.applications preprocessing as a fixed 1x1 convolution (None for identity)."""
    from keras import layers

    if is_identity_preprocess(preprocess):
        return None
    offset = preprocess(np.zeros((1, 3), np.float32)).astype(np.float64)[0]
    matrix = np.stack([preprocess(np.eye(3, dtype=np.float32)[c:c + 1] * 255.0)[0] - offset
                       for c in range(3)]) / 255.0  # row c: the output of input channel c
    probe = np.random.default_rng(0).uniform(0, 255, (64, 3)).astype(np.float32)
    if not np.allclose(preprocess(probe.copy()), probe @ matrix + offset, atol=1e-3):
        raise CompError(f"export: {name}'s preprocessing is not per-pixel affine; cannot "
                        "put it inside the model")
    conv = layers.Conv2D(3, 1, name="preprocess", trainable=False)
    conv.build((None, None, None, 3))
    conv.set_weights([matrix.reshape(1, 1, 3, 3).astype(np.float32),
                      offset.astype(np.float32)])
    return conv


class _FlipW:
    """Mirror along the width axis with built-in layers only (a fixed anti-identity
    Dense on the width axis), so the saved model loads in plain Keras."""

    def __init__(self, size: int):
        from keras import layers

        self.to_last = layers.Permute((1, 3, 2), name="to_width_last")
        self.back = layers.Permute((1, 3, 2), name="width_back")
        self.dense = layers.Dense(size, use_bias=False, trainable=False, name="mirror")
        self.dense.build((None, size))
        self.dense.set_weights([np.eye(size, dtype=np.float32)[::-1]])
        self.transpose = layers.Permute((2, 1, 3), name="transpose")

    def __call__(self, x):
        return self.back(self.dense(self.to_last(x)))


def _dihedral(x, view: int, flip: _FlipW):
    """comp.data.views.dihedral_view as layers: np.rot90(k=view % 4, axes=(1, 2)), then a
    width mirror for view >= 4."""
    k = view % 4
    if k == 1:
        x = flip.transpose(flip(x))
    elif k == 2:
        x = flip(flip.transpose(flip(flip.transpose(x))))
    elif k == 3:
        x = flip(flip.transpose(x))
    if view >= 4:
        x = flip(x)
    return x


def _write_tflite(saved_model: Path, target: Path) -> None:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    target.write_bytes(converter.convert())


def model_card(run: RunDir, info: dict, exported: Exported, note: str | None = None) -> str:
    """MODEL_CARD.md: what the model is, how good (CV), how to call it."""
    spec = read_json(run.model_dir(exported.models[0]) / SPEC_JSON)
    folds = {member: _folds(run.model_dir(member)) for member in exported.models}
    return (_card_summary(spec, info, exported, len(folds[exported.models[0]]), note)
            + _card_hashes(run, spec, exported, folds) + _card_versions()
            + _card_usage(exported))


def _card_summary(spec: dict, info: dict, exported: Exported, n_folds: int,
                  note: str | None) -> str:
    """The card's title and what the model takes, gives and scores."""
    cv, classes, views, size = info["cv"], info["classes"], exported.views, exported.size
    repeats = int(info.get("repeats", 1))
    scheme = f"{n_folds // repeats}-fold CV" + (
        f" repeated {repeats} times" if repeats > 1 else "")
    what = (f"A {spec['backbone']} fine-tuned by comp {__version__} with {scheme}, exported\n"
            f"as one Keras model that averages the {n_folds} fold models")
    if exported.members:
        weights = info.get("weights") or {}
        fits = ", ".join(f"`{m}`" + (f" (weight {weights[m]:.3g})" if m in weights else "")
                         for m in exported.members)
        what = (f"{len(exported.members)} fits of a {spec['backbone']} trained by comp "
                f"{__version__}: {fits}, each with {scheme}, exported\nas one Keras model "
                f"that averages each fit's {n_folds} fold models, then the fits by these weights")
    return f"""# {exported.model_id}

{what}{f" over {len(views)} TTA views (dihedral ids {list(views)})" if len(views) > 1 else ""}.

- **Input**: RGB images, shape `(N, {size}, {size}, 3)`, values 0..255 (uint8 or float);
  resize to {size}x{size} first. Preprocessing is inside the model.
- **Output**: class probabilities, shape `(N, {len(classes)})`, in the order of
  `classes.json`: {', '.join(f'`{c}`' for c in classes)}.
- **CV** (out-of-fold, {info.get('n_oof', '?')} images): accuracy {cv['accuracy']:.4f},
  macro-F1 {cv['macro_f1']:.4f}, balanced accuracy {cv['balanced_accuracy']:.4f},
  macro AUC {cv['auc']:.4f}, log loss {cv['log_loss']:.4f}.
- **Settings**: `spec.json` of the run; model settings {json.dumps(spec['model'])}.
{f"- **Why this model**: {note}." + chr(10) if note else ""}
"""


def _card_hashes(run: RunDir, spec: dict, exported: Exported,
                 folds: dict[str, list[int]]) -> str:
    fold_hashes = "\n".join(
        f"| {f'{member}/' if exported.members else ''}fold{k}/{FOLD_WEIGHTS} | "
        f"`{file_sha256(run.fold_dir(member, k) / FOLD_WEIGHTS)[:16]}` |"
        for member, member_folds in folds.items() for k in member_folds)
    return f"""## Hashes
| file | sha256 |
|---|---|
| model.keras | `{file_sha256(exported.out / 'model.keras')[:16]}` |
| backbone start weights | `{spec['weights']}` |
{fold_hashes}

"""


def _card_versions() -> str:
    import keras
    import tensorflow as tf

    return f"""## Versions
comp {__version__}, TensorFlow {tf.__version__}, Keras {keras.__version__},
Python {platform.python_version()}.

"""


def _card_usage(exported: Exported) -> str:
    """How to call the model with plain Keras, comp's decoding steps included."""
    size = exported.size
    return f"""## Use it with plain Keras (no comp needed)
```python
import json, numpy as np, keras
from PIL import Image, ImageOps
model = keras.saving.load_model("model.keras")
classes = json.load(open("classes.json"))
image = Image.open("x.png")
image.draft("RGB", ({size}, {size}))  # a JPEG decodes at a reduced scale, as in comp
image = ImageOps.exif_transpose(image).convert("RGB")
image = image.resize(({size}, {size}), Image.Resampling.BILINEAR, reducing_gap=3.0)
probs = model.predict(np.asarray(image)[None], verbose=0)[0]
print(classes[int(probs.argmax())], probs)
```
Or the SavedModel (TensorFlow Serving, `tf.saved_model.load("saved_model").serve(x)`){
    ", or `model.tflite` with the TFLite interpreter" if (exported.out / "model.tflite").exists()
    else ""}.
These are comp's own decoding steps for 8-bit RGB and grayscale images (comp's
predictions are reproduced to 1e-4); another resize gives slightly different
probabilities. 16-bit, float and transparent images follow comp's intensity rules
(`comp.data.images.decode_image`), which this snippet leaves out.
"""
