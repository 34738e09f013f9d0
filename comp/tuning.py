"""Optuna: search spaces, the trial objective, studies and their storage.

One study per (experiment, backbone, outer fold k), named `<name>-<backbone>-fold<k>`.
A trial trains on fold k's training rows minus an inner holdout and is scored on that
holdout, so the settings chosen for fold k never saw fold k's validation images and the
CV of the tuned model stays honest. The defaults are enqueued as trial 0 of each study.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable

import numpy as np
import optuna

from comp.errors import CompError
from comp.metrics import HIGHER_IS_BETTER
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


def open_study(name: str, storage_url: str, metric: str, pruner: str, seed: int,
               grace: int = 60) -> optuna.Study:
    """Create or load the study `name` (heartbeat: a killed trial is failed and retried)."""
    if metric not in HIGHER_IS_BETTER:
        raise CompError(f"config: tune.metric={metric!r}; use one of {sorted(HIGHER_IS_BETTER)}")
    pruners = {"median": lambda: optuna.pruners.MedianPruner(n_startup_trials=3,
                                                             n_warmup_steps=5),
               "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=5),
               "none": optuna.pruners.NopPruner}
    if pruner not in pruners:
        raise CompError(f"config: tune.pruner={pruner!r}; use one of {sorted(pruners)}")
    # a killed worker's trial is failed after the grace period and retried once; the
    # callback's keyword was renamed in Optuna 4.9
    names = inspect.signature(optuna.storages.RDBStorage).parameters
    callback = ("heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in names
                else "failed_trial_callback")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # heartbeat is flagged experimental
            storage = optuna.storages.RDBStorage(
                storage_url, heartbeat_interval=max(1, grace // 3), grace_period=grace,
                engine_kwargs={"connect_args": {"timeout": 30}}
                if storage_url.startswith("sqlite") else {},
                **{callback: optuna.storages.RetryFailedTrialCallback(max_retry=1)},
            )
    except Exception as exc:  # bad URL, unreachable server, missing driver
        raise CompError(f"tune.storage={storage_url}: cannot open ({str(exc).splitlines()[0]})"
                        ) from None
    return optuna.create_study(
        study_name=name, storage=storage, load_if_exists=True,
        direction="maximize" if HIGHER_IS_BETTER[metric] else "minimize",
        sampler=optuna.samplers.TPESampler(seed=seed), pruner=pruners[pruner](),
    )


def finished_trials(study: optuna.Study) -> int:
    """Trials that count towards n_trials: complete, pruned or failed (retried ones too)."""
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
            optuna.trial.TrialState.FAIL)
    return sum(t.state in done for t in study.get_trials(deepcopy=False))


def inner_split(rows: np.ndarray, labels: np.ndarray, holdout: float, seed: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (train, holdout) split of `rows` (falls back to unstratified)."""
    from sklearn.model_selection import train_test_split

    try:
        return train_test_split(rows, test_size=holdout, random_state=seed,
                                stratify=labels[rows])
    except ValueError:
        return train_test_split(rows, test_size=holdout, random_state=seed)
