"""Model ids are pinned: how a spec holds its settings may change, the ids must not, or
every run directory's finished folds would be trained again; a spec.json written by an
older comp (without the keys added since) keeps its recorded id."""

from __future__ import annotations

import dataclasses
import json

import pytest

from comp.config import _OVERRIDABLE_SECTIONS, SETTINGS, load_config
from comp.errors import CompError
from comp.models.spec import ModelSpec, make_spec, with_params

# float32 is what `auto` gives on a CPU, and leaves the precision out of the id. The
# default ids changed on purpose twice, each time a setting changed how every fine-tune
# trains: train.clipnorm=10 (`train.clipnorm=null` gives the ids before it,
# PINNED_BEFORE_CLIPNORM, computed before ModelSpec held typed settings, when its
# model/train/augment were dicts) and train.precise_bn=4096 (`train.precise_bn=null`
# gives PINNED_BEFORE_PRECISE_BN)
PINNED = {
    "small_cnn": "small_cnn-75d5b484",
    "mobilenet_025": "mobilenet_025-00619044",
    "mobilenet_025-block12": "mobilenet_025-block12-472f919e",
}
PINNED_BEFORE_PRECISE_BN = {
    "small_cnn": "small_cnn-6ab9c8f2",
    "mobilenet_025": "mobilenet_025-fadbb69c",
    "mobilenet_025-block12": "mobilenet_025-block12-a174ba54",
}
PINNED_BEFORE_CLIPNORM = {
    "small_cnn": "small_cnn-eb05e8e9",
    "mobilenet_025": "mobilenet_025-9dbd0f3e",
    "mobilenet_025-block12": "mobilenet_025-block12-28b05367",
}
# keys added to the schema after the first spec.json was written
NEWER = {
    "train": ("max_batches", "weight_decay", "warmup", "ema", "ema_momentum", "average_last",
              "average_top", "mixup", "cutmix", "lr_depth_ratio", "epoch_choice",
              "stop_fraction", "clipnorm", "precise_bn"),
    "augment": ("shift", "choose_views", "online_shift", "online_rotation", "online_zoom",
                "online_randaugment"),
}


@pytest.fixture(scope="module")
def cfg():
    return load_config(["compute.precision=float32"])


@pytest.mark.parametrize("backbone", sorted(PINNED))
def test_the_default_configs_model_ids_are_pinned(cfg, backbone):
    assert make_spec(cfg, backbone, "folds0").model_id == PINNED[backbone]


@pytest.mark.parametrize("backbone", sorted(PINNED_BEFORE_PRECISE_BN))
def test_precise_bn_off_gives_the_ids_from_before_it(backbone):
    cfg = load_config(["compute.precision=float32", "train.precise_bn=null"])
    assert make_spec(cfg, backbone, "folds0").model_id == PINNED_BEFORE_PRECISE_BN[backbone]


@pytest.mark.parametrize("backbone", sorted(PINNED_BEFORE_CLIPNORM))
def test_clipnorm_off_gives_the_ids_from_before_it(backbone):
    cfg = load_config(["compute.precision=float32", "train.clipnorm=null",
                       "train.precise_bn=null"])
    assert make_spec(cfg, backbone, "folds0").model_id == PINNED_BEFORE_CLIPNORM[backbone]


def test_tuned_params_and_pseudo_labels_keep_their_ids(cfg):
    spec = make_spec(cfg, "mobilenet_025", "folds0")
    tuned = with_params(spec, {"train.lr": 0.02, "model.unfreeze": "block12",
                               "augment.random_views": 4})
    assert tuned.model_id == "mobilenet_025-41bd5488"
    assert spec.model_id == PINNED["mobilenet_025"]  # with_params leaves `spec` alone
    pseudo = make_spec(cfg, "small_cnn", "folds0", pseudo={"round": 1, "source": "x"})
    assert pseudo.model_id == "small_cnn-0c52548a"


def test_a_spec_json_reads_back_with_its_id(cfg):
    spec = make_spec(cfg, "mobilenet_025", "folds0")
    recorded = json.loads(json.dumps(spec.describe()))
    again = ModelSpec.from_json(recorded, spec.weights, spec.compute)
    assert again.model_id == recorded["model_id"] == PINNED["mobilenet_025"]
    assert again.describe() == spec.describe()


def test_an_older_spec_json_keeps_its_recorded_id_and_settings(cfg):
    spec = make_spec(cfg, "mobilenet_025", "folds0")
    old = json.loads(json.dumps(spec.describe()))
    for section, keys in NEWER.items():
        for key in keys:
            del old[section][key]
    loaded = ModelSpec.from_json(old, spec.weights, {})
    assert loaded.model_id == "mobilenet_025-07413f19"  # as it was hashed when written
    assert loaded.train.clipnorm is None  # trained before clipping: read back without it
    assert loaded.train.precise_bn is None  # and before precise BN
    described = loaded.describe()
    for section in ("model", "train", "augment"):
        assert described[section] == old[section]  # no key added to the recording


def test_settings_are_read_only_attributes_with_the_schemas_fields_and_defaults(cfg):
    spec = make_spec(cfg, "small_cnn", "folds0")
    assert spec.train.optimizer == "adam" and spec.augment.online_shift == 0.1  # overrides
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.train.lr = 1.0
    for name, schema in _OVERRIDABLE_SECTIONS.items():
        fields = [(f.name, f.type, f.default) for f in dataclasses.fields(schema)]
        assert [(f.name, f.type, f.default) for f in dataclasses.fields(SETTINGS[name])
                if f.name != "absent"] == fields
        assert SETTINGS[name]().as_dict() == dataclasses.asdict(schema())


def test_with_params_replaces_settings_and_leaves_the_spec_alone(cfg):
    spec = make_spec(cfg, "mobilenet_025", "folds0")
    tuned = with_params(spec, {"train.lr": 0.02, "model.unfreeze": "block12"})
    assert (tuned.train.lr, tuned.model.unfreeze) == (0.02, "block12")
    assert (spec.train.lr, spec.model.unfreeze) == (0.01, None)
    assert tuned.augment is spec.augment  # an untouched section is shared, not copied
    with pytest.raises(KeyError, match="data.folds"):
        with_params(spec, {"data.folds": 3})


def test_an_older_spec_json_reads_absent_keys_as_defaults_and_trains_its_tuned_folds(cfg):
    spec = make_spec(cfg, "mobilenet_025", "folds0")
    old = json.loads(json.dumps(spec.describe()))
    del old["train"]["warmup"], old["augment"]["online_zoom"]
    old["fold_params"] = {"0": {"train.lr": 0.02, "train.warmup": 2}}
    loaded = ModelSpec.from_json(old, spec.weights, {})
    assert loaded.train.warmup == 0 and loaded.augment.online_zoom == 0.0
    assert "warmup" not in loaded.describe()["train"]
    fold = loaded.for_fold(0)
    assert fold.train.lr == 0.02 and fold.train.warmup == 2
    assert fold.describe()["train"]["warmup"] == 2  # given now, so recorded and hashed
    old["train"]["newer_key"] = 1
    with pytest.raises(CompError, match="newer_key"):
        ModelSpec.from_json(old, spec.weights, {})
