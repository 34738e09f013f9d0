"""Competitions that ship pixels in CSVs (Kaggle Digit Recognizer, Fashion-MNIST, Sign
Language MNIST, Kannada-MNIST): `train.csv` = label,pixel0,...,pixel783 (one square
grayscale image per row, row-major), `test.csv` = pixel rows (maybe with an id column),
`sample_submission.csv` = ImageId,Label (ImageId 1..N: test.csv's rows in order, or
test.csv's id column). There are no train/ or test/ image folders. Pixel columns may be
named `<row>x<column>` instead (mnist-in-csv's 1x1 ... 28x28). A row of 3 x side^2
pixel columns is a colour image (HAM10000's hmnist_28_28_RGB.csv), its values either
interleaved (RGBRGB...) or planar (every red value, then green, then blue: CIFAR's
arrays): `data.pixel_order`, or told apart by which order makes neighbouring pixels
alike (`choose_pixel_order`).

Each pixel row is written once as a PNG into a folder of the run directory (keyed by the
rows' content), so the rest of comp reads these images like any other competition's
files; each image's content hash is the hash of its pixel bytes, row by row and pixel by
pixel (a grayscale row's bytes as they are).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from comp.artifacts import fingerprint, read_json, write_json
from comp.errors import CompError
from comp.log import progress

PIXEL_COLUMN = re.compile(r"pixel_?(\d+)", re.IGNORECASE)
GRID_COLUMN = re.compile(r"(\d+)x(\d+)")  # mnist-in-csv's 1x1 ... 28x28: row x column
# data.pixel_order: how a colour row's values are laid out (auto: told from the images)
PIXEL_ORDERS = ("auto", "interleaved", "planar")
# auto takes the order whose neighbouring pixels differ at most this share of the other's
ORDER_MARGIN = 0.8
ORDER_SAMPLE = 512  # rows auto reads
# beside the PNGs: the order train.csv's colour rows were read in, for stage=predict's rows
ORDER_RECORD = "colour_order.json"


def pixel_numbers(columns: list[str]) -> dict[str, int]:
    """Each pixel column of a header and its place in the row-major image: `pixel<k>` or
    `pixel_<k>` (any case) at k, or else `<row>x<column>` (mnist-in-csv's 1x1 ... 28x28)
    at row x width + column; {} where there are none."""
    named = {c: int(m.group(1)) for c in columns if (m := PIXEL_COLUMN.fullmatch(c.strip()))}
    if named:
        return named
    grid = {c: (int(m.group(1)), int(m.group(2))) for c in columns
            if (m := GRID_COLUMN.fullmatch(c.strip()))}
    if not grid:
        return {}
    first = min(column for _, column in grid.values())
    width = max(column for _, column in grid.values()) - first + 1
    return {c: row * width + column - first for c, (row, column) in grid.items()}


def pixel_columns(columns: list[str]) -> list[str]:
    """The pixel columns of a header (pixel_numbers), in the image's row-major order."""
    numbers = pixel_numbers(columns)
    return sorted(numbers, key=numbers.get)


def is_pixel_csv(path: Path) -> bool:
    """Whether the CSV at `path` has pixel columns (pixel_numbers) in its header."""
    try:
        header = pd.read_csv(path, nrows=0).columns
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError):
        return False
    return bool(pixel_columns([str(c) for c in header]))


def image_shape(columns: list[str], source: Path) -> tuple[int, int]:
    """(side, channels) of the square images whose pixels are `columns`: side^2 columns
    are grayscale, 3 x side^2 colour; CompError otherwise or where a column is missing."""
    count = len(columns)
    side, channels = math.isqrt(count), 1
    if side * side != count:
        side, channels = math.isqrt(count // 3), 3
        if count % 3 or 3 * side * side != count:
            raise CompError(f"{source}: {count} pixel columns is neither a square number of "
                            "pixels (side x side grayscale) nor 3 times one (colour); give "
                            "one square image per row")
    place = pixel_numbers(columns)
    numbers = [place[c] for c in columns]
    start = numbers[0]
    if numbers != list(range(start, start + count)):
        gap = next(c for i, c in enumerate(columns) if place[c] != start + i)
        raise CompError(f"{source}: pixel columns {columns[0]}..{columns[-1]} have a gap "
                        f"(first odd one: {gap}); give every pixel column")
    return side, channels


def arranged(pixels: np.ndarray, side: int, channels: int, order: str) -> np.ndarray:
    """(N, side, side) grayscale or (N, side, side, 3) colour images of (N, P) pixel
    rows, a colour row's values `order`ed interleaved or planar."""
    if channels == 1:
        return pixels.reshape(-1, side, side)
    if order == "planar":
        return np.ascontiguousarray(pixels.reshape(-1, channels, side, side)
                                    .transpose(0, 2, 3, 1))
    return pixels.reshape(-1, side, side, channels)


@dataclass(frozen=True)
class PixelLayout:
    """How train.csv's pixel rows make images, which test.csv's must share: its pixel
    `columns`, the images' `side` and `channels`, a colour row's value `order`."""

    columns: list[str]
    side: int
    channels: int
    order: str

    def images(self, pixels: np.ndarray) -> np.ndarray:
        """(N, P) pixel rows as images (`arranged`)."""
        return arranged(pixels, self.side, self.channels, self.order)


def roughness(images: np.ndarray) -> float:
    """Mean absolute difference of vertically and of horizontally neighbouring pixels of
    (N, H, W[, C]) images: small where the pixels are where they belong."""
    values = images.astype(np.float32)
    return float(np.abs(np.diff(values, axis=1)).mean() + np.abs(np.diff(values, axis=2)).mean())


def choose_pixel_order(pixels: np.ndarray, side: int, channels: int, setting: str,
                       source: Path) -> tuple[str, str | None]:
    """(the order of colour rows' values, a note saying how auto chose it or None) for
    (N, P) pixel rows: `setting` where it is not auto (or the rows are grayscale), else
    the order whose images are at most ORDER_MARGIN as rough as the other's (on up to
    ORDER_SAMPLE rows); a CompError naming data.pixel_order where neither is."""
    if channels == 1 or setting != "auto":
        return ("interleaved" if setting == "auto" else setting), None
    sample = pixels[:ORDER_SAMPLE]
    rough = {order: roughness(arranged(sample, side, channels, order))
             for order in ("interleaved", "planar")}
    chosen, other = sorted(rough, key=rough.get)
    if not rough[chosen] <= ORDER_MARGIN * rough[other]:
        raise CompError(
            f"{source}: {pixels.shape[1]} pixel columns are {side}x{side} colour images, and "
            "whether each pixel's 3 values sit side by side (interleaved, RGBRGB...) or each "
            "colour's values follow the other's (planar: every red, then green, then blue) "
            "cannot be told from the images; set data.pixel_order=interleaved or planar")
    return chosen, (f"{source.name}: {pixels.shape[1]} pixel columns read as {side}x{side} "
                    f"colour images with the values {chosen} (neighbouring pixels differ "
                    f"{rough[other] / max(rough[chosen], 1e-9):.1f}x less than read "
                    f"{other}); set data.pixel_order={other} if that is wrong")


def record_order(pixel_dir: Path, order: str) -> None:
    """Keep the order train.csv's colour rows were first read in under `pixel_dir` (the
    run's), so rows given to predict later are read as its models' were; a later other
    order is not kept: the run refuses the changed images as other training data."""
    if recorded_order(pixel_dir) is None:
        pixel_dir.mkdir(parents=True, exist_ok=True)
        write_json(pixel_dir / ORDER_RECORD, {"order": order})


def recorded_order(pixel_dir: Path) -> str | None:
    """The order record_order kept under `pixel_dir`; None where there is none."""
    path = pixel_dir / ORDER_RECORD
    return read_json(path)["order"] if path.is_file() else None


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


def pixel_hashes(images: np.ndarray) -> list[str]:
    """The BLAKE2b hash (128 bits, hex) of each image's pixel bytes (`arranged`; a
    grayscale image's are its row's): the image's identity."""
    return [hashlib.blake2b(image.tobytes(), digest_size=16).hexdigest() for image in images]


def write_pixel_images(folder: Path, split: str, names: list[str], images: np.ndarray,
                       hashes: list[str]) -> list[str]:
    """The paths of `images` (`arranged`) as PNGs named `names` in a sub-folder of
    `folder` keyed by their content; written once (into a temporary folder renamed into
    place), reused as long as the rows stay the same."""
    side = images.shape[1]
    target = folder / f"{split}_{side}_{fingerprint({'names': names, 'hashes': hashes}, 16)}"
    paths = [str(target / name) for name in names]
    if target.is_dir():
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=folder))
    try:
        for name, image in progress(zip(names, images, strict=True), total=len(names),
                                    desc=f"write {split} pixel images"):
            Image.fromarray(image).save(tmp / name)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():  # not another process that wrote the same rows first
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return paths
