"""Model specs: everything that changes a model's weights, and the model id it hashes to."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

import numpy as np
from omegaconf import DictConfig, OmegaConf

from comp.artifacts import fingerprint
from comp.config import (
    SETTINGS,
    AugmentSettings,
    ModelSettings,
    TrainSettings,
    frozen_sections,
    model_settings,
)
from comp.models.registry import get_backbone
from comp.models.weights import ResolvedWeights, resolve_weights
from comp.training.compute import MODEL_KEYS, check


@dataclass(frozen=True)
class ModelSpec:
    """One model to train on every fold.

    `model_id` = backbone + a hash of backbone, input size, weight file identity, the
    model/train/augment settings, the folds and the pseudo-label source: two settings
    never share a folder, and unchanged settings find their finished folds again. A
    setting at None (off, or automatic) is left out of the hash, so a key added later
    with a None default keeps the ids, and the finished folds, of existing models.
    `model`, `train` and `augment` are read-only settings objects (comp.config.Settings:
    `spec.train.lr`); a key an older spec.json lacks is absent from the hash.
    """

    backbone: str
    image_size: int
    weights: ResolvedWeights
    model: ModelSettings
    train: TrainSettings
    augment: AugmentSettings
    folds_key: str
    pseudo: dict | None = None
    fold_params: dict | None = None  # tuned: {"<fold>": {"section.key": value}}
    compute: dict | None = None  # precision, jit_compile, distribute (comp.training.compute)
    kind = "finetune"

    @property
    def model_id(self) -> str:
        hashed = self.identity()
        for section in SETTINGS:
            hashed[section] = {k: v for k, v in hashed[section].items() if v is not None}
        return f"{self.backbone}-{fingerprint(hashed)}"

    def identity(self) -> dict:
        """The settings that make the model id (those at None are not hashed)."""
        identity = {
            "backbone": self.backbone, "image_size": self.image_size,
            "weights": self.weights.identity, "model": self.model.as_dict(),
            "train": self.train.as_dict(), "augment": self.augment.as_dict(),
            "folds": self.folds_key, "pseudo": self.pseudo,
        }
        if self.fold_params is not None:
            identity["fold_params"] = self.fold_params
        if self.precision != "float32":  # changes the numbers; XLA and replicas do not
            identity["precision"] = self.precision
        return identity

    @property
    def precision(self) -> str:
        return (self.compute or {}).get("precision", "float32")

    def features_key(self) -> str:
        """Specs with equal keys train on the same features (same cut and training views)."""
        return json.dumps([self.model.unfreeze, self.augment.as_dict()], sort_keys=True)

    @staticmethod
    def weights_source(recorded: dict) -> str:
        """The backbone whose weight file the spec.json `recorded` was trained with."""
        return recorded["backbone"]

    def for_fold(self, fold: int) -> ModelSpec:
        """The settings that train `fold`: with that fold's tuned params applied."""
        if self.fold_params is None:
            return self
        return with_params(replace(self, fold_params=None), self.fold_params[str(fold)])

    def describe(self) -> dict:
        """What spec.json records: the identity plus where the weights came from."""
        return {"model_id": self.model_id, **self.identity(), "compute": self.compute,
                "weights_path": str(self.weights.path) if self.weights.path else None}

    @classmethod
    def from_json(cls, recorded: dict, weights: ResolvedWeights,
                  compute: dict | None = None) -> ModelSpec:
        """The spec that describe() recorded, with `weights` found again and this
        machine's compute options (the recorded precision kept: it changes the numbers).
        A setting the recording lacks (an older comp's) reads as its default and stays
        out of the id (comp.config.Settings.from_dict)."""
        where = f"{recorded.get('model_id', recorded['backbone'])} spec.json"
        sections = {name: settings.from_dict(recorded[name], f"{where} {name}")
                    for name, settings in SETTINGS.items()}
        return cls(recorded["backbone"], recorded["image_size"], weights,
                   folds_key=recorded["folds"], pseudo=recorded["pseudo"],
                   fold_params=recorded.get("fold_params"),
                   compute={**{k: v for k, v in (compute or {}).items() if k in MODEL_KEYS},
                            "precision": recorded.get("precision", "float32")},
                   **sections)


def lineage(spec: ModelSpec | ClassicSpec) -> str:
    """The model id `spec`'s settings have without pseudo-labels: what a pseudo-label
    round's model replaces (comp.predictions.superseded)."""
    return replace(spec, pseudo=None).model_id


def labelled_epochs(spec: ModelSpec | ClassicSpec) -> bool:
    """Whether `spec` (a pseudo-label round's fine-tune) takes as many batches an epoch
    as its labelled rows make (pseudo.epoch_rows=labelled; comp.rounds marks it in the
    spec's pseudo settings, so in its id), not one pass over all its rows."""
    return (spec.pseudo or {}).get("epoch_rows") == "labelled"


def with_params(spec: ModelSpec, params: dict) -> ModelSpec:
    """`spec` with flat {"section.key": value} settings (model/train/augment) replaced
    (dataclasses.replace: `spec` itself is left as it is)."""
    changes: dict[str, dict] = {}
    for dotted, value in params.items():
        section, key = dotted.split(".", 1)
        if section not in SETTINGS:
            raise KeyError(f"{dotted}: not a model, train or augment setting")
        changes.setdefault(section, {})[key] = value
    return replace(spec, **{section: getattr(spec, section).replaced(values)
                            for section, values in changes.items()})


def native_side(paths: list[str], sample: int = 200) -> int | None:
    """The median side (the longer one) of the first `sample` images: their headers only."""
    from PIL import Image

    sides = []
    for path in paths[:sample]:
        try:
            with Image.open(path) as img:
                sides.append(max(img.size))
        except OSError:
            continue
    return int(np.median(sides)) if sides else None


def auto_size(default: int, minimum: int, native: int | None, upsample: int) -> int:
    """The input size when none is set: the backbone's default, or for images smaller
    than that, `upsample` times their side (at least the backbone's minimum): a 32 px
    image is not upsampled 7 times to feed a 224 px network."""
    if not native or native >= default:
        return default
    return int(min(default, max(minimum, upsample * native)))


def backbone_size(backbone, native: int | None) -> int:
    """auto_size for `backbone` (its default size, minimum and upsampling)."""
    return auto_size(backbone.default_size, backbone.min_size, native, backbone.upsample)


def make_spec(cfg: DictConfig, backbone_name: str, folds_key: str,
              pseudo: dict | None = None, params: dict | None = None,
              native: int | None = None) -> ModelSpec:
    """The spec of `backbone_name` under `cfg` (+ backbone_overrides, + `params`, a flat
    {"section.key": value} mapping such as tuned settings); `native` is the images' side,
    for the automatic input size."""
    backbone = get_backbone(backbone_name)
    settings = model_settings(cfg, backbone_name)
    for dotted, value in (params or {}).items():
        OmegaConf.update(settings, dotted, value, merge=False)
    sections = frozen_sections(settings)
    size = sections["model"].image_size or backbone_size(backbone, native)
    weights = resolve_weights(backbone, size, cfg.weights, cfg.weights_dir)
    return ModelSpec(backbone_name, int(size), weights, folds_key=folds_key, pseudo=pseudo,
                     compute=check(OmegaConf.to_container(cfg.compute, resolve=True),
                                   amx_bfloat16=backbone.amx_bfloat16),
                     **sections)


@dataclass(frozen=True)
class ClassicSpec:
    """A classic head (scikit-learn) on cached embeddings, trained on every fold like a
    fine-tuned model. `source` names the embeddings, one or more parts, each
    `<name>@<size>`: `pixels`, `color` (colour histograms) or a backbone (pooled at
    `depths`, with `weights`); the parts (joined by `+`) are concatenated.

    `model_id` = `<source>+<head>-<hash>` of everything that changes its predictions.
    """

    source: str
    head: str
    image_size: int  # the first part's size
    depths: tuple[str, ...]
    weights: ResolvedWeights
    views: str  # none | flips | dihedral: training views, and TTA at prediction
    inner_folds: int  # inner group K-fold that picks the head's regularisation
    folds_key: str
    pseudo: dict | None = None
    seed: int = 0
    fold_params: None = None
    regularisation: str = "average"  # average | best: over the head's grid (see config)
    depth_choice: bool = False  # the inner CV also chooses the pooled depths
    kind = "classic"

    @property
    def parts(self) -> list[tuple[str, int]]:
        """(name, size) of each embedding part."""
        return [(name, int(size)) for name, _, size in
                (part.partition("@") for part in self.source.split("+"))]

    @property
    def backbone(self) -> str:
        return f"{self.source}+{self.head}"

    @property
    def model_id(self) -> str:
        return f"{self.backbone}-{fingerprint(self.identity())}"

    def features_key(self) -> str:
        """Specs with equal keys share their embeddings."""
        return json.dumps(self.feature_identity(), sort_keys=True)

    @staticmethod
    def weights_source(recorded: dict) -> str:
        """The backbone part of the recorded embeddings (`pixels` where there is none)."""
        return next((part.partition("@")[0] for part in recorded["source"].split("+")
                     if part.partition("@")[0] not in ("pixels", "color")), "pixels")

    def feature_identity(self) -> dict:
        """What the embeddings depend on (shared by heads on the same features)."""
        return {"source": self.source, "image_size": self.image_size,
                "depths": list(self.depths), "weights": self.weights.identity,
                "views": self.views}

    def identity(self) -> dict:
        return {**self.feature_identity(), "head": self.head, "inner_folds": self.inner_folds,
                "regularisation": self.regularisation,
                **({"depth_choice": True} if self.depth_choice else {}),
                "folds": self.folds_key, "pseudo": self.pseudo, "seed": self.seed,
                "kind": self.kind}

    def for_fold(self, fold: int) -> ClassicSpec:
        return self

    def describe(self) -> dict:
        return {"model_id": self.model_id, **self.identity(),
                "weights_path": str(self.weights.path) if self.weights.path else None}

    @classmethod
    def from_json(cls, recorded: dict, weights: ResolvedWeights,
                  compute: dict | None = None) -> ClassicSpec:
        """The spec recorded by describe(), with its weights found again (`compute` is for
        fine-tuned models only)."""
        return cls(recorded["source"], recorded["head"], recorded["image_size"],
                   tuple(recorded["depths"]), weights, recorded["views"],
                   recorded["inner_folds"], recorded["folds"], recorded["pseudo"],
                   recorded["seed"],
                   regularisation=recorded.get("regularisation", "best"),
                   depth_choice=recorded.get("depth_choice", False))


# the one place a model kind (spec.json's "kind"; fine-tuned when absent) names its class
SPECS: dict[str, type[ModelSpec] | type[ClassicSpec]] = {
    ModelSpec.kind: ModelSpec, ClassicSpec.kind: ClassicSpec}


def spec_class(recorded: dict) -> type[ModelSpec] | type[ClassicSpec]:
    """The spec class of a recorded spec.json."""
    return SPECS[recorded.get("kind", ModelSpec.kind)]


def make_classic_spec(cfg: DictConfig, entry: str, folds_key: str,
                      pseudo: dict | None = None, native: int | None = None) -> ClassicSpec:
    """The spec of a `classic.models` entry `<part>[+<part>...]+<head>` under `cfg`."""
    from comp.errors import CompError
    from comp.models.heads import get_head
    from comp.training.embeddings import COLOR, COLOR_SIZE, PIXELS, depth_names

    features, _, head = entry.rpartition("+")
    if not head or not features:
        raise CompError(f"config: classic.models entry {entry!r}; write <features>+<head>, "
                        "e.g. mobilenet_025+logreg, pixels+svm_rbf or "
                        "mobilenet_025@448+color+logreg")
    get_head(head)
    settings = cfg.classic
    parts, depths, weights = [], (), ResolvedWeights(None, "none")
    for part in features.split("+"):
        name, _, at = part.partition("@")
        scale = 1
        if at.endswith("x") and at[:-1].isdigit():  # @2x: twice the automatic size
            scale, at = int(at[:-1]), ""
        if at and not at.isdigit():
            raise CompError(f"config: classic.models entry {entry!r}; after @ give a size in "
                            "pixels or a multiple of the automatic size, e.g. "
                            "mobilenet_025@448+logreg or mobilenet_025@2x+logreg")
        if name == PIXELS:
            size = int(at or settings.pixels_size)
        elif name == COLOR:
            size = int(at or COLOR_SIZE)
        else:
            if depths:
                raise CompError(f"config: classic.models entry {entry!r}: at most one "
                                "backbone per entry")
            backbone = get_backbone(name)
            size = int(at or scale * (settings.image_size or backbone_size(backbone, native)))
            depths = tuple(depth_names(backbone, settings.depths))
            if size < backbone.min_size:
                raise CompError(f"config: classic.models entry {entry!r}: {name} takes images "
                                f"of at least {backbone.min_size} px, not {size}; give "
                                f"{name}@{backbone.min_size} or larger")
            weights = resolve_weights(backbone, size, cfg.weights, cfg.weights_dir)
        if size < 1:
            raise CompError(f"config: classic.models entry {entry!r}: size {size} after @; "
                            "give a positive size, e.g. pixels@32")
        parts.append(f"{name}@{size}")
    return ClassicSpec("+".join(parts), head, int(parts[0].partition("@")[2]), depths,
                       weights, settings.views, int(settings.inner_folds), folds_key, pseudo,
                       int(cfg.train.seed), regularisation=settings.regularisation,
                       depth_choice=bool(settings.depth_choice))
