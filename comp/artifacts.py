"""Atomic artifact writes and small readers: a reader never sees half a file.

Every file comp writes that a later stage trusts goes through one of these writers:
the content is written to a temporary file in the same folder, flushed to disk, given
the mode an ordinary `open()` would give it (0666 less the user's umask, e.g. 0644:
the private temporary file is 0600), then renamed over the target (rename is atomic on
POSIX file systems).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml


@contextlib.contextmanager
def atomic_path(target: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it over `target` on success.

    `suffix` ends the temporary name, for writers that insist on an extension.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp_path, new_file_mode())
        os.replace(tmp_path, target)
    except OSError as exc:
        if not disk_full(exc):
            raise
        # one kind of error, whichever library's write failed (h5py, pandas, joblib, numpy)
        raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} on the disk holding "
                      f"{target.parent}", str(target)) from exc
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary folder beside `target`; on success it takes `target`'s
    place (a folder already there is moved aside first, then removed), so a reader finds
    the earlier folder whole or the new one whole, never a half-written one; on failure
    it is removed and `target` is left as it was."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, new_file_mode() | 0o111)  # a folder's mode, as mkdir would give it
        aside = None
        if target.exists():
            aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
            os.replace(target, aside / target.name)
        os.replace(tmp, target)
        if aside is not None:
            shutil.rmtree(aside)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def ensure_free_space(target: str | Path, nbytes: int) -> None:
    """Raise the full-disk OSError before writing about `nbytes` to `target` where its disk
    has less free (with 10% and 1 MiB to spare). h5py can crash the process outright when
    the disk fills during a weights file, so the weights writers check first."""
    folder = Path(target).parent
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < nbytes * 1.1 + (1 << 20):
        raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} on the disk holding "
                      f"{folder} ({free} bytes free, about {nbytes} needed)", str(target))


def new_file_mode() -> int:
    """The mode `open()` gives a new file: 0666 less the process's umask."""
    mask = os.umask(0o022)  # reading the umask means setting it; restored at once
    os.umask(mask)
    return 0o666 & ~mask
def disk_full(exc: OSError) -> bool:
    """Whether `exc` reports a full disk or quota, also when a library put errno 28 only in
    its arguments or message (OSError(28), h5py's "errno = 28")."""
    codes = {errno.ENOSPC, errno.EDQUOT}
    if exc.errno in codes or (exc.args and exc.args[0] in tuple(codes)):
        return True
    text = str(exc)
    return "No space left on device" in text or any(
        f"errno = {code}," in text or f"errno = {code} " in text for code in codes)


def write_text(target: str | Path, text: str) -> None:
    """Write text atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def write_json(target: str | Path, data: Any) -> None:
    """Write JSON atomically (sorted keys, indented)."""
    write_text(target, json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n")


def write_yaml(target: str | Path, data: Any) -> None:
    """Write YAML atomically."""
    write_text(target, yaml.safe_dump(data, sort_keys=False))


def write_csv(target: str | Path, frame: pd.DataFrame) -> None:
    """Write a DataFrame as CSV atomically, without the index."""
    with atomic_path(target) as tmp:
        frame.to_csv(tmp, index=False)


def cached_npy(root: Path, key: dict, name: str, write: Callable[[Path], None],
               mmap_mode: str | None = None) -> np.ndarray:
    """The keyed array cache of comp's feature and embedding caches.

    The entry lives in `root/<fingerprint(key)>/<name>.npy` beside `<name>.key.json`, the
    key it was made under. A recorded key equal to `key` (after a JSON round trip) returns
    the stored array; otherwise `write(tmp)` writes a .npy file at the temporary path `tmp`,
    which replaces the entry atomically before the key is recorded (so a kill never leaves
    an entry that matches), and the new array is returned. A damaged entry is rebuilt.
    """
    recorded = json.loads(json.dumps(key, default=_json_default))  # as write_json stores it
    folder = Path(root) / fingerprint(key, 12)
    target, key_file = folder / f"{name}.npy", folder / f"{name}.key.json"
    if target.exists() and key_file.exists():
        try:
            if read_json(key_file) == recorded:
                return np.load(target, mmap_mode=mmap_mode)
        except (OSError, ValueError):
            pass  # damaged: rebuilt below
    key_file.unlink(missing_ok=True)
    with atomic_path(target, suffix=".npy") as tmp:
        write(tmp)
    write_json(key_file, key)
    return np.load(target, mmap_mode=mmap_mode)


def file_sha256(path: str | Path) -> str:
    """The SHA-256 hex digest of a file's bytes, read in blocks."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def read_json(path: str | Path) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text())


def fingerprint(data: Any, length: int = 8) -> str:
    """A short, stable hash of any JSON-able value (used in model ids and cache keys)."""
    text = json.dumps(data, sort_keys=True, default=_json_default)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
