"""Quiet, one-line logging for comp and silencing of TensorFlow's start-up chatter."""

from __future__ import annotations

import logging
import os
import sys
import warnings


def quiet_tensorflow() -> None:
    """Import TensorFlow with its start-up chatter silenced.

    TF's C++ start-up lines (oneDNN, CUDA probing) are written before absl logging is
    configured and ignore TF_CPP_MIN_LOG_LEVEL, so stderr is pointed at /dev/null at the
    file-descriptor level for the import alone. Import errors still surface afterwards.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    if "tensorflow" not in sys.modules:
        saved = os.dup(2)
        try:
            with open(os.devnull, "w") as devnull:
                os.dup2(devnull.fileno(), 2)
                import tensorflow  # noqa: F401
        except Exception:  # noqa: S110 - re-imported below with stderr back, to show why
            pass
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")  # e.g. retracing notices
    warnings.filterwarnings("ignore", message=".*input_shape.*is not one of.*")
    warnings.filterwarnings("ignore", message=".*Your `PyDataset` class should call.*")
    warnings.filterwarnings("ignore", category=UserWarning, module="keras")


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


def progress(iterable=None, **kwargs):
    """A tqdm progress bar that shows on a terminal and stays out of logs and pipes."""
    from tqdm.auto import tqdm

    kwargs.setdefault("leave", False)
    kwargs.setdefault("disable", None)  # None: off when stderr is not a terminal
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)
