"""Tuning: the search space, Optuna studies shared by workers, and the per-fold search."""

from comp.tuning.space import SPACE, default_trial, suggest
from comp.tuning.studies import StudyLock, counted_trials, inner_splits, open_study, work_on

__all__ = ["SPACE", "StudyLock", "counted_trials", "default_trial", "inner_splits",
           "open_study", "suggest", "work_on"]
