"""stage=submit: a submission per finished model/ensemble in submissions/<name>/, ranked
in its leaderboard.csv (each model at its latest pseudo-label round:
comp.predictions.superseded)."""

from __future__ import annotations

from omegaconf import DictConfig

from comp.artifacts import read_json, write_json
from comp.data.folder import CompetitionFolder
from comp.data.prepared import load_competition
from comp.errors import CompError
from comp.log import get_logger
from comp.predictions import current_sets, is_ensemble, read_prediction_set, round_zero_sets
from comp.selection import (
    HEADLINE_METRICS,
    leaderboard_uncertainty,
    ranking_metric,
    selection_headline,
)
from comp.submission import (
    SubmissionTarget,
    entry_settings,
    holdout_scores,
    submission_metric,
    values_note,
    write_leaderboard,
    write_submission,
)
from comp.workspace import SPEC_JSON, leaderboard_path, run_dir, submissions_folder


def run(cfg: DictConfig, competition: CompetitionFolder | None = None):
    """Write submissions for every finished prediction set of this experiment.
    `competition`: the folder as stage=all read it (None: read here)."""
    run = run_dir(cfg.runs_dir, cfg.name)
    finished = run.prediction_sets()
    if not finished:
        raise CompError(f"{run.root}: no finished models to submit; run stage=train first")
    averaged = cfg.pseudo.average_fits  # each model's fits averaged over the rounds, if any
    sets = current_sets(finished, averaged)
    if len(sets) < len(finished):
        get_logger().info("submit: %d entries of earlier pseudo-label rounds are replaced by "
                          "their later rounds' models, or by their fits averaged over the "
                          "rounds (the report's levers table compares them)",
                          len(finished) - len(sets))
    competition = load_competition(cfg) if competition is None else competition
    folder = submissions_folder(cfg.submissions_dir, cfg.name)
    metric = submission_metric(cfg.submit.metric, competition)
    rank_by = ranking_metric(metric, cfg.submit.rank_by)
    predictions = [read_prediction_set(s) for s in sets]
    if not any(p.gives_labels for p in predictions):
        raise CompError(f"{run.root}: no entry gives labels; add a model or another method")
    earlier = [read_prediction_set(s) for s in round_zero_sets(finished)]
    uncertainty = leaderboard_uncertainty(predictions, metric, rank_by, earlier,
                                          cfg.submit.round_margin)
    selected = uncertainty["__selected__"]
    kept = [p for p in earlier if p.name == selected["final_choice"]
            and p.name not in {q.name for q in predictions}]
    if kept:
        get_logger().info("submit: round 0's %s stays rank 1: the pseudo-label round's best "
                          "is not ahead by more than %s paired standard errors "
                          "(submit.round_margin)", kept[0].name, cfg.submit.round_margin)
    shown = [*predictions, *kept]
    specs = {p.name: read_json(run.model_dir(p.name) / SPEC_JSON) for p in shown
             if not is_ensemble(p.info)
             and (run.model_dir(p.name) / SPEC_JSON).exists()}
    settings = entry_settings(specs, {p.name: p.info for p in shown if is_ensemble(p.info)})
    # rank averages are not probabilities: never turned into a submission (AUC in cv.json)
    target = SubmissionTarget(folder, cfg.name, competition, metric, rank_by)
    rows = [write_submission(target, p, settings.get(p.name, ""))
            for p in shown if p.gives_labels]
    for row in rows:
        row.update(uncertainty.get(row["name"], {}))
    board = write_leaderboard(leaderboard_path(cfg.submissions_dir, cfg.name), rows, rank_by,
                              selected["final_choice"])
    best = board.iloc[0]
    held_out = holdout_scores(competition, next(p for p in shown if p.name == best["name"]))
    if held_out is not None:  # after the choice: these labels never reach it
        selected = {**selected, "holdout": {m: held_out[m] for m in
                                            (*HEADLINE_METRICS, metric, "n")}}
    selected["average_fits"] = averaged  # for the report's levers and predict's default
    write_json(run.selection_json, selected)
    note = values_note(competition, metric, cfg.data.get("submission_values", "auto"))
    if note:
        get_logger().info(note)
    get_logger().info("submit: rank 1 (picked by CV %s) %s (%s) CV %s %.4f -> %s ; "
                      "leaderboard: %s",
                      rank_by, best["name"], best["kind"], metric, best[f"cv_{metric}"],
                      folder / best["file"], leaderboard_path(cfg.submissions_dir, cfg.name))
    if held_out is not None:
        get_logger().info("submit: rank 1 on the labelled test images (%d, test/<class>/): "
                          "%s %.4f (CV %.4f)", held_out["n"], metric, held_out[metric],
                          best[f"cv_{metric}"])
    return board



def headline(cfg: DictConfig) -> str | None:
    """The run's last log line: the selected pipeline's nested CV (selection.json)."""
    path = run_dir(cfg.runs_dir, cfg.name).selection_json
    return selection_headline(read_json(path)) if path.exists() else None
