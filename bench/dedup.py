"""What the near-duplicate check joins on a competition folder, at each pixel-correlation
threshold (data.dedup_min_correlation), and which copies of its images it still finds.

    python bench/dedup.py DATA_DIR [DATA_DIR ...] [--copies 40] [--max-distance 6]

For each folder: the training images' pairs within `--max-distance` hash bits (the
candidates), the share of them with the same label, the quantiles of their best-view
pixel correlation (comp.data.folds.best_view_correlation), and for thresholds -1 (the
hashes alone), 0.85, 0.9 and 0.95 the groups the folds would keep together (how many,
the images in them, the largest, and how many mix labels). Then `--copies` of its
training images are copied (JPEG quality 50, half size, brightness x1.3, contrast x0.7,
a 90-degree turn then JPEG 70, a 5% shift) and the table gives the share of copies the
check joins to their original at the hashes alone and at 0.9 / 0.95.
    python bench/dedup.py --smoke
runs it on a tiny synthetic folder in a temporary directory: seconds, for CI.
"""

from __future__ import annotations

import argparse
import atexit
import io
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageEnhance

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

THRESHOLDS = (-1.0, 0.85, 0.9, 0.95)


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(buffer).convert("RGB")


def _shift(image: Image.Image, share: float) -> Image.Image:
    width, height = image.size
    return image.crop((int(width * share), 0, width, height)).resize(image.size)


COPIES = {
    "jpeg 50": lambda im: _jpeg(im, 50),
    "half size": lambda im: im.resize((im.size[0] // 2, im.size[1] // 2)).resize(im.size),
    "brightness x1.3": lambda im: ImageEnhance.Brightness(im).enhance(1.3),
    "contrast x0.7": lambda im: ImageEnhance.Contrast(im).enhance(0.7),
    "turn 90 + jpeg 70": lambda im: _jpeg(im.rotate(90), 70),
    "shift 5%": lambda im: _shift(im, 0.05),
}


def train_images(data_dir: Path, runs_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The folder's training images at comp's hashing size, and their labels."""
    from comp.config import load_config
    from comp.data.prepared import HASH_SIZE, Prepared, decoding, load_competition
    from comp.workspace import run_dir

    cfg = load_config([f"data.dir={data_dir}", f"runs_dir={runs_dir}", "name=dedup"])
    competition = load_competition(cfg)
    prepared = Prepared(competition, pd.DataFrame(), run_dir(cfg.runs_dir, cfg.name),
                        decoding(cfg))
    return prepared.images("train", HASH_SIZE), competition.train["label"].to_numpy()


def folder_rows(images: np.ndarray, labels: np.ndarray, max_distance: int) -> list[dict]:
    """One row per threshold: the groups the folds would keep together."""
    from comp.data.folds import (
        best_view_correlation,
        duplicate_groups,
        fingerprints,
        hamming_within,
    )

    prints = fingerprints(images)
    i, j = hamming_within(prints.hashes, prints.hashes, max_distance)
    i, j = i[i < j], j[i < j]
    correlation = best_view_correlation(prints.thumbs, prints.thumbs, i, j)
    quantiles = (np.quantile(correlation, [0.1, 0.5, 0.9, 1.0]).round(3).tolist()
                 if len(i) else [])
    print(f"  candidate pairs (hash within {max_distance} bits): {len(i)}, same label "
          f"{np.mean(labels[i] == labels[j]) if len(i) else float('nan'):.3f}; "
          f"correlation quantiles 10/50/90/100%: {quantiles}")
    rows = []
    for threshold in THRESHOLDS:
        groups = duplicate_groups(prints, max_distance, threshold)
        sizes = np.bincount(groups)
        mixed = sum(len(set(labels[groups == g])) > 1 for g in np.nonzero(sizes > 1)[0])
        rows.append({"min_correlation": threshold, "pairs": int((correlation >= threshold)
                                                               .sum()),
                     "groups": int((sizes > 1).sum()),
                     "images in groups": int(sizes[sizes > 1].sum()),
                     "largest": int(sizes.max()), "mixed-label groups": int(mixed)})
    return rows


def copy_rows(images: np.ndarray, n: int, max_distance: int) -> list[dict]:
    """Per kind of copy: the share of `n` copies joined to their original."""
    from comp.data.folds import fingerprints, near_duplicate_pairs

    originals = images[np.linspace(0, len(images) - 1, min(n, len(images))).astype(int)]
    rows = []
    for name, make in COPIES.items():
        copies = np.stack([np.asarray(make(Image.fromarray(im))) for im in originals])
        a, b = fingerprints(originals), fingerprints(copies)
        row = {"copy": name}
        for threshold in (-1.0, 0.9, 0.95):
            i, j = near_duplicate_pairs(a, b, max_distance, threshold)
            row[f"joined at {threshold}"] = round(float(np.mean(np.isin(
                np.arange(len(originals)), i[i == j]))), 2)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dirs", nargs="*", type=Path)
    parser.add_argument("--copies", type=int, default=40)
    parser.add_argument("--max-distance", type=int, default=6)
    parser.add_argument("--smoke", action="store_true",
                        help="a tiny synthetic folder in a temporary directory (CI)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="comp-dedup-"))
    atexit.register(shutil.rmtree, tmp, True)  # scratch: gone when the bench ends
    if args.smoke:
        from tests.helpers import make_competition

        args.data_dirs, args.copies = [make_competition(tmp / "tiny")], 4
    elif not args.data_dirs:
        parser.error("give DATA_DIR (or --smoke)")
    for data_dir in args.data_dirs:
        images, labels = train_images(data_dir, tmp / "runs")
        print(f"{data_dir}: {len(images)} training images")
        print(pd.DataFrame(folder_rows(images, labels, args.max_distance)).to_string(
            index=False))
        print(pd.DataFrame(copy_rows(images, args.copies, args.max_distance)).to_string(
            index=False))


if __name__ == "__main__":
    main()
