"""The rules a config value can follow, in the style of scikit-learn's
`_parameter_constraints`: each field of `comp.config`'s schema names its rule beside it,

    lr: float = setting(0.01, POSITIVE)  # initial learning rate
    optimizer: str = setting("sgd", Options("sgd", "adam", "adamw"))

and `comp.config.validate` checks them all before any work, raising one `CompError` line
such as `config: train.lr=-1: must be > 0`. `describe()` gives the allowed values as text
(for --help and the README).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import ListConfig

from comp.errors import CompError


class Constraint:
    """A rule a config value must follow: `check(value)` returns None or what is wrong."""

    def check(self, value: Any) -> str | None:  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass(frozen=True)
class Interval(Constraint):
    """A number in [low, high] (None: unbounded); `closed` is both|left|right|neither."""

    low: float | None
    high: float | None
    closed: str = "both"
    integer: bool = False

    def check(self, value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"must be a number, {self.describe()}"
        if self.integer and not float(value).is_integer():
            return "must be a whole number"
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be a finite number, {self.describe()}"
        left = self.closed in ("both", "left")
        right = self.closed in ("both", "right")
        if self.low is not None and (value < self.low if left else value <= self.low):
            return f"must be {'>=' if left else '>'} {self.low}"
        if self.high is not None and (value > self.high if right else value >= self.high):
            return f"must be {'<=' if right else '<'} {self.high}"
        return None

    def describe(self) -> str:
        kind = "a whole number" if self.integer else "a number"
        if self.low is not None and self.high is not None:
            lo, hi = "[" if self.closed in ("both", "left") else "(", \
                "]" if self.closed in ("both", "right") else ")"
            return f"{kind} in {lo}{self.low}, {self.high}{hi}"
        if self.low is not None:
            return f"{kind} {'>=' if self.closed in ('both', 'left') else '>'} {self.low}"
        if self.high is not None:
            return f"{kind} {'<=' if self.closed in ('both', 'right') else '<'} {self.high}"
        return kind


def Int(low: float | None = None, high: float | None = None, closed: str = "both") -> Interval:
    """A whole number in [low, high]."""
    return Interval(low, high, closed, integer=True)


@dataclass(frozen=True)
class Options(Constraint):
    """One of a fixed set of values (compared as text, so true/false/True match)."""

    values: tuple

    def __init__(self, *values: Any):
        object.__setattr__(self, "values", tuple(values))

    def check(self, value: Any) -> str | None:
        if str(value) in {str(v) for v in self.values} or str(value).lower() in {
                str(v).lower() for v in self.values if isinstance(v, bool)}:
            return None
        return f"use one of {self.describe()}"

    def describe(self) -> str:
        return "|".join(str(v) for v in self.values)


@dataclass(frozen=True)
class Optional(Constraint):
    """None, or a value that follows `inner`."""

    inner: Constraint

    def check(self, value: Any) -> str | None:
        return None if value is None else self.inner.check(value)

    def describe(self) -> str:
        return f"None or {self.inner.describe()}"


@dataclass(frozen=True)
class Each(Constraint):
    """A list whose every entry follows `inner` (entries named in the message)."""

    inner: Constraint
    unique: bool = True

    def check(self, value: Any) -> str | None:
        if not isinstance(value, (list, tuple, ListConfig)):
            return f"must be a list [a,b,...] of {self.inner.describe()}"
        for entry in value:
            problem = self.inner.check(entry)
            if problem:
                return f"entry {entry!r}: {problem}"
        if self.unique and len({str(v) for v in value}) < len(value):
            return "has a repeated entry"
        return None

    def describe(self) -> str:
        return f"a list of {self.inner.describe()}"


@dataclass(frozen=True)
class ExistingFile(Constraint):
    """None, or a path to an existing file."""

    def check(self, value: Any) -> str | None:
        if value is None or Path(str(value)).is_file():
            return None
        return "file not found; give the path of an existing file"

    def describe(self) -> str:
        return "an existing file"


@dataclass(frozen=True)
class NotAFolder(Constraint):
    """None, a path that is not an existing folder (a file to write), or a folder written
    with a trailing slash (a file is written into it)."""

    def check(self, value: Any) -> str | None:
        text = str(value)
        if value is not None and Path(text).is_dir() and not text.endswith(("/", os.sep)):
            return ("is an existing folder; give a file path such as out.csv, or the folder "
                    "with a trailing / to write <input>__<using>.csv into it")
        return None

    def describe(self) -> str:
        return "None, a file path, or a folder ending in /"


@dataclass(frozen=True)
class AnyOf(Constraint):
    """A value that follows at least one of `options`."""

    options: tuple

    def __init__(self, *options: Constraint):
        object.__setattr__(self, "options", tuple(options))

    def check(self, value: Any) -> str | None:
        problems = [c.check(value) for c in self.options]
        if any(p is None for p in problems):
            return None
        others = " or ".join(c.describe() for c in self.options[:-1])
        return f"{problems[-1]} (or use {others})"

    def describe(self) -> str:
        return " or ".join(c.describe() for c in self.options)


@dataclass(frozen=True)
class NonEmpty(Constraint):
    """A list with at least one entry, each following `inner`."""

    inner: Constraint

    def check(self, value: Any) -> str | None:
        if isinstance(value, (list, tuple, ListConfig)) and not value:
            return "needs at least one entry"
        return Each(self.inner).check(value)

    def describe(self) -> str:
        return f"a non-empty list of {self.inner.describe()}"


@dataclass(frozen=True)
class LowHigh(Constraint):
    """None, or a [low, high] pair of finite numbers with low < high."""

    def check(self, value: Any) -> str | None:
        if value is None:
            return None
        numbers = Each(Interval(None, None), unique=False)
        if (numbers.check(value) or len(value) != 2 or not value[0] < value[1]):
            return "give [low,high], two numbers with low < high"
        return None

    def describe(self) -> str:
        return "None or [low,high] with low < high"


@dataclass(frozen=True)
class Text(Constraint):
    """Non-empty text."""

    def check(self, value: Any) -> str | None:
        if not isinstance(value, str) or not value.strip():
            return "must be non-empty text"
        return None

    def describe(self) -> str:
        return "non-empty text"


FRACTION = Interval(0, 1)
POSITIVE = Interval(0, None, closed="neither")
SEED = Int(0)



def check_setting(key: str, value: Any, constraint: Constraint) -> None:
    """Raise one CompError line (`config: <key>=<value>: <what is wrong>`) where `value`
    breaks `constraint`."""
    problem = constraint.check(value)
    if problem:
        shown = ("[" + ",".join(map(str, value)) + "]" if isinstance(value, list)
                 else repr(value) if isinstance(value, str) else value)
        raise CompError(f"config: {key}={shown}: {problem}")
