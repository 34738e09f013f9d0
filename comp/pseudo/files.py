"""Pseudo-label files of a round, per unit, from the previous round's models of that unit.

A unit is a fold of one repeat (unit u = repeat * K + fold; the folds with
data.repeats=1). Unit u's teacher (comp.pseudo.teacher) is built from its round r-1
models (from round 2 on, also its round 0 models, which the selection may keep:
submit.round_margin), none of which saw unit u's validation images; its probabilities on
the pool splits are selected by the rules of comp.pseudo.rules and written to
pseudo/round<r>/fold<u>.csv with a summary.json; pool images that are near-duplicates of
unit u's validation images are left out of unit u's file. With pseudo.distill the file
also holds unit u's training rows (split `train`) with the same teacher's in-sample
probabilities as soft targets: knowledge distillation for the round's fine-tunes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from comp.artifacts import read_json, write_csv, write_json
from comp.crashpoints import crash_point
from comp.data.folder import CompetitionFolder
from comp.data.prepared import Prepared
from comp.errors import CompError
from comp.log import get_logger
from comp.predictions import read_table
from comp.pseudo.rules import (
    Votes,
    pseudo_table,
    right_labels,
    select_by_quota,
    select_pseudo_labels,
)
from comp.pseudo.teacher import Teacher
from comp.rounds import specs_for_round
from comp.training.trainer import fold_done, split_keys
from comp.workspace import DISTILL_SPLIT


def pool_splits(splits: list[str], competition: CompetitionFolder) -> list[str]:
    """The splits pseudo-labels come from: pseudo.splits, less `test` where the folder
    labels the test images (competition.test_labels): a holdout the models never train
    on, so that its score stays that of new images, not a transductive one."""
    return [s for s in splits if not (s == "test" and competition.test_labels)]


def empty_pool(splits: list[str], competition: CompetitionFolder) -> str | None:
    """Why pseudo-labels cannot be made from `splits` (pseudo.splits) of `competition`:
    no image in the pool (pool_splits); None where it holds one."""
    pool = pool_splits(splits, competition)
    if any(len(competition.frame(s)) for s in pool):
        return None
    holdout = ("; a labelled test folder is a holdout, never in it"
               if competition.test_labels else "")
    return f"no image to label in {pool or 'the pool'} (pseudo.splits={splits}{holdout})"


def make_pseudo_labels(cfg: DictConfig, prepared: Prepared, round_: int) -> dict:
    """Vote with unit u's round r-1 models on the pseudo splits; select; write per unit."""
    rules = cfg.pseudo
    voter_ids = _voter_ids(cfg, prepared, round_)
    run, classes = prepared.run, prepared.competition.classes
    # from round 2 on, round 0's models compete as the selection lets them (pick_round)
    earlier_ids = _voter_ids(cfg, prepared, 1) if round_ >= 2 else None
    teacher = Teacher.of(cfg, prepared, voter_ids, earlier_ids)
    pool = pool_splits(list(rules.splits), prepared.competition)
    settings = _round_settings(rules, teacher, prepared, pool)
    summary_path = run.pseudo_summary(round_)
    if summary_path.exists() and read_json(summary_path).get("settings") == settings:
        return read_json(summary_path)  # same voters and rules: the files stand
    # summary.json marks the round's files complete (written last): gone while they are
    # rewritten, so a kill between two units never leaves old and new files under it
    summary_path.unlink(missing_ok=True)
    counts = prepared.folds["label"].value_counts().reindex(classes).fillna(0).to_numpy()
    truth = _truth(rules.truth)
    per_fold = {}
    twins = pool_twins(cfg, prepared, pool)
    for fold in range(prepared.n_units):
        votes = teacher.votes(fold, pool + ([DISTILL_SPLIT] if rules.distill else []))
        table = _unit_table(prepared, rules, votes.of_splits(pool), fold, twins)
        per_fold[fold] = {**_fold_summary(table, classes, truth), "teacher": votes.teacher,
                          **_checked_labels(prepared, rules, votes, fold)}
        if rules.distill:  # every training row of the unit, its teacher's soft target
            labelled = votes.of_splits([DISTILL_SPLIT])
            table = pd.concat([table, pseudo_table(labelled, classes,
                                                   np.arange(len(labelled.ids)), True,
                                                   rules.temperature)], ignore_index=True)
            per_fold[fold]["n_distill"] = len(labelled.ids)
        write_csv(run.pseudo_csv(round_, fold), table)
        crash_point(f"pseudo:{fold}")  # tests: a kill between two units' files
    summary = {"round": round_, "settings": settings, "folds": per_fold,
               "labelled_counts": dict(zip(classes, counts.tolist(), strict=True)),
               "label_precision": _pooled_precision(per_fold)}
    write_json(summary_path, summary)
    _log_round(round_, voter_ids, per_fold, summary["label_precision"])
    return summary


def _voter_ids(cfg: DictConfig, prepared: Prepared, round_: int) -> list[str]:
    """The round r-1 models that vote (pseudo.voters), each checked to be trained on
    every unit."""
    rules = cfg.pseudo
    voters = [s for s in specs_for_round(cfg, prepared, round_ - 1)
              if not rules.voters or s.backbone in rules.voters]
    if not voters:
        raise CompError(f"config: pseudo.voters={list(rules.voters)} matches no backbone "
                        f"in backbones={list(cfg.backbones)}")
    run = prepared.run
    voter_ids = [s.model_id for s in voters]
    for model_id in voter_ids:
        for fold in range(prepared.n_units):
            if not fold_done(run.fold_dir(model_id, fold), split_keys(prepared)):
                raise CompError(f"{run.fold_dir(model_id, fold)}: not trained; run stage=train "
                                f"pseudo.round={round_ - 1} first")
    return voter_ids


def _round_settings(rules, teacher: Teacher, prepared: Prepared, pool: list[str]) -> dict:
    """What a round's files depend on: its voters and teacher, the rules and the pool
    images."""
    plain = OmegaConf.to_container(rules)
    distill = {} if rules.distill is None else {"distill": rules.distill}  # older files stand
    return {"voters": teacher.voter_ids, **teacher.settings(), **{k: plain[k] for k in (
        "splits", "rule", "fraction", "min_confidence", "threshold", "top_fraction",
        "class_cap", "soft", "temperature")}, **distill, "twins": "excluded",
        "pool": {s: prepared.split_key(s) for s in pool},
        "label_precision": "the rule on the teacher's out-of-fold training rows"}


def weak_teacher(summary: dict, min_precision: float | None) -> str | None:
    """Why a round's pseudo-labels (`summary`, make_pseudo_labels's) should not train a
    round: its teacher's labels, the rule applied to the labelled rows it did not train
    on, were right less often than `min_precision` (pseudo.min_precision); None where
    they were not, or where nothing could be checked."""
    precision = summary.get("label_precision") or {}
    if min_precision is None or not precision.get("checked"):
        return None
    if precision["share"] >= min_precision:
        return None
    return (f"its teacher's labels were right on {precision['right']} of "
            f"{precision['checked']} labelled images ({precision['share']:.3f}) where the "
            f"rule ({summary['settings']['rule']}) picked them from the teacher's "
            f"out-of-fold predictions, below pseudo.min_precision={min_precision:g}")


def _checked_labels(prepared: Prepared, rules, votes: Votes, unit: int) -> dict:
    """How often unit `unit`'s teacher's labels would be right: the rule applied to its
    out-of-fold probabilities on the unit's training rows (`votes.labelled`), scored on
    their labels. Rows the teacher's models never trained on, none of the unit's
    validation rows."""
    if votes.labelled is None:
        return {}
    rows = ~prepared.unit_val_mask(unit)
    labels = prepared.labels[rows]
    counts = np.bincount(labels, minlength=len(prepared.competition.classes))
    picked = _pick(rules, votes.labelled, counts.astype(float))
    return {"checked": len(picked), "checked_right": right_labels(votes.labelled, labels,
                                                                   picked)}


def _pooled_precision(per_fold: dict) -> dict:
    """The units' checked labels together: how many, how many right, the share right
    (None where no unit checked any)."""
    checked = sum(v.get("checked", 0) for v in per_fold.values())
    right = sum(v.get("checked_right", 0) for v in per_fold.values())
    return {"checked": checked, "right": right,
            "share": right / checked if checked else None}


def _unit_table(prepared: Prepared, rules, votes: Votes, unit: int,
                twins: dict[str, list[int]]) -> pd.DataFrame:
    """Unit `unit`'s pseudo-label table: what the rules pick from its teacher's `votes`,
    less the pool images that are near-duplicates of its validation images (`twins`)."""
    classes = prepared.competition.classes
    held = prepared.unit_val_mask(unit)
    unit_counts = pd.Series(~held).groupby(prepared.folds["label"].to_numpy()).sum()
    picked = _pick(rules, votes.probs,
                   unit_counts.reindex(classes).fillna(0).to_numpy(dtype=float))
    # a pool image that is a near-duplicate of one of this unit's validation images
    # would carry its label into training: never used for this unit
    keys = [f"{s}/{i}" for s, i in zip(votes.splits, votes.ids, strict=True)]
    picked = np.array([p for p in picked
                       if not any(held[t] for t in twins.get(keys[p], ()))], dtype=int)
    return pseudo_table(votes, classes, picked, rules.soft, rules.temperature)


def _pick(rules, probs: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The rows of `probs` that pseudo.rule picks, given the unit's labelled `counts`
    per class."""
    if rules.rule == "quota":
        return select_by_quota(probs, counts / counts.sum(), rules.fraction,
                               rules.min_confidence)
    return select_pseudo_labels(probs, counts, rules.threshold, rules.top_fraction,
                                rules.class_cap)


def _log_round(round_: int, voter_ids: list[str], per_fold: dict, precision: dict) -> None:
    chosen = pd.DataFrame({k: v["per_class"] for k, v in per_fold.items()}).mean(axis=1)
    # a unit that chose no image has no confidence, and no accuracy vs truth where none of
    # its chosen images has a known label (nan in its summary): the means leave it out
    confidence = _mean_of_known([v["mean_confidence"] for v in per_fold.values()])
    scored = [v["accuracy_vs_truth"] for v in per_fold.values() if "accuracy_vs_truth" in v]
    accuracy = _mean_of_known(scored)
    teachers = pd.Series([v["teacher"] for v in per_fold.values()]).value_counts()
    get_logger().info(
        "pseudo: round %d, %d voter model(s), teacher %s; mean chosen per unit: %s; "
        "mean confidence %s%s%s", round_, len(voter_ids),
        ", ".join(f"{name} ({n} unit{'s' if n > 1 else ''})" for name, n in teachers.items()),
        ", ".join(f"{c} {n:.1f}" for c, n in chosen.items()),
        "n/a (no image chosen)" if confidence is None else f"{confidence:.3f}",
        "" if not precision["checked"] else (
            f"; right on {precision['right']} of {precision['checked']} labelled images "
            f"({precision['share']:.3f}) where the rule picks from its out-of-fold "
            "predictions"),
        "" if not scored else "; accuracy vs truth " + (
            "n/a (no chosen image has a known label)" if accuracy is None
            else f"{accuracy:.3f}"),
    )


def _mean_of_known(values: list[float]) -> float | None:
    """The mean of the values that are not nan; None where there is none."""
    known = [float(v) for v in values if not np.isnan(v)]
    return float(np.mean(known)) if known else None


def _truth(path: str | None) -> dict | None:
    if not path:
        return None
    frame = read_table(path)
    return dict(zip(frame["id"], frame["label"], strict=True))


def _fold_summary(table: pd.DataFrame, classes: list[str], truth: dict | None) -> dict:
    summary = {
        "n": len(table),
        "per_class": {c: int((table["label"] == c).sum()) for c in classes},
        "mean_confidence": float(table["confidence"].mean()) if len(table) else float("nan"),
    }
    if truth is not None:
        known = [(t, truth[i]) for i, t in zip(table["id"], table["label"], strict=True)
                 if i in truth]
        summary["accuracy_vs_truth"] = (
            float(np.mean([a == b for a, b in known])) if known else float("nan"))
    return summary



def pool_twins(cfg: DictConfig, prepared: Prepared, splits: list[str]) -> dict[str, list[int]]:
    """For each pool image ("<split>/<id>"), the training rows it is a near-duplicate of
    (comp.data.folds.near_duplicate_pairs, as the folds group them)."""
    from comp.data.folds import cross_duplicates, fingerprints
    from comp.data.prepared import HASH_SIZE

    if not cfg.data.dedup:
        return {}
    frames = {"test": prepared.competition.test, "unlabeled": prepared.competition.unlabeled}
    train = fingerprints(prepared.images("train", HASH_SIZE))
    position = {i: n for n, i in enumerate(prepared.competition.train["id"])}
    order = np.array([position[i] for i in prepared.folds["id"]])  # train.csv -> folds rows
    back = np.argsort(order)
    twins: dict[str, list[int]] = {}
    for split in splits:
        frame = frames[split]
        if frame.empty:
            continue
        pool = fingerprints(prepared.images(split, HASH_SIZE))
        for p, t in cross_duplicates(pool, train, cfg.data.dedup_max_distance,
                                     cfg.data.dedup_min_correlation):
            twins.setdefault(f"{split}/{frame['id'].iloc[p]}", []).append(int(back[t]))
    return twins
