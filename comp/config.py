"""The config schema (dataclasses) and loading it with Hydra's compose API.

`load_config(overrides)` is the one door: it composes `configs/config.yaml` (the top
level of a checkout; a wheel installs it as package data `comp/configs/`, read through
importlib.resources, see `config_root`) with the
user's `key=value` overrides against the typed schema below, so an unknown key or a
value of the wrong type becomes a `CompError` naming the key.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import io
import os
import re
import tempfile
import tokenize
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from comp.errors import CompError

DEMO_DIR = Path(__file__).resolve().parent / "demo"


def config_root():
    """Where the YAML configs are: the package data `comp/configs/` of an installed wheel
    (a Path for an ordinary install, another Traversable for e.g. a zip import), else
    `configs/` at the top level of the checkout that holds this comp/ (pyproject.toml
    maps one onto the other: `package-dir`)."""
    installed = files("comp") / "configs"
    if installed.is_dir():
        return installed
    return Path(__file__).resolve().parent.parent / "configs"


CONFIG_DIR = config_root()


@contextmanager
def config_dir_path(config_dir=CONFIG_DIR) -> Iterator[Path]:
    """`config_dir` as a real folder (Hydra needs one): itself, or a temporary copy."""
    if isinstance(config_dir, Path):
        yield config_dir
        return
    with tempfile.TemporaryDirectory(prefix="comp-configs-") as tmp:
        _copy_tree(config_dir, Path(tmp))
        yield Path(tmp)


def _copy_tree(source, target: Path) -> None:
    for item in source.iterdir():
        if item.is_dir():
            (target / item.name).mkdir()
            _copy_tree(item, target / item.name)
        else:
            (target / item.name).write_bytes(item.read_bytes())


@dataclass
class DataConfig:
    """Where the competition folder is and how it is split into folds."""

    dir: str = "${comp_demo:}/wbc"  # the competition folder (see the README)
    folds: int = 5  # K of the stratified group K-fold split
    fold_seed: int = 0  # seed of the fold split
    # repeated stratified group K-fold: repeat r splits with fold_seed + r; every model
    # trains folds x repeats units and its OOF prediction is the mean over the repeats
    repeats: int = 1  # repeats of the K-fold split (units = folds x repeats)
    dedup: bool = True  # group near-duplicates (also flipped/rotated) into one fold
    dedup_max_distance: int = 6  # max Hamming distance of 64-bit perceptual hashes
    max_image_pixels: int = 40_000_000  # larger images are refused (decompression bombs)
    id_column: str | None = None  # train.csv's id column; None: id, image_id, image, ...
    label_column: str | None = None  # train.csv's label column(s); None: label, target, ...
    # float images: the value range mapped to 0..255 (values outside are clipped);
    # None: [0, 1] when every value lies there, else clipped to 0..255 as they are
    intensity_range: list[float] | None = None  # range mapped to 0..255 (16-bit/float)


@dataclass
class ModelConfig:
    """Settings of one fine-tuned model (backbone + head)."""

    # None: automatic: the backbone's default input size, or for smaller images twice
    # their median side (at least the backbone's minimum)
    image_size: int | None = None  # input size of the fine-tuned model; None: automatic
    unfreeze: str | None = None  # where training starts: point, layer, index, fraction
    bn_trainable: bool = True  # BatchNorm of the trainable part learns (frozen BN diverges here)
    pooling: str = "avg"  # global pooling before the head
    dense_units: int = 0  # width of a hidden dense layer in the head; 0: none
    dropout: float = 0.3  # dropout rate before the softmax


@dataclass
class TrainConfig:
    """Optimiser, learning-rate schedule and stopping of one (model, fold) fit."""

    optimizer: str = "sgd"  # sgd (Nesterov momentum), adam or adamw (decoupled weight decay)
    lr: float = 0.003  # initial learning rate
    momentum: float = 0.9  # SGD momentum
    schedule: str = "step"  # learning-rate schedule: step decay, cosine or constant
    lr_drop: float = 0.5  # step decay: multiply the learning rate by this ...
    lr_every: int = 10  # ... every this many epochs
    epochs: int = 40  # epochs per fold
    patience: int = 12  # early stopping on the epoch-choosing rows (inner, outer)
    batch_size: int = 32  # images per training batch
    class_weight: str = "balanced"  # balanced: weight classes by inverse frequency; none
    label_smoothing: float = 0.0  # label smoothing of the cross-entropy loss
    weight_decay: float = 0.004  # optimizer=adamw: decoupled weight decay
    warmup: int = 0  # epochs of linear learning-rate warm-up before the schedule
    ema: bool = False  # keep, score and end with an exponential moving average of the weights
    ema_momentum: float = 0.99  # train.ema: momentum of the moving average
    # epoch_choice=last: end with the mean of the weights after each of the last this many
    # epochs (stochastic weight averaging); 0 or 1: the last epoch's weights
    average_last: int = 0
    seed: int = 0  # random seed of the fits
    # which rows choose the kept epoch: last (the end of the step-decay schedule; every
    # training row trains: honest, and the default since it scored best on wbc and digits),
    # inner (a holdout of the training rows: honest, but ~30 images pick the epoch), outer
    # (the scored fold itself: optimistic, the old behaviour)
    epoch_choice: str = "last"  # which rows choose the kept epoch: last, inner or outer
    stop_fraction: float = 0.2  # epoch_choice=inner: share of training rows held out


@dataclass
class AugmentConfig:
    """Training views and test-time augmentation."""

    dihedral: bool = True  # train on the 8 flips / 90-degree rotations of each image
    random_views: int = 0  # extra randomly augmented views per training image
    rotation: float = 0.5  # free rotation, fraction of a full turn (Keras RandomRotation)
    zoom: float = 0.1  # random zoom range of the random views
    brightness: float = 0.1  # random brightness range of the random views
    contrast: float = 0.1  # random contrast range of the random views
    tta: str = "dihedral"  # test-time augmentation views averaged at prediction
    # per unit, an inner CV of its training rows (a linear probe on the cached features)
    # decides whether the flip/rotation views help or the image alone trains and predicts
    # (a 6 turned is a 9); the choice is in the unit's metrics.json (comp.training.viewchoice)
    choose_views: bool = False
    # online augmentation, a fresh draw every batch, where the model trains from the image
    # itself (no frozen prefix: small_cnn, model.unfreeze=all); 0: off
    online_shift: float = 0.0  # online random translation, a fraction of the side
    online_rotation: float = 0.0  # online random rotation, a fraction of a full turn
    online_zoom: float = 0.0  # online random zoom range


@dataclass
class ClassicConfig:
    """Classic heads (scikit-learn) on cached embeddings, trained on the same folds."""

    # <features>+<head>; features: one or more parts joined by `+`, each `pixels`,
    # `color` (colour histograms) or a backbone, optionally `@<size>` (input size in
    # pixels) or `@<k>x` (k times the automatic size: more detail from small objects);
    # heads: logreg, svm_rbf, svm_linear, knn, gbm
    models: list[str] = field(default_factory=lambda: [  # <features>+<head>
        "pixels+svm_rbf", "mobilenet_025+logreg", "mobilenet_025+color+logreg",
        "mobilenet_025@2x+color+logreg"])
    depths: list[str] = field(default_factory=list)  # named depths pooled; empty: all + top
    image_size: int | None = None  # backbone input size for embeddings; None: automatic
    pixels_size: int = 32  # side of the downsampled image for `pixels`
    views: str = "dihedral"  # training views and TTA of classic models
    inner_folds: int = 3  # inner group K-fold choosing the views (and for best, the C etc.)
    # average: the head is fitted at every value of its regularisation grid and the fits'
    # probabilities averaged (on ~100-image folds the inner CV cannot tell the values
    # apart, and one pick is a coin flip); best: the one value the inner CV scores best
    regularisation: str = "average"  # average the head's regularisation grid, or fit the best value
    # the inner CV also chooses the backbone's pooled depths: all of them, or one alone
    # (beside pixels/colour parts). Off by default: no gain measured (bench/README.md)
    depth_choice: bool = False  # the inner CV also chooses the backbone's pooled depths


@dataclass
class PseudoConfig:
    """Pseudo-labels: which round trains, how many rounds stage=all runs, the rules."""

    round: int = 0  # stage=train/pseudo: the round to train / to label for (0: no pseudo)
    # pseudo-label rounds that stage=all runs after round 0. 0 by default: on the
    # benchmarks a round did not add score (bench/README.md, levers.py); turn on with 1
    rounds: int = 0  # pseudo-label rounds that stage=all runs after round 0
    splits: list[str] = field(default_factory=lambda: ["unlabeled"])  # pools labelled
    # quota: per class the most confident rows, round(fraction x pool x class prior) of
    # them; threshold: every row whose top probability passes `threshold` (class_cap, ...)
    rule: str = "quota"  # how pseudo-labels are chosen: per-class quota or a threshold
    fraction: float = 0.5  # rule=quota: share of the pool labelled, split by class prior
    min_confidence: float = 0.4  # rule=quota: never below this top probability
    threshold: float = 0.8  # rule=threshold: minimum top probability of the vote
    top_fraction: float = 1.0  # per class, the most confident fraction of those passing
    class_cap: float = 0.5  # per class at most this times its labelled count
    soft: bool = False  # soft targets (the vote, sharpened) instead of hard labels
    temperature: float = 1.0  # sharpening of soft targets: p ** (1 / T)
    weight: float = 0.5  # sample weight of a pseudo-labelled image
    voters: list[str] = field(default_factory=list)  # backbones that vote; empty: all
    truth: str | None = None  # optional CSV id,label of the unlabeled images, to score


@dataclass
class TuneConfig:
    """Optuna studies: one per (backbone, outer fold), so a fold's validation images
    never choose its own settings; trials validate on an inner holdout."""

    backbones: list[str] = field(default_factory=list)  # to tune; empty: the first of backbones
    # finished trials each study should have; a rerun continues. 0 by default: on the
    # benchmarks fine-tune tuning did not beat the defaults (bench/README.md, levers.py)
    n_trials: int = 0  # finished trials each study should have; a rerun continues
    # Optuna storage URL, journal:<file> (JournalStorage in one file on a shared file
    # system, no server), or env:VAR to read it from an environment variable (keeps a
    # password off the command line); None: sqlite:///runs/<name>/optuna.db
    storage: str | None = None  # Optuna storage URL or env:VAR; None: runs/<name>/optuna.db
    epochs: int = 20  # epochs per trial fit
    inner_folds: int = 3  # a trial's score: inner stratified group K-fold of the training rows
    metric: str = "auc"  # what a trial maximises (log_loss: minimises)
    pruner: str = "median"  # Optuna pruner that stops bad trials early
    seed: int = 0  # seed of the studies' samplers
    heartbeat_grace: int = 60  # seconds without a heartbeat before a trial counts as killed
    params: list[str] = field(default_factory=lambda: [  # the settings the studies search over
        "model.dropout", "model.unfreeze", "model.bn_trainable", "model.dense_units",
        "train.lr", "train.lr_drop", "train.lr_every", "train.class_weight",
        "train.label_smoothing", "augment.random_views"])


@dataclass
class EnsembleConfig:
    """Which ensembles stage=ensemble builds, from which finished models."""

    # mean, geometric, weighted (scipy), optuna (TPE weights), greedy (Caruana), stacked
    # (logistic regression), rank (AUC only: never turned into labels). Mean alone by
    # default: greedy and stacked did not beat it or the best single model on the
    # benchmarks, and a learned ensemble that ties its best member only adds selection
    # noise (bench/README.md)
    methods: list[str] = field(default_factory=lambda: ["mean"])  # stage=ensemble builds these
    members: list[str] = field(default_factory=list)  # model ids or backbones; empty: all
    optuna_trials: int = 150  # trials of each ensemble-weight study (method optuna)


@dataclass
class PredictConfig:
    """stage=predict: new images through a finished model or ensemble."""

    input: str | None = None  # an image file or a folder of images
    using: str | None = None  # model id or ensemble-<method>; None: rank 1 (submit.rank_by)
    output: str | None = None  # CSV path; None: runs/<name>/predictions/<input>__<using>.csv


@dataclass
class ExportConfig:
    """stage=export: a trained model as plain Keras files (no comp needed to use them)."""

    # model id; None: rank 1 (submit.rank_by), or the best fine-tuned model where
    # rank 1 is an ensemble or a classic head
    using: str | None = None
    # average the model's TTA views inside the graph, as comp's own predictions do
    tta: bool = True
    tflite: bool = False  # also write model.tflite
    output: str | None = None  # folder; None: runs/<name>/export/<model_id>[-notta]/


@dataclass
class PlanConfig:
    """How stage=plan writes the units left: lines, a Slurm array or a Kubernetes Job."""

    # lines: `only.model=... only.fold=...` per unit on stdout; slurm: an sbatch array
    # script; kubernetes: an indexed Job manifest (one completion index per unit)
    format: str = "lines"
    output: str | None = None  # file for the script or manifest; None: stdout
    image: str = "python:3.11"  # kubernetes: the container image with comp installed
    workdir: str | None = None  # the shared folder the jobs run in; None: the current one


@dataclass
class OnlyConfig:
    """Restrict stage=train to one unit, for job arrays (see stage=plan)."""

    model: str | None = None  # a model id or a backbone entry of backbones
    fold: int | None = None  # a unit: fold k of repeat r is r * data.folds + k


@dataclass
class SubmitConfig:
    """How submissions are ranked."""

    metric: str = "accuracy"  # the competition's score: names files and CV figures (qwk: kappa)
    # the CV score that ranks the leaderboard and so picks rank 1 (submit, predict, export);
    # auto: submit.metric; log_loss: a steadier choice that favours calibrated ensembles
    rank_by: str = "auto"


@dataclass
class ComputeConfig:
    """How models run: the same code on CPU and GPU, these options for GPUs."""

    precision: str = "float32"  # float32 | mixed_float16 (GPU) | mixed_bfloat16 (CPU/TPU)
    jit_compile: str = "auto"  # XLA: auto (Keras decides) | true | false
    distribute: str = "none"  # none | mirrored (tf.distribute.MirroredStrategy, all GPUs)


@dataclass
class Config:
    """The whole config; every key a user can set is declared here."""

    stage: str = "all"  # the stage to run (see stages above); all runs the chain
    # experiment name: runs/<name>/ and submissions/<name>/; None: default_run_name()
    name: str | None = None
    # backbone entries to fine-tune; auto: the strongest whose ImageNet weights can be had
    # here, sized to the machine and time_limit, + a CNN from scratch for small or
    # grayscale images (comp.models.choice)
    backbones: list[str] = field(default_factory=lambda: ["auto"])
    weights: str = "imagenet"  # imagenet | none (random init) | <path to a .h5 weight file>
    weights_dir: str | None = None  # extra folder searched first for ImageNet weight files
    runs_dir: str = "runs"  # folder of the run directories runs/<name>/
    submissions_dir: str = "submissions"  # folder of submissions/<name>/ and its leaderboard
    quiet: bool = False  # log warnings and errors only
    # seconds; once spent, no new fold, round or tuning starts, and stage=all still
    # ensembles and submits what finished. None: no limit
    time_limit: int | None = None  # seconds; once spent, no new fold, round or tuning starts
    progress: str = "auto"  # auto (bars on a terminal, else lines) | bar | lines | off
    tensorboard: bool = False  # TensorBoard event files per fold in models/<id>/fold<k>/logs
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    classic: ClassicConfig = field(default_factory=ClassicConfig)
    pseudo: PseudoConfig = field(default_factory=PseudoConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    params: str = "default"  # default | best: train with each fold's best tuned settings
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    only: OnlyConfig = field(default_factory=OnlyConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    submit: SubmitConfig = field(default_factory=SubmitConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    # per-backbone settings: {backbone: {model: {...}, train: {...}, augment: {...}}};
    # a variant `<backbone>-<tag>` in `backbones` gets its base's settings, then its own
    backbone_overrides: dict[str, Any] = field(default_factory=dict)  # per backbone


_OVERRIDABLE_SECTIONS = {"model": ModelConfig, "train": TrainConfig, "augment": AugmentConfig}


def key_descriptions() -> dict[str, str]:
    """Every key of the schema (dotted, in declaration order) and what it does: the
    comment beside its field above, or else the comment lines just above the field
    (`--help` prints them; a test checks that every key has one)."""
    source = Path(__file__).read_text(encoding="utf-8")
    comments = {token.start[0]: token.string.lstrip("#").strip()
                for token in tokenize.generate_tokens(io.StringIO(source).readline)
                if token.type == tokenize.COMMENT}
    lines = source.splitlines()
    classes = {node.name: node for node in ast.parse(source).body
               if isinstance(node, ast.ClassDef)}

    def describe(node: ast.AnnAssign) -> str:
        for line in range(node.lineno, node.end_lineno + 1):
            if line in comments and not lines[line - 1].lstrip().startswith("#"):
                return comments[line]
        above, line = [], node.lineno - 1
        while line in comments and lines[line - 1].lstrip().startswith("#"):
            above.insert(0, comments[line])
            line -= 1
        return " ".join(above)

    def walk(cls: type, prefix: str) -> dict[str, str]:
        nodes = {n.target.id: n for n in classes[cls.__name__].body
                 if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
        found = {}
        for item in dataclasses.fields(cls):
            factory = item.default_factory
            if isinstance(factory, type) and dataclasses.is_dataclass(factory):
                found.update(walk(factory, f"{prefix}{item.name}."))
            else:
                found[prefix + item.name] = describe(nodes[item.name])
        return found

    return walk(Config, "")


def close_key(key: str) -> str | None:
    """The schema key closest to a misspelt `key` (difflib), or None."""
    close = difflib.get_close_matches(key, list(key_descriptions()), n=1, cutoff=0.6)
    return close[0] if close else None


def _register() -> None:
    ConfigStore.instance().store(name="comp_schema", node=Config)
    OmegaConf.register_new_resolver("comp_demo", lambda: str(DEMO_DIR), replace=True)


def hydra_quote(text: str) -> str:
    """`text` as a quoted Hydra override value that parses back to exactly `text`
    (backslashes are escaped only before a quote or at the end, as Hydra's grammar wants)."""
    escaped = re.sub(r"(\\+)(?='|$)", r"\1\1", text).replace("'", "\\'")
    return f"'{escaped}'"


def _quote_non_ascii(override: str) -> str:
    """`name=expé` as `name='expé'`: Hydra's lexer takes non-ASCII text only when quoted;
    lists, dicts, interpolations and values already quoted are left as written."""
    key, sep, value = override.partition("=")
    if not sep or value.isascii() or value[:1] in "'\"[{" or "${" in value:
        return override
    return f"{key}={hydra_quote(value)}"


def load_config(overrides: list[str], config_dir=CONFIG_DIR) -> DictConfig:
    """Compose the config from `configs/` and `key=value` overrides; raise CompError."""
    _register()
    # `backbones=auto` is the list [auto] (the key is a list)
    overrides = [f"{o}".replace("backbones=auto", "backbones=[auto]", 1)
                 if f"{o}".lstrip("+~") == "backbones=auto" else o for o in overrides]
    overrides = [_quote_non_ascii(o) for o in overrides]
    try:
        with config_dir_path(config_dir) as folder, initialize_config_dir(
                config_dir=str(folder), version_base="1.3"):
            cfg = compose(config_name="config", overrides=list(overrides),
                          return_hydra_config=True)
        choices = dict(cfg.hydra.runtime.choices)
        with open_dict(cfg):
            del cfg["hydra"]
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        raise CompError(f"config: {_short_message(exc, overrides)}") from None
    _require_data_dir(cfg, choices, overrides)
    if cfg.name is None:
        cfg.name = default_run_name(cfg.data.dir, choices.get("experiment"))
    cfg.tune.storage = storage_from_env(cfg.tune.storage)
    from comp.validate import validate

    validate(cfg)
    from comp.models.registry import get_backbone

    for backbone in list(cfg.backbones) + list(cfg.backbone_overrides):
        if backbone != "auto":
            get_backbone(backbone)
    for backbone in cfg.backbone_overrides:
        model_settings(cfg, backbone)  # validates the override's keys and types
    return cfg


def default_run_name(data_dir: str | Path, experiment: str | None = None) -> str:
    """The experiment name when `name=` is not given: "demo" for the bundled demo, else
    the competition folder's name (characters other than letters, digits, `.`, `_`
    and `-` become `_`), followed by `-<preset>` under `experiment=<preset>`
    ("demo-quick"), so runs on different folders, or with different presets, never
    share a run directory or a leaderboard."""
    folder = Path(data_dir).expanduser().resolve()
    if folder == (DEMO_DIR / "wbc").resolve():
        name = "demo"
    else:
        name = re.sub(r"[^\w.-]", "_", folder.name).strip(".") or "competition"
    return f"{name}-{experiment}" if experiment else name


def _require_data_dir(cfg: DictConfig, choices: dict, overrides: list[str]) -> None:
    """data=folder needs data.dir (its `???` would otherwise leave the demo's folder)."""
    chosen = choices.get("data")
    given = any(o.lstrip("+~").startswith("data.dir=") for o in overrides)
    if chosen not in (None, "demo") and not given and cfg.data.dir == str(DEMO_DIR / "wbc"):
        raise CompError(f"config: data={chosen} needs data.dir=<your competition folder>")


def storage_from_env(storage: str | None) -> str | None:
    """`tune.storage=env:VAR` reads the URL from environment variable VAR
    (`${oc.env:VAR}` works too); a missing variable is a CompError."""
    if storage is None or not str(storage).startswith("env:"):
        return storage
    name = str(storage)[4:]
    value = os.environ.get(name)
    if not value:
        raise CompError(f"config: tune.storage=env:{name}: environment variable {name} is "
                        "not set; export it (e.g. postgresql://user:password@host/db)")
    return value


def mask_url(url: str | None) -> str | None:
    """`url` with its password replaced by *** (SQLAlchemy's rendering); other text as is."""
    if not url or "://" not in str(url):
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(str(url)).render_as_string(hide_password=True)
    except Exception:  # not a database URL: hide anything between ':' and '@' by hand
        return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", str(url))


def masked_yaml(cfg: DictConfig) -> str:
    """The config as YAML with secrets (a password in tune.storage) masked: what comp
    writes into the run directory and prints."""
    copy = OmegaConf.create(OmegaConf.to_container(cfg))
    if "tune" in copy and copy.tune.get("storage"):
        copy.tune.storage = mask_url(copy.tune.storage)
    return OmegaConf.to_yaml(copy)


def model_settings(cfg: DictConfig, backbone: str) -> DictConfig:
    """The model/train/augment settings for `backbone`: defaults + backbone_overrides."""
    merged = OmegaConf.create(
        {name: OmegaConf.to_container(cfg[name]) for name in _OVERRIDABLE_SECTIONS}
    )
    base, _, tag = backbone.partition("-")
    layers = [cfg.backbone_overrides.get(base) or {}]
    if tag:
        from comp.models.registry import get_backbone

        # a variant named after one of its backbone's unfreeze points cuts there
        if tag in get_backbone(base).unfreeze_points:
            layers.append({"model": {"unfreeze": tag}})
        layers.append(cfg.backbone_overrides.get(backbone) or {})
    for section, values in [item for layer in layers for item in layer.items()]:
        if section not in _OVERRIDABLE_SECTIONS:
            raise CompError(
                f"config: backbone_overrides.{backbone}.{section} is not a section; "
                f"use one of {sorted(_OVERRIDABLE_SECTIONS)}"
            )
        schema = OmegaConf.structured(_OVERRIDABLE_SECTIONS[section])
        OmegaConf.set_struct(schema, True)
        try:
            merged[section] = OmegaConf.merge(schema, merged[section], values)
        except OmegaConfBaseException as exc:
            raise CompError(
                f"config: backbone_overrides.{backbone}.{section}: {_short_message(exc)}"
            ) from None
    return merged


def _short_message(exc: Exception, overrides: list[str] = ()) -> str:
    """Hydra/OmegaConf errors are multi-line with hints; keep the first useful line (an
    unknown key gets the closest known key of the overrides' misspelt key)."""
    cause = exc.__cause__ or exc
    text = str(cause).strip() or str(exc).strip()
    first = text.splitlines()[0]
    match = re.search(r"Key '([^']+)' (?:is )?not in", text)
    if match:
        key = _full_key(text) or match.group(1)
        if key.startswith("backbone_overrides."):
            return (f"unknown key '{key}'; add per-backbone settings with a leading +, e.g. "
                    "+backbone_overrides.<backbone>.train.lr=0.01")
        given = next((o.split("=", 1)[0].lstrip("+~") for o in overrides
                      if o.lstrip("+~").split("=", 1)[0].startswith(key)), key)
        close = close_key(given)
        hint = f" (did you mean {close}?)" if close else ""
        return f"unknown key '{key}'{hint}; see `comp --help` for the keys"
    key = _full_key(text)
    if key and key not in first:
        first = f"{key}: {first}"
    return first


def _full_key(text: str) -> str | None:
    match = re.search(r"full_key: (\S+)", text)
    return match.group(1) if match else None
