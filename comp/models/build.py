"""Build a backbone, cut it into a frozen prefix and a trainable suffix, add the head.

Training runs on the prefix's outputs (computed once per image and view, see
comp.training.features) through the suffix + head: the same maths as fine-tuning the
whole network with the prefix frozen (frozen BatchNorm runs in inference mode), at a
fraction of the cost.
"""

from __future__ import annotations

import dataclasses
import functools
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from comp.errors import CompError
from comp.models.registry import Backbone
from comp.models.weights import ResolvedWeights

if TYPE_CHECKING:
    from comp.config import AugmentSettings
    from comp.models.spec import ModelSpec


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


def create_head(split: SplitBackbone, spec: ModelSpec, n_classes: int, seed: int,
                online: bool = True):
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
                layer.trainable = m.bn_trainable
        x = split.body(x)
    if len(x.shape) == 4:
        pool = {"avg": layers.GlobalAveragePooling2D, "max": layers.GlobalMaxPooling2D}
        x = pool[m.pooling](name="pool")(x)
    if m.dense_units > 0:
        x = layers.Dropout(m.dropout, seed=seed + 3, name="head_dropout1")(x)
        x = layers.Dense(m.dense_units, activation="relu", name="head_dense",
                         kernel_initializer=keras.initializers.GlorotUniform(seed + 4))(x)
    x = layers.Dropout(m.dropout, seed=seed + 5, name="head_dropout")(x)
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


def online_augmentation(augment: AugmentSettings, seed: int,
                        value_range: tuple[float, float] = (0.0, 255.0)) -> list:
    """The Keras preprocessing layers of the online augmentation (see create_head);
    `value_range` is the range of the images they see (`input_range`)."""
    from keras import layers

    out = []
    if augment.online_randaugment:
        # RandAugment's own colour, contrast, shear, translation etc. ops, 2 a batch
        out.append(layers.RandAugment(value_range=value_range, num_ops=2,
                                      factor=augment.online_randaugment,
                                      seed=seed + 7, name="online_randaugment"))
    shift = augment.online_shift
    if shift:
        out.append(layers.RandomTranslation(shift, shift, fill_mode="constant",
                                            seed=seed, name="online_shift"))
    if augment.online_rotation:
        out.append(layers.RandomRotation(augment.online_rotation, fill_mode="constant",
                                         seed=seed + 1, name="online_rotation"))
    if augment.online_zoom:
        out.append(layers.RandomZoom(augment.online_zoom, fill_mode="constant",
                                     seed=seed + 2, name="online_zoom"))
    return out


def weight_bytes(model) -> int:
    """The bytes of a Keras model's weights (what its weights file needs, less overhead)."""
    return sum(int(np.prod(w.shape)) * np.dtype(w.dtype).itemsize for w in model.weights)


def fold_batch_norms(model):
    """An inference copy of `model` (a frozen Keras functional model) in which each
    BatchNormalization that is the one consumer of a Conv2D or DepthwiseConv2D output is
    folded into that convolution's kernel and bias, in nested functional models too (a
    head's body); `model` itself where none is.

    The same outputs to float rounding (a BatchNormalization at inference is a fixed
    per-channel affine map), one pass over the activations fewer per convolution: about
    1.8x the views per second of MobileNet 0.25 on this 2-core CPU (bench/README.md).
    Only for frozen layers: the copy's weights no longer train like the original's.
    """
    import keras

    if not hasattr(model, "_nodes_by_depth"):  # not a functional graph (a Sequential
        return model  # block inside ConvNeXt): kept as it is, one opaque layer
    pairs = _foldable_pairs(model)
    nested = {layer.name: fold_batch_norms(layer) for layer in model.layers
              if isinstance(layer, keras.Model)}  # e.g. a head's trainable body
    if not pairs and all(nested[name] is model.get_layer(name) for name in nested):
        return model
    convs = {conv.name: bn for bn, conv in pairs}
    folded_bns = {bn.name for bn, _ in pairs}

    def clone(layer):
        if layer.name in nested:
            return nested[layer.name]
        if layer.name in folded_bns:
            return _folded_layer_class()(name=layer.name)
        config = layer.get_config()
        if layer.name in convs:
            config["use_bias"] = True
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    _copy_own_weights(model, copy, pairs)
    return copy


def refold_batch_norms(model, folded) -> None:
    """Give `folded` (what fold_batch_norms made of a model with `model`'s architecture)
    `model`'s present weights, folded the same way: another fold's weights loaded into
    `model` reach the folded copy without a new copy and a new trace of its predict
    function (0.3-0.6 s a fold of MobileNet 0.25's head here)."""
    import keras

    if folded is model:
        return
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            refold_batch_norms(layer, folded.get_layer(layer.name))
    _copy_own_weights(model, folded, _foldable_pairs(model))


def _copy_own_weights(model, folded, pairs: list) -> None:
    """Set the weights of `folded`'s own layers (not those of nested models) from
    `model`'s, each convolution of `pairs` (batch norm, convolution) with its batch norm
    folded in."""
    import keras

    convs = {conv.name: bn for bn, conv in pairs}
    folded_bns = {bn.name for bn, _ in pairs}
    for layer in model.layers:
        if (layer.name in folded_bns or isinstance(layer, keras.Model)
                or not layer.weights):
            continue
        target = folded.get_layer(layer.name)
        if layer.name in convs:
            target.set_weights(_folded_weights(layer, convs[layer.name]))
        else:
            target.set_weights(layer.get_weights())


def _foldable_pairs(model) -> list:
    """(batch norm, convolution) pairs of `model` that fold exactly: in this model's own
    graph, a channels-last convolution without activation, called once, whose output
    is read by nothing but the batch norm (normalising the channel axis, called once)
    and is not an output of the model."""
    from keras import layers

    nodes = [node for depth in model._nodes_by_depth.values() for node in depth]
    calls: dict[int, int] = {}
    readers: dict[int, int] = {}
    for node in nodes:
        calls[id(node.operation)] = calls.get(id(node.operation), 0) + 1
        for tensor in node.input_tensors:
            readers[id(tensor)] = readers.get(id(tensor), 0) + 1
    outputs = {id(tensor) for tensor in model.outputs}
    pairs = []
    for node in nodes:
        bn = node.operation
        if (not isinstance(bn, layers.BatchNormalization) or calls[id(bn)] != 1
                or len(node.input_tensors) != 1 or bn.axis not in (-1, 3, [-1], [3])):
            continue
        tensor = node.input_tensors[0]
        source = tensor._keras_history.operation
        if (isinstance(source, (layers.Conv2D, layers.DepthwiseConv2D))
                and not isinstance(source, layers.SeparableConv2D)
                and source.data_format == "channels_last"
                and source.get_config().get("activation") in (None, "linear")
                and calls.get(id(source)) == 1 and readers[id(tensor)] == 1
                and id(tensor) not in outputs):
            pairs.append((bn, source))
    return pairs


def _folded_weights(conv, bn) -> list[np.ndarray]:
    """The kernel and bias of `conv` followed by `bn` at inference, as one convolution."""
    from keras import layers

    mean, variance = np.asarray(bn.moving_mean), np.asarray(bn.moving_variance)
    gamma = np.asarray(bn.gamma) if bn.scale else np.ones_like(mean)
    beta = np.asarray(bn.beta) if bn.center else np.zeros_like(mean)
    scale = gamma / np.sqrt(variance + bn.epsilon)
    kernel = np.asarray(conv.kernel, dtype=np.float64)
    bias = np.asarray(conv.bias, dtype=np.float64) if conv.use_bias else np.zeros_like(mean)
    if isinstance(conv, layers.DepthwiseConv2D):  # output channel = input * multiplier + m
        kernel = kernel * scale.reshape(1, 1, kernel.shape[2], kernel.shape[3])
    else:
        kernel = kernel * scale.reshape(1, 1, 1, -1)
    return [kernel.astype(np.float32), ((bias - mean) * scale + beta).astype(np.float32)]


@functools.cache
def _folded_layer_class():
    import keras

    class Folded(keras.layers.Layer):
        """Where a folded BatchNormalization was: passes its input on (it takes the
        batch norm's call arguments, which Keras's Identity does not)."""

        def call(self, inputs, training=None, mask=None):
            return inputs

    return Folded


def for_training(split: SplitBackbone) -> SplitBackbone:
    """`split` with its body's BatchNormalization layers fused (`fused_batch_norm_class`):
    what the fit trains; the prefix, which only predicts, is kept as it is."""
    if split.body is None:
        return split
    return dataclasses.replace(split, body=fused_batch_norms(split.body))


@functools.cache
def fused_batch_norm_class():
    """keras.layers.BatchNormalization whose training step runs TensorFlow's fused kernel.

    The same weights, config, moving-statistics update (Keras's uncorrected batch
    variance) and outputs to float rounding; Keras 3 builds the layer from moments and
    affine ops, several passes over the activations each way where the fused kernel makes
    one: 0.55-0.61x small_cnn's training step in mixed bfloat16 and about 0.8x MobileNet
    0.25's in float32 on this 2-core CPU (bench/README.md, "Batch norms fused"). Other calls
    (a mask, renorm, synchronized, not 4-D channels-last) run Keras's own.
    """
    import keras
    import tensorflow as tf

    # Keras names a layer's group in a weights file after its class: the same class name
    # keeps weights saved with either layer loadable into the other
    class BatchNormalization(keras.layers.BatchNormalization):
        def call(self, inputs, training=None, mask=None):
            if (mask is not None or self.renorm or self.synchronized
                    or len(inputs.shape) != 4 or self.axis not in (-1, 3)
                    or not (self.center and self.scale)):
                return super().call(inputs, training=training, mask=mask)
            gamma, beta = tf.cast(self.gamma, "float32"), tf.cast(self.beta, "float32")
            if not (training and self.trainable):
                outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
                    inputs, gamma, beta, mean=self.moving_mean,
                    variance=self.moving_variance, epsilon=self.epsilon, is_training=False)
                return tf.cast(outputs, self.compute_dtype)
            outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                inputs, gamma, beta, epsilon=self.epsilon, is_training=True)
            # the kernel's variance has Bessel's correction n/(n-1); Keras keeps the plain one
            n = tf.cast(tf.reduce_prod(tf.shape(inputs)[:-1]), "float32")
            variance = variance * tf.maximum(n - 1.0, 1.0) / n
            momentum = self.momentum
            self.moving_mean.assign(self.moving_mean * momentum + mean * (1.0 - momentum))
            self.moving_variance.assign(
                self.moving_variance * momentum + variance * (1.0 - momentum))
            return tf.cast(outputs, self.compute_dtype)

    return BatchNormalization


def fused_batch_norms(model):
    """A copy of `model` (a Keras functional model; nested functional ones too) with the
    fused layer (`fused_batch_norm_class`) in place of each keras.layers.BatchNormalization
    and the same weights; `model` itself where it holds none."""
    import keras

    if not hasattr(model, "_nodes_by_depth"):  # a Sequential block: kept as it is
        return model
    nested = {layer.name: fused_batch_norms(layer) for layer in model.layers
              if isinstance(layer, keras.Model)}
    own = any(type(layer) is keras.layers.BatchNormalization for layer in model.layers)
    if not own and all(nested[name] is model.get_layer(name) for name in nested):
        return model

    def clone(layer):
        if layer.name in nested:
            return nested[layer.name]
        kind = (fused_batch_norm_class() if type(layer) is keras.layers.BatchNormalization
                else layer.__class__)
        return kind.from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy
