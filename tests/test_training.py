"""fit_fold keeps the best-validation-AUC epoch; class weights; the tf.data pipeline."""

from dataclasses import replace

import keras
import numpy as np
import pytest

from comp.config import TrainSettings
from comp.metrics import macro_auc
from comp.training.fit import FoldData, class_weights, fit_fold, training_dataset


def _data(seed=0, n=60, views=2, dim=6, noise=2.0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    centers = rng.normal(size=(3, dim))
    pool = (centers[labels][None] + rng.normal(scale=noise, size=(views, n, dim))).astype("float16")
    val = rng.integers(0, 3, 30)
    val_features = (centers[val] + rng.normal(scale=noise, size=(views, 30, dim))).astype(
        "float16")
    features = np.concatenate([pool, val_features], axis=1)  # validation rows at the end
    val_rows = n + np.arange(30)  # the validation rows also choose the epoch here
    return FoldData(features, list(range(views)), np.arange(n), np.eye(3)[labels], np.ones(n),
                    val_rows, val, [0], stop_rows=val_rows, stop_labels=val)


def _model(dim=6, seed=0):
    """A seeded softmax layer: its initial weights never depend on the test order."""
    inputs = keras.Input((dim,))
    dense = keras.layers.Dense(3, activation="softmax",
                               kernel_initializer=keras.initializers.GlorotUniform(seed))
    return keras.Model(inputs, dense(inputs))


TRAIN = TrainSettings(optimizer="sgd", lr=0.5, momentum=0.9, schedule="step", lr_drop=0.5,
                      lr_every=3, epochs=8, patience=8, batch_size=16, label_smoothing=0.0)


def test_checkpoint_keeps_the_best_auc_epoch():
    data = _data()
    model = _model()
    history, best = fit_fold(model, data, TRAIN, seed=0)
    assert best == int(history["val_monitor"].idxmax())
    probs = model.predict(data.features[0, data.val_rows].astype("float32"), verbose=0)
    assert macro_auc(data.val_labels, probs) == history["val_auc"][best]
    assert history["lr"].tolist()[:4] == [0.5, 0.5, 0.5, 0.25]


def test_early_stopping_on_auc():
    train = replace(TRAIN, epochs=30, patience=2, lr=0.0)  # nothing learns: AUC flat
    history, best = fit_fold(_model(), _data(), train, seed=0)
    assert len(history) == 3 and best == 0


def test_training_dataset_draws_each_row_once_per_epoch():
    data = _data(n=10, views=3)
    # every (view, row) distinguishable: feature 0 = row number, feature 1 = view
    data.features[:] = 0
    data.features[:, :, 0] = np.arange(data.features.shape[1])[None, :]
    data.features[:, :, 1] = np.arange(3)[:, None]
    data.rows = np.array([1, 3, 4, 6, 8, 9])  # a fold trains on some rows only
    data.targets, data.weights = np.eye(3)[data.rows % 3], data.rows / 10
    stream = iter(training_dataset(data, batch_size=4, seed=1))
    orders = []
    for _ in range(2):  # two epochs: a pass of 6 rows is 2 batches
        batches = [next(stream) for _ in range(2)]
        x = np.concatenate([b[0].numpy() for b in batches])
        targets = np.concatenate([b[1].numpy() for b in batches])
        weights = np.concatenate([b[2].numpy() for b in batches])
        rows = x[:, 0].astype(int)
        assert sorted(rows.tolist()) == data.rows.tolist()  # each row once, no other row
        assert set(x[:, 1]) <= {0.0, 1.0, 2.0}
        assert (targets == np.eye(3)[rows % 3]).all()  # targets and weights follow their row
        assert np.allclose(weights, rows / 10)
        orders.append(rows.tolist())
        assert len(batches[0][0]) == 4 and len(batches[1][0]) == 2  # a pass ends its batch
    assert orders[0] != orders[1]  # reshuffled each epoch
    views = np.concatenate([b[0].numpy()[:, 1] for b in batches])
    assert len(np.unique(views)) > 1  # views vary


def test_training_dataset_depends_on_its_seed_alone():
    """The same seed gives the same stream whatever the process-wide seeds say; another
    seed gives another."""
    import tensorflow as tf

    data = _data(n=10, views=3)
    data.features[:, :, 0] = np.arange(data.features.shape[1])[None, :]
    data.features[:, :, 1] = np.arange(3)[:, None]

    def stream(seed):
        batches = training_dataset(data, batch_size=4, seed=seed).take(6)
        return np.concatenate([b[0].numpy()[:, :2] for b in batches])

    first = stream(1)
    tf.random.set_seed(123)  # a caller's own global seed changes nothing
    try:
        assert np.array_equal(stream(1), first)
    finally:
        tf.random.set_seed(None)
    assert not np.array_equal(stream(2), first)


def test_balanced_class_weights():
    weights = class_weights(np.array([0, 0, 0, 1]), 3, "balanced")
    assert weights[1] == 3 * weights[0] and weights[2] == 1.0
    assert (class_weights(np.array([0, 1]), 2, "none") == 1).all()


def test_pseudo_rows_come_from_their_own_features():
    data = _data(n=10, views=2)
    data.features[:] = 0
    pseudo = np.full((1, 4, 6), 7, dtype="float16")
    n_rows = data.features.shape[1]  # pseudo rows are numbered after every train row
    data.pseudo, data.rows = pseudo, np.concatenate([np.arange(10), n_rows + np.arange(4)])
    data.targets, data.weights = np.eye(3)[np.arange(14) % 3], np.ones(14)
    x = np.concatenate([b[0].numpy()
                        for b in training_dataset(data, batch_size=4, seed=0).take(4)])
    assert len(x) == 14 and (x[:, 0] == 7).sum() == 4 and (x[:, 0] == 0).sum() == 10


def test_without_stop_rows_the_last_epoch_is_kept():
    data = _data()
    data.stop_rows = data.stop_labels = None  # train.epoch_choice=last
    history, best = fit_fold(_model(), data, TRAIN, seed=0)
    assert len(history) == TRAIN.epochs and best == TRAIN.epochs - 1


def test_inner_holdout_chooses_the_epoch_without_the_scored_rows():
    from comp.training.trainer import inner_holdout

    labels = np.arange(60) % 3
    groups = np.arange(60) // 2
    rows = np.arange(10, 60)
    fit, held = inner_holdout(rows, labels, groups, 0.2, seed=0)
    assert not set(fit) & set(held) and sorted([*fit, *held]) == rows.tolist()
    assert not set(groups[fit]) & set(groups[held]) and set(labels[held]) == {0, 1, 2}
    assert 6 <= len(held) <= 14


def _last_epoch_data():
    data = _data()
    data.stop_rows = data.stop_labels = None  # epoch_choice=last
    return data


class _Weights:
    """A stand-in model: get_weights/set_weights on one array."""

    def __init__(self):
        self.value = [np.zeros(2)]

    def get_weights(self):
        return [w.copy() for w in self.value]

    def set_weights(self, weights):
        self.value = weights


def test_average_last_ends_with_the_mean_of_the_last_epochs():
    from comp.training.callbacks import LastEpochsAverage

    average, model = LastEpochsAverage(epochs=5, last=3), _Weights()
    average.set_model(model)
    for epoch in range(5):
        model.value = [np.full(2, float(epoch))]
        average.on_epoch_end(epoch)
    average.on_train_end()
    np.testing.assert_allclose(model.value[0], [3.0, 3.0])  # mean of epochs 2, 3, 4
    # in a real fit: other weights than the last epoch's
    plain, averaged = _model(), _model()
    fit_fold(plain, _last_epoch_data(), TRAIN, seed=0)
    fit_fold(averaged, _last_epoch_data(), replace(TRAIN, average_last=3), seed=0)
    assert not np.allclose(plain.get_weights()[0], averaged.get_weights()[0])


def test_warmup_adamw_and_ema_train_and_end_with_the_average():
    history, best = fit_fold(_model(), _last_epoch_data(),
                             replace(TRAIN, optimizer="adamw", lr=0.05, weight_decay=0.01,
                                     warmup=2, ema=True, ema_momentum=0.5), seed=0)
    np.testing.assert_allclose(history["lr"].tolist()[:3], [0.05 / 3, 0.05 * 2 / 3, 0.05],
                               rtol=1e-6)
    assert best == len(history) - 1 and history["val_auc"].iloc[-1] > 0.6


def test_learning_curves_use_the_first_view_alone_unless_they_choose_the_epoch():
    from comp.training.callbacks import predict_views

    data = replace(_data(views=2), tta_views=[0, 1])
    last = replace(data, stop_rows=None, stop_labels=None)  # epoch_choice=last
    for fold, views in ((last, [0]), (data, [0, 1])):
        model = _model()
        history, best = fit_fold(model, fold, replace(TRAIN, epochs=2), seed=0)
        probs = predict_views(model, fold.features, views, fold.val_rows)
        assert history["val_auc"].iloc[best] == macro_auc(fold.val_labels, probs)
        other = predict_views(model, fold.features, [0, 1] if views == [0] else [0],
                              fold.val_rows)
        assert macro_auc(fold.val_labels, other) != macro_auc(fold.val_labels, probs)


def test_max_batches_caps_an_epoch_and_draws_fresh_rows_across_epochs():
    from comp.training.fit import epoch_batches

    assert epoch_batches(60, 16, None) == 4  # no cap: one pass
    assert epoch_batches(60, 16, 4) == 4  # the pass fits in the cap
    assert epoch_batches(60, 16, 2) == 2
    data = _data(n=60)
    last = replace(TRAIN, epochs=3, max_batches=2)
    model = _model()
    fit_fold(model, FoldData(data.features, data.train_views, data.rows, data.targets,
                             data.weights, data.val_rows, data.val_labels, [0]), last, seed=0)
    assert int(model.optimizer.iterations) == 3 * 2  # 2 batches an epoch, 3 epochs
    plain = _model()
    fit_fold(plain, FoldData(data.features, data.train_views, data.rows, data.targets,
                             data.weights, data.val_rows, data.val_labels, [0]),
             replace(last, max_batches=None), seed=0)
    assert int(plain.optimizer.iterations) == 3 * 4  # every row once an epoch
    labelled = _model()  # pseudo.epoch_rows=labelled: the labelled rows' batches
    fit_fold(labelled, FoldData(data.features, data.train_views, data.rows, data.targets,
                                data.weights, data.val_rows, data.val_labels, [0],
                                epoch_rows=30), replace(last, max_batches=None), seed=0)
    assert int(labelled.optimizer.iterations) == 3 * 2  # 30 rows: 2 batches of 16


def test_a_training_stream_does_not_keep_its_rows_alive_after_the_fit():
    """TensorFlow keeps a numpy_function's Python function with the graphs that traced
    it; the stream must not keep a unit's rows (pseudo-labelled rows are a copy) alive
    through it once the unit's fit has let them go: a worker grew by every unit's."""
    import gc
    import weakref
    from dataclasses import replace

    base = _data()
    pseudo = np.ones((2, 5, 6), "float16")
    data = replace(base, rows=np.concatenate([base.rows, 90 + np.arange(5)]),
                   targets=np.concatenate([base.targets, np.eye(3)[[0] * 5]]),
                   weights=np.ones(65), pseudo=pseudo)
    stream = training_dataset(data, batch_size=65, seed=0)
    first = next(iter(stream))
    assert first[0].shape[0] == 65  # the pseudo rows were read
    gone = weakref.ref(pseudo)
    del data, pseudo, first
    gc.collect()
    assert gone() is None  # the stream (still here) holds no reference to the rows


def _map_data(n=40, side=7):
    """Feature maps whose every cell holds its row's number, targets one-hot by row: a
    mixed map's mean is its targets' expected row number exactly when the targets are
    mixed in the proportions the map is."""
    from dataclasses import replace

    features = np.zeros((2, n + 10, side, side, 1), "float16")
    features[..., 0] = np.arange(n + 10)[None, :, None, None]
    rows = np.arange(n)
    return replace(_data(n=n), features=features, rows=rows, targets=np.eye(n)[rows],
                   weights=np.ones(n))


def test_mixup_and_cutmix_mix_targets_as_they_mix_the_feature_maps():
    from comp.training.mixing import mixing_layers

    data = _map_data()
    for train in (TrainSettings(mixup=0.4), TrainSettings(cutmix=1.0),
                  TrainSettings(mixup=0.4, cutmix=1.0)):
        mixed = 0
        for x, targets, weights in training_dataset(data, 8, 0, mixing_layers(train, 0)).take(5):
            x, targets = x.numpy()[..., 0], targets.numpy()
            expected = targets @ np.arange(targets.shape[1])
            np.testing.assert_allclose(x.mean(axis=(1, 2)), expected, atol=0.02)
            np.testing.assert_allclose(targets.sum(axis=1), 1, atol=1e-6)
            assert (weights.numpy() == 1).all()
            mixed += int((targets.max(axis=1) < 0.99).sum())
        assert mixed >= 10, train  # most rows are mixed, not passed through
    assert mixing_layers(TrainSettings(mixup=None, cutmix=None), 0) == []


def test_cutmix_targets_follow_the_pasted_cells_on_small_maps():
    """Keras's own CutMix weighs targets by the box's continuous area: on a 7 x 7 map
    that leaves targets off by up to a row and a column of cells."""
    import keras

    from comp.training.mixing import AreaCutMix

    x = np.zeros((16, 7, 7, 1), "float32") + np.arange(16)[:, None, None, None]
    y = np.eye(16, dtype="float32")
    errors = {}
    for name, layer in (("keras", keras.layers.CutMix(factor=1.0, seed=3)),
                        ("area", AreaCutMix(factor=1.0, seed=3))):
        out = layer({"images": x, "labels": y}, training=True)
        mean = np.asarray(out["images"]).mean(axis=(1, 2, 3))
        errors[name] = np.abs(mean - np.asarray(out["labels"]) @ np.arange(16)).max()
    assert errors["area"] < 1e-4 < errors["keras"]


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_clipnorm_scales_an_exploding_step_down_and_leaves_a_small_one(optimizer):
    """train.clipnorm: a gradient of global norm 500 moves the weights as one of norm 10
    would; a gradient under the bound moves them as without clipping."""
    from comp.training.optimizers import make_optimizer

    def step(train, gradient):
        weights = keras.Variable(np.zeros(2, dtype="float32"))
        make_optimizer(train).apply_gradients([(np.asarray(gradient, "float32"), weights)])
        return np.asarray(weights)

    clipped = TrainSettings(optimizer=optimizer, lr=0.01, momentum=0.0, clipnorm=10.0)
    free = TrainSettings(optimizer=optimizer, lr=0.01, momentum=0.0, clipnorm=None)
    if optimizer == "sgd":  # plain gradient descent: the step is lr x the clipped gradient
        np.testing.assert_allclose(step(clipped, [300.0, 400.0]), [-0.06, -0.08], rtol=1e-5)
        np.testing.assert_allclose(step(free, [300.0, 400.0]), [-3.0, -4.0], rtol=1e-5)
    np.testing.assert_allclose(step(clipped, [3.0, 4.0]), step(free, [3.0, 4.0]), rtol=1e-6)
    # Adam's first step has the gradient's sign whatever its size; the clip shows in
    # the moment estimates, so for AdamW the check is that clipping is on at all
    assert make_optimizer(clipped).global_clipnorm == 10.0
    assert make_optimizer(free).global_clipnorm is None


def test_depth_scales_grow_geometrically_to_the_head():
    from comp.training.optimizers import depth_scales

    scales = depth_scales(4, 0.1)
    np.testing.assert_allclose(scales, [0.1, 0.1 ** 0.75, 0.1 ** 0.5, 0.1 ** 0.25])
    assert depth_scales(3, 1.0) == [1.0, 1.0, 1.0]


def _seeded_model(dim=6):
    inputs = keras.Input((dim,))
    return keras.Model(inputs, keras.layers.Dense(
        3, activation="softmax", kernel_initializer=keras.initializers.GlorotUniform(0))(inputs))


def _nested_model(dim=6, seed=0):
    glorot = keras.initializers.GlorotUniform
    body_in = keras.Input((dim,))
    hidden = keras.layers.Dense(dim, activation="relu", name="deep",
                                kernel_initializer=glorot(seed))(body_in)
    hidden = keras.layers.Dense(dim, activation="relu", name="shallow",
                                kernel_initializer=glorot(seed + 1))(hidden)
    body = keras.Model(body_in, hidden, name="body")
    inputs = keras.Input((dim,))
    outputs = keras.layers.Dense(3, activation="softmax", name="probabilities",
                                 kernel_initializer=glorot(seed + 2))(
        body(inputs))
    return keras.Model(inputs, outputs)


def test_lr_depth_ratio_slows_the_deep_layers_and_not_the_head():
    from comp.training.optimizers import depth_rate_scales

    scales = depth_rate_scales(_nested_model(), 0.01)
    assert sorted(scales.values()) == [0.01, 0.01, 0.1, 0.1]  # deep, shallow kernel + bias
    assert not any("probabilities" in path for path in scales)
    moved = {}
    for ratio in (None, 0.01):
        model = _nested_model()
        start = {w.path: w.numpy().copy() for w in model.trainable_weights}
        fit_fold(model, _last_epoch_data(), replace(TRAIN, epochs=2, lr=0.05,
                                                     lr_depth_ratio=ratio), seed=0)
        moved[ratio] = {path.split("/")[0]: np.abs(w.numpy() - start[w.path]).mean()
                        for w in model.trainable_weights
                        for path in [w.path] if path.endswith("kernel")}
    assert moved[0.01]["deep"] < 0.05 * moved[None]["deep"]
    assert moved[0.01]["shallow"] < 0.3 * moved[None]["shallow"]
    assert moved[0.01]["probabilities"] > 0.3 * moved[None]["probabilities"]


def test_average_top_ends_with_the_mean_of_the_best_inner_epochs():
    from comp.training.callbacks import TopEpochsAverage

    average, model = TopEpochsAverage(top=2), _Weights()
    average.set_model(model)
    for epoch, score in enumerate([0.5, 0.9, 0.7, 0.9, 0.1]):
        model.value = [np.full(2, float(epoch))]
        average.on_epoch_end(epoch, {"stop_monitor": score})
    average.on_train_end()
    assert average.epochs == [1, 3]  # the two 0.9s, the earlier first
    np.testing.assert_allclose(model.value[0], [2.0, 2.0])
    plain, averaged = _seeded_model(), _seeded_model()
    _, best = fit_fold(plain, _data(), TRAIN, seed=0)
    _, best_averaged = fit_fold(averaged, _data(), replace(TRAIN, average_top=3), seed=0)
    assert best == best_averaged
    assert not np.allclose(plain.get_weights()[0], averaged.get_weights()[0])


def test_mixed_batches_depend_on_their_seed_alone():
    import tensorflow as tf

    from comp.training.mixing import mixing_layers

    def first_batches(seed):
        layers = mixing_layers(TrainSettings(mixup=0.4, cutmix=1.0), seed)
        data = _map_data()  # held while the stream is read
        return [b[1].numpy() for b in training_dataset(data, 8, seed, layers).take(4)]

    first = first_batches(0)
    tf.random.set_seed(5)  # a process-wide seed changes nothing
    try:
        again = first_batches(0)
    finally:
        tf.random.set_seed(None)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, first_batches(1), strict=True))


def test_a_fit_traces_its_train_step_once(monkeypatch):
    """The optimizer's slots exist before the first step: were they made while tracing
    it, TensorFlow would trace every fit's step a second time (seconds per fit)."""
    traced = []
    train_step = keras.Model.train_step

    def counting(self, data):
        traced.append(len(self.optimizer.variables))
        return train_step(self, data)

    monkeypatch.setattr(keras.Model, "train_step", counting)
    for train in (TRAIN, replace(TRAIN, optimizer="adamw", ema=True, lr=0.01),
                  replace(TRAIN, lr_depth_ratio=0.1)):
        traced.clear()
        model = _nested_model() if train.lr_depth_ratio else _model()
        fit_fold(model, _data(), replace(train, epochs=2), seed=0)
        assert len(traced) == 1 and traced[0] > 1, (train.optimizer, traced)


def _batch_norm_model(dim=6, seed=0):
    """A dense layer and a BatchNormalization inside a nested body (as a backbone's trained
    part is), then a seeded softmax; the body's two layers are returned too."""
    inputs = keras.Input((dim,))
    dense = keras.layers.Dense(4, kernel_initializer=keras.initializers.GlorotUniform(seed))
    norm = keras.layers.BatchNormalization(name="norm")
    body = keras.Model(inputs, norm(dense(inputs)), name="body")
    outer = keras.Input((dim,))
    top = keras.layers.Dense(3, activation="softmax",
                             kernel_initializer=keras.initializers.GlorotUniform(seed + 1))
    return keras.Model(outer, top(body(outer))), dense, norm


def test_precise_batch_norms_end_with_the_training_rows_statistics_of_the_weights():
    """The moving mean is the mean over the training rows read (never a validation row) of
    the layer's input under the kept weights, the variance the mean of equal chunks'
    variances; the layer's momentum is restored; a layer that does not train keeps its."""
    from comp.training.fit import PRECISE_BN_ROWS, precise_batch_norms

    data = _data(n=(3 * PRECISE_BN_ROWS - 3) // 3, views=3)  # three equal chunks
    model, dense, norm = _batch_norm_model()
    frozen_model, _, frozen = _batch_norm_model()
    frozen.trainable = False
    assert precise_batch_norms(frozen_model, data, 10**6, seed=4) == 0
    np.testing.assert_array_equal(frozen.moving_mean.numpy(), np.zeros(4))
    assert precise_batch_norms(model, data, 10**6, seed=4) == 3 * len(data.rows)
    pairs = np.arange(len(data.rows) * 3)  # every row in each of its 3 views
    inputs = dense(data.gather(data.rows[pairs // 3], pairs % 3)).numpy()
    pairs = np.random.default_rng(4).permutation(len(pairs))  # the chunks' order
    inputs = inputs[pairs]
    np.testing.assert_allclose(norm.moving_mean.numpy(), inputs.mean(0), atol=1e-5)
    chunks = np.array_split(inputs, 3)
    np.testing.assert_allclose(norm.moving_variance.numpy(),
                               np.mean([c.var(0) for c in chunks], axis=0), rtol=1e-4)
    assert norm.momentum == 0.99
    assert precise_batch_norms(_model(), data, 10**6, seed=4) == 0  # nothing to recompute


def test_fit_fold_with_precise_bn_ends_with_recomputed_statistics():
    from comp.training.callbacks import score_rows
    from comp.training.fit import precise_batch_norms

    data = _data()
    precise, _, norm = _batch_norm_model()
    history, best = fit_fold(precise, data, replace(TRAIN, epochs=2, precise_bn=40), seed=0)
    kept = norm.moving_mean.numpy()
    # the kept epoch's row scores the weights as kept, recomputed statistics included
    assert history["val_log_loss"][best] == pytest.approx(
        score_rows(precise, data, data.val_rows, data.val_labels)["log_loss"], rel=1e-6)
    precise_batch_norms(precise, data, 40, seed=0)
    np.testing.assert_allclose(norm.moving_mean.numpy(), kept, atol=1e-6)
    plain, _, plain_norm = _batch_norm_model()
    fit_fold(plain, data, replace(TRAIN, epochs=2), seed=0)
    trailing = plain_norm.moving_mean.numpy()
    precise_batch_norms(plain, data, 40, seed=0)
    assert np.abs(plain_norm.moving_mean.numpy() - trailing).max() > 1e-3
