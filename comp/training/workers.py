"""Training units on several worker processes at once (`compute.workers`).

The small models comp trains (a CNN from scratch, a fine-tune's body on cached prefix
features, a scikit-learn head) do not keep several cores busy from one process, so a
round's units are handed to N worker processes, each with cores / N threads. Before them,
one worker with every core computes the features all the units train on into the run's
caches (each model's once: the training workers only read them) and ends, so neither
the backbones it built nor its TensorFlow memory stay in any process while the units
train. Each training worker trains a unit exactly as the one-process loop does
(comp.training.trainer, under the unit's lock, resumable) and keeps one model's features
in memory between its units.

A worker is a fresh interpreter (`python -c`, running `main` here), never a fork (threads
and TensorFlow do not survive one) nor multiprocessing's spawn (which reruns the calling
script's top level, so a plain script calling comp.api without a main guard would start
itself again). Requests and replies are pickles on the worker's stdin and on a copy of its
stdout; the worker's own fd 1 points at stderr, so nothing a library prints reaches the
replies. A reply carries the `comp` log lines of its request, which the main process logs
through its own handlers (a script's or a notebook's see per-unit lines as before).
"""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from comp.errors import CompError
from comp.log import get_logger, progress

# the worker's command: the current folder ('' first on python -c's path) is dropped from
# the import path first (it may hold a folder named comp, e.g. a competition)
_WORKER_MAIN = ("import sys; sys.path[:1] = [p for p in sys.path[:1] if p]; "
                "from comp.training.workers import main; main()")
# per-library thread settings a worker's environment gets (read as each library starts)
_THREAD_VARIABLES = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS",
                     "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass(frozen=True)
class WorkerSetup:
    """What every worker of a round is given once: the prepared competition, the round
    (its pseudo-label files, `pseudo_weight` and `pseudo_distill`), TensorBoard logs or
    not, and the progress mode and log level it reports with."""

    prepared: object
    round_: int
    pseudo_weight: float
    pseudo_distill: float | None
    tensorboard: bool
    progress: str
    log_level: int


def precision_note(units: list[tuple]) -> str:
    """'; <models> in <policy>' for the units' models that do not train in float32 (a
    CPU with AMX runs small_cnn in mixed bfloat16 by default), else ''."""
    policies: dict[str, set[str]] = {}
    for spec, _ in units:
        precision = getattr(spec, "precision", "float32")
        if precision != "float32":
            policies.setdefault(precision, set()).add(spec.backbone)
    return "".join(f"; {', '.join(sorted(names))} in {policy}"
                   for policy, names in sorted(policies.items()))


def train_in_workers(units: list[tuple], setup: WorkerSetup, workers: int, cpus: int,
                     deadline=None) -> None:
    """Train `units` ((spec, unit) pairs) on `workers` worker processes sharing `cpus`
    cores, each worker keeping to one model where it can (next_unit_index). The
    `deadline` (a comp.deadline.Deadline) is checked before each unit starts; where it
    has an end (`time_limit`), the units go in the order given instead, so that the
    models finish one after another (a model with a missing fold is not collected). A
    unit that fails stops the others from starting new units; its error is raised once
    the running units have finished (a CompError stays one; a worker that died says
    how)."""
    if not units:
        return
    with Worker(setup, cpus, 0) as worker:  # the features first, with every core
        worker.request("warm", (units,), f"the features of {len(units)} units")
    threads = max(1, cpus // workers)
    queue, lock, stop = list(units), threading.Lock(), threading.Event()
    holding: dict[int, str] = {}  # worker index -> the model whose features it holds
    timed = deadline is not None and deadline.end is not None  # a time_limit: in order
    get_logger().info("train: %d units on %d workers of %d thread%s each%s", len(units),
                      workers, threads, "" if threads == 1 else "s", precision_note(units))
    bar = progress(total=len(units), desc=f"train round {setup.round_}")

    def next_unit(index: int):
        with lock:
            if stop.is_set() or not queue:
                return None
            others = {model for worker, model in holding.items() if worker != index}
            spec, unit = queue.pop(next_unit_index(
                [spec.model_id for spec, _ in queue], holding.get(index), others, timed))
            holding[index] = spec.model_id
            if deadline is not None and deadline.passed(f"{spec.model_id} fold {unit}"):
                queue.clear()
                return None
            return spec, unit

    live: dict[int, Worker] = {}  # for the main thread to stop on an interrupt

    def drive(index: int) -> None:
        try:
            with Worker(setup, threads, index) as worker:
                live[index] = worker
                while (task := next_unit(index)) is not None:
                    spec, unit = task
                    worker.request("train", task, f"{spec.model_id} fold {unit}")
                    bar.update(1)
        except BaseException:
            stop.set()
            raise

    with bar, ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(drive, index) for index in range(1, workers + 1)]
        try:
            errors = [f.exception() for f in futures]
        except BaseException:  # Ctrl-C or SIGTERM here: take no new units, and stop the
            stop.set()  # units in flight (Ctrl-C reached the workers too; SIGTERM did not)
            for worker in list(live.values()):
                worker.stop()
            raise
    raised = next((e for e in errors if e is not None), None)
    if raised is not None:
        raise raised


def next_unit_index(models: list[str], held: str | None, others: set[str],
                    in_order: bool = False) -> int:
    """Which of the pending units (their `models`, in queue order) a worker takes next:
    the first of the model whose features it holds (`held`), else the first of a model no
    other worker holds (`others`), else the first. So workers train different models side
    by side: one model's features are never in memory twice, and two units of a heavy
    model (a pixel head's 8 views) do not train at once while other work is pending.
    `in_order` (a time limit): the first, so that models finish one after another."""
    if not in_order:
        for index, model in enumerate(models):
            if model == held:
                return index
        for index, model in enumerate(models):
            if model not in others:
                return index
    return 0


class Worker:
    """One worker process with `threads` threads (`index` names it in messages; 0: the
    features worker). `request(method, args, what)` runs a comp.training.trainer
    UnitTrainer method there and returns once it is done, raising what went wrong."""

    def __init__(self, setup: WorkerSetup, threads: int, index: int):
        self.index = index
        if index > 0 and setup.progress == "bar":  # the main process draws the one bar
            setup = replace(setup, progress="off")
        package_root = str(Path(__file__).resolve().parents[2])  # comp/ is importable there
        env = {**os.environ, **dict.fromkeys(_THREAD_VARIABLES, str(threads)),
               "PYTHONPATH": os.pathsep.join(
                   p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}
        self.process = subprocess.Popen([sys.executable, "-c", _WORKER_MAIN],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self._send(setup)

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, kind, *exc) -> None:
        if kind is not None and not issubclass(kind, Exception):  # an interrupt: at once
            self.stop()
        self.close()

    def request(self, method: str, args: tuple, what: str) -> None:
        """Run the worker's `method(*args)`; `what` says what it does, for messages."""
        self._send((method, args))
        try:
            kind, *detail, logged = pickle.load(self.process.stdout)
        except (EOFError, pickle.UnpicklingError, OSError):
            code = self.process.wait()
            raise CompError(f"training worker {self.index} ended (exit code {code}) during "
                            f"{what}; rerun the same command: finished units are kept"
                            ) from None
        for level, message in logged:  # through this process's handlers
            get_logger().log(level, "%s", message)
        if kind == "error":
            raise CompError(detail[0])
        if kind == "failed":
            raise RuntimeError(f"training worker {self.index} failed on {what}:\n{detail[0]}")

    def stop(self) -> None:
        """End the worker now, its unit unfinished (an interrupt; its files are written
        atomically, so a rerun trains that unit again and nothing else)."""
        if self.process.poll() is None:
            self.process.terminate()

    def close(self) -> None:
        """Ask the worker to end, and make sure it has."""
        try:
            self._send(None)
            self.process.stdin.close()
            self.process.wait(timeout=60)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()

    def _send(self, message) -> None:
        try:
            pickle.dump(message, self.process.stdin)
            self.process.stdin.flush()
        except BrokenPipeError:
            pass  # the worker is gone; the reply's EOF says how


def serve(requests, replies, handler, logged: list | None = None) -> None:
    """A worker's loop: read (method, args) requests until None, call
    `handler.<method>(*args)` for each, and reply ("done", log), ("error", message, log)
    for a CompError or ("failed", traceback, log) for anything else, where log is what
    the request logged: the (level, message) pairs taken from `logged` (which a
    _Collected handler fills)."""
    logged = [] if logged is None else logged
    while (request := pickle.load(requests)) is not None:
        method, args = request
        try:
            getattr(handler, method)(*args)
            reply = ("done",)
        except CompError as exc:
            reply = ("error", str(exc))
        except Exception:
            reply = ("failed", traceback.format_exc())
        lines, logged[:] = list(logged), []
        pickle.dump((*reply, lines), replies)
        replies.flush()


class _Collected(logging.Handler):
    """A worker's `comp` log: (level, message) pairs kept for the next reply, so the main
    process logs them through its own handlers (a notebook's or a script's included)."""

    def __init__(self, into: list):
        super().__init__()
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append((record.levelno, record.getMessage()))


def main() -> None:
    """A worker process's entry (see _WORKER_MAIN); Ctrl-C ends it quietly (the whole
    process group has it: the parent says what to do), and so does a parent that has
    gone (its pipes closed)."""
    try:
        _serve_requests()
    except KeyboardInterrupt:
        sys.exit(130)
    except (EOFError, BrokenPipeError):  # the main process is gone: nobody to tell
        sys.exit(1)


def _serve_requests() -> None:
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a library's print goes to stderr, never into the replies
    requests = sys.stdin.buffer
    setup: WorkerSetup = pickle.load(requests)
    from comp.log import log_over_bars, quiet_libraries, quiet_tensorflow, using_progress

    quiet_tensorflow()
    logger, logged = get_logger(), []
    logger.setLevel(setup.log_level)
    logger.handlers[:] = [_Collected(logged)]  # sent back with each reply
    from comp.training.trainer import UnitTrainer

    with using_progress(setup.progress), quiet_libraries(), log_over_bars():
        serve(requests, replies, UnitTrainer(setup), logged)

