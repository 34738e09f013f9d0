"""A refused or failed run writes nothing into the run directory; a run that starts
writes its config record (config.yaml, configs/<stage>.yaml) once."""

import yaml

from comp.run import main
from comp.workspace import run_dir, run_lock
from tests.helpers import fake_prediction_set, run_path, tiny_overrides


def _lr(path):
    return yaml.safe_load(path.read_text())["train"]["lr"]


def test_a_refused_run_leaves_the_record_as_it_was(tmp_path, competition, capsys):
    assert main(["stage=prepare", *tiny_overrides(tmp_path, competition)]) == 0
    run = run_path(tmp_path)
    lr = _lr(run / "config.yaml")
    with run_lock(run_dir(str(tmp_path / "runs"), "tiny"), "train"):
        code = main(["stage=train", "train.lr=0.0123", *tiny_overrides(tmp_path, competition)])
    assert code == 2 and "already in use" in capsys.readouterr().err
    assert _lr(run / "config.yaml") == lr != 0.0123
    assert not (run / "configs" / "train.yaml").exists()


def test_a_missing_folder_writes_no_run_directory_and_keeps_the_record(tmp_path, competition,
                                                                       capsys):
    missing = tiny_overrides(tmp_path, tmp_path / "missing", name="fresh")
    assert main(["stage=train", *missing]) == 2
    assert "competition folder not found" in capsys.readouterr().err
    assert not run_path(tmp_path, "fresh").exists()
    assert main(["stage=prepare", *tiny_overrides(tmp_path, competition)]) == 0
    record = (run_path(tmp_path) / "config.yaml").read_text()
    assert main(["stage=prepare", *tiny_overrides(tmp_path, tmp_path / "missing")]) == 2
    assert (run_path(tmp_path) / "config.yaml").read_text() == record


def test_a_folder_that_fails_its_check_leaves_nothing(tmp_path, competition, capsys):
    (competition / "sample_submission.csv").write_text("id,label\nnope.png,alpha\n")  # no image
    assert main(["stage=prepare", *tiny_overrides(tmp_path, competition)]) == 2
    assert capsys.readouterr().err.startswith("comp: error: ")
    assert not run_path(tmp_path).exists()
    (tmp_path / "runs" / "tiny" / "models").mkdir(parents=True)  # an earlier run's folder
    assert main(["stage=prepare", *tiny_overrides(tmp_path, competition)]) == 2
    assert sorted(p.name for p in run_path(tmp_path).iterdir()) == [".lock", "models"]


def test_a_run_that_starts_writes_its_record_once(tmp_path, competition, monkeypatch):
    import comp.workspace

    fake_prediction_set(run_path(tmp_path), competition)
    writes = []
    real = comp.workspace.write_text
    monkeypatch.setattr(comp.workspace, "write_text",
                        lambda path, text: (writes.append(path.name), real(path, text)))
    assert main(["stage=submit", "train.lr=0.0123", *tiny_overrides(tmp_path, competition)]) == 0
    assert sorted(writes) == ["config.yaml", "submit.yaml"]
    assert _lr(run_path(tmp_path) / "configs" / "submit.yaml") == 0.0123
