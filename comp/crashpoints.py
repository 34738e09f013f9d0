"""Named crash points: make comp die hard at a chosen unit of work, for tests.

`COMP_CRASH_AT` holds one or more unit names, comma-separated; shell-style wildcards are
allowed (`fold:*`). Units that comp names:

- `fold:<k>`   right after a training fold's metrics.json is written (the fold is done, the
               model's prediction set may not be);
- `ensemble:<method>` after an ensemble's state.joblib is written, before its prediction
               files and cv.json;
- `pseudo:<u>` right after unit u's pseudo-label file of a round is written, before
               the round's summary.json;
- `trial:<n>`  at the start of Optuna trial number n of a study (a RUNNING trial is left
               behind, as when a tuning worker is killed).

The process then ends with `os._exit(137)`: no cleanup, no `finally`, no atexit, as after
`kill -9`. Unset (the normal case), a crash point costs one environment lookup.
"""

from __future__ import annotations

import os
from fnmatch import fnmatchcase

ENV = "COMP_CRASH_AT"
EXIT_CODE = 137  # what a shell reports for a process killed by SIGKILL


def crash_point(name: str) -> None:
    """Exit the process at once when COMP_CRASH_AT names the unit `name`."""
    wanted = os.environ.get(ENV)
    if wanted and any(fnmatchcase(name, pattern.strip()) for pattern in wanted.split(",")):
        os._exit(EXIT_CODE)
