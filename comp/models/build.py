"""Build a backbone, cut it into a frozen prefix and a trainable suffix, add the head.

Training runs on the prefix's outputs (computed once per image and view, see
comp.training.features) through the suffix + head: the same maths as fine-tuning the
whole network with the prefix frozen (frozen BatchNorm runs in inference mode), at a
fraction of the cost.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from comp.errors import CompError
from comp.models.registry import Backbone
from comp.models.weights import ResolvedWeights


@dataclass
class SplitBackbone:
    """A backbone cut at `cut`: `prefix` (frozen; None = the image) and `body` (trainable;
    None = nothing trains but the head)."""

    prefix: object | None
    body: object | None
    cut: str
    feature_shape: tuple[int, ...]


@contextmanager
def seeded_construction(seed: int) -> Iterator[None]:
    """A context in which Keras layers built without a `seed=` get their seeds from `seed`.

    Keras applications build their layers with initializers (and EfficientNet's dropout
    with seed generators) that take no seed from the caller: each draws its seed from
    Python's `random` module when it is constructed (`keras.random.make_default_seed`;
    the random ops themselves are stateless, seeded by that draw). This seeds that module
    for the construction alone and gives it back its earlier state afterwards, so a random
    backbone is the same for the same seed without `keras.utils.set_random_seed`, which
    would reset the caller's Python, NumPy and TensorFlow seeds for the whole process.
    The one place comp seeds anything global; comp's own layers take `seed=` directly.
    """
    saved = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(saved)


def build_backbone(backbone: Backbone, size: int, weights: ResolvedWeights, seed: int):
    """The no-top Keras model of `backbone` at `size`, with `weights` loaded; layers
    without loaded weights are initialised from `seed` (see seeded_construction)."""
    if size < backbone.min_size:
        raise CompError(
            f"config: model.image_size={size} is below {backbone.name}'s minimum "
            f"{backbone.min_size}"
        )
    try:
        with seeded_construction(seed):
            return backbone.constructor(
                input_shape=(size, size, 3),
                weights=str(weights.path) if weights.path else None,
            )
    except (ValueError, OSError) as exc:
        reason = str(exc).splitlines()[0][:200]
        raise CompError(
            f"{weights.path}: cannot load into {backbone.name} ({reason}); give the no-top "
            "weight file of this backbone"
        ) from None


def split_backbone(base, backbone: Backbone, unfreeze: str | None) -> SplitBackbone:
    """Cut `base` where `unfreeze` says (named point, layer, after:layer, index, fraction,
    all, none; None = the backbone's default)."""
    import keras

    spec = backbone.default_unfreeze if unfreeze in (None, "", "default") else str(unfreeze)
    point = backbone.unfreeze_points.get(spec, spec)
    if point == "all":
        return SplitBackbone(None, base, "all", tuple(base.input.shape[1:]))
    if point == "none":
        return SplitBackbone(base, None, "none", tuple(base.output.shape[1:]))
    tensor, label = _cut_tensor(base, backbone, spec, point)
    try:
        body = keras.Model(tensor, base.output)
    except ValueError:
        raise CompError(
            f"config: model.unfreeze={spec!r} does not cut {backbone.name} cleanly (a "
            "residual or branch crosses it); use one of "
            f"{sorted(backbone.unfreeze_points) + ['all', 'none']} or an 'after:<layer>' "
            "at a block boundary"
        ) from None
    prefix = keras.Model(base.input, tensor)
    return SplitBackbone(prefix, body, label, tuple(tensor.shape[1:]))


def _cut_tensor(base, backbone: Backbone, spec: str, point: str):
    layers = base.layers
    names = {layer.name: i for i, layer in enumerate(layers)}
    if point.startswith("after:"):
        name = point[len("after:"):]
        if name not in names:
            raise _unknown_layer(backbone, spec, name)
        return layers[names[name]].output, point
    index = _as_index(point, len(layers))
    if index is None:
        if point not in names:
            raise _unknown_layer(backbone, spec, point)
        index = names[point]
    if index <= 0:
        return base.input, "all"
    if _is_fraction(point):  # walk forward to the nearest clean cut
        for i in range(index, len(layers)):
            if _clean(base, layers[i]):
                return layers[i].input, f"{layers[i].name}@{i}"
        return base.output, "none"
    return layers[index].input, f"{layers[index].name}@{index}"


def _clean(base, layer) -> bool:
    import keras

    if isinstance(layer.input, list | tuple):
        return False
    try:
        keras.Model(layer.input, base.output)
    except ValueError:
        return False
    return True


def _is_fraction(point: str) -> bool:
    try:
        value = float(point)
    except ValueError:
        return False
    return "." in point and 0 < value < 1


def _as_index(point: str, depth: int) -> int | None:
    if _is_fraction(point):
        return int(round(float(point) * depth))
    try:
        index = int(point)
    except ValueError:
        return None
    if not 0 <= index < depth:
        raise CompError(f"config: model.unfreeze={point} is outside 0..{depth - 1}")
    return index


def _unknown_layer(backbone: Backbone, spec: str, name: str) -> CompError:
    return CompError(
        f"config: model.unfreeze={spec!r}: {backbone.name} has no layer {name!r}; use one of "
        f"{sorted(backbone.unfreeze_points) + ['all', 'none']}, a layer name, an index or a "
        "fraction of depth like 0.8"
    )


def create_head(split: SplitBackbone, spec, n_classes: int, seed: int, online: bool = True):
    """The trainable model of `spec` (a ModelSpec) on `split`: the one assembly that
    training, prediction and export share (so saved weights always load back).

    prefix features -> [online augmentation] -> body -> pooling -> [dense] -> softmax.
    Online augmentation (`augment.online_randaugment`, `online_shift`, `online_rotation`,
    `online_zoom`: Keras preprocessing layers, active in training only, a fresh draw every
    batch) applies where the model trains from the image itself (no frozen prefix:
    `small_cnn`, unfreeze=all). Its layers hold no weights, so `online=False` (prediction,
    export: a graph TFLite converts) loads the same weights and gives the same
    probabilities.

    Every random layer takes its seed from `seed` (the augmentation `seed`..`seed + 2`
    and `seed + 7`, the head's dropout and initial weights `seed + 3`..`seed + 6`): the
    same seed gives the same initial head and the same dropout draws, and no global seed
    is set.
    """
    import keras
    from keras import layers

    m, augment = spec.model, spec.augment
    inputs = keras.Input(split.feature_shape, name="features")
    x = inputs
    if split.prefix is None and online:
        for layer in online_augmentation(augment, seed, input_range(spec.backbone)):
            x = layer(x)
    if split.body is not None:
        for layer in split.body.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.trainable = m["bn_trainable"]
        x = split.body(x)
    if len(x.shape) == 4:
        pool = {"avg": layers.GlobalAveragePooling2D, "max": layers.GlobalMaxPooling2D}
        x = pool[m["pooling"]](name="pool")(x)
    if m["dense_units"] > 0:
        x = layers.Dropout(m["dropout"], seed=seed + 3, name="head_dropout1")(x)
        x = layers.Dense(m["dense_units"], activation="relu", name="head_dense",
                         kernel_initializer=keras.initializers.GlorotUniform(seed + 4))(x)
    x = layers.Dropout(m["dropout"], seed=seed + 5, name="head_dropout")(x)
    # float32 probabilities whatever the dtype policy (mixed precision keeps softmax stable)
    outputs = layers.Dense(n_classes, activation="softmax", name="probabilities",
                           dtype="float32",
                           kernel_initializer=keras.initializers.GlorotUniform(seed + 6))(x)
    return keras.Model(inputs, outputs, name="head")


def input_range(backbone: str) -> tuple[float, float]:
    """The lowest and highest value the backbone's preprocessing gives an RGB image (0..255
    in): the value range the image-level augmentations see where nothing is frozen."""
    from comp.models.registry import get_backbone

    ends = get_backbone(backbone).preprocess(
        np.array([[[[0.0, 0.0, 0.0], [255.0, 255.0, 255.0]]]], dtype=np.float32))
    return float(np.min(ends)), float(np.max(ends))


def online_augmentation(augment: dict, seed: int,
                        value_range: tuple[float, float] = (0.0, 255.0)) -> list:
    """The Keras preprocessing layers of the online augmentation (see create_head);
    `value_range` is the range of the images they see (`input_range`)."""
    from keras import layers

    out = []
    if augment.get("online_randaugment"):
        # RandAugment's own colour, contrast, shear, translation etc. ops, 2 a batch
        out.append(layers.RandAugment(value_range=value_range, num_ops=2,
                                      factor=augment["online_randaugment"],
                                      seed=seed + 7, name="online_randaugment"))
    shift = augment.get("online_shift", 0.0)
    if shift:
        out.append(layers.RandomTranslation(shift, shift, fill_mode="constant",
                                            seed=seed, name="online_shift"))
    if augment.get("online_rotation", 0.0):
        out.append(layers.RandomRotation(augment["online_rotation"], fill_mode="constant",
                                         seed=seed + 1, name="online_rotation"))
    if augment.get("online_zoom", 0.0):
        out.append(layers.RandomZoom(augment["online_zoom"], fill_mode="constant",
                                     seed=seed + 2, name="online_zoom"))
    return out


def weight_bytes(model) -> int:
    """The bytes of a Keras model's weights (what its weights file needs, less overhead)."""
    return sum(int(np.prod(w.shape)) * np.dtype(w.dtype).itemsize for w in model.weights)
