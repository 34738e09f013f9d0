"""stage=ensemble: combine finished models' OOF/test predictions; honest (nested) CV."""

from __future__ import annotations

import joblib
import numpy as np
from omegaconf import DictConfig

from comp.artifacts import atomic_path, fingerprint
from comp.crashpoints import crash_point
from comp.data.prepared import prepare
from comp.ensemble import METHODS, fit_method, member_weights, nested_predictions
from comp.errors import CompError
from comp.log import get_logger
from comp.metrics import scores
from comp.predictions import (
    ENSEMBLE,
    mark_unfinished,
    probs_frame,
    read_prediction_set,
    write_prediction_set,
)


def run(cfg: DictConfig) -> list[dict]:
    """Build each method in ensemble.methods over the chosen finished single models."""
    prepared = prepare(cfg)
    run_dir, classes = prepared.run, prepared.competition.classes
    folder = run_dir.root / "preds"
    chosen = set(cfg.ensemble.members)
    sets = [read_prediction_set(p) for p in sorted(folder.glob("*")) if (p / "cv.json").exists()]
    known = {s.info["model_id"] for s in sets} | {s.info.get("backbone") for s in sets}
    unknown = sorted(chosen - known)
    if unknown:
        raise CompError(f"config: ensemble.members has {unknown[0]!r}, neither a finished "
                        f"model id nor its backbone; finished: {sorted(known - {None})}")
    sets = [s for s in sets if not chosen or s.info["model_id"] in chosen
            or s.info.get("backbone") in chosen]
    if len(sets) < 2:
        raise CompError(f"{folder}: ensembling needs at least two finished models, found "
                        f"{len(sets)}; train more backbones or set ensemble.members")
    ids, test_ids = prepared.folds["id"].tolist(), prepared.competition.test["id"].tolist()
    columns = [f"p_{c}" for c in classes]
    oof = np.stack([s.oof.set_index("id").loc[ids, columns].to_numpy() for s in sets])
    test = np.stack([s.test.set_index("id").loc[test_ids, columns].to_numpy() for s in sets])
    y = prepared.labels
    folds = prepared.folds["fold"].to_numpy()
    model_ids = [s.info["model_id"] for s in sets]
    members_key = fingerprint([prepared.folds_key, model_ids])
    results = []
    for name in cfg.ensemble.methods:
        method = _method(cfg, prepared, name, members_key)
        state = fit_method(method, oof, y, cfg.tune.seed)
        honest = nested_predictions(method, oof, y, folds, cfg.tune.seed)
        weights = member_weights(method, state, len(sets))
        info = {
            "kind": ENSEMBLE, "name": f"ensemble-{name}-{members_key}", "method": name,
            "labels": method.labels, "models": model_ids,
            "round": max(s.info.get("round", 0) for s in sets),
            "repeats": prepared.n_repeats,
            "weights": None if weights is None else dict(zip(model_ids, weights.tolist(),
                                                             strict=True)),
            "cv_in_sample": scores(y, method.apply(oof, state), classes),
        }
        target = run_dir.ensemble_dir(name, members_key)
        mark_unfinished(target)
        with atomic_path(target / "state.joblib", suffix=".joblib") as tmp:
            joblib.dump(state, tmp)
        crash_point(f"ensemble:{name}")  # tests: a kill between an ensemble's files
        oof_frame = probs_frame(ids, honest, classes, fold=folds, label=prepared.folds["label"])
        result = write_prediction_set(target, oof_frame,
                                      probs_frame(test_ids, method.apply(test, state), classes),
                                      classes, info)
        results.append(result)
        cv = result["cv"]
        get_logger().info(
            "ensemble: %-9s nested CV accuracy %.4f macro-F1 %.4f AUC %.4f "
            "(in-sample accuracy %.4f)%s", name, cv["accuracy"], cv["macro_f1"], cv["auc"],
            info["cv_in_sample"]["accuracy"], "" if method.labels else "; AUC only")
    best_single = max(s.info["cv"]["accuracy"] for s in sets)
    get_logger().info("ensemble: %d models; best single model CV accuracy %.4f",
                      len(sets), best_single)
    return results


def _method(cfg: DictConfig, prepared, name: str, members_key: str):
    method = METHODS[name]
    if name != "optuna":
        return method
    # its own studies in the tuning storage: one per outer fold and one on all rows
    from comp.tuning.search import storage_url
    from comp.tuning.studies import optuna_storage

    storage = optuna_storage(storage_url(cfg, prepared))

    def fit(members, y, seed):
        rows = fingerprint([members.shape, y.tolist(), float(members.sum())])
        study = f"{cfg.name}-ensemble-optuna-{members_key}-{rows}"
        return method.fit(members, y, seed, n_trials=cfg.ensemble.optuna_trials,
                          storage=storage, study_name=study)

    return type(method)(method.name, fit, method.apply, method.labels)

