"""The command line: a light --help (no TensorFlow), progress lines, one-line errors."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from comp.config import CONFIG_DIR, load_config
from comp.run import main, run_stage
from tests.helpers import make_competition, tiny_overrides

ROOT = Path(__file__).resolve().parent.parent


def _env_with_checkout() -> dict[str, str]:
    """The environment with this checkout first on PYTHONPATH (for a child run elsewhere)."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path}


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **env})


def test_help_imports_no_tensorflow():
    result = _python(
        "import sys\n"
        "from comp.run import help_text\n"
        "text = help_text()\n"
        "assert 'keys (default' in text and 'stage=all' in text, text\n"
        "heavy = [m for m in ('tensorflow', 'keras') if m in sys.modules]\n"
        "print('heavy:', heavy)\n")
    assert result.returncode == 0, result.stderr
    assert "heavy: []" in result.stdout


def test_help_from_the_command_line_lists_the_weight_search_order():
    result = subprocess.run([sys.executable, "-m", "comp.run", "--help"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "export" in out and "experiment=[best|medium|quick]" in out
    order = [out.index(s) for s in ("weights_dir=<folder>", "the Keras cache",
                                    "comp's bundled weights")]
    assert order == sorted(order)
    assert "mobilenet_2_5_224_tf_no_top.h5" in out


def test_import_comp_stays_light():
    result = _python("import sys, comp\n"
                     "print(sorted(m for m in ('tensorflow', 'keras', 'hydra', 'comp.api')"
                     " if m in sys.modules))\n"
                     "from comp import Competition\n"
                     "print(Competition.__module__)\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["[]", "comp.api"]


def test_progress_lines_when_stderr_is_not_a_terminal():
    code = ("from comp.log import unit_done, using_progress\n"
            "with using_progress('{mode}'):\n"
            "    unit_done('fold', model='m-1', fold=2, best_epoch=5, val_auc=0.91234, "
            "seconds=3.21)\n")
    for mode in ("auto", "lines"):  # auto: stderr is a pipe here -> lines
        result = _python(code.format(mode=mode))
        assert result.returncode == 0, result.stderr
        assert ("comp: fold done: model=m-1 fold=2 best_epoch=5 val_auc=0.9123 seconds=3.2"
                in result.stderr)
    for mode in ("off", "bar"):
        result = _python(code.format(mode=mode))
        assert "fold done" not in result.stderr


def test_a_classic_model_prints_no_best_epoch(monkeypatch, comp_caplog):
    from comp.log import unit_done, using_progress

    with using_progress("lines"):
        unit_done("fold", model="pixels+logreg-1", fold=0, best_epoch=None, val_auc=0.5,
                  seconds=1.0)
    assert comp_caplog.messages[-1] == ("fold done: model=pixels+logreg-1 fold=0 "
                                        "val_auc=0.5000 seconds=1.0")


def test_log_lines_are_not_printed_over_live_bars(monkeypatch):
    import io
    import logging

    from comp.log import get_logger, log_over_bars, progress, using_progress

    def bar_then_log(redirect: bool) -> str:
        stream = io.StringIO()
        monkeypatch.setattr(sys, "stderr", stream)
        handler = logging.StreamHandler(sys.stderr)  # the comp logger's, on this stderr
        handler.setFormatter(logging.Formatter("comp: %(message)s"))
        get_logger().handlers[:] = [handler]  # restored by the autouse fixture
        bar = progress(total=3, desc="train", file=sys.stderr, mininterval=0)
        bar.update(1)
        if redirect:
            with log_over_bars():
                get_logger().info("fold done")
        else:
            get_logger().info("fold done")
        bar.close()
        return stream.getvalue()

    with using_progress("bar"):
        assert "]comp: fold done" in bar_then_log(redirect=False)  # the old, split line
        text = bar_then_log(redirect=True)
    assert "comp: fold done\n" in text and "]comp:" not in text
    assert any(line.startswith("comp: fold done") for line in text.replace("\r", "\n")
               .splitlines())


def test_unknown_progress_mode_is_one_line(tmp_path, capsys):
    code = main(["stage=plan", "progress=verbose", f"runs_dir={tmp_path}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("comp: error:") and "progress=" in err
    assert len(err.splitlines()) == 1


def test_bare_comp_prints_usage_and_runs_nothing(tmp_path):
    result = subprocess.run([sys.executable, "-m", "comp.run"], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path, env=_env_with_checkout())
    assert result.returncode == 0, result.stderr
    from comp.stages import STAGES

    assert "stages: " + ", ".join(STAGES) in result.stdout
    assert "comp stage=all data=folder data.dir=<folder>" in result.stdout
    assert list(tmp_path.iterdir()) == []  # no runs/, no submissions/


def test_version(capsys):
    from comp import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"comp {__version__}"


@pytest.mark.parametrize("argv, needle", [
    (["train"], "'train' is not a key=value setting: did you mean stage=train?"),
    (["trian"], "did you mean stage=train?"),
    (["--verbose"], "unknown option '--verbose'"),
    (["trian.epochs=3"], "unknown key 'trian' (did you mean train.epochs?)"),
    (["train.epoch=3"], "unknown key 'train.epoch' (did you mean train.epochs?)"),
    (["stage=trian"], "unknown stage 'trian' (did you mean stage=train?)"),
    # a config group's option that is not there was Hydra's "Could not find 'experiment/fast'"
    (["experiment=fast"], "config: experiment=fast: not one of ['best', 'medium', 'quick']"),
    (["data=kaggle"], "config: data=kaggle: not one of ['demo', 'folder']"),
    # a competition folder given as the group, or bare
    (["data=comps/cells"], "not one of ['demo', 'folder']; a competition folder is "
                           "data=folder data.dir=comps/cells"),
    (["comps/cells"], "'comps/cells' is not a key=value setting: a competition folder "
                      "is data=folder data.dir=comps/cells"),
    # OmegaConf's type errors, in the words of the rules
    (["train.lr=abc"], "config: train.lr=abc: must be a number"),
    (["train.epochs=2.5"], "config: train.epochs=2.5: must be a whole number"),
    (["quiet=maybe"], "config: quiet=maybe: must be true or false"),
    # Python's None for a key that takes none: YAML's word for it is null
    (["pseudo.distill=None"], "config: pseudo.distill=None: write pseudo.distill=null for "
                              "none (YAML reads None as text); else a number > 0"),
    (["train.epochs=None"], "config: train.epochs=None: must be a whole number"),
    (["classic.models=3"], "config: classic.models: must be a list, e.g. classic.models=[a,b]"),
    # a section given one value, and what Hydra's grammar cannot read, named
    (["train=1"], "config: train is a section: set its keys, e.g. train.<key>=<value>"),
    (["backbones=[mobilenet_025"], "config: cannot read 'backbones=[mobilenet_025'"),
    (["train.lr=0.01=2"], "config: cannot read 'train.lr=0.01=2'"),
    # a leading + adds keys only under backbone_overrides (Hydra took +trian.epochs=3)
    (["+trian.epochs=3"], "config: unknown key 'trian.epochs' (did you mean train.epochs?); "
                          "a leading + adds keys only under backbone_overrides.<backbone>"),
    (["+train.epochs=3"], "config: train.epochs is a key already: set it without the "
                          "leading + (train.epochs=3)"),
    # the shell split a list written with a space
    (["backbones=[mobilenet_025,", "small_cnn]"], "'small_cnn]' is not a key=value setting: "
                                                  "a list is one argument"),
])
def test_mistakes_get_did_you_mean(argv, needle, tmp_path, capsys, monkeypatch):
    (tmp_path / "comps" / "cells").mkdir(parents=True)  # a folder by a relative path
    monkeypatch.chdir(tmp_path)  # where a mistake taken as a run would write, if one were
    assert main([*argv, f"runs_dir={tmp_path / 'runs'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("comp: error: "), err
    assert needle in err[0], err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "submissions").exists()


def test_help_describes_every_key_and_lists_the_stages(capsys):
    from comp.config import key_descriptions
    from comp.run import composed_keys
    from comp.stages import STAGES

    descriptions = key_descriptions()
    composed = [line.split("=", 1)[0] for line in composed_keys()]
    assert list(descriptions) == composed  # the schema walk finds every composed key
    assert all(descriptions.values()), [k for k, v in descriptions.items() if not v]
    assert main(["--help"]) == 0
    out = capsys.readouterr().out.splitlines()
    lr = next(i for i, line in enumerate(out) if line.startswith("  train.lr="))
    assert out[lr + 1].strip() == descriptions["train.lr"] == "initial learning rate"
    for name, (_, text) in STAGES.items():
        assert f"  {name:<10} {text}" in out


def test_runs_without_name_are_named_after_their_folder_and_never_collide(tmp_path):
    """The demo-like first run, then another folder and a preset in the same runs_dir,
    none with name=: each folder and preset gets its own run directory (runs/demo before
    would refuse the second folder's training data)."""
    assert load_config([]).name == "demo"  # the bundled demo
    assert load_config(["experiment=quick"]).name == "demo-quick"
    first = make_competition(tmp_path / "demo", seed=0)
    second = make_competition(tmp_path / "cells", seed=1)
    where = [f"runs_dir={tmp_path / 'runs'}", f"submissions_dir={tmp_path / 'submissions'}",
             "quiet=true"]
    for folder, extra in ((first, []), (second, []), (second, ["experiment=quick"])):
        assert main(["stage=prepare", "data=folder", f"data.dir={folder}", *where,
                     *extra]) == 0
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [
        "cells", "cells-quick", "demo"]
    for name in ("cells", "cells-quick", "demo"):
        assert (tmp_path / "runs" / name / "folds.csv").is_file()
    assert "name:" not in "".join(
        p.read_text() for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


def test_piped_feature_passes_log_a_line_per_view(comp_caplog):
    """A long embedding or feature pass is not one silent stretch in a piped log."""
    import numpy as np

    from comp.log import using_progress
    from comp.training.embeddings import embed, pixel_encoder
    from comp.training.features import Encoder, ViewSet, compute_features

    images = np.zeros((5, 16, 16, 3), np.uint8)
    with using_progress("lines"):
        embed(images, (0, 1, 2), pixel_encoder(), desc="embed pixels@16 train")
        compute_features(images, Encoder(None, lambda x: x / 2), ViewSet((0, 4)),
                         desc="features x")
    lines = [m for m in comp_caplog.messages if m.startswith("view done: ")]
    assert lines[:3] == [f"view done: of=embed pixels@16 train view={k}/3 images=5 seconds="
                         + m.split("seconds=")[1] for k, m in zip((1, 2, 3), lines, strict=False)]
    assert [m.split(" view=")[1].split()[0] for m in lines[3:]] == ["1/2", "2/2"]
    with using_progress("lines"):  # an empty split (no unlabeled images) says nothing
        embed(images[:0], (0, 1), pixel_encoder(), desc="embed empty")
        compute_features(images[:0], Encoder(None, lambda x: x / 2), ViewSet((0, 4)),
                         desc="features empty")
    assert not [m for m in comp_caplog.messages if " empty view=" in m]


def test_a_stage_gives_the_callers_process_settings_back(tmp_path, competition):
    """A library call (run_stage, as the API makes it) of a stage that imports TensorFlow
    leaves the caller's warning filters, TensorFlow's log level, the progress mode and
    the `comp` logger's level as they were before it (it sets them for its own while)."""
    import logging
    import warnings

    from comp import log

    comp_level = log.get_logger().level
    tf_logger = logging.getLogger("tensorflow")
    tf_level = tf_logger.level
    filters = list(warnings.filters)
    run_stage(["stage=plan", "progress=lines",  # quiet=true: the comp logger at WARNING
               *tiny_overrides(tmp_path, competition)])
    assert warnings.filters == filters
    assert tf_logger.level == tf_level and log.get_logger().level == comp_level
    assert log._progress_mode == "auto"  # not the stage's `lines`


def test_the_demo_run_inside_a_competition_folder_says_how_to_run_that_folder(
        tmp_path, monkeypatch, comp_caplog):
    """`comp stage=all` typed in a competition folder ran the bundled demo without a word."""
    competition = make_competition(tmp_path / "mine")
    runs = f"runs_dir={tmp_path / 'runs'}"
    monkeypatch.chdir(competition)
    assert main(["stage=prepare", runs]) == 0
    notes = [r.getMessage() for r in comp_caplog.records if "bundled demo" in r.getMessage()]
    assert notes == ["note: no data.dir given, so this is comp's bundled demo; this folder "
                     "looks like a competition (train.csv): `comp stage=prepare data=folder "
                     "data.dir=.` runs it"]
    comp_caplog.clear()
    assert main(["stage=prepare", runs, "data=folder", "data.dir=.", "name=mine"]) == 0
    monkeypatch.chdir(tmp_path)  # no competition here: the demo, and nothing to say
    assert main(["stage=prepare", runs]) == 0
    assert not any("bundled demo" in r.getMessage() for r in comp_caplog.records)
