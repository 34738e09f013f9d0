"""Run names are values, never patterns, and may be any text a file system allows."""

import shutil

import pytest

from comp import Competition
from tests.helpers import fake_prediction_set, make_competition, run_comp, tiny_overrides


def _submissions(tmp_path, experiment):
    """The submission files of `experiment` (submissions/<experiment>/, not the board)."""
    folder = tmp_path / "submissions" / experiment
    return sorted(p.name for p in folder.iterdir() if "__cv-" in p.name) if folder.is_dir() \
        else []


def test_a_name_with_glob_characters_leaves_other_runs_submissions(tmp_path, competition):
    fake_prediction_set(tmp_path / "runs" / "v1", competition)
    assert run_comp("stage=submit", *tiny_overrides(tmp_path, competition, name="v1")) == 0
    kept = _submissions(tmp_path, "v1")
    assert kept
    shutil.copytree(tmp_path / "runs" / "v1", tmp_path / "runs" / "v[1]")
    assert run_comp("stage=submit", *tiny_overrides(tmp_path, competition, name="'v[1]'")) == 0
    assert _submissions(tmp_path, "v1") == kept
    assert _submissions(tmp_path, "v[1]")


@pytest.mark.parametrize("name", ["expé", "'expé'", "実験"])
def test_non_ascii_names_on_the_command_line(tmp_path, competition, name):
    fake_prediction_set(tmp_path / "runs" / name.strip("'"), competition)
    assert run_comp("stage=submit", *tiny_overrides(tmp_path, competition, name=name)) == 0
    assert _submissions(tmp_path, name.strip("'"))


def test_a_non_ascii_folder_names_the_experiment(tmp_path):
    folder = make_competition(tmp_path / "données été")
    comp = Competition(folder, runs_dir=tmp_path / "runs")
    assert comp.name == "données_été"
    assert Competition(folder, name="expé", runs_dir=tmp_path / "runs").name == "expé"
