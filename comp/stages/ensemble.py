"""stage=ensemble: combine finished models' OOF/test predictions; honest (nested) CV."""

from __future__ import annotations

import numpy as np
from omegaconf import DictConfig

from comp.ensemble import combine, fit_weights, nested_predictions
from comp.errors import CompError
from comp.log import get_logger
from comp.metrics import scores
from comp.predictions import probs_frame, read_prediction_set, write_prediction_set
from comp.stages.prepare import prepare


def run(cfg: DictConfig) -> list[dict]:
    """Build each method in ensemble.methods over the chosen finished single models."""
    prepared = prepare(cfg)
    run_dir, classes = prepared.run, prepared.competition.classes
    folder = run_dir.root / "preds"
    chosen = set(cfg.ensemble.members)
    sets = [read_prediction_set(p) for p in sorted(folder.glob("*")) if (p / "cv.json").exists()]
    sets = [s for s in sets if not chosen or s.info["model_id"] in chosen
            or s.info["backbone"] in chosen]
    if len(sets) < 2:
        raise CompError(f"{folder}: ensembling needs at least two finished models, found "
                        f"{len(sets)}; train more backbones or set ensemble.members")
    ids, test_ids = prepared.folds["id"].tolist(), prepared.competition.test["id"].tolist()
    oof = np.stack([s.oof.set_index("id").loc[ids, [f"p_{c}" for c in classes]].to_numpy()
                    for s in sets])
    test = np.stack([s.test.set_index("id").loc[test_ids, [f"p_{c}" for c in classes]]
                     .to_numpy() for s in sets])
    y = prepared.labels
    folds = prepared.folds["fold"].to_numpy()
    model_ids = [s.info["model_id"] for s in sets]
    results = []
    for method in cfg.ensemble.methods:
        weights = fit_weights(oof, y) if method == "weighted" else None
        in_sample = combine(method, oof, weights)
        honest = nested_predictions(oof, y, folds) if method == "weighted" else in_sample
        oof_frame = probs_frame(ids, honest, classes, fold=folds, label=prepared.folds["label"])
        info = {
            "kind": "ensemble", "name": f"ensemble-{method}", "method": method,
            "models": model_ids, "round": max(s.info.get("round", 0) for s in sets),
            "weights": dict(zip(model_ids, (weights if weights is not None else
                                            np.full(len(sets), 1 / len(sets))).tolist(),
                                strict=True)),
            "cv_in_sample": scores(y, in_sample),
        }
        result = write_prediction_set(run_dir.ensemble_dir(method), oof_frame,
                                      probs_frame(test_ids, combine(method, test, weights),
                                                  classes), classes, info)
        results.append(result)
        get_logger().info(
            "ensemble: %-9s CV accuracy %.4f macro-F1 %.4f AUC %.4f%s", method,
            result["cv"]["accuracy"], result["cv"]["macro_f1"], result["cv"]["auc"],
            f" (nested; in-sample accuracy {info['cv_in_sample']['accuracy']:.4f})"
            if method == "weighted" else "")
    best_single = max(s.info["cv"]["accuracy"] for s in sets)
    get_logger().info("ensemble: %d models; best single model CV accuracy %.4f",
                      len(sets), best_single)
    return results
