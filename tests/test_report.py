"""The report builds on a tiny run, opens from disk, and every image it names exists."""

import re
import shutil
import subprocess

import pytest

from tests.helpers import leaderboard, run_comp, tiny_overrides


@pytest.mark.slow
def test_report_page_and_its_images(tmp_path, trained):
    overrides = tiny_overrides(tmp_path, trained, **{  # small_cnn round 0 is trained there
        "backbones": "[small_cnn,small_cnn-b]", "pseudo.rounds": "1", "tune.n_trials": "2",
        "ensemble.methods": "[mean,weighted]",
        "tune.epochs": "2", "tune.params": "[model.dropout]"})
    assert run_comp("stage=all", *overrides,
                    "+backbone_overrides.small_cnn-b.model.dropout=0.1") == 0
    page = tmp_path / "runs" / "tiny" / "report" / "index.html"
    text = page.read_text()
    images = re.findall(r"<img src='([^']+)'", text)
    assert images and all((page.parent / name).exists() for name in images)
    for needle in ("Leaderboard", "out-of-fold", "Learning curves", "Pseudo-labels round1",
                   "Ensemble weights", "Tuning", "confusion_", "reliability_", "curves_"):
        assert needle in text, needle
    board = leaderboard(tmp_path)
    assert len(board) == 7 and all(name in text for name in board.name)  # every entry shown
    assert "http://" not in text and "https://" not in text  # opens offline
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("headless Chromium not installed: no screenshot taken")
    shot = tmp_path / "report.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1200,1600",
                    f"--screenshot={shot}", page.as_uri()],
                   check=True, capture_output=True, timeout=120)
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
