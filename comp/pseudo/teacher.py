"""What labels a unit's pool: the entry the nested selection would pick for the unit
(`pseudo.teacher=selected`: a voter, or an ensemble of the voters by ensemble.methods,
best by submit.rank_by on the OOF rows outside the unit's validation rows; a learned
ensemble is fitted, and scored nested, on those rows only), or the voters' plain mean."""

from __future__ import annotations

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from comp.data.prepared import Prepared
from comp.ensemble import METHODS, fit_method, nested_predictions
from comp.errors import CompError
from comp.predictions import prob_columns, read_prediction_set, read_table
from comp.pseudo.rules import Votes
from comp.selection import pick_entry, ranking_metric


class Teacher:
    """What labels the pool for each unit: the plain mean of the voters' unit models, or
    (`selected`) the entry the nested selection picks for the unit (module docstring)."""

    def __init__(self, prepared: Prepared, voter_ids: list[str], rule: str, rank_by: str,
                 methods: list[str], seed: int = 0):
        self.prepared, self.voter_ids, self.rule = prepared, voter_ids, rule
        self.rank_by, self.seed = rank_by, seed
        self.methods = [m for m in methods if METHODS[m].labels]
        self.oof = _voter_oof(prepared, voter_ids) if rule == "selected" else None

    @classmethod
    def of(cls, cfg: DictConfig, prepared: Prepared, voter_ids: list[str]) -> Teacher:
        """The teacher `cfg.pseudo.teacher` describes, over `voter_ids`."""
        return cls(prepared, voter_ids, cfg.pseudo.teacher,
                   ranking_metric(cfg.submit.metric, cfg.submit.rank_by),
                   list(cfg.ensemble.methods), int(cfg.tune.seed))

    def settings(self) -> dict:
        """What the teacher's votes depend on besides the voters and the pool."""
        if self.rule != "selected":
            return {"teacher": self.rule}
        return {"teacher": self.rule, "rank_by": self.rank_by, "methods": self.methods,
                "pick": "one-se"}  # comp.selection.pick_entry's rule

    def votes(self, unit: int, splits: list[str]) -> Votes:
        """The teacher's probabilities for unit `unit` on the pool `splits`."""
        classes = self.prepared.competition.classes
        ids, names, pool = _pool_probs(self.prepared.run, self.voter_ids, unit, splits,
                                       classes)
        if self.rule != "selected" or len(self.voter_ids) < 2:
            return Votes(ids, names, pool.mean(axis=0), self.voter_ids, "mean"
                         if len(self.voter_ids) > 1 else self.voter_ids[0])
        candidates = self._candidates(unit, pool)
        y, rows = self.prepared.labels, ~self.prepared.unit_val_mask(unit)
        best = pick_entry({name: oof for name, (oof, _) in candidates.items()}, y[rows],
                          self.rank_by, classes,
                          frozenset(name for name in candidates if name not in self.voter_ids))
        voters = [best] if best in self.voter_ids else self.voter_ids
        return Votes(ids, names, candidates[best][1], voters, best)

    def _candidates(self, unit: int, pool: np.ndarray) -> dict[str, tuple]:
        """name -> (OOF on the rows outside unit `unit`'s validation rows, its pool
        probabilities): each voter, and each ensemble method over them, fitted on those
        rows and scored nested over their folds (the unit's repeat's other folds). With
        2 folds those rows are one fold, on which a learned ensemble cannot be scored
        nested: then only the methods that learn nothing (mean, geometric) compete."""
        prepared = self.prepared
        rows = ~prepared.unit_val_mask(unit)
        oof, y = self.oof[:, rows], prepared.labels[rows]
        inner = prepared.folds[prepared.unit_fold_column(unit)].to_numpy()[rows]
        nestable = len(np.unique(inner)) > 1
        out = {name: (oof[i], pool[i]) for i, name in enumerate(self.voter_ids)}
        for name in self.methods:
            method = METHODS[name]
            if method.fit is not None and not nestable:
                continue
            state = fit_method(method, oof, y, self.seed + unit)
            out[f"ensemble-{name}"] = (nested_predictions(method, oof, y, inner, self.seed),
                                       method.apply(pool, state))
        return out


def _voter_oof(prepared: Prepared, voter_ids: list[str]) -> np.ndarray:
    """(M, N, C) OOF probabilities of the voters, in folds.csv order."""
    ids = prepared.folds["id"].tolist()
    columns = prob_columns(prepared.competition.classes)
    return np.stack([read_prediction_set(prepared.run.preds_dir(m)).oof.set_index("id")
                     .loc[ids, columns].to_numpy(dtype=float) for m in voter_ids])


def _pool_probs(run, voter_ids: list[str], unit: int, splits: list[str],
                classes: list[str]) -> tuple[list[str], list[str], np.ndarray]:
    """The pool images' ids and splits, and each voter's unit-`unit` probabilities on
    them: (M, P, C)."""
    columns = prob_columns(classes)
    ids, names, probs = [], [], []
    for model_id in voter_ids:
        frames = [read_table(run.fold_dir(model_id, unit) / f"{s}.csv").assign(split=s)
                  for s in splits]
        frame = pd.concat(frames, ignore_index=True)
        if probs and frame["id"].tolist() != ids:
            raise CompError(f"{run.fold_dir(model_id, unit)}: its pool predictions list "
                            "other images than the other voters'; delete it and rerun")
        probs.append(frame[columns].to_numpy(dtype=float))
        ids, names = frame["id"].tolist(), frame["split"].tolist()
    return ids, names, np.stack(probs)
