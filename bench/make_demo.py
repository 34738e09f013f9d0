"""Rebuild comp/demo/wbc from a full-size copy of the wbc competition folder.

usage: python bench/make_demo.py SOURCE_DIR [size] [--target DIR]
       python bench/make_demo.py --smoke   (a tiny synthetic source, written to a temporary
       folder: seconds, for CI; comp/demo/wbc is left alone)
Every image is resized to size x size (default 128) and saved as JPEG quality 90;
the CSVs are copied unchanged. Provenance and licence: comp/demo/README.md.
"""

import argparse
import atexit
import shutil
import sys
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def build(source: Path, target: Path, size: int) -> dict[str, int]:
    """Copy `source`'s CSVs into `target` and its images resized; images per split."""
    counts = {}
    for name in ("train.csv", "sample_submission.csv"):
        shutil.copy(source / name, target / name)
    for split in ("train", "test", "unlabeled"):
        (target / split).mkdir(parents=True, exist_ok=True)
        paths = sorted((source / split).iterdir())
        for path in paths:
            with Image.open(path) as img:
                img.convert("RGB").resize((size, size), Image.Resampling.LANCZOS).save(
                    target / split / path.name, quality=90)
        counts[split] = len(paths)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", type=Path)
    parser.add_argument("size", nargs="?", type=int, default=128)
    parser.add_argument("--target", type=Path, default=ROOT / "comp" / "demo" / "wbc")
    parser.add_argument("--smoke", action="store_true",
                        help="a tiny synthetic source into a temporary folder (CI)")
    args = parser.parse_args()
    if args.smoke:
        sys.path.insert(0, str(ROOT))
        from tests.helpers import make_competition

        work = Path(tempfile.mkdtemp(prefix="make-demo-"))
        atexit.register(shutil.rmtree, work, True)  # scratch: gone when the bench ends
        args.source, args.target = make_competition(work / "source"), work / "wbc"
        args.target.mkdir()
    elif args.source is None:
        parser.error("SOURCE_DIR is required (or --smoke)")
    counts = build(args.source, args.target, args.size)
    print("| split | images |\n|---|---|")
    for split, count in counts.items():
        print(f"| {split} | {count} |")
    print(f"{args.target}: {args.size} px JPEG")


if __name__ == "__main__":
    main()
