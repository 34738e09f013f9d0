"""Classic heads: entries, embeddings, the inner-CV fit, and the chain on a tiny run."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import ParameterGrid

from comp.config import load_config
from comp.data.views import dihedral_view
from comp.errors import CompError
from comp.models.heads import HEADS, view_average_proba
from comp.models.registry import get_backbone
from comp.models.spec import auto_size, make_classic_spec
from comp.training.classic import (
    HeadRows,
    _head_rows,
    _views_of,
    depth_column_sets,
    fit_classic,
)
from comp.training.embeddings import (
    color_encoder,
    depth_widths,
    embed,
    pixel_embeddings,
    pixel_encoder,
)
from tests.helpers import ensemble_dir, run_comp, tiny_overrides


def _cfg(*overrides: str):
    return load_config(["weights=none", *overrides])


@pytest.mark.parametrize("entry, source", [
    ("pixels+svm_rbf", "pixels@32"),
    ("pixels@16+logreg", "pixels@16"),
    ("color+logreg", "color@64"),
    ("small_cnn+logreg", "small_cnn@64"),
    ("small_cnn@2x+color+knn", "small_cnn@128+color@64"),
])
def test_entries_name_their_features(entry, source):
    spec = make_classic_spec(_cfg(), entry, "folds")
    assert spec.source == source and spec.model_id.startswith(f"{source}+")


def test_automatic_sizes_follow_small_images():
    # small_cnn keeps the images' own side (no upsampling), then @2x doubles it; an
    # ImageNet backbone sees small images at 3 times their side (Backbone.upsample)
    assert make_classic_spec(_cfg(), "small_cnn@2x+logreg", "k", native=24).source == (
        "small_cnn@48")
    assert make_classic_spec(_cfg(), "mobilenet_025+logreg", "k", native=24).source == (
        "mobilenet_025@72")
    assert make_classic_spec(_cfg(), "mobilenet_025@2x+logreg", "k", native=24).source == (
        "mobilenet_025@144")
    assert make_classic_spec(_cfg(), "mobilenet_025+logreg", "k", native=100).source == (
        "mobilenet_025@224")
    assert auto_size(224, 32, 500, 3) == 224 and auto_size(224, 32, 32, 3) == 96
    assert auto_size(224, 32, 32, 2) == 64 and auto_size(224, 75, 20, 3) == 75


@pytest.mark.parametrize("entry, needle", [
    ("pixels", r"<features>\+<head>"),
    ("pixels+forest", "unknown classic head 'forest'"),
    ("resnet9000+logreg", "unknown backbone"),
    ("pixels@big+logreg", "after @"),
    ("small_cnn+vgg16+logreg", "at most one backbone"),
])
def test_bad_entries_are_one_clear_error(entry, needle):
    with pytest.raises(CompError, match=needle):
        make_classic_spec(_cfg(), entry, "folds")


def test_colour_histograms_are_view_invariant_fractions():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(3, 16, 16, 3), dtype=np.uint8)
    encode = color_encoder()
    base = encode(images)
    assert base.shape == (3, 160) and np.allclose(base[:, :16].sum(1), 1)
    for view in range(8):
        assert np.allclose(encode(dihedral_view(images, view)), base)
    assert pixel_encoder()(images).max() <= 1.0



def test_prediction_makes_colour_histograms_in_one_view_as_training_does(tmp_path,
                                                                         monkeypatch):
    """The histograms are the same in every view: stage=predict's embeddings make them once
    and repeat them, in the (V, N, D) layout the heads were fitted on; pixels in every
    view."""
    from PIL import Image

    import comp.training.classic as classic
    from comp.data.images import Decoding

    rng = np.random.default_rng(0)
    paths = []
    for index in range(3):
        paths.append(str(tmp_path / f"{index}.png"))
        Image.fromarray(rng.integers(0, 255, (8, 12, 3), dtype=np.uint8)).save(paths[-1])
    made = []
    monkeypatch.setattr(classic, "embed",
                        lambda images, views, *a, **k: made.append(views) or embed(
                            images, views, *a, **k))
    spec = SimpleNamespace(parts=[("color", 8), ("pixels", 8)], views="dihedral")
    features = classic.embed_images(spec, paths, Decoding(10**6))
    assert made == [(0,), tuple(range(8))] and features.shape == (8, 3, 160 + 8 * 8 * 3)
    assert np.array_equal(features[5, :, :160], features[0, :, :160])
    assert not np.array_equal(features[5, :, 160:], features[0, :, 160:])


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="Linux /proc")
def test_embedding_a_memory_mapped_decode_leaves_none_of_it_in_the_process(tmp_path):
    """The embedding pass reads a memory-mapped image cache, not maps it: a 448 px decode
    of 2,080 images (1.2 GB) read through 8 views stayed in the process's memory."""
    path = tmp_path / "decoded.npy"
    np.save(path, np.random.default_rng(0).integers(0, 256, (400, 64, 64, 3), np.uint8))
    images = np.load(path, mmap_mode="r")  # 4.9 MB
    made = embed(images, (0, 5), pixel_encoder(), batch_size=32)
    np.testing.assert_array_equal(made, embed(np.load(path), (0, 5), pixel_encoder()))
    resident = 0
    lines = Path("/proc/self/smaps").read_text().splitlines()
    for index, line in enumerate(lines):
        if line.endswith(str(path)):
            resident += next(int(x.split()[1]) for x in lines[index + 1:] if x.startswith("Rss:"))
    assert resident < 1024, f"{resident} kB of the cache mapped in the process"


def test_pixel_embeddings_made_on_read_are_the_embedded_numbers():
    """Pixel embeddings are not cached but made on read: the very numbers `embed` gives
    (so the heads trained before this change predict as before), for every view, and for
    an empty split."""
    images = np.random.default_rng(0).integers(0, 256, (70, 8, 8, 3), dtype=np.uint8)
    views = (0, 3, 5)
    made = pixel_embeddings(images, views)
    assert made.dtype == np.float32 and made.shape == (3, 70, 192)
    np.testing.assert_array_equal(made, embed(images, views, pixel_encoder()))
    assert not np.array_equal(made[0], made[1])  # the views differ
    assert pixel_embeddings(images[:0], views).shape == (3, 0, 192)

def test_a_run_of_views_is_taken_without_a_copy():
    """A head's view choices (all views, view 0 alone) read the (V, N, D) features in place:
    a pixel head's 8 views of 2,000 images are 200 MB a copy."""
    features = np.arange(8 * 5 * 3, dtype=np.float32).reshape(8, 5, 3)
    for views in ([0, 1, 2, 3, 4, 5, 6, 7], [0], [2, 3]):
        taken = _views_of(features, views)
        np.testing.assert_array_equal(taken, features[views])
        assert np.shares_memory(taken, features)
    scattered = _views_of(features, [0, 4])
    np.testing.assert_array_equal(scattered, features[[0, 4]])
    assert not np.shares_memory(scattered, features)


def test_a_units_rows_are_its_training_rows_then_its_pseudo_rows():
    """Each view holds the unit's rows, then the pool's (a one-view pool repeated over
    the views), with the pool's hard labels, new groups and weights."""
    rng = np.random.default_rng(0)
    train = rng.normal(size=(4, 10, 3)).astype(np.float32)
    labels, groups, rows = np.arange(10) % 3, np.arange(10) // 2, np.array([7, 1, 4, 2])
    pseudo = SimpleNamespace(features=rng.normal(size=(1, 2, 3)).astype(np.float32),
                             targets=np.eye(3)[[2, 0]], weights=np.array([0.5, 0.25]))
    made = _head_rows(train, rows, labels, groups, pseudo)
    expected = np.concatenate([train[:, rows], np.repeat(pseudo.features, 4, axis=0)], axis=1)
    np.testing.assert_array_equal(made.features, expected)
    np.testing.assert_array_equal(made.labels, [1, 1, 1, 2, 2, 0])
    np.testing.assert_array_equal(made.groups, [3, 0, 2, 1, 5, 6])
    np.testing.assert_array_equal(made.weights, [1, 1, 1, 1, 0.5, 0.25])
    alone = _head_rows(train, rows, labels, groups, None)
    np.testing.assert_array_equal(alone.features, train[:, rows])
    assert len(alone.labels) == 4


def _blobs(n=60, views=2, dim=5, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    centers = rng.normal(size=(3, dim)) * 3
    features = centers[labels][None] + rng.normal(size=(views, n, dim))
    return features.astype(np.float32), labels


# a head with a one-value grid (gbm) fits the same way under both rules: once
@pytest.mark.parametrize("head, regularisation", [
    (head, rule) for head in sorted(HEADS) for rule in ("average", "best")
    if rule == "average" or len(ParameterGrid(HEADS[head].grid)) > 1])
def test_every_head_fits_views_and_learns(head, regularisation, monkeypatch):
    if head == "gbm":  # 20 boosting rounds learn these blobs; the head's 200 take seconds
        from dataclasses import replace

        from sklearn.ensemble import HistGradientBoostingClassifier

        monkeypatch.setitem(HEADS, "gbm", replace(HEADS["gbm"], build=lambda: (
            HistGradientBoostingClassifier(max_iter=20, random_state=0))))
    features, labels = _blobs()
    spec = SimpleNamespace(head=head, inner_folds=3, seed=0, regularisation=regularisation)
    estimator, chosen, loss = fit_classic(spec, HeadRows(features, labels, np.arange(60)), 3)
    probs = estimator.predict_proba(features[0])
    assert probs.shape == (60, 3) and np.allclose(probs.sum(1), 1)
    assert (probs.argmax(1) == labels).mean() > 0.8
    grid = list(ParameterGrid(HEADS[head].grid))
    if regularisation == "average":  # one fit per grid value, probabilities averaged
        assert chosen["params"] == grid
        members = getattr(estimator, "members", [estimator])
        assert len(members) == len(grid)
        assert np.allclose(probs, np.mean([m.predict_proba(features[0]) for m in members], 0))
    else:
        assert len(chosen["params"]) == 1 and chosen["params"][0] in grid
        assert not hasattr(estimator, "members")
    assert loss is not None and np.isfinite(loss)


@pytest.mark.slow
def test_classic_models_train_ensemble_submit_and_predict(tmp_path, competition):
    overrides = tiny_overrides(tmp_path, competition, **{
        "backbones": "[]", "classic.models": "[pixels@16+logreg,pixels@16+color+knn]",
        "ensemble.methods": "[mean,greedy]"})
    assert run_comp("stage=all", *overrides) == 0
    run = tmp_path / "runs" / "tiny"
    models = sorted(p.name for p in (run / "preds").iterdir())
    assert len(models) == 2 and all("+" in m for m in models)
    for model in models:
        info = json.loads((run / "preds" / model / "cv.json").read_text())
        assert info["model_kind"] == "classic" and len(info["folds"]) == 2
        assert sorted(p.name for p in (run / "models" / model).glob("fold*/model.joblib")) \
            == ["model.joblib"] * 2
    assert (ensemble_dir(run, "greedy") / "cv.json").exists()
    assert (run / "selection.json").exists()
    target = tmp_path / "predicted.csv"
    assert run_comp("stage=predict", *overrides, f"predict.input={competition / 'test'}",
                    f"predict.using={models[0]}", f"predict.output={target}") == 0
    predicted = pd.read_csv(target).set_index("id")
    test = pd.read_csv(run / "preds" / models[0] / "test.csv").set_index("id")
    columns = [c for c in test.columns if c.startswith("p_")]
    assert np.allclose(predicted.loc[test.index, columns], test[columns], atol=1e-6)


def test_views_that_destroy_the_class_are_left_out():
    features, labels = _blobs(views=1)
    rng = np.random.default_rng(1)
    # views 1..7 carry another image's class (as a flipped 6 reads as a 9)
    shuffled = [features[0][rng.permutation(60)] for _ in range(7)]
    spec = SimpleNamespace(head="logreg", inner_folds=3, seed=0, regularisation="average")
    estimator, chosen, _ = fit_classic(
        spec, HeadRows(np.stack([features[0], *shuffled]), labels, np.arange(60)), 3)
    assert chosen["views"] == "identity" and estimator.comp_views_ == [0]
    kept, chosen_all, _ = fit_classic(
        spec, HeadRows(np.repeat(features, 8, axis=0), labels, np.arange(60)), 3)
    assert chosen_all["views"] in ("all", "identity")


def test_the_inner_cv_can_choose_the_informative_depth():
    features, labels = _blobs()  # (2, 60, 5): every column informative
    rng = np.random.default_rng(2)
    noise = rng.normal(size=(2, 60, 24)).astype(np.float32)
    joined = np.concatenate([noise, features], axis=-1)
    sets = {"all depths": np.arange(29), "noise": np.arange(24), "signal": np.arange(24, 29)}
    spec = SimpleNamespace(head="logreg", inner_folds=3, seed=0, regularisation="average")
    estimator, chosen, _ = fit_classic(spec, HeadRows(joined, labels, np.arange(60)), 3,
                                       column_sets=sets)
    assert chosen["depths"] in ("signal", "all depths")
    probs = view_average_proba(estimator, joined, 3, np.asarray(estimator.classes_))
    assert (probs.argmax(1) == labels).mean() > 0.8
    if chosen["depths"] == "signal":
        assert list(estimator.comp_columns_) == list(range(24, 29))


def test_depth_column_sets_split_the_backbone_part_by_depth():
    spec = SimpleNamespace(parts=[("color", 64), ("small_cnn", 32)],
                           depths=("block2", "block3", "top"))
    widths = depth_widths(get_backbone("small_cnn"), 32, list(spec.depths))
    sets = depth_column_sets(spec, [160, sum(widths)])
    assert list(sets) == ["all depths", "block2", "block3", "top"]
    assert len(sets["all depths"]) == 160 + sum(widths)
    for depth, width in zip(spec.depths, widths, strict=True):
        assert len(sets[depth]) == 160 + width  # the colour part stays beside each depth
        assert set(range(160)) <= set(sets[depth])
