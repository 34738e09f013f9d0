"""The optimizers a fine-tune can train with: the table that owns `train.optimizer`.
Keras is imported only when one is made, so the config can name them without it."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from comp.config import TrainSettings


def _sgd(train: TrainSettings, shared: dict):
    import keras

    return keras.optimizers.SGD(train.lr, momentum=train.momentum, nesterov=True, **shared)


def _adam(train: TrainSettings, shared: dict):
    import keras

    return keras.optimizers.Adam(train.lr, **shared)


def _adamw(train: TrainSettings, shared: dict):
    import keras

    return keras.optimizers.AdamW(train.lr, weight_decay=train.weight_decay, **shared)


# sgd: Nesterov momentum; adam; adamw: decoupled weight decay (train.weight_decay); each
# takes the options every optimizer shares (EMA, gradient clipping) as keyword arguments
OPTIMIZERS: dict[str, Callable[[TrainSettings, dict], object]] = {
    "sgd": _sgd, "adam": _adam, "adamw": _adamw}


def make_optimizer(train: TrainSettings, rate_scales: dict[str, float] | None = None):
    """The Keras optimizer of a model's `train` settings; with `train.ema`, it keeps an
    exponential moving average of the weights (Keras's use_ema), which the model ends
    with. `rate_scales` (variable path -> factor, `depth_rate_scales`) scales the
    learning rate of those variables (discriminative learning rates). With
    `train.clipnorm`, each step's gradients are scaled down to that global norm where
    they exceed it (Keras's `global_clipnorm`)."""
    shared = {"use_ema": True, "ema_momentum": train.ema_momentum} if train.ema else {}
    if train.clipnorm is not None:
        shared["global_clipnorm"] = train.clipnorm
    optimizer = OPTIMIZERS[train.optimizer](train, shared)
    if rate_scales and any(scale != 1.0 for scale in rate_scales.values()):
        optimizer.__class__ = _scaled_class(type(optimizer))
        optimizer.rate_scales = dict(rate_scales)
    return optimizer


class _ScaledRates:
    """Mixin for a Keras optimizer: each variable's update runs at the learning rate
    times its factor in `rate_scales` (by variable path; 1 where absent). AdamW's weight
    decay keeps the unscaled rate."""

    rate_scales: dict[str, float]

    def build(self, variables):
        super().build(variables)
        self._scale_by_index = [self.rate_scales.get(v.path, 1.0) for v in variables]

    def update_step(self, gradient, variable, learning_rate):
        scale = self._scale_by_index[self._get_variable_index(variable)]
        return super().update_step(gradient, variable, learning_rate * scale)


def _scaled_class(base: type) -> type:
    return type(f"Scaled{base.__name__}", (_ScaledRates, base), {})


def depth_scales(n_layers: int, ratio: float) -> list[float]:
    """Learning-rate factors of `n_layers` layers, first (deepest from the head) to last:
    ratio at the first, growing geometrically towards 1 above the last (the head)."""
    return [ratio ** ((n_layers - k) / n_layers) for k in range(n_layers)]


def depth_rate_scales(model, ratio: float) -> dict[str, float]:
    """`train.lr_depth_ratio`: variable path -> learning-rate factor for the layers with
    trainable weights inside the model's nested backbone part (`depth_scales`, in layer
    order); the head's own layers train at the full rate. Empty where ratio is 1."""
    import keras

    if ratio == 1.0:
        return {}
    layers = [inner for layer in model.layers if isinstance(layer, keras.Model)
              for inner in layer.layers if inner.trainable_weights]
    return {weight.path: scale
            for layer, scale in zip(layers, depth_scales(len(layers), ratio), strict=True)
            for weight in layer.trainable_weights}
