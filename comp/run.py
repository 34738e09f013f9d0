"""The command line: comp stage=<name> [key=value ...] (or python -m comp.run ...).

The CLI and the Python API (comp.api.Competition) share one code path, `run_stage`:
it raises CompError for the user's mistakes, which the CLI prints as one line
(`comp: error: ...`, exit 2). TensorFlow is imported only when a stage that needs it
runs, so `comp --help` answers at once.
"""

from __future__ import annotations

import difflib
import errno
import importlib
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from comp.deadline import stage_started
from comp.errors import CompError
from comp.log import (
    get_logger,
    log_over_bars,
    quiet_libraries,
    quiet_tensorflow,
    using_progress,
)
from comp.stages import STAGES

_WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EPERM}
# stages that build Keras models: TensorFlow is imported (quietly) just before they run,
# except in those that may hand all their training to worker processes, which import it
# where a unit trains in this process (comp.rounds.train_round, comp.tuning.search)
TF_STAGES = {"plan", "pseudo", "tune", "predict", "export"}
# stages that read the competition folder (predict and export use the run directory only)
DATA_STAGES = {"all", "ensemble", "plan", "prepare", "pseudo", "report", "submit", "train",
               "tune"}
# stages that read `backbones`: `auto` is resolved before they run
CHOOSING_STAGES = {"train", "plan", "pseudo", "tune", "all"}


def usage_text() -> str:
    """What bare `comp` prints: the command's form, the stages and the first commands."""
    return "\n".join([
        "usage: comp stage=<stage> [key=value ...]   (or python -m comp.run ...)",
        "",
        "stages: " + ", ".join(STAGES),
        "",
        "  comp stage=all                                  the whole chain on the bundled demo",
        "  comp stage=all data=folder data.dir=<folder>    the whole chain on your competition",
        "",
        "comp --help lists every key; comp --version prints the version.",
    ])


def help_text() -> str:
    """Usage, the stages, the weight search order and every config key with its default."""
    from comp.config import CONFIG_DIR, key_descriptions
    from comp.models.weights import search_order_text

    descriptions = key_descriptions()
    groups = sorted((g for g in CONFIG_DIR.iterdir() if g.is_dir()), key=lambda g: g.name)
    lines = [
        "usage: comp stage=<stage> [key=value ...]   (or python -m comp.run ...)",
        "",
        "stages:",
        *[f"  {name:<10} {text}" for name, (_, text) in STAGES.items()],
        "",
        "config groups (configs/): "
        + ", ".join(
            f"{g.name}=[{'|'.join(sorted(p.name[:-5] for p in g.iterdir() if p.name.endswith('.yaml')))}]"  # noqa: E501
            for g in groups
        ) + "; backbone=<name> trains that backbone alone (backbones=[<name>])",
        "",
        "ImageNet weights (weights=imagenet) are looked for in this order:",
        *[f"  {line}" for line in search_order_text().splitlines()],
        "",
        "keys (default, composed from configs/; allowed values in brackets; what it does):",
        *[line for key, text in composed_keys(described=True)
          for line in (f"  {text}", f"      {descriptions.get(key, '')}")],
    ]
    return "\n".join(lines)


def config_reference() -> str:
    """The README's config reference: every key, its composed default and allowed values."""
    return "```\n" + "\n".join(composed_keys()) + "\n```"


def composed_keys(described: bool = False) -> list:
    """`key=default  [allowed]` for every key of the composed default config (the demo's
    folder written as <comp>/demo, so the text is the same on every machine); with
    `described`, (key, that text) pairs."""
    from omegaconf import OmegaConf

    from comp.config import DEMO_DIR, describe_constraint, load_config

    def flat(node, prefix: str = "") -> list[tuple[str, object]]:
        if isinstance(node, dict) and node and prefix != "backbone_overrides.":
            return [item for key, value in node.items()
                    for item in flat(value, f"{prefix}{key}.")]
        return [(prefix[:-1], node)]

    lines = []
    for key, value in flat(OmegaConf.to_container(load_config([]))):
        text = f"{key}={value}".replace(str(DEMO_DIR), "<comp>/demo")
        allowed = describe_constraint(key)
        text = f"{text}  [{allowed}]" if allowed else text
        lines.append((key, text) if described else text)
    return lines


def run_stage(overrides: list[str]):
    """Compose the config from `overrides`, run its stage and return the stage's result.

    The one code path of the CLI and the Python API. Raises CompError for bad input,
    a busy run directory or a run directory that cannot be written. What it sets for the
    stage (the progress mode, the `comp` logger's level, warning filters and TensorFlow's
    log level: `stage_settings`) is given back when it returns or raises, so a script
    or notebook that calls it keeps its own settings.
    """
    from comp.config import given_settings

    cfg = _stage_config(overrides)
    with stage_settings(cfg):
        return _run_stage(cfg, given_settings(overrides))


@contextmanager
def stage_settings(cfg) -> Iterator[None]:
    """The process settings of one stage, each back to the caller's afterwards."""
    log = get_logger()
    level = log.level
    log.setLevel(logging.WARNING if cfg.quiet else logging.INFO)
    try:
        with using_progress(cfg.progress), quiet_libraries():
            yield
    finally:
        log.setLevel(level)


def _run_stage(cfg, given: frozenset[str]):
    log = get_logger()
    started = time.time()
    from comp.artifacts import disk_full
    from comp.workspace import run_root

    created = not run_root(cfg.runs_dir, cfg.name).exists()
    reads_only = _reads_only(cfg)
    check_output_paths(cfg, reads_only)
    if cfg.stage in DATA_STAGES:
        from comp.data.folder import checked_root

        checked_root(cfg.data.dir)  # before any work
        _note_the_demo_in_a_competition(cfg, Path.cwd())
    try:
        stage_started(started)  # time_limit counts from here
        if cfg.stage in TF_STAGES:
            quiet_tensorflow()
        module = importlib.import_module(STAGES[cfg.stage][0])
        result = _run_module(module, cfg, reads_only, created, given)
    except OSError as exc:
        if exc.errno not in _WRITE_ERRORS and not disk_full(exc):
            raise
        where = exc.filename or "the run directory"
        raise CompError(f"{where}: cannot write ({exc.strerror}); free space or fix "
                        "permissions and rerun: finished work is kept") from None
    finally:
        stage_started(None)
    log.info("stage=%s done in %.1f s", cfg.stage, time.time() - started)
    headline = getattr(module, "headline", None)  # a stage's figure to end on, if it has one
    text = headline(cfg) if headline else None
    if text:
        log.info("%s", text)
    return result


def _note_the_demo_in_a_competition(cfg, here: Path) -> None:
    """Without data.dir comp runs its bundled demo; where the working folder `here` looks
    like a competition of its own (a train CSV, or train images in their folder), one
    line says how to run that one instead (a user who typed `comp stage=all` in it got
    the demo's results and no word why)."""
    from comp.config import DEMO_DIR
    from comp.data.folder import image_folder, train_csv

    demo = (DEMO_DIR / "wbc").resolve()
    if Path(cfg.data.dir).resolve() != demo or here.resolve() == demo:
        return
    labels = train_csv(here)
    found = labels if labels.is_file() else image_folder(here, "train")
    if found.exists():
        get_logger().warning("note: no data.dir given, so this is comp's bundled demo; this "
                             "folder looks like a competition (%s): `comp stage=%s "
                             "data=folder data.dir=.` runs it", found.name, cfg.stage)


def _stage_config(overrides: list[str]):
    """The config composed from `overrides`, its stage checked to be one of STAGES."""
    from comp.config import load_config

    cfg = load_config(list(overrides))
    if cfg.stage not in STAGES:
        close = difflib.get_close_matches(str(cfg.stage), list(STAGES), n=1)
        hint = f" (did you mean stage={close[0]}?)" if close else ""
        raise CompError(f"config: unknown stage {cfg.stage!r}{hint}; choose from "
                        f"{', '.join(STAGES)}")
    return cfg


def _run_module(module, cfg, reads_only: bool, created: bool, given: frozenset[str]):
    """The stage `module`'s run(cfg) under the run directory's lock (shared by workers,
    see _is_worker), with the config recorded (`created`: the directory is new); a stage
    that only reads (`reads_only`) takes a reader's lock instead."""
    from comp.config import masked_yaml
    from comp.workspace import config_record, reader_lock, run_dir, run_lock

    if reads_only:  # nothing is written into the run directory: it may be read-only
        with reader_lock(run_dir(cfg.runs_dir, cfg.name, writable=False)), log_over_bars():
            return module.run(cfg)
    run = run_dir(cfg.runs_dir, cfg.name)
    shared = _is_worker(cfg)
    with run_lock(run, cfg.stage, shared=shared):
        if cfg.stage in CHOOSING_STAGES:
            _choose_backbones(cfg)  # before the record: it records the choice
            if not shared:  # said once, by the run a user started, not by its workers
                _say_kept_settings(cfg, given)
        # a password in tune.storage never reaches the run directory
        with config_record(run, cfg.stage, masked_yaml(cfg), created,
                           exclusive=not shared), log_over_bars():
            return module.run(cfg)


def main(argv: list[str] | None = None) -> int:
    """Run one stage from command-line arguments (default sys.argv); return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help", "stage=help") for a in argv):
        return _print(help_text())
    if any(a in ("-V", "--version") for a in argv):
        from comp import __version__

        return _print(f"comp {__version__}")
    if not argv:  # bare `comp` runs nothing: `comp stage=all` runs the demo
        return _print(usage_text())
    try:
        _check_arguments(argv)
        with _terminate_as_interrupt():
            run_stage(argv)
        return 0
    except CompError as exc:
        print(f"comp: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated)
        print(f"comp: {'terminated' if terminated else 'interrupted'}; run the same command "
              "again to resume", file=sys.stderr)
        return 128 + (signal.SIGTERM if terminated else signal.SIGINT)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a `kill`, a job scheduler's or a notebook host's stop) taken as Ctrl-C."""


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM raises Terminated in the main thread while the stage runs: finished work
    is kept, the training workers are stopped, and the run says how to resume, as on
    Ctrl-C (by default SIGTERM ended the process at once and left its workers behind).
    Only in the main thread (where Python lets a handler be set), for the stage alone."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise Terminated

    before = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def _print(text: str) -> int:
    try:
        print(text)
    except BrokenPipeError:  # piped into head
        pass
    return 0


def _check_arguments(argv: list[str]) -> None:
    """A bare word (`comp train`) or an unknown option is a CompError with what was
    probably meant, before Hydra's parser sees it."""
    for arg in argv:
        if arg.startswith("-"):
            raise CompError(f"unknown option {arg!r}; comp takes key=value settings "
                            "(comp --help lists them)")
        if "=" not in arg:
            close = difflib.get_close_matches(arg, list(STAGES), n=1)
            stage = arg if arg in STAGES else close[0] if close else None
            hint = (f"did you mean stage={stage}?" if stage
                    else f"a competition folder is data=folder data.dir={arg}"
                    if Path(arg).is_dir()
                    else "a list is one argument: write it without spaces "
                    "(backbones=[a,b]) or quote it" if arg.rstrip().endswith(("]", "}"))
                    else "settings are key=value")
            raise CompError(f"{arg!r} is not a key=value setting: {hint} "
                            "(comp --help lists the stages and keys)")


def _reads_only(cfg) -> bool:
    """predict and export with their output set elsewhere only read the run directory."""
    return (cfg.stage == "predict" and bool(cfg.predict.output)) or (
        cfg.stage == "export" and bool(cfg.export.output))


def check_output_paths(cfg, reads_only: bool) -> None:
    """Every folder or file the stage will write can be written (one CompError line)."""
    from comp.workspace import check_file_target, check_folder_target, run_root

    if not reads_only:
        check_folder_target(cfg.runs_dir, "runs_dir")
        check_folder_target(run_root(cfg.runs_dir, cfg.name), "runs_dir")
    if cfg.stage in ("submit", "all"):
        check_folder_target(cfg.submissions_dir, "submissions_dir")
    if cfg.stage == "predict" and cfg.predict.output:
        check_file_target(cfg.predict.output, "predict.output")
    if cfg.stage == "export" and cfg.export.output:
        check_folder_target(cfg.export.output, "export.output")


def _is_worker(cfg) -> bool:
    """Stages that run side by side on one run directory: tuning workers, training units."""
    return cfg.stage == "tune" or (
        cfg.stage == "train" and (cfg.only.model is not None or cfg.only.fold is not None))


def _choose_backbones(cfg) -> None:
    """`backbones=auto` becomes the chosen entries (comp.models.choice), said in one line."""
    from comp.data.prepared import load_competition
    from comp.models.choice import AUTO, resolve_auto

    if AUTO not in cfg.backbones:
        return
    choice = resolve_auto(cfg, load_competition(cfg).train["path"].tolist())
    get_logger().info("%s", choice.line())


def _say_kept_settings(cfg, given: frozenset[str]) -> None:
    """A line for each of the run's backbones whose own settings keep from it a
    model/train/augment key the overrides set (`given`, comp.config.shadowed_settings)."""
    from comp.config import shadowed_settings

    for backbone in cfg.backbones:
        if shadowed := shadowed_settings(cfg, backbone, given):
            get_logger().info(
                "%s keeps its own %s (backbone_overrides), not the run's %s; to give it the "
                "run's, add %s", backbone,
                ", ".join(f"{key}={own}" for key, (_, own, _) in shadowed.items()),
                ", ".join(f"{key}={value}" for key, (value, _, _) in shadowed.items()),
                " ".join(f"backbone_overrides.{entry}.{key}={_override_text(value)}"
                         for key, (value, _, entry) in shadowed.items()))


def _override_text(value) -> str:
    """`value` as a key=value override writes it: null, true/false, [a,b]."""
    from omegaconf import ListConfig

    if isinstance(value, ListConfig | list | tuple):
        return "[" + ",".join(map(_override_text, value)) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
