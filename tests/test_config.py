from pathlib import Path

import pytest

from comp.config import load_config, model_settings
from comp.errors import CompError
from comp.run import help_text, main


def test_defaults_compose():
    cfg = load_config([])
    assert cfg.stage == "all" and cfg.backbones == ["auto"]
    assert "pixels+svm_rbf" in cfg.classic.models and cfg.tune.n_trials == 0
    assert Path(cfg.data.dir).name == "wbc" and Path(cfg.data.dir).is_dir()


@pytest.mark.parametrize("override, needle", [
    ("foo=1", "unknown key 'foo'"),
    ("data.nope=3", "unknown key 'data.nope'"),
    ("train.epochs=abc", "train.epochs"),
    ("backbones=[resnet9000]", "unknown backbone 'resnet9000'"),
    ("backbone_overrides.small_cnn.train.lrr=1", "lrr"),
])
def test_config_errors_name_the_key(override, needle):
    with pytest.raises(CompError) as info:
        load_config([override])
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_cli_error_is_one_line_and_exit_2(capsys):
    assert main(["stage=nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown stage 'nope'" in err[0]


def test_help_lists_stages_and_keys(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for stage in ("prepare", "train", "submit", "all"):
        assert f"  {stage} " in out
    assert "train.epochs=" in out and "model.unfreeze=" in out
    assert help_text() in out


def test_backbone_names_one_backbone_alone():
    assert list(load_config(["backbone=vgg16"]).backbones) == ["vgg16"]
    assert list(load_config(["backbones=auto"]).backbones) == ["auto"]
    with pytest.raises(CompError, match="vggg16"):
        load_config(["backbone=vggg16"])


def test_variants_take_their_base_settings_then_their_own():
    cfg = load_config(["+backbone_overrides.mobilenet_025-block12.train.lr=0.1",
                       "+backbone_overrides.mobilenet_025.model.dropout=0.5"])
    variant = model_settings(cfg, "mobilenet_025-block12")
    assert variant.model.unfreeze == "block12" and variant.train.lr == 0.1
    assert variant.model.dropout == 0.5
    assert model_settings(cfg, "mobilenet_025").model.unfreeze is None
    with pytest.raises(CompError, match="leading"):
        load_config(["backbone_overrides.mobilenet_025-block12.train.lr=0.1"])


def test_backbone_overrides_merge_over_defaults():
    cfg = load_config(["train.lr=0.5"])
    small = model_settings(cfg, "small_cnn")
    # the images' own size (auto) and online augmentation, not the demo's 128 px
    assert small.train.optimizer == "adam" and small.model.image_size is None
    assert small.augment.online_shift == 0.1 and not small.augment.dihedral
    assert model_settings(cfg, "mobilenet_025").train.lr == 0.5


def test_a_run_setting_that_a_backbone_keeps_from_it_is_named():
    """train.epochs=3 never reaches small_cnn, whose own settings (config.yaml) hold 40
    epochs: shadowed_settings names each such key the overrides set, with both values and
    the entry that holds it; a key given to the backbone too, or not set by the overrides
    (the demo's model.image_size=128 comes from its data config), is not named."""
    from comp.config import given_settings, shadowed_settings

    def shadowed(overrides: list[str], backbone: str = "small_cnn") -> dict:
        cfg = load_config(["weights=none", *overrides])
        return shadowed_settings(cfg, backbone, given_settings(overrides))

    overrides = ["train.epochs=3", "train.lr=0.05", "augment.tta=none", "pseudo.rounds=0",
                 "+backbone_overrides.small_cnn-b.train.lr=0.05"]
    assert given_settings(overrides) == {"train.epochs", "train.lr", "augment.tta"}
    assert given_settings(["++train.lr=0.1"]) == set()  # Competition.load's saved keys
    assert shadowed(overrides) == {"train.epochs": (3, 40, "small_cnn"),
                                   "train.lr": (0.05, 0.001, "small_cnn")}
    # the variant's own entry gives it the run's lr; its base's 40 epochs stay
    assert shadowed(overrides, "small_cnn-b") == {"train.epochs": (3, 40, "small_cnn")}
    assert shadowed(overrides, "mobilenet_025") == {}  # no overrides of its own
    assert shadowed([]) == {}  # the demo's 128 px is not the run's own setting
    assert shadowed(["train.epochs=3", "backbone_overrides.small_cnn.train.epochs=3"]) == {}


def test_the_run_says_which_of_its_settings_a_backbone_keeps_from_it(tmp_path, competition,
                                                                      caplog):
    from tests.helpers import run_comp, tiny_overrides

    # the tiny run's own augment.tta=flips is one of them: small_cnn's entry says none
    overrides = [*tiny_overrides(tmp_path, competition), "train.lr=0.05",
                 "model.image_size=48", "quiet=false", f"plan.output={tmp_path / 'plan.sh'}"]
    with caplog.at_level("INFO", logger="comp"):
        assert run_comp("stage=plan", *overrides) == 0
    assert [m for m in caplog.messages if "keeps its own" in m] == [
        "small_cnn keeps its own model.image_size=32, train.lr=0.001, augment.tta=none "
        "(backbone_overrides), not the run's model.image_size=48, train.lr=0.05, "
        "augment.tta=flips; to give it the run's, add "
        "backbone_overrides.small_cnn.model.image_size=48 "
        "backbone_overrides.small_cnn.train.lr=0.05 backbone_overrides.small_cnn.augment.tta=flips"]


def test_experiment_files_are_short_override_lists():
    quick = load_config(["experiment=quick"])
    assert quick.name == "demo-quick" and quick.tune.n_trials == 0 and quick.pseudo.rounds == 0
    assert list(quick.backbones) == [] and len(quick.classic.models) == 4
    best = load_config(["experiment=best"])
    assert best.pseudo.rounds == 2 and best.tune.n_trials == 6
    assert list(best.backbones) == ["auto"]
    assert "optuna" in best.ensemble.methods
    assert load_config(["experiment=medium"]).pseudo.rounds == 0
    assert load_config([]).pseudo.rounds == 1  # the defaults run one round


def test_readme_config_reference_is_in_sync():
    from comp.run import config_reference

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    start = readme.index("<!-- config-reference:start -->") + len("<!-- config-reference:start -->")
    end = readme.index("<!-- config-reference:end -->")
    assert readme[start:end].strip() == config_reference().strip(), (
        "README's config reference is stale: paste the output of "
        "comp.run.config_reference() between the markers")


def test_the_demo_folder_is_written_without_a_global_resolver():
    """`${comp_demo:}` (the bundled demo's folder) is replaced by comp while it composes,
    in the defaults and in an override alike; loading again gives the same config, and
    OmegaConf's process-wide resolver registry is left without a comp entry."""
    from omegaconf import OmegaConf

    from comp.config import DEMO_DIR

    first, again = load_config([]), load_config([])
    assert first.data.dir == str(DEMO_DIR / "wbc") and first.weights_dir == str(
        DEMO_DIR / "weights")
    assert OmegaConf.to_container(again) == OmegaConf.to_container(first)
    named = load_config(["data.dir=${comp_demo:}/wbc", "name=demo"])
    assert named.data.dir == str(DEMO_DIR / "wbc")
    assert not OmegaConf.has_resolver("comp_demo")


def test_a_home_folder_written_with_a_tilde_is_expanded(tmp_path, monkeypatch):
    """The shell passes `data.dir=~/x` as it is (not an assignment), and Hydra's lexer
    failed on it: `config: LexerNoViableAltException: data.dir=~/x`."""
    monkeypatch.setenv("HOME", str(tmp_path / "home dir"))
    cfg = load_config(["data=folder", "data.dir=~/my comp", "runs_dir=~", "name=x~y"])
    assert cfg.data.dir == str(tmp_path / "home dir" / "my comp")
    assert cfg.runs_dir == str(tmp_path / "home dir")
    assert cfg.name == "x~y"  # a tilde inside a value is left alone
