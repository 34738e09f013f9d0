"""Competitions that ship pixels in CSVs (Kaggle Digit Recognizer, Fashion-MNIST, Sign
Language MNIST, Kannada-MNIST): `train.csv` = label,pixel0,...,pixel783 (one square
grayscale image per row, row-major), `test.csv` = pixel rows (maybe with an id column),
`sample_submission.csv` = ImageId,Label (ImageId 1..N: test.csv's rows in order, or
test.csv's id column). There are no train/ or test/ image folders.

Each pixel row is written once as a grayscale PNG into a folder of the run directory
(keyed by the rows' content), so the rest of comp reads these images like any other
competition's files; each image's content hash is the hash of its pixel bytes.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from comp.artifacts import fingerprint
from comp.errors import CompError
from comp.log import progress

PIXEL_COLUMN = re.compile(r"pixel_?(\d+)", re.IGNORECASE)


def pixel_columns(columns: list[str]) -> list[str]:
    """The pixel columns (`pixel<k>` or `pixel_<k>`, any case) of a header, by k."""
    found = [c for c in columns if PIXEL_COLUMN.fullmatch(c.strip())]
    return sorted(found, key=lambda c: int(PIXEL_COLUMN.fullmatch(c.strip()).group(1)))


def is_pixel_csv(path: Path) -> bool:
    """Whether the CSV at `path` has pixel columns in its header."""
    try:
        header = pd.read_csv(path, nrows=0).columns
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError):
        return False
    return bool(pixel_columns([str(c) for c in header]))


def image_side(columns: list[str], source: Path) -> int:
    """The side of the square images whose pixels are `columns`; CompError otherwise."""
    count = len(columns)
    side = math.isqrt(count)
    if side * side != count:
        colour = math.isqrt(count // 3)
        hint = (f" ({count} = 3 x {colour}x{colour}: colour pixel CSVs are not read, since "
                "planar and interleaved channel orders cannot be told apart)"
                if count % 3 == 0 and 3 * colour * colour == count else "")
        raise CompError(f"{source}: {count} pixel columns is not a square number of pixels"
                        f"{hint}; give one grayscale side x side image per row")
    numbers = [int(PIXEL_COLUMN.fullmatch(c.strip()).group(1)) for c in columns]
    start = numbers[0]
    if numbers != list(range(start, start + count)):
        gap = next(n for i, n in enumerate(numbers) if n != start + i)
        raise CompError(f"{source}: pixel columns do not run {start}..{start + count - 1} "
                        f"without a gap (first odd one: pixel{gap}); give every pixel column")
    return side


def read_pixel_rows(path: Path, columns: list[str], text_columns: list[str]
                    ) -> tuple[pd.DataFrame, np.ndarray]:
    """(the `text_columns` as text, the pixel `columns` as an (N, P) uint8 array) of the
    CSV at `path`; non-numeric, non-whole or out-of-range (0..255) values are a CompError
    naming the column and line."""
    frame = pd.read_csv(path, dtype={c: str for c in text_columns}, keep_default_na=False)
    frame.columns = [str(c).strip() for c in frame.columns]
    if frame.empty:
        raise CompError(f"{path}: has a header but no rows")
    pixels = frame[columns]
    for column in columns:
        values = pixels[column]
        if not pd.api.types.is_numeric_dtype(values):
            numbers = pd.to_numeric(values, errors="coerce")
            row = int(np.flatnonzero(numbers.isna().to_numpy())[0])
            raise CompError(f"{path} line {row + 2}: {column}={values.iloc[row]!r} is not a "
                            "number; pixel values are whole numbers 0..255")
    array = pixels.to_numpy()
    bad = (array < 0) | (array > 255) | (array != np.round(array))
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        value = array[row, col].item()
        raise CompError(f"{path} line {row + 2}: {columns[col]}={value:g} is outside "
                        "0..255 or not a whole number; pixel values are whole numbers 0..255")
    return frame[text_columns], array.astype(np.uint8)


def pixel_hashes(pixels: np.ndarray) -> list[str]:
    """The BLAKE2b hash (128 bits, hex) of each row's pixel bytes: the image's identity."""
    return [hashlib.blake2b(row.tobytes(), digest_size=16).hexdigest() for row in pixels]


def write_pixel_images(folder: Path, split: str, names: list[str], pixels: np.ndarray,
                       side: int, hashes: list[str]) -> list[str]:
    """The paths of `pixels`' rows as grayscale PNGs named `names` in a sub-folder of
    `folder` keyed by their content; written once (into a temporary folder renamed into
    place), reused as long as the rows stay the same."""
    target = folder / f"{split}_{side}_{fingerprint({'names': names, 'hashes': hashes}, 16)}"
    paths = [str(target / name) for name in names]
    if target.is_dir():
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=folder))
    try:
        for name, row in progress(zip(names, pixels, strict=True), total=len(names),
                                  desc=f"write {split} pixel images"):
            Image.fromarray(row.reshape(side, side)).save(tmp / name)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():  # not another process that wrote the same rows first
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return paths
