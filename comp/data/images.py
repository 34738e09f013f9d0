"""Decode images with Pillow into uint8 RGB arrays, cached on disk where that pays: at
each size that shrinks an image, and, where every image of a split is N x N and a size
enlarges them, once at N, resized on read (`ResizedImages`: the same pixels as decoding
at that size, without an enlarged copy on disk). Where decoding is cheap (small JPEG or
PNG files, timed on a sample) large sizes are not cached at all but decoded on read
(`DecodedImages`): a 224 px image is 150 KB decoded against ~12 KB as a JPEG, and each
consumer (the prefix features, the embeddings) reads a split once and caches its own
result."""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from comp.artifacts import atomic_path, fingerprint, read_json, write_json
from comp.errors import CompError
from comp.log import progress


@dataclass(frozen=True)
class Decoding:
    """How images are decoded: comp's pixel limit and the high-bit-depth value range."""

    max_pixels: int
    intensity_range: tuple[float, float] | None = None


def decode_image(path: str | Path, size: int, max_pixels: int,
                 intensity_range: tuple[float, float] | None = None) -> np.ndarray:
    """Decode one image to a (size, size, 3) uint8 RGB array.

    Handles grayscale, RGBA/LA (alpha dropped onto black), palette, CMYK, 16-bit, 32-bit
    and float images and EXIF orientation. Intensities are mapped by one fixed rule, the
    same for every image (never by an image's own maximum):
      - 8-bit images: as they are;
      - 16-bit and 32-bit integer images: the 16-bit range 0..65535 to 0..255 (divided
        by 257), values above clipped;
      - float images: [0, 1] to 0..255; a float image with values outside [0, 1] is an
        error naming the range found, unless `intensity_range` is set;
      - `intensity_range=(low, high)` (data.intensity_range) replaces the range of every
        16-bit, 32-bit and float image: low..high maps to 0..255, values outside clipped
        (e.g. [0, 4095] for 12-bit data, [0, 255] for float images stored in 0..255).
    `max_pixels` (data.max_image_pixels) is the only pixel limit (Pillow's own is off):
    larger images are refused before decoding; truncated, empty or non-image files raise
    CompError naming the file.
    """
    path = Path(path)
    Image.MAX_IMAGE_PIXELS = None  # comp's own limit below is the only one
    try:
        with Image.open(path) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise CompError(
                    f"{path}: image is {width}x{height} pixels, over "
                    f"data.max_image_pixels={max_pixels}; downscale it or raise the limit"
                )
            img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale, much faster
            img = ImageOps.exif_transpose(img)
            img.load()
            rgb = _to_rgb(img, path, intensity_range)
    except CompError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
            Image.DecompressionBombError) as exc:
        if path.exists() and path.stat().st_size == 0:
            reason = "file is empty (0 bytes)"
        else:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CompError(f"{path}: cannot read image ({reason}); replace or remove it") from None
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.asarray(rgb, dtype=np.uint8)


def _to_rgb(img: Image.Image, path: Path,
            intensity_range: tuple[float, float] | None) -> Image.Image:
    if img.mode.startswith("I") or img.mode == "F":
        array = np.asarray(img, dtype=np.float64)
        low, high = _value_range(img.mode, array, path, intensity_range)
        array = np.nan_to_num(array, nan=low, posinf=high, neginf=low)  # NaN: black
        array = np.clip((array - low) * (255.0 / (high - low)), 0, 255)
        return Image.fromarray(np.rint(array).astype(np.uint8)).convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", img.size, (0, 0, 0))
        background.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
        return background
    return img.convert("RGB")


def _value_range(mode: str, array: np.ndarray, path: Path,
                 intensity_range: tuple[float, float] | None) -> tuple[float, float]:
    """The value range that maps to 0..255 (see decode_image)."""
    if intensity_range is not None:
        low, high = (float(v) for v in intensity_range)
        return low, high
    if mode != "F":
        return 0.0, 65535.0
    finite = array[np.isfinite(array)]
    if finite.size and (finite.min() < -1e-6 or finite.max() > 1 + 1e-6):
        raise CompError(
            f"{path}: float image with values in [{finite.min():.4g}, {finite.max():.4g}], "
            "outside [0, 1]; set data.intensity_range=[low,high] (the range that maps to "
            "0..255, the same for every image)"
        )
    return 0.0, 1.0


def load_images(paths: list[str], size: int, max_pixels: int, desc: str = "decode",
                bar=None, intensity_range: tuple[float, float] | None = None) -> np.ndarray:
    """Decode `paths` to one (N, size, size, 3) uint8 array, two threads, with a progress
    bar (its own, or `bar` updated per image)."""
    out = np.zeros((len(paths), size, size, 3), dtype=np.uint8)

    def work(i: int) -> None:
        out[i] = decode_image(paths[i], size, max_pixels, intensity_range)

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        if bar is not None:
            for _ in pool.map(work, range(len(paths))):
                bar.update(1)
        else:
            list(progress(pool.map(work, range(len(paths))), total=len(paths), desc=desc))
    return out


def content_hash(path: str | Path) -> str:
    """The BLAKE2b hash (128 bits, hex) of a file's bytes: an image's identity in every
    cache key, whatever its name, size or modification time."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, lambda: hashlib.blake2b(digest_size=16)).hexdigest()


def content_hashes(paths: list[str]) -> list[str]:
    """`content_hash` of each path, in order (a few threads: it is mostly I/O)."""
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        return list(pool.map(content_hash, paths))


def cached_images(cache_dir: Path, split: str, paths: list[str], size: int,
                  decoding: Decoding, hashes: list[str] | None = None) -> np.ndarray:
    """Decoded images of `split` at `size` (by `decoding`), read from or written to
    `cache_dir`; a read-only memory map of the cache file (decoded straight into it, never
    all in memory).

    The cache file name carries a fingerprint of the images' content hashes in order
    (`hashes`, computed here when not given), the size and the decoding settings, so a
    replaced, added or reordered image is decoded again instead of read stale.
    """
    if not paths:
        return np.zeros((0, size, size, 3), dtype=np.uint8)
    hashes = content_hashes(paths) if hashes is None else list(hashes)
    target = _cache_file(cache_dir, split, size, decoding, hashes)
    if target.exists():
        try:
            return np.load(target, mmap_mode="r")
        except (OSError, ValueError):
            target.unlink()  # a corrupt cache is rebuilt, never trusted
    if not _recorded_worth_caching(target, paths, size, decoding):
        return DecodedImages(paths, size, decoding)
    side = common_side(cache_dir, split, paths, hashes)
    if side is not None and size > side:  # enlarged: cached once at the images' own side
        return ResizedImages(cached_images(cache_dir, split, paths, side, decoding, hashes),
                             size)
    value_range = decoding.intensity_range
    with atomic_path(target, suffix=".npy") as tmp, open(tmp, "wb") as handle:
        # decoded a chunk at a time and written in order: a large split never sits whole
        # in memory, nor mapped into this process
        np.lib.format.write_array_header_1_0(handle, {
            "descr": "|u1", "fortran_order": False, "shape": (len(paths), size, size, 3)})
        chunk = 256
        with progress(total=len(paths), desc=f"decode {split} {size}px") as bar:
            for start in range(0, len(paths), chunk):
                part = paths[start : start + chunk]
                handle.write(load_images(part, size, decoding.max_pixels, desc="", bar=bar,
                                         intensity_range=value_range).tobytes())
    return np.load(target, mmap_mode="r")


def _cache_file(cache_dir: Path, split: str, size: int, decoding: Decoding,
                hashes: list[str]) -> Path:
    value_range = decoding.intensity_range
    key = fingerprint({"hashes": hashes, "size": size, "max_pixels": decoding.max_pixels,
                       "range": None if value_range is None else list(value_range)}, 12)
    return cache_dir / f"{split}_{size}_{key}.npy"


# decodes of at most this many bytes an image are always cached (the 32 px hashes and
# `pixels` features: 3 KB an image, read again by several consumers)
ALWAYS_CACHED_BYTES = 64 * 64 * 3
# above it, a sample decoding faster than this per image is not cached: a 224 px JPEG
# decodes in ~1-2 ms here, a fraction of the prefix pass that reads it (~25 ms a view)
CHEAP_DECODE_SECONDS = 0.004
TIMED_SAMPLE = 16


def worth_caching(paths: list[str], size: int, decoding: Decoding) -> bool:
    """Whether `paths` decoded at `size` go to a cache file: small decodes always, larger
    ones where a sample of TIMED_SAMPLE images, spread over the split, decodes slower
    than CHEAP_DECODE_SECONDS an image (large or high-bit-depth files). Either way the
    pixels are the same; only disk use and read time differ."""
    if size * size * 3 <= ALWAYS_CACHED_BYTES:
        return True
    sample = paths[:: max(1, len(paths) // TIMED_SAMPLE)][:TIMED_SAMPLE]
    started = time.perf_counter()
    for path in sample:
        decode_image(path, size, decoding.max_pixels, decoding.intensity_range)
    return (time.perf_counter() - started) / len(sample) > CHEAP_DECODE_SECONDS


def _recorded_worth_caching(target: Path, paths: list[str], size: int,
                            decoding: Decoding) -> bool:
    """`worth_caching`, decided once per cache file and kept beside it (`.decode.json`),
    so later readers neither time the sample again nor decide otherwise."""
    record = target.with_suffix(".decode.json")
    if record.exists():
        try:
            return bool(read_json(record)["cache"])
        except (OSError, ValueError, KeyError):
            pass  # decided again below
    cache = worth_caching(paths, size, decoding)
    write_json(record, {"cache": cache})
    return cache


def common_side(cache_dir: Path, split: str, paths: list[str], hashes: list[str]) -> int | None:
    """N where every image of `paths` is N x N pixels in its file, else None (mixed sizes,
    or a file whose header cannot be read: decoding then names it). Read from the image
    headers once and kept beside the image cache, keyed by the content hashes."""
    target = cache_dir / f"{split}_side_{fingerprint({'hashes': hashes}, 12)}.json"
    if target.exists():
        try:
            return read_json(target)["side"]
        except (OSError, ValueError, KeyError):
            pass  # rebuilt below
    sides = set()
    for path in paths:
        try:
            with Image.open(path) as img:
                sides.add(img.size)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            return None
    width, height = sides.pop() if len(sides) == 1 else (0, 1)
    side = width if width == height else None
    write_json(target, {"side": side})
    return side


class _RowImages:
    """A read-only (N, size, size, 3) uint8 image array whose rows are made on read by
    `_rows(indices)`. Indexing (an int, a slice or an index array), len(), iteration and
    np.asarray() work as on an array."""

    def __init__(self, n: int, size: int):
        self.size = size
        self.shape = (n, size, size, 3)
        self.dtype, self.ndim = np.dtype(np.uint8), 4

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, (int, np.integer)):
            return self._rows(np.arange(len(self))[[index]])[0]
        return self._rows(np.arange(len(self))[index])

    def __iter__(self) -> Iterator[np.ndarray]:
        for start in range(0, len(self), 256):
            yield from self[start : start + 256]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def _rows(self, indices: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class DecodedImages(_RowImages):
    """The images of `paths` at `size`, decoded from their files on every read (a few
    threads per read of many rows): where decoding is cheap (`worth_caching`)."""

    def __init__(self, paths: list[str], size: int, decoding: Decoding):
        super().__init__(len(paths), size)
        self.paths, self.decoding = list(paths), decoding

    def _rows(self, indices: np.ndarray) -> np.ndarray:
        out = np.empty((len(indices), self.size, self.size, 3), np.uint8)

        def work(i: int) -> None:
            out[i] = decode_image(self.paths[indices[i]], self.size, self.decoding.max_pixels,
                                  self.decoding.intensity_range)

        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            list(pool.map(work, range(len(indices))))
        return out


@contextmanager
def decoded_once(images, folder: Path, passes: int) -> Iterator[np.ndarray]:
    """`images` for a consumer that reads them `passes` times over (a pass per view):
    images made on read (`DecodedImages`, `ResizedImages`) read more than once are made a
    single time into a temporary file in `folder` (deleted at exit), so the run
    directory keeps no extra copy and no image is decoded or resized once per view; an
    array is passed as it is."""
    if not isinstance(images, _RowImages) or passes < 2:
        yield images
        return
    folder.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix="decoded-", suffix=".npy", dir=folder)
    os.close(handle)
    target = Path(name)
    try:
        with open(target, "wb") as out:
            np.lib.format.write_array_header_1_0(out, {
                "descr": "|u1", "fortran_order": False, "shape": images.shape})
            for start in range(0, len(images), 256):
                out.write(images[start : start + 256].tobytes())
        yield np.load(target, mmap_mode="r")
    finally:
        target.unlink(missing_ok=True)


class ResizedImages(_RowImages):
    """The images of `base`, the decoded images at their own side (a memory map of its
    cache), resized to `size` on read with decode_image's own call, so they equal
    decoding the files at `size`."""

    def __init__(self, base: np.ndarray, size: int):
        super().__init__(len(base), size)
        self.base = base

    def _rows(self, indices: np.ndarray) -> np.ndarray:
        rows = np.asarray(self.base[indices])
        out = np.empty((len(rows), self.size, self.size, 3), np.uint8)
        for i, row in enumerate(rows):
            out[i] = self._resize(row)
        return out

    def _resize(self, row: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(row).resize(
            (self.size, self.size), Image.Resampling.BILINEAR, reducing_gap=3.0), np.uint8)
