"""The Python API: a competition folder as an object, for notebooks.

    from comp import Competition
    comp = Competition("path/to/folder", name="x", **{"train.epochs": 10})
    comp.fit()                    # stage=all; or fit(["prepare", "train", "submit"])
    comp.leaderboard()            # DataFrame, best first
    comp.predict("new_images/")   # DataFrame: id, label, p_<class>...
    comp.predict_proba(array)     # DataFrame of probabilities, one column per class
    comp.predictor().predict(x)   # the same frames from models built once, for many calls
    comp.evaluate(frame)          # {"accuracy": ..., "macro_f1": ..., <submit.metric>: ...}
    comp.report()                 # Path of the HTML report
    comp.export()                 # Path of the exported Keras model folder
    Competition.from_frame(df, label="label", image="path", test_data=test_df)
    Competition.load("runs/x")    # a finished run, to predict, evaluate or export

Every call runs `comp.run.run_stage`, the same code path as the `comp` command, with
this object's overrides plus `stage=<stage>`; user errors raise `comp.errors.CompError`.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from comp.errors import CompError

IMAGE_TYPES = ("an image file or folder (str or Path), a list of image files, a numpy array "
               "(H,W[,C] or N,H,W[,C], uint8 or float in [0, 1]) or a PIL image (or a list "
               "of them)")


def override_value(value) -> str:
    """A Python value as the Hydra override value that parses back to that value
    (NumPy scalars as the Python numbers they hold; text quoted unless plainly ASCII)."""
    if isinstance(value, np.generic | np.ndarray):
        value = value.tolist()
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(float(value)) if isinstance(value, float) else str(int(value))
    if isinstance(value, list | tuple):
        return "[" + ",".join(_value(v) for v in value) + "]"
    text = str(value)
    if re.fullmatch(r"[\w./\\:~+@-]*", text, flags=re.ASCII):
        return text
    from comp.config import hydra_quote

    return hydra_quote(text)


_value = override_value


def _refuse_two_folders(data: Path | None, settings: dict, overrides: Iterable[str]) -> None:
    """`Competition(folder_a, **{"data.dir": folder_b})` names two folders: refused, since
    one would be prepared while the object reported (and was named after) the other."""
    given = [settings["data.dir"]] if "data.dir" in settings else []
    given += [o.split("=", 1)[1].strip("'\"") for o in overrides
              if o.lstrip("+~").startswith("data.dir=")]
    others = {str(Path(g).expanduser().resolve()) for g in given} - {str(data)}
    if data is not None and others:
        raise CompError(f"Competition({str(data)!r}): data.dir={sorted(others)[0]!r} names "
                        "another folder; give the folder once")


def flat_settings(settings: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts of settings as dotted keys: {"train": {"epochs": 20}} ->
    {"train.epochs": 20}; dotted keys stay as they are."""
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, Mapping) and value:
            flat.update(flat_settings(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _array_images(images) -> list | None:
    """`images` as a list of (H, W[, C]) uint8 arrays when it is a numpy array, a PIL
    image or a list of those; None for anything else. Float arrays must lie in [0, 1]."""
    import numpy as np
    from PIL import Image

    items = images if isinstance(images, list | tuple) else [images]
    if not items or not all(isinstance(i, np.ndarray | Image.Image) for i in items):
        return None
    arrays = []
    for item in items:
        if isinstance(item, Image.Image):
            arrays.append(item)
            continue
        single = item.ndim == 2 or (item.ndim == 3 and item.shape[-1] in (1, 3, 4))
        stack = [item] if single else list(item) if item.ndim in (3, 4) else None
        if stack is None:
            raise CompError(f"predict: a numpy array of shape {item.shape}; give H,W[,C] or "
                            "N,H,W[,C]")
        arrays += [_to_uint8(a) for a in stack]
    return arrays


def _to_uint8(array):
    import numpy as np

    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise CompError("predict: a float array with values outside [0, 1]; give floats "
                            "in [0, 1] or uint8 values 0..255")
        return np.rint(array * 255).astype(np.uint8)
    raise CompError(f"predict: a numpy array of dtype {array.dtype}; give uint8 (0..255) or "
                    "floats in [0, 1]")


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed
        shutil.copyfile(source, target)


class Competition:
    """One experiment on one competition folder (None: the bundled demo).

    `name` defaults to the folder's name ("demo" for the bundled demo, see
    comp.config.default_run_name); `runs_dir` and
    `submissions_dir` default to `runs/` and `submissions/` in the working directory.
    Settings are config keys, as keyword arguments (`weights="none"`), nested dicts
    (`train={"epochs": 3}`), dotted keys through a dict (`**{"train.epochs": 3}`), or
    ready-made `overrides=["train.lr=0.01"]`.
    """

    def __init__(self, folder: str | Path | None = None, name: str | None = None,
                 runs_dir: str | Path | None = None, submissions_dir: str | Path | None = None,
                 overrides: Iterable[str] = (), **settings):
        # `folder`, not `data`: data={"folds": 3} is a setting, like train={...}
        self.data = None if folder is None else Path(folder).expanduser().resolve()
        _refuse_two_folders(self.data, flat_settings(settings), overrides)
        base: list[str] = []
        if self.data is not None:
            if not self.data.is_dir():
                raise CompError(f"Competition({str(folder)!r}): no such folder")
            base += ["data=folder", f"data.dir={_value(str(self.data))}"]
        if name is not None:
            base.append(f"name={_value(name)}")
        for key, value in (("runs_dir", runs_dir), ("submissions_dir", submissions_dir)):
            if value is not None:
                base.append(f"{key}={_value(str(Path(value).expanduser().resolve()))}")
        base += [f"{key}={_value(value)}" for key, value in flat_settings(settings).items()]
        self.overrides = base + list(overrides)
        self.config = self._compose()
        self.name = self.config.name

    def __repr__(self) -> str:
        return f"Competition({str(self.config.data.dir)!r}, name={self.name!r})"

    def _compose(self, *extra: str):
        from comp.config import load_config

        return load_config([*self.overrides, *extra])

    def run(self, stage: str, *extra: str):
        """Run one stage with this object's settings (+ `extra` overrides); its result."""
        from comp.run import run_stage

        return run_stage([*self.overrides, *extra, f"stage={stage}"])

    def fit(self, stages: str | Iterable[str] = "all") -> Competition:
        """Run `stages` ("all": the whole chain, prepare to submit and report); self."""
        for stage in [stages] if isinstance(stages, str) else list(stages):
            self.run(stage)
        return self

    def leaderboard(self):
        """This experiment's models and ensembles ranked by CV (a pandas DataFrame)."""
        from comp.submission import read_leaderboard
        from comp.workspace import leaderboard_path

        path = leaderboard_path(self.config.submissions_dir, self.name)
        board = read_leaderboard(path)
        if board.empty:
            raise CompError(f"{path}: nothing from experiment {self.name!r} yet; call fit() "
                            "(or fit('submit')) first")
        return board

    @classmethod
    def from_frame(cls, train_data, label: str = "label", image: str = "image", test_data=None,
                   name: str | None = None, runs_dir: str | Path | None = None,
                   submissions_dir: str | Path | None = None, overrides: Iterable[str] = (),
                   **settings) -> Competition:
        """An experiment on a pandas DataFrame of training images (AutoGluon-style):
        column `image` holds each image's path, column `label` its class. `test_data`: a
        DataFrame with the same
        `image` column, a folder of images, or None (the training images stand in as the
        test set; predict() takes new images). The frame is written as a competition
        folder (train.csv, train/, test/, sample_submission.csv; images hard-linked or
        copied) into runs/<name>/competition/, then run like any folder. `name` defaults
        to frame-<fingerprint of the image paths and labels>.

        Why eight parameters: each is an option users pass by keyword (the frame's
        columns and test images, then the constructor's own name, runs_dir,
        submissions_dir and overrides), so the call reads like AutoGluon's."""
        import pandas as pd

        from comp.artifacts import fingerprint
        from comp.workspace import RunDir

        if not isinstance(train_data, pd.DataFrame):
            raise CompError(f"from_frame: train_data is a {type(train_data).__name__}; give "
                            "a pandas DataFrame with an image-path column and a label column")
        paths = _frame_paths(train_data, image, "train_data")
        if label not in train_data.columns:
            raise CompError(f"from_frame: no label column {label!r} in the training frame "
                            f"(columns {list(train_data.columns)}); set label=<column>")
        labels = [str(v).strip() for v in train_data[label]]
        if test_data is None:
            test_paths = paths
        elif isinstance(test_data, pd.DataFrame):
            test_paths = _frame_paths(test_data, image, "test_data")
        elif isinstance(test_data, str | Path) and Path(test_data).is_dir():
            from comp.data.folder import image_files

            test_paths = list(image_files(Path(test_data)).values())
        else:
            raise CompError(f"from_frame: test_data={test_data!r}; give a DataFrame with an "
                            f"{image!r} column, a folder of images, or None")
        name = name or "frame-" + fingerprint([[str(p) for p in paths], labels])
        runs = Path(runs_dir).expanduser().resolve() if runs_dir is not None else Path("runs")
        folder = RunDir(runs / name).frame_competition
        _write_competition(folder, paths, labels, test_paths)
        made = cls(folder, name=name, runs_dir=runs, submissions_dir=submissions_dir,
                   overrides=overrides, **settings)
        made.label_column, made.image_column = label, image
        return made

    @classmethod
    def load(cls, run_dir: str | Path, **settings) -> Competition:
        """The experiment of a run directory comp wrote (runs/<name>/), with the settings
        of its last run (its config.yaml), then `settings` (e.g. quiet=False): to
        predict, evaluate, report or export."""
        from omegaconf import OmegaConf

        from comp.workspace import RunDir

        root = Path(run_dir).expanduser().resolve()
        saved_path = RunDir(root).config_yaml
        if not saved_path.is_file():
            raise CompError(f"{root}: no config.yaml, not a run directory comp wrote; give "
                            "runs/<name>")
        saved = OmegaConf.to_container(OmegaConf.load(saved_path))
        saved.pop("stage", None)
        if "***" in str((saved.get("tune") or {}).get("storage")):  # masked: not usable
            saved["tune"]["storage"] = None
        saved.update(name=root.name, runs_dir=str(root.parent))
        kept = [f"++{key}={_value(value)}" for key, value in flat_settings(saved).items()
                if not isinstance(value, Mapping)]
        given = [f"{key}={_value(value)}" for key, value in flat_settings(settings).items()]
        return cls(overrides=kept + given)  # the settings given win over the saved ones

    def predict(self, images, using: str | None = None):
        """Class probabilities and labels (a DataFrame: id, label, p_<class>...) for an
        image file, a folder, a CSV of pixel rows, a list of image files, a numpy array
        (H,W[,C] or N,H,W[,C], uint8 or float in [0, 1]) or a PIL image (or a list of
        them). Ids are the file names (the paths given, where two share a name), a pixel
        CSV's id column (or its row numbers 1..N) or, for arrays and PIL images,
        their positions 0..N-1 (a 3-D array whose last axis is 1, 3 or 4 is one H,W,C
        image, any other a stack N,H,W); ids and labels that are all plain integers
        (ImageId 1..N, classes 0-9) come back as integers. `using`: a model id or
        ensemble-<method> (default: the leaderboard's rank 1). Each call builds the
        models again and writes its predictions under runs/<name>/predictions/;
        `predictor()` builds them once for many calls."""
        extra = [] if using is None else [f"predict.using={_value(using)}"]
        if isinstance(images, str | Path):
            return _typed(self.run(
                "predict", f"predict.input={_value(str(Path(images).resolve()))}", *extra))
        with _placed_images(images) as (folder, ids):
            frame = self.run("predict", f"predict.input={_value(str(folder))}", *extra)
        return _typed(_as_given(frame, ids))

    def predictor(self, using: str | None = None) -> Predictor:
        """The model or ensemble `using` (a model id or ensemble-<method>; default: the
        leaderboard's rank 1) built once, to predict any number of times in this process
        (a script's loop, a service): see Predictor."""
        return Predictor(self._compose("stage=predict"), using)

    def predict_proba(self, images, using: str | None = None):
        """Class probabilities only: a DataFrame indexed by id, one column per class (see
        predict for what `images` may be)."""
        return _probabilities(self.predict(images, using))

    def evaluate(self, data, label: str | None = None, image: str | None = None,
                 using: str | None = None) -> dict[str, float]:
        """Scores of the predictions on labelled images: a DataFrame (columns `image`,
        the paths, and `label`; default: from_frame's, else "image" and "label") or a
        folder of class sub-folders (<folder>/<class>/<image>). Returns accuracy,
        macro_f1 and the submit.metric (comp.metrics.scores; `auto`: as a stage resolves it,
        comp.submission.submission_metric), and n (the images)."""
        import pandas as pd

        from comp.data.prepared import load_competition
        from comp.metrics import scores
        from comp.predictions import class_indices
        from comp.submission import submission_metric

        label = label or getattr(self, "label_column", "label")
        image = image or getattr(self, "image_column", "image")
        if isinstance(data, pd.DataFrame):
            paths = _frame_paths(data, image, "evaluate")
            if label not in data.columns:
                raise CompError(f"evaluate: no label column {label!r} (columns "
                                f"{list(data.columns)}); set label=<column>")
            labels = [str(v).strip() for v in data[label]]
        elif isinstance(data, str | Path) and Path(data).is_dir():
            paths, labels = _class_folder_images(Path(data))
        else:
            raise CompError(f"evaluate: cannot score a {type(data).__name__}; give a "
                            "DataFrame with image and label columns or a folder of class "
                            "sub-folders")
        frame = self.predict(paths, using)
        classes = [c[2:] for c in frame.columns if c.startswith("p_")]
        unknown = sorted(set(labels) - set(classes))
        if unknown:
            raise CompError(f"evaluate: labels {unknown[:3]} are not classes of the model "
                            f"({classes})")
        got = scores(class_indices(pd.Series(labels), classes),
                     frame[[f"p_{c}" for c in classes]].to_numpy(float), classes)
        metric = submission_metric(self.config.submit.metric, load_competition(self.config))
        return {"accuracy": got["accuracy"], "macro_f1": got["macro_f1"],
                metric: got[metric], "n": len(labels)}

    def report(self) -> Path:
        """Build the HTML report; its path."""
        return Path(self.run("report"))

    def export(self, using: str | None = None, tta: bool = True, tflite: bool = False,
               output: str | Path | None = None) -> Path:
        """Export a trained model as plain Keras (.keras + SavedModel [+ TFLite]); the
        folder (see stage=export)."""
        extra = [f"export.tta={_value(tta)}", f"export.tflite={_value(tflite)}"]
        if using is not None:
            extra.append(f"export.using={_value(using)}")
        if output is not None:
            extra.append(f"export.output={_value(str(Path(output).resolve()))}")
        return Path(self.run("export", *extra))


def _probabilities(frame):
    """A prediction frame's probabilities, indexed by id, a column per class."""
    columns = [c for c in frame.columns if c.startswith("p_")]
    return frame.set_index("id")[columns].rename(columns=lambda c: c[2:])


def _frame_paths(frame, column: str, what: str) -> list[Path]:
    """The existing image files of `frame[column]`, resolved; CompError naming the first
    missing one."""
    if column not in frame.columns:
        raise CompError(f"{what}: no image column {column!r} (columns {list(frame.columns)}); "
                        "set image=<column of image paths>")
    paths = [Path(str(p)).expanduser().resolve() for p in frame[column]]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise CompError(f"{what}: {len(missing)} image file(s) not found, e.g. {missing[0]}")
    return paths


def _file_names(paths: list[Path]) -> list[str]:
    """A distinct file name per path: its own name, or <row>_<name> where names repeat."""
    names = [p.name for p in paths]
    if len(set(names)) == len(names):
        return names
    return [f"{i:06d}_{name}" for i, name in enumerate(names)]


@contextmanager
def _placed_images(images) -> Iterator[tuple[Path, dict[str, Any]]]:
    """A list of image files, a numpy array or PIL images (see Competition.predict) in a
    temporary folder, and {file name there: the id to report}, in the order given."""
    arrays = _array_images(images)
    paths = None
    if arrays is None and isinstance(images, list | tuple) and images and all(
            isinstance(p, str | Path) for p in images):
        paths = [Path(p) for p in images]
    if arrays is None and paths is None:
        raise CompError(f"predict: cannot predict a {type(images).__name__}; give "
                        f"{IMAGE_TYPES}")
    with tempfile.TemporaryDirectory(prefix="comp-predict-") as tmp:
        # a folder named for what it holds: stage=predict writes its predictions to
        # runs/<name>/predictions/<that name>__<using>.csv, a file that stays
        folder = Path(tmp) / ("api-files" if paths is not None else "api-arrays")
        folder.mkdir()
        if paths is not None:
            ids = _place_files(paths, folder)
        else:
            from PIL import Image

            ids = {}
            for i, item in enumerate(arrays):
                image = item if isinstance(item, Image.Image) else Image.fromarray(item)
                image.save(folder / f"{i:06d}.png")
                ids[f"{i:06d}.png"] = i
        yield folder, ids


_PLAIN_INTEGER = r"0|-?[1-9][0-9]{0,17}"


def _typed(frame):
    """`frame` (a prediction frame) with its `id` and `label` columns as integers where
    each of their values is an integer written plainly (`12`; not `012`, `1.0` or
    `a.png`), as pandas reads them from a CSV: a pixel CSV's ImageId 1..N or classes
    0-9 then merge with the sample submission and compare with labels a script read,
    which as strings they silently never equal. Other values stay as they are."""
    for column in ("id", "label"):
        text = frame[column].astype(str)
        if len(text) and text.str.fullmatch(_PLAIN_INTEGER).all():
            frame[column] = text.astype("int64")
    return frame


def _as_given(frame, ids: dict[str, Any]):
    """`frame` (by file name) in the order of `ids`, its ids the ones given."""
    frame = frame.set_index("id").loc[list(ids)].reset_index()
    frame["id"] = list(ids.values())
    return frame


class Predictor:
    """A finished run's model or ensemble, built once (Competition.predictor): `predict`
    and `predict_proba` take what Competition.predict takes and give the same frames and
    probabilities, without building the models again or writing predictions into the run
    directory; on a CPU the frozen networks' converted forms are read from (and, where
    the run directory is writable, kept in) its cache. The models are read under the run
    directory's reader lock, so a run training beside it never hands them over half
    written; a later fit() is not seen: make a new predictor. Calls from several threads
    (a web service's) take turns: the built models and TFLite interpreters serve one
    call at a time."""

    def __init__(self, config, using: str | None = None):
        from comp.inference import best_prediction_set, prediction_set, submitted_metric
        from comp.selection import ranking_metric
        from comp.workspace import reader_lock, run_dir

        self.config = config
        self.run_dir = run_dir(config.runs_dir, config.name, writable=False)
        with self._settings(), reader_lock(self.run_dir):
            self.using = using or best_prediction_set(self.run_dir, ranking_metric(
                submitted_metric(self.run_dir, config.submit.metric), config.submit.rank_by))
            lite_cache = (self.run_dir.lite_cache
                          if os.access(self.run_dir.root, os.W_OK) else None)
            self._predict, self.classes = prediction_set(config, self.run_dir, self.using,
                                                         lite_cache)
        self._turn = threading.Lock()

    def __repr__(self) -> str:
        return f"Predictor({self.config.name!r}, using={self.using!r})"

    def _settings(self):
        from comp.log import quiet_tensorflow
        from comp.run import stage_settings

        quiet_tensorflow()
        return stage_settings(self.config)

    def predict(self, images):
        """Class probabilities and labels (a DataFrame: id, label, p_<class>...) of
        `images` (what Competition.predict takes; its ids)."""
        from comp.data.pixels import recorded_order
        from comp.inference import input_images, prediction_frame

        with ExitStack() as scratch, self._settings():
            if isinstance(images, str | Path):
                pixel_dir = Path(scratch.enter_context(tempfile.TemporaryDirectory()))
                files = input_images(Path(images).expanduser().resolve(), pixel_dir,
                                     self.config.data.pixel_order,
                                     recorded_order(self.run_dir.pixel_images))
                ids = {name: name for name in files}
            else:
                folder, ids = scratch.enter_context(_placed_images(images))
                files = {path.name: path for path in sorted(folder.iterdir())}
            with self._turn:
                probs = self._predict([files[name] for name in ids])
        return _typed(_as_given(prediction_frame(list(ids), probs, self.classes), ids))

    def predict_proba(self, images):
        """Class probabilities only: a DataFrame indexed by id, one column per class."""
        return _probabilities(self.predict(images))


def _place_files(paths: list[Path], folder: Path) -> dict[str, str]:
    """Link (or copy) `paths` into `folder`; {file name there: the id to report}."""
    names = _file_names(paths)
    distinct = names == [p.name for p in paths]
    ids = {}
    for path, name in zip(paths, names, strict=True):
        if not path.is_file():
            raise CompError(f"predict: {path}: no such file")
        _link_or_copy(path.resolve(), folder / name)
        ids[name] = path.name if distinct else str(path)
    return ids


def _place(source: Path, target: Path) -> None:
    """`target` holds `source`'s bytes (replaced atomically when it held others)."""
    import filecmp

    if target.is_file() and filecmp.cmp(source, target, shallow=False):
        return
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.unlink(missing_ok=True)
    _link_or_copy(source, tmp)
    os.replace(tmp, target)


def _write_competition(folder: Path, paths: list[Path], labels: list[str],
                       test_paths: list[Path]) -> None:
    """A competition folder of `paths` (train, with `labels`) and `test_paths`."""
    import pandas as pd

    from comp.artifacts import write_csv

    for split, files in (("train", paths), ("test", test_paths)):
        (folder / split).mkdir(parents=True, exist_ok=True)
        for path, name in zip(files, _file_names(files), strict=True):
            _place(path, folder / split / name)
    write_csv(folder / "train.csv", pd.DataFrame({"id": _file_names(paths), "label": labels}))
    write_csv(folder / "sample_submission.csv",
              pd.DataFrame({"id": _file_names(test_paths), "label": sorted(set(labels))[0]}))


def _class_folder_images(folder: Path) -> tuple[list[Path], list[str]]:
    """The images of <folder>/<class>/ and their classes (the sub-folders' names)."""
    from comp.data.folder import subfolder_images

    files = subfolder_images(folder)
    if not files:
        raise CompError(f"evaluate: {folder} has no class sub-folders with images; give "
                        "<folder>/<class>/<image> or a DataFrame")
    return list(files.values()), [i.partition("/")[0].strip() for i in files]
