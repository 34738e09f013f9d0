"""The search space of fine-tuning settings: one entry per tunable key."""

from __future__ import annotations

from collections.abc import Callable

import optuna

from comp.errors import CompError
from comp.models.registry import Backbone

SPACE: dict[str, Callable[[optuna.Trial, Backbone], object]] = {
    "model.dropout": lambda t, b: t.suggest_float("model.dropout", 0.0, 0.6),
    "model.unfreeze": lambda t, b: t.suggest_categorical(
        "model.unfreeze", sorted(b.unfreeze_points) + ["none"]),
    "model.bn_trainable": lambda t, b: t.suggest_categorical("model.bn_trainable", [True, False]),
    "model.dense_units": lambda t, b: t.suggest_categorical("model.dense_units", [0, 128]),
    "train.lr": lambda t, b: t.suggest_float("train.lr", 3e-4, 3e-2, log=True),
    "train.lr_drop": lambda t, b: t.suggest_float("train.lr_drop", 0.2, 0.9),
    "train.lr_every": lambda t, b: t.suggest_int("train.lr_every", 4, 20),
    "train.class_weight": lambda t, b: t.suggest_categorical(
        "train.class_weight", ["balanced", "none"]),
    "train.label_smoothing": lambda t, b: t.suggest_float("train.label_smoothing", 0.0, 0.2),
    "augment.random_views": lambda t, b: t.suggest_categorical("augment.random_views", [0, 4]),
}


def suggest(trial: optuna.Trial, backbone: Backbone, names: list[str]) -> dict:
    """The trial's settings for the tuned `names` ({"section.key": value})."""
    unknown = [n for n in names if n not in SPACE]
    if unknown:
        raise CompError(f"config: tune.params has {unknown}; tunable: {sorted(SPACE)}")
    if not backbone.unfreeze_points and "model.unfreeze" in names:
        names = [n for n in names if n != "model.unfreeze"]
    return {name: SPACE[name](trial, backbone) for name in names}


def default_trial(defaults: dict, names: list[str], backbone: Backbone) -> dict:
    """The default settings as a trial to enqueue (values outside the space are left out)."""
    params = {}
    for name in names:
        section, key = name.split(".", 1)
        value = defaults[section][key]
        if name == "model.unfreeze":
            value = value or backbone.default_unfreeze
            if value not in backbone.unfreeze_points and value != "none":
                continue
        params[name] = value
    return params
