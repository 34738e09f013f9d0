"""Time and memory of stage=prepare and of one fold's stage=train as the data grows.

usage: python bench/scale.py [N ...] [--size 224] [--epochs 2] [--classic MODEL]
       (default N: 100 400 1600 6400; MODEL default mobilenet_025+logreg, none: no
       classic model)
       python bench/scale.py --smoke   (N=40 at 32 px, 1 epoch: seconds, for CI)
Makes a synthetic 4-class competition of N training images (JPEG, `--size` px; N/8 test
images) for each N, then runs, in a fresh child process per N, `stage=prepare` and
`stage=train only.fold=0` (5 folds; mobilenet_025 with the bundled ImageNet weights, its
default cut, 8 dihedral views, and the classic model `--classic` on its embeddings:
frozen features + logistic regression unless told otherwise) and prints a table: seconds
of each stage, seconds per image, peak RSS of the child (getrusage: anonymous memory
plus the file pages mapped from the caches), the peak of its anonymous memory alone
(sampled every 0.1 s) and the peak summed PSS of its whole process tree (its training
workers included: bench/proctree.py), and the run directory's disk use after both
stages, in total and per image (train + test).
"""

from __future__ import annotations

import argparse
import atexit
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "bench"))
from proctree import run_measured  # noqa: E402 (bench/proctree.py)

CLASSES = ["alpha", "beta", "gamma", "delta"]
TINT = np.array([(200, 60, 60), (60, 200, 60), (60, 60, 200), (180, 180, 60)])


def make_data(folder: Path, n: int, size: int) -> Path:
    """A competition folder of `n` train and n/8 test noisy, class-tinted JPEGs."""
    from PIL import Image

    if (folder / "sample_submission.csv").exists():
        return folder
    rng = np.random.default_rng(n)
    for split in ("train", "test"):
        (folder / split).mkdir(parents=True, exist_ok=True)
    labels = np.arange(n) % len(CLASSES)
    for split, count in (("train", n), ("test", max(8, n // 8))):
        for i in range(count):
            label = labels[i] if split == "train" else rng.integers(len(CLASSES))
            noise = rng.integers(0, 90, size=(size // 8, size // 8, 3)).astype(np.uint8)
            texture = np.asarray(Image.fromarray(noise).resize((size, size),
                                                               Image.Resampling.BILINEAR))
            pixels = np.clip(texture.astype(np.int16) + TINT[label] - 45, 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(folder / split / f"{split}{i:05d}.jpg",
                                                          quality=90)
    pd.DataFrame({"id": [f"train{i:05d}.jpg" for i in range(n)],
                  "label": [CLASSES[k] for k in labels]}).to_csv(folder / "train.csv",
                                                                  index=False)
    test_ids = sorted(p.name for p in (folder / "test").iterdir())
    pd.DataFrame({"id": test_ids, "label": CLASSES[0]}).to_csv(
        folder / "sample_submission.csv", index=False)
    return folder


def _anon_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    return 0


def child(data: Path, runs: Path, size: int, epochs: int, classic: str) -> None:
    """Run prepare and one fold's train in this process; print one JSON line."""
    from comp.run import main

    peak = {"anon": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak["anon"] = max(peak["anon"], _anon_kib())
            time.sleep(0.1)

    threading.Thread(target=sample, daemon=True).start()
    common = ["data=folder", f"data.dir={data}", f"runs_dir={runs}", "name=scale",
              f"weights_dir={ROOT / 'comp/demo/weights'}", "backbones=[mobilenet_025]",
              # the fine-tune and `classic` alone, whatever the defaults add
              f"classic.models=[{'' if classic == 'none' else classic}]",
              f"model.image_size={size}", f"train.epochs={epochs}", "quiet=true"]
    started = time.time()
    assert main(["stage=prepare", *common]) == 0
    prepared = time.time()
    assert main(["stage=train", *common, "only.fold=0"]) == 0
    trained = time.time()
    stop.set()
    print(json.dumps({"prepare_s": prepared - started, "train_s": trained - prepared,
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "peak_anon_mib": peak["anon"] / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("n", nargs="*", type=int, default=[100, 400, 1600, 6400])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--classic", default="mobilenet_025+logreg",
                        help="the classic model trained beside the fine-tune (none: no "
                             "classic model)")
    parser.add_argument("--child", nargs=2)
    parser.add_argument("--work", default=None)
    parser.add_argument("--smoke", action="store_true",
                        help="40 images at 32 px, 1 epoch (CI: the code path, not a measurement)")
    args = parser.parse_args()
    if args.smoke:
        args.n, args.size, args.epochs = [40], 32, 1
    if args.child:
        child(Path(args.child[0]), Path(args.child[1]), args.size, args.epochs, args.classic)
        return
    work = Path(args.work or tempfile.mkdtemp(prefix="comp-scale-"))
    if not args.work:
        atexit.register(shutil.rmtree, work, True)  # scratch: gone when the bench ends
    rows = []
    for n in args.n:
        data = make_data(work / f"data{n}", n, args.size)
        runs = Path(tempfile.mkdtemp(prefix="runs-", dir=work))
        log = work / f"child{n}.log"
        with open(log, "w") as out:
            code, _, tree_peak = run_measured(
                [sys.executable, __file__, "--child", str(data), str(runs), "--size",
                 str(args.size), "--epochs", str(args.epochs), "--classic", args.classic],
                stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        if code:
            raise SystemExit(log.read_text()[-3000:])
        disk = sum(f.stat().st_size for f in runs.rglob("*") if f.is_file())
        n_images = len(list((data / "train").iterdir())) + len(list((data / "test").iterdir()))
        result = [line for line in log.read_text().splitlines() if line.startswith("{")][-1]
        rows.append({"n": n, **json.loads(result), "tree_peak_mib": tree_peak,
                     "disk_mb": disk / 1e6, "disk_mb_per_image": disk / 1e6 / n_images})
    classic = "no classic model" if args.classic == "none" else f"classic {args.classic}"
    print(f"\nmobilenet_025 (ImageNet), {args.size} px, 5 folds, train = fold 0, "
          f"{args.epochs} epochs, 8 dihedral views; {classic}; test = N/8 images\n")
    print("| train images | prepare s | prepare ms/image | train fold 0 s | train ms/image"
          " | peak RSS MiB | peak anonymous MiB | peak PSS of the process tree MiB | run dir MB"
          " | MB / image |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['n']} | {r['prepare_s']:.1f} | {1000 * r['prepare_s'] / r['n']:.1f} | "
              f"{r['train_s']:.1f} | {1000 * r['train_s'] / r['n']:.1f} | "
              f"{r['peak_rss_mib']:.0f} | {r['peak_anon_mib']:.0f} | "
              f"{r['tree_peak_mib']:.0f} | {r['disk_mb']:.1f} | {r['disk_mb_per_image']:.3f} |")
    if len(rows) > 1:
        n = np.array([r["n"] for r in rows], dtype=float)
        for stage in ("prepare_s", "train_s"):
            t = np.array([r[stage] for r in rows])
            slope, intercept = np.polyfit(n, t, 1)
            print(f"{stage[:-2]}: least-squares fit t = {intercept:.1f} s + "
                  f"{1000 * slope:.2f} ms x N")


if __name__ == "__main__":
    main()
