"""Fixtures: a tiny competition per test, runs built once per session and copied into each
test that wants one, and the comp logger left as each test found it. Helpers live in
tests/helpers.py (imported here too, for modules that still import them from conftest)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest


def _share_the_cores_between_workers() -> None:
    """Each pytest-xdist worker gets its share of the cores for TensorFlow, OpenMP and BLAS
    (read as each library starts, so before comp or its tests import them) instead of
    every worker's libraries using every core: the fast suite on 2 cores, runs with and
    without it interleaved, 56.5-58.6 s against 61.3-62.2 s. Settings already in the
    environment win."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers < 2:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)
    share = str(max(1, cores // workers))
    for variable in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS",
                     "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, share)


_share_the_cores_between_workers()  # before the imports below start those libraries

from comp.crashpoints import ENV as CRASH_ENV  # noqa: E402
from comp.log import get_logger  # noqa: E402
from tests.helpers import (  # noqa: F401, E402  (re-exported: bench/ and older tests import these)
    CLASSES,
    TINT,
    copy_tree,
    make_competition,
    run_comp,
    synthetic_image,
    tiny_overrides,
)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.pop(CRASH_ENV, None)  # a crash point is set per child process (comp_process) only


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto` (the default, pyproject.toml): one worker per core, at most 4, since each
    worker imports TensorFlow and the slow tests' workers grow to several GB."""
    return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                      else os.cpu_count() or 1))


@pytest.fixture
def competition(tmp_path: Path) -> Path:
    """A fresh tiny competition (3 classes x 8 images, 6 test, 4 unlabeled) in tmp_path/comp."""
    return make_competition(tmp_path / "comp")


_COMP_LOGGER = get_logger()  # as comp sets it up: its stderr handler, INFO, not propagating
_COMP_LOGGER_AS_SET_UP = (_COMP_LOGGER.propagate, _COMP_LOGGER.level, list(_COMP_LOGGER.handlers))


def _reset_comp_logger() -> None:
    propagate, level, handlers = _COMP_LOGGER_AS_SET_UP
    _COMP_LOGGER.propagate, _COMP_LOGGER.disabled = propagate, False
    _COMP_LOGGER.setLevel(level)
    _COMP_LOGGER.handlers[:] = handlers


@pytest.fixture(autouse=True)
def _comp_logger_restored():
    """Each test starts and ends with the `comp` logger as comp sets it up (its stderr
    handler, INFO, not propagating), whatever the test or a session fixture built before it
    (a quiet run sets WARNING) did to it."""
    _reset_comp_logger()
    yield
    _reset_comp_logger()


@pytest.fixture
def comp_caplog(caplog):
    """caplog that sees each of the `comp` logger's records once, at INFO and above.

    The `comp` logger does not propagate, so caplog's handler is attached to it directly
    (pytest 9's `at_level(logger=...)` attaches it there too; `addHandler` keeps one copy).
    Making the logger propagate instead would also reach the root handler: two records each
    on pytest 9. The logger is restored afterwards by _comp_logger_restored."""
    logger = get_logger()
    logger.addHandler(caplog.handler)
    with caplog.at_level(logging.INFO, logger="comp"):
        yield caplog


@pytest.fixture(scope="session")
def trained_template(tmp_path_factory) -> Path:
    """Built once per session: a tiny competition in comp/ and one small_cnn trained on its
    two folds in runs/tiny/ (tiny_overrides). Use `trained` for a copy; never change this."""
    root = tmp_path_factory.mktemp("trained")
    competition = make_competition(root / "comp")
    assert run_comp("stage=train", *tiny_overrides(root, competition)) == 0
    return root


@pytest.fixture
def trained(trained_template: Path, tmp_path: Path) -> Path:
    """This test's copy of `trained_template` in tmp_path; returns the competition folder
    (tmp_path/comp), so tiny_overrides(tmp_path, trained) finds the trained model."""
    copy_tree(trained_template, tmp_path)
    return tmp_path / "comp"
