"""A round's pseudo-label files read back: the extra training rows of each unit, and what
the files add to a model id."""

from __future__ import annotations

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from comp.artifacts import fingerprint
from comp.data.prepared import Prepared
from comp.errors import CompError
from comp.predictions import read_table
from comp.training.trainer import PseudoRows
from comp.workspace import DISTILL_SPLIT


def pseudo_identity(cfg: DictConfig, prepared: Prepared, round_: int) -> dict:
    """What a round's pseudo-labels add to a model id: the files' content and weight."""
    paths = [prepared.run.pseudo_csv(round_, k) for k in range(prepared.n_units)]
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise CompError(f"{missing[0]}: no pseudo-labels for round {round_}; run stage=pseudo "
                        f"pseudo.round={round_} first")
    if not prepared.run.pseudo_summary(round_).exists():  # written last: a kill came between
        raise CompError(f"{prepared.run.pseudo_summary(round_)}: missing, so round {round_}'s "
                        f"pseudo-label files are incomplete; run stage=pseudo "
                        f"pseudo.round={round_} again")
    distill = {} if cfg.pseudo.distill is None else {"distill": cfg.pseudo.distill}
    return {"round": round_, "weight": cfg.pseudo.weight, **distill,
            "files": fingerprint([p.read_text() for p in paths])}


def pseudo_loader(prepared: Prepared, round_: int, weight: float,
                  distill: float | None = None):
    """unit, featured model -> PseudoRows of that unit's pseudo-label file: pool rows of
    sample weight `weight`, the labelled rows' distillation targets of weight `distill`."""
    classes = prepared.competition.classes
    # the labelled rows' features (split "train") are in folds.csv order
    frames = {"test": prepared.competition.test, "unlabeled": prepared.competition.unlabeled,
              DISTILL_SPLIT: prepared.folds}

    def load(fold: int, featured) -> PseudoRows:
        table = read_table(prepared.run.pseudo_csv(round_, fold))
        parts = []
        for split, rows in table.groupby("split", sort=False):
            if split == DISTILL_SPLIT and not featured.distils:
                continue  # a classic head learns from hard labels only
            position = {i: n for n, i in enumerate(frames[split]["id"])}
            index = [position[i] for i in rows["id"]]
            parts.append((featured.features[split][:, index], rows))
        if not parts:
            return PseudoRows(np.zeros((1, 0)), np.zeros((0, len(classes))), np.zeros(0))
        features = np.concatenate([p[0] for p in parts], axis=1)
        rows = pd.concat([p[1] for p in parts])
        targets = rows[[f"p_{c}" for c in classes]].to_numpy(dtype=np.float32)
        splits = rows["split"].tolist()
        weights = np.array([weight if s != DISTILL_SPLIT else distill or 0.0 for s in splits],
                           dtype=np.float32)
        return PseudoRows(features, targets, weights, rows["id"].tolist(), splits)

    return load
