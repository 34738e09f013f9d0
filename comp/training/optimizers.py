"""The optimizers a fine-tune can train with: the table that owns `train.optimizer`.
Keras is imported only when one is made, so the config can name them without it."""

from __future__ import annotations

from collections.abc import Callable


def _sgd(train: dict, ema: dict):
    import keras

    return keras.optimizers.SGD(train["lr"], momentum=train["momentum"], nesterov=True, **ema)


def _adam(train: dict, ema: dict):
    import keras

    return keras.optimizers.Adam(train["lr"], **ema)


def _adamw(train: dict, ema: dict):
    import keras

    return keras.optimizers.AdamW(train["lr"], weight_decay=train["weight_decay"], **ema)


# sgd: Nesterov momentum; adam; adamw: decoupled weight decay (train.weight_decay)
OPTIMIZERS: dict[str, Callable[[dict, dict], object]] = {
    "sgd": _sgd, "adam": _adam, "adamw": _adamw}


def make_optimizer(train: dict):
    """The Keras optimizer of a `train` config section; with `train.ema`, it keeps an
    exponential moving average of the weights (Keras's use_ema), which the model ends
    with."""
    ema = ({"use_ema": True, "ema_momentum": train["ema_momentum"]}
           if train.get("ema") else {})
    return OPTIMIZERS[train["optimizer"]](train, ema)
