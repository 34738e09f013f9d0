"""data.repeats: repeated stratified group K-fold. folds.csv gains a column per extra
repeat, every model trains folds x repeats units (fold<r*K+k>), its OOF prediction is
the mean over the repeats and its test prediction the mean over the units; the repeats
are fold settings of the run directory. (Leakage per unit: tests/test_leakage.py.)"""

from __future__ import annotations

import io
import json
import shutil
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from comp.artifacts import fingerprint
from comp.config import load_config
from comp.data.folds import make_folds
from comp.data.prepared import prepare
from comp.predictions import read_table
from comp.run import main
from comp.training.trainer import collect_predictions
from tests.helpers import (
    P_COLS,
    ensemble_dir,
    fold_metrics,
    run_comp,
    run_path,
    tiny_overrides,
)


def _groups_stay_together(folds: pd.DataFrame, column: str) -> bool:
    return bool((folds.groupby("group")[column].nunique() == 1).all())


def test_each_repeat_is_a_stratified_group_split_with_its_own_seed():
    labels = ["a"] * 20 + ["b"] * 10
    groups = np.arange(30)
    groups[[1, 2, 3]] = 0  # one duplicate group of four images, one of two
    groups[[11]] = 10
    ids = [f"{i}.png" for i in range(30)]
    folds = make_folds(ids, labels, groups, 3, seed=4, repeats=3)
    assert list(folds.columns) == ["id", "label", "fold", "group", "fold_r1", "fold_r2"]
    single = make_folds(ids, labels, groups, 3, seed=4)
    pd.testing.assert_frame_equal(folds[single.columns], single)  # repeat 0: as before
    for repeat, column in enumerate(("fold", "fold_r1", "fold_r2")):
        assert _groups_stay_together(folds, column)
        per_fold = folds.groupby(column)["label"].value_counts().unstack()
        assert (per_fold["b"] >= 3).all() and (per_fold["a"] >= 6).all()
        assert (folds[column].to_numpy() == make_folds(
            ids, labels, groups, 3, seed=4 + repeat)["fold"].to_numpy()).all()
    # the repeats split differently: more than K (fold, fold_r1) pairs occur
    assert len(pd.crosstab(folds["fold"], folds["fold_r1"]).stack().loc[lambda s: s > 0]) > 3


def _prepared(tmp_path, competition, **extra):
    overrides = tiny_overrides(tmp_path, competition, **extra)
    assert main(["stage=prepare", *overrides]) == 0
    return prepare(load_config(["weights=none", *overrides]))


def test_prepare_writes_the_repeats_and_units_cover_every_row_once_per_repeat(
        tmp_path, competition):
    prepared = _prepared(tmp_path, competition, **{"data.repeats": "2"})
    folds = read_table(run_path(tmp_path) / "folds.csv")
    assert list(folds.columns) == ["id", "label", "fold", "group", "fold_r1"]
    assert _groups_stay_together(folds, "fold") and _groups_stay_together(folds, "fold_r1")
    assert (prepared.n_folds, prepared.n_repeats, prepared.n_units) == (2, 2, 4)
    rows = np.arange(len(folds))
    for repeat in (0, 1):
        units = (2 * repeat, 2 * repeat + 1)
        held = np.concatenate([prepared.unit_val_rows(u) for u in units])
        assert sorted(held) == rows.tolist()  # each row held out once per repeat
        for u in units:
            assert prepared.unit_fold_column(u) == ("fold", "fold_r1")[repeat]
            train, val = prepared.unit_train_rows(u), prepared.unit_val_rows(u)
            assert not set(train) & set(val) and len(train) + len(val) == len(rows)
            column = folds[("fold", "fold_r1")[repeat]].to_numpy()
            assert (val == np.nonzero(column == u % 2)[0]).all()
    with pytest.raises(IndexError):
        prepared.unit_val_rows(4)
    assert json.loads((run_path(tmp_path) / "data.json").read_text())["settings"][
        "repeats"] == 2


def test_folds_key_keeps_its_value_for_one_repeat_and_changes_with_repeats(
        tmp_path, competition):
    one = _prepared(tmp_path / "one", competition)
    assert one.n_repeats == 1 and one.n_units == one.n_folds == 2
    # unchanged for one repeat: existing model ids and study names stay valid
    assert one.folds_key == fingerprint(one.folds[["id", "label", "fold"]].to_dict("list"))
    two = _prepared(tmp_path / "two", competition, **{"data.repeats": "2"})
    assert two.folds_key != one.folds_key
    assert (two.folds["fold"] == one.folds["fold"]).all()  # repeat 0 is the same split


def test_changing_repeats_on_a_run_directory_is_one_line(tmp_path, competition, capsys):
    overrides = tiny_overrides(tmp_path, competition)
    assert main(["stage=prepare", *overrides]) == 0
    capsys.readouterr()
    assert main(["stage=prepare", *overrides, "data.repeats=2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("comp: error: "), err
    assert "other fold settings (data.repeats=2, made with 1)" in err[0]
    # a run directory prepared before data.repeats existed counts as one repeat
    data_json = run_path(tmp_path) / "data.json"
    recorded = json.loads(data_json.read_text())
    del recorded["settings"]["repeats"]
    data_json.write_text(json.dumps(recorded))
    assert main(["stage=prepare", *overrides]) == 0
    assert main(["stage=prepare", *overrides, "data.repeats=3"]) == 2
    # one prepared before data.dedup_min_correlation was grouped by the hashes alone
    del recorded["settings"]["min_correlation"]
    data_json.write_text(json.dumps(recorded))
    capsys.readouterr()
    assert main(["stage=prepare", *overrides]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.dedup_min_correlation=0.95, made with -1.0" in err[0], err
    assert main(["stage=prepare", *overrides, "data.dedup_min_correlation=-1"]) == 0


def test_only_fold_names_a_unit(tmp_path, competition, capsys):
    overrides = tiny_overrides(tmp_path, competition, **{"data.repeats": "2"})
    assert main(["stage=train", *overrides, "only.fold=4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "only.fold=4 is outside 0..3" in err[0], err
    assert "2 folds x 2 repeats" in err[0]
    assert not fold_metrics(tmp_path)


def test_oof_is_the_mean_over_repeats_and_test_the_mean_over_units(tmp_path, competition):
    prepared = _prepared(tmp_path, competition, **{"data.repeats": "2"})
    spec = SimpleNamespace(model_id="pixels-0000", kind="classic", backbone="pixels",
                           fold_params=None)
    rng = np.random.default_rng(0)
    ids = prepared.folds["id"].to_numpy()
    test_ids = prepared.competition.test["id"].tolist()
    val_probs, test_probs = np.zeros((len(ids), 3)), np.zeros((len(test_ids), 3))
    for unit in range(prepared.n_units):
        folder = prepared.run.fold_dir(spec.model_id, unit)
        folder.mkdir(parents=True)
        rows = prepared.unit_val_rows(unit)
        probs = rng.dirichlet(np.ones(3), size=len(rows))
        val_probs[rows] += probs / prepared.n_repeats
        pd.DataFrame({"id": ids[rows], **dict(zip(P_COLS, probs.T, strict=True))}).iloc[
            ::-1].to_csv(folder / "val.csv", index=False)  # joined by id, not by position
        probs = rng.dirichlet(np.ones(3), size=len(test_ids))
        test_probs += probs / prepared.n_units
        pd.DataFrame({"id": test_ids, **dict(zip(P_COLS, probs.T, strict=True))}).to_csv(
            folder / "test.csv", index=False)
    result = collect_predictions(spec, prepared, {"round": 0})
    assert result["repeats"] == 2 and sorted(result["folds"]) == [0, 1]
    oof = read_table(run_path(tmp_path) / "preds" / spec.model_id / "oof.csv")
    assert list(oof.columns) == ["id", "fold", "label", *P_COLS]
    assert (oof["id"] == ids).all() and (oof["fold"] == prepared.folds["fold"]).all()
    assert np.allclose(oof[P_COLS].to_numpy(), val_probs)
    test = read_table(run_path(tmp_path) / "preds" / spec.model_id / "test.csv")
    assert np.allclose(test[P_COLS].to_numpy(), test_probs)


def _unit_mtimes(run, model_id: str) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns
            for p in sorted((run / "models" / model_id).glob("fold*/metrics.json"))}


@pytest.mark.slow
def test_repeated_classic_models_train_every_unit_and_resume_one(tmp_path, competition, capsys):
    overrides = tiny_overrides(tmp_path, competition, **{
        "data.repeats": "2", "backbones": "[]", "classic.pixels_size": "16",
        "classic.models": "[pixels@16+logreg,pixels@16+knn]",
        "ensemble.methods": "[mean,greedy]"})
    assert run_comp("stage=all", *overrides) == 0
    run = run_path(tmp_path)
    prepared = prepare(load_config(["weights=none", *overrides]))
    model = next(p.name for p in (run / "preds").iterdir() if "+logreg" in p.name)
    assert sorted(p.name for p in (run / "models" / model).glob("fold*")) == [
        "fold0", "fold1", "fold2", "fold3"]  # 2 folds x 2 repeats
    oof = read_table(run / "preds" / model / "oof.csv").set_index("id")
    mean = pd.DataFrame(0.0, index=oof.index, columns=P_COLS)
    test = read_table(run / "preds" / model / "test.csv").set_index("id")
    test_mean = pd.DataFrame(0.0, index=test.index, columns=P_COLS)
    for unit in range(4):
        folder = run / "models" / model / f"fold{unit}"
        val = read_table(folder / "val.csv").set_index("id")
        assert sorted(val.index) == sorted(prepared.folds["id"].to_numpy()[
            prepared.unit_val_rows(unit)])
        mean.loc[val.index] += val[P_COLS] / 2
        test_mean += read_table(folder / "test.csv").set_index("id").loc[test.index,
                                                                         P_COLS] / 4
        assert json.loads((folder / "metrics.json").read_text())["repeat"] == unit // 2
    assert np.allclose(oof[P_COLS], mean.loc[oof.index]) and np.allclose(test, test_mean)
    assert (oof["fold"] == prepared.folds.set_index("id").loc[oof.index, "fold"]).all()
    info = json.loads((run / "preds" / model / "cv.json").read_text())
    assert info["repeats"] == 2 and sorted(info["folds"]) == ["0", "1"]
    assert json.loads((ensemble_dir(run, "greedy") / "cv.json").read_text())["repeats"] == 2
    assert (run / "selection.json").exists()
    # stage=predict averages every unit, as the test predictions do
    target = tmp_path / "predicted.csv"
    assert run_comp("stage=predict", *overrides, f"predict.input={competition / 'test'}",
                    f"predict.using={model}", f"predict.output={target}") == 0
    predicted = read_table(target).set_index("id")
    assert np.allclose(predicted.loc[test.index, P_COLS], test[P_COLS], atol=1e-6)

    # resume: a deleted unit is the only one planned and the only one trained again
    before = _unit_mtimes(run, model)
    predictions = {p.name: p.read_text() for p in (run / "preds" / model).glob("*.csv")}
    shutil.rmtree(run / "models" / model / "fold3")
    capsys.readouterr()
    assert run_comp("stage=plan", *overrides) == 0
    planned = [line for line in capsys.readouterr().out.splitlines()
               if line.startswith("only.")]
    assert planned == [f"only.model={model} only.fold=3"]
    assert run_comp("stage=train", *overrides) == 0
    after = _unit_mtimes(run, model)
    assert sorted(after) == sorted(before)
    assert [u for u in after if after[u] != before[u]] == ["fold3"]
    for name, text in predictions.items():  # logistic regression: the same numbers again
        assert np.allclose(read_table(run / "preds" / model / name)[P_COLS],
                           pd.read_csv(io.StringIO(text))[P_COLS])
