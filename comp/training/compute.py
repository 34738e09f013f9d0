"""Where models are built and fitted: dtype policy (mixed precision), XLA and replicas.

The same code runs on CPU and GPU; `compute.*` only picks Keras's dtype policy, the
compile's `jit_compile` and, with `distribute=mirrored`, a MirroredStrategy over every
visible GPU (one replica on a CPU machine).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from functools import cache

from comp.errors import CompError

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


def check(compute: dict | None) -> dict:
    """`compute` with defaults filled in; a bad value is one clear error."""
    compute = {"precision": "float32", "jit_compile": "auto", "distribute": "none",
               **(compute or {})}
    if compute["precision"] not in PRECISIONS:
        raise CompError(f"config: compute.precision={compute['precision']!r}; use one of "
                        f"{', '.join(PRECISIONS)}")
    if str(compute["jit_compile"]).lower() not in ("auto", "true", "false"):
        raise CompError(f"config: compute.jit_compile={compute['jit_compile']!r}; use auto, "
                        "true or false")
    if compute["distribute"] not in ("none", "mirrored"):
        raise CompError(f"config: compute.distribute={compute['distribute']!r}; use none or "
                        "mirrored")
    return compute


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
