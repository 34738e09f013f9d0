"""Ensembles of prediction sets: one table of methods, each honest by nesting.

A method maps member probabilities (M, N, C) to (N, C). Methods that learn something
from the OOF predictions (weights, a stacker, a greedy selection) overfit the rows they
learn on, so their CV figure is nested: for each fold, the method is fitted on the other
folds' OOF rows and applied to the held fold. Test predictions use the fit on all rows.

- mean, geometric: nothing learned.
- weighted: simplex weights minimising log loss (scipy).
- optuna: simplex weights searched by an Optuna TPE study on log loss.
- greedy: forward selection with replacement (Caruana et al., 2004) on log loss.
- stacked: a multinomial logistic regression on the members' log-probabilities.
- rank: per-class rank average; ranks are not probabilities, so it is scored by AUC only
  and never turned into labels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from comp.crashpoints import crash_point


@dataclass(frozen=True)
class Method:
    """An ensemble method: `fit(members, y, seed)` -> state (None when nothing is learned),
    `apply(members, state)` -> (N, C); `labels` False: not probabilities (AUC only)."""

    name: str
    fit: Callable[[np.ndarray, np.ndarray, int], object] | None
    apply: Callable[[np.ndarray, object], np.ndarray]
    labels: bool = True


def _normalise(out: np.ndarray) -> np.ndarray:
    return out / out.sum(axis=1, keepdims=True)


def _uniform(m: int) -> np.ndarray:
    return np.full(m, 1.0 / m)


def weighted_mean(members: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """Rows of the weighted mean of (M, N, C) `members` (uniform when None)."""
    w = _uniform(len(members)) if weights is None else np.asarray(weights, dtype=float)
    return _normalise(np.tensordot(w, members, axes=1))


def geometric_mean(members: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """Rows of the weighted geometric mean (uniform weights when None)."""
    w = _uniform(len(members)) if weights is None else np.asarray(weights, dtype=float)
    return _normalise(np.exp(np.tensordot(w, np.log(np.clip(members, 1e-9, 1)), axes=1)))


def rank_average(members: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """Per-class ranks averaged over members, scaled to rows that sum to 1 (for AUC)."""
    from scipy.stats import rankdata

    ranks = np.stack([np.apply_along_axis(rankdata, 0, p) / len(p) for p in members])
    w = _uniform(len(members)) if weights is None else np.asarray(weights, dtype=float)
    return _normalise(np.tensordot(w, ranks, axes=1))


def _log_loss(probs: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None))))


def fit_weights(members: np.ndarray, y: np.ndarray, seed: int = 0) -> np.ndarray:
    """Simplex weights minimising the log loss of the weighted mean on (members, y)."""
    from scipy.optimize import minimize
    from scipy.special import softmax

    m = members.shape[0]
    if m == 1:
        return np.ones(1)
    rows = np.arange(len(y))

    def loss(logits: np.ndarray) -> float:
        mixed = np.tensordot(softmax(logits), members[:, rows, y], axes=1)
        return float(-np.mean(np.log(np.clip(mixed, 1e-12, None))))

    result = minimize(loss, np.zeros(m), method="Nelder-Mead",
                      options={"maxiter": 400 * m, "xatol": 1e-4, "fatol": 1e-7})
    return softmax(result.x)


WEIGHT_STUDY = "-ensemble-optuna-"  # in the name of every Optuna ensemble-weight study


def weight_study_name(run_name: str, members_key: str, rows: str) -> str:
    """The name of the Optuna ensemble's weight study of run `run_name` over the members
    `members_key` fitted on the rows `rows` (a fingerprint): one per outer fold's
    training rows and one on every row."""
    return f"{run_name}{WEIGHT_STUDY}{members_key}-{rows}"


def optuna_weights(members: np.ndarray, y: np.ndarray, seed: int = 0,
                   n_trials: int = 150, storage=None,
                   study_name: str | None = None) -> np.ndarray:
    """Simplex weights found by an Optuna TPE study minimising log loss.

    With `storage` (a URL or an Optuna storage, see tuning.studies.optuna_storage) and
    `study_name` the study is kept there, and a study continued after a kill ends with
    the same trials and weights as one that ran through. Optuna logs warnings only while
    it runs (quiet_optuna), as it did before afterwards.
    """
    from comp.tuning.studies import quiet_optuna

    if members.shape[0] == 1:
        return np.ones(1)
    with quiet_optuna():
        return _optuna_weights(members, y, seed, n_trials, storage, study_name)


def _optuna_weights(members: np.ndarray, y: np.ndarray, seed: int, n_trials: int, storage,
                    study_name: str | None) -> np.ndarray:
    import optuna

    m = members.shape[0]
    study = optuna.create_study(direction="minimize", storage=storage, study_name=study_name,
                                load_if_exists=True)
    if not study.trials:
        study.enqueue_trial({f"w{i}": 1.0 for i in range(m)})  # the plain mean first

    def objective(trial: optuna.Trial) -> float:
        raw = np.array([trial.suggest_float(f"w{i}", 0.0, 1.0) for i in range(m)])
        if raw.sum() <= 0:
            return float("inf")
        return _log_loss(weighted_mean(members, raw / raw.sum()), y)

    # a fresh sampler per trial, seeded by the finished trials' count: a study killed and
    # continued proposes what an uninterrupted one does (a RUNNING trial left by the kill
    # is ignored by TPE and not counted)
    for done in range(sum(t.state.is_finished() for t in study.trials), n_trials):
        study.sampler = optuna.samplers.TPESampler(seed=seed + done)
        crash_point(f"ensemble-trial:{done}")  # tests: a kill inside the weight study
        study.optimize(objective, n_trials=1)
    raw = np.array([study.best_params[f"w{i}"] for i in range(m)])
    return raw / raw.sum()


def greedy_selection(members: np.ndarray, y: np.ndarray, seed: int = 0,
                     rounds: int = 25) -> np.ndarray:
    """Weights from forward selection with replacement (Caruana et al., 2004): start from
    the best member, then repeatedly add the member (any, again) whose addition lowers the
    log loss of the running mean most; stop when no addition helps."""
    m = members.shape[0]
    counts = np.zeros(m)
    losses = [_log_loss(members[i], y) for i in range(m)]
    counts[int(np.argmin(losses))] = 1
    best = min(losses)
    for _ in range(rounds):
        trials = []
        for i in range(m):
            trial = counts.copy()
            trial[i] += 1
            trials.append(_log_loss(weighted_mean(members, trial / trial.sum()), y))
        pick = int(np.argmin(trials))
        if trials[pick] >= best - 1e-9:
            break
        counts[pick] += 1
        best = trials[pick]
    return counts / counts.sum()


def _stack_inputs(members: np.ndarray) -> np.ndarray:
    return np.concatenate([np.log(np.clip(p, 1e-7, 1)) for p in members], axis=1)


def fit_stacker(members: np.ndarray, y: np.ndarray, seed: int = 0):
    """A multinomial logistic regression on the members' log-probabilities."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=0.05, max_iter=2000).fit(_stack_inputs(members), y)


def apply_stacker(members: np.ndarray, stacker) -> np.ndarray:
    """The stacker's probabilities, with columns for classes it never saw."""
    out = np.full(members.shape[1:], 1e-9)
    out[:, stacker.classes_] = stacker.predict_proba(_stack_inputs(members))
    return _normalise(out)


METHODS: dict[str, Method] = {m.name: m for m in [
    Method("mean", None, weighted_mean),
    Method("geometric", None, geometric_mean),
    Method("weighted", fit_weights, weighted_mean),
    Method("optuna", optuna_weights, weighted_mean),
    Method("greedy", greedy_selection, weighted_mean),
    Method("stacked", fit_stacker, apply_stacker),
    Method("rank", None, rank_average, labels=False),
]}


def fit_method(method: Method, members: np.ndarray, y: np.ndarray, seed: int = 0):
    """The method's state fitted on (members, y); None when it learns nothing."""
    return None if method.fit is None else method.fit(members, y, seed)


def nested_predictions(method: Method, members: np.ndarray, y: np.ndarray,
                       folds: np.ndarray, seed: int = 0) -> np.ndarray:
    """OOF of `method` where each fold's state was fitted on the other folds only."""
    if method.fit is None:
        return method.apply(members, None)
    out = np.zeros(members.shape[1:])
    for fold in np.unique(folds):
        held = folds == fold
        state = method.fit(members[:, ~held], y[~held], seed + int(fold))
        out[held] = method.apply(members[:, held], state)
    return out


def member_weights(method: Method, state, n_members: int) -> np.ndarray | None:
    """The members' weights where the method has weights (None for a stacker)."""
    if state is None:
        return _uniform(n_members)
    if isinstance(state, np.ndarray):
        return state
    return None
