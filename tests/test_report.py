"""The report builds on a tiny run, opens from disk, and every image it names exists."""

import html
import json
import re
import shutil
import stat
import subprocess

import pytest

from comp.artifacts import new_file_mode
from comp.selection import selection_headline
from tests.helpers import leaderboard, round_entries, run_comp, tiny_overrides


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
    for needle in ("Leaderboard", "out-of-fold", "Learning curves", "Pseudo-labels, round 1",
                   "Ensemble weights", "Tuning", "confusion_", "reliability_", "curves_"):
        assert needle in text, needle
    board = leaderboard(tmp_path)
    # round 1 replaces round 0: 2 backbones + the first one tuned + 2 ensembles
    assert len(round_entries(board)) == 5
    assert all(name in text for name in board.name)  # every entry shown
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


@pytest.mark.slow
def test_stage_all_ends_on_the_selected_pipeline_and_the_report_shows_it_first(
        tmp_path, competition, comp_caplog):
    overrides = tiny_overrides(tmp_path, competition, backbones="[]", quiet="false",
                               **{"classic.models": "[pixels@8+logreg,color+logreg]"})
    assert run_comp("stage=all", *overrides) == 0
    last = comp_caplog.records[-1].getMessage()
    selection = json.loads((tmp_path / "runs" / "tiny" / "selection.json").read_text())
    assert last == selection_headline(selection)
    assert last.startswith("selected pipeline (nested CV over 2 folds): accuracy ")
    assert f"{selection['cv']['macro_f1']:.4f} ± {selection['se']['macro_f1']:.4f}" in last
    assert last.endswith(f"picks {selection['final_choice']}") and len(last) < 160
    assert selection["final_choice"] == leaderboard(tmp_path).name[0]
    page = tmp_path / "runs" / "tiny" / "report" / "index.html"
    text = page.read_text()
    assert 0 < text.index(html.escape(last)) < text.index("<h2>Leaderboard")
    for path in (page, *page.parent.glob("*.png"), *(tmp_path / "submissions").rglob("*.csv")):
        assert stat.S_IMODE(path.stat().st_mode) == new_file_mode(), path  # not 0600


def _reported_run(tmp_path, competition, model_ids: list[str]):
    """A run directory with fake prediction sets of `model_ids` (as training writes them),
    their mean ensemble, submissions and the report; its path."""
    from comp.run import main
    from tests.helpers import fake_prediction_set

    run = tmp_path / "runs" / "tiny"
    for seed, model_id in enumerate(model_ids):
        fake_prediction_set(run, competition, model_id, seed)
    overrides = tiny_overrides(tmp_path, competition)
    for stage in ("ensemble", "submit", "report"):
        assert main([f"stage={stage}", *overrides]) == 0
    return run


def test_report_shows_the_levers_and_a_leaderboard_that_fits(tmp_path, competition):
    """Two models and their mean ensemble (prediction sets written as training would):
    the page has the ensembling lever's paired gain, and its leaderboard keeps to the
    columns that tell entries apart and score them."""
    run = _reported_run(tmp_path, competition, ["small_cnn-aaaa", "small_cnn-bbbb"])
    text = (run / "report" / "index.html").read_text()
    assert "Levers: what each gained on the same folds" in text
    section = text.split("Levers: what each gained")[1]
    assert "<td>ensembling</td>" in section and " ± " in section
    assert "leave out the training's own randomness" in section  # what the ± covers
    board = text.split("<h2>Leaderboard</h2>")[1].split("</div>")[0]
    assert board.strip().startswith("<div class='wide'>")
    headers = re.findall(r"<th>([^<]+)</th>", board)
    assert headers[:2] == ["rank", "name"] and "cv_accuracy" in headers
    assert "Ranked by CV accuracy (submit.rank_by)" in text
    assert not {"experiment", "created", "file", "models"} & set(headers)


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which(
        "google-chrome")


def test_report_fits_a_browser_window_and_shows_the_headline(tmp_path, competition):
    """In headless Chromium at 1,400 px: the leaderboard box ends inside the window (a
    wide table scrolls within it), and the selected pipeline's figure is on the page."""
    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium here (Debian: apt-get install chromium)")
    run = _reported_run(tmp_path, competition,
                        ["small_cnn-aaaa-with-a-long-name", "small_cnn-bbbb"])
    page = run / "report" / "index.html"
    probe = page.with_name("probe.html")  # the page, and a script that measures it
    probe.write_text(page.read_text().replace("</body>", (
        "<script>const box = document.querySelector('.wide').getBoundingClientRect();"
        "const head = document.querySelector('.headline');"
        "document.title = JSON.stringify({right: box.right, width: innerWidth,"
        " headline: head ? head.textContent : null});</script></body>")))
    result = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1400,900",
         "--virtual-time-budget=2000", "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120)
    title = re.search(r"<title>(.*?)</title>", result.stdout, re.S)
    assert title, result.stderr[-2000:]
    measured = json.loads(html.unescape(title.group(1)))
    assert 0 < measured["right"] <= measured["width"] <= 1400
    assert measured["headline"] and "selected pipeline" in measured["headline"]


def test_confident_mistakes_gives_every_image_its_own_thumbnail(tmp_path):
    """Ids that share a stem (a.png, a.jpg) or hold a class folder (b/a.png) are three
    mistakes and three thumbnails, none drawn over another."""
    import numpy as np
    import pandas as pd
    from PIL import Image

    from comp.report import confident_mistakes

    paths = {}
    for n, image_id in enumerate(["a.png", "a.jpg", "b/a.png"]):
        paths[image_id] = str(tmp_path / f"src{n}.png")
        Image.fromarray(np.full((8, 8, 3), 40 * n, np.uint8)).save(paths[image_id])
    oof = pd.DataFrame({"id": list(paths), "label": ["x"] * 3,
                        "p_x": [0.1, 0.2, 0.3], "p_y": [0.9, 0.8, 0.7]})
    out = tmp_path / "report"
    out.mkdir()
    page = confident_mistakes(oof, ["x", "y"], paths, out)
    thumbs = sorted(out.glob("thumb_*.png"))
    assert len(thumbs) == 3 and page.count("<figure>") == 3
    assert {int(np.asarray(Image.open(t))[0, 0, 0]) for t in thumbs} == {0, 40, 80}


def test_optuna_studies_are_shown_as_tuning_or_as_the_ensembles_weight_studies(tmp_path):
    """The Optuna ensemble's weight studies were drawn under "Tuning", even where no
    fine-tune was tuned (the demo: 12 plots under that heading with tune.n_trials=0)."""
    import optuna

    from comp.ensemble import weight_study_name
    from comp.report import _tuning_section

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    names = {"tuning": "tiny-small_cnn-abc-fold0", "weights": weight_study_name("tiny", "k", "r")}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in names.values():
        study = optuna.create_study(study_name=name, storage=url)
        study.optimize(lambda t: t.suggest_float("x", 0, 1) ** 2, n_trials=3)
    sections = _tuning_section(url, tmp_path)
    headings = [s for s in sections if s.startswith("<h2>")]
    assert headings == ["<h2>Tuning</h2>", "<h2>Optuna ensemble: the weight studies</h2>"]
    second = sections.index(headings[1])
    assert all(names["tuning"] in s for s in sections[2:second])  # its two plots
    assert sections[second + 2:] and all(names["weights"] in s for s in sections[second + 2:])
    optuna.delete_study(study_name=names["tuning"], storage=url)
    only_weights = [s for s in _tuning_section(url, tmp_path) if s.startswith("<h2>")]
    assert only_weights == ["<h2>Optuna ensemble: the weight studies</h2>"]  # no "Tuning"
