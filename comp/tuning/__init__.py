"""Tuning: the search space (`space`), Optuna studies shared by workers (`studies`) and
the per-fold search (`search`). Nothing is imported here, so the config can read the
space's names without importing Optuna."""
