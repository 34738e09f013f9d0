"""Quiet, one-line logging for comp, progress (bars or lines) and silencing of
TensorFlow's start-up chatter.

Progress has four modes (`progress=` in the config): `bar` (tqdm bars), `lines` (one log
line per finished unit: a fold, a tuning trial), `off`, and `auto` (the default: bars
when stderr is a terminal, lines when it goes to a file or a pipe: Kaggle `!python`,
Slurm, CI logs).

What a stage changes in the process, it changes for the stage alone and gives back
(`comp.run.run_stage` enters these contexts; a plain import of comp changes nothing):
the progress mode (`using_progress`), the warnings Keras gives about comp's own use of
it and TensorFlow's Python log level (`quiet_libraries`). The one lasting change is
`quiet_tensorflow`'s: TensorFlow imported, with its C++ log level set in the environment
(unless the caller set one), which TensorFlow reads as it starts.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

PROGRESS_MODES = ("auto", "bar", "lines", "off")
_progress_mode = "auto"  # "auto" outside a stage; set by using_progress for its while


@contextmanager
def using_progress(mode: str) -> Iterator[None]:
    """A context in which the progress mode is `mode`, one of PROGRESS_MODES (see the
    module docstring); the earlier mode is back afterwards. A module setting rather
    than an argument: bars and lines are drawn deep in data, training and inference
    code that takes no config."""
    global _progress_mode
    saved, _progress_mode = _progress_mode, mode
    try:
        yield
    finally:
        _progress_mode = saved


def progress_mode() -> str:
    """The effective mode: bar, lines or off (auto resolved against stderr)."""
    if _progress_mode != "auto":
        return _progress_mode
    try:
        return "bar" if sys.stderr.isatty() else "lines"
    except (AttributeError, ValueError):  # replaced or closed stderr
        return "lines"


def unit_done(kind: str, **fields) -> None:
    """In `lines` mode, log one line for a finished unit of work, e.g.
    `comp: fold done: model=small_cnn-1a2b fold=0 best_epoch=3 val_auc=0.9123 seconds=4.2`;
    fields that are None (a classic model has no best epoch) are left out.
    """
    if progress_mode() != "lines":
        return
    parts = [f"{key}={_format(key, value)}" for key, value in fields.items()
             if value is not None]
    get_logger().info("%s done: %s", kind, " ".join(parts))


def _format(key: str, value) -> str:
    if isinstance(value, float):
        return f"{value:.1f}" if key == "seconds" else f"{value:.4f}"
    return str(value)


def quiet_tensorflow() -> None:
    """Import TensorFlow with its start-up chatter silenced.

    TF's C++ start-up lines (oneDNN, CUDA probing) are written before absl logging is
    configured and ignore TF_CPP_MIN_LOG_LEVEL, so stderr is pointed at /dev/null at the
    file-descriptor level for the import alone. Import errors still surface afterwards.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    if "tensorflow" not in sys.modules:
        try:
            with silenced_output((2,)):
                import tensorflow  # noqa: F401
        except Exception:  # noqa: S110 - re-imported below with stderr back, to show why
            pass
    import tensorflow  # noqa: F401, F811 - an import error shows here, stderr back


@contextmanager
def silenced_output(descriptors: tuple[int, ...] = (1, 2)) -> Iterator[None]:
    """The file descriptors (stdout and stderr) pointed at /dev/null while the context
    lasts: C++ code (TensorFlow's start-up, TFLite's converter and XNNPACK) writes to them
    directly, where Python's redirections do not reach. Python's own buffers are flushed
    first, so nothing written before is lost."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(fd) for fd in descriptors]
    try:
        with open(os.devnull, "w") as devnull:
            for fd in descriptors:
                os.dup2(devnull.fileno(), fd)
            yield
    finally:
        for fd, copy in zip(descriptors, saved, strict=True):
            os.dup2(copy, fd)
            os.close(copy)


@contextmanager
def quiet_libraries() -> Iterator[None]:
    """A context (a stage's) in which the warnings Keras gives about comp's own, intended
    use of it are ignored and TensorFlow's Python logger shows errors only (e.g. no
    retracing notices); the warning filters and the log level are the caller's again
    afterwards (warnings.catch_warnings), so a script or notebook that calls comp keeps
    its own. While the context lasts the filters hold for the whole process, every
    thread included: Python's warning filters are process-wide."""
    tf_logger = logging.getLogger("tensorflow")  # tf.get_logger(), without importing TF
    saved = tf_logger.level
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*input_shape.*is not one of.*")
        warnings.filterwarnings("ignore", message=".*Your `PyDataset` class should call.*")
        warnings.filterwarnings("ignore", category=UserWarning, module="keras")
        tf_logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            tf_logger.setLevel(saved)


def get_logger() -> logging.Logger:
    """The `comp` logger: messages as `comp: <text>` on stderr."""
    logger = logging.getLogger("comp")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("comp: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def log_over_bars():
    """A context in which the `comp` logger's lines go through `tqdm.write` in `bar` mode
    (tqdm's logging_redirect_tqdm), so a log line clears the live bars and is printed on
    a line of its own, the bars redrawn below it; elsewhere it changes nothing."""
    from contextlib import nullcontext

    if progress_mode() != "bar":
        return nullcontext()
    from tqdm.contrib.logging import logging_redirect_tqdm

    return logging_redirect_tqdm(loggers=[get_logger()])


def progress(iterable=None, **kwargs):
    """A tqdm progress bar: shown in `bar` mode (and in `auto` on a terminal), never in
    `lines` or `off` mode, so it stays out of logs and pipes."""
    from tqdm.auto import tqdm

    kwargs.setdefault("leave", False)
    mode = progress_mode()
    if mode != "bar":
        kwargs["disable"] = True
    elif _progress_mode == "auto":
        kwargs.setdefault("disable", None)  # None: off when stderr is not a terminal
    else:
        kwargs["disable"] = kwargs.get("disable") or False
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)
