"""Validation scoring each epoch, so Keras's own callbacks can monitor validation AUC."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import keras
import numpy as np

from comp.metrics import scores
from comp.training.compute import prediction_batch_rows
from comp.training.features import unmap

if TYPE_CHECKING:
    from comp.training.fit import FoldData


class ValidationScores(keras.callbacks.Callback):
    """Adds val_auc, val_accuracy, val_macro_f1, val_balanced_accuracy, val_log_loss, lr
    and `val_monitor` to the epoch logs, scoring TTA-averaged predictions with sklearn.

    Scores the validation rows of `fold_data` (its `val_rows` over its `tta_views`).
    Where no epoch is chosen by these scores (`fold_data.stop_rows` is None:
    epoch_choice=last), they only draw the learning curves, and they are taken on the
    first TTA view alone: averaging 8 views every epoch cost about 40% of a fold's time
    on 2,600 glyphs, and the kept model's own predictions are TTA-averaged after the fit.
    `val_monitor` is the AUC with exact ties broken by the lower log loss (its 1e-6
    weight cannot outweigh a real AUC difference). `stop_monitor` is the same on the
    rows that choose the epoch (`fold_data.stop_rows`; the validation rows when None);
    EarlyStopping(restore_best_weights) watches it. List this callback before the ones
    that read these keys.
    """

    def __init__(self, fold_data: FoldData,
                 on_epoch: Callable[[int, dict], None] | None = None):
        super().__init__()
        self.fold_data, self.on_epoch = fold_data, on_epoch

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs if logs is not None else {}
        data = self.fold_data
        result = self._score(data.val_rows, data.val_labels)
        for key, value in result.items():
            logs[f"val_{key}"] = value
        logs["val_monitor"] = monitor_value(result)
        if data.stop_rows is None or data.stop_rows is data.val_rows:
            logs["stop_monitor"] = logs["val_monitor"]
        else:
            logs["stop_monitor"] = monitor_value(self._score(data.stop_rows, data.stop_labels))
        logs["lr"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        if self.on_epoch is not None:
            self.on_epoch(epoch, logs)


    def _score(self, rows: np.ndarray, labels: np.ndarray) -> dict:
        return score_rows(self.model, self.fold_data, rows, labels)


def score_rows(model, data: FoldData, rows: np.ndarray, labels: np.ndarray) -> dict:
    """`model`'s scores on `rows` of `data` against `labels`, as ValidationScores takes
    them each epoch: TTA-averaged where the epoch is chosen, else on the first view."""
    views = data.tta_views if data.stop_rows is not None else data.tta_views[:1]
    return scores(labels, predict_views(model, data.features, views, rows))


def monitor_value(result: dict) -> float:
    """`val_monitor` of a `score_rows` result (see ValidationScores)."""
    auc = 0.0 if np.isnan(result["auc"]) else result["auc"]
    return auc - 1e-6 * result["log_loss"]


def predict_views(model, features: np.ndarray, views: list[int],
                  rows: np.ndarray | None = None, batch_size: int | None = None
                  ) -> np.ndarray:
    """Mean class probabilities over `views` of (V, N, ...) `features` (all rows, or
    `rows`), read chunk by chunk so a memory-mapped cache is never copied whole; chunks of
    `batch_size` rows (None: comp.training.compute.prediction_batch_rows)."""
    n = features.shape[1] if rows is None else len(rows)
    if batch_size is None:
        batch_size = prediction_batch_rows(int(np.prod(features.shape[2:])))
    per_view = []
    for view in views:
        # predict_on_batch per chunk: no per-call data-adapter set-up, which dominates for
        # the few hundred rows a fold validates on every epoch
        chunks = [np.asarray(model.predict_on_batch(
            features[view, i : i + batch_size] if rows is None
            else features[view, rows[i : i + batch_size]]))
            for i in range(0, n, batch_size)]
        unmap(features)
        per_view.append(np.concatenate(chunks))
    return np.stack(per_view).mean(axis=0)


class LastEpochsAverage(keras.callbacks.Callback):
    """Stochastic weight averaging over the schedule's last `last` epochs: the model ends
    with the mean of its weights (BatchNorm statistics included) after each of them.
    Chooses nothing by validation scores, so it stays honest with epoch_choice=last."""

    def __init__(self, epochs: int, last: int):
        super().__init__()
        self.first = max(0, epochs - last)
        self.total: list[np.ndarray] | None = None
        self.count = 0

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if epoch < self.first:
            return
        weights = self.model.get_weights()
        if self.total is None:
            self.total = [w.astype(np.float64) for w in weights]
        else:
            for total, w in zip(self.total, weights, strict=True):
                total += w
        self.count += 1

    def on_train_end(self, logs: dict | None = None) -> None:
        if self.count > 1:
            self.model.set_weights([t / self.count for t in self.total])


class TopEpochsAverage(keras.callbacks.Callback):
    """The model ends with the mean of its weights (BatchNorm statistics included) after
    the `top` epochs that scored best on the rows choosing the epoch (`stop_monitor`:
    the training rows' inner holdout with epoch_choice=inner, never the scored fold): a
    greedy-free soup of the best checkpoints instead of the one best. List it after
    EarlyStopping, whose restore it replaces."""

    def __init__(self, top: int):
        super().__init__()
        self.top = top
        self.kept: list[tuple[float, int, list[np.ndarray]]] = []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        score = (logs or {}).get("stop_monitor")
        if score is None:
            return
        self.kept.append((float(score), -epoch, self.model.get_weights()))
        # best first; among equal scores the earlier epoch
        self.kept = sorted(self.kept, key=lambda kept: kept[:2], reverse=True)[: self.top]

    def on_train_end(self, logs: dict | None = None) -> None:
        if len(self.kept) > 1:
            self.model.set_weights([np.mean(stack, axis=0) for stack in
                                    zip(*(weights for _, _, weights in self.kept), strict=True)])

    @property
    def epochs(self) -> list[int]:
        """The averaged epochs (0-based), best first."""
        return [-negative for _, negative, _ in self.kept]
