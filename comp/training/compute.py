"""Where models are built and fitted: dtype policy (mixed precision), XLA and replicas.

The same code runs on CPU and GPU; `compute.*` only picks Keras's dtype policy, the
compile's `jit_compile` and, with `distribute=mirrored`, a MirroredStrategy over every
visible GPU (one replica on a CPU machine). The defaults follow the machine: mixed
float16 where TensorFlow sees a GPU (`precision=auto`, resolved when a model's spec is
made), and Keras's own `jit_compile="auto"`, which turns XLA on with a GPU and off on a
CPU (where it made the fine-tune's training steps 2-9x slower here, bench/README.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from functools import cache

PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")  # compute.precision
JIT_COMPILE = ("auto", True, False)  # compute.jit_compile
DISTRIBUTE = ("none", "mirrored")  # compute.distribute


def check(compute: dict | None, gpus: int | None = None) -> dict:
    """`compute` with defaults filled in (its values are checked with the config) and
    `precision=auto` resolved for a machine with `gpus` GPUs (None: those TensorFlow sees):
    mixed_float16 with a GPU, float32 without (a CPU's float16 and bfloat16 kernels were
    slower than float32 here, bench/README.md "throughput.py")."""
    filled = {"precision": "auto", "jit_compile": "auto", "distribute": "none",
              **(compute or {})}
    if filled["precision"] == "auto":
        has_gpu = visible_gpus() if gpus is None else gpus
        filled["precision"] = "mixed_float16" if has_gpu else "float32"
    return filled


def visible_gpus() -> int:
    """The number of GPUs TensorFlow sees."""
    import tensorflow as tf

    return len(tf.config.list_physical_devices("GPU"))


def jit_compile(compute: dict | None) -> bool | str:
    """The `jit_compile` argument of Model.compile."""
    value = str(check(compute)["jit_compile"]).lower()
    return "auto" if value == "auto" else value == "true"


@cache
def _mirrored():
    # one strategy per process: variables made under it must be fitted under it too
    import tensorflow as tf

    return tf.distribute.MirroredStrategy()


@contextmanager
def model_scope(compute: dict | None) -> Iterator[None]:
    """Build, compile and fit models inside this: the dtype policy and the strategy.

    Keras keeps the dtype policy as process state; it is set here and put back on exit,
    so nothing outside a scope sees it.
    """
    import keras

    compute = check(compute)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(compute["precision"])
    try:
        strategy = _mirrored() if compute["distribute"] == "mirrored" else None
        with strategy.scope() if strategy is not None else nullcontext():
            yield
    finally:
        keras.config.set_dtype_policy(previous)
