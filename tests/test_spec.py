"""Model ids are pinned: how a spec holds its settings may change, the ids must not, or
every run directory's finished folds would be trained again; a spec.json written by an
older comp (without the keys added since) keeps its recorded id."""

from __future__ import annotations

import json

import pytest

from comp.config import load_config
from comp.models.spec import ModelSpec, make_spec, with_params

# computed before ModelSpec held typed settings (its model/train/augment were dicts);
# float32 is what `auto` gives on a CPU, and leaves the precision out of the id
PINNED = {
    "small_cnn": "small_cnn-eb05e8e9",
    "mobilenet_025": "mobilenet_025-9dbd0f3e",
    "mobilenet_025-block12": "mobilenet_025-block12-28b05367",
}
# keys added to the schema after the first spec.json was written
NEWER = {
    "train": ("max_batches", "weight_decay", "warmup", "ema", "ema_momentum", "average_last",
              "average_top", "mixup", "cutmix", "lr_depth_ratio", "epoch_choice",
              "stop_fraction"),
    "augment": ("shift", "choose_views", "online_shift", "online_rotation", "online_zoom",
                "online_randaugment"),
}


@pytest.fixture(scope="module")
def cfg():
    return load_config(["compute.precision=float32"])


@pytest.mark.parametrize("backbone", sorted(PINNED))
def test_the_default_configs_model_ids_are_pinned(cfg, backbone):
    assert make_spec(cfg, backbone, "folds0").model_id == PINNED[backbone]


def test_tuned_params_and_pseudo_labels_keep_their_ids(cfg):
    spec = make_spec(cfg, "mobilenet_025", "folds0")
    tuned = with_params(spec, {"train.lr": 0.02, "model.unfreeze": "block12",
                               "augment.random_views": 4})
    assert tuned.model_id == "mobilenet_025-8eb3be56"
    assert spec.model_id == PINNED["mobilenet_025"]  # with_params leaves `spec` alone
    pseudo = make_spec(cfg, "small_cnn", "folds0", pseudo={"round": 1, "source": "x"})
    assert pseudo.model_id == "small_cnn-bf714930"


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
    described = loaded.describe()
    for section in ("model", "train", "augment"):
        assert described[section] == old[section]  # no key added to the recording
