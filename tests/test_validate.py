"""One validation of the whole config before any work: each bad value is one line, exit 2,
naming the key; allowed values can be described for --help."""

from __future__ import annotations

import pytest

from comp.config import CONSTRAINTS, describe_constraint
from comp.run import main

BAD = [
    ("model.image_size=0", "model.image_size"),
    ("model.image_size=8", "must be >= 16"),
    ("train.lr=-1", "train.lr=-1.0: must be > 0"),
    ("train.lr=0", "must be > 0"),
    ("train.epochs=0", "train.epochs=0: must be >= 1"),
    ("train.patience=-1", "train.patience"),
    ("train.batch_size=0", "train.batch_size"),
    ("train.label_smoothing=3", "train.label_smoothing"),
    ("train.label_smoothing=1", "must be < 1"),
    ("model.dropout=1.5", "model.dropout"),
    ("model.dropout=-0.1", "model.dropout"),
    ("pseudo.weight=-1", "pseudo.weight"),
    ("pseudo.threshold=1.5", "pseudo.threshold"),
    ("pseudo.top_fraction=0", "pseudo.top_fraction"),
    ("data.folds=1", "data.folds=1: must be >= 2"),
    ("data.fold_seed=-3", "data.fold_seed"),
    ("data.repeats=0", "data.repeats=0: must be >= 1"),
    ("data.repeats=two", "data.repeats"),
    ("train.seed=-1", "train.seed"),
    ("tune.seed=-1", "tune.seed"),
    ("tune.inner_folds=1", "tune.inner_folds=1: must be >= 2"),
    ("tune.inner_folds=0", "tune.inner_folds=0: must be >= 2"),
    ("tune.params=[model.dropot]", "'model.dropot'"),
    ("tune.params=[train.lr,train.lr]", "repeated"),
    ("train.optimizer=sdg", "train.optimizer='sdg': use one of sgd|adam"),
    ("train.schedule=linear", "train.schedule"),
    ("train.class_weight=auto", "train.class_weight"),
    ("model.pooling=mean", "model.pooling"),
    ("augment.tta=all", "augment.tta"),
    ("tune.pruner=asha", "tune.pruner"),
    ("tune.metric=acc", "tune.metric"),
    ("submit.metric=acc", "submit.metric='acc': use one of"),
    ("submit.rank_by=logloss", "submit.rank_by='logloss': use one of auto|"),
    ("ensemble.methods=[avg]", "ensemble.methods"),
    ("compute.precision=fp16", "compute.precision"),
    ("compute.jit_compile=maybe", "compute.jit_compile"),
    ("compute.distribute=horovod", "compute.distribute"),
    ("params=worst", "params='worst'"),
    ("pseudo.splits=[train]", "pseudo.splits"),
    ("pseudo.truth=/nowhere/truth.csv", "pseudo.truth"),
    ("data.max_image_pixels=0", "data.max_image_pixels"),
    ("tune.storage=env:COMP_TEST_UNSET_VAR", "COMP_TEST_UNSET_VAR"),
    ("data=folder", "data=folder needs data.dir"),
    ("train.lr=inf", "must be a finite number"),
    ("train.epoch_choice=best", "train.epoch_choice"),
    ("pseudo.rule=votes", "pseudo.rule"),
    ("time_limit=0", "time_limit"),
    ("weights=imagenet21k", "weights='imagenet21k': file not found"),
    ("data.intensity_range=[5,1]", "data.intensity_range"),
    ("data.dedup_max_distance=99", "must be <= 64"),
    ("only.fold=-1", "only.fold"),
    ("+backbone_overrides.mobilenet_025.train.lr=-2",
     "backbone_overrides.mobilenet_025.train.lr=-2.0: must be > 0"),
]


@pytest.mark.parametrize("override, needle", BAD, ids=[b[0] for b in BAD])
def test_bad_value_is_one_line_exit_2_naming_the_key(override, needle, tmp_path, capsys,
                                                     monkeypatch):
    monkeypatch.delenv("COMP_TEST_UNSET_VAR", raising=False)
    code = main(["stage=prepare", f"runs_dir={tmp_path / 'runs'}", override])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("comp: error: config: "), err
    assert needle in err[0], err
    # a rule of the key's value, never the unknown-key line (a misspelt case passes that)
    assert "unknown key" not in err[0] and "did you mean" not in err[0], err
    assert not (tmp_path / "runs").exists()  # before any work


def test_predict_output_must_not_be_a_folder(tmp_path, capsys):
    code = main(["stage=prepare", f"runs_dir={tmp_path / 'runs'}",
                 f"predict.output={tmp_path}"])
    assert code == 2 and "predict.output" in capsys.readouterr().err


def test_good_values_pass():
    from comp.config import load_config

    cfg = load_config(["train.optimizer=adam", "compute.jit_compile=true", "tune.params=[train.lr]",
                       "pseudo.splits=[unlabeled,test]", "train.label_smoothing=0.1",
                       "data.intensity_range=[0,4095]"])
    assert cfg.train.optimizer == "adam"


def test_describe_constraint_shows_allowed_values():
    assert describe_constraint("train.optimizer") == "sgd|adam|adamw"
    assert describe_constraint("train.lr") == "a number > 0"
    assert describe_constraint("tune.inner_folds") == "a whole number >= 2"
    assert describe_constraint("no.such.key") is None
    assert all(describe_constraint(k) for k in CONSTRAINTS)


def test_storage_from_environment_and_password_masked(tmp_path, monkeypatch):
    from comp.config import load_config, mask_url, masked_yaml

    url = "postgresql://comp:s3cret@db.example:5432/studies"
    monkeypatch.setenv("COMP_TEST_STORAGE", url)
    cfg = load_config(["tune.storage=env:COMP_TEST_STORAGE"])
    assert cfg.tune.storage == url
    assert "s3cret" not in masked_yaml(cfg) and "comp:***@db.example" in masked_yaml(cfg)
    assert mask_url("sqlite:///runs/x/optuna.db") == "sqlite:///runs/x/optuna.db"
    cfg = load_config(["tune.storage=${oc.env:COMP_TEST_STORAGE}"])
    assert cfg.tune.storage == url


def test_saved_configs_hide_the_password(tmp_path, competition, monkeypatch):
    from tests.conftest import tiny_overrides

    monkeypatch.setenv("COMP_TEST_STORAGE", "postgresql://comp:s3cret@localhost:1/x")
    assert main(["stage=prepare", *tiny_overrides(tmp_path, competition),
                 "tune.storage=env:COMP_TEST_STORAGE"]) == 0
    written = [p.read_text() for p in (tmp_path / "runs" / "tiny").rglob("*.yaml")]
    assert len(written) == 2 and all("***" in t and "s3cret" not in t for t in written)
