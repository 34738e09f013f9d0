"""One validation of the whole config, before any work, from one table of constraints.

In the style of scikit-learn's `_parameter_constraints`: `CONSTRAINTS` maps a dotted key
to what its value must be. Adding a rule is one line:

    "train.lr": Interval(0, None, closed="neither"),
    "train.optimizer": Options("sgd", "adam"),
    "tune.params": Each(Options(*TUNABLE)),

`validate(cfg)` (called by `comp.config.load_config`) checks every key of the table, and
the model/train/augment keys again for each backbone's merged `backbone_overrides`, and
raises one `CompError` line such as `config: train.lr=-1: must be > 0`.
`describe_constraint(key)` gives the allowed values as text (for --help and the README).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from comp.errors import CompError

# the names comp.tuning.SPACE can tune (kept here so validation never imports optuna;
# a test keeps the two in sync)
TUNABLE = (
    "model.dropout", "model.unfreeze", "model.bn_trainable", "model.dense_units", "train.lr",
    "train.lr_drop", "train.lr_every", "train.class_weight", "train.label_smoothing",
    "augment.random_views",
)
METRICS = ("accuracy", "auc", "macro_f1", "balanced_accuracy", "log_loss")
# qwk (quadratic weighted kappa) needs the class names: a submission metric, not a tuning one
SUBMIT_METRICS = (*METRICS, "qwk")
ENSEMBLE_METHODS = ("mean", "geometric", "weighted", "optuna", "greedy", "stacked", "rank")


class Constraint:
    """A rule a config value must follow: `check(value)` returns None or what is wrong."""

    def check(self, value: Any) -> str | None:  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass(frozen=True)
class Interval(Constraint):
    """A number in [low, high] (None: unbounded); `closed` is both|left|right|neither."""

    low: float | None
    high: float | None
    closed: str = "both"
    integer: bool = False

    def check(self, value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"must be a number, {self.describe()}"
        if self.integer and not float(value).is_integer():
            return "must be a whole number"
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be a finite number, {self.describe()}"
        left = self.closed in ("both", "left")
        right = self.closed in ("both", "right")
        if self.low is not None and (value < self.low if left else value <= self.low):
            return f"must be {'>=' if left else '>'} {self.low}"
        if self.high is not None and (value > self.high if right else value >= self.high):
            return f"must be {'<=' if right else '<'} {self.high}"
        return None

    def describe(self) -> str:
        kind = "a whole number" if self.integer else "a number"
        if self.low is not None and self.high is not None:
            lo, hi = "[" if self.closed in ("both", "left") else "(", \
                "]" if self.closed in ("both", "right") else ")"
            return f"{kind} in {lo}{self.low}, {self.high}{hi}"
        if self.low is not None:
            return f"{kind} {'>=' if self.closed in ('both', 'left') else '>'} {self.low}"
        if self.high is not None:
            return f"{kind} {'<=' if self.closed in ('both', 'right') else '<'} {self.high}"
        return kind


def Int(low: float | None = None, high: float | None = None, closed: str = "both") -> Interval:
    """A whole number in [low, high]."""
    return Interval(low, high, closed, integer=True)


@dataclass(frozen=True)
class Options(Constraint):
    """One of a fixed set of values (compared as text, so true/false/True match)."""

    values: tuple

    def __init__(self, *values: Any):
        object.__setattr__(self, "values", tuple(values))

    def check(self, value: Any) -> str | None:
        if str(value) in {str(v) for v in self.values} or str(value).lower() in {
                str(v).lower() for v in self.values if isinstance(v, bool)}:
            return None
        return f"use one of {self.describe()}"

    def describe(self) -> str:
        return "|".join(str(v) for v in self.values)


@dataclass(frozen=True)
class Optional(Constraint):
    """None, or a value that follows `inner`."""

    inner: Constraint

    def check(self, value: Any) -> str | None:
        return None if value is None else self.inner.check(value)

    def describe(self) -> str:
        return f"None or {self.inner.describe()}"


@dataclass(frozen=True)
class Each(Constraint):
    """A list whose every entry follows `inner` (entries named in the message)."""

    inner: Constraint
    unique: bool = True

    def check(self, value: Any) -> str | None:
        if not isinstance(value, (list, tuple, ListConfig)):
            return f"must be a list [a,b,...] of {self.inner.describe()}"
        for entry in value:
            problem = self.inner.check(entry)
            if problem:
                return f"entry {entry!r}: {problem}"
        if self.unique and len({str(v) for v in value}) < len(value):
            return "has a repeated entry"
        return None

    def describe(self) -> str:
        return f"a list of {self.inner.describe()}"


@dataclass(frozen=True)
class ExistingFile(Constraint):
    """None, or a path to an existing file."""

    def check(self, value: Any) -> str | None:
        if value is None or Path(str(value)).is_file():
            return None
        return "file not found; give the path of an existing file"

    def describe(self) -> str:
        return "an existing file"


@dataclass(frozen=True)
class NotAFolder(Constraint):
    """None, a path that is not an existing folder (a file to write), or a folder written
    with a trailing slash (a file is written into it)."""

    def check(self, value: Any) -> str | None:
        text = str(value)
        if value is not None and Path(text).is_dir() and not text.endswith(("/", os.sep)):
            return ("is an existing folder; give a file path such as out.csv, or the folder "
                    "with a trailing / to write <input>__<using>.csv into it")
        return None

    def describe(self) -> str:
        return "None, a file path, or a folder ending in /"


@dataclass(frozen=True)
class AnyOf(Constraint):
    """A value that follows at least one of `options`."""

    options: tuple

    def __init__(self, *options: Constraint):
        object.__setattr__(self, "options", tuple(options))

    def check(self, value: Any) -> str | None:
        problems = [c.check(value) for c in self.options]
        if any(p is None for p in problems):
            return None
        others = " or ".join(c.describe() for c in self.options[:-1])
        return f"{problems[-1]} (or use {others})"

    def describe(self) -> str:
        return " or ".join(c.describe() for c in self.options)


@dataclass(frozen=True)
class NonEmpty(Constraint):
    """A list with at least one entry, each following `inner`."""

    inner: Constraint

    def check(self, value: Any) -> str | None:
        if isinstance(value, (list, tuple, ListConfig)) and not value:
            return "needs at least one entry"
        return Each(self.inner).check(value)

    def describe(self) -> str:
        return f"a non-empty list of {self.inner.describe()}"


@dataclass(frozen=True)
class LowHigh(Constraint):
    """None, or a [low, high] pair of finite numbers with low < high."""

    def check(self, value: Any) -> str | None:
        if value is None:
            return None
        numbers = Each(Interval(None, None), unique=False)
        if (numbers.check(value) or len(value) != 2 or not value[0] < value[1]):
            return "give [low,high], two numbers with low < high"
        return None

    def describe(self) -> str:
        return "None or [low,high] with low < high"


@dataclass(frozen=True)
class Text(Constraint):
    """Non-empty text."""

    def check(self, value: Any) -> str | None:
        if not isinstance(value, str) or not value.strip():
            return "must be non-empty text"
        return None

    def describe(self) -> str:
        return "non-empty text"


FRACTION = Interval(0, 1)
POSITIVE = Interval(0, None, closed="neither")
SEED = Int(0)

# every model/train/augment key here is also checked per backbone (backbone_overrides)
CONSTRAINTS: dict[str, Constraint] = {
    "name": Text(),
    "backbones": Each(Text()),  # may be empty: classic models only (experiment=quick)
    "weights": AnyOf(Options("imagenet", "none"), ExistingFile()),
    "runs_dir": Text(),
    "submissions_dir": Text(),
    "data.dir": Text(),
    "data.folds": Int(2),
    "data.fold_seed": SEED,
    "data.repeats": Int(1),
    "data.dedup_max_distance": Int(0, 64),
    "data.max_image_pixels": Int(1, closed="both"),
    "data.intensity_range": LowHigh(),
    "data.id_column": Optional(Text()),
    "data.label_column": Optional(Text()),
    "model.image_size": Optional(Int(16)),
    "model.pooling": Options("avg", "max"),
    "model.dense_units": Int(0),
    "model.dropout": Interval(0, 1, closed="left"),
    "train.optimizer": Options("sgd", "adam", "adamw"),
    "train.lr": POSITIVE,
    "train.weight_decay": Interval(0, 1, closed="left"),
    "train.warmup": Int(0),
    "train.average_last": Int(0),
    "train.ema_momentum": Interval(0, 1, closed="neither"),
    "train.momentum": Interval(0, 1, closed="left"),
    "train.schedule": Options("step", "cosine", "constant"),
    "train.lr_drop": Interval(0, 1, closed="right"),
    "train.lr_every": Int(1),
    "train.epochs": Int(1),
    "train.patience": Int(0),
    "train.batch_size": Int(1),
    "train.class_weight": Options("balanced", "none"),
    "train.label_smoothing": Interval(0, 1, closed="left"),
    "train.seed": SEED,
    "train.epoch_choice": Options("inner", "last", "outer"),
    "train.stop_fraction": Interval(0, 0.5, closed="neither"),
    "classic.models": Each(Text()),
    "classic.depths": Each(Text()),
    "classic.image_size": Optional(Int(16)),
    "classic.pixels_size": Int(4, 512),
    "classic.views": Options("none", "flips", "dihedral"),
    "classic.inner_folds": Int(2),
    "classic.regularisation": Options("average", "best"),
    "augment.random_views": Int(0),
    "augment.rotation": FRACTION,
    "augment.zoom": Interval(0, 1, closed="left"),
    "augment.brightness": FRACTION,
    "augment.contrast": FRACTION,
    "augment.tta": Options("none", "flips", "dihedral"),
    "augment.online_shift": Interval(0, 0.5, closed="left"),
    "augment.online_rotation": Interval(0, 0.5),
    "augment.online_zoom": Interval(0, 1, closed="left"),
    "pseudo.round": Int(0),
    "pseudo.rounds": Int(0),
    "pseudo.splits": Each(Options("unlabeled", "test")),
    "pseudo.rule": Options("quota", "threshold"),
    "pseudo.fraction": Interval(0, 1, closed="right"),
    "pseudo.min_confidence": FRACTION,
    "pseudo.threshold": FRACTION,
    "pseudo.top_fraction": Interval(0, 1, closed="right"),
    "pseudo.class_cap": Interval(0, None, closed="neither"),
    "pseudo.temperature": POSITIVE,
    "pseudo.weight": Interval(0, None),
    "pseudo.truth": ExistingFile(),
    "tune.n_trials": Int(0),
    "tune.epochs": Int(1),
    "tune.inner_folds": Int(2),
    "tune.metric": Options(*METRICS),
    "tune.pruner": Options("median", "hyperband", "none"),
    "tune.seed": SEED,
    "tune.heartbeat_grace": Int(1),
    "tune.params": Each(Options(*TUNABLE)),
    "params": Options("default", "best"),
    "ensemble.methods": Each(Options(*ENSEMBLE_METHODS)),
    "ensemble.optuna_trials": Int(1),
    "time_limit": Optional(Int(1)),
    "predict.output": NotAFolder(),
    "only.fold": Optional(Int(0)),
    "plan.format": Options("lines", "slurm", "kubernetes"),
    "submit.metric": Options(*SUBMIT_METRICS),
    "submit.rank_by": Options("auto", *SUBMIT_METRICS),
    "compute.precision": Options("float32", "mixed_float16", "mixed_bfloat16"),
    "compute.jit_compile": Options("auto", True, False),
    "compute.distribute": Options("none", "mirrored"),
}

_PER_BACKBONE = ("model.", "train.", "augment.")


def validate(cfg: DictConfig) -> None:
    """Check every key of `CONSTRAINTS` in `cfg` (and each backbone's merged settings);
    raise one CompError line naming the first bad key, its value and the rule."""
    for key, constraint in CONSTRAINTS.items():
        _check(key, _get(cfg, key), constraint)
    if "backbone_overrides" not in cfg:
        return
    from comp.config import model_settings

    # bases before variants, so a bad value is named where it was set
    for backbone in sorted(cfg.backbone_overrides, key=lambda b: ("-" in b, b)):
        merged = model_settings(cfg, backbone)
        for key, constraint in CONSTRAINTS.items():
            if key.startswith(_PER_BACKBONE):
                value = _get(merged, key)
                if value is not _MISSING and value != _get(cfg, key):
                    _check(f"backbone_overrides.{backbone}.{key}", value, constraint)


def describe_constraint(key: str) -> str | None:
    """The allowed values of `key` as text (e.g. 'sgd|adam', 'a number > 0'), or None."""
    constraint = CONSTRAINTS.get(key)
    return constraint.describe() if constraint else None


_MISSING = object()


def _get(cfg: DictConfig, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            return _MISSING
        node = node[part]
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node)
    return node


def _check(key: str, value: Any, constraint: Constraint) -> None:
    if value is _MISSING:
        return
    problem = constraint.check(value)
    if problem:
        shown = ("[" + ",".join(map(str, value)) + "]" if isinstance(value, list)
                 else repr(value) if isinstance(value, str) else value)
        raise CompError(f"config: {key}={shown}: {problem}")
