"""Tests with teeth at the call sites: no fold's validation images reach its training
(fine-tuning, classic heads, tuning trials, pseudo-label rounds), ensembles report the
nested figure, near-duplicates stay in one fold."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import comp.training.classic as classic
import comp.training.trainer as trainer
import comp.tuning.search as tune_search
from comp.data.folds import duplicate_groups, perceptual_hashes
from comp.ensemble import METHODS, fit_method, nested_predictions
from comp.metrics import scores
from comp.run import main
from tests.helpers import make_competition, tiny_overrides


def _record_fits(monkeypatch) -> list[dict]:
    """Wrap every fit the product makes and record which rows it trained on."""
    calls: list[dict] = []
    real_fit, real_classic = trainer.fit_fold, classic.fit_classic

    def fit_fold(model, data, *args, **kwargs):
        calls.append({"kind": "finetune", "rows": np.asarray(data.rows).copy(),
                      "n_labelled": data.features.shape[1], "val": np.asarray(data.val_rows),
                      "stop": None if data.stop_rows is None else np.asarray(data.stop_rows)})
        return real_fit(model, data, *args, **kwargs)

    def fit_classic(spec, features, labels, groups, n_classes, weights=None):
        calls.append({"kind": "classic", "n_rows": features.shape[1]})
        return real_classic(spec, features, labels, groups, n_classes, weights)

    monkeypatch.setattr(trainer, "fit_fold", fit_fold)
    monkeypatch.setattr(tune_search, "fit_fold", fit_fold)
    monkeypatch.setattr(classic, "fit_classic", fit_classic)
    return calls


@pytest.mark.slow
def test_no_fold_trains_on_its_validation_rows(tmp_path, monkeypatch):
    data = make_competition(tmp_path / "comp", n_unlabeled=9)
    calls = _record_fits(monkeypatch)
    overrides = tiny_overrides(tmp_path, data, **{
        "pseudo.rounds": "1", "pseudo.fraction": "1.0", "pseudo.min_confidence": "0",
        "classic.models": "[pixels+logreg]", "classic.pixels_size": "16",
        "train.epoch_choice": "inner"})  # the path with epoch-choosing rows (default: last)
    assert main(["stage=all", *overrides]) == 0
    run = tmp_path / "runs" / "tiny"
    folds = pd.read_csv(run / "folds.csv", dtype={"id": str})
    fine = [c for c in calls if c["kind"] == "finetune"]
    assert len(fine) == 4  # 2 folds x (round 0, round 1)
    for call in fine:
        val_fold = set(folds["fold"].to_numpy()[call["val"]])
        assert len(val_fold) == 1
        labelled = call["rows"][call["rows"] < call["n_labelled"]]
        assert not set(labelled) & set(call["val"])  # no validation row trains
        assert set(folds["fold"].to_numpy()[labelled]) != val_fold
        assert call["stop"] is not None and not set(call["stop"]) & set(call["val"])
        assert not set(call["stop"]) & set(labelled)  # the epoch-choosing rows do not train
    # classic heads: each fold fits on the other fold's rows only (+ its pseudo rows)
    n_train = (folds["fold"] != 0).sum(), (folds["fold"] != 1).sum()
    classic_rows = [c["n_rows"] for c in calls if c["kind"] == "classic"]
    assert sorted(classic_rows[:2]) == sorted(n_train)
    # pseudo round: each fold's pseudo ids are pool images, never labelled ones
    for k in (0, 1):
        table = pd.read_csv(run / "pseudo" / "round1" / f"fold{k}.csv", dtype={"id": str})
        assert set(table["split"]) <= {"unlabeled"} and len(table) > 0
        assert not set(table["id"]) & set(folds["id"])
    for metrics in run.glob("models/*/fold*/metrics.json"):
        record = json.loads(metrics.read_text())
        fold = record["fold"]
        assert not set(record["pseudo_ids"]) & set(folds.loc[folds["fold"] == fold, "id"])


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
    groups = duplicate_groups(perceptual_hashes(images), max_distance=6)
    assert groups[3] == groups[0] and groups[5] == groups[2]
    assert len(set(groups)) == 4
    flipped_order = duplicate_groups(perceptual_hashes(images[::-1]), max_distance=6)[::-1]
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
