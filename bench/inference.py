"""Inference throughput: comp's predict path against raw `keras.Model.predict`.

usage: python bench/inference.py [n_images] [size]   (defaults 256, 224)
Trains mobilenet_025 (bundled ImageNet weights, default cut) for one epoch on each of
the bundled demo's 5 folds at `size` px, then predicts `n_images` decoded images with
8 dihedral TTA views, counting every view as an image:
- comp: `comp.stages.predict.predict_images` (what stage=predict runs after decoding):
  timed end to end, building the backbone and loading each fold's head included;
- raw Keras: the same network as one `keras.Model` (frozen prefix + trained head, the
  fold's weights) and `model.predict(batch_size=128)` on the preprocessed views, the
  model built before the clock starts.
Both with 1 fold and with all 5 folds (the submission case). Prints a table.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import keras
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing


def main() -> None:
    n_images = int(sys.argv[1]) if len(sys.argv) > 1 else 256
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 224
    from comp.config import load_config
    from comp.data.images import load_images
    from comp.data.views import dihedral_view
    from comp.inference import load_spec, predict_images
    from comp.models.build import build_backbone, create_head, split_backbone
    from comp.models.registry import get_backbone
    from comp.run import main as comp_main

    runs = Path(tempfile.mkdtemp(prefix="comp-infer-"))
    overrides = [f"runs_dir={runs}", "name=infer", "backbones=[mobilenet_025]",
                 f"model.image_size={size}", "train.epochs=1", "quiet=true"]
    assert comp_main(["stage=train", *overrides]) == 0
    cfg = load_config(overrides)
    run_root = runs / "infer"
    model_dir = next((run_root / "models").iterdir())
    spec = load_spec(cfg, type("R", (), {"model_dir": lambda self, m: run_root / "models" / m})(),
                     model_dir.name)
    test_paths = sorted(str(p) for p in (ROOT / "comp/demo/wbc/test").iterdir())
    decoded = load_images(test_paths, size, cfg.data.max_image_pixels)
    images = decoded[np.arange(n_images) % len(decoded)]
    n_classes = 4
    one_fold = Path(tempfile.mkdtemp(prefix="one-fold-")) / model_dir.name
    one_fold.mkdir()
    (one_fold / "fold0").symlink_to(model_dir / "fold0")

    backbone = get_backbone("mobilenet_025")
    views = np.concatenate([backbone.preprocess(dihedral_view(images, v).astype("float32"))
                            for v in range(8)])
    rows = []
    for label, folder, folds in (("1 fold", one_fold, [0]), ("5 folds", model_dir, range(5))):
        predict_images(spec, folder, images[:8], n_classes)  # warm-up (graph tracing)
        started = time.time()
        comp_probs = predict_images(spec, folder, images, n_classes)
        comp_s = time.time() - started
        raw_s, raw_total = 0.0, np.zeros_like(comp_probs)
        for fold in folds:
            base = build_backbone(backbone, size, spec.weights, spec.train["seed"])
            split = split_backbone(base, backbone, spec.model["unfreeze"])
            head = create_head(split, spec, n_classes, 0)
            head.load_weights(model_dir / f"fold{fold}" / "model.weights.h5")
            inputs = keras.Input((size, size, 3))
            full = keras.Model(inputs, head(split.prefix(inputs)))
            full.predict(views[:8], batch_size=128, verbose=0)  # warm-up
            started = time.time()
            probs = full.predict(views, batch_size=128, verbose=0)
            raw_s += time.time() - started
            raw_total += probs.reshape(8, n_images, -1).mean(axis=0)
        raw_total /= len(list(folds))
        n_views = 8 * n_images
        rows.append((label, comp_s, raw_s, n_views, np.abs(comp_probs - raw_total).max()))

    print(f"\nmobilenet_025 at {size} px, {n_images} images x 8 TTA views, batch 128, "
          f"TF {__import__('tensorflow').__version__}, {spec.model['unfreeze'] or 'default'} cut\n")
    print("| folds | comp s | comp images/s | raw Keras predict s | raw images/s | comp / raw "
          "throughput | max abs prob diff |")
    print("|---|---|---|---|---|---|---|")
    for label, comp_s, raw_s, n_views, diff in rows:
        print(f"| {label} | {comp_s:.2f} | {n_views / comp_s:.0f} | {raw_s:.2f} | "
              f"{n_views / raw_s:.0f} | {raw_s / comp_s:.2f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
