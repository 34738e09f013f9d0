"""Frozen-prefix features, computed once per image and view and cached on disk.

The frozen prefix of a backbone gives the same output for an image every epoch, every
fold and every trial, so it is computed once per (backbone, weights, size, cut, view)
and stored as float16 in `cache/features/<key>/<split>.npy`, shaped (views, images, ...).
The key covers everything that changes the numbers, so a changed setting gets its own
cache and a stale one is never read.
"""

from __future__ import annotations

import mmap
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from comp import __version__
from comp.artifacts import cached_npy
from comp.data.images import decoded_once
from comp.data.views import (
    DIHEDRAL,
    TTA_VIEWS,
    Jitter,
    dihedral_view,
    random_views,
)
from comp.log import progress, unit_done
from comp.training.compute import frozen_batch_size

# the feature pass's arithmetic, in cache keys: 2 is frozen_forward's one graph, 3 its
# TFLite form on a CPU
FORWARD_PASS = 3

if TYPE_CHECKING:
    from comp.config import AugmentSettings


@dataclass(frozen=True)
class ViewPlan:
    """Which views each split gets: the train split has `train_views` (dihedral ids) plus
    `n_random` random views; other splits have the TTA views. `tta` are dihedral ids."""

    train_views: tuple[int, ...]
    tta: tuple[int, ...]
    n_random: int

    @classmethod
    def from_augment(cls, augment: AugmentSettings) -> ViewPlan:
        """The view plan of a model's `augment` settings."""
        tta = TTA_VIEWS[augment.tta]
        base = DIHEDRAL if augment.dihedral else (0,)
        train = tuple(sorted(set(base) | set(tta)))
        return cls(train, tta, int(augment.random_views))

    def views(self, split: str) -> tuple[int, ...]:
        """Dihedral view ids stored for `split` (random views follow them for train)."""
        return self.train_views if split == "train" else self.tta

    def tta_positions(self, split: str) -> list[int]:
        """Positions of the TTA views on the views axis of `split`'s feature array."""
        stored = self.views(split)
        return [stored.index(v) for v in self.tta]

    def train_positions(self, dihedral: bool) -> list[int]:
        """Positions on the train array's views axis that training samples from."""
        sampled = DIHEDRAL if dihedral else (0,)
        fixed = [i for i, v in enumerate(self.train_views) if v in sampled]
        return fixed + list(range(len(self.train_views), len(self.train_views) + self.n_random))


@dataclass(frozen=True)
class Encoder:
    """What turns decoded images into features: `preprocess` (the backbone's), then its
    frozen `prefix` (None: the preprocessed images themselves are the features)."""

    prefix: object | None
    preprocess: Callable[[np.ndarray], np.ndarray]
    # where its TFLite form is kept (comp.training.lite.lite_folder); None: TensorFlow runs it
    lite_cache: Path | None = None

    @cached_property
    def outputs(self) -> Callable[[np.ndarray, int], np.ndarray]:
        """(uint8 batch, dihedral view) -> the batch's features: the prefix run by
        frozen_forward (its batch norms folded); or with no prefix the preprocessed view
        (uint8 where preprocessing is the identity: the model rescales its input itself).
        Made on first use, so a run whose features are cached never builds the folded
        copy, and kept, so every split this encoder computes shares one copy and trace."""
        if self.prefix is not None:
            return frozen_forward(self.prefix, self.preprocess, lite_cache=self.lite_cache)
        identity = is_identity_preprocess(self.preprocess)

        def preprocessed(batch: np.ndarray, view: int) -> np.ndarray:
            viewed = dihedral_view(batch, view)
            if identity:
                return viewed
            return self.preprocess(viewed.astype(np.float32)).astype(np.float16)

        return preprocessed


@dataclass(frozen=True)
class ViewSet:
    """The views of every image to compute, in order: the dihedral views `views`, then
    `n_random` random views drawn with `augment`'s strengths (comp.data.views.Jitter)
    from `seed`."""

    views: tuple[int, ...]
    n_random: int = 0
    augment: AugmentSettings | None = None
    seed: int = 0

    @classmethod
    def of_split(cls, plan: ViewPlan, split: str, augment: AugmentSettings,
                 seed: int) -> ViewSet:
        """The views `plan` stores for `split` (random views for train only)."""
        return cls(plan.views(split), plan.n_random if split == "train" else 0, augment, seed)

    def random_identity(self) -> dict | None:
        """What the random views depend on (None: there are none)."""
        if not self.n_random:
            return None
        return Jitter.of(self.augment).identity() | {"count": self.n_random, "seed": self.seed,
                                                      "orientation": "kept"}


@dataclass(frozen=True)
class FeatureStore:
    """A model's feature cache: `root` (the run's features/ folder) and `key_parts`, what
    the features depend on besides the split, its views and its images."""

    root: Path
    key_parts: dict

    def features(self, split: str, images: np.ndarray, encoder: Encoder, views: ViewSet,
                 data_key: str | None = None) -> np.ndarray:
        """Features of `images` for `split`: read from the cache, or computed and stored.

        `data_key` is the split's content fingerprint (`Prepared.split_key`: ids, content
        hashes and order), so a replaced, added or reordered image is never read stale."""
        key = {**self.key_parts, "comp": __version__, "pass": FORWARD_PASS, "split": split,
               "views": views.views,
               "random": views.random_identity(),
               "data": data_key if data_key is not None else len(images)}
        desc = f"features {self.key_parts.get('backbone', '')} {split}"
        return cached_npy(self.root, key, split,
                          lambda tmp: compute_features(images, encoder, views, out=tmp,
                                                       desc=desc),
                          mmap_mode="r")


def compute_features(images: np.ndarray, encoder: Encoder, views: ViewSet,
                     batch_size: int | None = None, desc: str = "features",
                     out: Path | None = None) -> np.ndarray | None:
    """Encoder outputs of each view of `images`: (len(views.views) + views.n_random, N, ...).

    With no prefix (everything trains) the preprocessed image is the feature; it stays
    uint8 where preprocessing is the identity (the model rescales itself). With `out`, the
    array goes batch by batch into that .npy file (in C order, so the writes are
    sequential) and None is returned: it never has to fit in memory, and neither the
    images (read batch by batch from their cache file) nor the features are mapped into
    this process while they are computed. Images decoded on read are decoded once for
    all the views (comp.data.images.decoded_once). `batch_size` None: the machine's
    (comp.training.compute.frozen_batch_size).
    """
    scratch = Path(out).parent if out is not None else Path(tempfile.gettempdir())
    passes = len(views.views) + (1 if views.n_random else 0)
    with decoded_once(images, scratch, passes) as readable:
        return _compute(readable, encoder, views,
                        batch_size or frozen_batch_size(), desc, out)


def _compute(images: np.ndarray, encoder: Encoder, views: ViewSet, batch_size: int,
             desc: str, out: Path | None) -> np.ndarray | None:
    extra = (random_views(images, views.n_random, Jitter.of(views.augment), views.seed)
             if views.n_random else [])
    sources = [("view", v) for v in views.views] + [("random", i) for i in range(views.n_random)]
    total = len(sources) * max(1, int(np.ceil(len(images) / batch_size)))
    started = time.time()
    with progress(total=total, desc=desc) as bar, _FeatureSink(out, len(sources),
                                                                len(images)) as sink:
        for position, (source, which) in enumerate(sources):
            for start in range(0, len(images), batch_size):
                stop = min(start + batch_size, len(images))
                batch, view = ((read_rows(images, start, stop), which) if source == "view"
                               else (extra[which][start:stop], 0))
                sink.add(position, start, encoder.outputs(batch, view))
                bar.update(1)
            if len(images):  # piped logs get a line per view, not one silent stretch
                unit_done("view", of=desc, view=f"{position + 1}/{len(sources)}",
                          images=len(images), seconds=time.time() - started)
    return sink.result


class _FeatureSink:
    """Where computed feature batches go: an array in memory, or (with `out`) a .npy file
    written batch by batch in C order; its shape is (n_sources, n_images, *batch shape)."""

    def __init__(self, out: Path | None, n_sources: int, n_images: int):
        self.out, self.n_sources, self.n_images = out, n_sources, n_images
        self.array: np.ndarray | None = None
        self.handle = None
        self.result: np.ndarray | None = None

    def __enter__(self) -> _FeatureSink:
        return self

    def add(self, position: int, start: int, batch: np.ndarray) -> None:
        """Batch `batch` of source `position`, from image `start` on."""
        shape = (self.n_sources, self.n_images, *batch.shape[1:])
        if self.out is not None:
            if self.handle is None:
                self.handle = open(self.out, "wb")  # closed in __exit__
                np.lib.format.write_array_header_1_0(self.handle, {
                    "descr": np.lib.format.dtype_to_descr(batch.dtype),
                    "fortran_order": False, "shape": shape})
            self.handle.write(np.ascontiguousarray(batch).tobytes())
            return
        if self.array is None:
            self.array = np.empty(shape, batch.dtype)
        self.array[position, start:start + len(batch)] = batch

    def __exit__(self, *failure) -> None:
        if self.handle is not None:
            self.handle.close()
        if failure[0] is not None:
            return
        empty = np.zeros((self.n_sources, 0), np.float16)  # no images
        if self.out is None:
            self.result = self.array if self.array is not None else empty
        elif self.handle is None:
            np.save(self.out, empty)


def unmap(array: np.ndarray) -> None:
    """Drop the pages of a read-only memory-mapped cache that this process has touched:
    they stay in the kernel's page cache (the next read is a cheap minor fault) but stop
    counting as this process's memory, so reading a cache larger than RAM never piles
    it up in the process."""
    if isinstance(array, np.memmap) and isinstance(array.base, mmap.mmap):
        array.base.madvise(mmap.MADV_DONTNEED)


def read_rows(images: np.ndarray, start: int, stop: int) -> np.ndarray:
    """images[start:stop]; from a memory-mapped .npy by a plain file read, so that reading
    a large cache once does not map all of it into this process."""
    # a whole-file map (not a slice of one) has the mmap itself as its base
    if (isinstance(images, np.memmap) and isinstance(images.base, mmap.mmap)
            and images.flags.c_contiguous and images.filename):
        row = int(np.prod(images.shape[1:])) * images.dtype.itemsize
        flat = np.fromfile(images.filename, dtype=images.dtype,
                           count=(stop - start) * row // images.dtype.itemsize,
                           offset=images.offset + start * row)
        return flat.reshape(stop - start, *images.shape[1:])
    return np.asarray(images[start:stop])


def frozen_forward(model, preprocess: Callable, dtype: str = "float16",
                   lite_cache: Path | None = None) -> Callable[[np.ndarray, int], np.ndarray]:
    """A function (uint8 batch, dihedral view) -> the outputs as `dtype` of `model`, a
    frozen network, with its batch norms folded into their convolutions (comp.models.
    build.fold_batch_norms: about 1.8x the views per second): the view,
    the float cast, `preprocess`, the forward pass and the cast run as one graph, traced
    once for every batch size and view (the view is a tensor). 1.2-1.3x the eager ops
    around `predict_on_batch` at 224 px, and one trace instead of one per batch shape
    (bench/README.md, "The feature pass as one graph"). Graph optimisation may move a
    preprocessed value by one float32 ulp (`x / 127.5 - 1`), so features differ from
    NumPy's arithmetic in the last bit of a few float16 values; training and prediction
    share this function. With `lite_cache` (comp.training.lite.lite_folder: a CPU and a
    backbone TFLite speeds up) the same function runs through TFLite's XNNPACK kernels,
    where the model converts and agrees with Keras on a probe batch, its converted form
    kept in that folder (about twice TensorFlow's views per second for MobileNet 0.25)
    under a hash of `model` as given, so a stored form is read without folding it."""
    if lite_cache is not None:
        from comp.training.lite import lite_forward, process_threads

        lite = lite_forward(model, preprocess, dtype, process_threads(), lite_cache)
        if lite is not None:
            return lite
    import tensorflow as tf

    from comp.models.build import fold_batch_norms

    model = fold_batch_norms(model)

    channels = model.input_shape[-1]

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, channels], tf.uint8),
                                  tf.TensorSpec([], tf.int32)])
    def forward(batch, view):
        turned = tf.image.rot90(batch, k=view % 4)
        turned = tf.cond(view >= 4, lambda: tf.reverse(turned, axis=[2]), lambda: turned)
        return tf.cast(model(preprocess(tf.cast(turned, tf.float32)), training=False), dtype)

    return lambda batch, view: forward(batch, tf.constant(view, tf.int32)).numpy()


def is_identity_preprocess(preprocess) -> bool:
    """Whether a backbone's preprocessing leaves 0..255 pixel values as they are."""
    probe = np.array([[0.0, 127.0, 255.0]], dtype=np.float32)
    return bool(np.array_equal(preprocess(probe.copy()), probe))
