"""Tuning throughput with 1, 2 and 4 worker processes on one PostgreSQL study.

usage: python bench/tune_workers.py [n_trials_per_study] [worker counts...]
Starts a throwaway PostgreSQL server (Debian's `postgresql` package) and a synthetic
tiny competition, then for each worker count runs that many `stage=tune` processes on
one experiment (2 folds = 2 studies) and prints a table: wall seconds, trials per
minute (from launch to the last exit, and over the trials' own span, which leaves out
each process's TensorFlow start), trials lost or duplicated.
`python bench/tune_workers.py --smoke`: 1 trial per study, 2 workers (CI: a minute or two;
where PostgreSQL is missing it says so and exits 0, as its tests skip).
"""

from __future__ import annotations

import atexit
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import make_competition, tiny_overrides  # noqa: E402
from tests.pg_server import missing_reason, postgres_server  # noqa: E402


def run_workers(n_workers: int, n_trials: int, url: str, data: Path, out: Path) -> dict:
    name = f"w{n_workers}"
    overrides = tiny_overrides(out, data, **{
        "name": name, "tune.storage": url, "tune.n_trials": str(n_trials),
        "tune.epochs": "3", "tune.params": "[model.dropout,train.lr]",
        "tune.pruner": "none"})
    # prepare once, so each worker's time is tuning only
    subprocess.run([sys.executable, "-m", "comp.run", "stage=prepare", *overrides], cwd=ROOT,
                   check=True, capture_output=True)
    started = time.time()
    workers = [subprocess.Popen([sys.executable, "-m", "comp.run", "stage=tune", *overrides],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
               for _ in range(n_workers)]
    for worker in workers:
        _, err = worker.communicate()
        if worker.returncode:
            raise SystemExit(err.decode()[-2000:])
    wall = time.time() - started
    trials, lost, duplicated = [], 0, 0
    # studies are named <name>-<backbone>-<folds fingerprint>-fold<k>: one per fold
    names = sorted(n for n in optuna.get_all_study_names(storage=url)
                   if n.startswith(f"{name}-small_cnn-"))
    if len(names) != 2:
        raise SystemExit(f"bench/tune_workers.py: expected 2 studies of {name}, found {names}")
    for study_name in names:
        study = optuna.load_study(study_name=study_name, storage=url)
        got = study.get_trials(deepcopy=False)
        numbers = [t.number for t in got]
        duplicated += len(numbers) - len(set(numbers))
        done = [t for t in got if t.state.is_finished()]
        lost += n_trials - len(done)
        trials += done
    span = (max(t.datetime_complete for t in trials)
            - min(t.datetime_start for t in trials)).total_seconds()
    return {"workers": n_workers, "trials": len(trials), "wall_s": wall,
            "per_min_wall": 60 * len(trials) / wall, "per_min_span": 60 * len(trials) / span,
            "ran_on": len({t.user_attrs.get("worker") for t in trials}),
            "lost": lost, "duplicated": duplicated}


def main() -> None:
    smoke = sys.argv[1:2] == ["--smoke"]
    argv = ["1", "2"] if smoke else sys.argv[1:]
    n_trials = int(argv[0]) if argv else 12
    counts = [int(a) for a in argv[1:]] or [1, 2, 4]
    reason = missing_reason()
    if reason and smoke:
        print(f"bench/tune_workers.py --smoke: skipped: {reason}")
        return
    if reason:
        raise SystemExit(f"bench/tune_workers.py: {reason}")
    out = Path(tempfile.mkdtemp(prefix="comp-workers-"))
    atexit.register(shutil.rmtree, out, True)  # scratch: gone when the bench ends
    data = make_competition(out / "data")
    rows = []
    with postgres_server() as url:
        for n in counts:
            rows.append(run_workers(n, n_trials, url, data, out))
    base = rows[0]["per_min_span"]
    print(f"\n{n_trials} trials per study x 2 studies, small_cnn 32 px, 3 epochs per trial\n")
    print("| workers | trials | wall s | trials/min (launch to exit) | trials/min (trial span)"
          " | vs 1 worker | processes that ran trials | lost | duplicated |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['workers']} | {r['trials']} | {r['wall_s']:.1f} | {r['per_min_wall']:.1f} | "
              f"{r['per_min_span']:.1f} | {r['per_min_span'] / base:.2f}x | {r['ran_on']} | "
              f"{r['lost']} | {r['duplicated']} |")


if __name__ == "__main__":
    main()
