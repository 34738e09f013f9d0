"""Atomic writes: a reader never sees half a file, and files get the user's usual mode."""

import json
import os
import stat

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from comp.artifacts import write_csv, write_json, write_text


@pytest.fixture
def umask():
    """Set the process umask for one test; the old one is restored."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_artifacts_get_the_users_umask_not_the_private_temporary_mode(tmp_path, umask):
    from comp.report import _save

    umask(0o022)
    write_csv(tmp_path / "board.csv", pd.DataFrame({"a": [1]}))
    write_text(tmp_path / "report" / "index.html", "<html></html>")
    write_json(tmp_path / "cv.json", {"cv": 1})
    fig = plt.figure()
    _save(fig, tmp_path / "report" / "plot.png")  # the report's PNG writer
    for name in ("board.csv", "report/index.html", "cv.json", "report/plot.png"):
        assert _mode(tmp_path / name) == 0o644, name
    umask(0o077)  # a private umask is kept too
    write_csv(tmp_path / "board.csv", pd.DataFrame({"a": [2]}))
    assert _mode(tmp_path / "board.csv") == 0o600
    assert pd.read_csv(tmp_path / "board.csv").a.tolist() == [2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["board.csv", "cv.json", "report"]


def test_too_little_free_space_is_the_full_disk_error_before_any_write(tmp_path, monkeypatch):
    import errno
    import shutil
    from collections import namedtuple

    from comp.artifacts import disk_full, ensure_free_space

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 << 30, 0, 3 << 20))
    ensure_free_space(tmp_path / "w.h5", 1 << 20)  # 3 MiB free holds 1 MiB and the margin
    with pytest.raises(OSError) as raised:
        ensure_free_space(tmp_path / "w.h5", 2 << 20)
    assert raised.value.errno == errno.ENOSPC and disk_full(raised.value)
    assert raised.value.filename == str(tmp_path / "w.h5") and "about 2097152" in str(raised.value)
    assert not (tmp_path / "w.h5").exists()


def test_cached_npy_returns_the_entry_made_under_the_same_key_and_rebuilds_otherwise(tmp_path):
    from comp.artifacts import cached_npy

    made = []

    def write(value):
        def into(tmp):
            made.append(value)
            np.save(tmp, np.full(3, value, dtype=np.float16))
        return into

    key = {"source": "x", "views": (0, 1), "n": np.int64(3)}
    first = cached_npy(tmp_path, key, "train", write(1.0))
    again = cached_npy(tmp_path, {"source": "x", "views": [0, 1], "n": 3}, "train", write(2.0))
    assert made == [1.0] and first.dtype == np.float16 and np.all(again == 1.0)
    assert np.all(cached_npy(tmp_path, {**key, "n": 4}, "train", write(3.0)) == 3.0)
    (key_file,) = [p for p in tmp_path.glob("*/train.key.json")
                   if json.loads(p.read_text())["n"] == 3]
    key_file.write_text("{damaged")
    assert np.all(cached_npy(tmp_path, key, "train", write(4.0), mmap_mode="r") == 4.0)

    def killed(tmp):
        np.save(tmp, np.zeros(3))
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cached_npy(tmp_path, key | {"n": 5}, "train", killed)
    assert np.all(cached_npy(tmp_path, key | {"n": 5}, "train", write(5.0)) == 5.0)
    assert made == [1.0, 3.0, 4.0, 5.0]


def test_atomic_dir_replaces_a_folder_whole_or_leaves_it_whole(tmp_path, umask):
    from comp.artifacts import atomic_dir

    umask(0o022)
    target = tmp_path / "export"
    with atomic_dir(target) as folder:
        (folder / "model.keras").write_text("first")
        assert not target.exists()  # nothing at the target while it is written
    assert (target / "model.keras").read_text() == "first" and _mode(target) == 0o755
    with pytest.raises(RuntimeError), atomic_dir(target) as folder:  # killed half-way
        (folder / "model.keras").write_text("second")
        raise RuntimeError
    assert [p.name for p in target.iterdir()] == ["model.keras"]
    assert (target / "model.keras").read_text() == "first"
    with atomic_dir(target) as folder:
        (folder / "classes.json").write_text("[]")
    assert [p.name for p in target.iterdir()] == ["classes.json"]  # the new folder, alone
    assert [p.name for p in tmp_path.iterdir()] == ["export"]  # no temporary folder left
