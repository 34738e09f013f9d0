"""One thin module per stage, wiring data -> models -> predictions -> submissions."""

# name -> (module, one-line description); `all` runs the chain in this order.
STAGES: dict[str, tuple[str, str]] = {
    "prepare": ("comp.stages.prepare", "validate the competition folder, write folds.csv"),
    "train": ("comp.stages.train", "fine-tune each backbone on every fold; OOF + test preds"),
    "plan": ("comp.stages.plan", "list the (model, fold) units left, one job command each"),
    "pseudo": ("comp.stages.pseudo", "pseudo-label unlabeled/test images per fold for a round"),
    "tune": ("comp.stages.tune", "Optuna studies per backbone and fold (params=best to use)"),
    "ensemble": ("comp.stages.ensemble", "mean/weighted/rank/geometric ensembles, nested CV"),
    "predict": ("comp.stages.predict", "predict new images with a saved model or ensemble"),
    "export": ("comp.stages.export", "a trained model as a plain Keras model (+ SavedModel)"),
    "submit": ("comp.stages.submit",
               "write ranked submissions and submissions/<name>/leaderboard.csv"),
    "report": ("comp.stages.report", "HTML report with plots: runs/<name>/report/index.html"),
    "all": ("comp.stages.all", "the whole chain, prepare to submit; skips finished work"),
}
