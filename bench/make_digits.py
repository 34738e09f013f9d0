"""Build a small grayscale competition folder from scikit-learn's digits (not a benchmark).

`python bench/make_digits.py OUT [--size 32]` writes OUT/ in comp's competition layout:
1,000 labelled 32 px grayscale PNGs in train/ (train.csv), 400 in test/ (labels held back in
OUT/test_labels.csv, as a competition does), 397 in unlabeled/, 10 classes. The 8x8 digits
(UCI optical recognition of handwritten digits, CC BY 4.0, shipped with scikit-learn) are
upscaled with bilinear interpolation. Prints the class counts of each split.
`python bench/make_digits.py --smoke` writes the same folder into a temporary folder (CI).
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.datasets import load_digits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, nargs="?")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--smoke", action="store_true",
                        help="write into a temporary folder (CI: seconds)")
    args = parser.parse_args()
    if args.smoke:
        args.out = Path(tempfile.mkdtemp(prefix="make-digits-")) / "digits"
        atexit.register(shutil.rmtree, args.out.parent, True)  # scratch: gone when the bench ends
    elif args.out is None:
        parser.error("OUT is required (or --smoke)")
    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))
    splits = {"train": order[:1000], "test": order[1000:1400], "unlabeled": order[1400:]}
    for split, rows in splits.items():
        (args.out / split).mkdir(parents=True, exist_ok=True)
        for i in rows:
            pixels = (digits.images[i] / 16.0 * 255).astype(np.uint8)
            Image.fromarray(pixels, mode="L").resize(
                (args.size, args.size), Image.Resampling.BILINEAR).save(
                args.out / split / f"d{i:04d}.png")
    name = [f"d{i:04d}.png" for i in splits["train"]]
    pd.DataFrame({"id": name, "label": digits.target[splits["train"]]}).to_csv(
        args.out / "train.csv", index=False)
    test = [f"d{i:04d}.png" for i in splits["test"]]
    pd.DataFrame({"id": test, "label": 0}).to_csv(args.out / "sample_submission.csv",
                                                  index=False)
    pd.DataFrame({"id": test, "label": digits.target[splits["test"]]}).to_csv(
        args.out / "test_labels.csv", index=False)
    print(f"{args.out}: 1000 train, 400 test, {len(splits['unlabeled'])} unlabeled")
    counts = pd.DataFrame({split: pd.Series(digits.target[rows]).value_counts().sort_index()
                           for split, rows in splits.items()})
    print(counts.rename_axis("class").to_string())


if __name__ == "__main__":
    main()
