"""Read and validate a competition folder (see README: train.csv + train/, test/, ...).

Validation happens here, once, at the edge: every problem is a CompError naming the
file and what to do. Inner code trusts a `Competition`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from comp.errors import CompError
from comp.log import get_logger

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp"}


@dataclass(frozen=True)
class Competition:
    """A validated competition folder.

    `train` has columns id, label, path; `test` (in sample-submission order) and
    `unlabeled` have id, path. `submission_columns` are the sample submission's columns;
    `submission_kind` is "label" (one label column) or "proba" (one column per class).
    """

    root: Path
    classes: list[str]
    train: pd.DataFrame
    test: pd.DataFrame
    unlabeled: pd.DataFrame
    submission_columns: list[str]
    submission_kind: str


def read_competition(root: str | Path) -> Competition:
    """Read `root` as a competition folder; raise CompError on the first problem."""
    root = Path(root)
    if not root.is_dir():
        raise CompError(f"{root}: competition folder not found; set data.dir=<folder>")
    train = _read_train(root)
    classes = sorted(train["label"].unique())
    if len(classes) < 2:
        raise CompError(
            f"{root}: only one class ({classes[0]!r}) in the training labels; "
            "a classifier needs at least two"
        )
    test, columns, kind = _read_test(root, classes)
    unlabeled = _read_unlabeled(root)
    return Competition(root, classes, train, test, unlabeled, columns, kind)


def check_id(image_id: object, source: str) -> str:
    """Return `image_id` as a plain file name, or raise CompError naming `source`."""
    if not isinstance(image_id, str) or not image_id.strip():
        raise CompError(f"{source}: empty or non-text id {image_id!r}; ids are image file names")
    bad = (
        "/" in image_id
        or "\\" in image_id
        or "\x00" in image_id
        or image_id in {".", ".."}
        or Path(image_id).is_absolute()
    )
    if bad:
        raise CompError(
            f"{source}: id {image_id!r} is not a plain file name (no path separators, "
            "'..', NUL or absolute paths); put the image in the folder and list its name"
        )
    return image_id


def _read_csv(path: Path, required: list[str]) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise CompError(f"{path}: file is empty; it needs a header {','.join(required)}") from None
    except (UnicodeDecodeError, pd.errors.ParserError) as exc:
        reason = str(exc).splitlines()[0]
        raise CompError(f"{path}: not a readable CSV ({reason})") from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise CompError(
            f"{path}: missing column(s) {missing}; found {list(frame.columns)}, "
            f"expected a header {','.join(required)}"
        )
    if frame.empty:
        raise CompError(f"{path}: has a header but no rows")
    return frame


def _check_ids(ids: pd.Series, source: Path) -> None:
    for row, image_id in enumerate(ids, start=2):
        check_id(image_id, f"{source} line {row}")
    duplicated = ids[ids.duplicated()].unique().tolist()
    if duplicated:
        raise CompError(
            f"{source}: {len(duplicated)} duplicate id(s), e.g. {duplicated[:3]}; "
            "each image must be listed once"
        )


def _image_files(folder: Path) -> dict[str, Path]:
    return {
        p.name: p
        for p in sorted(folder.iterdir())
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    }


def _read_train(root: Path) -> pd.DataFrame:
    csv_path, folder = root / "train.csv", root / "train"
    if not folder.is_dir():
        raise CompError(f"{folder}: training image folder not found; see the README's layout")
    if csv_path.exists():
        frame = _read_csv(csv_path, ["id", "label"])
        _check_ids(frame["id"], csv_path)
        files = _image_files(folder)
        missing = [i for i in frame["id"] if i not in files and not (folder / i).is_file()]
        if missing:
            raise CompError(
                f"{csv_path}: {len(missing)} listed image(s) missing from {folder}, "
                f"e.g. {missing[:3]}; add the files or remove their rows"
            )
        unlisted = sorted(set(files) - set(frame["id"]))
        if unlisted:
            get_logger().warning(
                "warning: %d image(s) in %s are not in train.csv and are ignored, e.g. %s",
                len(unlisted), folder, unlisted[:3],
            )
        empty = frame.index[frame["label"].str.strip() == ""].tolist()
        if empty:
            raise CompError(f"{csv_path} line {empty[0] + 2}: empty label; give every id a label")
        frame = frame[["id", "label"]].copy()
        frame["path"] = [str(folder / i) for i in frame["id"]]
        return frame.reset_index(drop=True)
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise CompError(
            f"{csv_path}: not found, and {folder} has no class sub-folders; give a train.csv "
            "(id,label) or put images in train/<class>/"
        )
    rows = [
        {"id": name, "label": d.name, "path": str(path)}
        for d in class_dirs
        for name, path in _image_files(d).items()
    ]
    frame = pd.DataFrame(rows, columns=["id", "label", "path"])
    if frame.empty:
        raise CompError(f"{folder}: the class sub-folders hold no images")
    _check_ids(frame["id"], folder)
    return frame


def _read_test(root: Path, classes: list[str]) -> tuple[pd.DataFrame, list[str], str]:
    sample_path, folder = root / "sample_submission.csv", root / "test"
    if not sample_path.exists():
        raise CompError(
            f"{sample_path}: not found; it lists the test ids and the submission's columns"
        )
    if not folder.is_dir():
        raise CompError(f"{folder}: test image folder not found; see the README's layout")
    sample = _read_csv(sample_path, [])
    columns = list(sample.columns)
    if len(columns) < 2:
        raise CompError(f"{sample_path}: needs an id column and a label or class columns")
    id_column = columns[0]
    _check_ids(sample[id_column], sample_path)
    if sorted(columns[1:]) == classes:
        kind = "proba"
    elif len(columns) == 2:
        kind = "label"
    else:
        raise CompError(
            f"{sample_path}: columns {columns[1:]} are neither one label column nor the "
            f"classes {classes}"
        )
    files = _image_files(folder)
    missing = [i for i in sample[id_column] if i not in files and not (folder / i).is_file()]
    if missing:
        raise CompError(
            f"{sample_path}: {len(missing)} id(s) have no image in {folder}, e.g. "
            f"{missing[:3]}; the sample submission must list the test images"
        )
    extra = sorted(set(files) - set(sample[id_column]))
    if extra:
        get_logger().warning(
            "warning: %d image(s) in %s are not in sample_submission.csv and are not predicted",
            len(extra), folder,
        )
    ids = sample[id_column]
    test = pd.DataFrame({"id": ids, "path": [str(folder / i) for i in ids]})
    return test, columns, kind


def _read_unlabeled(root: Path) -> pd.DataFrame:
    folder = root / "unlabeled"
    files = _image_files(folder) if folder.is_dir() else {}
    return pd.DataFrame(
        {"id": list(files), "path": [str(p) for p in files.values()]}, columns=["id", "path"]
    )
