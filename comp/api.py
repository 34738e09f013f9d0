"""The Python API: a competition folder as an object, for notebooks.

    from comp import Competition
    comp = Competition("path/to/folder", name="x", **{"train.epochs": 10})
    comp.fit()                    # stage=all; or fit(["prepare", "train", "submit"])
    comp.leaderboard()            # DataFrame, best first
    comp.predict("new_images/")   # DataFrame: id, label, p_<class>...
    comp.report()                 # Path of the HTML report
    comp.export()                 # Path of the exported Keras model folder

Every call runs `comp.run.run_stage`, the same code path as the `comp` command, with
this object's overrides plus `stage=<stage>`; user errors raise `comp.errors.CompError`.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from comp.errors import CompError


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


def _folder_name(path: Path) -> str:
    return re.sub(r"[^\w.-]", "_", path.name) or "competition"


class Competition:
    """One experiment on one competition folder (None: the bundled demo).

    `name` defaults to the folder's name ("demo" for the bundled demo); `runs_dir` and
    `submissions_dir` default to `runs/` and `submissions/` in the working directory.
    Settings are config keys, as keyword arguments (`weights="none"`) or, for dotted
    keys, a dict (`**{"train.epochs": 3}`), or ready-made `overrides=["train.lr=0.01"]`.
    """

    def __init__(self, data: str | Path | None = None, name: str | None = None,
                 runs_dir: str | Path | None = None, submissions_dir: str | Path | None = None,
                 overrides: Iterable[str] = (), **settings):
        self.data = None if data is None else Path(data).expanduser().resolve()
        _refuse_two_folders(self.data, settings, overrides)
        base: list[str] = []
        if self.data is not None:
            if not self.data.is_dir():
                raise CompError(f"Competition({str(data)!r}): no such folder")
            base += ["data=folder", f"data.dir={_value(str(self.data))}"]
            name = name or _folder_name(self.data)
        if name is not None:
            base.append(f"name={_value(name)}")
        for key, value in (("runs_dir", runs_dir), ("submissions_dir", submissions_dir)):
            if value is not None:
                base.append(f"{key}={_value(str(Path(value).expanduser().resolve()))}")
        base += [f"{key}={_value(value)}" for key, value in settings.items()]
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

        path = Path(self.config.submissions_dir) / "leaderboard.csv"
        board = read_leaderboard(path)
        if board.empty or not (board["experiment"] == self.name).any():
            raise CompError(f"{path}: nothing from experiment {self.name!r} yet; call fit() "
                            "(or fit('submit')) first")
        board = board[board["experiment"] == self.name].reset_index(drop=True)
        board["rank"] = range(1, len(board) + 1)
        return board

    def predict(self, images, using: str | None = None):
        """Class probabilities for an image file, a folder of images, or a list of image
        files (a DataFrame: id, label, p_<class>...); `using`: a model id or
        ensemble-<method> (default: the best by CV)."""
        extra = [] if using is None else [f"predict.using={_value(using)}"]
        if isinstance(images, str | Path):
            return self.run("predict", f"predict.input={_value(str(Path(images).resolve()))}",
                            *extra)
        paths = [Path(p) for p in images]
        if len({p.name for p in paths}) != len(paths):
            raise CompError("predict: the image files need distinct names")
        with tempfile.TemporaryDirectory(prefix="comp-predict-") as tmp:
            for path in paths:
                if not path.is_file():
                    raise CompError(f"predict: {path}: no such file")
                shutil.copyfile(path, Path(tmp) / path.name)
            output = Path(tmp) / "predictions.csv"
            return self.run("predict", f"predict.input={_value(tmp)}",
                            f"predict.output={_value(str(output))}", *extra)

    def report(self) -> Path:
        """Build the HTML report; its path."""
        return Path(self.run("report"))

    def export(self, using: str | None = None, tta: bool = False, tflite: bool = False,
               output: str | Path | None = None) -> Path:
        """Export a trained model as plain Keras (.keras + SavedModel [+ TFLite]); the
        folder (see stage=export)."""
        extra = [f"export.tta={_value(tta)}", f"export.tflite={_value(tflite)}"]
        if using is not None:
            extra.append(f"export.using={_value(using)}")
        if output is not None:
            extra.append(f"export.output={_value(str(Path(output).resolve()))}")
        return Path(self.run("export", *extra))
