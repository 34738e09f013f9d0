"""Tests with teeth at the call sites: no unit's (fold's, of each repeat) validation
images reach its training (fine-tuning, classic heads, tuning trials, pseudo-label
rounds), ensembles report the nested figure, near-duplicates stay in one fold."""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import comp.training.classic as classic
import comp.training.fit as fit
import comp.tuning.search as tune_search
from comp.config import load_config
from comp.data.folds import duplicate_groups, fingerprints
from comp.data.prepared import prepare
from comp.ensemble import METHODS, fit_method, nested_predictions
from comp.metrics import scores
from comp.run import main
from tests.helpers import TUNE_FAST, make_competition, tiny_overrides


def _record_fits(monkeypatch) -> list[dict]:
    """Wrap every fit the product makes and record which rows it trained on."""
    calls: list[dict] = []
    real_fit, real_classic = fit.fit_fold, classic.fit_classic
    real_features = classic.ClassicFeatures.__init__

    def fit_fold(model, data, *args, **kwargs):
        # the one fit every fine-tune and tuning trial makes; the caller says which
        caller = sys._getframe(1).f_code.co_filename
        calls.append({"kind": "tune" if caller == tune_search.__file__ else "finetune",
                      "rows": np.asarray(data.rows).copy(),
                      "n_labelled": data.features.shape[1],
                      "val": np.asarray(data.val_rows),
                      "stop": None if data.stop_rows is None else np.asarray(data.stop_rows)})
        return real_fit(model, data, *args, **kwargs)

    def fit_classic(spec, rows, *args, **kwargs):
        calls.append({"kind": "classic", "n_rows": rows.features.shape[1],
                      "view0": np.asarray(rows.features[0]).copy()})
        return real_classic(spec, rows, *args, **kwargs)

    def classic_features(self, *args, **kwargs):
        real_features(self, *args, **kwargs)
        calls.append({"kind": "embeddings", "train": np.asarray(self.features["train"][0])})

    monkeypatch.setattr(fit, "fit_fold", fit_fold)
    monkeypatch.setattr(classic, "fit_classic", fit_classic)
    monkeypatch.setattr(classic.ClassicFeatures, "__init__", classic_features)
    return calls


@pytest.mark.slow
def test_no_unit_trains_on_its_validation_rows(tmp_path, monkeypatch):
    """Every fit of every unit (fold of a repeat) in training, tuning and a pseudo-label
    round trains on exactly the unit's training rows (+ its pseudo rows, voted by that
    unit's models), never on its validation rows or their pool twins. Two repeats: the
    first repeat's units are the folds of a run without repeats (the same code path)."""
    repeats = 2
    data = make_competition(tmp_path / "comp", n_unlabeled=9)
    train = pd.read_csv(data / "train.csv")
    Image.open(data / "train" / train["id"].iloc[0]).transpose(
        Image.Transpose.FLIP_LEFT_RIGHT).save(data / "unlabeled" / "twin.png")
    calls = _record_fits(monkeypatch)
    overrides = tiny_overrides(tmp_path, data, **{
        "data.repeats": str(repeats), "tune.n_trials": "1", "tune.inner_folds": "2",
        **TUNE_FAST,
        "pseudo.rounds": "1", "pseudo.fraction": "1.0", "pseudo.min_confidence": "0",
        "classic.models": "[pixels+logreg]", "classic.pixels_size": "16",
        "train.epoch_choice": "inner"})  # the path with epoch-choosing rows (default: last)
    assert main(["stage=all", *overrides]) == 0
    run = tmp_path / "runs" / "tiny"
    prepared = prepare(load_config(overrides))
    folds = prepared.folds
    units = range(prepared.n_units)
    assert prepared.n_units == 2 * repeats
    val_of = {u: set(prepared.unit_val_rows(u).tolist()) for u in units}
    train_of = {u: set(prepared.unit_train_rows(u).tolist()) for u in units}

    # fine-tuning: round 0, round 1 (pseudo) and round 1 with the tuned settings
    trained = []
    for call in (c for c in calls if c["kind"] == "finetune"):
        (unit,) = [u for u in units if val_of[u] == set(call["val"].tolist())]
        labelled = set(call["rows"][call["rows"] < call["n_labelled"]].tolist())
        assert call["stop"] is not None
        stop = set(call["stop"].tolist())
        assert not labelled & val_of[unit] and not stop & val_of[unit]
        assert not stop & labelled  # the epoch-choosing rows do not train
        assert labelled | stop == train_of[unit]
        trained.append(unit)
    assert sorted(trained) == sorted([*units] * 3)
    # tuning: every inner fit of unit u's study splits exactly unit u's training rows
    tuned = set()
    for call in (c for c in calls if c["kind"] == "tune"):
        seen = set(call["rows"].tolist()) | set(call["val"].tolist())
        matches = [u for u in units if seen == train_of[u]]
        assert matches and not any(seen & val_of[u] for u in matches)
        tuned.update(matches)
    assert tuned == set(units)
    # classic heads: the rows of each fit, found by their embeddings, are one unit's
    # training rows (the rest are its pseudo rows) in round 0 and in round 1
    embeddings, *again = [c["train"] for c in calls if c["kind"] == "embeddings"]
    assert all(np.array_equal(e, embeddings) for e in again)
    row_of = {row.tobytes(): i for i, row in enumerate(embeddings)}
    assert len(row_of) == len(embeddings)
    fitted = []
    for call in (c for c in calls if c["kind"] == "classic"):
        rows = [row_of.get(row.tobytes()) for row in call["view0"]]
        labelled = {r for r in rows if r is not None}
        matches = [u for u in units if labelled == train_of[u]]
        assert matches
        fitted.append(matches)
    assert len(fitted) == 2 * len(units)
    assert set().union(*fitted) == set(units)

    # pseudo round: each unit's file holds pool images only, voted by that unit's round 0
    # models, without the pool twin of a validation image of that unit
    summary = json.loads((run / "pseudo" / "round1" / "summary.json").read_text())
    twin_row = int(np.nonzero(folds["id"].to_numpy() == train["id"].iloc[0])[0][0])
    for unit in units:
        table = pd.read_csv(run / "pseudo" / "round1" / f"fold{unit}.csv", dtype={"id": str})
        assert set(table["split"]) <= {"unlabeled", "test"}  # pseudo.splits by default
        assert not set(table["id"]) & set(folds["id"])
        if twin_row in val_of[unit]:
            assert "twin.png" not in set(table["id"])
        assert len(table) > 0
        # the unit's teacher: one voter, or the voters' mean (the only ensemble method here)
        teacher, voters = summary["folds"][str(unit)]["teacher"], summary["settings"]["voters"]
        taught_by = [teacher] if teacher in voters else voters
        votes = sum(pd.concat({split: pd.read_csv(run / "models" / v / f"fold{unit}" /
                                                  f"{split}.csv", dtype={"id": str})
                               .set_index("id") for split in ("unlabeled", "test")})
                    for v in taught_by) / len(taught_by)
        chosen = list(zip(table["split"], table["id"], strict=True))
        assert np.allclose(table["confidence"], votes.loc[chosen].to_numpy().max(axis=1))
    with_pseudo = 0
    for metrics in run.glob("models/*/fold*/metrics.json"):
        record = json.loads(metrics.read_text())
        unit = record["fold"]
        assert metrics.parent.name == f"fold{unit}"
        if record["pseudo_ids"]:
            file = pd.read_csv(run / "pseudo" / "round1" / f"fold{unit}.csv", dtype={"id": str})
            assert sorted(record["pseudo_ids"]) == sorted(file["id"])
            with_pseudo += 1
    assert with_pseudo == 3 * len(units)  # round 1: fine-tuned, classic and tuned


@pytest.mark.slow
def test_a_pool_twin_of_a_validation_image_is_not_pseudo_labelled_for_that_fold(tmp_path):
    data = make_competition(tmp_path / "comp", n_unlabeled=4)
    train = pd.read_csv(data / "train.csv")
    twin = train["id"].iloc[0]
    Image.open(data / "train" / twin).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(
        data / "unlabeled" / "twin.png")
    overrides = tiny_overrides(tmp_path, data, **{
        "pseudo.rounds": "1", "pseudo.fraction": "1.0", "pseudo.min_confidence": "0",
        "classic.models": "[]"})
    assert main(["stage=all", *overrides]) == 0
    run = tmp_path / "runs" / "tiny"
    folds = pd.read_csv(run / "folds.csv", dtype={"id": str})
    fold_of_twin = int(folds.loc[folds["id"] == twin, "fold"].iloc[0])
    used = pd.read_csv(run / "pseudo" / "round1" / f"fold{fold_of_twin}.csv", dtype={"id": str})
    assert "twin.png" not in set(used["id"])
    other = pd.read_csv(run / "pseudo" / "round1" / f"fold{1 - fold_of_twin}.csv",
                        dtype={"id": str})
    assert len(other) > 0


def test_near_duplicates_share_a_fold_both_ways():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(6, 64, 64, 3), dtype=np.uint8)
    images[3] = np.rot90(images[0], k=1)  # a rotated copy
    images[5] = images[2][:, ::-1]  # a mirrored copy
    groups = duplicate_groups(fingerprints(images), 6, 0.95)
    assert groups[3] == groups[0] and groups[5] == groups[2]
    assert len(set(groups)) == 4
    flipped_order = duplicate_groups(fingerprints(images[::-1]), 6, 0.95)[::-1]
    assert (pd.Series(flipped_order).factorize()[0] == pd.Series(groups).factorize()[0]).all()


@pytest.mark.parametrize("name", ["weighted", "greedy", "stacked"])
def test_learned_ensembles_report_the_nested_figure(name):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 240)
    members = rng.dirichlet(np.ones(3), size=(6, 240))  # six models of pure noise
    folds = np.arange(240) % 4
    method = METHODS[name]
    in_sample = scores(y, method.apply(members, fit_method(method, members, y)))["log_loss"]
    nested = scores(y, nested_predictions(method, members, y, folds))["log_loss"]
    assert nested > in_sample + 0.005  # in-sample flatters noise; nested does not


def test_rank_average_is_never_a_label_entry():
    assert METHODS["rank"].labels is False
    assert all(METHODS[m].labels for m in METHODS if m != "rank")
