"""Forward-pass throughput of a backbone on this CPU under the knobs issue 24 names.

usage: python bench/throughput.py [--size 224] [--images 1024] [--backbone mobilenet_025]
       python bench/throughput.py --smoke      (32 px, 16 images: seconds, for CI)
The same network (no top, with its ImageNet weights where comp finds them, as for
MobileNet 0.25 in the bundled demo, else random init; average pooling, a 4-class softmax)
on the same random images, timed per setting after a warm-up call, each in a fresh subprocess so
threading and dtype policies never leak from one row into the next:
- Keras `predict_on_batch` (what comp's feature pass calls) at batch 32, 128 and 256;
- a `tf.function` of the model call, without and with XLA (`jit_compile=True`);
- the `mixed_bfloat16` policy (this CPU has AVX512_BF16 and AMX where the flags say so);
- TensorFlow's inter-/intra-op thread counts (0 = TensorFlow's choice);
- the batch norms folded into their convolutions (comp.models.build.fold_batch_norms,
  what comp's feature pass and stage=predict run);
- that folded network converted to TFLite and run by its interpreter (XNNPACK's CPU
  kernels, every core; `tf.lite.Interpreter`, which TensorFlow marks deprecated in favour
  of the ai-edge-litert package); the conversion's seconds are in the set-up column, not in views/s;
- comp's own feature pass (comp.training.features.frozen_forward on the folded network):
  uint8 images in, the dihedral view, float cast and preprocessing, float16 out; on a CPU
  that is TFLite for the backbones marked `lite` (comp.training.lite: converted into a
  temporary cache as a run's `cache/lite/`; the view in NumPy, the rest and the float16
  cast converted, 4 images a call on one-thread interpreters side by side, whatever batch
  it is handed), else one TensorFlow graph; and the eager ops around
  `predict_on_batch` comp ran before; these rows do more work per view than the others,
  which take the preprocessed float32 images.
Against the FLOP bound: a float32 matrix product's GFLOP/s on every core, and the network's
FLOP per image from its layers' shapes (bench/inference.py's `model_flops`). Prints a table.
"""

from __future__ import annotations

import argparse
import atexit
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

SETTINGS = [  # (name, call, batch, policy, inter, intra)
    ("predict_on_batch", "keras", 32, "float32", 0, 0),
    ("predict_on_batch", "keras", 128, "float32", 0, 0),
    ("predict_on_batch", "keras", 256, "float32", 0, 0),
    ("tf.function", "function", 32, "float32", 0, 0),
    ("tf.function", "function", 128, "float32", 0, 0),
    ("tf.function + XLA", "xla", 128, "float32", 0, 0),
    ("predict_on_batch", "keras", 128, "mixed_bfloat16", 0, 0),
    ("tf.function", "function", 128, "mixed_bfloat16", 0, 0),
    ("predict_on_batch, 1 inter / 2 intra", "keras", 128, "float32", 1, 2),
    ("predict_on_batch, 2 inter / 1 intra", "keras", 128, "float32", 2, 1),
    ("predict_on_batch, batch norms folded", "folded", 128, "float32", 0, 0),
    ("tf.function, batch norms folded", "folded_function", 128, "float32", 0, 0),
    ("predict_on_batch, batch norms folded", "folded", 32, "float32", 0, 0),
    ("TFLite (XNNPACK), batch norms folded", "tflite", 32, "float32", 0, 0),
    ("TFLite (XNNPACK), batch norms folded", "tflite", 4, "float32", 0, 0),
    ("eager view, cast, preprocessing + predict_on_batch (uint8 in: comp's pass before), "
     "folded", "eager", 128, "float32", 0, 0),
    ("comp's frozen_forward (uint8 in: view 5, cast, preprocessing in the graph), folded",
     "comp", 32, "float32", 0, 0),
    ("comp's frozen_forward (uint8 in: view 5, cast, preprocessing in the graph), folded",
     "comp", 128, "float32", 0, 0),
]


def imagenet_file(backbone: str, size: int) -> Path | None:
    """The backbone's ImageNet file where comp finds one (the bundled demo's folder first:
    MobileNet 0.25), else None (random init). Measured with real weights: a random-init
    MobileNet 0.25 cut at block 9 ran 2.5-4x slower through TFLite than the same network
    with its ImageNet weights here, which no user runs."""
    from comp.models.registry import get_backbone
    from comp.models.weights import find_local_weights

    return find_local_weights(get_backbone(backbone), size, str(ROOT / "comp/demo/weights"))


def measure(backbone: str, size: int, n_images: int, call: str, batch: int, policy: str,
            inter: int, intra: int) -> dict:
    """Views per second of one setting (run inside its own process)."""
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_inter_op_parallelism_threads(inter)
    tf.config.threading.set_intra_op_parallelism_threads(intra)
    import keras

    from bench.inference import model_flops
    from comp.models.registry import get_backbone

    keras.mixed_precision.set_global_policy(policy)
    weights = imagenet_file(backbone, size)
    base = get_backbone(backbone).constructor(input_shape=(size, size, 3),
                                              weights=str(weights) if weights else None)
    inputs = keras.Input((size, size, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(base(inputs))
    model = keras.Model(inputs, keras.layers.Dense(4, activation="softmax",
                                                   dtype="float32")(pooled))
    images = np.random.default_rng(0).uniform(-1, 1, (n_images, size, size, 3)).astype("f4")
    flops = model_flops(model)
    if call.startswith("folded") or call in ("tflite", "comp", "eager"):
        from comp.models.build import fold_batch_norms

        model = fold_batch_norms(model)
    started = time.time()
    if call == "tflite":
        run = _tflite_runner(model, batch, size)
    elif call == "comp":
        from comp.training.features import frozen_forward
        from comp.training.lite import lite_folder

        row = get_backbone(backbone)  # its converted form kept where a run keeps it
        cache = Path(tempfile.mkdtemp(prefix="comp-lite-"))
        atexit.register(shutil.rmtree, cache, True)  # scratch: gone when the bench ends
        forward = frozen_forward(model, row.preprocess, lite_cache=lite_folder(row, cache))
        images = ((images + 1) * 127.5).astype("uint8")
        run = lambda x: forward(x, 5)  # noqa: E731
    elif call == "eager":  # the eager ops comp ran around predict_on_batch until stop 38
        preprocess = get_backbone(backbone).preprocess
        images = ((images + 1) * 127.5).astype("uint8")
        run = lambda x: model.predict_on_batch(preprocess(tf.cast(  # noqa: E731
            tf.reverse(tf.image.rot90(tf.convert_to_tensor(x), k=1), axis=[2]), tf.float32)))
    elif call in ("keras", "folded"):
        run = model.predict_on_batch
    else:
        compiled = tf.function(lambda x: model(x, training=False), jit_compile=call == "xla")
        run = lambda x: compiled(tf.constant(x)).numpy()  # noqa: E731
    run(images[:batch])  # warm-up: tracing, compilation
    setup = time.time() - started
    started = time.time()
    for start in range(0, n_images, batch):
        np.asarray(run(images[start:start + batch]))
    seconds = time.time() - started
    return {"views_per_s": n_images / seconds, "flops": flops, "setup_s": setup}


def _tflite_runner(model, batch: int, size: int):
    """`model` converted to TFLite: a function of a (batch, size, size, 3) float32 batch."""
    import os
    import warnings

    import tensorflow as tf

    converted = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    with warnings.catch_warnings():  # the deprecation notice
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_content=converted,
                                          num_threads=len(os.sched_getaffinity(0)))
    source = interpreter.get_input_details()[0]["index"]
    target = interpreter.get_output_details()[0]["index"]
    interpreter.resize_tensor_input(source, [batch, size, size, 3])
    interpreter.allocate_tensors()

    def run(x):
        if len(x) != batch:  # the last, short batch
            interpreter.resize_tensor_input(source, [len(x), size, size, 3])
            interpreter.allocate_tensors()
        interpreter.set_tensor(source, x)
        interpreter.invoke()
        return interpreter.get_tensor(target).copy()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--backbone", default="mobilenet_025")
    parser.add_argument("--smoke", action="store_true", help="32 px, 16 images (CI)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a setting, as JSON (internal)
    args = parser.parse_args()
    size, n_images = (32, 16) if args.smoke else (args.size, args.images)
    if args.one:
        print(json.dumps(measure(args.backbone, size, n_images, *json.loads(args.one))))
        return
    from bench.inference import matmul_gflops

    gflops = matmul_gflops(256 if args.smoke else 2048)
    rows = []
    # the smoke mode runs one setting of each kind: keras, tf.function, XLA, bfloat16, folded,
    # TFLite, comp's own pass
    settings = [SETTINGS[i] for i in (0, 3, 5, 6, 10, 13, 14, 15)] if args.smoke else SETTINGS
    for name, call, batch, policy, inter, intra in settings:
        argv = [sys.executable, __file__, "--one", json.dumps([call, batch, policy, inter, intra]),
                "--backbone", args.backbone, "--size", str(size), "--images", str(n_images)]
        done = subprocess.run(argv, capture_output=True, text=True, check=True)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        bound = gflops * 1e9 / result["flops"]
        rows.append((name, batch, policy, result["views_per_s"], result["views_per_s"] / bound,
                     result["flops"], result["setup_s"]))
    flops = rows[0][5]
    weights = imagenet_file(args.backbone, size)
    print(f"\n{args.backbone} at {size} px, {n_images} random images, "
          f"{'ImageNet weights (' + weights.name + ')' if weights else 'random init'}"
          f"{' (smoke: not a measurement)' if args.smoke else ''}; FLOP bound: float32 matmul "
          f"{gflops:.0f} GFLOP/s / {flops / 1e6:.1f} MFLOP per view = "
          f"{gflops * 1e9 / flops:.0f} views/s\n")
    print("| setting | batch | policy | views/s | share of the FLOP bound | set-up s |")
    print("|---|---|---|---|---|---|")
    for name, batch, policy, speed, share, _, setup in rows:
        print(f"| {name} | {batch} | {policy} | {speed:.0f} | {share:.1%} | {setup:.1f} |")
    print("\nset-up: the first batch's call with what precedes it (tracing, XLA's compilation, "
          "TFLite's conversion), not in views/s")


if __name__ == "__main__":
    main()
