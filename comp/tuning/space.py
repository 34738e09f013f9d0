"""The search space of fine-tuning settings (one entry per tunable key) and the pruners
a study can use: the tables that own `tune.params` and `tune.pruner`. Optuna is imported
only when a study runs, so the config can name these without it."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna

    from comp.models.registry import Backbone
    from comp.models.spec import ModelSpec

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



def _median_pruner() -> optuna.pruners.BasePruner:
    # a trial's steps are its inner fits (tune.inner_folds, 3 by default): a warm-up or
    # minimum resource of 5 steps never pruned a trial; both may stop one after its
    # first inner fit
    import optuna

    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)


def _hyperband_pruner() -> optuna.pruners.BasePruner:
    import optuna

    return optuna.pruners.HyperbandPruner(min_resource=1)


def _no_pruner() -> optuna.pruners.BasePruner:
    import optuna

    return optuna.pruners.NopPruner()


PRUNERS: dict[str, Callable[[], optuna.pruners.BasePruner]] = {
    "median": _median_pruner, "hyperband": _hyperband_pruner, "none": _no_pruner}


def suggest(trial: optuna.Trial, backbone: Backbone, names: list[str]) -> dict:
    """The trial's settings for the tuned `names` ({"section.key": value})."""
    if not backbone.unfreeze_points and "model.unfreeze" in names:
        names = [n for n in names if n != "model.unfreeze"]
    return {name: SPACE[name](trial, backbone) for name in names}


def default_trial(defaults: ModelSpec, names: list[str], backbone: Backbone) -> dict:
    """The settings of the spec `defaults` as a trial to enqueue (values outside the space
    are left out)."""
    params = {}
    for name in names:
        section, key = name.split(".", 1)
        value = getattr(getattr(defaults, section), key)
        if name == "model.unfreeze":
            value = value or backbone.default_unfreeze
            if value not in backbone.unfreeze_points and value != "none":
                continue
        params[name] = value
    return params
