"""Does a fine-tune recipe option add score? One fine-tuned backbone trained with the
defaults and once per option, in one run directory (the same folds), then one table:
CV accuracy and macro-F1 of each with bootstrap standard errors, the paired difference
to the defaults on the same rows, and the seconds its folds took.

    python bench/recipe.py DATA_DIR [--name NAME] [--runs-dir DIR] [--backbone B]
        [--weights-dir DIR] [--seeds N] --option KEY=VALUE[,KEY=VALUE] [--option ...]
        [-- extra comp overrides for every row]

Each --option is one row: comma-separated overrides applied together (e.g.
`--option train.mixup=0.2` or `--option train.epoch_choice=inner,train.average_top=3`).
Every row trains with `stage=train backbones=[B] classic.models=[]` and the -- overrides;
a row finished by an earlier run of the same run directory is read back, not retrained.
With `--seeds N` each row is also trained with `train.seed=1..N-1`: a line for each seed
(how far one fit's CV moves with its random steps alone) and one for the mean of the N
fits' probabilities (a seed ensemble), all paired against the defaults' first seed.
    python bench/recipe.py --smoke
runs two rows of two seeds on a tiny synthetic competition in a temporary folder
(bundled weights, 32 px, 2 folds, 1 epoch): seconds, for CI, not a measurement.
"""

from __future__ import annotations

import argparse
import atexit
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from comp.metrics import scores
from comp.selection import bootstrap_se, paired_difference


def train(overrides: list[str]) -> tuple[str, float]:
    """Train one row's fine-tune (or find it finished); (its model id, wall seconds)."""
    from comp.config import load_config
    from comp.data.prepared import prepare
    from comp.rounds import specs_for_round

    started = time.time()
    subprocess.run([sys.executable, "-m", "comp.run", "stage=train", *overrides], check=True)
    cfg = load_config(overrides)
    (spec,) = specs_for_round(cfg, prepare(cfg), 0)
    return spec.model_id, time.time() - started


def model_row(run: Path, model_id: str) -> tuple[np.ndarray, np.ndarray, list[str], float]:
    """(labels as indices, OOF probabilities, classes, seconds of its folds)."""
    folder = run / "preds" / model_id
    info = json.loads((folder / "cv.json").read_text())
    classes = info["classes"]
    oof = pd.read_csv(folder / "oof.csv", dtype={"id": str, "label": str},
                      keep_default_na=False).sort_values("id")
    y = oof["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    seconds = sum(json.loads(p.read_text()).get("seconds", 0)
                  for p in (run / "models" / model_id).glob("fold*/metrics.json"))
    return y, oof[[f"p_{c}" for c in classes]].to_numpy(float), classes, seconds


def seed_mean(run: Path, model_ids: list[str]) -> tuple[np.ndarray, np.ndarray, list[str],
                                                         float]:
    """model_row of the mean of several fits' probabilities (their seconds summed)."""
    fits = [model_row(run, model_id) for model_id in model_ids]
    y, _, classes, _ = fits[0]
    assert all((fit[0] == y).all() for fit in fits), "fits must be on the same images"
    return (y, np.mean([fit[1] for fit in fits], axis=0), classes,
            sum(fit[3] for fit in fits))


def table(rows: list[tuple[str, list[str]]], run: Path) -> pd.DataFrame:
    """One line per (label, model ids: the mean of their probabilities), paired against
    the first (the defaults)."""
    found = {label: seed_mean(run, model_ids) for label, model_ids in rows}
    y, reference = found[rows[0][0]][0], found[rows[0][0]][1]
    out = []
    for label, (labels, probs, _, seconds) in found.items():
        assert (labels == y).all(), "rows must be on the same images"
        cv = scores(y, probs)
        line = {"option": label}
        for metric, short in (("accuracy", "acc"), ("macro_f1", "f1")):
            diff, se = paired_difference(metric, y, probs, reference)
            line[short] = round(cv[metric], 4)
            line[f"{short}_se"] = round(bootstrap_se(metric, y, probs), 4)
            line[f"d{short}_vs_defaults"] = f"{diff:+.4f} ± {se:.4f}"
        line["auc"] = round(cv["auc"], 4)
        line["fold_seconds"] = round(seconds, 1)
        out.append(line)
    return pd.DataFrame(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path, nargs="?")
    parser.add_argument("--name", default="recipe")
    parser.add_argument("--runs-dir", default="/tmp/comp-recipe/runs")
    parser.add_argument("--backbone", default="mobilenet_025")
    parser.add_argument("--weights-dir", default=None)
    parser.add_argument("--option", action="append", default=[])
    parser.add_argument("--seeds", type=int, default=1,
                        help="fits of each row (train.seed 0..N-1) and their mean")
    parser.add_argument("--smoke", action="store_true")
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    if args.smoke:
        args, extra = smoke(parser)
    if args.data_dir is None:
        parser.error("give DATA_DIR (or --smoke)")
    common = ["data=folder", f"data.dir={args.data_dir}", f"name={args.name}",
              f"runs_dir={args.runs_dir}",
              f"backbones=[{args.backbone}]", "classic.models=[]",
              *([f"weights_dir={args.weights_dir}"] if args.weights_dir else []), *extra]
    run = Path(args.runs_dir) / args.name
    rows = []
    for label, option in [("defaults", []), *((o, o.split(",")) for o in args.option)]:
        model_ids = []
        for seed in range(max(1, args.seeds)):
            name = f"{label}, seed {seed}" if args.seeds > 1 else label
            seeded = [f"train.seed={seed}"] if seed else []  # seed 0: the row as it is
            model_id, seconds = train([*common, *option, *seeded])
            model_ids.append(model_id)
            rows.append((name, [model_id]))
            print(f"recipe: {name}: {model_id} ({seconds:.0f} s wall)", flush=True)
        if len(model_ids) > 1:
            rows.append((f"{label}, mean of {len(model_ids)} seeds", model_ids))
    frame = table(rows, run)
    with pd.option_context("display.width", 250, "display.max_columns", 20,
                           "display.max_colwidth", 60):
        print(frame.to_string(index=False))


def smoke(parser: argparse.ArgumentParser) -> tuple[argparse.Namespace, list[str]]:
    """Two rows of two seeds each on a tiny synthetic competition (--smoke)."""
    root = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(root))
    from tests.helpers import make_competition

    work = Path(tempfile.mkdtemp(prefix="recipe-smoke-"))
    atexit.register(shutil.rmtree, work, True)  # scratch: gone when the bench ends
    data = make_competition(work / "tiny")
    args = parser.parse_args([str(data), "--runs-dir", str(work / "runs"), "--weights-dir",
                              str(root / "comp/demo/weights"),
                              "--option", "train.mixup=0.2,train.cutmix=1.0",
                              "--seeds", "2"])
    return args, ["model.image_size=32", "data.folds=2", "train.epochs=1",
                  "train.batch_size=8", "quiet=true"]


if __name__ == "__main__":
    main()
