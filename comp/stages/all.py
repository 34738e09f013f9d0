"""stage=all: the whole chain, each stage skipping work that is already done."""

from __future__ import annotations

from omegaconf import DictConfig

from comp.artifacts import write_json
from comp.data.prepared import prepare
from comp.deadline import Deadline
from comp.errors import CompError
from comp.log import get_logger
from comp.pseudo.files import empty_pool, make_pseudo_labels, weak_teacher
from comp.rounds import round_seconds, round_trained, train_round, unit_workers
from comp.stages import ensemble, report, submit
from comp.tuning.search import tune_backbone, tuned_backbones

headline = submit.headline  # stage=all ends with the selected pipeline's nested CV


def run(cfg: DictConfig):
    """prepare -> train (round 0) -> [pseudo -> train (round r), unless its teacher's
    labels are right less often than pseudo.min_precision] x pseudo.rounds ->
    tune -> train with the tuned settings (last round) -> ensemble (round 0's models too,
    where a later round finished) -> submit -> report."""
    prepared = prepare(cfg)
    deadline = Deadline.start(cfg.time_limit)
    train_round(cfg, prepared, 0, deadline)
    last = cfg.pseudo.rounds
    empty = empty_pool(list(cfg.pseudo.splits), prepared.competition) if last else None
    if empty:
        get_logger().info("pseudo-label rounds skipped: %s", empty)
        last = 0
    for round_ in range(1, last + 1):
        if deadline.passed("pseudo-label round"):
            break
        summary = make_pseudo_labels(cfg, prepared, round_)
        not_trained = prepared.run.pseudo_not_trained(round_)
        weak = weak_teacher(summary, cfg.pseudo.min_precision)
        if weak and round_trained(cfg, prepared, round_):  # by a run with a lower minimum
            get_logger().info("pseudo-label round %d: %s; its models, trained by an earlier "
                              "run, stay in the choice", round_, weak)
        elif weak:
            get_logger().info("pseudo-label round %d skipped: %s; wrong labels would teach "
                              "the round the teacher's mistakes (lower pseudo.min_precision, "
                              "or set it to null, to train it)", round_, weak)
            write_json(not_trained, {"min_precision": cfg.pseudo.min_precision,  # the report's
                                     **summary["label_precision"]})
            break
        seconds, workers = round_seconds(cfg, prepared, round_), unit_workers(cfg)
        if seconds is not None:
            seconds /= workers  # units run side by side (compute.workers)
        if not deadline.allows(seconds, f"pseudo-label round {round_}'s training",
                               f"round {round_ - 1}'s units, scaled by their rows, "
                               f"on {workers} worker{'s' if workers > 1 else ''}"):
            write_json(not_trained, {"time_limit": cfg.time_limit,  # for the report
                                     "estimated_seconds": round(seconds),
                                     "seconds_left": round(deadline.seconds_left())})
            break
        not_trained.unlink(missing_ok=True)
        train_round(cfg, prepared, round_, deadline)
    if cfg.tune.n_trials > 0 and not deadline.passed("tuning"):
        chosen = tuned_backbones(cfg)
        for backbone in chosen:
            tune_backbone(cfg, prepared, backbone)
        tuned = cfg.copy()
        tuned.params, tuned.backbones = "best", chosen
        train_round(tuned, prepared, last, deadline)
    if cfg.ensemble.methods and ensemble.has_work(cfg, prepared.run):
        ensemble.run(cfg, prepared)  # round 0's ensembles too, where a later round finished
    if deadline.reached and not prepared.run.prediction_sets():
        raise CompError(f"time_limit={cfg.time_limit} s was spent before any model finished "
                        "(nothing to ensemble or submit); raise time_limit or unset it, and "
                        "rerun: finished units are kept")
    board = submit.run(cfg, prepared.competition)  # the folder read once: one warning
    report.run(cfg, prepared)
    return board
