"""Choosing the entry to submit: the nested CV of picking the best entry."""

from __future__ import annotations

import numpy as np

from comp.selection import best_entry, nested_selection, pick_entry, ranking_metric


def _probs(y: np.ndarray, correct: np.ndarray, n_classes: int = 3) -> np.ndarray:
    """One-hot-ish probabilities that are right exactly where `correct`."""
    predicted = np.where(correct, y, (y + 1) % n_classes)
    out = np.full((len(y), n_classes), 0.1)
    out[np.arange(len(y)), predicted] = 0.8
    return out


def _entries(extra_right: int, n: int = 200, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    single_right = rng.random(n) < 0.8
    ensemble_right = single_right.copy()
    wrong, right = np.nonzero(~single_right)[0], np.nonzero(single_right)[0]
    # the ensemble fixes 2 + `extra_right` rows the single model gets wrong, and breaks 2
    ensemble_right[wrong[:2 + extra_right]] = True
    ensemble_right[right[:2]] = False
    return y, {"single": _probs(y, single_right), "ensemble": _probs(y, ensemble_right)}


def test_nested_selection_scores_each_fold_with_the_entry_picked_on_the_others():
    y, entries = _entries(extra_right=25)
    folds = np.arange(len(y)) % 4
    oof, chosen = nested_selection(entries, y, folds, "accuracy")
    assert set(chosen) == {0, 1, 2, 3}
    for fold, name in chosen.items():
        assert np.array_equal(oof[folds == fold], entries[name][folds == fold])
        others = folds != fold
        best = max(entries, key=lambda k: (entries[k][others].argmax(1) == y[others]).mean())
        assert name == best


def test_auto_ranks_by_the_competitions_metric_and_a_named_score_ranks_by_itself():
    assert ranking_metric("accuracy", "auto") == "accuracy"
    assert ranking_metric("qwk", "auto") == "qwk"
    assert ranking_metric("accuracy", "log_loss") == "log_loss"
    assert ranking_metric("accuracy", "macro_f1") == "macro_f1"


def test_best_entry_follows_the_scores_direction_and_keeps_the_first_on_a_tie():
    cv = {"a": {"log_loss": 0.3, "accuracy": 0.9}, "b": {"log_loss": 0.2, "accuracy": 0.9},
          "c": {"log_loss": 0.5, "accuracy": 0.8}}
    assert best_entry(cv, "log_loss") == "b"  # lower is better
    assert best_entry(cv, "accuracy") == "a"  # a tie: the first listed
    assert best_entry({"c": cv["c"], **cv}, "accuracy") == "a"


def test_log_loss_choice_is_steadier_than_accuracy_when_two_entries_tie():
    """Two entries with the same OOF accuracy: the one with the sharper right answers
    (lower log loss) is chosen on every fold, where accuracy flips with each fold's few
    differing rows."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 300)
    right = rng.random(300) < 0.85
    folds = np.arange(300) % 5
    sure, unsure = _probs(y, right), _probs(y, right)
    unsure[np.arange(300), y] = np.where(right, 0.5, 0.1)  # right, but less sure
    unsure /= unsure.sum(1, keepdims=True)
    flip = np.nonzero(right)[0][:6], np.nonzero(~right)[0][:6]
    sure_flipped = sure.copy()  # same accuracy, different rows: 6 broken, 6 fixed
    sure_flipped[flip[0]] = _probs(y[flip[0]], np.zeros(6, bool))
    sure_flipped[flip[1]] = _probs(y[flip[1]], np.ones(6, bool))
    entries = {"unsure": unsure, "sure": sure_flipped}
    assert (unsure.argmax(1) == y).mean() == (sure_flipped.argmax(1) == y).mean()
    _, by_log_loss = nested_selection(entries, y, folds, "log_loss")
    assert set(by_log_loss.values()) == {"sure"}


def test_a_later_pseudo_label_round_replaces_its_models_and_their_ensembles():
    from comp.predictions import superseded

    infos = {
        "cnn-a": {"kind": "single", "round": 0, "lineage": "cnn-a"},
        "cnn-b": {"kind": "single", "round": 1, "lineage": "cnn-a"},  # cnn-a, round 1
        "head-c": {"kind": "single", "round": 0, "lineage": "head-c"},  # no round 1
        "old-d": {"kind": "single", "round": 1},  # recorded before lineage: kept
        "ensemble-mean-0": {"kind": "ensemble", "round": 0, "models": ["cnn-a", "head-c"]},
        "ensemble-mean-1": {"kind": "ensemble", "round": 1, "models": ["cnn-b", "head-c"]},
    }
    assert superseded(infos) == {"cnn-a", "ensemble-mean-0"}
    # among round-0 entries alone nothing is replaced
    assert superseded({k: v for k, v in infos.items() if v["round"] == 0}) == set()
    # cnn-a's fits of rounds 0 and 1 averaged (pseudo.average_fits): in the choice of rank
    # 1 the mean stands for the model, while ensembles keep its round-1 fit as a member
    fits = {"kind": "ensemble", "round": 1, "models": ["cnn-a", "cnn-b"], "fits_of": "cnn-a"}
    averaged = {**infos, "ensemble-fits-1": fits}
    assert superseded(averaged, averaged=True) == {"cnn-a", "cnn-b", "ensemble-mean-0"}
    # pseudo.average_fits=false: the mean stands for nothing, the round's fit is the model
    assert superseded(averaged) == {"cnn-a", "ensemble-mean-0", "ensemble-fits-1"}
    # a later round's fit replaces the mean of the earlier ones
    later = {**averaged, "cnn-c": {"kind": "single", "round": 2, "lineage": "cnn-a"}}
    assert superseded(later, averaged=True) == {"cnn-a", "cnn-b", "ensemble-mean-0",
                                                 "ensemble-mean-1", "ensemble-fits-1"}


def test_the_levers_table_compares_a_rounds_models_with_the_ones_they_replace():
    import pandas as pd

    from comp.report import lever_rows

    classes = ["x", "y"]
    y = np.array([0, 1] * 10)
    folds = np.repeat(np.arange(5), 4)
    right, wrong = np.eye(2)[y] * 0.8 + 0.1, np.eye(2)[1 - y] * 0.8 + 0.1

    def entry(probs, **info):
        oof = pd.DataFrame({"id": [f"i{k}" for k in range(20)], "fold": folds,
                            "label": [classes[k] for k in y]})
        oof[["p_x", "p_y"]] = probs
        return {"oof": oof, "classes": classes, "info": {"kind": "single", **info}}

    half = np.where((np.arange(20) < 10)[:, None], right, wrong)
    entries = {"a0": entry(half, round=0, lineage="a0"),
               "b0": entry(wrong, round=0, lineage="b0"),
               "a1": entry(right, round=1, lineage="a0"),  # a0 retrained: right everywhere
               "b1": entry(wrong, round=1, lineage="b0")}
    rows = lever_rows(entries, "accuracy").set_index("lever")
    row = rows.loc["pseudo-label round 1"]
    # with the round: a1 and b1 (a0 and b0 replaced); without it: a0 and b0
    assert (row["entries with"], row["entries without"]) == (2, 2)
    assert row["gain accuracy"].startswith("+0.5000")
    assert "gain auc" not in rows.columns
    by_auc = lever_rows(entries, "auc").set_index("lever")  # a probability submission's
    assert list(by_auc.columns[2:]) == ["gain auc", "gain accuracy", "gain macro_f1"]
    assert by_auc.loc["pseudo-label round 1", "gain auc"].startswith("+0.5000")


def test_an_ensemble_is_picked_only_by_more_than_one_standard_error():
    """pick_entry's one-standard-error rule: an ensemble that leads the best single model
    by one image out of 200 (well inside a paired SE) gives way to it; one that leads by
    25 images is kept; without the ensemble names the plain best is taken."""
    y, close = _entries(extra_right=1)
    assert best_entry({n: {"accuracy": (p.argmax(1) == y).mean()}
                       for n, p in close.items()}, "accuracy") == "ensemble"
    assert pick_entry(close, y, "accuracy", ensembles=frozenset({"ensemble"})) == "single"
    assert pick_entry(close, y, "accuracy") == "ensemble"
    y, clear = _entries(extra_right=25)
    assert pick_entry(clear, y, "accuracy", ensembles=frozenset({"ensemble"})) == "ensemble"
    only = {"ensemble": close["ensemble"]}
    assert pick_entry(only, y, "accuracy", ensembles=frozenset({"ensemble"})) == "ensemble"
    folds = np.arange(len(y)) % 4
    _, chosen = nested_selection(close, y, folds, "accuracy", ensembles=frozenset({"ensemble"}))
    assert set(chosen.values()) == {"single"}


def test_the_picked_entry_is_rank_1_of_the_leaderboard(tmp_path):
    from comp.submission import write_leaderboard

    rows = [{"name": "ensemble-optuna-1", "cv_accuracy": 0.9860},
            {"name": "small_cnn-2", "cv_accuracy": 0.9855},
            {"name": "mobilenet-3", "cv_accuracy": 0.9700}]
    plain = write_leaderboard(tmp_path / "a.csv", rows, "accuracy")
    assert plain["name"].tolist() == ["ensemble-optuna-1", "small_cnn-2", "mobilenet-3"]
    picked = write_leaderboard(tmp_path / "b.csv", rows, "accuracy", first="small_cnn-2")
    assert picked["name"].tolist() == ["small_cnn-2", "ensemble-optuna-1", "mobilenet-3"]
    assert picked["rank"].tolist() == [1, 2, 3]


def test_a_pseudo_label_rounds_pick_replaces_round_0s_only_by_the_margin():
    """pick_round: the round's entry, one image ahead of round 0's on 200 rows (inside
    half a paired SE), leaves round 0's pick in place; 25 images ahead, it is taken; with
    margin None the latest round is taken as before. The nested selection scores each
    fold with the entry the same rule picks on the other folds."""
    from comp.selection import pick_round

    y, close = _entries(extra_right=1)
    latest, earlier = {"r1": close["ensemble"]}, {"r0": close["single"]}
    assert pick_round(latest, earlier, y, "accuracy", margin=0.5) == "r0"
    assert pick_round(latest, earlier, y, "accuracy", margin=None) == "r1"
    assert pick_round(latest, {}, y, "accuracy", margin=0.5) == "r1"
    folds = np.arange(len(y)) % 4
    oof, chosen = nested_selection(latest, y, folds, "accuracy", earlier=earlier, margin=0.5)
    every = {**latest, **earlier}
    for fold, name in chosen.items():
        others = folds != fold
        assert name == pick_round({"r1": latest["r1"][others]}, {"r0": earlier["r0"][others]},
                                  y[others], "accuracy", margin=0.5)
        assert np.array_equal(oof[folds == fold], every[name][folds == fold])
    assert "r0" in chosen.values()
    y, clear = _entries(extra_right=25)
    assert pick_round({"r1": clear["ensemble"]}, {"r0": clear["single"]}, y, "accuracy",
                      margin=0.5) == "r1"


def _round_pair(run, competition, fixed: int, broken: int) -> None:
    """preds/ of a run with a round-0 model (right on 16 of the 24 rows) and its round-1
    successor, which fixes `fixed` of its wrong rows and breaks `broken` right ones."""
    import pandas as pd

    from tests.helpers import fake_prediction_set

    train = pd.read_csv(competition / "train.csv", dtype=str)
    classes = sorted(train["label"].unique())
    y = train["label"].map(classes.index).to_numpy()
    right0 = np.arange(len(y)) < 16
    right1 = right0.copy()
    right1[16:16 + fixed] = True
    right1[:broken] = False
    for name, right, round_ in (("cnn-r0", right0, 0), ("cnn-r1", right1, 1)):
        fake_prediction_set(run, competition, name, oof_probs=_probs(y, right, len(classes)),
                            round=round_, lineage="cnn-r0")


def test_round_0s_pick_stays_rank_1_where_the_round_is_not_clearly_ahead(tmp_path,
                                                                        competition):
    from comp.artifacts import read_json
    from comp.inference import best_prediction_set
    from comp.workspace import run_dir
    from tests.helpers import leaderboard, run_comp, submissions, tiny_overrides

    overrides = tiny_overrides(tmp_path, competition)
    run = run_dir(str(tmp_path / "runs"), "tiny")
    _round_pair(run.root, competition, fixed=3, broken=2)  # one row ahead of 24: noise
    assert run_comp("stage=submit", *overrides) == 0
    board = leaderboard(tmp_path)
    assert board["name"].tolist() == ["cnn-r0", "cnn-r1"]  # round 0 kept, first
    assert (submissions(tmp_path) / board["file"][0]).exists()
    assert read_json(run.selection_json)["final_choice"] == "cnn-r0"
    assert best_prediction_set(run, "accuracy") == "cnn-r0"  # what stage=predict uses
    assert run_comp("stage=submit", *overrides, "submit.round_margin=null") == 0
    assert leaderboard(tmp_path)["name"].tolist()[0] == "cnn-r1"  # the latest round, as before


def test_a_round_clearly_ahead_replaces_round_0(tmp_path, competition):
    from tests.helpers import leaderboard, run_comp, tiny_overrides

    _round_pair(tmp_path / "runs" / "tiny", competition, fixed=8, broken=0)
    assert run_comp("stage=submit", *tiny_overrides(tmp_path, competition)) == 0
    assert leaderboard(tmp_path)["name"].tolist() == ["cnn-r1"]  # round 0 replaced
