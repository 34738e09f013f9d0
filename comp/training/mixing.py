"""MixUp and CutMix of a fit's training batches (`train.mixup`, `train.cutmix`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import keras
import tensorflow as tf

if TYPE_CHECKING:
    from comp.config import TrainSettings


class AreaCutMix(keras.layers.CutMix):
    """Keras's CutMix with the targets mixed by the share of the map's cells the pasted
    box covers. Keras mixes them by the box's continuous area, but pastes whole cells:
    on a 7 x 7 or 14 x 14 feature map that is off by up to a row and a column of cells
    (a target weight of 0.00 for a map that keeps 14% of its own cells)."""

    def _generate_batch_mask(self, images_shape, box_corners):
        masks, _ = super()._generate_batch_mask(images_shape, box_corners)
        pasted = self.backend.numpy.mean(
            self.backend.cast(masks, self.compute_dtype), axis=(1, 2, 3))
        return masks, 1.0 - pasted


def mixing_layers(train: TrainSettings, seed: int) -> list:
    """Keras's MixUp (`train.mixup`: its Beta alpha) and CutMix (`train.cutmix`: its
    factor) layers, for the batches of a fit; none where both are None.

    They mix what the trainable part sees: the frozen prefix's feature maps (CutMix
    pastes a box of one map into another, MixUp blends them; manifold mixing) or the
    image itself where nothing is frozen. Targets are mixed in the same proportions.
    """
    out = []
    if train.mixup:
        out.append(keras.layers.MixUp(alpha=train.mixup, seed=seed + 2))
    if train.cutmix:
        out.append(AreaCutMix(factor=train.cutmix, seed=seed + 3))
    return out


def batch_mixer(layers: list, seed: int):
    """A tf.data map of (features, targets, weights) batches through one of `layers`,
    drawn per batch (timm's switch between MixUp and CutMix). Both need a spatial map
    (rank 4: every backbone's prefix output and every image); flat features pass as they
    are."""

    def mix(layer, features, targets):
        if len(features.shape) != 4:
            return features, targets
        out = layer({"images": features, "labels": targets}, training=True)
        return (tf.ensure_shape(tf.cast(out["images"], features.dtype), features.shape),
                tf.cast(out["labels"], targets.dtype))

    generator = tf.random.Generator.from_seed(seed + 4)

    def apply(features, targets, weights):
        if len(layers) == 1:
            features, targets = mix(layers[0], features, targets)
        else:
            pick = generator.uniform((), 0, len(layers), dtype=tf.int32)
            features, targets = tf.switch_case(
                pick, [lambda layer=layer: mix(layer, features, targets) for layer in layers])
        return features, targets, weights

    return apply
