"""Where models are built and fitted: dtype policy (mixed precision), XLA and replicas.

The same code runs on CPU and GPU; `compute.*` only picks Keras's dtype policy, the
compile's `jit_compile` and, with `distribute=mirrored`, a MirroredStrategy over every
visible GPU (one replica on a CPU machine). The defaults follow the machine: mixed
float16 where TensorFlow sees a GPU, mixed bfloat16 for small_cnn on a CPU with AMX
(`precision=auto`, resolved when a model's spec is made), and Keras's own
`jit_compile="auto"`, which turns XLA on with a GPU and off on a CPU (where it made the
fine-tune's training steps 2-9x slower here, bench/README.md).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from functools import cache
from pathlib import Path

from comp.log import quiet_tensorflow

PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")  # compute.precision
JIT_COMPILE = ("auto", True, False)  # compute.jit_compile
DISTRIBUTE = ("none", "mirrored")  # compute.distribute
MODEL_KEYS = ("precision", "jit_compile", "distribute")  # what a model's spec records
WORKER_MEMORY = 1.5 * 2**30  # bytes a training worker may grow to (TensorFlow + one model)


def check(compute: dict | None, gpus: int | None = None, amx_bfloat16: bool = False,
          amx: bool | None = None) -> dict:
    """`compute` with defaults filled in (its values are checked with the config) and
    `precision=auto` resolved for a machine with `gpus` GPUs (None: those TensorFlow sees)
    and a CPU with or without AMX's bfloat16 tiles (`amx`; None: `cpu_has_amx`):
    mixed_float16 with a GPU; without one, mixed_bfloat16 for a model whose registry row
    says AMX speeds its fit (`amx_bfloat16`: small_cnn) where the CPU has AMX, else
    float32 (a CPU's float16 kernels were 69x slower than float32, bfloat16 without AMX or
    for MobileNet's depthwise convolutions slower too, bench/README.md "fit_step.py")."""
    given = {k: v for k, v in (compute or {}).items() if k in MODEL_KEYS}
    filled = {"precision": "auto", "jit_compile": "auto", "distribute": "none", **given}
    if filled["precision"] == "auto":
        has_gpu = visible_gpus() if gpus is None else gpus
        if has_gpu:
            filled["precision"] = "mixed_float16"
        elif amx_bfloat16 and (cpu_has_amx() if amx is None else amx):
            filled["precision"] = "mixed_bfloat16"
        else:
            filled["precision"] = "float32"
    return filled


@cache
def cpu_has_amx(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU has Intel AMX's bfloat16 tiles (Linux's `amx_bf16` flag), on which
    oneDNN runs TensorFlow's bfloat16 convolutions; False where that cannot be told."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    return any(line.startswith("flags") and "amx_bf16" in line.split()
               for line in text.splitlines())


def worker_count(setting: str | int, gpus: int, cpus: int, distribute: str = "none",
                 memory: float | None = None) -> int:
    """How many training units run at once (`compute.workers`), each in its own process
    (comp.training.workers). A number is taken as it is. `auto`: one where models run on
    GPUs (or `distribute=mirrored`), since one process fills them; on a CPU one per core,
    at most 4 and at most one per WORKER_MEMORY of the `memory` bytes available (None:
    unknown, no cap). Small models do not keep several cores busy from one process: two
    one-thread workers trained mnist2k's round 0 in 478 s against 691 s for one process
    on a 2-core machine (bench/README.md "Training workers")."""
    if str(setting) != "auto":
        return int(setting)
    if gpus or distribute == "mirrored":
        return 1
    count = max(1, min(4, cpus))
    if memory is not None:
        count = min(count, max(1, int(memory // WORKER_MEMORY)))
    return count


def available_memory() -> float | None:
    """Bytes of memory available to new processes (Linux's MemAvailable); None elsewhere."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def visible_gpus() -> int:
    """The number of GPUs TensorFlow sees; 0 without importing it on a Linux machine with
    no GPU driver's device files, so a process that only plans units and hands them to
    workers does not load TensorFlow for the question."""
    if "tensorflow" not in sys.modules and not gpu_driver_present():
        return 0
    quiet_tensorflow()
    import tensorflow as tf

    return len(tf.config.list_physical_devices("GPU"))


def gpu_driver_present(dev: Path = Path("/dev")) -> bool:
    """Whether a GPU driver's device files are in `dev` (NVIDIA's, AMD ROCm's /dev/kfd,
    WSL's /dev/dxg), without which TensorFlow sees no GPU on Linux; True where that cannot
    be told (not Linux: TensorFlow is asked)."""
    if not sys.platform.startswith("linux"):
        return True
    return any((dev / name).exists() for name in ("nvidiactl", "nvidia0", "kfd", "dxg"))


def frozen_batch_size() -> int:
    """Images per batch of a frozen forward pass (features, embeddings, prediction's
    prefix): 32 on a CPU, where a batch's activations stay in the caches (1,328 views/s
    against 1,137 at 128 for MobileNet 0.25 at 224 px here, bench/README.md "The feature
    pass as one graph"), 128 where a GPU wants larger batches."""
    return 128 if visible_gpus() else 32


# input numbers in a batch of a trained model's prediction on a CPU (prediction_batch_rows)
PREDICTION_BATCH_VALUES = 2**21


def prediction_batch_rows(row_values: int) -> int:
    """Rows per batch where a trained model predicts cached features or images whose rows
    hold `row_values` numbers each (validation every epoch, out-of-fold and test
    probabilities, stage=predict's heads): 512 where a GPU runs it; on a CPU the power of
    two nearest PREDICTION_BATCH_VALUES / `row_values`, from 32 to 512, so that a batch's
    activations stay in the caches. MobileNet 0.25's head predicted 2,048 views of its
    224 px features (14 x 14 x 128 a row) in 1.42 s at 64-128 rows against 1.56-1.59 s
    at 512, and of its 128 px features (8 x 8 x 128) in 0.92-0.96 s at 512 against
    0.96-0.98 s at 128 (bench/README.md, "Prediction batches")."""
    if visible_gpus():
        return 512
    nearest = 2 ** round(math.log2(PREDICTION_BATCH_VALUES / max(1, row_values)))
    return int(min(512, max(32, nearest)))


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
