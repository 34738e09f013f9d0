"""Where models are built and fitted: dtype policy (mixed precision), XLA and replicas.

The same code runs on CPU and GPU; `compute.*` only picks Keras's dtype policy, the
compile's `jit_compile` and, with `distribute=mirrored`, a MirroredStrategy over every
visible GPU (one replica on a CPU machine).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from functools import cache

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")  # compute.precision
JIT_COMPILE = ("auto", True, False)  # compute.jit_compile
DISTRIBUTE = ("none", "mirrored")  # compute.distribute


def check(compute: dict | None) -> dict:
    """`compute` with defaults filled in (its values are checked with the config)."""
    return {"precision": "float32", "jit_compile": "auto", "distribute": "none",
            **(compute or {})}


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
