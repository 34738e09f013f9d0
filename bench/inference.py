"""Inference throughput: comp's predict path against raw `keras.Model.predict`.

usage: python bench/inference.py [n_images] [size]   (defaults 256, 224)
       python bench/inference.py --smoke               (a tiny synthetic competition, 32 px)
Trains a fine-tuned mobilenet_025 (bundled ImageNet weights, default cut; no classic
model, whatever `classic.models` defaults to) for one epoch on each of the bundled demo's
5 folds at `size` px, then predicts `n_images` decoded images with 8 dihedral TTA views,
counting every view as an image:
- comp: `comp.inference.predict_images` (what stage=predict runs after decoding):
  timed end to end, building the backbone and loading each fold's head included; on a
  CPU its frozen prefix runs through TFLite, converted by the training's feature pass
  and read from the run's cache (`cache/lite/`), as in stage=predict;
- comp loaded: `comp.inference.FinetunedPredictor` (what `Competition.predictor()`
  holds), built and called once before the clock starts, as raw Keras's model is: the
  time of a later call in a script or service that predicts again and again;
- raw Keras: the same network as one `keras.Model` (frozen prefix + trained head, the
  fold's weights) and `model.predict(batch_size=batch)` on the preprocessed views, the
  model built and called once before the clock starts.
The FLOP bound's share is printed for one fold (prefix + head a view) and for all folds
(the work they need: the shared prefix once and every fold's head), for both of comp's
rows.
Both with 1 fold and with all folds (the submission case), each side timed `--repeats`
times (default 3), comp and raw Keras interleaved so that a slow spell of the machine
slows both; the table shows the median times and each repeat's ratio.
`--smoke` runs the same code on a tiny competition made in a temporary folder (2 folds,
32 px, 16 images): seconds, for CI, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import keras
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing


def finetuned_model(models: Path) -> Path:
    """The one fine-tuned model's folder among `models/` (its spec.json says its kind)."""
    found = [folder for folder in sorted(models.iterdir())
             if json.loads((folder / "spec.json").read_text()).get("kind") != "classic"]
    if len(found) != 1:
        raise SystemExit(f"bench/inference.py: expected one fine-tuned model in {models}, "
                         f"found {[f.name for f in found]}")
    return found[0]


def model_flops(model) -> int:
    """Floating-point operations of one forward pass of one image (2 per multiply-add):
    convolutions, depthwise convolutions and dense layers, from their shapes."""
    total = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        kind = type(layer).__name__
        if kind not in ("Conv2D", "DepthwiseConv2D", "Dense"):
            continue
        out, inp = layer.output.shape, layer.input.shape
        if kind == "Dense":
            total += 2 * inp[-1] * out[-1]
            continue
        taps = layer.kernel_size[0] * layer.kernel_size[1]
        per_pixel = taps * inp[-1] * (out[-1] if kind == "Conv2D" else 1)
        total += 2 * out[1] * out[2] * per_pixel
    return int(total)


def matmul_gflops(n: int = 2048, repeats: int = 20) -> float:
    """This machine's float32 GFLOP/s on a large matrix product (TensorFlow, every core):
    the bound no convolution network can pass here."""
    import tensorflow as tf

    a = tf.random.normal((n, n))
    product = tf.function(lambda x: tf.matmul(x, x))
    product(a).numpy()
    started = time.time()
    for _ in range(repeats):
        result = product(a)
    result.numpy()
    return 2 * n ** 3 * repeats / (time.time() - started) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n_images", nargs="?", type=int, default=256)
    parser.add_argument("size", nargs="?", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed repeats of each side, interleaved; medians are shown")
    parser.add_argument("--smoke", action="store_true",
                        help="a tiny synthetic competition, 32 px, 16 images (CI)")
    args = parser.parse_args()
    # the run and the one-fold copy go when the bench ends (a 224 px run is about 150 MB)
    with tempfile.TemporaryDirectory(prefix="comp-infer-") as scratch:
        measure(args, Path(scratch))


def measure(args: argparse.Namespace, runs: Path) -> None:
    """Train the bench's model in `runs` (a scratch folder), time both sides, print the
    table and the FLOP bound's arithmetic."""
    n_images, size = (16, 32) if args.smoke else (args.n_images, args.size)
    args.repeats = 1 if args.smoke else args.repeats
    from comp.config import load_config
    from comp.data.images import load_images
    from comp.data.prepared import load_competition
    from comp.data.views import dihedral_view
    from comp.inference import FinetunedPredictor, load_spec, predict_images
    from comp.models.build import build_backbone, create_head, split_backbone
    from comp.models.registry import get_backbone
    from comp.run import main as comp_main
    from comp.training.compute import frozen_batch_size
    from comp.workspace import RunDir

    test_dir = ROOT / "comp/demo/wbc/test"
    # a fine-tuned model only, named here: the defaults' classic models are not this bench's
    overrides = [f"runs_dir={runs}", "name=infer", "backbones=[mobilenet_025]",
                 "classic.models=[]", f"model.image_size={size}", "train.epochs=1",
                 "quiet=true", f"weights_dir={ROOT / 'comp/demo/weights'}"]
    if args.smoke:
        from tests.helpers import make_competition

        data = make_competition(runs / "data", n_test=6)
        test_dir = data / "test"
        overrides += ["data=folder", f"data.dir={data}", "data.folds=2", "train.batch_size=8"]
    assert comp_main(["stage=train", *overrides]) == 0
    cfg = load_config(overrides)
    run_root = runs / "infer"
    lite_cache = RunDir(run_root).lite_cache  # as stage=predict passes it
    model_dir = finetuned_model(run_root / "models")
    n_folds = len(list(model_dir.glob("fold*")))
    spec = load_spec(cfg, type("R", (), {"model_dir": lambda self, m: run_root / "models" / m})(),
                     model_dir.name)
    test_paths = sorted(str(p) for p in test_dir.iterdir())
    decoded = load_images(test_paths, size, cfg.data.max_image_pixels)
    images = decoded[np.arange(n_images) % len(decoded)]
    n_classes = len(load_competition(cfg).classes)
    one_fold = runs / "one-fold" / model_dir.name
    one_fold.mkdir(parents=True)
    (one_fold / "fold0").symlink_to(model_dir / "fold0")

    backbone = get_backbone("mobilenet_025")
    batch = frozen_batch_size()  # comp's batch for a frozen pass on this machine, both sides
    views = np.concatenate([backbone.preprocess(dihedral_view(images, v).astype("float32"))
                            for v in range(8)])
    rows = []
    for label, folder, folds in (("1 fold", one_fold, [0]),
                                 (f"{n_folds} folds", model_dir, range(n_folds))):
        # warm-up (graph tracing); the run's frozen prefix, converted to TFLite where the
        # training's feature pass ran it (comp.training.lite), is read from the run's cache
        predict_images(spec, folder, images[:8], n_classes, lite_cache)
        fulls = []
        for fold in folds:  # raw Keras: built (and warmed up) before any clock starts
            base = build_backbone(backbone, size, spec.weights, spec.train.seed)
            split = split_backbone(base, backbone, spec.model.unfreeze)
            head = create_head(split, spec, n_classes, 0, online=False)
            head.load_weights(model_dir / f"fold{fold}" / "model.weights.h5")
            inputs = keras.Input((size, size, 3))
            full = keras.Model(inputs, head(split.prefix(inputs)))
            full.predict(views[:8], batch_size=batch, verbose=0)
            fulls.append(full)
        loaded = FinetunedPredictor(spec, folder, n_classes, lite_cache)
        loaded(images[:8])
        comp_times, loaded_times, raw_times = [], [], []
        for _ in range(args.repeats):  # interleaved: a slow spell of the machine hits all
            started = time.time()
            comp_probs = predict_images(spec, folder, images, n_classes, lite_cache)
            comp_times.append(time.time() - started)
            started = time.time()
            loaded_probs = loaded(images)
            loaded_times.append(time.time() - started)
            started = time.time()
            raw_total = sum(full.predict(views, batch_size=batch, verbose=0)
                            .reshape(8, n_images, -1).mean(axis=0) for full in fulls)
            raw_times.append(time.time() - started)
        raw_total /= len(fulls)
        n_views = 8 * n_images
        assert np.array_equal(loaded_probs, comp_probs), "a loaded predictor predicts otherwise"
        rows.append((label, float(np.median(comp_times)), float(np.median(loaded_times)),
                     float(np.median(raw_times)), n_views, np.abs(comp_probs - raw_total).max(),
                     [r / c for c, r in zip(comp_times, raw_times, strict=True)]))
        flops = model_flops(fulls[0])
        prefix_flops = model_flops(split.prefix)  # run once for every fold that shares it

    print(f"\nmobilenet_025 at {size} px, {n_images} images x 8 TTA views, batch {batch} "
          "(comp's and raw Keras's), "
          f"TF {__import__('tensorflow').__version__}, {spec.model.unfreeze or 'default'} cut, "
          f"median of {args.repeats} interleaved repeats"
          f"{' (smoke: a tiny synthetic competition, not a measurement)' if args.smoke else ''}\n")
    print("| folds | comp s | comp images/s | comp loaded s | loaded images/s | raw Keras "
          "predict s | raw images/s | comp / raw throughput | each repeat's ratio | loaded / "
          "raw | max abs prob diff |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for label, comp_s, loaded_s, raw_s, n_views, diff, ratios in rows:
        print(f"| {label} | {comp_s:.2f} | {n_views / comp_s:.0f} | {loaded_s:.2f} | "
              f"{n_views / loaded_s:.0f} | {raw_s:.2f} | {n_views / raw_s:.0f} | "
              f"{raw_s / comp_s:.2f}x | {' '.join(f'{r:.2f}' for r in ratios)} | "
              f"{raw_s / loaded_s:.2f}x | {diff:.1e} |")
    gflops = matmul_gflops(256 if args.smoke else 2048)
    bound = gflops * 1e9 / flops
    one_fold, one_loaded = rows[0][4] / rows[0][1], rows[0][4] / rows[0][2]
    print(f"\nFLOP bound: a {256 if args.smoke else 2048}^2 float32 matmul runs at "
          f"{gflops:.0f} GFLOP/s here; one view (prefix + head) is {flops / 1e6:.1f} MFLOP "
          f"(2 per multiply-add of every Conv2D, DepthwiseConv2D and Dense layer), so at most "
          f"{gflops:.0f}e9 / {flops / 1e6:.1f}e6 = {bound:.0f} views/s per fold; comp's "
          f"1-fold {one_fold:.0f} views/s is {one_fold / bound:.0%} of it "
          f"({one_fold * flops / 1e9:.1f} GFLOP/s), loaded {one_loaded:.0f} views/s "
          f"{one_loaded / bound:.0%} ({one_loaded * flops / 1e9:.1f} GFLOP/s)")
    # the submission case: the work it needs is the shared prefix once and every head
    label, n_views = rows[1][0], rows[1][4]
    needed = prefix_flops + n_folds * (flops - prefix_flops)
    for what, seconds in (("comp", rows[1][1]), ("loaded", rows[1][2])):
        print(f"{label}, {what}: the prefix ({prefix_flops / 1e6:.1f} MFLOP) once and "
              f"{n_folds} heads ({(flops - prefix_flops) / 1e6:.1f} MFLOP each) = "
              f"{needed / 1e6:.1f} MFLOP a view, {n_views} views in {seconds:.2f} s = "
              f"{n_views * needed / seconds / 1e9:.1f} GFLOP/s, "
              f"{n_views * needed / seconds / 1e9 / gflops:.0%} of the bound")


if __name__ == "__main__":
    main()
