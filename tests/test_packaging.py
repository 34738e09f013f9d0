"""The package carries its configs, demo data and weights; no POSIX-only imports."""

import fnmatch
import os
import re
import shutil
import subprocess
import sys
import zipfile
from importlib.resources import files
from pathlib import Path

import pytest

from comp.config import CONFIG_DIR, load_config
from comp.models.registry import get_backbone
from comp.models.weights import resolve_weights, search_order_text

ROOT = Path(__file__).resolve().parent.parent


CONFIG_NAMES = ("config.yaml", "data/demo.yaml", "data/folder.yaml", "experiment/quick.yaml",
                "experiment/medium.yaml", "experiment/best.yaml")


def test_configs_at_the_top_level_and_demo_as_package_resources():
    assert CONFIG_DIR == ROOT / "configs"  # the checkout's, beside pyproject.toml
    for name in CONFIG_NAMES:
        assert (ROOT / "configs" / name).is_file(), name
    package = files("comp")
    assert (package / "demo" / "wbc" / "train.csv").is_file()
    assert (package / "demo" / "weights" / "mobilenet_2_5_224_tf_no_top.h5").is_file()
    assert not (ROOT / "comp" / "configs").exists()  # no second copy inside the package


def test_every_package_is_listed_for_the_wheel():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = sorted(".".join(p.parent.relative_to(ROOT).parts)
                   for p in (ROOT / "comp").rglob("__init__.py"))
    assert sorted(setuptools["packages"]) == sorted([*found, "comp.configs"])
    assert setuptools["package-dir"] == {"comp.configs": "configs"}


def test_package_data_globs_cover_every_data_file():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]
    missed = []
    for package, folder in (("comp", ROOT / "comp" / "demo"), ("comp.configs",
                                                                ROOT / "configs")):
        base = ROOT / "comp" if package == "comp" else folder
        data = [p.relative_to(base).as_posix() for p in folder.rglob("*")
                if p.is_file() and "__pycache__" not in p.parts]
        assert len(data) > (300 if package == "comp" else 5), package
        missed += [d for d in data if not any(_glob_match(d, g) for g in globs[package])]
    assert missed == []


def _glob_match(path: str, pattern: str) -> bool:
    # setuptools globs: * does not cross /
    regex = "".join("[^/]*" if part == "*" else re.escape(part)
                    for part in re.split(r"(\*)", pattern))
    return re.fullmatch(regex, path) is not None and fnmatch.fnmatch(path, pattern)


def _not_packaged(folder: str, names: list[str]) -> set[str]:
    """What the wheel's build copy leaves out: outputs, caches, and any virtual environment
    in the checkout (a `.venv` beside the README's install: copying TensorFlow's files
    made this test take 23 s instead of 2.5)."""
    skipped = shutil.ignore_patterns(".git", "runs", "submissions", "build", "*.egg-info",
                                     "__pycache__", "dist", ".*_cache")(folder, names)
    return skipped | {name for name in names if (Path(folder) / name / "pyvenv.cfg").exists()}


def test_built_wheel_holds_configs_demo_and_the_command(tmp_path):
    pytest.importorskip("setuptools")
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=_not_packaged)
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
    assert sum(n.startswith("comp/configs/experiment/") for n in names) == len(
        list((ROOT / "configs" / "experiment").glob("*.yaml")))
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "comp = comp.run:main" in zipfile.ZipFile(wheel).read(entry).decode()
    # installed from the wheel, outside the checkout, comp finds its configs in the package
    installed = tmp_path / "installed"
    zipfile.ZipFile(wheel).extractall(installed)
    code = ("import sys; sys.path.insert(0, sys.argv[1])\n"
            "from comp.config import CONFIG_DIR, load_config\n"
            "cfg = load_config(['experiment=quick'])\n"
            "print(CONFIG_DIR, cfg.name, list(cfg.backbones))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", code, str(installed)], capture_output=True,
                            text=True, timeout=120, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == [str(installed / "comp" / "configs"), "demo-quick", "[]"]


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
