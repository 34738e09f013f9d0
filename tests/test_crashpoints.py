"""COMP_CRASH_AT: a named unit ends the process at once with exit code 137; others pass."""

import subprocess
import sys

import pytest

from comp.crashpoints import ENV, EXIT_CODE, crash_point
from tests.helpers import ROOT

PROGRAM = ("from comp.crashpoints import crash_point\n"
           "for unit in ('trial:0', 'fold:0', 'fold:1'):\n"
           "    print(unit, flush=True)\n"
           "    crash_point(unit)\n"
           "print('finished', flush=True)\n")


@pytest.mark.parametrize("wanted, code, last", [
    (None, 0, "finished"), ("fold:1", EXIT_CODE, "fold:1"), ("fold:*", EXIT_CODE, "fold:0"),
    ("trial:3, fold:1", EXIT_CODE, "fold:1"), ("trial:1", 0, "finished"),
])
def test_the_named_unit_exits_hard(wanted, code, last):
    env = {"PYTHONPATH": str(ROOT), **({ENV: wanted} if wanted else {})}
    done = subprocess.run([sys.executable, "-c", PROGRAM], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == code, done.stderr
    assert done.stdout.split()[-1] == last


def test_unset_or_empty_is_a_no_op(monkeypatch):
    exits = []
    monkeypatch.setattr("os._exit", exits.append)  # a real exit would end pytest itself
    for value in (None, "", " "):
        if value is None:
            monkeypatch.delenv(ENV, raising=False)
        else:
            monkeypatch.setenv(ENV, value)
        crash_point("fold:0")
    assert exits == []
    monkeypatch.setenv(ENV, "fold:0")
    crash_point("fold:0")
    assert exits == [EXIT_CODE]  # the same patched exit does see a named unit
