"""comp side by side with the seed notebook recipe: same data, weights, image size, folds.

usage: python bench/compare_seed.py DATA_DIR WEIGHTS_DIR SEED_RECIPE_PY [size] [overrides...]

Runs the seed recipe (its own script, unmodified; its OOF array is captured in memory)
and `python -m comp.run stage=all` from a cold run directory, each as a child process
timed with the peak memory (summed PSS) of its process tree (bench/proctree.py), and
prints one table of CV scores and costs.
`python bench/compare_seed.py --smoke` runs the same code on a tiny synthetic competition
(bundled weights, 32 px, 2 folds, 1 epoch) against a stand-in seed recipe that predicts
the class prior: seconds, for CI, not a comparison.
"""

from __future__ import annotations

import atexit
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/, also when imported
from proctree import run_measured  # noqa: E402 (bench/proctree.py)

from comp.metrics import scores

ROOT = Path(__file__).resolve().parent.parent

SEED_CHILD = r"""
import importlib.util, sys, numpy as np
spec = importlib.util.spec_from_file_location("seed_recipe", sys.argv[1])
seed = importlib.util.module_from_spec(spec); spec.loader.exec_module(seed)
made = []
class _NumPy:
    def __getattr__(self, name): return getattr(np, name)
    def zeros(self, *a, **k):
        out = np.zeros(*a, **k); made.append(out); return out
seed.np = _NumPy()
sys.argv = ["seed_recipe.py"] + sys.argv[2:-1]
seed.main()
np.save(OUT, [m for m in made if m.ndim == 2][1])  # made in order: test_pred, oof
"""


def run_child(command: list[str], env: dict | None = None) -> tuple[float, float, str]:
    """Run `command`; return (wall seconds, peak PSS MiB of its process tree, output)."""
    with tempfile.TemporaryFile("w+") as log:
        code, wall, peak = run_measured(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.seek(0)
        output = log.read()
    if code != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{output[-2000:]}")
    return wall, peak, output


# the seed recipe's interface (argv, the two np.zeros arrays in order) without its model
SMOKE_SEED = """
import sys
from pathlib import Path
import numpy as np
import pandas as pd

def main():
    data = Path(sys.argv[1])
    train = pd.read_csv(data / "train.csv")
    test = pd.read_csv(data / "sample_submission.csv")
    prior = train.iloc[:, 1].value_counts(normalize=True).sort_index().to_numpy()
    test_pred = np.zeros((len(test), len(prior)))
    oof = np.zeros((len(train), len(prior)))
    test_pred += prior
    oof += prior
"""


def smoke_arguments(work: Path) -> list[str]:
    """DATA_DIR WEIGHTS_DIR SEED_RECIPE_PY size overrides... of a tiny run (--smoke)."""
    sys.path.insert(0, str(ROOT))
    from tests.helpers import make_competition

    data = make_competition(work / "data")
    (work / "seed_stub.py").write_text(SMOKE_SEED)
    return [str(data), str(ROOT / "comp/demo/weights"), str(work / "seed_stub.py"), "32",
            "data.folds=2", "train.epochs=1", "train.batch_size=8", "quiet=true"]


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="compare_seed_"))
    atexit.register(shutil.rmtree, work, True)  # scratch: gone when the bench ends
    argv = smoke_arguments(work) if sys.argv[1:2] == ["--smoke"] else sys.argv[1:]
    if len(argv) < 3:
        raise SystemExit(__doc__)
    data, weights_dir, seed_py = argv[:3]
    size = int(argv[3]) if len(argv) > 3 else 128
    extra = argv[4:]
    train = pd.read_csv(Path(data) / "train.csv")
    classes = sorted(train.label.unique())
    y = train.label.map({c: i for i, c in enumerate(classes)}).to_numpy()
    weights = Path(weights_dir) / "mobilenet_2_5_224_tf_no_top.h5"

    oof_path = work / "seed_oof.npy"
    child = SEED_CHILD.replace("OUT", repr(str(oof_path)))
    seed_wall, seed_rss, _ = run_child(
        [sys.executable, "-c", child, seed_py, data, str(weights), str(work / "seed.csv"),
         str(size), "5", "30", "end"])
    seed_scores = scores(y, np.load(oof_path))

    rows = [("seed recipe (train 5 folds)", seed_scores, seed_wall, seed_rss)]
    common = ["data=folder", f"data.dir={data}", f"weights_dir={weights_dir}",
              f"submissions_dir={work / 'submissions'}", f"model.image_size={size}", *extra]
    for stage, label, only in (
        ("train", "comp stage=train mobilenet_025 fine-tuned (round 0)",
         ["backbones=[mobilenet_025]", "classic.models=[]"]),
        ("all", "comp stage=all defaults (fine-tunes, classic heads, ensembles, a pseudo round "
                "where its teacher is right often enough), "
                "selected pipeline (nested)", []),
    ):
        name = f"bench_{stage}"
        wall, rss, _ = run_child([sys.executable, "-m", "comp.run", f"stage={stage}",
                                  f"name={name}", f"runs_dir={work / 'runs'}", *common, *only])
        board = _leaderboard(work, name) if stage == "all" else _preds_board(work, name)
        best = board.iloc[0]
        figures = {m: best[f"cv_{m}"] for m in ("accuracy", "macro_f1", "balanced_accuracy",
                                                "auc", "log_loss")}
        if stage == "all":  # the honest figure of choosing rank 1, not rank 1's own CV
            selection = json.loads((work / "runs" / name / "selection.json").read_text())
            figures = selection["cv"]
        rows.append((f"{label}: rank 1 = {best['name']}", figures, wall, rss))
        if stage == "all":
            print(board[["rank", "kind", "name", "round", "tuned", "cv_accuracy",
                         "cv_macro_f1", "cv_auc"]].to_string(index=False))

    print(f"\ndata {data}, MobileNet 0.25 ImageNet, {size} px, 5 folds; extra: {extra or '-'}")
    print("| pipeline | CV accuracy | macro-F1 | balanced acc | macro AUC | log loss "
          "| wall s | peak memory MiB (PSS) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, s, wall, rss in rows:
        print(f"| {name} | {s['accuracy']:.4f} | {s['macro_f1']:.4f} | "
              f"{s['balanced_accuracy']:.4f} | {s['auc']:.4f} | {s['log_loss']:.4f} | "
              f"{wall:.1f} | {rss:.0f} |")
    for name, s, wall, _ in rows[1:]:
        print(f"| {name.split(':')[0]} / seed | {s['accuracy'] / seed_scores['accuracy']:.3f}x "
              f"| {s['macro_f1'] / seed_scores['macro_f1']:.3f}x | | | | "
              f"{wall / seed_wall:.2f}x | |")


def _preds_board(work: Path, name: str) -> pd.DataFrame:
    rows = []
    for path in (work / "runs" / name / "preds").glob("*/cv.json"):
        cv = json.loads(path.read_text())
        rows.append({"name": cv["model_id"], **{f"cv_{k}": v for k, v in cv["cv"].items()}})
    return pd.DataFrame(rows)


def _leaderboard(work: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(work / "submissions" / name / "leaderboard.csv")

if __name__ == "__main__":
    main()
