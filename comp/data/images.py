"""Decode images once with Pillow into uint8 RGB arrays of one size, cached on disk."""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from comp.artifacts import atomic_path, fingerprint
from comp.errors import CompError
from comp.log import progress


def decode_image(path: str | Path, size: int, max_pixels: int) -> np.ndarray:
    """Decode one image to a (size, size, 3) uint8 RGB array.

    Handles grayscale, RGBA/LA (alpha dropped onto black), palette, CMYK, 16-bit and
    float images and EXIF orientation. Images over `max_pixels` are refused before
    decoding; truncated, empty or non-image files raise CompError naming the file.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
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
                rgb = _to_rgb(img)
    except CompError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
            Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        if path.exists() and path.stat().st_size == 0:
            reason = "file is empty (0 bytes)"
        else:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CompError(f"{path}: cannot read image ({reason}); replace or remove it") from None
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.asarray(rgb, dtype=np.uint8)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(img, dtype=np.float64)
        top = float(array.max()) if array.size else 0.0
        scale = 255.0 / (2 ** int(np.ceil(np.log2(top + 1))) - 1) if top > 255 else 1.0
        array = np.clip(array * scale, 0, 255).astype(np.uint8)
        return Image.fromarray(array).convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", img.size, (0, 0, 0))
        background.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
        return background
    return img.convert("RGB")


def load_images(paths: list[str], size: int, max_pixels: int, desc: str = "decode",
                bar=None) -> np.ndarray:
    """Decode `paths` to one (N, size, size, 3) uint8 array, two threads, with a progress
    bar (its own, or `bar` updated per image)."""
    out = np.zeros((len(paths), size, size, 3), dtype=np.uint8)

    def work(i: int) -> None:
        out[i] = decode_image(paths[i], size, max_pixels)

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        if bar is not None:
            for _ in pool.map(work, range(len(paths))):
                bar.update(1)
        else:
            list(progress(pool.map(work, range(len(paths))), total=len(paths), desc=desc))
    return out


def cached_images(
    cache_dir: Path, split: str, paths: list[str], size: int, max_pixels: int
) -> np.ndarray:
    """Decoded images of `split` at `size`, read from or written to `cache_dir`; a
    read-only memory map of the cache file (decoded straight into it, never all in memory).

    The cache file name carries a fingerprint of the file list, sizes and modification
    times, so a changed image folder is decoded again instead of read stale.
    """
    if not paths:
        return np.zeros((0, size, size, 3), dtype=np.uint8)
    stats = [(p, os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in paths]
    key = fingerprint({"files": stats, "size": size, "max_pixels": max_pixels})
    target = cache_dir / f"{split}_{size}_{key}.npy"
    if target.exists():
        try:
            return np.load(target, mmap_mode="r")
        except (OSError, ValueError):
            target.unlink()  # a corrupt cache is rebuilt, never trusted
    with atomic_path(target, suffix=".npy") as tmp, open(tmp, "wb") as handle:
        # decoded a chunk at a time and written in order: a large split never sits whole
        # in memory, nor mapped into this process
        np.lib.format.write_array_header_1_0(handle, {
            "descr": "|u1", "fortran_order": False, "shape": (len(paths), size, size, 3)})
        chunk = 256
        with progress(total=len(paths), desc=f"decode {split} {size}px") as bar:
            for start in range(0, len(paths), chunk):
                part = paths[start : start + chunk]
                handle.write(load_images(part, size, max_pixels, desc="", bar=bar).tobytes())
    return np.load(target, mmap_mode="r")
