"""The report builds on a tiny run, opens from disk, and every image it names exists."""

import re

from comp.run import main
from tests.conftest import tiny_overrides


def test_report_page_and_its_images(tmp_path, competition):
    overrides = tiny_overrides(tmp_path, competition, **{
        "backbones": "[small_cnn,small_cnn-b]", "pseudo.rounds": "1", "tune.n_trials": "2",
        "tune.epochs": "2", "tune.params": "[model.dropout]"})
    assert main(["stage=all", *overrides, "+backbone_overrides.small_cnn-b.model.dropout=0.1"]
                ) == 0
    page = tmp_path / "runs" / "tiny" / "report" / "index.html"
    text = page.read_text()
    images = re.findall(r"<img src='([^']+)'", text)
    assert images and all((page.parent / name).exists() for name in images)
    for needle in ("Leaderboard", "out-of-fold", "Learning curves", "Pseudo-labels round1",
                   "Ensemble weights", "Tuning", "confusion_", "reliability_", "curves_"):
        assert needle in text, needle
    assert "http://" not in text and "https://" not in text  # opens offline
