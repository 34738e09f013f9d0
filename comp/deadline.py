"""`time_limit`: when the running stage began, and the deadline that follows from it."""

from __future__ import annotations

import time

from comp.log import get_logger

_stage_started: float | None = None  # when the running stage began (comp.run.run_stage)


def stage_started(when: float | None) -> None:
    """Record when the stage began: its `time_limit` counts from then (None: from each
    Deadline.start)."""
    global _stage_started
    _stage_started = when


class Deadline:
    """`time_limit`: once spent, no new training unit or stage starts; what finished
    still goes into ensembles and submissions."""

    def __init__(self, end: float | None, seconds: float | None = None):
        self.end = end
        self.seconds = seconds
        self.reached = False  # whether passed() stopped something

    @classmethod
    def start(cls, seconds: float | None) -> Deadline:
        """The deadline `seconds` after the stage began (see stage_started)."""
        began = _stage_started if _stage_started is not None else time.time()
        return cls(None if not seconds else began + float(seconds), seconds)

    def passed(self, what: str) -> bool:
        """True (and one log line saying what is skipped) once the time is spent."""
        if self.end is None or time.time() < self.end:
            return False
        self.reached = True
        get_logger().info("time_limit reached: %s not started", what)
        return True

    def seconds_left(self) -> float | None:
        """Seconds until the deadline (0 once passed); None without a limit."""
        return None if self.end is None else max(self.end - time.time(), 0.0)

    def allows(self, seconds: float | None, what: str, basis: str) -> bool:
        """False (and one log line saying what is skipped and why) when `what`, expected
        to take `seconds` (`basis` says where the figure comes from), would not finish
        before the deadline; True without a limit or an estimate."""
        left = self.seconds_left()
        if left is None or seconds is None or seconds <= left:
            return True
        self.reached = True
        get_logger().info("time_limit: %s not started: it should take about %.0f s (%s) "
                          "and %.0f s are left", what, seconds, basis, left)
        return False
