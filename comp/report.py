"""An HTML report of a run: plots (matplotlib PNG) and tables, readable from disk offline."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image
from sklearn.calibration import calibration_curve
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from comp.artifacts import atomic_path, read_json, write_text
from comp.ensemble import WEIGHT_STUDY
from comp.predictions import (
    class_indices,
    combines_models,
    info_round,
    prob_columns,
    read_prediction_set,
    read_table,
    superseded,
)
from comp.workspace import CV_JSON, FOLD_HISTORY, RunDir, fold_paths


def _save(fig, target: Path) -> str:
    """Write `fig` as a PNG (matplotlib's Agg renderer: a plain Figure needs no backend,
    so importing comp never sets matplotlib's global one)."""
    with atomic_path(target, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=90, bbox_inches="tight")
    if fig.canvas.manager is not None:  # a pyplot figure (Optuna's plots): let it go
        import matplotlib.pyplot as plt

        plt.close(fig)
    return target.name


def learning_curves(model_dir: Path, out: Path) -> str:
    """Loss, validation AUC and learning rate per epoch, one line per fold."""
    fig = Figure(figsize=(12, 3))
    axes = fig.subplots(1, 3)
    for fold_dir in fold_paths(model_dir, FOLD_HISTORY).values():
        history_csv = fold_dir / FOLD_HISTORY
        history = read_table(history_csv)
        label = history_csv.parent.name
        for ax, column in zip(axes, ("loss", "val_auc", "lr"), strict=True):
            ax.plot(history["epoch"], history[column], label=label)
            ax.set_title(column)
            ax.set_xlabel("epoch")
    axes[0].legend(fontsize=7)
    fig.suptitle(model_dir.name)
    fig.tight_layout(rect=(0, 0, 1, 0.9))  # the title above the panels' own titles
    return _save(fig, out / f"curves_{model_dir.name}.png")


def confusion_and_scores(oof: pd.DataFrame, classes: list[str], name: str, out: Path
                         ) -> tuple[str, str, str]:
    """Confusion matrix and reliability plot PNGs, and a per-class P/R/F1 HTML table."""
    y = class_indices(oof["label"], classes)
    probs = oof[prob_columns(classes)].to_numpy()
    predicted = probs.argmax(1)
    matrix = confusion_matrix(y, predicted, labels=range(len(classes)))
    fig = Figure(figsize=(4.5, 4))
    ax = fig.subplots()
    ax.imshow(matrix, cmap="Blues")
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"OOF confusion: {name}")
    confusion_png = _save(fig, out / f"confusion_{name}.png")
    fig = Figure(figsize=(4, 4))
    ax = fig.subplots()
    correct = (predicted == y).astype(int)
    frac, mean = calibration_curve(correct, probs.max(1), n_bins=8, strategy="quantile")
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.plot(mean, frac, "o-")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability: {name}")
    reliability_png = _save(fig, out / f"reliability_{name}.png")
    p, r, f, s = precision_recall_fscore_support(y, predicted, labels=range(len(classes)),
                                                 zero_division=0)
    table = pd.DataFrame({"class": classes, "precision": p, "recall": r, "f1": f,
                          "support": s}).round(3).to_html(index=False)
    return confusion_png, reliability_png, table


def confident_mistakes(oof: pd.DataFrame, classes: list[str], paths: dict[str, str],
                       out: Path, count: int = 8) -> str:
    """Thumbnails of the most confidently wrong OOF predictions, as HTML."""
    probs = oof[prob_columns(classes)].to_numpy()
    predicted = np.array(classes)[probs.argmax(1)]
    wrong = oof.assign(predicted=predicted, confidence=probs.max(1))
    wrong = wrong[wrong["predicted"] != wrong["label"]].nlargest(count, "confidence")
    cells = []
    for n, row in enumerate(wrong.itertuples()):
        thumb = out / f"thumb_{n}.png"  # ids may share a stem (a.png, a.jpg) or hold a /
        with Image.open(paths[row.id]) as img:
            img.convert("RGB").resize((96, 96)).save(thumb)
        cells.append(f"<figure><img src='{thumb.name}' width=96><figcaption>"
                     f"{html.escape(row.id)}<br>true {html.escape(row.label)}<br>"
                     f"said {html.escape(row.predicted)} {row.confidence:.2f}"
                     "</figcaption></figure>")
    return "<div class='thumbs'>" + "".join(cells) + "</div>" if cells else "<p>none</p>"


def optuna_plots(storage_url: str, out: Path) -> dict[str, list[str]]:
    """Study name -> its plots: optimisation history (and parameter importances where
    possible), for each study with a finished trial.

    Optuna's matplotlib plots are flagged experimental: that warning is ignored while
    they are drawn (warnings.catch_warnings), not for the rest of the process."""
    import warnings

    import optuna

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        return _optuna_plots(storage_url, out)


def _optuna_plots(storage_url: str, out: Path) -> list[str]:
    import optuna
    from optuna.visualization import matplotlib as ovm

    from comp.tuning.studies import optuna_storage

    plots = {}
    storage = optuna_storage(storage_url)
    for summary in optuna.get_all_study_summaries(storage):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if not complete:
            continue
        ax = ovm.plot_optimization_history(study)
        pngs = plots[summary.study_name] = [
            _save(ax.figure, out / f"optuna_history_{summary.study_name}.png")]
        if len(complete) >= 3:
            try:
                ax = ovm.plot_param_importances(study)
                pngs.append(_save(ax.figure, out / f"optuna_importance_{summary.study_name}.png"))
            except (ValueError, RuntimeError):  # too few distinct values to rank
                import matplotlib.pyplot as plt

                plt.close("all")
    return plots


def bar_chart(values: dict, title: str, target: Path) -> str:
    """A simple bar chart PNG of {label: value}."""
    fig = Figure(figsize=(6, 3))
    ax = fig.subplots()
    ax.bar(list(map(str, values)), list(values.values()))
    ax.set_title(title)
    ax.tick_params(axis="x", rotation=30)
    return _save(fig, target)


# the leaderboard columns the page shows (the CSV keeps them all): what an entry is, what
# tells it apart and its CV figures with their standard errors
_SHOWN = ("rank", "name", "settings", "kind", "round", "tuned", "n_models")


def shown_leaderboard(leaderboard: pd.DataFrame, metric: str = "accuracy",
                      rank_by: str | None = None) -> pd.DataFrame:
    """The page's leaderboard: `_SHOWN` columns, CV accuracy, macro-F1, AUC, the
    competition's `metric` and the `rank_by` score that ranks it, their standard errors
    and the differences to rank 1."""
    board = leaderboard.assign(n_models=leaderboard["models"].str.split().str.len())
    scores = {f"cv_{m}" for m in ("accuracy", "macro_f1", "auc", metric, rank_by or metric)}
    columns = [c for c in board.columns
               if c in _SHOWN or c in scores or c.startswith("diff") or c.endswith("_se")]
    return board[[c for c in _SHOWN if c in columns] + [c for c in columns
                                                        if c not in _SHOWN]]


def lever_rows(entries: dict[str, dict], rank_by: str,
               round_margin: float | None = None, averaged: bool = False) -> pd.DataFrame:
    """What each lever the run used gained, on the same folds: the nested selection (by
    the CV `rank_by` score, as stage=submit chooses) with
    the lever's entries against the same selection without them (paired bootstrap
    standard errors). `entries`: name -> {"oof": frame, "classes": [...], "info": cv.json}.
    Levers: ensembling (ensembles vs single models), each pseudo-label round r (entries
    of rounds <= r vs rounds < r, each model at its latest round there: a round's models
    replace their teachers, comp.predictions.superseded, and round 0's pick stays where
    the round's is not ahead by `round_margin` standard errors, comp.selection.pick_round;
    `averaged`: each model's fits averaged over the rounds stand for it, as stage=submit
    chose under pseudo.average_fits), tuning (tuned vs untuned models)."""
    from comp.selection import nested_selection, paired_difference, shown_metrics

    if not entries:
        return pd.DataFrame()
    first = next(iter(entries.values()))
    classes, oof = first["classes"], first["oof"]
    ids = oof["id"].tolist()
    y = class_indices(oof["label"], classes)
    folds = oof["fold"].to_numpy()
    probs = {name: e["oof"].set_index("id").loc[ids, prob_columns(classes)].to_numpy(float)
             for name, e in entries.items() if e["info"].get("labels", True)}
    info = {name: entries[name]["info"] for name in probs}

    def current(keep) -> dict[str, np.ndarray]:
        names = {n: i for n, i in info.items() if keep(i)}
        gone = superseded(names, averaged)
        return {n: probs[n] for n in names if n not in gone}

    def round_zero(keep) -> dict[str, np.ndarray]:
        return {n: probs[n] for n, i in info.items() if keep(i) and not info_round(i)}

    rounds = sorted({info_round(i) for i in info.values()})
    levers = [("ensembling", lambda i: True, lambda i: not combines_models(i))]
    levers += [(f"pseudo-label round {r}", lambda i, r=r: info_round(i) <= r,
                lambda i, r=r: info_round(i) < r) for r in rounds if r > 0]
    levers.append(("tuning", lambda i: True, lambda i: not i.get("tuned", False)))
    ensembles = frozenset(n for n in probs if combines_models(info[n]))
    rows = []
    for lever, keep_with, keep_without in levers:
        a, b = current(keep_with), current(keep_without)
        if not b or set(a) == set(b):
            continue  # the run did not use this lever
        # each side chosen as stage=submit chooses: round 0's pick stays unless a
        # pseudo-label round's is ahead by round_margin (comp.selection.pick_round)
        with_oof, _ = nested_selection(a, y, folds, rank_by, classes, ensembles,
                                       round_zero(keep_with), round_margin)
        without_oof, _ = nested_selection(b, y, folds, rank_by, classes, ensembles,
                                          round_zero(keep_without), round_margin)
        row = {"lever": lever, "entries with": len(a), "entries without": len(b)}
        for m in shown_metrics(rank_by):  # rank 1's score first
            diff, se = paired_difference(m, y, with_oof, without_oof, classes=classes)
            row[f"gain {m}"] = f"{diff:+.4f} ± {se:.4f}"
        rows.append(row)
    return pd.DataFrame(rows)


def build_report(run: RunDir, leaderboard: pd.DataFrame, paths: dict[str, str],
                 storage_url: str | None, headline: str | None = None) -> Path:
    """Write the run's report/index.html with its PNGs; return the page's path.
    `headline`, shown first under the title: the selected pipeline's nested CV."""
    out = run.report_dir
    out.mkdir(parents=True, exist_ok=True)
    selection = run.selection_json
    record = read_json(selection) if selection.exists() else {}
    metric = record.get("metric", "accuracy")
    rank_by = record.get("rank_by", metric)  # selection.json before submit.rank_by
    sets = {p.name: p for p in run.single_sets()}
    trained_rounds = {info_round(read_json(p / CV_JSON)) for p in sets.values()}
    ensembles = {f"ensemble-{p.name}": p for p in run.ensemble_sets()}
    sections = [*_leaderboard_section(leaderboard, metric, rank_by),
                *_lever_section({**sets, **ensembles}, rank_by, record.get("round_margin"),
                                record.get("average_fits", False),
                                rounds_off(run, trained_rounds)),
                *_oof_sections(leaderboard, sets, ensembles, paths, out),
                *_curve_section(run, sets, out),
                *_pseudo_sections(run, trained_rounds, out),
                *_weight_sections(ensembles, out),
                *_tuning_section(storage_url, out)]
    write_text(out / "index.html", _page(run.root.name, headline, sections))
    return out / "index.html"


def _leaderboard_section(leaderboard: pd.DataFrame, metric: str, rank_by: str) -> list[str]:
    return ["<h2>Leaderboard</h2>",
            "<div class='wide'>" + shown_leaderboard(leaderboard, metric, rank_by).to_html(
                index=False) + "</div>",
            f"<p>Ranked by CV {rank_by} (submit.rank_by); the selected pipeline's "
            "nested CV above chooses the same way.</p>"]


def rounds_off(run: RunDir, trained_rounds: set[int]) -> list[str]:
    """A line for each pseudo-label round stage=all left untrained for its teacher's
    labels (pseudo.min_precision), none of `trained_rounds`: the lever off, and why (the
    report's levers section, bench/levers.py)."""
    lines = []
    for round_ in run.pseudo_rounds():
        note = run.pseudo_not_trained(round_)
        if round_ not in trained_rounds and note.exists() and "min_precision" in (
                skipped := read_json(note)):
            lines.append(f"pseudo-label round {round_}: off; {skipped_round(skipped)}")
    return lines


def _lever_section(folders: dict[str, Path], rank_by: str, round_margin: float | None,
                   averaged: bool, off: list[str]) -> list[str]:
    """The levers table of the run's finished prediction sets (`folders`: name -> set),
    and the levers stage=all left `off` (one line each, with the reason)."""
    found = {}
    for name, folder in folders.items():
        prediction = read_prediction_set(folder)
        found[name] = {"oof": prediction.oof, "classes": prediction.classes,
                       "info": prediction.info}
    levers = lever_rows(found, rank_by, round_margin, averaged)
    off_lines = [f"<p>{html.escape(line)}.</p>" for line in off]
    if levers.empty:
        return ["<h2>Levers: what each gained on the same folds</h2>", *off_lines] if off else []
    return ["<h2>Levers: what each gained on the same folds</h2>", *off_lines,
            "<p>The nested selection (rank 1 chosen on the other folds) with the "
            "lever's entries against the same selection without them; paired "
            "bootstrap standard errors over the images. They leave out the training's "
            "own randomness: fits of one fine-tune with other seeds differed by up to "
            "14 images of 2,600 on comp's bench folders, so a lever within a few "
            "images of zero is not settled by one run. A pseudo-label round's models "
            "replace their earlier rounds' (the leaderboard ranks the latest, or, for a "
            "fine-tune, the mean of its fits in every round where pseudo.average_fits "
            "is on), except that round 0's pick stays rank 1 where the round's is not "
            "clearly ahead (submit.round_margin).</p>",
            levers.to_html(index=False)]


def _oof_sections(leaderboard: pd.DataFrame, sets: dict[str, Path],
                  ensembles: dict[str, Path], paths: dict[str, str], out: Path) -> list[str]:
    """Out-of-fold plots, scores and confident mistakes of the best-ranked single model
    and the best-ranked ensemble."""
    ranked = [n for n in leaderboard["name"] if n in sets or n in ensembles]
    best_single = next((n for n in ranked if n in sets), None)
    best_ensemble = next((n for n in ranked if n in ensembles), None)
    sections = []
    for name in filter(None, (best_single, best_ensemble)):
        prediction = read_prediction_set(sets.get(name) or ensembles[name])
        confusion, reliability, table = confusion_and_scores(prediction.oof,
                                                             prediction.classes, name, out)
        sections += [f"<h2>{html.escape(name)}: out-of-fold</h2>",
                     f"<img src='{confusion}'> <img src='{reliability}'>", table,
                     "<h3>Most confidently wrong</h3>",
                     confident_mistakes(prediction.oof, prediction.classes, paths, out)]
    return sections


def _curve_section(run: RunDir, sets: dict[str, Path], out: Path) -> list[str]:
    sections = ["<h2>Learning curves</h2>"]
    for name in sets:
        if fold_paths(run.model_dir(name), FOLD_HISTORY):  # fine-tuned only
            sections.append(f"<img src='{learning_curves(run.model_dir(name), out)}'>")
    return sections


def _pseudo_sections(run: RunDir, trained_rounds: set[int], out: Path) -> list[str]:
    """Each pseudo-label round's labels per class, and whether models were trained on
    them (`trained_rounds`: the rounds of the run's finished prediction sets)."""
    sections = []
    for round_ in run.pseudo_rounds():
        summary_path = run.pseudo_summary(round_)
        if not summary_path.exists():
            continue  # its files are being written, or their writing was interrupted
        summary = read_json(summary_path)
        counts = pd.DataFrame({k: v["per_class"] for k, v in summary["folds"].items()})
        name = run.pseudo_dir(round_).name
        png = bar_chart(counts.mean(axis=1).to_dict(), f"pseudo-labels, round {round_}: "
                        "mean chosen per fold", out / f"pseudo_{name}.png")
        sections += [f"<h2>Pseudo-labels, round {round_}</h2>",
                     *_untrained_round(run, round_, trained_rounds),
                     f"<img src='{png}'>", counts.T.to_html()]
    return sections


def _untrained_round(run: RunDir, round_: int, trained_rounds: set[int]) -> list[str]:
    """A paragraph saying why no model learned from round `round_`'s labels; none when
    one did."""
    if round_ in trained_rounds:
        return []
    note = run.pseudo_not_trained(round_)
    skipped = read_json(note) if note.exists() else None
    if skipped and "min_precision" in skipped:
        return [f"<p><b>No model was trained on these labels</b>: {skipped_round(skipped)}."
                " Lower pseudo.min_precision (or set it to null) and rerun to train the "
                "round: finished work is kept.</p>"]
    if skipped:
        return [f"<p><b>No model was trained on these labels</b>: the round should have "
                f"taken about {skipped['estimated_seconds']} s and "
                f"time_limit={skipped['time_limit']} s left {skipped['seconds_left']} s, "
                "so stage=all did not start it. Raise time_limit (or unset it) and rerun: "
                "finished work is kept.</p>"]
    return [f"<p><b>No model has been trained on these labels yet</b> (run stage=train "
            f"pseudo.round={round_}).</p>"]


def skipped_round(skipped: dict) -> str:
    """Why stage=all left a round untrained for its teacher's labels (`skipped`: the
    round's not_trained.json), in words."""
    return (f"its teacher's labels were right on {skipped['right']} of {skipped['checked']} "
            f"labelled images ({skipped['share']:.3f}) it had not trained on, below "
            f"pseudo.min_precision={skipped['min_precision']:g}, so stage=all did not train it")


def _weight_sections(ensembles: dict[str, Path], out: Path) -> list[str]:
    sections = []
    for name, folder in ensembles.items():
        weights = read_json(folder / CV_JSON)["weights"] or {}  # a stacker has none
        if len(set(weights.values())) > 1:  # learned weights (greedy, weighted, optuna)
            png = bar_chart({str(k): v for k, v in weights.items()}, f"{name}: weights",
                            out / f"weights_{name}.png")
            sections += [f"<h2>Ensemble weights: {html.escape(name)}</h2>", f"<img src='{png}'>"]
    return sections


def _tuning_section(storage_url: str | None, out: Path) -> list[str]:
    """The run's Optuna studies: the fine-tunes' tuning studies, then the Optuna
    ensemble's weight studies, each under its own heading."""
    if not storage_url:
        return []
    plots = optuna_plots(storage_url, out)
    weights = {name: pngs for name, pngs in plots.items() if WEIGHT_STUDY in name}
    tuning = {name: pngs for name, pngs in plots.items() if name not in weights}
    sections = []
    for studies, heading, text in (
            (tuning, "Tuning", "The fine-tunes' Optuna studies (tune.n_trials), one per "
             "backbone and outer fold; each trial scored by an inner K-fold of that fold's "
             "training rows (tune.inner_folds)."),
            (weights, "Optuna ensemble: the weight studies", "One study per outer fold's "
             "training rows (its nested CV) and one on every row (the submission's "
             "weights); each trial is a set of member weights, scored by the weighted "
             "mean's log loss on those rows.")):
        if studies:
            sections += [f"<h2>{heading}</h2>", f"<p>{text}</p>",
                         *(f"<img src='{png}'>" for pngs in studies.values() for png in pngs)]
    return sections


def _page(run_name: str, headline: str | None, sections: list[str]) -> str:
    """The report's HTML page: title, `headline` (if any), then the sections."""
    return ("<!doctype html><html><head><meta charset='utf-8'><title>comp report</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:2px 6px}img{max-width:100%}"
            ".wide{max-width:100%;overflow-x:auto}.wide table{font-size:12px}"
            ".wide td:nth-child(2){word-break:break-all;min-width:14em}"
            ".thumbs figure{display:inline-block;margin:4px;font-size:11px}</style></head>"
            f"<body><h1>comp report: {html.escape(run_name)}</h1>"
            + (f"<p class='headline'><b>{html.escape(headline)}</b></p>" if headline else "")
            + "\n".join(sections) + "</body></html>")
