"""Frozen forward passes through TFLite's XNNPACK kernels, for a CPU.

A frozen network (a backbone's prefix up to its cut, or a pooled embedding network) gives
the same outputs every epoch and fold, so comp computes them once per image and view;
on a CPU TensorFlow's own kernels run MobileNet 0.25 at 224 px at 23-28% of this
machine's matrix-product rate, TFLite's XNNPACK kernels at about 55% in calls of a few
images (bench/README.md, "Frozen passes through TFLite"), one interpreter a core side
by side. The network, with its uint8 input's float cast, the backbone's preprocessing
and the cast of its outputs, is converted once and kept in the run's `cache/lite/`; the
dihedral view is taken in NumPy, chunk by chunk on the interpreters' threads. A network
that does not convert to TFLite's built-in operators, or whose converted outputs differ
from Keras's on a probe batch, is run by TensorFlow as before (None from
`lite_forward`), and the cache remembers that, so later passes do not try again.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from comp.artifacts import atomic_path
from comp.data.views import dihedral_view
from comp.log import get_logger, silenced_output

LITE_ROWS = 4  # images per interpreter call: 3,200 views/s at 1-8, 2,270 at 32 (224 px)
MAX_INTERPRETERS = 8  # side by side, one thread each (more cores: more threads each)
PROBE_TOLERANCE = 1e-3  # largest difference to Keras's outputs, relative to their scale
# how a converted network is made from the model network_key hashes (a new form: new keys)
NETWORK_FORM = "batch-norms-folded"


def lite_forward(model, preprocess: Callable, dtype: str, threads: int,
                 cache: Path | None = None) -> Callable[[np.ndarray, int], np.ndarray] | None:
    """A function (uint8 batch, dihedral view) -> the outputs as `dtype` of `model`, a
    frozen network, converted with its batch norms folded into their convolutions
    (comp.models.build.fold_batch_norms), run by TFLite interpreters side by side on
    `threads` cores (_interpreters; one call at a time: the interpreters are the
    function's own); None where TFLite is not installed, the model's input size is not
    fixed, the conversion fails or its outputs on a probe batch differ from Keras's by
    more than PROBE_TOLERANCE of their scale (the reason is one info line; TensorFlow then
    runs the model). With `cache` (a folder), the converted network is kept there under a
    hash of `model`'s weights, layers and preprocessing (`network_key`), so the
    prediction after training, or a second run's pass, reads it instead of converting
    again (1-2 s a network) and without folding `model` (0.2 s for MobileNet 0.25's
    prefix here)."""
    interpreter_class = _interpreter_class()
    shape = tuple(model.input_shape[1:])
    if interpreter_class is None or None in shape:
        return None
    key = network_key(model, preprocess, dtype) if cache is not None else None
    stored = cache / f"{key}.tflite" if cache is not None else None
    refused = cache / f"{key}.tensorflow" if cache is not None else None
    if refused is not None and refused.exists():  # an earlier pass found it does not run
        return None
    network = None  # made only where nothing stored: then probed against Keras below
    if stored is not None and stored.exists():
        content = stored.read_bytes()
    else:
        from comp.models.build import fold_batch_norms

        network = _keras_network(fold_batch_norms(model), preprocess, shape, dtype)
        content = _converted(model, network)
        if content is None:
            _remember_refusal(refused)
            return None
    try:
        interpreters = _interpreters(interpreter_class, content, threads)
    except Exception as error:  # noqa: BLE001 - an interpreter that cannot load it
        _fallback(model, f"its interpreter does not load it ({type(error).__name__})")
        return None
    sources = [i.get_input_details()[0]["index"] for i in interpreters]
    targets = [i.get_output_details()[0]["index"] for i in interpreters]
    out_shape = tuple(interpreters[0].get_output_details()[0]["shape"][1:])
    # kept for every call: a pool made per call of 32 images cost 2-3 ms a call here
    pool = ThreadPoolExecutor(len(interpreters), thread_name_prefix="comp-lite")

    def run_chunks(which: int, batch: np.ndarray, view: int, out: np.ndarray,
                   starts: range) -> None:
        interpreter, source, target = interpreters[which], sources[which], targets[which]
        for start in starts:
            chunk = dihedral_view(batch[start:start + LITE_ROWS], view)
            rows = len(chunk)
            if rows < LITE_ROWS:  # the last, short chunk: padded, one tensor shape
                chunk = np.concatenate([chunk, np.zeros((LITE_ROWS - rows, *shape),
                                                        np.uint8)])
            interpreter.set_tensor(source, chunk)
            interpreter.invoke()
            out[start:start + rows] = interpreter.get_tensor(target)[:rows]

    def run(batch: np.ndarray, view: int = 0) -> np.ndarray:
        batch = np.asarray(batch, np.uint8)
        out = np.empty((len(batch), *out_shape), dtype)
        starts = range(0, len(batch), LITE_ROWS)
        used = min(len(interpreters), len(starts))
        if used <= 1:
            run_chunks(0, batch, view, out, starts)
            return out
        # each interpreter takes every used-th chunk; invoke lets go of the GIL
        list(pool.map(run_chunks, range(used), [batch] * used, [view] * used,
                      [out] * used, [starts[i::used] for i in range(used)]))
        return out

    if network is not None:
        probe = np.random.default_rng(0).integers(0, 256, (LITE_ROWS, *shape), dtype=np.uint8)
        expected = np.asarray(network.predict_on_batch(probe), np.float32)
        got = run(probe).astype(np.float32)
        scale = max(1.0, float(np.abs(expected).max()))
        if (got.shape != expected.shape
                or not np.abs(got - expected).max() <= PROBE_TOLERANCE * scale):
            _fallback(model, "its outputs differ from Keras's on a probe batch")
            _remember_refusal(refused)
            return None
        if stored is not None:
            with atomic_path(stored) as tmp:
                tmp.write_bytes(content)
    return run


def _interpreters(interpreter_class, content: bytes, threads: int) -> list:
    """Interpreters of the converted network that share `threads` cores: one a core (up
    to MAX_INTERPRETERS), each on one thread, each run on its own chunks side by side.
    Two one-thread interpreters ran MobileNet 0.25 at 1.5x one interpreter on two threads
    here (3,420-3,560 against 2,340-2,370 views/s; a prefix through block 9: 1.5-1.67x), which
    waits at every layer for both threads."""
    count = max(1, min(threads, MAX_INTERPRETERS))
    out = []
    # tf.lite.Interpreter's deprecation notice; XNNPACK's "Created delegate" line
    with warnings.catch_warnings(), silenced_output():
        warnings.simplefilter("ignore")
        for _ in range(count):
            interpreter = interpreter_class(model_content=content,
                                            num_threads=max(1, threads // count))
            interpreter.allocate_tensors()
            out.append(interpreter)
    return out


def network_key(model, preprocess: Callable, dtype: str = "float32") -> str:
    """What a converted network depends on, hashed: TensorFlow's version, the input
    shape, the output `dtype`, each layer's kind and each weight's shape and values of
    `model` as built (lite_forward folds its batch norms: NETWORK_FORM), and the
    preprocessing's output on a fixed probe (the layer names Keras numbers per process
    are left out)."""
    import tensorflow as tf

    digest = hashlib.sha256(f"{tf.__version__}|{LITE_ROWS}|{NETWORK_FORM}|"
                            f"{model.input_shape}|{np.dtype(dtype).name}".encode())
    for layer in model.layers:
        digest.update(type(layer).__name__.encode())
    for weight in model.get_weights():
        digest.update(str(weight.shape).encode())
        digest.update(np.ascontiguousarray(weight).tobytes())
    probe = np.arange(256, dtype=np.float32).reshape(1, 1, -1, 1)
    digest.update(np.asarray(preprocess(probe)).tobytes())
    return digest.hexdigest()[:16]


def _keras_network(model, preprocess: Callable, shape: tuple, dtype: str = "float32"):
    """`model` behind its uint8 input's float cast and `preprocess`, its outputs cast to
    `dtype`, as one Keras model of LITE_ROWS images (TFLite's converter reads Keras 3
    variables right through from_keras_model; from a tf.function of the model, every
    output was NaN). The cast to float16 in the network costs nothing measurable; in
    NumPy it cost 12% of MobileNet 0.25's pass (2.5 ns a value)."""
    import keras
    import tensorflow as tf

    images = keras.Input(shape, batch_size=LITE_ROWS, dtype="uint8")
    outputs = model(keras.layers.Lambda(
        lambda batch: preprocess(tf.cast(batch, tf.float32)))(images))
    if np.dtype(dtype) != np.float32:
        outputs = keras.layers.Lambda(lambda x: tf.cast(x, dtype))(outputs)
    return keras.Model(images, outputs)


def _converted(model, network) -> bytes | None:
    """The TFLite flatbuffer of `network` (`model` behind its preprocessing,
    _keras_network; TFLite's built-in operators only); None, with the reason in one info
    line, where it does not convert."""
    import tensorflow as tf

    try:
        converter = tf.lite.TFLiteConverter.from_keras_model(network)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        with silenced_output():
            return converter.convert()
    except Exception as error:  # noqa: BLE001 - any converter failure: Keras runs it
        _fallback(model, f"it does not convert ({type(error).__name__})")
        return None


def lite_folder(backbone, cache: Path | None) -> Path | None:
    """Where `backbone`'s frozen passes keep their TFLite form (`cache`, the run's
    `cache/lite/`), or None where TensorFlow runs them: on a machine with a GPU (TFLite's
    kernels here are CPU kernels), for a backbone TFLite does not speed up
    (`Backbone.lite`), or where nothing may be written (`cache` None)."""
    from comp.training.compute import visible_gpus

    return cache if backbone.lite and cache is not None and not visible_gpus() else None


def process_threads() -> int:
    """Cores this process may use: TensorFlow's intra-op thread count where the
    environment sets it (a training worker's share, comp.training.workers), else the CPUs
    the process may run on."""
    configured = os.environ.get("TF_NUM_INTRAOP_THREADS", "")
    if configured.isdigit() and int(configured) > 0:
        return int(configured)
    return len(os.sched_getaffinity(0))


def _interpreter_class():
    """LiteRT's Interpreter where that package is installed, else TensorFlow's (which it
    marks deprecated); None where neither is there."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter
    except ImportError:
        pass
    import tensorflow as tf

    return getattr(getattr(tf, "lite", None), "Interpreter", None)


def _remember_refusal(marker: Path | None) -> None:
    """An empty `<key>.tensorflow` beside the converted networks: TensorFlow runs this one."""
    if marker is not None:
        with atomic_path(marker) as tmp:
            tmp.write_bytes(b"")


def _fallback(model, reason: str) -> None:
    get_logger().info(f"frozen pass of {getattr(model, 'name', 'the model')}: TensorFlow "
                      f"runs it, not TFLite: {reason}")
