"""backbones=auto: the choice for the data and the machine, tested offline.

Weight files are saved from random-init models into a temporary Keras cache, so the
choice sees exactly the files a user with a full cache (or only some files) has.
"""

from __future__ import annotations

import pytest

from comp.config import load_config
from comp.errors import CompError
from comp.models.choice import (
    FROM_SCRATCH,
    Budget,
    Hardware,
    ImageTraits,
    choose_backbones,
    image_traits,
    resolve_auto,
)
from comp.models.registry import BACKBONES
from comp.models.spec import backbone_size
from tests.helpers import make_competition

COLOUR_224 = ImageTraits(224, False, 500)
CPU2, CPU16, GPU = Hardware(0, 2), Hardware(0, 16), Hardware(1, 8)


def _choose(traits, hardware, available=None, time_limit=None):
    def has_weights(backbone, size):
        return available is None or backbone.name in available

    return choose_backbones(
        traits, hardware, has_weights,
        lambda b: backbone_size(b, traits.native_side), Budget(time_limit))


def test_a_gpu_with_every_file_gets_the_strongest_of_three_families():
    choice = _choose(COLOUR_224, GPU)
    assert len(choice.names) == 3
    families = {BACKBONES[name].family for name in choice.names}
    assert len(families) == 3
    top1 = [BACKBONES[name].top1 for name in choice.names]
    assert top1 == sorted(top1, reverse=True) and top1[0] >= 83
    assert all(BACKBONES[name].gmacs <= GPU.gmacs_cap for name in choice.names)


def test_a_small_cpu_gets_light_backbones_and_says_what_it_skipped():
    choice = _choose(COLOUR_224, CPU2)
    assert len(choice.names) == 2 and FROM_SCRATCH not in choice.names
    assert all(BACKBONES[name].gmacs <= CPU2.gmacs_cap for name in choice.names)
    assert choice.skipped["efficientnetv2_s"] == "too slow for this machine"
    line = choice.line()
    assert line.startswith("backbones=auto: ") and "CPU, 2 core(s)" in line
    assert "efficientnetv2_s" in line and "too slow for this machine" in line
    # more cores afford a heavier backbone than 2 do
    assert _choose(COLOUR_224, CPU16).names != choice.names


def test_only_the_bundled_file_gives_two_depths_of_it():
    choice = _choose(COLOUR_224, CPU2, available={"mobilenet_025"})
    assert choice.names == ["mobilenet_025", "mobilenet_025-block12"]
    assert choice.skipped["mobilenet_v3_large"] == "no weight file here and no network"


def test_beside_the_cnn_from_scratch_one_backbone_gets_one_depth():
    # grayscale images: MobileNet and small_cnn are the two fine-tunes, no second depth
    choice = _choose(ImageTraits(28, True, 2000), CPU2, available={"mobilenet_025"})
    assert choice.names == ["mobilenet_025", FROM_SCRATCH]
    assert "second unfreeze depth" not in choice.line()


def test_grayscale_images_add_the_cnn_from_scratch_and_small_colour_ones_do_not():
    assert _choose(ImageTraits(224, True, 500), CPU2).names[-1] == FROM_SCRATCH
    assert _choose(ImageTraits(28, True, 500), CPU2).names[-1] == FROM_SCRATCH
    assert FROM_SCRATCH not in _choose(ImageTraits(32, False, 500), CPU2).names
    assert _choose(COLOUR_224, CPU2, available=set()).names == [FROM_SCRATCH]


def test_time_limit_skips_what_cannot_finish():
    unlimited = _choose(ImageTraits(224, False, 20_000), GPU)
    limited = _choose(ImageTraits(224, False, 20_000), GPU, time_limit=600)
    assert set(limited.names) != set(unlimited.names)
    assert "too slow for time_limit" in limited.skipped.values()


def test_image_traits_tell_grayscale_and_size(tmp_path):
    colour = make_competition(tmp_path / "c")
    traits = image_traits(sorted(str(p) for p in (colour / "train").glob("*.png")))
    assert not traits.grayscale and traits.native_side == 40 and traits.n_images == 24
    from PIL import Image

    paths = []
    for i in range(5):
        path = tmp_path / f"g{i}.png"
        Image.new("L", (20, 20), color=i * 40).save(path)
        paths.append(str(path))
    assert image_traits(paths).grayscale and image_traits(paths).native_side == 20


@pytest.mark.parametrize("name", [  # EfficientNetV2-B0 builds in 5 s: the slow run
    "mobilenet_v3_small", pytest.param("efficientnetv2_b0", marks=pytest.mark.slow)])
def test_weight_files_in_the_keras_cache_are_chosen(tmp_path, monkeypatch, name):
    """A user's Keras cache with one modern file: auto takes it (saved from a random-init
    model under Keras's own file name, so the real loading path is exercised)."""
    import keras

    from comp.models.build import build_backbone
    from comp.models.weights import ResolvedWeights, resolve_weights

    backbone = BACKBONES[name]
    cache = tmp_path / "keras"
    (cache / "models").mkdir(parents=True)
    monkeypatch.setenv("KERAS_HOME", str(cache))
    keras.utils.set_random_seed(0)
    model = backbone.constructor(input_shape=(64, 64, 3), weights=None)
    _save_legacy_h5(model, cache / "models" / backbone.weight_file(224))
    competition = make_competition(tmp_path / "comp")
    cfg = load_config([f"data.dir={competition}", "data=folder", "weights_dir=null"])
    paths = sorted(str(p) for p in (competition / "train").glob("*.png"))
    choice = resolve_auto(cfg, paths, hardware=Hardware(0, 4), allow_download=False)
    assert name in choice.names and list(cfg.backbones) == choice.names
    # the file loads into the backbone; as a random file, it fails Keras's published hash
    resolved = ResolvedWeights(cache / "models" / backbone.weight_file(224), "test")
    built = build_backbone(backbone, 64, resolved, 0)
    assert built.count_params() == model.count_params()
    with pytest.raises(CompError, match="differs from Keras's published"):
        resolve_weights(backbone, 64, "imagenet", None)


def _save_legacy_h5(model, path) -> None:
    """Weights in the legacy HDF5 layout of the files Keras downloads (by layer name)."""
    import h5py
    from keras.src.legacy.saving.legacy_h5_format import save_weights_to_hdf5_group

    with h5py.File(path, "w") as handle:
        save_weights_to_hdf5_group(handle, model)


def test_auto_with_one_weight_file_is_one_line(tmp_path):
    competition = make_competition(tmp_path / "comp")
    file = tmp_path / "w.h5"
    file.write_bytes(b"x")
    cfg = load_config([f"data.dir={competition}", "data=folder", f"weights={file}"])
    with pytest.raises(CompError, match="backbones=auto needs weights=imagenet"):
        resolve_auto(cfg, [], allow_download=False)


def test_backbones_auto_on_the_command_line_is_the_list():
    assert list(load_config(["backbones=auto"]).backbones) == ["auto"]
    assert list(load_config(["backbones=[auto,small_cnn]"]).backbones) == ["auto", "small_cnn"]


def test_stage_plan_with_auto_says_what_it_chose_and_plans_it(tmp_path, comp_caplog,
                                                              capsys, monkeypatch):
    """Through the command line: small grayscale images, only the bundled MobileNet file, no
    network: MobileNet 0.25 and the CNN from scratch, said in one line."""
    from PIL import Image

    from comp.models import weights
    from comp.run import main
    from tests.helpers import tiny_overrides

    monkeypatch.setattr(weights, "network_allows_downloads", lambda timeout=2.0: False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty-keras"))
    competition = make_competition(tmp_path / "comp")
    for path in competition.rglob("*.png"):
        Image.open(path).convert("L").save(path)
    overrides = tiny_overrides(tmp_path, competition, backbones="auto", weights="imagenet",
                               quiet="false")
    assert main(["stage=plan", *overrides]) == 0
    lines = [r.getMessage() for r in comp_caplog.records
             if r.getMessage().startswith("backbones=auto: ")]
    assert len(lines) == 1
    assert lines[0].startswith("backbones=auto: mobilenet_025, small_cnn (")
    planned = {line.split()[0].split("=", 1)[1].rsplit("-", 1)[0]
               for line in capsys.readouterr().out.splitlines()}
    assert planned == {"mobilenet_025", "small_cnn"}
    recorded = (tmp_path / "runs" / "tiny" / "config.yaml").read_text()
    assert "- small_cnn" in recorded and "- auto" not in recorded
