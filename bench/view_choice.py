"""The cost and the decisions of `augment.choose_views`' inner probe, per unit, at each
stopping tolerance of its logistic regression (comp.training.viewchoice.PROBE_TOL).

    python bench/view_choice.py DATA_DIR [--name NAME] [--runs-dir DIR]
        [--backbones B ...] [--tols 1e-4 1e-3] [--weights-dir DIR]

For every backbone entry (default: mobilenet_025 at its default cut and at block12, the
two fine-tunes `backbones=auto` trains with the bundled weights) and every fold, the
probe's descriptors of the unit's training rows (as comp.training.trainer.unit_views
samples them) are scored under each tolerance: the inner log loss of training on all
views and of the image alone (comp.training.viewchoice.probe_losses), the choice and
the seconds. The
features come from the run directory's cache (computed on first use). The last lines
say whether every tolerance chose as the first one did, the largest change of a loss
and the smallest margin between the two choices.
    python bench/view_choice.py --smoke
runs it on a tiny synthetic competition (bundled weights, 32 px, 2 folds): seconds, for
CI, not a measurement.
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", nargs="?")
    parser.add_argument("--name", default="view-choice")
    parser.add_argument("--runs-dir", default="/tmp/comp-view-choice/runs")
    parser.add_argument("--backbones", nargs="+",
                        default=["mobilenet_025", "mobilenet_025-block12"])
    parser.add_argument("--tols", nargs="+", type=float, default=[1e-4, 1e-3])
    parser.add_argument("--weights-dir", default=None)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    extra = []
    if args.smoke:
        args, extra = smoke(parser)
    if args.data_dir is None:
        parser.error("give DATA_DIR (or --smoke)")
    frame = measure(args, extra)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(frame.to_string(index=False))
    summary(frame, args.tols)


def measure(args: argparse.Namespace, extra: list[str]) -> pd.DataFrame:
    """One row per (backbone entry, fold, tolerance)."""
    from comp.config import load_config
    from comp.data.prepared import prepare
    from comp.rounds import specs_for_round
    from comp.training.trainer import FeaturedModel, view_arms
    from comp.training.viewchoice import ALL, IDENTITY, probe_losses, unit_descriptors

    cfg = load_config(["data=folder", f"data.dir={args.data_dir}", f"name={args.name}",
                       f"runs_dir={args.runs_dir}", f"backbones=[{','.join(args.backbones)}]",
                       "classic.models=[]", "quiet=true",
                       *([f"weights_dir={args.weights_dir}"] if args.weights_dir else []),
                       *extra])
    prepared = prepare(cfg)
    labels, groups = prepared.labels, prepared.folds["group"].to_numpy()
    rows_out = []
    for spec in specs_for_round(cfg, prepared, 0):
        featured = FeaturedModel(spec.for_fold(0), prepared)
        for unit in range(prepared.n_units):
            fold_spec = spec.for_fold(unit)
            rows = prepared.unit_train_rows(unit)
            if len(rows) > 2000:  # as unit_views samples them
                rows = np.sort(np.random.default_rng(fold_spec.train.seed).choice(
                    rows, 2000, replace=False))
            arms = view_arms(featured.plan, fold_spec.augment)
            descriptors = unit_descriptors(featured.features["train"], rows)
            for tol in args.tols:
                started = time.perf_counter()
                losses = probe_losses(descriptors, arms, labels[rows], groups[rows],
                                      fold_spec.train.seed, tol)
                rows_out.append({
                    "model": spec.model_id, "unit": unit, "tol": tol, "rows": len(rows),
                    "loss_all": round(losses[ALL], 4), "loss_image": round(losses[IDENTITY], 4),
                    "choice": IDENTITY if losses[IDENTITY] < losses[ALL] else ALL,
                    "seconds": round(time.perf_counter() - started, 1)})
    return pd.DataFrame(rows_out)


def summary(frame: pd.DataFrame, tols: list[float]) -> None:
    """Whether each tolerance chose as the first, and by how much the losses moved."""
    first = frame[frame["tol"] == tols[0]].set_index(["model", "unit"])
    for tol in tols:
        other = frame[frame["tol"] == tol].set_index(["model", "unit"])
        same = int((other["choice"] == first["choice"]).sum())
        moved = float(np.max(np.abs(other[["loss_all", "loss_image"]].to_numpy()
                                    - first[["loss_all", "loss_image"]].to_numpy())))
        margin = float(np.min(np.abs(other["loss_all"] - other["loss_image"])))
        print(f"tol={tol:g}: mean {other['seconds'].mean():.1f} s a unit; "
              f"{same}/{len(other)} units choose as tol={tols[0]:g}; "
              f"largest loss change {moved:.4f}; smallest margin {margin:.4f}")


def smoke(parser: argparse.ArgumentParser) -> tuple[argparse.Namespace, list[str]]:
    """A tiny synthetic competition (--smoke)."""
    from tests.helpers import make_competition

    work = Path(tempfile.mkdtemp(prefix="view-choice-smoke-"))
    atexit.register(shutil.rmtree, work, True)  # scratch: gone when the bench ends
    data = make_competition(work / "tiny")
    args = parser.parse_args([str(data), "--runs-dir", str(work / "runs"), "--weights-dir",
                              str(ROOT / "comp/demo/weights"), "--backbones", "mobilenet_025"])
    return args, ["model.image_size=32", "data.folds=2"]


if __name__ == "__main__":
    main()
