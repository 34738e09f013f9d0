"""Rebuild comp/demo/wbc from a full-size copy of the wbc competition folder.

usage: python bench/make_demo.py SOURCE_DIR [size]
Every image is resized to size x size (default 128) and saved as JPEG quality 90;
the CSVs are copied unchanged. Provenance and licence: comp/demo/README.md.
"""

import shutil
import sys
from pathlib import Path

from PIL import Image


def main() -> None:
    source = Path(sys.argv[1])
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 128
    target = Path(__file__).resolve().parent.parent / "comp" / "demo" / "wbc"
    for name in ("train.csv", "sample_submission.csv"):
        shutil.copy(source / name, target / name)
    for split in ("train", "test", "unlabeled"):
        (target / split).mkdir(parents=True, exist_ok=True)
        for path in sorted((source / split).iterdir()):
            with Image.open(path) as img:
                img.convert("RGB").resize((size, size), Image.Resampling.LANCZOS).save(
                    target / split / path.name, quality=90)


if __name__ == "__main__":
    main()
