"""The package carries its configs, demo data and weights; no POSIX-only imports."""

import fnmatch
import re
import shutil
import subprocess
import sys
import zipfile
from importlib.resources import files
from pathlib import Path

import pytest

from comp.config import load_config
from comp.models.registry import get_backbone
from comp.models.weights import resolve_weights, search_order_text

ROOT = Path(__file__).resolve().parent.parent


def test_configs_and_demo_are_package_resources():
    package = files("comp")
    for name in ("config.yaml", "data/demo.yaml", "data/folder.yaml", "experiment/quick.yaml",
                 "experiment/medium.yaml", "experiment/best.yaml", "backbone/small_cnn.yaml"):
        assert (package / "configs" / name).is_file(), name
    assert (package / "demo" / "wbc" / "train.csv").is_file()
    assert (package / "demo" / "weights" / "mobilenet_2_5_224_tf_no_top.h5").is_file()
    assert not (ROOT / "configs").exists()  # no second copy outside the package


def test_package_data_globs_cover_every_data_file():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["comp"]
    data = [p.relative_to(ROOT / "comp").as_posix()
            for folder in ("configs", "demo") for p in (ROOT / "comp" / folder).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts]
    assert len(data) > 300
    missed = [d for d in data if not any(_glob_match(d, g) for g in globs)]
    assert missed == []


def _glob_match(path: str, pattern: str) -> bool:
    # setuptools globs: * does not cross /
    regex = "".join("[^/]*" if part == "*" else re.escape(part)
                    for part in re.split(r"(\*)", pattern))
    return re.fullmatch(regex, path) is not None and fnmatch.fnmatch(path, pattern)


def test_built_wheel_holds_configs_demo_and_the_command(tmp_path):
    pytest.importorskip("setuptools")
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", "runs", "submissions", "build", "*.egg-info", "__pycache__", "dist"))
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
         "-q", "-w", str(tmp_path / "dist")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    assert wheel.name.startswith("comp_kfold-")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("comp/configs/config.yaml", "comp/configs/experiment/best.yaml",
                 "comp/demo/wbc/train.csv", "comp/demo/wbc/sample_submission.csv",
                 "comp/demo/weights/mobilenet_2_5_224_tf_no_top.h5",
                 "comp/stages/export.py", "comp/api.py"):
        assert name in names, name
    assert sum(n.startswith("comp/demo/wbc/train/") for n in names) == 186
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "comp = comp.run:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_no_fcntl_and_import_without_it():
    sources = [p for p in (ROOT / "comp").rglob("*.py")]
    assert [str(p) for p in sources if re.search(r"^\s*(import|from) fcntl", p.read_text(),
                                                 re.M)] == []
    # a platform without fcntl (Windows): importing comp, its config and CLI works
    code = ("import sys; sys.modules['fcntl'] = None\n"
            "import comp, comp.run, comp.config, comp.api\n"
            "comp.run.help_text(); print('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


def test_bundled_mobilenet_weights_are_found_for_any_folder(tmp_path, monkeypatch, competition):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty-keras-home"))
    cfg = load_config(["data=folder", f"data.dir={competition}"])
    assert cfg.weights_dir is None and cfg.weights == "imagenet"
    found = resolve_weights(get_backbone("mobilenet_025"), 224, cfg.weights, cfg.weights_dir)
    assert found.path == Path(str(files("comp") / "demo" / "weights" /
                                  "mobilenet_2_5_224_tf_no_top.h5"))
    # weights_dir comes first
    mine = tmp_path / "mine"
    mine.mkdir()
    shutil.copy(found.path, mine / found.path.name)
    assert resolve_weights(get_backbone("mobilenet_025"), 224, "imagenet",
                           str(mine)).path == mine / found.path.name


def test_missing_weights_error_names_the_search_order(tmp_path, monkeypatch):
    from comp.errors import CompError
    from comp.models import weights

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(weights, "_download", lambda backbone, name: None)
    with pytest.raises(CompError) as info:
        resolve_weights(get_backbone("vgg16"), 224, "imagenet", str(tmp_path / "wd"))
    text = str(info.value)
    places = [text.index(str(p)) for p in (tmp_path / "wd", tmp_path / "keras" / "models",
                                           weights.bundled_weights_dir())]
    assert places == sorted(places) and "vgg16_weights" in text
    assert "bundled" in search_order_text()
