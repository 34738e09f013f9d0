"""A validated competition and its folds (placeholder: moved here from stages/prepare)."""

from comp.stages.prepare import HASH_SIZE, Prepared, prepare

__all__ = ["HASH_SIZE", "Prepared", "prepare"]
