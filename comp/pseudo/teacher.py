"""What labels a unit's pool: the entry the nested selection would pick for the unit
(`pseudo.teacher=selected`: a voter, or an ensemble of the voters by ensemble.methods,
best by submit.rank_by on the OOF rows outside the unit's validation rows; a learned
ensemble is fitted, and scored nested, on those rows only), or the voters' plain mean.
From round 2 on, the selected teacher follows submit.round_margin as the selection does
(comp.selection.pick_round): round 0's pick unless the voters' (round r-1) pick beats it
by the margin on those rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from comp.data.prepared import Prepared
from comp.ensemble import METHODS, fit_method, nested_predictions
from comp.errors import CompError
from comp.predictions import prob_columns, read_prediction_set, read_table
from comp.pseudo.rules import Votes
from comp.selection import pick_round, ranking_metric
from comp.submission import submission_metric
from comp.workspace import DISTILL_SPLIT

ROUND_ZERO = "@round0"  # marks round 0's ensembles among a later round's candidates


class Teacher:
    """What labels the pool for each unit: the plain mean of the voters' unit models, or
    (`selected`) the entry the nested selection picks for the unit (module docstring).
    `earlier_ids`: round 0's models where the voters are a later round's (round >= 2),
    kept by `margin` (submit.round_margin) as comp.selection.pick_round keeps them."""

    def __init__(self, prepared: Prepared, voter_ids: list[str], rule: str, rank_by: str,
                 methods: list[str], seed: int = 0, earlier_ids: list[str] | None = None,
                 margin: float | None = None):
        self.prepared, self.voter_ids, self.rule = prepared, voter_ids, rule
        self.rank_by, self.seed = rank_by, seed
        self.methods = [m for m in methods if METHODS[m].labels]
        selected = rule == "selected"
        self.earlier_ids = list(earlier_ids or []) if selected and margin is not None else []
        self.margin = margin if self.earlier_ids else None
        self.oof = _voter_oof(prepared, voter_ids)
        self.earlier_oof = _voter_oof(prepared, self.earlier_ids) if self.earlier_ids else None

    @classmethod
    def of(cls, cfg: DictConfig, prepared: Prepared, voter_ids: list[str],
           earlier_ids: list[str] | None = None) -> Teacher:
        """The teacher `cfg.pseudo.teacher` describes, over `voter_ids` (and round 0's
        `earlier_ids` under submit.round_margin where the voters are of round >= 1)."""
        return cls(prepared, voter_ids, cfg.pseudo.teacher,
                   ranking_metric(submission_metric(cfg.submit.metric, prepared.competition),
                                  cfg.submit.rank_by),
                   list(cfg.ensemble.methods), int(cfg.tune.seed), earlier_ids,
                   cfg.submit.round_margin)

    def settings(self) -> dict:
        """What the teacher's votes depend on besides the voters and the pool."""
        if self.rule != "selected":
            return {"teacher": self.rule}
        settings = {"teacher": self.rule, "rank_by": self.rank_by, "methods": self.methods,
                    "pick": "one-se"}  # comp.selection.pick_entry's rule
        if self.earlier_ids:
            settings.update(round_zero=self.earlier_ids, round_margin=self.margin)
        return settings

    def votes(self, unit: int, splits: list[str]) -> Votes:
        """The teacher's probabilities for unit `unit` on the pool `splits`."""
        classes = self.prepared.competition.classes
        ids, names, probs = _pool_probs(self.prepared.run, self.voter_ids + self.earlier_ids,
                                        unit, splits, classes)
        pool, earlier_pool = probs[:len(self.voter_ids)], probs[len(self.voter_ids):]
        if self.rule != "selected" or (len(self.voter_ids) < 2 and not self.earlier_ids):
            rows = ~self.prepared.unit_val_mask(unit)
            return Votes(ids, names, pool.mean(axis=0), self.voter_ids, "mean"
                         if len(self.voter_ids) > 1 else self.voter_ids[0],
                         self.oof[:, rows].mean(axis=0))
        candidates = self._candidates(unit, self.voter_ids, self.oof, pool)
        earlier = (self._candidates(unit, self.earlier_ids, self.earlier_oof, earlier_pool,
                                    ROUND_ZERO) if self.earlier_ids else {})
        y, rows = self.prepared.labels, ~self.prepared.unit_val_mask(unit)
        ensembles = frozenset(name for name in {**candidates, **earlier}
                              if name not in self.voter_ids + self.earlier_ids)
        best = pick_round({name: oof for name, (oof, _) in candidates.items()},
                          {name: oof for name, (oof, _) in earlier.items()}, y[rows],
                          self.rank_by, classes, ensembles, self.margin)
        entries = {**candidates, **earlier}
        chosen_from = self.earlier_ids if best in earlier else self.voter_ids
        voters = [best] if best in chosen_from else chosen_from
        return Votes(ids, names, entries[best][1], voters, best, entries[best][0])

    def _candidates(self, unit: int, voter_ids: list[str], voter_oof: np.ndarray,
                    pool: np.ndarray, tag: str = "") -> dict[str, tuple]:
        """name -> (OOF on the rows outside unit `unit`'s validation rows, its pool
        probabilities): each of `voter_ids`, and each ensemble method over them (named
        ensemble-<method><tag>), fitted on those rows and scored nested over their folds
        (the unit's repeat's other folds). With 2 folds those rows are one fold, on which
        a learned ensemble cannot be scored nested: then only the methods that learn
        nothing (mean, geometric) compete."""
        prepared = self.prepared
        rows = ~prepared.unit_val_mask(unit)
        oof, y = voter_oof[:, rows], prepared.labels[rows]
        inner = prepared.folds[prepared.unit_fold_column(unit)].to_numpy()[rows]
        nestable = len(np.unique(inner)) > 1
        out = {name: (oof[i], pool[i]) for i, name in enumerate(voter_ids)}
        if len(voter_ids) < 2:
            return out
        for name in self.methods:
            method = METHODS[name]
            if method.fit is not None and not nestable:
                continue
            state = fit_method(method, oof, y, self.seed + unit)
            out[f"ensemble-{name}{tag}"] = (nested_predictions(method, oof, y, inner,
                                                               self.seed),
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
        files = [run.fold_dir(model_id, unit) / f"{s}.csv" for s in splits]
        missing = [f for f in files if not f.exists()]
        if missing and missing[0].stem == DISTILL_SPLIT:  # trained without pseudo.distill
            raise CompError(f"{missing[0]}: missing; pseudo.distill needs each voter unit's "
                            "probabilities on its training rows, which a unit writes only "
                            "where pseudo.distill is set: delete "
                            f"{run.model_dir(model_id)} and rerun, or unset pseudo.distill")
        if missing:
            raise CompError(f"{missing[0]}: missing; delete {missing[0].parent} and rerun")
        frames = [read_table(f).assign(split=s) for f, s in zip(files, splits, strict=True)]
        frame = pd.concat(frames, ignore_index=True)
        if probs and frame["id"].tolist() != ids:
            raise CompError(f"{run.fold_dir(model_id, unit)}: its pool predictions list "
                            "other images than the other voters'; delete it and rerun")
        probs.append(frame[columns].to_numpy(dtype=float))
        ids, names = frame["id"].tolist(), frame["split"].tolist()
    return ids, names, np.stack(probs)
