"""Stages read only complete artifacts, AUC-only ensembles never label, and time_limit
holds for every stage that trains and names itself when it stops everything."""

import re
import shutil

import pandas as pd
import pytest

from comp import Competition
from comp.artifacts import read_json, write_json
from comp.crashpoints import EXIT_CODE
from comp.errors import CompError
from comp.run import main
from tests.helpers import fake_prediction_set, run_comp_process, run_path, tiny_overrides


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("comp: error: "), err
    return err[-1]


@pytest.fixture
def limit_spent_at_start(monkeypatch):
    """The stage's clock starts 5 s before the stage, so a 1 s time_limit is spent before
    the first unit whatever the machine's speed."""
    from comp.deadline import stage_started

    monkeypatch.setattr("comp.run.stage_started",
                        lambda when: stage_started(None if when is None else when - 5))


def test_time_limit_holds_for_stage_train_alone(tmp_path, competition, comp_caplog,
                                               limit_spent_at_start):
    overrides = tiny_overrides(tmp_path, competition, backbones="[small_cnn,small_cnn-b]",
                               time_limit="1", quiet="false")
    variant = "+backbone_overrides.small_cnn-b.model.dropout=0.1"
    assert main(["stage=train", *overrides, variant]) == 0
    assert not list(run_path(tmp_path).glob("models/*/fold*/metrics.json"))
    reached = [r.getMessage() for r in comp_caplog.records
               if "time_limit reached" in r.getMessage()]
    assert reached and all("not started" in m for m in reached)
    assert any("small_cnn-b-" in m for m in reached)  # the second model too


def test_time_limit_stopping_everything_says_so(tmp_path, competition, capsys,
                                                limit_spent_at_start):
    assert main(["stage=all", *tiny_overrides(tmp_path, competition, time_limit="1")]) == 2
    line = _error(capsys)
    assert "time_limit=1 s was spent before any model finished" in line
    assert "run stage=train first" not in line


def test_the_leaderboard_lists_only_entries_whose_files_exist(tmp_path, competition):
    for seed, model_id in enumerate(["small_cnn-aaaa", "small_cnn-bbbb"]):
        fake_prediction_set(run_path(tmp_path), competition, model_id, seed)
    overrides = tiny_overrides(tmp_path, competition)
    assert main(["stage=submit", *overrides]) == 0
    board = pd.read_csv(tmp_path / "submissions" / "tiny" / "leaderboard.csv")
    assert sorted(board["name"]) == ["small_cnn-aaaa", "small_cnn-bbbb"]
    shutil.rmtree(run_path(tmp_path) / "preds" / "small_cnn-aaaa")  # a model removed
    assert main(["stage=submit", *overrides]) == 0
    board = pd.read_csv(tmp_path / "submissions" / "tiny" / "leaderboard.csv")
    assert board["name"].tolist() == ["small_cnn-bbbb"] and board["rank"].tolist() == [1]
    # a row whose submission file is gone (a kill during stage=submit) is not listed
    (tmp_path / "submissions" / "tiny" / board.loc[0, "file"]).unlink()
    api = Competition(competition, name="tiny", runs_dir=tmp_path / "runs",
                      submissions_dir=tmp_path / "submissions")
    with pytest.raises(CompError, match="nothing from experiment 'tiny'"):
        api.leaderboard()


def test_predict_refuses_an_auc_only_ensemble(tmp_path, competition, capsys):
    for seed, model_id in enumerate(["small_cnn-aaaa", "small_cnn-bbbb"]):
        fake_prediction_set(run_path(tmp_path), competition, model_id, seed)
    overrides = tiny_overrides(tmp_path, competition, **{"ensemble.methods": "[mean,rank]"})
    assert main(["stage=ensemble", *overrides]) == 0
    image = sorted((competition / "test").iterdir())[0]
    assert main(["stage=predict", *overrides, f"predict.input={image}",
                 "predict.using=ensemble-rank"]) == 2
    line = _error(capsys)
    assert "predict.using=ensemble-rank" in line and "AUC only" in line


@pytest.mark.slow  # two ensemble runs and a child process: ~20 s
def test_an_optuna_ensemble_killed_mid_study_reruns_to_the_uninterrupted_result(
        tmp_path, competition):
    """stage=ensemble with the Optuna weights killed inside a study (its trials kept in the
    run's storage), then rerun: the same weights, OOF and test predictions as a run that
    was never killed."""
    settings = {"ensemble.methods": "[optuna]", "ensemble.optuna_trials": "8"}
    outputs = {}
    for where in ("through", "killed"):
        root = tmp_path / where
        shutil.copytree(competition, root / "comp")
        for seed, model_id in enumerate(["small_cnn-aaaa", "small_cnn-bbbb"]):
            fake_prediction_set(run_path(root), root / "comp", model_id, seed)
        overrides = tiny_overrides(root, root / "comp", **settings)
        if where == "killed":
            killed = run_comp_process("stage=ensemble", *overrides,
                                      crash_at="ensemble-trial:5")
            assert killed.returncode == EXIT_CODE, killed.stderr[-2000:]
            assert not list(run_path(root).glob("ensemble/optuna-*/cv.json"))
        assert main(["stage=ensemble", *overrides]) == 0
        (folder,) = run_path(root).glob("ensemble/optuna-*")
        outputs[where] = (read_json(folder / "cv.json")["weights"],
                          pd.read_csv(folder / "oof.csv"), pd.read_csv(folder / "test.csv"))
    assert outputs["killed"][0] == outputs["through"][0]
    for killed, through in zip(outputs["killed"][1:], outputs["through"][1:], strict=True):
        pd.testing.assert_frame_equal(killed, through)


def test_a_kill_between_an_ensembles_files_leaves_no_finished_ensemble(tmp_path, competition):
    run = run_path(tmp_path)
    for seed, model_id in enumerate(["small_cnn-aaaa", "small_cnn-bbbb"]):
        fake_prediction_set(run, competition, model_id, seed)
    overrides = tiny_overrides(tmp_path, competition, **{"ensemble.methods": "[weighted]"})
    assert main(["stage=ensemble", *overrides]) == 0
    (first,) = sorted((run / "ensemble").glob("weighted-*"))
    assert len(read_json(first / "cv.json")["models"]) == 2
    fake_prediction_set(run, competition, "small_cnn-cccc", 2)  # a third model finished
    killed = run_comp_process("stage=ensemble", *overrides, crash_at="ensemble:weighted")
    assert killed.returncode == EXIT_CODE, killed.stderr
    (second,) = [d for d in (run / "ensemble").glob("weighted-*") if d != first]
    assert not (second / "cv.json").exists()  # half-written: not done, never used
    info = read_json(first / "cv.json")  # the earlier ensemble stands, whole
    assert len(info["models"]) == 2 and sorted(info["weights"]) == info["models"]
    assert main(["stage=submit", *overrides]) == 0
    board = pd.read_csv(tmp_path / "submissions" / "tiny" / "leaderboard.csv")
    assert f"ensemble-{second.name}" not in set(board["name"])
    assert f"ensemble-{first.name}" in set(board["name"])
    assert main(["stage=ensemble", *overrides]) == 0
    info = read_json(second / "cv.json")
    assert len(info["models"]) == 3 and sorted(info["weights"]) == info["models"]


def _unit_seconds(tmp_path, seconds: float) -> list:
    """Each trained unit's metrics.json now says it took `seconds`; their paths."""
    paths = sorted(run_path(tmp_path).glob("models/*/fold*/metrics.json"))
    for path in paths:
        write_json(path, {**read_json(path), "seconds": seconds})
    return paths


@pytest.mark.slow  # trains (round 1; the session's trained fixture)
def test_a_pseudo_round_that_cannot_finish_in_time_is_not_started(tmp_path, trained,
                                                                  comp_caplog):
    units = _unit_seconds(tmp_path, 1000.0)  # round 0: two units of 1,000 s each
    assert len(units) == 2
    overrides = tiny_overrides(tmp_path, trained, time_limit="600", quiet="false",
                               **{"pseudo.rounds": "1"})
    assert main(["stage=all", *overrides]) == 0
    skipped = [r.getMessage() for r in comp_caplog.records
               if "pseudo-label round 1's training not started" in r.getMessage()]
    assert len(skipped) == 1, skipped
    estimate = float(re.search(r"about (\d+) s", skipped[0]).group(1))
    assert estimate >= 2000  # more rows than round 0 (pseudo-labels), never fewer
    assert sorted(run_path(tmp_path).glob("models/*/fold*/metrics.json")) == units
    assert (tmp_path / "submissions" / "tiny" / "leaderboard.csv").exists()
    page = (run_path(tmp_path) / "report" / "index.html").read_text()
    said = re.search(r"No model was trained on these labels</b>: the round should have "
                     r"taken about (\d+) s and time_limit=600 s left (\d+) s", page)
    assert said and float(said.group(1)) == estimate and int(said.group(2)) <= 600, page
    assert main(["stage=train", *overrides, "pseudo.round=1"]) == 0  # trained after all
    assert main(["stage=report", *overrides]) == 0
    page = (run_path(tmp_path) / "report" / "index.html").read_text()
    assert "Pseudo-labels, round 1" in page and "No model was trained" not in page


@pytest.mark.slow  # the session's trained fixture trains
def test_the_round_estimate_scales_the_units_the_round_has_left(tmp_path, trained):
    from comp.config import load_config
    from comp.data.prepared import prepare
    from comp.predictions import read_table
    from comp.pseudo.files import make_pseudo_labels
    from comp.rounds import round_seconds, specs_for_round

    cfg = load_config(tiny_overrides(tmp_path, trained, **{"pseudo.rounds": "1"}))
    prepared = prepare(cfg)
    units = _unit_seconds(tmp_path, 30.0)
    make_pseudo_labels(cfg, prepared, 1)
    share = []  # 30 s times the unit's rows with its pseudo-labels over its rows without
    for unit in range(2):
        labelled = len(prepared.unit_train_rows(unit))
        added = len(read_table(prepared.run.pseudo_csv(1, unit)))
        assert added > 0
        share.append(30.0 * (labelled + added) / labelled)
    assert round_seconds(cfg, prepared, 1) == pytest.approx(sum(share))
    same_steps = load_config(tiny_overrides(tmp_path, trained, **{
        "pseudo.rounds": "1", "pseudo.epoch_rows": "labelled"}))
    assert round_seconds(same_steps, prepared, 1) == pytest.approx(2 * 30.0)  # unscaled
    [again] = specs_for_round(cfg, prepared, 1)
    shutil.copytree(units[0].parent, prepared.run.fold_dir(again.model_id, 0))
    assert round_seconds(cfg, prepared, 1) == pytest.approx(share[1])  # unit 0 is done
    shutil.copytree(units[1].parent, prepared.run.fold_dir(again.model_id, 1))
    assert round_seconds(cfg, prepared, 1) == 0.0  # the round is done


@pytest.mark.slow  # the session's trained fixture trains
def test_a_kill_between_two_units_pseudo_labels_leaves_no_round_to_train_on(tmp_path,
                                                                           trained, capsys):
    run = run_path(tmp_path)
    hard = tiny_overrides(tmp_path, trained, **{"pseudo.round": "1"})
    assert main(["stage=pseudo", *hard]) == 0
    first = (run / "pseudo" / "round1" / "fold0.csv").read_text()
    soft = [*hard, "pseudo.soft=true"]  # other rules: the files are written again
    killed = run_comp_process("stage=pseudo", *soft, crash_at="pseudo:0")
    assert killed.returncode == EXIT_CODE, killed.stderr
    assert (run / "pseudo" / "round1" / "fold0.csv").read_text() != first  # unit 0: soft
    assert not (run / "pseudo" / "round1" / "summary.json").exists()  # unit 1: still hard
    assert main(["stage=train", *hard]) == 2  # round 1 would train on a mix: refused
    line = _error(capsys)
    assert "summary.json: missing" in line and "run stage=pseudo" in line, line
    assert main(["stage=submit", *hard]) == 0
    assert main(["stage=report", *hard]) == 0  # the report leaves the round out
    assert main(["stage=pseudo", *hard]) == 0  # the hard rules again: every unit rewritten
    assert (run / "pseudo" / "round1" / "fold0.csv").read_text() == first
