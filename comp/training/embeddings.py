"""Pooled embeddings for classic heads, computed once per image and view and cached.

Two sources:
- a backbone: the global average of its outputs at one or more named depths (the
  registry's unfreeze points, plus `top`), concatenated: the bottleneck features of the
  classic Keras recipes;
- `pixels`: the image itself, downsampled, scaled to [0, 1] and flattened.

Arrays are (views, images, dims) float32. Backbone and colour embeddings are stored in
`cache/embeddings/<key>/<split>.npy` (the key covers everything that changes the numbers,
including the split's content); pixel embeddings are made on read from the small decoded
image (`pixel_embeddings`): a cache of them would hold 8 float32 copies of a uint8 image.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from comp.artifacts import cached_npy
from comp.data.images import decoded_once
from comp.data.views import dihedral_view
from comp.errors import CompError
from comp.log import progress, unit_done
from comp.training.features import read_rows

PIXELS = "pixels"
COLOR = "color"
COLOR_SIZE = 64  # colour histograms are taken of the image decoded at this size


def depth_names(backbone, depths: list[str]) -> list[str]:
    """`depths`, or the backbone's default depths (every named unfreeze point and top)."""
    chosen = list(depths) or sorted(backbone.unfreeze_points) + ["top"]
    unknown = [d for d in chosen if d != "top" and d not in backbone.unfreeze_points]
    if unknown:
        raise CompError(f"config: classic.depths has {unknown} for {backbone.name}; use "
                        f"{sorted(backbone.unfreeze_points) + ['top']}")
    return chosen


def _depth_tensor(base, backbone, depth: str):
    """The Keras tensor of `base` at a named depth (`top`: the base's output)."""
    if depth == "top":
        return base.output
    point = backbone.unfreeze_points[depth]
    if point.startswith("after:"):
        return base.get_layer(point[len("after:"):]).output
    return base.get_layer(point).input


def pooled_model(base, backbone, depths: list[str]):
    """A Keras model: image -> the concatenated global averages at `depths` (frozen
    passes fold its batch norms into their convolutions: comp.training.features.
    frozen_forward)."""
    import keras

    outputs = [keras.layers.GlobalAveragePooling2D()(_depth_tensor(base, backbone, depth))
               for depth in depths]
    merged = outputs[0] if len(outputs) == 1 else keras.layers.Concatenate()(outputs)
    return keras.Model(base.input, merged)


def depth_widths(backbone, size: int, depths: list[str]) -> list[int]:
    """The number of pooled features each depth contributes (channels at that depth),
    read from the architecture alone (no weights are loaded)."""
    base = backbone.constructor(input_shape=(size, size, 3), weights=None)
    return [int(_depth_tensor(base, backbone, depth).shape[-1]) for depth in depths]


def embed(images: np.ndarray, views: tuple[int, ...], encode, batch_size: int = 64,
          desc: str = "embed") -> np.ndarray:
    """(len(views), N, D) float32 embeddings of uint8 `images` under `encode`."""
    parts = []
    steps = len(views) * max(1, -(-len(images) // batch_size))
    started = time.time()
    with progress(total=steps, desc=desc) as bar:
        for position, view in enumerate(views):
            chunks = []
            for start in range(0, len(images), batch_size):
                # read, not mapped: a memory-mapped 448 px decode of 2,080 images (1.2 GB)
                # read through every view would stay in the process's memory
                stop = min(start + batch_size, len(images))
                batch = dihedral_view(read_rows(images, start, stop), view)
                chunks.append(np.asarray(encode(batch), dtype=np.float32))
                bar.update(1)
            parts.append(np.concatenate(chunks) if chunks else None)
            if len(images):  # piped logs get a line per view, not one silent stretch
                unit_done("view", of=desc, view=f"{position + 1}/{len(views)}",
                          images=len(images), seconds=time.time() - started)
    if not len(images):
        return np.zeros((len(views), 0, 0), np.float32)
    return np.stack(parts)


def pixel_encoder():
    """uint8 images (already at the pixel size) -> flattened [0, 1] floats."""
    def encode(batch: np.ndarray) -> np.ndarray:
        return batch.reshape(len(batch), -1).astype(np.float32) / 255.0

    return encode


def pixel_embeddings(images: np.ndarray, views: tuple[int, ...]) -> np.ndarray:
    """(len(views), N, D) pixel embeddings of uint8 `images`: the same numbers as
    `embed(images, views, pixel_encoder())`, made at once and without a progress line."""
    images = np.asarray(images)
    dims = int(np.prod(images.shape[1:]))
    out = np.empty((len(views), len(images), dims), np.float32)
    for index, view in enumerate(views):  # into `out`: one view's float copy at a time
        np.divide(dihedral_view(images, view).reshape(len(images), dims), np.float32(255.0),
                  out=out[index], dtype=np.float32)
    return out


def color_encoder():
    """uint8 images -> colour histograms: 16-bin marginals of R, G, B, hue, saturation and
    value, and an 8x8 hue-saturation joint histogram, as fractions of the pixels (160
    numbers). Stain colours separate cell types that shapes alone do not; the histograms
    are the same in every dihedral view."""
    from PIL import Image

    def encode(batch: np.ndarray) -> np.ndarray:
        out = []
        for image in batch:
            rgb = image.reshape(-1, 3)
            hsv = np.asarray(Image.fromarray(image).convert("HSV")).reshape(-1, 3)
            marginals = [np.bincount(channel.astype(np.int64) // 16, minlength=16)
                         for channel in (*rgb.T, *hsv.T)]
            joint = np.bincount((hsv[:, 0] // 32).astype(np.int64) * 8 + hsv[:, 1] // 32,
                                minlength=64)
            out.append(np.concatenate([*marginals, joint]) / len(rgb))
        return np.asarray(out, dtype=np.float32)

    return encode


def backbone_encoder(model, preprocess, lite_cache: Path | None = None):
    """uint8 images -> the pooled model's float32 outputs (comp.training.features.
    frozen_forward: one traced graph from the uint8 batch on)."""
    from comp.training.features import frozen_forward

    forward = frozen_forward(model, preprocess, "float32", lite_cache)

    def encode(batch: np.ndarray) -> np.ndarray:
        return forward(batch, 0)

    return encode


def cached_embeddings(cache_root: Path, key: dict, split: str, images: np.ndarray,
                      views: tuple[int, ...], make_encoder) -> np.ndarray:
    """Embeddings of `split` from the cache, or computed with `make_encoder()` and stored."""
    full = {**key, "split": split, "views": list(views)}

    def write(tmp: Path) -> None:
        with decoded_once(images, tmp.parent, len(views)) as readable:
            array = embed(readable, views, make_encoder(), desc=f"embed {key['source']} {split}")
        np.save(tmp, array)

    return cached_npy(cache_root, full, split, write)
