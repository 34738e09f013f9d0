"""Build a 26-class colour glyph competition from the fonts matplotlib ships (not a benchmark).

`python bench/make_glyphs.py OUT [--per-class 100] [--size 48]` writes OUT/ in comp's
competition layout: the capital letters A-Z, each rendered from one of the Latin fonts in
matplotlib's wheel (`matplotlib/mpl-data/fonts/ttf`: DejaVu Sans, Sans Mono and Serif in
4 styles each, STIX General in 4, Computer Modern roman, bold, sans, italic, typewriter and
math italic) at a random size, rotation (+-15 degrees), position, and foreground and
background colour, with pixel noise: `--per-class` labelled RGB PNGs per letter in train/
(train.csv; 2,600 by default), a fifth as many in test/ (labels held back in
OUT/test_labels.csv, as a competition does) and a tenth as many in unlabeled/. The fonts
are data inside the installed package (no download; matplotlib is one of comp's own
dependencies); the licences are in bench/README.md. Prints each split's class counts.
`--pair Q O` writes a two-class competition of those letters instead, in Aerial Cactus's
layout: train.csv `id,is_Q` of 1 (Q) and 0 (O), and a sample submission of 0.5 (the
probability of 1, scored by AUC). `python bench/make_glyphs.py --smoke` writes 4 images
per letter into a temporary folder.
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import string
import tempfile
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from fontTools.ttLib import TTFont
from PIL import Image, ImageDraw, ImageFont

CLASSES = list(string.ascii_uppercase)
FONT_DIR = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
FONTS = ["DejaVuSans", "DejaVuSans-Bold", "DejaVuSans-Oblique", "DejaVuSans-BoldOblique",
         "DejaVuSansMono", "DejaVuSansMono-Bold", "DejaVuSansMono-Oblique",
         "DejaVuSansMono-BoldOblique", "DejaVuSerif", "DejaVuSerif-Bold",
         "DejaVuSerif-Italic", "DejaVuSerif-BoldItalic", "STIXGeneral", "STIXGeneralBol",
         "STIXGeneralItalic", "STIXGeneralBolIta", "cmr10", "cmb10", "cmss10", "cmti10",
         "cmtt10", "cmmi10"]


def usable_fonts() -> list[Path]:
    """The fonts of FONTS in matplotlib's wheel that map every letter A-Z to a glyph."""
    found = []
    for name in FONTS:
        path = FONT_DIR / f"{name}.ttf"
        if not path.exists():
            continue
        cmap = TTFont(path, lazy=True).getBestCmap() or {}
        if all(ord(c) in cmap for c in CLASSES):
            found.append(path)
    if len(found) < 10:
        raise SystemExit(f"bench/make_glyphs.py: only {len(found)} usable fonts in {FONT_DIR}")
    return found


def render(rng: np.random.Generator, letter: str, fonts: list[Path], size: int) -> Image.Image:
    """One glyph: random font, scale, rotation, offset and colours, plus pixel noise."""
    scale = 4  # drawn large, then downsampled: smooth edges
    big = size * scale
    font = ImageFont.truetype(str(fonts[rng.integers(len(fonts))]),
                              int(big * rng.uniform(0.55, 0.85)))
    background = rng.integers(0, 256, 3)
    foreground = rng.integers(0, 256, 3)
    while np.abs(foreground - background).sum() < 200:  # legible: enough contrast
        foreground = rng.integers(0, 256, 3)
    layer = Image.new("L", (big, big), 0)
    ImageDraw.Draw(layer).text((big / 2, big / 2), letter, fill=255, font=font, anchor="mm")
    layer = layer.rotate(rng.uniform(-15, 15), resample=Image.Resampling.BILINEAR,
                         translate=tuple(rng.uniform(-0.1, 0.1, 2) * big))
    mask = np.asarray(layer.resize((size, size), Image.Resampling.LANCZOS), np.float32) / 255
    pixels = background + mask[..., None] * (foreground - background)
    pixels += rng.normal(0, rng.uniform(2, 12), pixels.shape)
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, nargs="?")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pair", nargs=2, metavar=("POSITIVE", "NEGATIVE"),
                        choices=CLASSES, help="two letters: a two-class competition (1, 0)")
    parser.add_argument("--smoke", action="store_true",
                        help="4 images per letter into a temporary folder (CI: seconds)")
    args = parser.parse_args()
    if args.smoke:
        args.out = Path(tempfile.mkdtemp(prefix="make-glyphs-")) / "glyphs"
        atexit.register(shutil.rmtree, args.out.parent, True)  # scratch: gone when the bench ends
        args.per_class = 4
    elif args.out is None:
        parser.error("OUT is required (or --smoke)")
    fonts = usable_fonts()
    rng = np.random.default_rng(args.seed)
    classes = args.pair or CLASSES
    counts = {"train": args.per_class, "test": max(1, args.per_class // 5),
              "unlabeled": max(1, args.per_class // 10)}
    labels: dict[str, list[tuple[str, str]]] = {}
    for split, per_class in counts.items():
        (args.out / split).mkdir(parents=True, exist_ok=True)
        letters = [c for c in classes for _ in range(per_class)]
        order = rng.permutation(len(letters))  # ids say nothing about the class
        rows = []
        for number, index in enumerate(order):
            name = f"{split[:2]}{number:05d}.png"
            render(rng, letters[index], fonts, args.size).save(args.out / split / name)
            rows.append((name, letters[index]))
        labels[split] = sorted(rows)
    column = f"is_{args.pair[0]}" if args.pair else "label"
    frames = {split: pd.DataFrame(rows, columns=["id", column]) for split, rows in labels.items()}
    if args.pair:  # 1 for the first letter, 0 for the second
        for frame in frames.values():
            frame[column] = (frame[column] == args.pair[0]).astype(int)
    frames["train"].to_csv(args.out / "train.csv", index=False)
    frames["test"].to_csv(args.out / "test_labels.csv", index=False)
    frames["test"].assign(**{column: 0.5 if args.pair else CLASSES[0]}).to_csv(
        args.out / "sample_submission.csv", index=False)
    table = pd.DataFrame({split: pd.Series([label for _, label in rows]).value_counts()
                          for split, rows in labels.items()}).sort_index()
    print(f"{args.out}: {len(fonts)} fonts from {FONT_DIR}, {args.size} px RGB")
    print(table.rename_axis("class").T.to_string())
    print(f"total: {table.sum().to_dict()}")


if __name__ == "__main__":
    main()
