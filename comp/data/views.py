"""Augmentation views: the 8 flips/90-degree rotations, and seeded random views.

View index v < 8 is the dihedral transform rot90(k = v % 4) followed by a horizontal
flip when v >= 4. Indices from 8 on are random views (rotation, zoom, brightness,
contrast, made with Keras preprocessing layers).
"""

from __future__ import annotations

import numpy as np

DIHEDRAL = tuple(range(8))
TTA_VIEWS = {"none": (0,), "flips": (0, 2, 4, 6), "dihedral": DIHEDRAL}


def dihedral_view(images: np.ndarray, view: int) -> np.ndarray:
    """Apply dihedral transform `view` (0..7) to a batch (N, H, W, C) of square images."""
    out = np.rot90(images, k=view % 4, axes=(1, 2))
    if view >= 4:
        out = out[:, :, ::-1]
    return np.ascontiguousarray(out)


def random_views(
    images: np.ndarray, count: int, rotation: float, zoom: float, brightness: float,
    contrast: float, seed: int,
) -> list[np.ndarray]:
    """`count` randomly augmented copies of `images` (uint8), reproducible by `seed`.

    Why seven parameters: the four strengths are the independent augment.rotation,
    zoom, brightness and contrast settings (0 leaves that layer out), passed as numbers
    so this module reads no config."""
    import keras

    layers = [keras.layers.RandomFlip("horizontal_and_vertical", seed=seed)]
    if rotation > 0:
        layers.append(keras.layers.RandomRotation(rotation, fill_mode="reflect", seed=seed + 1))
    if zoom > 0:
        layers.append(keras.layers.RandomZoom(zoom, fill_mode="reflect", seed=seed + 2))
    if brightness > 0:
        layers.append(
            keras.layers.RandomBrightness(brightness, value_range=(0, 255), seed=seed + 3)
        )
    if contrast > 0:
        layers.append(keras.layers.RandomContrast(contrast, seed=seed + 4))
    augment = keras.Sequential(layers)
    views = []
    for _ in range(count):
        batches = [
            np.asarray(augment(images[i : i + 256].astype("float32"), training=True))
            for i in range(0, len(images), 256)
        ]
        views.append(np.clip(np.concatenate(batches), 0, 255).astype(np.uint8))
    return views
