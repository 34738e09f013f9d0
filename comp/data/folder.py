"""Read and validate a competition folder (see README: train.csv + train/, test/, ...).

Validation happens here, once, at the edge: every problem is a CompError naming the
file and what to do. Inner code trusts a `CompetitionFolder`.

Kaggle CSVs are read as they come: the id and label columns are found by name (or set
with data.id_column / data.label_column), ids may omit the file extension, labels may
be numbers, and one-hot label columns (one 0/1 column per class) are read as labels.
Every value is read as text, as written (`0000` stays `0000`, `NA` is a class name), and
labels are stripped of surrounding spaces. The sample submission's ids and column names
are kept verbatim for the submissions.
"""

from __future__ import annotations

import difflib
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from comp.artifacts import fingerprint
from comp.data.images import content_hashes
from comp.data.pixels import (
    PixelLayout,
    choose_pixel_order,
    image_shape,
    is_pixel_csv,
    pixel_columns,
    pixel_hashes,
    read_pixel_rows,
    record_order,
    write_pixel_images,
)
from comp.errors import CompError
from comp.log import get_logger

# always taken as images; any other file is taken when Pillow can open it, else skipped
# with one warning line
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".tif", ".tiff", ".gif",
                  ".webp", ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".dib", ".ico"}
ID_COLUMNS = ("id", "image_id", "image", "id_code", "file", "filename", "file_name",
              "image_name", "img", "img_id", "image_path", "name", "path")
LABEL_COLUMNS = ("label", "target", "class", "category", "diagnosis", "labels", "class_name",
                 "species", "breed", "y")
SPLITS = ("train", "test", "unlabeled")
# the train labels' CSV, under the names Kaggle downloads give it (Histopathologic
# Cancer's train_labels.csv, Diabetic Retinopathy's trainLabels.csv, Dog Breed's
# labels.csv): the first of these that exists
TRAIN_CSVS = ("train.csv", "train_labels.csv", "trainLabels.csv", "labels.csv")
# the sample submission, likewise (older Kaggle competitions: sampleSubmission.csv;
# DrivenData: submission_format.csv)
SAMPLE_CSVS = ("sample_submission.csv", "sampleSubmission.csv", "submission_format.csv")
# one folder of the train and test images, which train.csv and the sample submission
# tell apart (Kaggle's Plant Pathology); read where a split has no folder of its own
SHARED_IMAGES = "images"
SHARED_SPLITS = ("train", "test")  # the splits that may read SHARED_IMAGES
# data.submission_values: what a sample submission's one value column holds
SUBMISSION_VALUES = ("auto", "labels", "probability")
# a class named so is the positive one of two, whose probability a one-column submission
# holds (beside numbers: the larger of two numeric classes)
POSITIVE_NAMES = ("true", "yes", "positive", "pos", "y")
# train images labelled by their file names (no train.csv, no class folders): at most
# this many classes, so that a folder of ids such as patient1_3.png is not read as labels
MAX_NAMED_CLASSES = 20
# what operating systems and archivers leave in a folder (beside hidden files): Windows's
# thumbnail caches and folder settings, macOS's zip resource forks; never data, so never
# read nor warned about
SYSTEM_FILES = frozenset({"Thumbs.db", "ehthumbs.db", "desktop.ini", "__MACOSX"})


@dataclass(frozen=True)
class CompetitionFolder:
    """A validated competition folder.

    `train` has columns id, label, path, hash; `test` (in sample-submission order) has
    id, submission_id, path, hash; `unlabeled` has id, path, hash. `id` is the image's
    file name, `submission_id` the sample submission's id as written (maybe without
    extension), `hash` the file's content hash. `submission_columns` are the sample
    submission's columns; `probability_columns` maps each value column that holds a
    probability to its class: every class's column, or a two-class competition's one
    column (the positive class's probability, as AUC-scored competitions take it); empty
    where the one value column takes labels.
    """

    root: Path
    classes: list[str]
    train: pd.DataFrame
    test: pd.DataFrame
    unlabeled: pd.DataFrame
    submission_columns: list[str]
    probability_columns: dict[str, str]
    # how the folder was read where it is not plain to see (labels taken from file
    # names): said once, by the run that prepares its folds (comp.data.prepared)
    notes: tuple[str, ...] = ()
    # the test images' labels, in test order, where the folder gives them (test/<class>/
    # folders, no sample submission): a holdout stage=submit scores rank 1 on; nothing
    # trains, tunes or chooses with them. Empty: the test labels are not known here.
    test_labels: tuple[str, ...] = ()

    @property
    def submits_labels(self) -> bool:
        """Whether the submission's one value column takes labels (else probabilities)."""
        return not self.probability_columns

    def frame(self, split: str) -> pd.DataFrame:
        """The frame of `split` (train, test or unlabeled)."""
        return {"train": self.train, "test": self.test, "unlabeled": self.unlabeled}[split]

    def split_key(self, split: str) -> str:
        """A fingerprint of `split`'s ids and content hashes, in order: equal keys mean
        the same images in the same order, so anything computed from them still holds."""
        frame = self.frame(split)
        return fingerprint({"ids": frame["id"].tolist(), "hashes": frame["hash"].tolist()}, 16)


def read_competition(root: str | Path, id_column: str | None = None,
                     label_column: str | None = None,
                     pixel_dir: Path | None = None, submission_values: str = "auto",
                     positive_class: str | None = None,
                     group_column: str | None = None,
                     pixel_order: str = "auto") -> CompetitionFolder:
    """Read `root` as a competition folder; raise CompError on the first problem.

    `id_column` / `label_column` name train.csv's columns (None: found by name).
    `submission_values` says what a sample submission's one value column takes (auto:
    the probability of the positive class where there are two classes and the sample's
    values are fractions such as 0.5, else labels), `positive_class` which class that is
    (None: the class the column is named after, the larger of two numbers, or true/yes).
    `group_column` names a train.csv column of groups (patient, slide) whose images share
    a fold: the train frame's `group_key`.
    A folder in the pixel-CSV layout (no train/ folder, pixel columns in train.csv; see
    comp.data.pixels) has its rows written as PNG images under `pixel_dir` once, a colour
    row's values in `pixel_order` order (auto: told from the images)."""
    root = checked_root(root)
    pixels = is_pixel_layout(root)
    if pixels and pixel_dir is None:
        raise ValueError(f"{root} holds pixel CSVs: give pixel_dir, where their images go")
    if pixels and group_column is not None:
        raise CompError(f"config: data.group_column={group_column!r} needs a train.csv of "
                        f"image files; {root} holds pixel rows")
    if pixels:
        train, layout, notes = _read_pixel_train(root, id_column, label_column, pixel_dir,
                                                 pixel_order)
    else:
        train, notes = _read_train(root, id_column, label_column, group_column)
    classes = sorted(train["label"].unique())
    lowered = pd.Series(classes).str.lower()
    if lowered.duplicated().any():
        twins = [c for c in classes if lowered.tolist().count(c.lower()) > 1]
        get_logger().warning("warning: labels %s differ only in upper/lower case and are "
                             "different classes; fix the labels if they are one", twins[:4])
    if len(classes) < 2:
        raise CompError(
            f"{root}: only one class ({classes[0]!r}) in the training labels; "
            "a classifier needs at least two"
        )
    if positive_class is not None and positive_class not in classes:
        raise CompError(f"config: data.positive_class={positive_class!r} is not a class of "
                        f"{root}; the classes are {classes}")
    wanted = (classes, submission_values, positive_class)  # _read_sample's
    if pixels:
        test, columns, probability_columns = _read_pixel_test(root, wanted, layout, pixel_dir)
        test_labels = ()
        unlabeled = pd.DataFrame(columns=["id", "path", "hash"])
    else:
        test, columns, probability_columns, test_notes = _read_test(root, wanted)
        notes += test_notes
        test_labels = tuple(test.pop("label")) if "label" in test else ()
        unlabeled = _read_unlabeled(root)
    for frame in (train, test, unlabeled):
        if "hash" not in frame:
            frame["hash"] = content_hashes(frame["path"].tolist()) if len(frame) else []
    return CompetitionFolder(root, classes, train, test, unlabeled, columns,
                             probability_columns, notes, test_labels)


def checked_root(root: str | Path) -> Path:
    """`root` as a Path where it is a folder; else a CompError saying what it is and what
    to do (a Kaggle download's zip archive: the unzip command)."""
    root = Path(root)
    if root.is_dir():
        return root
    if root.is_file() and zipfile.is_zipfile(root):
        folder = root.with_suffix("")
        raise CompError(f"{root}: a zip archive, not a folder; unzip it (unzip {root} -d "
                        f"{folder}) and set data.dir to the folder that holds train.csv or "
                        "train/")
    if root.exists():
        raise CompError(f"{root}: not a folder; set data.dir to the folder that holds "
                        "train.csv or train/")
    raise CompError(f"{root}: competition folder not found; set data.dir=<folder>")


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
        header = frame.columns[0] if len(frame.columns) == 1 else ""
        separator = next((sep for sep in (";", "\t", "|") if sep in header), None)
        if separator:  # a CSV written with another separator (European Excel: ';')
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, sep=separator)
    except pd.errors.EmptyDataError:
        raise CompError(f"{path}: file is empty; it needs a header {','.join(required)}") from None
    except (UnicodeDecodeError, pd.errors.ParserError) as exc:
        reason = str(exc).splitlines()[0]
        raise CompError(f"{path}: not a readable CSV ({reason}); save it as UTF-8 CSV") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    index_like = [c for c in frame.columns[:1] if c == "" or c.startswith("Unnamed: ")]
    if index_like and len(frame.columns) > 2:  # a pandas index written with the data
        get_logger().warning("warning: %s: its first column has no name and is ignored "
                             "(an index written by pandas?)", path)
        frame = frame.drop(columns=index_like)
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


def train_csv(root: Path) -> Path:
    """The train labels' CSV of `root`: the first of TRAIN_CSVS there; train.csv where
    none is (for the error)."""
    return _first_file(root, TRAIN_CSVS)


def sample_csv(root: Path) -> Path:
    """The sample submission of `root`: the first of SAMPLE_CSVS there;
    sample_submission.csv where none is (for the error)."""
    return _first_file(root, SAMPLE_CSVS)


def _first_file(root: Path, names: tuple[str, ...]) -> Path:
    return next((root / name for name in names if (root / name).is_file()), root / names[0])


def image_folder(root: Path, split: str) -> Path:
    """The folder of `split`'s images: `<split>/`, or Kaggle's `<split>_images/` (APTOS,
    Cassava) where only that exists, or for train and test one `images/` folder of both
    (Plant Pathology) where neither does; read through a folder of its own name that it
    alone holds (unwrapped); `<split>/` where none exists (for the error)."""
    shared = (root / SHARED_IMAGES,) if split in SHARED_SPLITS else ()
    for folder in (root / split, root / f"{split}_images", *shared):
        if folder.is_dir():
            return unwrapped(folder)
    return root / split


def unwrapped(folder: Path) -> Path:
    """`folder/<its own name>/` where that folder is all `folder` holds (hidden files and
    macOS's `__MACOSX/` aside), as Kaggle's train.zip unpacks into train/train/; else
    `folder`."""
    inner = folder / folder.name
    if not inner.is_dir():
        return folder
    others = [p for p in folder.iterdir() if p != inner and not is_system_file(p)]
    return folder if others else unwrapped(inner)


def is_system_file(path: Path) -> bool:
    """Whether `path` is a hidden file or folder or one that an operating system or
    archiver leaves beside data (SYSTEM_FILES): skipped without a word."""
    return path.name.startswith(".") or path.name in SYSTEM_FILES


def _not_found(folder: Path, what: str) -> CompError:
    shared = f" or {SHARED_IMAGES}/" if folder.name in SHARED_SPLITS else ""
    return CompError(f"{folder}: {what} image folder not found (nor {folder.name}_images/"
                     f"{shared}); see the README's layout")


def _group_keys(frame: pd.DataFrame, column: str, csv_path: Path) -> np.ndarray:
    """train.csv's data.group_column values, stripped; a missing column or an empty value
    is a CompError naming it."""
    if column not in frame.columns:
        raise CompError(f"{csv_path}: no column {column!r} (data.group_column); its columns "
                        f"are {list(frame.columns)}")
    keys = frame[column].fillna("").astype(str).str.strip()
    empty = np.flatnonzero(keys.to_numpy() == "")
    if len(empty):
        raise CompError(f"{csv_path} line {empty[0] + 2}: empty {column!r} (data.group_column); "
                        "give every image its group")
    return keys.to_numpy()


def _without_folder(ids: pd.Series, folder: Path) -> pd.Series:
    """Ids written as `<folder>/<name>` (e.g. train/abc.jpg) as the plain name."""
    prefix = f"{folder.name}/"
    return ids.map(lambda i: i[len(prefix):] if i.startswith(prefix) else i)


def _is_image(path: Path) -> bool:
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    try:
        with Image.open(path):
            return True
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return False


def image_files(folder: Path) -> dict[str, Path]:
    """The images of `folder` (unwrapped) by file name: every file with an image suffix
    or that Pillow can open; other files and sub-folders are named in one warning line
    each."""
    folder = unwrapped(folder)
    files, skipped, nested = _scan(folder)
    _warn_skipped(folder, skipped, nested)
    return files


def _scan(folder: Path, prefix: str = "") -> tuple[dict[str, Path], list[str], list[str]]:
    files, skipped, nested = {}, [], []
    for p in sorted(folder.iterdir()):
        if is_system_file(p):
            continue
        if p.is_dir():
            nested.append(prefix + p.name)
        elif p.is_file() and _is_image(p):
            files[p.name] = p
        elif p.is_file():
            skipped.append(prefix + p.name)
    return files, skipped, nested


def _warn_skipped(folder: Path, skipped: list[str], nested: list[str]) -> None:
    log = get_logger()
    if skipped:
        log.warning("warning: %d file(s) in %s are not images Pillow can open and are "
                    "skipped, e.g. %s", len(skipped), folder, skipped[:3])
    if nested:
        log.warning("warning: %d sub-folder(s) in %s are not read (images must sit directly "
                    "in %s), e.g. %s", len(nested), folder,
                    "the class folders" if "/" in nested[0] else "it", nested[:3])


def _match_ids(ids: pd.Series, folder: Path, files: dict[str, Path], source: Path,
               what: str) -> list[str]:
    """The file name of each id: the id itself, or the one file whose name without its
    extension is the id. Missing ids (with a close name suggested) and ids matching
    several files are a CompError naming `source`."""
    by_stem: dict[str, list[str]] = {}
    by_lower: dict[str, list[str]] = {}
    for name in files:
        by_stem.setdefault(Path(name).stem, []).append(name)
        by_lower.setdefault(name.lower(), []).append(name)
    found, missing = [], []
    for image_id in ids:
        if image_id in files or (folder / image_id).is_file():
            found.append(image_id)
            continue
        image_id = image_id.strip()
        candidates = ([image_id] if image_id in files else by_stem.get(image_id)
                      or by_lower.get(image_id.lower()) or [])
        if len(candidates) > 1:
            raise CompError(
                f"{source}: id {image_id!r} matches several files in {folder} "
                f"({', '.join(sorted(candidates))}); list the id with its extension"
            )
        if candidates:
            found.append(candidates[0])
        else:
            missing.append(image_id)
    if missing:
        close = difflib.get_close_matches(missing[0], list(files), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise CompError(
            f"{source}: {len(missing)} {what} {folder}, e.g. {missing[:3]}{hint}; "
            "add the files or fix the ids"
        )
    return found


def _find_column(columns: list[str], given: str | None, candidates: tuple[str, ...],
                 key: str, source: Path) -> str | None:
    if given is not None:
        if given not in columns:
            raise CompError(f"{source}: no column {key}={given!r}; found {columns}")
        return given
    lowered = {c.strip().lower(): c for c in columns}
    return next((lowered[c] for c in candidates if c in lowered), None)


def _labels(frame: pd.DataFrame, id_column: str, label_column: str | None,
            source: Path) -> pd.Series:
    """The label of each row: one label column, or one-hot columns read as labels."""
    others = [c for c in frame.columns if c != id_column]
    if label_column is None and len(others) == 1:
        label_column = others[0]
    if label_column is not None:
        labels = frame[label_column].str.strip()
        empty = frame.index[labels == ""].tolist()
        if empty:
            raise CompError(f"{source} line {empty[0] + 2}: empty label; give every id a label")
        return labels
    onehot = frame[others].apply(lambda col: col.str.strip())
    binary = onehot.isin(["0", "1", "0.0", "1.0"]).all().all() and len(others) >= 2
    if not binary:
        # columns of a few repeated values read like labels (HAM10000's dx beside sex and
        # localization): named with their counts, for the user to choose
        counts = {c: onehot[c].nunique() for c in others}
        likely = [f"{c} ({n} values)" for c, n in counts.items()
                  if 2 <= n <= min(50, len(frame) // 2)]
        raise CompError(
            f"{source}: cannot tell which column holds the labels in {list(frame.columns)}; "
            "set data.label_column=<column> (or give one 0/1 column per class)"
            + (f"; columns of few values: {', '.join(likely[:4])}" if likely else "")
        )
    hot = onehot.astype(float).astype(int)
    empty = [c for c in others if hot[c].sum() == 0]
    if empty:
        get_logger().warning("warning: %s: one-hot column(s) %s are 0 on every row: no "
                             "training image of that class, so it is not a class", source,
                             empty)
    sums = hot.sum(axis=1)
    bad = frame.index[sums != 1].tolist()
    if bad:
        raise CompError(
            f"{source} line {bad[0] + 2}: {int(sums[bad[0]])} of the one-hot label columns "
            "are 1; each image needs exactly one class (multi-label is not supported)"
        )
    return hot.idxmax(axis=1).str.strip()


def _read_train(root: Path, id_column: str | None, label_column: str | None,
                group_column: str | None = None) -> tuple[pd.DataFrame, tuple[str, ...]]:
    """The train frame, and how it was read where that is not plain to see (notes)."""
    csv_path, folder = train_csv(root), image_folder(root, "train")
    if not folder.is_dir():
        if csv_path.is_file() and is_headerless_numbers(csv_path):
            width = len(_csv_header(csv_path))
            raise CompError(f"{csv_path}: its first line is {width} numbers, not column "
                            "names: a pixel CSV without a header (EMNIST's layout); add "
                            f"the header line label,pixel0,...,pixel{width - 2} (label "
                            "first) to train.csv, and pixel0,... to test.csv")
        raise _not_found(folder, "training")
    if csv_path.exists():
        frame = _read_csv(csv_path, [])
        groups = None
        if group_column is not None:  # read apart: never an id, label or one-hot column
            groups = _group_keys(frame, group_column, csv_path)
            frame = frame.drop(columns=[group_column])
        columns = list(frame.columns)
        id_col = _find_column(columns, id_column, ID_COLUMNS, "data.id_column", csv_path)
        if id_col is None:
            raise CompError(
                f"{csv_path}: no id column among {columns}; name it id (or image_id, ...) "
                "or set data.id_column=<column>"
            )
        label_col = _find_column(columns, label_column, LABEL_COLUMNS, "data.label_column",
                                 csv_path)
        if len(columns) < 2:
            raise CompError(f"{csv_path}: missing column(s) for the labels; found {columns}, "
                            "expected a header id,label")
        ids = _listed_images(frame[id_col], folder, csv_path, "listed image(s) missing from",
                             "are not in train.csv and are ignored")
        labels = _labels(frame, id_col, label_col, csv_path)
        train = pd.DataFrame({"id": ids, "label": labels.to_numpy(),
                              "path": [str(folder / i) for i in ids]})
        if groups is not None:
            train["group_key"] = groups
        return train, ()
    if group_column is not None:
        raise CompError(f"config: data.group_column={group_column!r} needs a train.csv with "
                        f"that column; {folder} is read by its class folders")
    class_dirs = _class_folders(folder)
    if not class_dirs:
        named = _labelled_by_name(folder)
        if named is None:
            raise CompError(
                f"{csv_path}: not found, and {folder} has no class sub-folders nor files named "
                "<class>.<n>.jpg; give a train.csv (id,label) or put images in train/<class>/"
            )
        return named
    loose = [p.name for p in folder.iterdir() if p.is_file() and not is_system_file(p)]
    if loose:
        get_logger().warning("warning: %d file(s) directly in %s are not in a class folder "
                             "and are ignored, e.g. %s", len(loose), folder, sorted(loose)[:3])
    rows, skipped, nested = [], [], []
    for d in class_dirs:
        files, d_skipped, d_nested = _scan(d, prefix=f"{d.name}/")
        if not files:
            raise CompError(f"{d}: class folder holds no image (hidden or other files only); "
                            "add its images or remove the folder")
        rows += [{"id": name, "label": d.name.strip(), "path": str(path)}
                 for name, path in files.items()]
        skipped += d_skipped
        nested += d_nested
    _warn_skipped(folder, skipped, nested)  # one line for all class folders
    frame = pd.DataFrame(rows, columns=["id", "label", "path"])
    if frame.empty:
        raise CompError(f"{folder}: the class sub-folders hold no images")
    repeated = frame["id"][frame["id"].duplicated()].unique().tolist()
    if repeated:  # 0001.jpg in every class folder: a common export, each file an image
        frame["id"] = [Path(path).relative_to(folder).as_posix() for path in frame["path"]]
        return frame, (f"{len(repeated)} file name(s) occur in several class folders of "
                       f"{folder} (e.g. {repeated[0]}): every train id is "
                       "<class folder>/<file name>",)
    _check_ids(frame["id"], folder)
    return frame, ()


def _labelled_by_name(folder: Path) -> tuple[pd.DataFrame, tuple[str, ...]] | None:
    """The train frame of a folder of images named `<class>.<n>.jpg` (or `<class>_<n>`,
    `<class>-<n>`: Kaggle's Dogs vs Cats), the label being the name's part before its
    first `.`, `_` or `-`, and a note saying so; None where the names do not read so:
    fewer than two such classes, more than MAX_NAMED_CLASSES, or a class of one image
    (ids, not classes)."""
    files = image_files(folder)
    labels = pd.Series({name: re.split(r"[._-]", name, maxsplit=1)[0].strip()
                        for name in files}, dtype=object)
    counts = labels.value_counts()
    if (len(files) == 0 or (labels == "").any() or not 2 <= len(counts) <= MAX_NAMED_CLASSES
            or counts.min() < 2):
        return None
    note = (f"train labels read from the file names of {folder} (the part before the first "
            f"'.', '_' or '-'): {', '.join(f'{c} {n}' for c, n in sorted(counts.items()))}; "
            "give a train.csv to label them otherwise")
    return pd.DataFrame({"id": list(files), "label": labels.loc[list(files)].to_numpy(),
                         "path": [str(path) for path in files.values()]}), (note,)


def _read_sample(root: Path, classes: list[str], values: str,
                 positive: str | None) -> tuple[pd.DataFrame, dict[str, str]]:
    """sample_submission.csv, and each of its value columns that takes a probability,
    with its class (empty: one label column)."""
    sample_path = sample_csv(root)
    if not sample_path.exists():
        raise CompError(
            f"{sample_path}: not found; it lists the test ids and the submission's columns"
        )
    sample = _read_csv(sample_path, [])
    columns = list(sample.columns)
    if len(columns) < 2:
        raise CompError(f"{sample_path}: needs an id column and a label or class columns")
    id_column = columns[0]
    named_id = _find_column(columns, None, ID_COLUMNS, "", sample_path)
    if id_column.strip().lower() not in ID_COLUMNS and named_id not in (None, id_column):
        raise CompError(
            f"{sample_path}: columns are {columns}: the ids must come first (a submission is "
            f"written in the sample's column order); put {named_id!r} first"
        )
    if sorted(c.strip() for c in columns[1:]) == classes:
        if values == "labels":
            raise CompError(f"{sample_path}: columns {columns[1:]} are the classes, one "
                            "probability each; data.submission_values=labels needs one "
                            "label column")
        probability_columns = {c: c.strip() for c in columns[1:]}
    elif len(columns) == 2:
        probability_columns = _one_column(sample[columns[1]], classes, values, positive,
                                          sample_path)
    else:
        raise CompError(
            f"{sample_path}: columns {columns[1:]} are neither one label column nor the "
            f"classes {classes}"
        )
    return sample, probability_columns


def _one_column(values: pd.Series, classes: list[str], wanted: str, positive: str | None,
                sample_path: Path) -> dict[str, str]:
    """What a sample's one value column takes: {} for labels, {column: class} for the
    probability of that class (data.submission_values, data.positive_class)."""
    column = str(values.name)
    numbers = pd.to_numeric(values.str.strip(), errors="coerce")
    fractions = bool(numbers.notna().all() and numbers.between(0, 1).all()
                     and (numbers % 1 != 0).any())
    if wanted == "labels" or (wanted == "auto" and not (fractions and len(classes) == 2)):
        return {}
    if len(classes) != 2:
        raise CompError(f"{sample_path}: its one column {column!r} holds one probability, but "
                        f"there are {len(classes)} classes; data.submission_values=probability "
                        "needs two (or a sample with one column per class)")
    if positive is None:
        positive = _positive_class(classes, column)
    if positive is None:
        raise CompError(f"{sample_path}: its one column {column!r} takes a probability, and "
                        f"the classes {classes} name no positive one; set "
                        "data.positive_class=<class> (or data.submission_values=labels)")
    return {column: positive}


def _positive_class(classes: list[str], column: str) -> str | None:
    """The positive one of two classes: the one the column is named after, the larger of
    two numbers, or the one named true/yes/positive; None where none says so."""
    if column.strip() in classes:
        return column.strip()
    numbers = pd.to_numeric(pd.Series(classes), errors="coerce")
    if numbers.notna().all():
        return classes[int(numbers.idxmax())]
    named = [c for c in classes if c.lower() in POSITIVE_NAMES]
    return named[0] if len(named) == 1 else None


def _listed_images(listed: pd.Series, folder: Path, csv_path: Path, missing: str,
                   unlisted: str) -> list[str]:
    """The file names of `folder` that `csv_path` lists (its `listed` id column, with or
    without the folder prefix or extension), in its order; a CompError with the `missing`
    phrase where some have no file, one warning (`unlisted`) for files it does not list
    (none in a SHARED_IMAGES folder, where the other split's images are the rest)."""
    raw = _without_folder(listed, folder)
    _check_ids(raw, csv_path)
    files = image_files(folder)
    ids = _match_ids(raw, folder, files, csv_path, missing)
    _check_ids(pd.Series(ids), csv_path)
    extra = sorted(set(files) - set(ids))
    if extra and folder.name != SHARED_IMAGES:
        get_logger().warning("warning: %d image(s) in %s %s, e.g. %s", len(extra), folder,
                             unlisted, extra[:3])
    return ids


def _read_test(root: Path, wanted: tuple
               ) -> tuple[pd.DataFrame, list[str], dict[str, str], tuple[str, ...]]:
    """The test frame in sample-submission order, the sample's columns, its probability
    columns (`wanted`: the classes, data.submission_values and data.positive_class, for
    _read_sample) and how it was read where that is not plain to see (notes)."""
    sample_path, folder = sample_csv(root), image_folder(root, "test")
    if not sample_path.exists() and folder.is_dir() and folder.name != SHARED_IMAGES:
        return _unlisted_test(folder, sample_path, *wanted)
    if sample_path.exists() and not folder.is_dir():
        raise _not_found(folder, "test")
    sample, probability_columns = _read_sample(root, *wanted)
    id_column = sample.columns[0]
    # class folders and no image beside them: a labelled holdout the sample lists (a
    # folder that is no class, e.g. an unpacked zip's, is left to the sample's error)
    class_dirs = _class_folders(folder) if folder.is_dir() else []
    holdout = (_labelled_test(folder, wanted[0])
               if class_dirs and all(d.name.strip() in wanted[0] for d in class_dirs)
               and not _scan(folder)[0] else None)  # the costly scan last: rarely reached
    if holdout is not None:
        test = _listed_holdout(sample[id_column], holdout, folder, sample_path)
        note = (f"{sample_path.name} lists the {len(test)} images of {folder}'s class "
                "folders: a labelled holdout; stage=submit scores rank 1 on their labels "
                "(nothing trains, tunes or chooses with them; never pseudo-labelled)")
        return test, list(sample.columns), probability_columns, (note,)
    ids = _listed_images(sample[id_column], folder, sample_path, "id(s) have no image in",
                         "are not in sample_submission.csv and are not predicted")
    test = pd.DataFrame({"id": ids, "submission_id": sample[id_column].to_numpy(),
                         "path": [str(folder / i) for i in ids]})
    return test, list(sample.columns), probability_columns, ()


def _unlisted_test(folder: Path, sample_path: Path, classes: list[str], values: str,
                   positive: str | None
                   ) -> tuple[pd.DataFrame, list[str], dict[str, str], tuple[str, ...]]:
    """The test frame of a folder with no sample submission (an in-house competition):
    every image of `folder` by file name, the submission `id,label`, or `id,<class>...`
    with data.submission_values=probability, and the note that says so. Where the images
    sit in class folders instead (test/<class>/<image>, a labelled holdout), the ids are
    `<class>/<file name>` and the frame's `label` column holds the class; a folder with
    neither is the missing sample's error."""
    files, skipped, nested = _scan(folder)
    labelled = None if files else _labelled_test(folder, classes)
    if labelled is None:
        _warn_skipped(folder, skipped, nested)
    if not files and labelled is None:
        raise CompError(f"{sample_path}: not found, and {folder} holds no image to predict; "
                        "add the sample submission (the test ids and the submission's "
                        "columns) or the test images")
    test = labelled if labelled is not None else pd.DataFrame(
        {"id": sorted(files), "path": [str(files[i]) for i in sorted(files)]})
    test.insert(1, "submission_id", test["id"])
    columns, probability_columns = ((["id", *classes], {c: c for c in classes})
                                    if values == "probability" else (["id", "label"], {}))
    note = (f"no {sample_path.name}: each submission is {','.join(columns)} for the "
            f"{len(test)} images of {folder}, ids their file names")
    if labelled is not None:
        note = (f"no {sample_path.name}: the {len(test)} images of {folder}'s class folders "
                f"are a labelled holdout; each submission is {','.join(columns)} over them, "
                "ids <class>/<file name>, and stage=submit scores rank 1 on their labels "
                "(nothing trains, tunes or chooses with them; never pseudo-labelled)")
    return test, columns, probability_columns, (note,)


def _listed_holdout(listed: pd.Series, holdout: pd.DataFrame, folder: Path,
                    sample_path: Path) -> pd.DataFrame:
    """The labelled holdout `holdout` (_labelled_test) in the order of the sample's ids
    `listed`: plain file names (or their stems) of the images in `folder`'s class
    folders; `submission_id` is each id as the sample writes it. A file name in two class
    folders and an id with no image are CompErrors; images it leaves out, one warning."""
    names = holdout["id"].str.partition("/")[2]
    repeated = sorted(names[names.duplicated()].unique())
    if repeated:
        raise CompError(f"{folder}: {len(repeated)} file name(s) in two class folders, e.g. "
                        f"{repeated[:3]}, which {sample_path.name}'s ids cannot tell apart; "
                        f"rename them, or remove {sample_path.name} (ids are then "
                        "<class>/<file name>)")
    raw = _without_folder(listed, folder)
    _check_ids(raw, sample_path)
    files = dict(zip(names, holdout["path"].map(Path), strict=True))
    found = _match_ids(raw, folder, files, sample_path, "id(s) have no image in the class "
                       "folders of")
    unlisted = sorted(set(files) - set(found))
    if unlisted:
        get_logger().warning("warning: %d image(s) in %s's class folders are not in %s and "
                             "are neither predicted nor scored, e.g. %s", len(unlisted),
                             folder, sample_path.name, unlisted[:3])
    rows = holdout.set_index(names).loc[found]
    return pd.DataFrame({"id": rows["id"].to_numpy(), "submission_id": listed.to_numpy(),
                         "path": rows["path"].to_numpy(), "label": rows["label"].to_numpy()})


def _class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not is_system_file(p))


def _labelled_test(folder: Path, classes: list[str]) -> pd.DataFrame | None:
    """id (`<class>/<file name>`), path and label of the images in `folder`'s class
    folders (test/<class>/<image>); None where it has no class folder. A folder not named
    after a training class is a CompError: its images could not be scored."""
    class_dirs = _class_folders(folder)
    if not class_dirs:
        return None
    unknown = [d.name for d in class_dirs if d.name.strip() not in classes]
    if unknown:
        raise CompError(f"{folder}: sub-folder(s) {unknown[:3]} are not classes of the "
                        f"training images ({classes[:8]}); rename or remove them (a test "
                        "folder of class folders is a labelled holdout)")
    files = subfolder_images(folder)
    if not files:
        return None
    return pd.DataFrame({"id": list(files), "path": [str(p) for p in files.values()],
                         "label": [i.partition("/")[0].strip() for i in files]})


def images_in(folder: Path) -> dict[str, Path]:
    """The images directly in `folder` by file name (image_files) where it holds any,
    else those of its sub-folders by `<sub-folder>/<file name>` (subfolder_images)."""
    folder = unwrapped(folder)
    files, skipped, nested = _scan(folder)
    if not files:
        return subfolder_images(folder)
    _warn_skipped(folder, skipped, nested)
    return files


def subfolder_images(folder: Path) -> dict[str, Path]:
    """The images of `folder`'s sub-folders (test/<class>/<image>) by `<sub-folder>/<file
    name>`; other files and deeper folders are named in one warning line each."""
    files, skipped, nested = {}, [], []
    for d in _class_folders(folder):
        found, d_skipped, d_nested = _scan(d, prefix=f"{d.name}/")
        files.update({f"{d.name}/{name}": path for name, path in found.items()})
        skipped += d_skipped
        nested += d_nested
    _warn_skipped(folder, skipped, nested)
    return files


def _read_unlabeled(root: Path) -> pd.DataFrame:
    folder = image_folder(root, "unlabeled")
    files = image_files(folder) if folder.is_dir() else {}
    return pd.DataFrame(
        {"id": list(files), "path": [str(p) for p in files.values()]}, columns=["id", "path"]
    )


def is_pixel_layout(root: Path) -> bool:
    """Whether `root` is a pixel-CSV competition: no train/ folder, and a train.csv with
    pixel columns (comp.data.pixels)."""
    csv_path = train_csv(root)
    return (not image_folder(root, "train").is_dir() and csv_path.is_file()
            and is_pixel_csv(csv_path))


def is_headerless_numbers(path: Path) -> bool:
    """Whether the CSV at `path` starts with a line of 16 or more numbers instead of
    column names (a pixel CSV without its header)."""
    try:
        header = _csv_header(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError):
        return False
    # pandas renames a repeated name: 0, 0.1, 0.2 for three zeros
    return len(header) >= 16 and all(re.fullmatch(r"-?\d+(\.\d+)?", c) for c in header)


def _csv_header(path: Path) -> list[str]:
    return [str(c).strip() for c in pd.read_csv(path, nrows=0).columns]


def _read_pixel_train(root: Path, id_column: str | None, label_column: str | None,
                      pixel_dir: Path, order_setting: str
                      ) -> tuple[pd.DataFrame, PixelLayout, tuple[str, ...]]:
    """train.csv of pixel rows as the train frame (id, label, path, hash; ids are the
    id column's, else the row numbers 1..N), its PixelLayout and how a colour row's value
    order was told (notes)."""
    csv_path = train_csv(root)
    columns = _csv_header(csv_path)
    pixels = pixel_columns(columns)
    side, channels = image_shape(pixels, csv_path)
    others = [c for c in columns if c not in pixels]
    label_col = _find_column(others, label_column, LABEL_COLUMNS, "data.label_column", csv_path)
    if label_col is None and len(others) == 1:
        label_col = others[0]
    if label_col is None:
        raise CompError(f"{csv_path}: no label column among {others} beside the pixel "
                        "columns; name it label or set data.label_column=<column>")
    id_col = _find_column([c for c in others if c != label_col], id_column, ID_COLUMNS,
                          "data.id_column", csv_path)
    text, array = read_pixel_rows(csv_path, pixels, [label_col] + ([id_col] if id_col else []))
    labels = text[label_col].str.strip()
    empty = np.flatnonzero((labels == "").to_numpy())
    if len(empty):
        raise CompError(f"{csv_path} line {empty[0] + 2}: empty label; give every row a label")
    ids = _row_ids(text, id_col, csv_path)
    order, note = choose_pixel_order(array, side, channels, order_setting, csv_path)
    if channels > 1:
        record_order(pixel_dir, order)
    layout = PixelLayout(pixels, side, channels, order)
    images = layout.images(array)
    hashes = pixel_hashes(images)
    paths = write_pixel_images(pixel_dir, "train", [f"{i}.png" for i in ids], images, hashes)
    frame = pd.DataFrame({"id": ids.to_numpy(), "label": labels.to_numpy(), "path": paths,
                          "hash": hashes})
    return frame, layout, (note,) if note else ()


def _pixel_id_column(header: list[str], pixels: list[str], source: Path,
                     preferred: str | None = None) -> str | None:
    """The id column of a pixel CSV of rows to predict (test.csv, or stage=predict's
    input), among those that are neither pixels nor a label: `preferred` (the sample
    submission's id column) where it is one, else a known id name, else the only one;
    None: the rows are numbered 1..N."""
    others = [c for c in header if c not in pixels and c.lower() not in LABEL_COLUMNS]
    if preferred in others:
        return preferred
    return (_find_column(others, None, ID_COLUMNS, "", source)
            or (others[0] if len(others) == 1 else None))


def _row_ids(text: pd.DataFrame, id_col: str | None, source: Path) -> pd.Series:
    """The ids of a pixel CSV's rows: its `id_col`'s, else the row numbers 1..N; checked
    to be plain, unique file names."""
    ids = (text[id_col].str.strip() if id_col
           else pd.Series([str(i) for i in range(1, len(text) + 1)]))
    _check_ids(ids, source)
    return ids


def pixel_csv_images(csv_path: Path, pixel_dir: Path, pixel_order: str = "auto",
                     trained_order: str | None = None) -> dict[str, Path]:
    """The rows of a pixel CSV given to predict (a competition's test.csv, or new rows
    in its layout) as PNGs written once under `pixel_dir`, by id: the id column's (a
    known id name, or the one column that is neither pixels nor a label), else the row
    numbers 1..N; a colour row's values in `pixel_order` order, where that is auto in
    `trained_order` (the order the run read its train.csv in, recorded_order), else told
    from these rows and said in one line."""
    header = _csv_header(csv_path)
    pixels = pixel_columns(header)
    side, channels = image_shape(pixels, csv_path)
    id_col = _pixel_id_column(header, pixels, csv_path)
    text, array = read_pixel_rows(csv_path, pixels, [id_col] if id_col else [])
    ids = _row_ids(text, id_col, csv_path)
    if pixel_order == "auto" and trained_order is not None:
        pixel_order = trained_order
    order, note = choose_pixel_order(array, side, channels, pixel_order, csv_path)
    if note:
        get_logger().info(note)
    images = PixelLayout(pixels, side, channels, order).images(array)
    paths = write_pixel_images(pixel_dir, "predict", [f"{i}.png" for i in ids], images,
                               pixel_hashes(images))
    return {image_id: Path(path) for image_id, path in zip(ids, paths, strict=True)}


def _read_pixel_test(root: Path, wanted: tuple, layout: PixelLayout,
                     pixel_dir: Path) -> tuple[pd.DataFrame, list[str], dict[str, str]]:
    """test.csv of pixel rows as the test frame in sample-submission order, the sample's
    columns and its probability columns (`wanted`: as for _read_test). The sample's ids
    are test.csv's id column where it has one, else its row numbers 1..N."""
    csv_path = root / "test.csv"
    if not csv_path.is_file():
        raise CompError(f"{csv_path}: not found; a pixel-CSV competition gives its test "
                        "images as pixel rows in test.csv")
    sample, probability_columns = _read_sample(root, *wanted)
    columns = list(sample.columns)
    sample_path = sample_csv(root)
    header = _csv_header(csv_path)
    pixels = pixel_columns(header)
    if pixels != layout.columns:
        raise CompError(f"{csv_path}: {len(pixels)} pixel columns "
                        f"({', '.join(pixels[:1] + pixels[-1:])}) differ from train.csv's "
                        f"{len(layout.columns)} ({layout.columns[0]}, {layout.columns[-1]}); "
                        "train and test images must have the same size")
    id_col = _pixel_id_column(header, pixels, csv_path, preferred=columns[0])
    text, array = read_pixel_rows(csv_path, pixels, [id_col] if id_col else [])
    wanted = sample[columns[0]].str.strip()
    _check_ids(wanted, sample_path)
    if id_col:
        test_ids = text[id_col].str.strip()
        _check_ids(test_ids, csv_path)
        position = {image_id: row for row, image_id in enumerate(test_ids)}
        missing = [i for i in wanted if i not in position]
        if missing:
            raise CompError(f"{sample_path}: {len(missing)} id(s) are not in {csv_path}'s "
                            f"{id_col} column, e.g. {missing[:3]}; fix the ids")
        rows = [position[i] for i in wanted]
    else:
        numbers = pd.to_numeric(wanted, errors="coerce")
        if sorted(numbers.tolist()) != list(range(1, len(text) + 1)):
            raise CompError(f"{sample_path}: ids are not 1..{len(text)} (the rows of "
                            f"{csv_path}, in order) and {csv_path} has no id column; "
                            "add an id column to test.csv")
        rows = (numbers.astype(int) - 1).tolist()
    if len(rows) < len(text):
        get_logger().warning("warning: %d row(s) of %s are not in sample_submission.csv and "
                             "are not predicted", len(text) - len(rows), csv_path)
    chosen = layout.images(array[rows])
    hashes = pixel_hashes(chosen)
    paths = write_pixel_images(pixel_dir, "test", [f"{i}.png" for i in wanted], chosen, hashes)
    test = pd.DataFrame({"id": wanted.to_numpy(), "submission_id": sample[columns[0]].to_numpy(),
                         "path": paths, "hash": hashes})
    return test, columns, probability_columns
