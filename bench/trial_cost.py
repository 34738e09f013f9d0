"""Cost of one tuning trial (one fold fit) on cached prefix features vs re-running the
frozen backbone prefix on the images every step, with the same views and settings.

usage: python bench/trial_cost.py DATA_DIR WEIGHTS_DIR [size] [epochs] [cut,cut,...]
       python bench/trial_cost.py --smoke   (a tiny synthetic competition, the bundled
       weights, 32 px, 2 epochs, cut none: seconds, for CI)
Prints a table per unfreeze point (default block9): seconds per fit, per epoch, best
validation AUC, and the ratio.
"""

from __future__ import annotations

import atexit
import shutil
import sys
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from comp.config import load_config  # noqa: E402
from comp.data.prepared import prepare  # noqa: E402
from comp.data.views import dihedral_view  # noqa: E402
from comp.models.spec import make_spec, with_params  # noqa: E402
from comp.training.fit import FoldData, fit_fold  # noqa: E402
from comp.training.trainer import FeaturedModel, RowSplit, fold_data  # noqa: E402


def main() -> None:
    argv = sys.argv[1:]
    extra = []
    if argv[:1] == ["--smoke"]:
        from tests.helpers import make_competition

        scratch = Path(tempfile.mkdtemp(prefix="trial-cost-"))
        atexit.register(shutil.rmtree, scratch, True)  # scratch: gone when the bench ends
        smoke = make_competition(scratch / "data")
        argv = [str(smoke), str(ROOT / "comp/demo/weights"), "32", "2", "none"]
        extra = ["data.folds=2", "train.batch_size=8"]
    elif len(argv) < 2:
        raise SystemExit(__doc__)
    data, weights_dir = argv[0:2]
    size = int(argv[2]) if len(argv) > 2 else 128
    epochs = int(argv[3]) if len(argv) > 3 else 25
    cuts = argv[4].split(",") if len(argv) > 4 else ["block9"]
    runs = tempfile.mkdtemp(prefix="trial-cost-runs-")
    atexit.register(shutil.rmtree, runs, True)  # scratch: gone when the bench ends
    cfg = load_config(["data=folder", f"data.dir={data}", f"weights_dir={weights_dir}",
                       f"runs_dir={runs}", "name=trialcost",
                       f"model.image_size={size}", *extra])
    prepared = prepare(cfg)
    classes = prepared.competition.classes
    labels = prepared.labels
    folds = prepared.folds["fold"].to_numpy()
    rows, val = np.nonzero(folds != 0)[0], np.nonzero(folds == 0)[0]

    from comp.data.images import Decoding, cached_images
    from comp.models.registry import get_backbone

    images = cached_images(prepared.run.image_cache, "train",
                           prepared.competition.train["path"].tolist(), size,
                           Decoding(cfg.data.max_image_pixels))
    preprocess = get_backbone("mobilenet_025").preprocess
    views = np.stack([preprocess(dihedral_view(images, v).astype("float32")) for v in range(8)])
    results = []
    for cut in cuts:
        spec = with_params(make_spec(cfg, "mobilenet_025", prepared.folds_key),
                           {"train.epochs": epochs, "train.patience": epochs,
                            "model.unfreeze": cut})
        started = time.time()
        featured = FeaturedModel(spec, prepared)
        cache_seconds = time.time() - started
        cached = fold_data(featured, spec, RowSplit(labels, len(classes), rows, val))
        started = time.time()
        head = featured.new_head(spec, len(classes), 0)
        history_cached, best_cached = fit_fold(head, cached, spec.train, 0)
        cached_seconds = time.time() - started

        # the same fit with the frozen prefix inside the model, fed the image views
        head = featured.new_head(spec, len(classes), 0)
        inputs = keras.Input(views.shape[2:])
        frozen = featured.split.prefix
        frozen.trainable = False
        full = keras.Model(inputs, head(frozen(inputs, training=False)))
        raw = FoldData(views, cached.train_views, cached.rows, cached.targets, cached.weights,
                       val, labels[val], cached.tta_views)
        started = time.time()
        history_raw, best_raw = fit_fold(full, raw, spec.train, 0)
        raw_seconds = time.time() - started
        results.append((cut, featured.split.cut, raw_seconds, len(history_raw),
                        history_raw["val_auc"][best_raw], cached_seconds, len(history_cached),
                        history_cached["val_auc"][best_cached], cache_seconds))

    print(f"data {data}, mobilenet_025 {size} px, fold 0, {epochs} epochs, 8 dihedral views, "
          f"TF {tf.__version__}")
    print("| unfreeze | trial fit | seconds | s / epoch | best val AUC | speed-up |")
    print("|---|---|---|---|---|---|")
    for cut, layer, raw_s, raw_n, raw_auc, cached_s, cached_n, cached_auc, cache_s in results:
        print(f"| {cut} ({layer}) | re-running the backbone prefix | {raw_s:.1f} | "
              f"{raw_s / raw_n:.2f} | {raw_auc:.4f} | |")
        print(f"| {cut} | cached prefix features (cache built once: {cache_s:.1f} s) | "
              f"{cached_s:.1f} | {cached_s / cached_n:.2f} | {cached_auc:.4f} | "
              f"{raw_s / cached_s:.1f}x |")


if __name__ == "__main__":
    main()
