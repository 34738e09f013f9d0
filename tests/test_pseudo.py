"""Pseudo-label selection rules, and that no fold's validation images feed its labels."""

import dataclasses
import json
import shutil
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from comp.pseudo.rules import Votes, pseudo_table, right_labels, select_pseudo_labels, sharpen
from tests.helpers import CLASSES, P_COLS, leaderboard, round_entries, run_comp, tiny_overrides

PROBS = np.array([
    [0.95, 0.05], [0.90, 0.10], [0.85, 0.15], [0.60, 0.40],  # class 0
    [0.10, 0.90], [0.30, 0.70],                                # class 1
])


def test_threshold():
    picked = select_pseudo_labels(PROBS, np.array([100, 100]), 0.8, 1.0, 1.0)
    assert picked.tolist() == [0, 1, 4, 2]  # most confident first, 0.60 and 0.70 out


def test_top_fraction_per_class():
    picked = select_pseudo_labels(PROBS, np.array([100, 100]), 0.5, 0.5, 1.0)
    assert sorted(picked.tolist()) == [0, 1, 4]  # top half of class 0 (2 of 4), of class 1 (1)


def test_class_cap_relative_to_labelled_counts():
    picked = select_pseudo_labels(PROBS, np.array([4, 100]), 0.5, 1.0, 0.5)
    assert sorted(picked.tolist()) == [0, 1, 4, 5]  # class 0 capped at 0.5 * 4 = 2


def test_sharpen_and_soft_targets():
    soft = sharpen(np.array([[0.6, 0.4]]), 0.5)
    assert soft[0, 0] == pytest.approx(0.36 / 0.52)
    table = pseudo_table(Votes(["a", "b"], ["unlabeled", "test"], PROBS[[0, 4]], ["m1"]),
                         ["x", "y"], np.array([0, 1]), soft=True, temperature=1.0)
    assert table[["p_x", "p_y"]].to_numpy() == pytest.approx(PROBS[[0, 4]])
    hard = pseudo_table(Votes(["a"], ["unlabeled"], PROBS[[5]], ["m1"]), ["x", "y"],
                        np.array([0]), soft=False, temperature=1.0)
    assert hard[["p_x", "p_y"]].to_numpy().tolist() == [[0.0, 1.0]]
    assert hard.label.tolist() == ["y"] and hard.confidence.tolist() == [0.7]


@pytest.mark.slow
def test_round_trip_and_no_fold_sees_its_own_validation_images(tmp_path, trained):
    overrides = tiny_overrides(tmp_path, trained, **{  # round 0 is trained there
        "pseudo.rounds": "1", "pseudo.rule": "threshold", "pseudo.threshold": "0.0",
        "pseudo.class_cap": "10", "pseudo.splits": "[unlabeled,test]"})
    assert run_comp("stage=all", *overrides) == 0
    run = tmp_path / "runs" / "tiny"
    folds = pd.read_csv(run / "folds.csv")
    board = leaderboard(tmp_path)
    # the round-1 fit joins its round-0 teacher's: their mean (pseudo.average_fits) stands
    # for the one model, also where no other model is there to ensemble
    current = round_entries(board)
    assert current["kind"].tolist() == ["ensemble"]
    (fits,) = [json.loads(p.read_text()) for p in (run / "ensemble").glob("fits-*/cv.json")]
    assert current["name"].item() == fits["name"]
    round0, round1 = fits["models"]
    assert fits["fits_of"] == round0
    assert json.loads((run / "preds" / round1 / "cv.json").read_text())["lineage"] == round0
    spec1 = json.loads((run / "models" / round1 / "spec.json").read_text())
    assert spec1["pseudo"]["round"] == 1
    for fold in (0, 1):
        table = pd.read_csv(run / "pseudo" / "round1" / f"fold{fold}.csv")
        # only images without labels, voted by this fold's round-0 model alone
        assert not set(table.id) & set(folds.id)
        assert set(table.sources) == {round0}
        fold_dir = run / "models" / round0 / f"fold{fold}"
        vote = pd.concat([pd.read_csv(fold_dir / "unlabeled.csv"),
                          pd.read_csv(fold_dir / "test.csv")]).set_index("id")
        assert np.allclose(vote.loc[table.id, P_COLS].max(axis=1), table.confidence)
        # the round-1 model of this fold trained on exactly these pseudo-labelled ids
        metrics = json.loads((run / "models" / round1 / f"fold{fold}" / "metrics.json").read_text())
        assert sorted(metrics["pseudo_ids"]) == sorted(table.id)
        assert metrics["n_pseudo"] == len(table) == 10
        # and validated on labelled images of its own fold only
        val = pd.read_csv(run / "models" / round1 / f"fold{fold}" / "val.csv")
        assert sorted(val.id) == sorted(folds.id[folds.fold == fold])
    summary = json.loads((run / "pseudo" / "round1" / "summary.json").read_text())
    assert summary["folds"]["0"]["n"] == 10


@pytest.mark.slow
def test_round_two_is_taught_by_round_zero_or_round_one_as_the_selection_would_pick(
        tmp_path, trained):
    overrides = tiny_overrides(tmp_path, trained, **{  # round 0 is trained there
        "pseudo.rounds": "2", "pseudo.rule": "threshold", "pseudo.threshold": "0.0",
        "pseudo.class_cap": "10"})
    assert run_comp("stage=all", *overrides) == 0
    run = tmp_path / "runs" / "tiny"
    by_round = {(json.loads(p.read_text())["pseudo"] or {}).get("round", 0): p.parent.name
                for p in (run / "models").glob("*/spec.json")}
    assert sorted(by_round) == [0, 1, 2]
    summary = json.loads((run / "pseudo" / "round2" / "summary.json").read_text())
    settings = summary["settings"]
    assert settings["voters"] == [by_round[1]] and settings["round_zero"] == [by_round[0]]
    assert settings["round_margin"] == 0.5
    for unit in ("0", "1"):
        teacher = summary["folds"][unit]["teacher"]
        assert teacher in (by_round[0], by_round[1])
        table = pd.read_csv(run / "pseudo" / "round2" / f"fold{unit}.csv")
        assert set(table.sources) == {teacher}
        fold_dir = run / "models" / teacher / f"fold{unit}"
        vote = pd.concat([pd.read_csv(fold_dir / "unlabeled.csv"),
                          pd.read_csv(fold_dir / "test.csv")]).set_index("id")
        assert np.allclose(vote.loc[table.id, P_COLS].max(axis=1), table.confidence)


@pytest.mark.slow
def test_distillation_targets_are_each_units_own_training_rows_taught_in_sample(
        tmp_path, trained, capsys):
    overrides = tiny_overrides(tmp_path, trained, **{  # round 0 is trained there
        "pseudo.rounds": "1", "pseudo.distill": "0.7", "pseudo.soft": "true",
        "classic.models": "[pixels@8+logreg]", "pseudo.voters": "[small_cnn]"})
    run = tmp_path / "runs" / "tiny"
    round0 = next((run / "models").iterdir())  # the template's small_cnn
    # trained without pseudo.distill, its units have no in-sample probabilities: one line
    assert not list(round0.glob("fold*/train.csv"))
    assert run_comp("stage=all", *overrides) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fold0/train.csv: missing; pseudo.distill needs" in err[0], err
    assert f"delete {round0} and rerun" in err[0]
    shutil.rmtree(round0)  # as the line says; round 0 trains again, writing them
    assert run_comp("stage=all", *overrides) == 0
    assert len(list(round0.glob("fold*/train.csv"))) == 2
    folds = pd.read_csv(run / "folds.csv", dtype={"id": str})
    by_round = {(json.loads(p.read_text())["pseudo"] or {}).get("round", 0): p.parent
                for p in (run / "models").glob("small_cnn-*/spec.json")}
    round1 = by_round[1]
    classic1 = next(p.parent for p in (run / "models").glob("pixels*/spec.json")
                    if json.loads(p.read_text())["pseudo"])
    for unit in (0, 1):
        table = pd.read_csv(run / "pseudo" / "round1" / f"fold{unit}.csv", dtype={"id": str})
        labelled = table[table.split == "train"].set_index("id")
        # every training row of the unit, none of its validation rows
        assert sorted(labelled.index) == sorted(folds.id[folds.fold != unit])
        # targets: the round-0 unit's in-sample probabilities on them (its only voter)
        in_sample = pd.read_csv(round0 / f"fold{unit}" / "train.csv",
                                dtype={"id": str}).set_index("id")
        assert np.allclose(labelled[P_COLS], in_sample.loc[labelled.index, P_COLS])
        metrics = json.loads((round1 / f"fold{unit}" / "metrics.json").read_text())
        assert sorted(metrics["pseudo_ids"]) == sorted(table.id)
        assert metrics["n_pseudo"] == len(table) > len(labelled)
        # a classic head learns from the pool's hard labels alone
        classic = json.loads((classic1 / f"fold{unit}" / "metrics.json").read_text())
        assert sorted(classic["pseudo_ids"]) == sorted(table.id[table.split != "train"])
        summary = json.loads((run / "pseudo" / "round1" / "summary.json").read_text())
        assert summary["folds"][str(unit)]["n_distill"] == len(labelled)
        assert summary["settings"]["distill"] == 0.7
    spec = json.loads((round1 / "spec.json").read_text())
    assert spec["pseudo"]["distill"] == 0.7


def test_training_a_round_without_its_files_is_a_clear_error(tmp_path, competition, capsys):
    assert run_comp("stage=train", "pseudo.round=2", *tiny_overrides(tmp_path, competition)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run stage=pseudo pseudo.round=2 first" in err[0], err


@pytest.mark.slow
def test_ids_that_read_as_missing_stay_ids_through_a_pseudo_label_round(tmp_path, competition):
    """Image files named NA, None and nan (Pillow opens them without an extension) in test/
    and unlabeled/: pseudo-label files, votes, truth and the submission keep them as ids."""
    renames = {"test": {"test_000.png": "NA", "test_001.png": "nan"},
               "unlabeled": {"unlabeled_000.png": "None", "unlabeled_001.png": "NA"}}
    for split, names in renames.items():
        for old, new in names.items():
            (competition / split / old).rename(competition / split / new)
    ids = sorted(p.name for p in (competition / "test").iterdir())
    pd.DataFrame({"id": ids, "label": "alpha"}).to_csv(competition / "sample_submission.csv",
                                                       index=False)
    truth = tmp_path / "truth.csv"
    unlabeled = sorted(p.name for p in (competition / "unlabeled").iterdir())
    pd.DataFrame({"id": unlabeled, "label": "beta"}).to_csv(truth, index=False)
    assert run_comp("stage=all", *tiny_overrides(
        tmp_path, competition, **{"pseudo.rounds": "1", "pseudo.splits": "[unlabeled,test]",
                                  "pseudo.fraction": "1.0", "pseudo.min_confidence": "0.0",
                                  "pseudo.truth": str(truth)})) == 0
    pseudo = pd.read_csv(tmp_path / "runs" / "tiny" / "pseudo" / "round1" / "fold0.csv",
                         dtype=str, keep_default_na=False)
    assert len(pseudo) and set(pseudo["id"]) <= set(unlabeled) | set(ids)
    board = leaderboard(tmp_path)
    assert (board["round"] == 1).any()
    submission = pd.read_csv(tmp_path / "submissions" / "tiny" / board.loc[0, "file"], dtype=str,
                             keep_default_na=False)
    assert submission["id"].tolist() == ids and {"NA", "nan"} <= set(ids)


def _teacher_run(tmp_path, voters: dict[str, np.ndarray]):
    """A Prepared of 8 labelled rows in 2 folds (2 classes) whose run directory holds
    each voter's finished prediction set (OOF `voters[name]`) and unit pool files: on
    unit u every voter gives unlabeled image `u` the probabilities [0.9, 0.1] if its name
    sorts first, else [0.1, 0.9]."""
    from types import SimpleNamespace

    from comp.data.prepared import Prepared
    from comp.predictions import probs_frame, write_prediction_set
    from comp.workspace import RunDir

    classes = ["x", "y"]
    ids = [f"i{k}" for k in range(8)]
    folds = pd.DataFrame({"id": ids, "label": ["x", "y"] * 4, "fold": [0] * 4 + [1] * 4,
                          "group": range(8)})
    run = RunDir(tmp_path / "run")
    for rank, (name, oof) in enumerate(sorted(voters.items())):
        write_prediction_set(run.preds_dir(name),
                             probs_frame(ids, oof, classes, fold=folds.fold, label=folds.label),
                             probs_frame([], np.zeros((0, 2)), classes), classes, {})
        for unit in (0, 1):
            folder = run.fold_dir(name, unit)
            folder.mkdir(parents=True)
            pool = [[0.9, 0.1]] if rank == 0 else [[0.1, 0.9]]
            probs_frame([f"u{unit}"], np.array(pool), classes).to_csv(
                folder / "unlabeled.csv", index=False)
    competition = SimpleNamespace(classes=classes)
    return Prepared(competition, folds, run)


def test_the_selected_teacher_of_a_unit_is_chosen_on_the_other_units_rows_only(tmp_path):
    from comp.pseudo.teacher import Teacher

    right = np.eye(2)[[0, 1] * 4] * 0.8 + 0.1  # every row right, probability 0.9
    # "a" is right on fold 0 and wrong on fold 1; "b" the other way round: a unit's own
    # validation rows would pick the voter that is right on them, the other fold's rows
    # pick the other one
    a, b = right.copy(), right.copy()
    a[4:] = a[4:, ::-1]
    b[:4] = b[:4, ::-1]
    prepared = _teacher_run(tmp_path, {"a": a, "b": b})
    teacher = Teacher(prepared, ["a", "b"], "selected", "accuracy", ["mean"])
    unit0, unit1 = teacher.votes(0, ["unlabeled"]), teacher.votes(1, ["unlabeled"])
    assert (unit0.teacher, unit1.teacher) == ("b", "a")
    assert unit0.voters == ["b"] and unit0.ids == ["u0"] and unit0.splits == ["unlabeled"]
    assert unit0.probs.tolist() == [[0.1, 0.9]]  # b's unit-0 pool file
    assert unit1.probs.tolist() == [[0.9, 0.1]]  # a's unit-1 pool file
    mean = Teacher(prepared, ["a", "b"], "mean", "accuracy", ["mean"]).votes(0, ["unlabeled"])
    assert mean.teacher == "mean" and mean.probs == pytest.approx(np.array([[0.5, 0.5]]))


def test_an_ensemble_teacher_when_it_beats_every_voter_on_the_other_rows(tmp_path):
    from comp.pseudo.teacher import Teacher

    y = np.array([0, 1] * 4)
    # each voter is wrong on a different half of every fold; their mean is right everywhere
    a = np.full((8, 2), 0.1)
    a[np.arange(8), y] = 0.9
    b = a.copy()
    wrong_a, wrong_b = [0, 4], [1, 5]
    a[wrong_a] = [[0.4, 0.6], [0.4, 0.6]]  # wrong, unsure
    b[wrong_b] = [[0.6, 0.4], [0.6, 0.4]]
    prepared = _teacher_run(tmp_path, {"a": a, "b": b})
    votes = Teacher(prepared, ["a", "b"], "selected", "accuracy", ["mean"]).votes(
        0, ["unlabeled"])
    assert votes.teacher == "ensemble-mean" and votes.voters == ["a", "b"]
    assert votes.probs == pytest.approx(np.array([[0.5, 0.5]]))
    singles = Teacher(prepared, ["a", "b"], "selected", "accuracy", []).votes(0, ["unlabeled"])
    assert singles.teacher in ("a", "b")  # no ensemble method: a voter alone


@pytest.mark.parametrize(("margin", "expected"), [(None, "a"), (0.0, "a"), (2.0, "r0")])
def test_a_later_rounds_teacher_keeps_round_zeros_pick_as_the_selection_does(
        tmp_path, margin, expected):
    # round 2's teacher: the round-1 voters a and b, round 0's r0; on unit 0's other rows
    # (fold 1) a is right on all 4, r0 on 3, b on none: a leads r0 by one row of 4 (paired
    # bootstrap SE about 0.22), which clears a margin of 0 standard errors, not one of 2
    from comp.pseudo.teacher import Teacher

    right = np.eye(2)[[0, 1] * 4] * 0.8 + 0.1
    a, b, r0 = right.copy(), right.copy(), right.copy()
    b[4:] = b[4:, ::-1]
    r0[5] = r0[5, ::-1]
    prepared = _teacher_run(tmp_path, {"a": a, "b": b, "r0": r0})
    teacher = Teacher(prepared, ["a", "b"], "selected", "accuracy", [], earlier_ids=["r0"],
                      margin=margin)
    votes = teacher.votes(0, ["unlabeled"])
    assert (votes.teacher, votes.voters) == (expected, [expected])
    # the pool file of the chosen model's unit 0: a sorts first ([0.9, 0.1]), r0 does not
    assert votes.probs.tolist() == ([[0.9, 0.1]] if expected == "a" else [[0.1, 0.9]])
    assert teacher.settings().get("round_margin") == margin  # part of the round's files' key


def test_a_units_teacher_labels_are_checked_on_the_training_rows_it_chose_on(tmp_path):
    """The votes carry the chosen teacher's out-of-fold probabilities on the unit's
    training rows (never its validation rows), and the rule picked there is scored on
    their labels: how often the teacher's pseudo-labels would be right."""
    from comp.pseudo.files import _checked_labels, _pooled_precision
    from comp.pseudo.teacher import Teacher

    right = np.eye(2)[[0, 1] * 4] * 0.8 + 0.1
    a, b = right.copy(), right.copy()
    a[4:] = a[4:, ::-1]  # a wrong on fold 1, b wrong on fold 0, c wrong on one row
    b[:4] = b[:4, ::-1]
    c = right.copy()
    c[5] = [0.7, 0.3]
    prepared = _teacher_run(tmp_path, {"a": a, "b": b, "c": c})
    rules = SimpleNamespace(rule="threshold", threshold=0.0, top_fraction=1.0, class_cap=10.0)
    teacher = Teacher(prepared, ["a", "b", "c"], "selected", "accuracy", [])
    unit0 = teacher.votes(0, ["unlabeled"])  # chosen on fold 1's rows: b (c is wrong once)
    assert unit0.teacher == "b" and unit0.labelled.tolist() == b[4:].tolist()
    assert unit0.of_splits(["unlabeled"]).labelled is unit0.labelled
    assert _checked_labels(prepared, rules, unit0, 0) == {"checked": 4, "checked_right": 4}
    # unit 0's validation rows (fold 0) relabelled: its check reads its training rows alone
    relabelled = dataclasses.replace(prepared, folds=prepared.folds.assign(
        label=["y", "x", "y", "x", "x", "y", "x", "y"]))
    assert _checked_labels(relabelled, rules, unit0, 0) == {"checked": 4, "checked_right": 4}
    mean = Teacher(prepared, ["a", "c"], "mean", "accuracy", []).votes(1, ["unlabeled"])
    assert mean.labelled == pytest.approx((a[:4] + c[:4]) / 2)  # fold 0's rows, for unit 1
    only_c = Teacher(prepared, ["c"], "selected", "accuracy", []).votes(0, ["unlabeled"])
    checked = _checked_labels(prepared, rules, only_c, 0)
    assert checked == {"checked": 4, "checked_right": 3}  # c's row 5 is wrong
    assert _pooled_precision({0: checked, 1: {"checked": 4, "checked_right": 4}}) == {
        "checked": 8, "right": 7, "share": 7 / 8}
    assert _pooled_precision({0: {}})["share"] is None
    assert right_labels(c, np.array([0, 1] * 4), np.array([5, 6])) == 1


def test_a_round_is_skipped_where_its_teachers_labels_are_right_too_rarely():
    from comp.pseudo.files import weak_teacher

    def summary(right, checked):
        return {"settings": {"rule": "quota"}, "label_precision": {
            "checked": checked, "right": right, "share": right / checked if checked else None}}

    assert weak_teacher(summary(97, 100), None) is None  # pseudo.min_precision=null
    assert weak_teacher(summary(98, 100), 0.98) is None
    assert weak_teacher(summary(0, 0), 0.98) is None  # nothing checked: no evidence
    assert weak_teacher({"settings": {"rule": "quota"}}, 0.98) is None  # files of old
    reason = weak_teacher(summary(97, 100), 0.98)
    assert reason.startswith("its teacher's labels were right on 97 of 100 labelled images "
                             "(0.970) where the rule (quota) picked them")
    assert reason.endswith("from the teacher's out-of-fold predictions, below "
                           "pseudo.min_precision=0.98")


@pytest.mark.slow
def test_stage_all_skips_a_round_whose_teacher_is_too_often_wrong_and_says_why(
        tmp_path, competition, comp_caplog):
    """Six of the 24 training labels swapped to another class: no teacher can label
    them right out of fold, so its checked precision is at most 18/24, below
    pseudo.min_precision=0.99. stage=all writes the round's files, trains no model on
    them, and says why in its log, in not_trained.json, in the report's levers and in
    levers.py's lines; with pseudo.min_precision=null the same command trains the round
    on the same files."""
    train = pd.read_csv(competition / "train.csv")
    swapped = train.index[::4]
    train.loc[swapped, "label"] = train.loc[swapped, "label"].map(
        {CLASSES[0]: CLASSES[1], CLASSES[1]: CLASSES[2], CLASSES[2]: CLASSES[0]})
    train.to_csv(competition / "train.csv", index=False)
    overrides = tiny_overrides(tmp_path, competition, **{
        "pseudo.rounds": "1", "pseudo.rule": "threshold", "pseudo.threshold": "0.0",
        "pseudo.class_cap": "10", "pseudo.min_precision": "0.99", "quiet": "false"})
    assert run_comp("stage=all", *overrides) == 0
    run = tmp_path / "runs" / "tiny"
    summary = json.loads((run / "pseudo/round1/summary.json").read_text())
    precision = summary["label_precision"]
    assert precision["checked"] == 24 and precision["right"] <= 18
    skipped = [r.getMessage() for r in comp_caplog.records
               if r.getMessage().startswith("pseudo-label round 1 skipped: ")]
    assert len(skipped) == 1 and f"right on {precision['right']} of 24" in skipped[0]
    assert leaderboard(tmp_path)["round"].tolist() == [0]  # no model trained on the labels
    note = json.loads((run / "pseudo/round1/not_trained.json").read_text())
    assert note == {"min_precision": 0.99, **precision}
    report = (run / "report/index.html").read_text()
    assert "pseudo-label round 1: off; its teacher&#x27;s labels were right on" in report
    assert ("<b>No model was trained on these labels</b>: its teacher's labels were right "
            "on") in report  # the round's own section

    from tests.test_bench_levers import load_levers

    assert load_levers().rounds_off(run) == [
        f"pseudo-label round 1: off; its teacher's labels were right on {precision['right']} "
        f"of 24 labelled images ({precision['share']:.3f}) it had not trained on, below "
        "pseudo.min_precision=0.99, so stage=all did not train it"]
    files = sorted(p.stat().st_mtime_ns for p in (run / "pseudo/round1").glob("fold*.csv"))
    assert run_comp("stage=all", *overrides, "pseudo.min_precision=null") == 0
    # the round's model is trained; round 0's pick stays beside it (submit.round_margin)
    assert sorted(leaderboard(tmp_path)["round"].tolist()) == [0, 1]
    assert not (run / "pseudo/round1/not_trained.json").exists()
    assert sorted(p.stat().st_mtime_ns for p in (run / "pseudo/round1").glob("fold*.csv")) \
        == files  # the same files trained the round
    # back to the minimum: the trained round is kept (finished work stands), and said so
    comp_caplog.clear()
    assert run_comp("stage=all", *overrides) == 0
    assert sorted(leaderboard(tmp_path)["round"].tolist()) == [0, 1]
    kept = [r.getMessage() for r in comp_caplog.records
            if r.getMessage().startswith("pseudo-label round 1")]
    assert len(kept) == 1 and kept[0].endswith(
        "below pseudo.min_precision=0.99; its models, trained by an earlier run, stay in "
        "the choice")
    assert not (run / "pseudo/round1/not_trained.json").exists()


def test_with_two_folds_the_teacher_leaves_out_ensembles_it_cannot_score_nested(tmp_path):
    # outside a unit's validation rows there is one fold: a learned ensemble fitted there
    # cannot be scored nested (its inner fit would see no rows), so only the plain mean
    # competes beside the voters; Optuna's study used to fail every trial here
    from comp.pseudo.teacher import Teacher

    y = np.array([0, 1] * 4)
    a = np.full((8, 2), 0.1)
    a[np.arange(8), y] = 0.9
    b = a.copy()
    a[[0, 4]] = [[0.4, 0.6], [0.4, 0.6]]
    b[[1, 5]] = [[0.6, 0.4], [0.6, 0.4]]
    prepared = _teacher_run(tmp_path, {"a": a, "b": b})
    teacher = Teacher(prepared, ["a", "b"], "selected", "accuracy", ["optuna", "stacked", "mean"])
    pool = np.full((2, 1, 2), 0.5)  # the voters' probabilities on one pool image
    assert set(teacher._candidates(0, ["a", "b"], teacher.oof, pool)) == {
        "a", "b", "ensemble-mean"}
    assert teacher.votes(0, ["unlabeled"]).teacher == "ensemble-mean"


def test_a_round_without_known_labels_logs_no_empty_mean(comp_caplog):
    """A round whose chosen images have no known label in any unit (accuracy vs truth nan
    everywhere), or where a unit chose nothing, takes no mean of an empty set (numpy's
    "Mean of empty slice"): the log line says n/a, or averages the units that have one."""
    import warnings

    from comp.pseudo.files import _log_round

    def unit(n: int, confidence: float, accuracy: float) -> dict:
        return {"per_class": {"a": n, "b": 0}, "mean_confidence": confidence,
                "accuracy_vs_truth": accuracy, "teacher": "mean"}

    nothing_known = {"0": unit(3, 0.9, float("nan")), "1": unit(0, float("nan"), float("nan"))}
    some_known = {"0": unit(3, 0.9, 0.5), "1": unit(2, 0.7, float("nan"))}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _log_round(1, ["m"], nothing_known, {"checked": 0, "right": 0, "share": None})
        _log_round(1, ["m"], some_known, {"checked": 8, "right": 7, "share": 7 / 8})
    first, second = comp_caplog.messages[-2:]
    assert "mean confidence 0.900; accuracy vs truth n/a" in first
    assert ("mean confidence 0.800; right on 7 of 8 labelled images (0.875) where the rule "
            "picks from its out-of-fold predictions; accuracy vs truth 0.500") in second


def test_a_warm_start_loads_the_replaced_units_weights_and_runs_the_schedules_end(tmp_path):
    import keras

    from comp.errors import CompError
    from comp.training.trainer import warm_start
    from comp.workspace import FOLD_WEIGHTS, RunDir

    def model(seed):
        return keras.Sequential([keras.Input((3,)), keras.layers.Dense(
            2, kernel_initializer=keras.initializers.GlorotUniform(seed))])

    run = RunDir(tmp_path / "run")
    teacher = model(1)
    run.fold_dir("cnn-round0", 1).mkdir(parents=True)
    teacher.save_weights(run.fold_dir("cnn-round0", 1) / FOLD_WEIGHTS)
    warm = {"round": 1, "warm_start": {"from": "cnn-round0", "epochs": 3}}
    spec = SimpleNamespace(pseudo=warm, train=SimpleNamespace(epochs=10), backbone="cnn")
    student = model(2)
    assert not np.allclose(student.get_weights()[0], teacher.get_weights()[0])
    assert warm_start(student, spec, run, 1) == 7
    assert np.allclose(student.get_weights()[0], teacher.get_weights()[0])
    # a cold start (round 0, or a round without warm_epochs) leaves the model as built
    cold = model(2)
    before = cold.get_weights()[0].copy()
    assert warm_start(cold, SimpleNamespace(pseudo={"round": 1}, train=None, backbone="cnn"),
                      run, 1) == 0
    assert np.allclose(cold.get_weights()[0], before)
    # the replaced unit not trained: one line naming the file and what to do
    with pytest.raises(CompError, match=r"fold0.*train round 0 first, or unset"):
        warm_start(model(2), spec, run, 0)


@pytest.mark.slow
def test_a_warm_started_round_starts_from_round_zero_and_runs_its_last_epochs(tmp_path,
                                                                               trained):
    overrides = tiny_overrides(tmp_path, trained, **{
        "pseudo.rounds": "1", "pseudo.splits": "[unlabeled,test]",
        "pseudo.warm_epochs": "1"})
    assert run_comp("stage=all", *overrides) == 0
    run = tmp_path / "runs" / "tiny"
    (fits,) = [json.loads(p.read_text()) for p in (run / "ensemble").glob("fits-*/cv.json")]
    round0, round1 = fits["models"]  # the model's round-0 and round-1 fits, averaged
    assert json.loads((run / "preds" / round1 / "cv.json").read_text())["lineage"] == round0
    spec1 = json.loads((run / "models" / round1 / "spec.json").read_text())
    assert spec1["pseudo"]["warm_start"] == {"from": round0, "epochs": 1}
    for fold in (0, 1):
        history = pd.read_csv(run / "models" / round1 / f"fold{fold}" / "history.csv")
        assert history["epoch"].tolist() == [spec1["train"]["epochs"] - 1]


@pytest.mark.slow
def test_a_round_with_labelled_epochs_takes_round_zeros_batches_an_epoch(tmp_path, trained):
    """pseudo.epoch_rows=labelled: a round's fine-tune draws from its labelled and
    pseudo-labelled rows but takes as many batches an epoch as round 0 (the default,
    `all`, one pass over both)."""
    run = tmp_path / "runs" / "tiny"

    def specs():  # model id -> its spec.json
        return {p.parent.name: json.loads(p.read_text())
                for p in (run / "models").glob("*/spec.json")}

    fixture = specs()  # the trained fixture's round 0, at another batch size
    for value in ("all", "labelled"):
        assert run_comp("stage=all", *tiny_overrides(tmp_path, trained, **{
            "pseudo.rounds": "1", "pseudo.splits": "[unlabeled,test]",
            "pseudo.epoch_rows": value, "train.batch_size": "4"})) == 0
        if value == "all":
            all_ids = {m: spec for m, spec in specs().items() if m not in fixture}
    (round0,) = [m for m, spec in all_ids.items() if spec["pseudo"] is None]
    (all_rows,) = [m for m in all_ids if m != round0]
    (labelled,) = [m for m in specs() if m not in {**fixture, **all_ids}]  # in the id
    assert specs()[labelled]["pseudo"]["epoch_rows"] == "labelled"
    assert "epoch_rows" not in specs()[all_rows]["pseudo"]
    # the model's fits averaged (pseudo.average_fits): every fit, both round-1 ones too
    fits = [json.loads(p.read_text())["models"]
            for p in (run / "ensemble").glob("fits-*/cv.json")]
    assert sorted(fits, key=len)[-1] == [round0, *sorted([all_rows, labelled])]
    for fold in (0, 1):
        metrics = {m: json.loads((run / "models" / m / f"fold{fold}" / "metrics.json")
                                 .read_text()) for m in (round0, all_rows, labelled)}
        assert metrics[all_rows]["n_train"] > metrics[round0]["n_train"]
        assert metrics[labelled]["n_train"] == metrics[all_rows]["n_train"]
        assert metrics[all_rows]["epoch_batches"] > metrics[round0]["epoch_batches"]
        assert metrics[labelled]["epoch_batches"] == metrics[round0]["epoch_batches"]


def test_a_labelled_test_folder_never_enters_the_pool(competition):
    """pseudo.splits keeps `test` unless the folder labels the test images (test/<class>/,
    a holdout): its score must be that of images the models never trained on."""
    from comp.data.folder import read_competition
    from comp.pseudo.files import pool_splits

    assert pool_splits(["unlabeled", "test"], read_competition(competition)) == [
        "unlabeled", "test"]
    (competition / "sample_submission.csv").unlink()
    for i, path in enumerate(sorted((competition / "test").iterdir())):
        (competition / "test" / CLASSES[i % 3]).mkdir(exist_ok=True)
        path.rename(competition / "test" / CLASSES[i % 3] / path.name)
    assert pool_splits(["unlabeled", "test"], read_competition(competition)) == ["unlabeled"]
    assert pool_splits(["test"], read_competition(competition)) == []


def test_stage_pseudo_on_an_empty_pool_is_one_clear_line(tmp_path, competition, capsys):
    """A manual stage=pseudo with nothing to label said nothing and wrote empty files."""
    from comp.data.folder import read_competition
    from comp.pseudo.files import empty_pool

    assert empty_pool(["unlabeled", "test"], read_competition(competition)) is None
    assert empty_pool(["unlabeled"], read_competition(competition)) is None
    shutil.rmtree(competition / "unlabeled")
    (competition / "unlabeled").mkdir()
    assert empty_pool(["test"], read_competition(competition)) is None
    assert run_comp("stage=pseudo", *tiny_overrides(tmp_path, competition),
                    "pseudo.splits=[unlabeled]") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["comp: error: stage=pseudo: no image to label in ['unlabeled'] "
                   "(pseudo.splits=['unlabeled']); add images to unlabeled/ or set "
                   "pseudo.splits to a split that has some"]
    assert not (tmp_path / "runs" / "tiny" / "pseudo").exists()


@pytest.mark.slow
def test_a_holdout_is_not_pseudo_labelled_and_an_empty_pool_skips_the_round(
        tmp_path, competition, comp_caplog):
    """With test/<class>/ folders the round's pseudo-labels come from unlabeled/ alone;
    without unlabeled images there is nothing to label, and stage=all says so and trains
    no round (it would retrain every model on the same rows)."""
    (competition / "sample_submission.csv").unlink()
    for i, path in enumerate(sorted((competition / "test").iterdir())):
        (competition / "test" / CLASSES[i % 3]).mkdir(exist_ok=True)
        path.rename(competition / "test" / CLASSES[i % 3] / path.name)
    overrides = tiny_overrides(tmp_path, competition, **{
        "pseudo.rounds": "1", "pseudo.rule": "threshold", "pseudo.threshold": "0.0"})
    assert run_comp("stage=all", *overrides) == 0
    run = tmp_path / "runs" / "tiny"
    tables = [pd.read_csv(p) for p in sorted((run / "pseudo" / "round1").glob("fold*.csv"))]
    assert tables and all(set(t["split"]) == {"unlabeled"} for t in tables)
    shutil.rmtree(competition / "unlabeled")
    shutil.rmtree(tmp_path / "runs")
    assert run_comp("stage=all", *overrides, "quiet=false") == 0  # its lines at INFO
    assert not (run / "pseudo").exists()
    assert any(r.getMessage().startswith("pseudo-label rounds skipped: no image to label")
               for r in comp_caplog.records)
