"""Ensemble maths on synthetic OOF, and stage=ensemble on a tiny run."""

import json
import os

import numpy as np
import pandas as pd
import pytest

from comp.ensemble import METHODS, fit_weights, greedy_selection, nested_predictions
from comp.metrics import scores
from tests.helpers import (
    copy_tree,
    ensemble_dir,
    leaderboard,
    run_comp,
    submissions,
    tiny_overrides,
)


def _synthetic(n=300, c=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    good = np.eye(c)[y] * 2.0 + rng.normal(size=(n, c))
    noise = rng.normal(size=(2, n, c)) * 2
    logits = np.stack([good, *noise])
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return probs, y


def test_weight_search_recovers_the_better_model():
    members, y = _synthetic()
    weights = fit_weights(members, y)
    assert weights.argmax() == 0 and weights[0] > 0.7
    assert weights.sum() == pytest.approx(1)


def test_nested_cv_is_below_in_sample_on_noise():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 200)
    members = rng.dirichlet(np.ones(3), size=(6, 200))  # six models of pure noise
    folds = np.arange(200) % 5
    weighted = METHODS["weighted"]
    in_sample = scores(y, weighted.apply(members, fit_weights(members, y)))["log_loss"]
    nested = scores(y, nested_predictions(weighted, members, y, folds))["log_loss"]
    assert nested > in_sample  # in-sample weights flatter noise; nested does not


def combine(method: str, members: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return METHODS[method].apply(members, weights)


def test_greedy_selection_prefers_the_better_model():
    members, y = _synthetic()
    weights = greedy_selection(members, y)
    assert weights.argmax() == 0 and weights.sum() == pytest.approx(1)


def test_stacker_and_optuna_weights_give_distributions():
    members, y = _synthetic(n=120)
    for name in ("stacked", "optuna"):
        method = METHODS[name]
        state = method.fit(members, y, 0) if name == "stacked" else method.fit(
            members, y, 0, n_trials=20)
        out = method.apply(members, state)
        assert out.shape == (120, 3) and np.allclose(out.sum(1), 1)
        assert scores(y, out)["accuracy"] > scores(y, members[1])["accuracy"]


def test_optuna_weights_continued_after_a_kill_equal_an_uninterrupted_study():
    import optuna

    from comp.ensemble import optuna_weights

    members, y = _synthetic(n=120)
    through = optuna.storages.InMemoryStorage()
    expected = optuna_weights(members, y, seed=3, n_trials=14, storage=through,
                              study_name="e")
    killed = optuna.storages.InMemoryStorage()
    optuna_weights(members, y, seed=3, n_trials=6, storage=killed, study_name="e")
    optuna.load_study(study_name="e", storage=killed).ask()  # left RUNNING by the kill
    resumed = optuna_weights(members, y, seed=3, n_trials=14, storage=killed, study_name="e")
    assert np.array_equal(resumed, expected)
    values = [[t.value for t in optuna.load_study(study_name="e", storage=s).trials
               if t.state.is_finished()] for s in (through, killed)]
    assert values[0] == values[1] and len(values[0]) == 14
    other_seed = optuna_weights(members, y, seed=4, n_trials=14)
    assert not np.array_equal(other_seed, expected)  # the seed does reach the proposals


def test_optuna_weights_leave_optuna_logging_as_the_caller_set_it():
    """The weight study logs no line per trial, and Optuna's verbosity is the caller's
    again afterwards (not lowered for the rest of the process)."""
    import logging

    import optuna

    from comp.ensemble import optuna_weights

    class Lines(logging.Handler):
        def __init__(self):
            super().__init__(logging.DEBUG)
            self.lines: list[str] = []

        def emit(self, record):
            self.lines.append(record.getMessage())

    members, y = _synthetic(n=60)
    before, lines = optuna.logging.get_verbosity(), Lines()
    logging.getLogger("optuna").addHandler(lines)
    optuna.logging.set_verbosity(optuna.logging.DEBUG)
    try:
        optuna_weights(members, y, seed=0, n_trials=3)
        assert optuna.logging.get_verbosity() == optuna.logging.DEBUG
        optuna.create_study().optimize(lambda trial: trial.suggest_float("x", 0, 1), 1)
    finally:
        optuna.logging.set_verbosity(before)
        logging.getLogger("optuna").removeHandler(lines)
    finished = [line for line in lines.lines if "finished with value" in line]
    assert len(finished) == 1  # the caller's own study logs, the weight study did not


@pytest.mark.parametrize("method", ["mean", "weighted", "rank", "geometric"])
def test_combine_gives_distributions(method):
    members, _ = _synthetic(n=20)
    out = combine(method, members, np.array([0.5, 0.25, 0.25]))
    assert out.shape == (20, 3) and np.allclose(out.sum(1), 1) and (out >= 0).all()
    if method == "rank":  # only the order of each class's scores over the rows counts
        assert np.allclose(combine(method, members ** 3, np.array([0.5, 0.25, 0.25])), out)
        return
    # all the weight on one member: its ranking of the classes, row by row
    alone = combine(method, members, np.array([0.0, 1.0, 0.0]))
    assert (alone.argmax(1) == members[1].argmax(1)).all()
    copies = np.stack([members[0]] * 3)  # three copies of one model combine to that model
    assert np.allclose(combine(method, copies, np.array([0.5, 0.25, 0.25])), members[0])


def test_entry_settings_say_what_tells_entries_apart():
    from comp.submission import entry_settings

    base = {"backbone": "m", "train": {"lr": 0.003, "epochs": 40}, "model": {"dropout": 0.3},
            "folds": "k", "model_id": "x"}
    specs = {"m-aaaa": base, "m-bbbb": {**base, "train": {"lr": 0.01, "epochs": 40}},
             "pixels+logreg-cccc": {"source": "pixels@32", "head": "logreg"}}
    ensembles = {"ensemble-mean-1": {"method": "mean", "models": ["m-aaaa", "pixels+logreg-cccc"]},
                 "ensemble-mean-2": {"method": "mean", "models": list(specs)},
                 "ensemble-greedy-3": {"method": "greedy", "models": list(specs)}}
    assert entry_settings(specs, ensembles) == {
        "m-aaaa": "train.lr=0.003", "m-bbbb": "train.lr=0.01", "pixels+logreg-cccc": "",
        "ensemble-mean-1": "mean of 2 models", "ensemble-mean-2": "mean of 3 models +m-bbbb",
        "ensemble-greedy-3": "greedy of 3 models"}


@pytest.mark.slow
def test_stage_ensemble_writes_sets_ranked_beside_single_models(tmp_path, trained):
    overrides = tiny_overrides(tmp_path, trained)  # one small_cnn is trained there
    assert run_comp("stage=train", *overrides, "model.dropout=0.1") == 0
    assert run_comp("stage=ensemble", *overrides, "ensemble.methods=[mean,greedy]") == 0
    assert run_comp("stage=submit", *overrides) == 0
    run = tmp_path / "runs" / "tiny"
    models = sorted(p.name for p in (run / "preds").iterdir())
    oofs = [pd.read_csv(run / "preds" / m / "oof.csv") for m in models]
    cols = [c for c in oofs[0].columns if c.startswith("p_")]
    for method in ("mean", "greedy"):
        cv = json.loads((ensemble_dir(run, method) / "cv.json").read_text())
        assert cv["kind"] == "ensemble" and sorted(cv["models"]) == models
        assert "cv_in_sample" in cv
        if method != "stacked":
            assert sum(cv["weights"].values()) == pytest.approx(1)
        oof = pd.read_csv(ensemble_dir(run, method) / "oof.csv")
        assert len(oof) == 24 and {"fold", "label"} <= set(oof.columns)
        assert oof.id.tolist() == oofs[0].id.tolist()
        assert np.allclose(oof[cols].sum(axis=1), 1, atol=1e-4)
    mean = pd.read_csv(ensemble_dir(run, "mean") / "oof.csv")
    assert np.allclose(mean[cols], (oofs[0][cols] + oofs[1][cols]) / 2, atol=1e-5)
    board = leaderboard(tmp_path)
    assert sorted(board.kind.unique()) == ["ensemble", "single"] and len(board) == 4
    assert board["rank"].tolist() == list(range(1, 5))
    assert {"cv_accuracy_se", "cv_macro_f1_se", "diff_accuracy_to_best"} <= set(board.columns)
    assert board.cv_accuracy.is_monotonic_decreasing  # ranked by submit.metric (rank_by=auto)
    assert (board.file.map(lambda f: (submissions(tmp_path) / f).exists())).all()


@pytest.mark.slow
def test_ensemble_of_one_model_is_a_clear_error(tmp_path, trained, capsys):
    overrides = tiny_overrides(tmp_path, trained)  # one small_cnn is trained there
    assert run_comp("stage=train", *overrides) == 0
    capsys.readouterr()
    assert run_comp("stage=ensemble", *overrides) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "at least two finished models" in err[0], err
    assert not (tmp_path / "runs" / "tiny" / "ensemble").exists()


@pytest.mark.slow
def test_an_ensemble_with_new_members_is_a_new_entry_and_boards_stay_per_run(tmp_path,
                                                                              trained):
    overrides = tiny_overrides(tmp_path, trained)  # one small_cnn is trained there
    assert run_comp("stage=train", *overrides, "model.dropout=0.1") == 0
    assert run_comp("stage=ensemble", *overrides) == 0
    assert run_comp("stage=submit", *overrides) == 0
    (first,) = leaderboard(tmp_path).query("kind == 'ensemble'").to_dict("records")
    first_file = (submissions(tmp_path) / first["file"]).read_bytes()
    assert run_comp("stage=train", *overrides,  # a third model joins
                    "backbone_overrides.small_cnn.train.lr=0.01") == 0
    assert run_comp("stage=ensemble", *overrides) == 0
    assert run_comp("stage=submit", *overrides) == 0
    board = leaderboard(tmp_path)
    assert board["rank"].tolist() == list(range(1, 6))  # 3 models, 2 mean ensembles
    means = board[board.kind == "ensemble"].set_index("name")
    assert len(means) == 2 and means.file.nunique() == 2 and first["name"] in means.index
    assert (submissions(tmp_path) / first["file"]).read_bytes() == first_file  # kept
    (new,) = [n for n in means.index if n != first["name"]]
    (lr_model,) = board[board.settings.fillna("").str.contains("train.lr=0.01")].name
    assert means.settings[first["name"]] == "mean of 2 models"
    assert means.settings[new] == f"mean of 3 models +{lr_model}"
    # another experiment in the same submissions folder has its own board and ranks
    copy_tree(tmp_path / "runs" / "tiny", tmp_path / "runs" / "other")
    assert run_comp("stage=submit", *tiny_overrides(tmp_path, trained, name="other")) == 0
    assert leaderboard(tmp_path, "other")["rank"].tolist() == list(range(1, 6))
    assert leaderboard(tmp_path).equals(board)
    assert not (tmp_path / "submissions" / "leaderboard.csv").exists()


def _rows_and_probs(competition):
    """The train rows' indices and a maker of OOF probabilities for them: right (the label
    on top, 0.6) where `right`, else the next class on top (0.4 against 0.35)."""
    train = pd.read_csv(competition / "train.csv", dtype=str)
    classes = sorted(train["label"].unique())
    y = np.array([classes.index(label) for label in train["label"]])
    rows, n = np.arange(len(y)), len(classes)

    def probs(right: np.ndarray) -> np.ndarray:
        out = np.full((len(y), n), 0.2)
        out[rows, y] = np.where(right, 0.6, 0.35)
        out[rows, (y + 1) % n] = np.where(right, 0.2, 0.4)
        return out / out.sum(1, keepdims=True)

    return rows, probs


def _two_rounds(tmp_path, competition) -> dict[str, str]:
    """Fake prediction sets (as training writes them) of two round-0 models, each right
    on every other row, whose mean is right on all, and of their round-1 successors, right
    on three rows in four, all wrong on the same rows; their names."""
    from tests.helpers import fake_prediction_set, run_path

    rows, probs = _rows_and_probs(competition)
    sets = {"a0": (rows % 2 == 0, 0, "small_cnn-a0"), "b0": (rows % 2 == 1, 0, "small_cnn-b0"),
            "a1": (rows % 4 != 3, 1, "small_cnn-a0"), "b1": (rows % 4 != 3, 1, "small_cnn-b0")}
    for seed, (name, (right, round_, lineage)) in enumerate(sets.items()):
        fake_prediction_set(run_path(tmp_path), competition, f"small_cnn-{name}", seed,
                            oof_probs=probs(right), round=round_, lineage=lineage)
    return {name: f"small_cnn-{name}" for name in sets}


def test_round_zeros_ensembles_compete_with_the_latest_rounds(tmp_path, competition,
                                                             comp_caplog):
    """stage=ensemble (as stage=all runs it) after a pseudo-label round: of the round-1
    models and of the round-0 models too, so round 0's pick may be its ensemble (here the
    only entry right on every row) and the round's gain is measured against it, not
    against round 0's singles; each set's log line names its round."""
    from tests.helpers import run_path

    names = _two_rounds(tmp_path, competition)
    overrides = tiny_overrides(tmp_path, competition, quiet="false",
                               **{"pseudo.average_fits": "false"})
    assert run_comp("stage=ensemble", *overrides) == 0
    said = [r.getMessage().split(";")[0] for r in comp_caplog.records
            if r.getMessage().startswith("ensemble: 2 models")]
    assert said == ["ensemble: 2 models as after round 0", "ensemble: 2 models as after round 1"]
    built = {tuple(info["models"]): info for info in
             (json.loads(p.read_text()) for p in run_path(tmp_path).glob("ensemble/*/cv.json"))}
    assert set(built) == {(names["a0"], names["b0"]), (names["a1"], names["b1"])}
    round0 = built[(names["a0"], names["b0"])]
    assert round0["round"] == 0 and round0["cv"]["accuracy"] == 1.0
    assert built[(names["a1"], names["b1"])]["round"] == 1
    # `ensemble-mean` (predict.using, export.using) is the latest round's, even where
    # round 0's was written last
    from comp.workspace import RunDir

    run = RunDir(run_path(tmp_path))
    os.utime(run.find_ensemble(round0["name"]) / "cv.json")
    latest = built[(names["a1"], names["b1"])]["name"].removeprefix("ensemble-")
    assert run.find_ensemble("ensemble-mean").name == latest
    assert run_comp("stage=submit", *overrides) == 0
    selection = json.loads((run_path(tmp_path) / "selection.json").read_text())
    assert selection["final_choice"] == round0["name"]
    assert leaderboard(tmp_path)["name"][0] == round0["name"]


def _fits_over_rounds(tmp_path, competition) -> dict[str, str]:
    """Fake prediction sets of one fine-tuned model fitted in round 0 and round 1 (the same
    lineage), each right on two rows in three but not the same rows, so that their mean is
    right on every row, and of a classic head fitted in both rounds, right on every other
    row; their names."""
    from tests.helpers import fake_prediction_set, run_path

    rows, probs = _rows_and_probs(competition)
    sets = {"small_cnn-f0": (rows % 3 != 0, 0, "small_cnn-f0", "finetune"),
            "small_cnn-f1": (rows % 3 != 1, 1, "small_cnn-f0", "finetune"),
            "pixels+logreg-h0": (rows % 2 == 0, 0, "pixels+logreg-h0", "classic"),
            "pixels+logreg-h1": (rows % 2 == 1, 1, "pixels+logreg-h0", "classic")}
    for seed, (name, (right, round_, lineage, kind)) in enumerate(sets.items()):
        fake_prediction_set(run_path(tmp_path), competition, name, seed,
                            oof_probs=probs(right), round=round_, lineage=lineage,
                            model_kind=kind)
    return {name[-2:]: name for name in sets}


def test_a_models_fits_over_the_rounds_are_averaged_and_stand_for_it(tmp_path, competition):
    """After a pseudo-label round, stage=ensemble averages each model's fits of every round
    (pseudo.average_fits, the default) into an entry of the latest round, and stage=submit
    ranks that mean in place of the round's fit alone: here it is right on every row where
    each fit is right on two in three. A classic head's fits are not averaged (its
    round's fit replaces round 0's); with pseudo.average_fits=false no mean is built or
    ranked, and the round's fit is ranked."""
    from tests.helpers import run_path

    names = _fits_over_rounds(tmp_path, competition)
    overrides = tiny_overrides(tmp_path, competition)
    assert run_comp("stage=ensemble", *overrides) == 0
    fits = [json.loads(p.read_text()) for p in run_path(tmp_path).glob("ensemble/fits-*/cv.json")]
    assert [(f["models"], f["fits_of"], f["round"], f["method"]) for f in fits] == [
        ([names["f0"], names["f1"]], names["f0"], 1, "mean")]
    assert fits[0]["cv"]["accuracy"] == 1.0
    assert fits[0]["name"].startswith("ensemble-fits-")
    assert run_comp("stage=submit", *overrides) == 0
    board = leaderboard(tmp_path)
    assert board["name"][0] == fits[0]["name"]  # rank 1: the mean of the two fits
    assert names["f1"] not in set(board["name"])  # the round's fit alone is not ranked
    assert names["h1"] in set(board["name"]) and names["h0"] not in set(board["name"])
    row = board.set_index("name").loc[fits[0]["name"]]
    assert row["settings"] == f"mean of {names['f0']}'s fits in rounds 0-1"
    selection = json.loads((run_path(tmp_path) / "selection.json").read_text())
    assert selection["final_choice"] == fits[0]["name"] and selection["average_fits"]
    # turned off after the means were built: they are not ranked, the round's fit is
    off = tiny_overrides(tmp_path, competition, **{"pseudo.average_fits": "false"})
    assert run_comp("stage=submit", *off) == 0
    names_off = set(leaderboard(tmp_path)["name"])
    assert names["f1"] in names_off and fits[0]["name"] not in names_off

    plain = tmp_path / "plain"
    _fits_over_rounds(plain, competition)
    overrides = tiny_overrides(plain, competition, **{"pseudo.average_fits": "false"})
    assert run_comp("stage=ensemble", *overrides) == 0
    assert not list(run_path(plain).glob("ensemble/fits-*"))
    assert run_comp("stage=submit", *overrides) == 0
    assert names["f1"] in set(leaderboard(plain)["name"])
