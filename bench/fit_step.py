"""A fine-tune's training step on this machine under compute.precision and jit_compile.

usage: python bench/fit_step.py [--backbone mobilenet_025] [--sizes 96 224] [--rows 1024]
           [--repeats 2] [--precisions float32 mixed_bfloat16 mixed_float16] [--no-xla]
           [--threads N] [--keras-norms]
       python bench/fit_step.py --smoke      (32 px, 64 rows: seconds, for CI)
What comp's fit trains: the trainable body and head of `--backbone` after its default
cut (`create_head`, random-init weights: the step's cost does not depend on them), fed
the frozen prefix's feature maps (random numbers of the right shape; small_cnn has no
prefix: the image, through its online augmentation layers), SGD with momentum,
batch 32, one epoch over `--rows` rows after a warm-up epoch, compiled with each setting:
- `jit_compile=False` (what Keras's `auto` picks on a CPU-only machine) and `True` (XLA,
  what `auto` picks where a GPU is seen);
- the dtype policies `compute.precision` can name (`auto` is mixed_float16 with a GPU;
  without one mixed_bfloat16 for a backbone marked `amx_bfloat16` on a CPU with AMX,
  else float32).
Rows alternate between the settings `--repeats` times, so a slow spell of the machine
hits all of them. `--threads N` gives TensorFlow N threads, as comp's training workers
have cores / workers each (default: TensorFlow's choice, every core). Prints ms per
step (median over the repeats). The body's batch norms are fused as in comp's fit
(`comp.models.build.for_training`); `--keras-norms` adds each setting again with Keras's
own BatchNormalization.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

NORMS = {False: "fused", True: "Keras's"}  # --keras-norms
SETTINGS = [  # (jit_compile, precision)
    (False, "float32"),
    (True, "float32"),
    (False, "mixed_bfloat16"),
    (False, "mixed_float16"),
]


def step_ms(name: str, size: int, rows: int, jit: bool, precision: str,
            keras_norms: bool = False) -> float:
    """Milliseconds per training step of backbone `name`'s body and head at `size` px
    (`keras_norms`: with Keras's BatchNormalization, not the fused one comp trains)."""
    import keras

    from comp.config import AugmentSettings, ModelSettings
    from comp.models.build import build_backbone, create_head, for_training, split_backbone
    from comp.models.registry import get_backbone
    from comp.models.weights import ResolvedWeights
    from comp.training.compute import model_scope

    backbone = get_backbone(name)
    spec = SimpleNamespace(model=ModelSettings(pooling="avg", dense_units=0, dropout=0.2,
                                               bn_trainable=True),
                           augment=AugmentSettings(), backbone=backbone.name)
    with model_scope({"precision": precision}):
        base = build_backbone(backbone, size, ResolvedWeights(None, "random-init"), 0)
        split = split_backbone(base, backbone, None)
        if not keras_norms:  # as comp's fit trains it
            split = for_training(split)
        model = create_head(split, spec, 4, 0)
        model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                      loss="categorical_crossentropy", jit_compile=jit)
        rng = np.random.default_rng(0)
        x = rng.uniform(0, 6, (rows, *split.feature_shape)).astype("float32")
        y = keras.utils.to_categorical(np.arange(rows) % 4, 4)
        model.fit(x[:64], y[:64], batch_size=32, epochs=1, verbose=0)  # warm-up, tracing
        started = time.time()
        model.fit(x, y, batch_size=32, epochs=1, verbose=0)
        return (time.time() - started) / (rows // 32) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 224])
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--backbone", default="mobilenet_025")
    parser.add_argument("--precisions", nargs="+", default=[p for _, p in SETTINGS[1:]])
    parser.add_argument("--no-xla", action="store_true", help="leave out jit_compile=True")
    parser.add_argument("--threads", type=int, default=0, help="TensorFlow's threads; 0: all")
    parser.add_argument("--keras-norms", action="store_true",
                        help="each setting also with Keras's own BatchNormalization")
    parser.add_argument("--smoke", action="store_true", help="32 px, 64 rows (CI)")
    args = parser.parse_args()
    if args.threads:  # read when TensorFlow starts, as in comp's workers (workers.py)
        for variable in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
            os.environ[variable] = str(args.threads)
    sizes, rows, repeats = ([32], 64, 1) if args.smoke else (args.sizes, args.rows,
                                                               args.repeats)
    settings = [(jit, precision, keras_norms) for jit, precision in SETTINGS
                for keras_norms in ((False, True) if args.keras_norms or args.smoke
                                    else (False,))
                if (precision == "float32" or precision in args.precisions)
                and not (jit and args.no_xla)]
    times: dict[tuple, list[float]] = {}
    for _ in range(repeats):
        for size in sizes:
            for setting in settings:
                ms = step_ms(args.backbone, size, rows, *setting)
                times.setdefault((size, *setting), []).append(ms)
                print(f"measured: {size} px, jit_compile={setting[0]}, {setting[1]}, "
                      f"{NORMS[setting[2]]} batch norms: {ms:.1f} ms/step", flush=True)
    print(f"\n{args.backbone} body + head after the default cut, batch 32, {rows} rows, "
          f"{args.threads or 'all'} thread(s), "
          f"median of {repeats}{' (smoke: not a measurement)' if args.smoke else ''}\n")
    print("| size | jit_compile | precision | batch norms | ms / step | vs no XLA, float32 |")
    print("|---|---|---|---|---|---|")
    for size in sizes:
        base = float(np.median(times[size, False, "float32", False]))
        for jit, precision, keras_norms in settings:
            ms = float(np.median(times[size, jit, precision, keras_norms]))
            print(f"| {size} | {jit} | {precision} | {NORMS[keras_norms]} | {ms:.1f} | "
                  f"{ms / base:.2f}x |")


if __name__ == "__main__":
    main()
