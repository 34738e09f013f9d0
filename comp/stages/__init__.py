"""One thin module per stage, wiring data -> models -> predictions -> submissions."""

# name -> (module, one-line description); `all` runs the chain in this order.
STAGES: dict[str, tuple[str, str]] = {
    "prepare": ("comp.stages.prepare", "validate the competition folder, write folds.csv"),
    "train": ("comp.stages.train", "fine-tuned and classic models on every fold; OOF + test preds"),
    "plan": ("comp.stages.plan", "list the (model, fold) units left, one job command each"),
    "pseudo": ("comp.stages.pseudo", "pseudo-label unlabeled/test images per fold for a round"),
    "tune": ("comp.stages.tune", "Optuna studies per backbone and unit (params=best to use)"),
    "ensemble": ("comp.stages.ensemble", "the ensemble.methods of finished models, nested CV"),
    "predict": ("comp.stages.predict", "predict new images with a saved model or ensemble"),
    "export": ("comp.stages.export", "a trained model as a plain Keras model (+ SavedModel)"),
    "submit": ("comp.stages.submit",
               "ranked submissions, submissions/<name>/leaderboard.csv, nested selected CV"),
    "report": ("comp.stages.report", "HTML report with plots: runs/<name>/report/index.html"),
    "all": ("comp.stages.all", "prepare, train, [pseudo, tune], ensemble, submit, report; resumes"),
}
