"""Find the ImageNet weight file a backbone needs: never a silent random init.

`weights=imagenet` looks for the exact file Keras would download, in `weights_dir`,
then the Keras cache (`$KERAS_HOME/models`, default `~/.keras/models`), then the weight
files bundled with comp (`comp/demo/weights`: MobileNet 0.25, so `mobilenet_025` works
offline for any competition folder); where it is in none, Keras is asked to download it,
which works only where the network allows.
`weights=<path>` takes that file; `weights=none` is a random init.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from comp.artifacts import file_sha256
from comp.errors import CompError
from comp.models.registry import Backbone


@dataclass(frozen=True)
class ResolvedWeights:
    """Where a backbone's weights come from; `identity` goes into model ids and cache keys."""

    path: Path | None
    identity: str


def keras_cache_dir() -> Path:
    """The folder Keras downloads application weights into."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models"


def bundled_weights_dir() -> Path:
    """The weight files shipped inside the comp package (package data)."""
    from importlib.resources import files

    return Path(str(files("comp") / "demo" / "weights"))


def search_folders(weights_dir: str | None) -> list[Path]:
    """Where weights=imagenet looks, in order: weights_dir, Keras cache, comp's bundled;
    each folder once (the demo's weights_dir is the bundled folder)."""
    folders = (([Path(weights_dir).expanduser()] if weights_dir else [])
               + [keras_cache_dir(), bundled_weights_dir()])
    return [f for i, f in enumerate(folders) if f.resolve() not in
            {earlier.resolve() for earlier in folders[:i]}]


def search_order_text() -> str:
    """The search order, one line each (printed by --help)."""
    bundled = bundled_weights_dir()
    files = ", ".join(sorted(p.name for p in bundled.glob("*.h5"))) or "none"
    return "\n".join([
        "1. weights_dir=<folder>, where set",
        f"2. the Keras cache: {keras_cache_dir()} ($KERAS_HOME/models)",
        f"3. comp's bundled weights: {bundled} ({files})",
        "4. a Keras download, where the network allows",
    ])


def resolve_weights(
    backbone: Backbone, size: int, weights: str, weights_dir: str | None
) -> ResolvedWeights:
    """Resolve the `weights` setting for `backbone` at input `size` (see module docstring)."""
    if backbone.weight_file is None or weights.lower() in ("none", "random", "null"):
        return ResolvedWeights(None, "random-init")
    if weights != "imagenet":
        path = Path(weights).expanduser()
        if not path.is_file():
            raise CompError(f"weights={weights}: file not found; give an existing .h5 file")
        return ResolvedWeights(path, "sha256:" + file_sha256(path)[:16])
    path = find_local_weights(backbone, size, weights_dir)
    if path is not None:
        _check_md5(path, backbone.weight_md5)
        return ResolvedWeights(path, "sha256:" + file_sha256(path)[:16])
    names = _file_names(backbone, size)
    path = _download(backbone, names[0])
    if path is None:
        where = ", then ".join(str(f) for f in search_folders(weights_dir))
        raise CompError(
            f"weights=imagenet: {backbone.name} needs the Keras file {names[0]} and it is not "
            f"in (searched in order) {where} (no network to download it); copy the file "
            "into one of them, set "
            "weights_dir=<folder>, give weights=<path>, or use weights=none for random init"
        )
    return ResolvedWeights(path, "sha256:" + file_sha256(path)[:16])


def _file_names(backbone: Backbone, size: int) -> list[str]:
    return list(dict.fromkeys([backbone.weight_file(size), backbone.weight_file(224)]))


def find_local_weights(backbone: Backbone, size: int, weights_dir: str | None) -> Path | None:
    """The first of the search folders that holds `backbone`'s ImageNet file (for `size`, or
    the 224 px one), without downloading or checking it; None where none has it."""
    if backbone.weight_file is None:
        return None
    for folder in search_folders(weights_dir):
        for name in _file_names(backbone, size):
            if (folder / name).is_file():
                return folder / name
    return None


def network_allows_downloads(timeout: float = 2.0) -> bool:
    """Whether Keras's weight host answers (a TCP connection within `timeout` seconds)."""
    import socket

    try:
        with socket.create_connection(("storage.googleapis.com", 443), timeout=timeout):
            return True
    except OSError:
        return False


def _download(backbone: Backbone, name: str) -> Path | None:
    """Let Keras download the file into its cache where the network allows; None if not."""
    try:
        backbone.constructor(input_shape=(backbone.default_size, backbone.default_size, 3),
                             weights="imagenet")
    except Exception:  # no network, proxy refusal, ...: reported by the caller as one line
        return None
    path = keras_cache_dir() / name
    return path if path.is_file() else None


def _check_md5(path: Path, expected: str | None) -> None:
    """Keras publishes md5 (32 hex digits) or sha256 (64) hashes of its weight files."""
    if expected is None:
        return
    kind = "sha256" if len(expected) == 64 else "md5"
    digest = hashlib.new(kind, path.read_bytes()).hexdigest()
    if digest != expected:
        raise CompError(
            f"{path}: {kind} {digest} differs from Keras's published {expected}; the file is "
            "damaged or another file under the same name: download it again"
        )


