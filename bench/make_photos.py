"""Build an 8-class natural-photo competition from scikit-learn's sample photos (not a bench).

`python bench/make_photos.py OUT [--per-class 150]` writes OUT/ as an in-house
competition, not a Kaggle one: class folders `train/<class>/` whose files are numbered
from 0000 in every class (the same names in each folder), a `test/` folder and an
`unlabeled/` folder, and no train.csv nor sample submission. The classes are the four
quadrants of each of the two photos scikit-learn ships (`sklearn/datasets/images/`:
china.jpg and flower.jpg, 427 x 640, CC BY 2.0, by danielbuechele and vultilion on Flickr,
see that folder's README.txt; scikit-learn is one of comp's own dependencies, so no
download): `china_0`..`china_3`, `flower_0`..`flower_3`. Each image is a random crop
(24-63 px, aspect 0.75-1.33) of its quadrant with random brightness, offset and pixel
noise, resized to a random 56-95 px width (not square, sizes differ), saved as a JPEG
(quality 70) or, one in three, a grayscale PNG. `--per-class` train images per class
(1,200 by default), a quarter as many test images per class (labels held back in
OUT/../<OUT name>_truth.csv, ids the test file names) and as many unlabeled images as
test images. Prints each split's count. `python bench/make_photos.py --smoke` writes 4
images per class into a temporary folder.
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_sample_images


def quadrants() -> dict[str, np.ndarray]:
    """The eight classes: each sample photo's four quadrants, by name."""
    photos = load_sample_images()
    found = {}
    for path, image in zip(photos.filenames, photos.images, strict=True):
        h, w = image.shape[0] // 2, image.shape[1] // 2
        for q in range(4):
            found[f"{Path(path).stem}_{q}"] = image[(q // 2) * h:(q // 2 + 1) * h,
                                                   (q % 2) * w:(q % 2 + 1) * w]
    return found


def crop(rng: np.random.Generator, region: np.ndarray) -> Image.Image:
    """A random crop of `region` with brightness, offset and noise, resized non-square."""
    side = int(rng.integers(24, 64))
    height, width = side, min(region.shape[1] - 1, int(side * rng.uniform(0.75, 1.33)))
    y = int(rng.integers(0, region.shape[0] - height))
    x = int(rng.integers(0, region.shape[1] - width))
    patch = region[y:y + height, x:x + width].astype(np.float32)
    patch = (patch * rng.uniform(0.7, 1.3) + rng.uniform(-30, 30)
             + rng.normal(0, 20, patch.shape))
    out_width = int(rng.integers(56, 96))
    return Image.fromarray(np.clip(patch, 0, 255).astype(np.uint8)).resize(
        (out_width, max(1, round(out_width * height / width))))


def save(rng: np.random.Generator, image: Image.Image, stem: Path) -> Path:
    """`image` as a JPEG, or one time in three as a grayscale PNG; the path written."""
    if rng.random() < 1 / 3:
        path = stem.with_suffix(".png")
        image.convert("L").save(path)
    else:
        path = stem.with_suffix(".jpg")
        image.save(path, quality=70)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path)
    parser.add_argument("--per-class", type=int, default=150)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--smoke", action="store_true", help="4 images a class, a temp folder")
    args = parser.parse_args()
    if args.smoke:
        args.out, args.per_class = Path(tempfile.mkdtemp()) / "photos", 4
        atexit.register(shutil.rmtree, args.out.parent, True)  # scratch: gone when the bench ends
    if args.out is None:
        parser.error("give OUT, the folder to write")
    rng = np.random.default_rng(args.seed)
    regions = quadrants()
    n_other = max(1, args.per_class // 4)
    for name, region in regions.items():
        folder = args.out / "train" / name
        folder.mkdir(parents=True)
        for i in range(args.per_class):
            save(rng, crop(rng, region), folder / f"{i:04d}")
    truth = []
    for split in ("test", "unlabeled"):
        (args.out / split).mkdir()
        drawn = [(name, crop(rng, region)) for name, region in regions.items()
                 for _ in range(n_other)]
        for n in rng.permutation(len(drawn)):
            name, image = drawn[n]
            path = save(rng, image, args.out / split / f"{split[0]}{rng.integers(10**9):09d}")
            if split == "test":
                truth.append(f"{path.name},{name}\n")
    (args.out.parent / f"{args.out.name}_truth.csv").write_text("id,label\n" + "".join(truth))
    for split in ("train", "test", "unlabeled"):
        print(f"{split}: {sum(1 for p in (args.out / split).rglob('*') if p.is_file())} images")


if __name__ == "__main__":
    main()
