"""The command line: python -m comp.run stage=<name> [key=value ...]

Errors in the user's input or config print one line (`comp: error: ...`) and exit 2.
"""

from __future__ import annotations

import dataclasses
import errno
import importlib
import sys
import time
from pathlib import Path

from comp.log import get_logger, quiet_tensorflow

quiet_tensorflow()

from comp.errors import CompError  # noqa: E402
from comp.stages import STAGES  # noqa: E402

_WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EPERM}


def help_text() -> str:
    """Usage, the stages and every config key with its default."""
    from comp.config import CONFIG_DIR, Config

    lines = [
        "usage: python -m comp.run stage=<stage> [key=value ...]",
        "",
        "stages:",
        *[f"  {name:<10} {text}" for name, (_, text) in STAGES.items()],
        "",
        "config groups (configs/): "
        + ", ".join(
            f"{g.name}=[{'|'.join(sorted(p.stem for p in g.glob('*.yaml')))}]"
            for g in sorted(CONFIG_DIR.iterdir()) if g.is_dir()
        ),
        "",
        "keys (default):",
        *_keys(Config()),
    ]
    return "\n".join(lines)


def config_reference() -> str:
    """The README's config reference: every key and its default, from the schema."""
    from comp.config import Config

    return "```\n" + "\n".join(line.strip() for line in _keys(Config())) + "\n```"


def _keys(node, prefix: str = "") -> list[str]:
    out = []
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            out += _keys(value, f"{prefix}{f.name}.")
        else:
            out.append(f"  {prefix}{f.name}={value}")
    return out


def main(argv: list[str] | None = None) -> int:
    """Run one stage; return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help", "stage=help") for a in argv):
        try:
            print(help_text())
        except BrokenPipeError:  # piped into head
            pass
        return 0
    log = get_logger()
    try:
        from comp.config import load_config

        cfg = load_config(argv)
        if cfg.stage not in STAGES:
            raise CompError(f"config: unknown stage {cfg.stage!r}; choose from {', '.join(STAGES)}")
        log.setLevel("WARNING" if cfg.quiet else "INFO")
        started = time.time()
        _save_config(cfg)
        module = importlib.import_module(STAGES[cfg.stage][0])
        from comp.workspace import run_dir, run_lock

        with run_lock(run_dir(cfg.runs_dir, cfg.name), cfg.stage, shared=_is_worker(cfg)):
            module.run(cfg)
        log.info("stage=%s done in %.1f s", cfg.stage, time.time() - started)
        return 0
    except CompError as exc:
        print(f"comp: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        if exc.errno not in _WRITE_ERRORS:
            raise
        where = exc.filename or "the run directory"
        print(f"comp: error: {where}: cannot write ({exc.strerror}); free space or fix "
              "permissions and rerun: finished work is kept", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("comp: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


def _is_worker(cfg) -> bool:
    """Stages that run side by side on one run directory: tuning workers, training units."""
    return cfg.stage == "tune" or (
        cfg.stage == "train" and (cfg.only.model is not None or cfg.only.fold is not None))


def _save_config(cfg) -> None:
    from comp.artifacts import write_text
    from comp.config import masked_yaml
    from comp.workspace import run_dir

    run = run_dir(cfg.runs_dir, cfg.name)
    text = masked_yaml(cfg)  # a password in tune.storage never reaches the run directory
    write_text(run.root / "config.yaml", text)
    write_text(Path(run.root) / "configs" / f"{cfg.stage}.yaml", text)


if __name__ == "__main__":
    sys.exit(main())
