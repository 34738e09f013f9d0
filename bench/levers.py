"""Does each lever add score? comp stage=all with its defaults on a competition folder,
then one table: every baseline, model, pseudo-label round, tuned model, ensemble and the
selected pipeline, on the same folds, with bootstrap standard errors and the paired
difference to the round-0 fine-tuned model.

    python bench/levers.py DATA_DIR [--name NAME] [--weights-dir DIR]
        [--tuned N | --pseudo N | --lever KEY=VALUE]
        [--truth TEST_LABELS_CSV] [-- extra comp overrides]

The table of the defaults ends with the ensembling lever (the selection among round-0
entries with their ensembles against the selection among single models only) and, where
stage=all ran pseudo-label rounds (pseudo.rounds=1 by default), the rounds' lever: the
selected pipeline against the selection among round-0 entries, on the same rows (or a
line saying the round is off, and why: its teacher's labels below pseudo.min_precision;
`--lever pseudo.min_precision=null` then trains it and prints what it would have gained).
--tuned N / --pseudo N then run stage=all again in the same run directory with
tune.n_trials=N / pseudo.rounds=N (given last: it wins over `-- pseudo.rounds=0`,
which makes the first run round 0 alone): what the lever does
in stage=all, so its rows are on the same folds; then the table again with the lever's
paired gain (the selected pipeline with the lever against the defaults' selected
pipeline, same rows) and, for tuning, each tuned fine-tune against the untuned one. A
`--lever pseudo.<key>=...` (other than --pseudo's rounds) runs in a copy of the run
directory holding round 0 alone (`<name>-lever`: the same folds and round-0 models), so
that the defaults' round-1 models, trained under other ids, do not join its ensembles.
--truth scores each submission's test predictions against held-back labels; without it,
a labelled test folder's labels (test/<class>/<image>, read as comp reads it) are used.
    python bench/levers.py --smoke
runs the defaults' table on a tiny synthetic competition made in a temporary folder
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
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/, also when imported
from proctree import run_measured  # noqa: E402 (bench/proctree.py)

from comp.metrics import scores
from comp.predictions import combines_models
from comp.selection import bootstrap_se, nested_selection, paired_difference, shown_metrics


def run_comp(overrides: list[str]) -> tuple[float, float]:
    """Run comp in a child process; (wall seconds, peak memory MiB: the summed PSS of it
    and its training workers, bench/proctree.py)."""
    command = [sys.executable, "-m", "comp.run", *overrides]
    code, wall, peak = run_measured(command)
    if code != 0:
        raise subprocess.CalledProcessError(code, command)
    return wall, peak


def entries(run: Path) -> list[dict]:
    """Every finished prediction set of the run, with its OOF and info."""
    out = []
    for parent in ("preds", "ensemble"):
        for folder in sorted((run / parent).glob("*")):
            if not (folder / "cv.json").exists():
                continue
            info = json.loads((folder / "cv.json").read_text())
            oof = pd.read_csv(folder / "oof.csv", dtype={"id": str, "label": str},
                              keep_default_na=False)
            test = pd.read_csv(folder / "test.csv", dtype={"id": str}, keep_default_na=False)
            seconds = sum(json.loads(p.read_text()).get("seconds", 0)
                          for p in (run / "models" / folder.name).glob("fold*/metrics.json"))
            out.append({"name": info.get("model_id") or info["name"], "info": info,
                        "oof": oof, "test": test, "seconds": seconds})
    return out


def read_truth(path: Path) -> dict[str, str]:
    """{test id: label} of a truth CSV (its first two columns)."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    return dict(zip(frame.iloc[:, 0], frame.iloc[:, 1], strict=True))


def holdout_truth(data_dir: Path) -> dict[str, str] | None:
    """{test id: label} of a competition folder's labelled test images (test/<class>/
    <image>, comp's labelled holdout); None where its test labels are withheld."""
    from comp.data.folder import read_competition
    from comp.errors import CompError

    try:
        folder = read_competition(data_dir)
    except CompError as exc:  # read with overrides the run had: no test columns then
        print(f"levers.py: no test labels read ({exc})")
        return None
    if not folder.test_labels:
        return None
    return dict(zip(folder.test["id"], folder.test_labels, strict=True))


def table(run: Path, truth_labels: dict[str, str] | None) -> pd.DataFrame:
    """The lever table of a finished run directory (test columns where `truth_labels`,
    {test id: label}, are given)."""
    found = entries(run)
    classes = found[0]["info"]["classes"]
    ids = found[0]["oof"]["id"].tolist()
    y = found[0]["oof"]["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    columns = [f"p_{c}" for c in classes]
    probs = {e["name"]: e["oof"].set_index("id").loc[ids, columns].to_numpy(float)
             for e in found}
    singles = [e for e in found if e["info"]["kind"] == "single"]
    reference = next((e for e in singles if e["info"].get("model_kind") == "finetune"
                      and e["info"].get("round", 0) == 0 and not e["info"].get("tuned")),
                     singles[0])
    ref = probs[reference["name"]]
    rows = []
    folds = found[0]["oof"]["fold"].to_numpy()
    selection = json.loads((run / "selection.json").read_text())
    extra = {"selected pipeline (nested)": _selected_oof(selection, probs, folds)}
    # the same choice without the levers, on the same folds and by comp's own rule:
    # among round-0 entries only, and among round-0 single models only
    rank_by = selection.get("rank_by", selection["metric"])
    round0 = {e["name"]: probs[e["name"]] for e in found
              if e["info"].get("labels", True) and e["info"].get("round", 0) == 0}
    round0_singles = {e["name"]: probs[e["name"]] for e in singles
                      if e["info"].get("round", 0) == 0}
    ensembles = frozenset(e["name"] for e in found if combines_models(e["info"]))
    extra["round 0: selected (nested)"] = nested_selection(round0, y, folds, rank_by, None,
                                                           ensembles)[0]
    extra["round 0: selected among single models (nested)"] = nested_selection(
        round0_singles, y, folds, rank_by)[0]
    for e in [*found, *({"name": name, "info": {"kind": "selection", "round": ""},
                         "seconds": np.nan, "test": None} for name in extra)]:
        p = extra[e["name"]] if e["info"]["kind"] == "selection" else probs[e["name"]]
        labels_ok = e["info"].get("labels", True)
        cv = scores(y, p)
        row = {"entry": e["name"], "kind": e["info"].get("model_kind", e["info"]["kind"]),
               "round": e["info"].get("round", 0), "tuned": e["info"].get("tuned", False)}
        for metric, short in (("accuracy", "acc"), ("macro_f1", "f1")):
            if not labels_ok:
                row[short] = row[f"{short}_se"] = row[f"d{short}_vs_ft0"] = np.nan
                continue
            diff, diff_se = paired_difference(metric, y, p, ref)
            row[short] = cv[metric]
            row[f"{short}_se"] = bootstrap_se(metric, y, p)
            row[f"d{short}_vs_ft0"] = f"{diff:+.4f} ± {diff_se:.4f}"
        row["auc"] = cv["auc"]
        row["fold_seconds"] = e["seconds"]
        if truth_labels is not None and e["test"] is not None and labels_ok:
            test = e["test"]
            predicted = np.array(classes)[test[columns].to_numpy().argmax(1)]
            # the run's test ids are file names; a truth file may leave out the extension,
            # as Kaggle's sample submissions do
            truth = [truth_labels.get(i, truth_labels.get(Path(i).stem)) for i in test["id"]]
            row["test_acc"] = float(np.mean([t == str(c)
                                             for t, c in zip(truth, predicted, strict=True)]))
            truth_index = np.array([classes.index(str(t)) for t in truth])
            row["test_auc"] = scores(truth_index, test[columns].to_numpy(float))["auc"]
        rows.append(row)
    frame = pd.DataFrame(rows)
    levers = []
    # round 0's ensembles stay beside a later round's (each is named by its members)
    pairs = {
        "ensembling (round 0 selected, with its ensembles - singles only)":
            ("round 0: selected (nested)", "round 0: selected among single models (nested)"),
    }
    if any(e["info"].get("round", 0) > 0 for e in found):  # stage=all ran pseudo rounds
        pairs["pseudo-label rounds (selected pipeline - round 0 selected)"] = (
            "selected pipeline (nested)", "round 0: selected (nested)")
    for lever, (a, b) in pairs.items():
        for m in shown_metrics(rank_by):
            diff, se = paired_difference(m, y, extra[a], extra[b])
            levers.append(f"{lever}: {m} {diff:+.4f} ± {se:.4f}")
    levers += rounds_off(run)
    frame.attrs["levers"] = levers
    frame.attrs.update(
        y=y, reference=ref, rank_by=rank_by, selected=extra["selected pipeline (nested)"],
        chosen=selection["chosen_per_fold"],
        tuned={e["name"]: probs[e["name"]] for e in singles if e["info"].get("tuned")})
    return frame


def rounds_off(run: Path) -> list[str]:
    """A line for each pseudo-label round stage=all did not train because its teacher's
    labels were too often wrong (pseudo.min_precision): the lever off, and why, as the
    run's report says it (comp.report.rounds_off)."""
    from comp.report import rounds_off as report_rounds_off
    from comp.workspace import RunDir

    trained = {json.loads(p.read_text()).get("round", 0)
               for p in (run / "preds").glob("*/cv.json")}
    return report_rounds_off(RunDir(run), trained)


def _selected_oof(selection: dict, probs: dict, folds: np.ndarray) -> np.ndarray:
    out = np.zeros_like(next(iter(probs.values())))
    for fold, name in selection["chosen_per_fold"].items():
        out[folds == int(fold)] = probs[name][folds == int(fold)]
    return out


# comp overrides the bench sets itself: the table reads the run where these put it
OWN_KEYS = {"runs_dir": "--runs-dir", "submissions_dir": "--runs-dir", "name": "--name",
            "data": "DATA_DIR", "data.dir": "DATA_DIR"}


def check_extra(extra: list[str]) -> None:
    """Refuse, before the run, a comp override of a key the bench sets itself (a run of
    hours whose table then found no run directory where it looked)."""
    for override in extra:
        key = override.lstrip("+~").split("=", 1)[0]
        if key in OWN_KEYS:
            raise SystemExit(f"levers.py: {override!r}: give {OWN_KEYS[key]} instead of a "
                             f"comp override of {key} (the table reads the run where the "
                             "bench puts it)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--name", default=None)
    parser.add_argument("--runs-dir", default="/tmp/comp-levers/runs")
    parser.add_argument("--weights-dir", default=None)
    parser.add_argument("--tuned", type=int, default=0, metavar="TRIALS",
                        help="also tune the first backbone with this many trials per fold")
    parser.add_argument("--pseudo", type=int, default=0, metavar="ROUNDS",
                        help="then run this many pseudo-label rounds and print their gain")
    parser.add_argument("--lever", default=None, metavar="KEY=VALUE",
                        help="then run stage=all with this override (e.g. "
                             "ensemble.methods=[mean,optuna]) and print its gain")
    parser.add_argument("--truth", type=Path, default=None)
    parser.add_argument("extra", nargs="*", help="comp overrides (or after --)")
    # argparse leaves `-- overrides` unmatched once the options sit between them and
    # DATA_DIR (its positionals are matched in one go): split them off here
    argv = sys.argv[1:]
    if argv[:1] == ["--smoke"]:
        argv = smoke_arguments()
    after = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:after])
    args.extra += argv[after + 1:]
    check_extra(args.extra)
    name = args.name or args.data_dir.name
    base = ["data=folder", f"data.dir={args.data_dir}", f"name={name}",
            f"runs_dir={args.runs_dir}", f"submissions_dir={args.runs_dir}/../submissions",
            "progress=lines", *([f"weights_dir={args.weights_dir}"] if args.weights_dir else []),
            *args.extra]
    run = Path(args.runs_dir) / name
    wall, peak = run_comp(["stage=all", *base])
    # after the run, which has said in one line what is wrong with the folder, if anything
    truth = read_truth(args.truth) if args.truth else holdout_truth(args.data_dir)
    print(f"\nstage=all defaults: {wall:.0f} s wall, peak memory {peak:.0f} MiB "
          "(PSS of the process tree)")
    before = table(run, truth)
    print_table(before)
    if sum(map(bool, (args.tuned, args.pseudo, args.lever))) > 1:
        raise SystemExit("levers.py: measure one lever per run: --tuned, --pseudo or --lever")
    if args.tuned or args.pseudo or args.lever:
        # the lever as stage=all runs it, on the same folds: no copy of the chain here to
        # fall out of step with it
        lever = (f"tune.n_trials={args.tuned}" if args.tuned else
                 f"pseudo.rounds={args.pseudo}" if args.pseudo else args.lever)
        if lever.startswith("pseudo.") and not args.pseudo:
            # a lever on the rounds retrains them under new ids; in the same directory
            # the defaults' round-1 models would join its ensembles and its choice
            run = round_zero_copy(run, Path(args.runs_dir) / f"{name}-lever")
            base = [f"name={run.name}" if o == f"name={name}" else o for o in base]
        # last, so that it wins over the same key in `-- overrides`
        lever_wall, lever_peak = run_comp(["stage=all", *base, lever])
        print(f"\nstage=all {lever} (after the defaults): {lever_wall:.0f} s wall, peak "
              f"memory {lever_peak:.0f} MiB (PSS of the process tree)")
        after = table(run, truth)
        after.attrs["levers"] = selected_gain(lever, before, after)
        if args.tuned:
            after.attrs["levers"] += tuning_levers(before, after)
        print_table(after)


def round_zero_copy(run: Path, copy: Path) -> Path:
    """A copy of the finished run directory `run` at `copy` (replaced) holding its round
    0 alone: the folds, caches, round-0 models and the pseudo-label files, without the
    later rounds' models, any ensemble or the selection, which stage=all builds again."""
    from comp.artifacts import read_json
    from comp.predictions import info_round
    from comp.workspace import CV_JSON, RunDir

    if copy.exists():
        shutil.rmtree(copy)
    shutil.copytree(run, copy)
    copied = RunDir(copy)
    for preds in copied.single_sets():
        if info_round(read_json(preds / CV_JSON)) > 0:
            shutil.rmtree(preds)
            shutil.rmtree(copied.model_dir(preds.name), ignore_errors=True)
    for ensemble in copied.ensemble_sets():
        shutil.rmtree(ensemble)
    copied.selection_json.unlink(missing_ok=True)
    return copy


def smoke_arguments() -> list[str]:
    """The command line of a tiny run of the defaults (--smoke)."""
    root = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(root))
    from tests.helpers import make_competition

    work = Path(tempfile.mkdtemp(prefix="levers-smoke-"))
    atexit.register(shutil.rmtree, work, True)  # scratch: gone when the bench ends
    data = make_competition(work / "tiny")
    truth = work / "test_labels.csv"
    ids = sorted(p.name for p in (data / "test").iterdir())
    pd.DataFrame({"id": ids, "label": "alpha"}).to_csv(truth, index=False)
    return [str(data), "--runs-dir", str(work / "runs"), "--truth", str(truth),
            "--weights-dir", str(root / "comp/demo/weights"), "--", "model.image_size=32",
            "data.folds=2", "train.epochs=1", "train.batch_size=8", "quiet=true"]


def selected_gain(lever: str, before: pd.DataFrame, after: pd.DataFrame) -> list[str]:
    """Paired gain of a lever on the same rows: the selected pipeline of the run with the
    lever against the selected pipeline of the defaults, and the choices per fold."""
    y = after.attrs["y"]
    out = []
    for m in shown_metrics(after.attrs["rank_by"]):
        diff, se = paired_difference(m, y, after.attrs["selected"], before.attrs["selected"])
        out.append(f"{lever} (selected, with the lever - defaults): {m} {diff:+.4f} ± {se:.4f}")
    out.append(f"selected per fold, defaults: {before.attrs['chosen']}")
    out.append(f"selected per fold, with {lever}: {after.attrs['chosen']}")
    return out


def print_table(frame: pd.DataFrame) -> None:
    with pd.option_context("display.width", 250, "display.max_columns", 30,
                           "display.max_colwidth", 48):
        print(frame.round(4).to_string(index=False))
    print("\n".join(frame.attrs["levers"]))


def tuning_levers(before: pd.DataFrame, after: pd.DataFrame) -> list[str]:
    """Paired gain of each tuned fine-tune against the untuned round-0 fine-tune."""
    y, ref = after.attrs["y"], after.attrs["reference"]
    out = []
    for name, p in after.attrs["tuned"].items():
        for m in ("accuracy", "macro_f1"):
            diff, se = paired_difference(m, y, p, ref)
            out.append(f"tuning ({name} - untuned round-0 fine-tune): {m} {diff:+.4f} ± {se:.4f}")
    return out


if __name__ == "__main__":
    main()
