"""Fit the trainable part of one model on one fold's cached features."""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from sklearn.utils.class_weight import compute_class_weight

from comp.training.callbacks import (
    LastEpochsAverage,
    TopEpochsAverage,
    ValidationScores,
    monitor_value,
    predict_views,
    score_rows,
)
from comp.training.compute import jit_compile, model_scope
from comp.training.features import unmap
from comp.training.mixing import batch_mixer, mixing_layers
from comp.training.optimizers import depth_rate_scales, make_optimizer
from comp.training.schedules import make_schedule

if TYPE_CHECKING:
    from comp.config import TrainSettings


@dataclass
class FoldData:
    """What one fold trains and validates on, as row indices into the cached features
    (which may be a memory-mapped file: nothing here copies them).

    `features` (V, N, ...) is the train split's cached features for every view;
    training draws each row from `train_views` (positions on V). `rows`, `targets` (soft
    or one-hot) and `weights` say which rows train this fold; a row >= N is row N - row of
    `pseudo` (V', P, ...), the pseudo-labelled images' features. Validation is the rows
    `val_rows`, averaged over the TTA views `tta_views`, scored against `val_labels`.
    The epoch is chosen on `stop_rows`/`stop_labels` (an inner holdout of the training
    rows by default, so the scored fold never picks its own epoch); None: the last epoch.
    """

    features: np.ndarray
    train_views: list[int]
    rows: np.ndarray
    targets: np.ndarray
    weights: np.ndarray
    val_rows: np.ndarray
    val_labels: np.ndarray
    tta_views: list[int]
    pseudo: np.ndarray | None = None
    stop_rows: np.ndarray | None = None
    stop_labels: np.ndarray | None = None
    # the rows whose batches make an epoch (pseudo.epoch_rows=labelled: the labelled
    # training rows' count); None: every row of `rows` once an epoch
    epoch_rows: int | None = None

    def epoch_batches(self, batch_size: int, max_batches: int | None) -> int:
        """The batches of an epoch of this fold's fit (`epoch_batches` of its rows)."""
        rows = len(self.rows) if self.epoch_rows is None else self.epoch_rows
        return epoch_batches(rows, batch_size, max_batches)

    def gather(self, rows: np.ndarray, draws: np.ndarray) -> np.ndarray:
        """float32 features of `rows`, each in view `draws % len(train_views)`."""
        n_labelled = self.features.shape[1]
        view = draws % len(self.train_views)
        out = np.empty((len(rows), *self.features.shape[2:]), dtype=np.float32)
        own = rows < n_labelled
        out[own] = self.features[np.asarray(self.train_views)[view[own]], rows[own]]
        if not own.all():
            out[~own] = self.pseudo[view[~own] % self.pseudo.shape[0], rows[~own] - n_labelled]
        unmap(self.features)
        return out


def class_weights(labels: np.ndarray, n_classes: int, mode: str) -> np.ndarray:
    """Per-class loss weights: 'balanced' (sklearn) or 'none' (all ones)."""
    if mode == "none":
        return np.ones(n_classes)
    present = np.unique(labels)
    weights = np.ones(n_classes)
    weights[present] = compute_class_weight("balanced", classes=present, y=labels)
    return weights


def training_dataset(data: FoldData, batch_size: int, seed: int,
                     mixing: list | None = None) -> tf.data.Dataset:
    """An endless stream of passes over the rows: pass p is every row once, in an order
    and with views drawn from (`seed`, p), in batches (the last one of a pass may be
    short). `fit_fold` reads one pass an epoch, or `train.max_batches` batches of the
    running stream.

    The order and the view draws are stateless random ops seeded with (`seed`, p), so
    they depend on `seed` alone, never on a process-wide seed (tf.random.set_seed, which
    tf.data's own shuffle would mix in). Rows are batched in the graph; one NumPy gather
    per batch reads their features, so a memory-mapped cache is never copied whole; the
    stream reads `data` while its caller holds it (a weak reference). `mixing`
    (`mixing_layers`) mixes each batch's features and targets with a shuffle of
    the same batch, one of its layers drawn per batch (seeded by `seed` alone too).
    """
    if len(data.rows) == 0:  # a pass of no batches: the stream would never yield one
        raise ValueError("training_dataset: no rows to train on")
    # TensorFlow keeps the Python function of a numpy_function alive with the graphs that
    # traced it, past the fit: a weak reference to `data`, so a unit's pseudo-labelled
    # rows (a copy) do not outlive its fit (a worker kept every unit's: +100 MB a unit on
    # wbc with pseudo.distill, 2,080 images at 224 px peaked at 3.9 GB)
    source = weakref.ref(data)

    def gather(rows, draws):
        held = source()
        if held is None:
            raise RuntimeError("training_dataset: its FoldData is gone; keep a reference "
                               "to it while the stream is read")
        return held.gather(rows, draws)
    rows = tf.constant(data.rows.astype(np.int64))
    targets = tf.constant(data.targets.astype(np.float32))
    weights = tf.constant(data.weights.astype(np.float32))
    n_rows = len(data.rows)
    shape = (None, *data.features.shape[2:])

    def one_pass(number):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(n_rows, dtype=tf.int64), seed=tf.stack([tf.constant(seed, tf.int64),
                                                              number]))
        draws = tf.random.stateless_uniform(
            [n_rows], seed=tf.stack([tf.constant(seed + 1, tf.int64), number]), minval=0,
            maxval=2**31 - 1, dtype=tf.int64)
        items = (tf.gather(rows, order), tf.gather(targets, order), tf.gather(weights, order))
        return tf.data.Dataset.from_tensor_slices((items, draws)).batch(batch_size)

    def read(item, draw):
        rows, targets, weights = item
        features = tf.numpy_function(gather, [rows, draw], tf.float32, stateful=False)
        return tf.ensure_shape(features, shape), targets, weights

    batches = (tf.data.Dataset.counter().flat_map(one_pass)
               .map(read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True))
    if mixing:
        batches = batches.map(batch_mixer(mixing, seed))
    return batches.prefetch(tf.data.AUTOTUNE)


def fit_fold(model, data: FoldData, train: TrainSettings, seed: int,
             on_epoch=None, log_dir: str | None = None,
             compute: dict | None = None, first_epoch: int = 0) -> tuple[pd.DataFrame, int]:
    """Train `model` (compiled here) on `data` and leave it with the kept weights: the
    last epoch's (no `stop_rows`: epoch_choice=last; with `train.average_last`, the mean
    of the last epochs'; with `train.ema`, the moving average), or the best epoch on the
    stop rows (early stopping restores it; with `train.average_top`, the mean of the
    best epochs'). `train.mixup`/`train.cutmix` mix the training batches
    (comp.training.mixing); `train.lr_depth_ratio` slows the deeper layers
    (comp.training.optimizers.depth_rate_scales).

    Training runs epochs `first_epoch`..`train.epochs - 1` of the schedule (a warm start,
    pseudo.warm_epochs, runs only its last epochs). Returns the per-epoch history (its
    `epoch` column counts from `first_epoch`) and the kept epoch's row in it. With
    `log_dir`, Keras's TensorBoard callback writes event files there. `compute` picks the
    dtype policy, XLA and the distribution strategy (comp.training.compute). Every random
    draw comes from `seed` (the data's order and views) or from the model's own seeded
    layers (create_head); no global seed is set.

    Why eight parameters: the last four are independent optional hooks (`on_epoch(epoch,
    logs)`, the TensorBoard folder, compute settings, first epoch) each caller sets alone.
    """
    with model_scope(compute):
        jit = jit_compile(compute)
        model.compile(
            optimizer=make_optimizer(
                train, depth_rate_scales(model, train.lr_depth_ratio or 1.0)),
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=train.label_smoothing),
            jit_compile=jit,
        )
        # Keras builds the optimizer while tracing the first step without a strategy,
        # and TensorFlow then traces that step again; built here, it is traced once.
        model.optimizer.build(model.trainable_variables)
        stopper = _early_stopping(data, train)
        dataset = training_dataset(data, train.batch_size, seed, mixing_layers(train, seed))
        steps = data.epoch_batches(train.batch_size, train.max_batches)
        result = model.fit(
            dataset,
            epochs=train.epochs,
            initial_epoch=first_epoch,
            steps_per_epoch=steps,
            shuffle=False,  # the dataset shuffles itself, seeded
            verbose=0,
            callbacks=_callbacks(data, train, on_epoch, log_dir, stopper),
        )
        history = pd.DataFrame(result.history)
        history.insert(0, "epoch", first_epoch + np.arange(len(history)))
        best = (len(history) - 1 if stopper is None
                else int(stopper.best_epoch) - first_epoch)  # Keras counts from epoch 0
        if train.precise_bn is not None and precise_batch_norms(model, data,
                                                                 train.precise_bn, seed):
            # the kept epoch's row scores the weights as kept (a tuning trial reads it)
            result = score_rows(model, data, data.val_rows, data.val_labels)
            for key, value in result.items():
                history.loc[best, f"val_{key}"] = value
            history.loc[best, "val_monitor"] = monitor_value(result)
        return history, best


PRECISE_BN_ROWS = 256  # rows a forward pass while the statistics are recomputed


def precise_batch_norms(model, data: FoldData, max_rows: int, seed: int) -> int:
    """Recompute the moving mean and variance of `model`'s trainable BatchNormalization
    layers from its kept weights, on up to `max_rows` of the fold's training rows in
    their training views (pairs of a row and a view, drawn by `seed` where there are
    more): equal chunks run in training mode, each layer's momentum set so that its
    moving statistics end as the chunks' mean. A fit's moving averages (momentum 0.99)
    trail the weights by about a hundred steps; a fold of a small folder takes fewer
    than that, and its inference-mode predictions collapsed to one class while its
    training loss went to zero (bench/README.md, "Precise BatchNorm statistics"). Only
    training rows are read; layers that do not train (model.bn_trainable=false) keep
    theirs. Returns the (row, view) pairs read (0: no such layer)."""
    norms = list(_trainable_batch_norms(model))
    if not norms or len(data.rows) == 0:
        return 0
    views = len(data.train_views)
    pairs = np.random.default_rng(seed).permutation(len(data.rows) * views)[:max_rows]
    rows, draws = data.rows[pairs // views], pairs % views  # gather's view draws
    chunks = np.array_split(np.arange(len(rows)), -(-len(rows) // PRECISE_BN_ROWS))
    momenta = [layer.momentum for layer in norms]
    try:
        for index, chunk in enumerate(chunks):
            for layer in norms:  # moving = the mean of the chunks so far
                layer.momentum = index / (index + 1)
            model(data.gather(rows[chunk], draws[chunk]), training=True)
    finally:
        for layer, momentum in zip(norms, momenta, strict=True):
            layer.momentum = momentum
    return len(rows)


def _trainable_batch_norms(layer):
    for inner in getattr(layer, "layers", []):
        if isinstance(inner, keras.layers.BatchNormalization):
            if inner.trainable:
                yield inner
        else:
            yield from _trainable_batch_norms(inner)


def epoch_batches(n_rows: int, batch_size: int, max_batches: int | None) -> int:
    """The batches of an epoch: one pass over the rows, or `max_batches`
    (train.max_batches) of the running stream where a pass has more batches than that."""
    one_pass = -(-n_rows // batch_size)
    return one_pass if max_batches is None else min(one_pass, max_batches)


def _early_stopping(data: FoldData,
                    train: TrainSettings) -> keras.callbacks.EarlyStopping | None:
    """Early stopping on the stop rows, restoring the best epoch (None: no stop rows)."""
    if data.stop_rows is None:
        return None
    return keras.callbacks.EarlyStopping(
        monitor="stop_monitor", mode="max", patience=train.patience,
        restore_best_weights=True)


def _callbacks(data: FoldData, train: TrainSettings, on_epoch, log_dir: str | None,
               stopper: keras.callbacks.EarlyStopping | None) -> list:
    """The fit's callbacks, in the order they must run each epoch."""
    schedule = make_schedule(train.schedule, train.lr, train.lr_drop, train.lr_every,
                             train.epochs, train.warmup)
    return [
        keras.callbacks.LearningRateScheduler(schedule),
        # scores each epoch (and early stopping restores) the EMA weights
        *([keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if train.ema else []),
        ValidationScores(data, on_epoch),
        *([stopper] if stopper is not None else []),
        *([TopEpochsAverage(train.average_top)]
          if (train.average_top or 0) > 1 and stopper is not None else []),
        *([LastEpochsAverage(train.epochs, train.average_last)]
          if train.average_last > 1 and stopper is None else []),
        *([keras.callbacks.TensorBoard(log_dir=log_dir)] if log_dir else []),
    ]


def predict_tta(model, features: np.ndarray, tta_positions: list[int]) -> np.ndarray:
    """Mean probabilities over the TTA views of a (V, N, ...) feature array."""
    if features.shape[1] == 0:
        return np.zeros((0, model.output_shape[-1]), dtype=np.float32)
    return predict_views(model, features, tta_positions)
