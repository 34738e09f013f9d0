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
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from comp.constraints import (
    FRACTION,
    POSITIVE,
    SEED,
    AnyOf,
    Constraint,
    Each,
    ExistingFile,
    Int,
    Interval,
    LowHigh,
    NotAFolder,
    Optional,
    Options,
    Text,
    check_setting,
)
from comp.data.folder import SUBMISSION_VALUES
from comp.data.pixels import PIXEL_ORDERS
from comp.data.views import TTA_VIEWS
from comp.ensemble import METHODS
from comp.errors import CompError
from comp.log import PROGRESS_MODES
from comp.metrics import AUTO_METRIC, HIGHER_IS_BETTER, TUNING_METRICS
from comp.pseudo import POOL_SPLITS, TEACHERS
from comp.training.compute import DISTRIBUTE, JIT_COMPILE, PRECISIONS
from comp.training.optimizers import OPTIMIZERS
from comp.training.schedules import SCHEDULES
from comp.tuning.space import PRUNERS, SPACE

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


def setting(default: Any = dataclasses.MISSING, allowed: Constraint | None = None, *,
            factory: Any = dataclasses.MISSING, before: Any = dataclasses.MISSING) -> Any:
    """A schema field with its rule beside it: `default` (or a `factory` for lists), and
    the `Constraint` its value must follow, which `validate` checks. `before`: for a model
    setting added with a default that changes training, what a spec.json written before
    it (which lacks the key) reads it as: the way that model was trained (Settings)."""
    metadata = {"allowed": allowed}
    if before is not dataclasses.MISSING:
        metadata["before"] = before
    return field(default=default, default_factory=factory, metadata=metadata)


@dataclass
class DataConfig:
    """Where the competition folder is and how it is split into folds."""

    dir: str = setting("${comp_demo:}/wbc", Text())  # the competition folder (see the README)
    folds: int = setting(5, Int(2))  # K of the stratified group K-fold split
    fold_seed: int = setting(0, SEED)  # seed of the fold split
    # repeated stratified group K-fold: repeat r splits with fold_seed + r; every model
    # trains folds x repeats units and its OOF prediction is the mean over the repeats
    repeats: int = setting(1, Int(1))  # repeats of the K-fold split (units = folds x repeats)
    dedup: bool = True  # group near-duplicates (also flipped/rotated) into one fold
    dedup_max_distance: int = setting(  # max Hamming distance of 64-bit perceptual hashes
        6, Int(0, 64))
    # and the least correlation of the two images' 32x32 grayscale pixels (in their best
    # dihedral view): copies of one image keep it, look-alike drawings (digits) do not
    dedup_min_correlation: float = setting(  # least 32x32 pixel correlation; -1: hashes alone
        0.95, Interval(-1, 1))
    max_image_pixels: int = setting(  # larger images are refused (decompression bombs)
        40_000_000, Int(1, closed="both"))
    id_column: str | None = setting(  # train.csv's id column; None: id, image_id, image, ...
        None, Optional(Text()))
    label_column: str | None = setting(  # train.csv's label column(s); None: label, target, ...
        None, Optional(Text()))
    # train.csv's column of groups (patient, slide, plate): images of one group share a
    # fold, so no fold validates on a group its model trained on; None: no such column
    group_column: str | None = setting(  # train.csv's group column (patient, slide); None
        None, Optional(Text()))
    # a sample submission's one value column: auto (the positive class's probability where
    # there are two classes and the sample's values are fractions such as 0.5, as in
    # AUC-scored competitions; else labels) | labels | probability
    submission_values: str = setting(  # what a one-column submission holds
        "auto", Options(*SUBMISSION_VALUES))
    # the class whose probability a one-column two-class submission holds; None: the class
    # the column is named after, the larger of two numbers (1 of 0/1), or true/yes/positive
    positive_class: str | None = setting(  # the positive class of two; None: found
        None, Optional(Text()))
    # float images: the value range mapped to 0..255 (values outside are clipped);
    # None: [0, 1] when every value lies there, else clipped to 0..255 as they are
    intensity_range: list[float] | None = setting(  # range mapped to 0..255 (16-bit/float)
        None, LowHigh())
    # a pixel CSV's colour rows (3 x side^2 columns): interleaved (RGBRGB..., HAM10000's
    # hmnist CSVs) | planar (every red, then green, then blue: CIFAR's arrays) | auto
    # (the order whose neighbouring pixels are alike, said in one line; an error if unclear)
    pixel_order: str = setting(  # a colour pixel CSV's value order
        "auto", Options(*PIXEL_ORDERS))


@dataclass
class ModelConfig:
    """Settings of one fine-tuned model (backbone + head)."""

    # None: automatic: the backbone's default input size, or for smaller images 3 times
    # their median side for an ImageNet backbone (at least its minimum; Backbone.upsample)
    image_size: int | None = setting(  # input size of the fine-tuned model; None: automatic
        None, Optional(Int(16)))
    unfreeze: str | None = None  # where training starts: point, layer, index, fraction
    bn_trainable: bool = True  # BatchNorm of the trainable part learns (frozen BN diverges here)
    pooling: str = setting("avg", Options("avg", "max"))  # global pooling before the head
    dense_units: int = setting(0, Int(0))  # width of a hidden dense layer in the head; 0: none
    dropout: float = setting(0.3, Interval(0, 1, closed="left"))  # dropout rate before the softmax


@dataclass
class TrainConfig:
    """Optimiser, learning-rate schedule and stopping of one (model, fold) fit."""

    optimizer: str = setting(  # sgd (Nesterov momentum), adam or adamw (decoupled weight decay)
        "sgd", Options(*OPTIMIZERS))
    # 0.01: one fine-tuned MobileNet 0.25 on the same folds scored 0.850 CV accuracy on wbc
    # (0.833 at 0.003, 0.801 at 0.02) and 0.964 on the glyphs (0.945 at 0.003, 0.975 at 0.03)
    lr: float = setting(0.01, POSITIVE)  # initial learning rate
    momentum: float = setting(0.9, Interval(0, 1, closed="left"))  # SGD momentum
    schedule: str = setting(  # learning-rate schedule: step decay, cosine or constant
        "step", Options(*SCHEDULES))
    lr_drop: float = setting(  # step decay: multiply the learning rate by this ...
        0.5, Interval(0, 1, closed="right"))
    lr_every: int = setting(10, Int(1))  # ... every this many epochs
    epochs: int = setting(40, Int(1))  # epochs per fold
    patience: int = setting(12, Int(0))  # early stopping on the epoch-choosing rows (inner, outer)
    batch_size: int = setting(32, Int(1))  # images per training batch
    # where the training rows make more batches than this, an epoch is this many batches
    # of a fresh random draw of them, so the schedule (in epochs) and a fold's time stay
    # bounded as the data grows; None: every row once an epoch
    max_batches: int | None = setting(  # at most this many batches an epoch; None: no cap
        None, Optional(Int(1)))
    class_weight: str = setting(  # balanced: weight classes by inverse frequency; none
        "balanced", Options("balanced", "none"))
    label_smoothing: float = setting(  # label smoothing of the cross-entropy loss
        0.0, Interval(0, 1, closed="left"))
    weight_decay: float = setting(  # optimizer=adamw: decoupled weight decay
        0.004, Interval(0, 1, closed="left"))
    warmup: int = setting(0, Int(0))  # epochs of linear learning-rate warm-up before the schedule
    # clip each step's gradients to this global norm (None: never): a loose bound meant
    # for exploding steps; it saved a fine-tune fold that diverged at lr 0.01
    clipnorm: float | None = setting(10.0, Optional(POSITIVE), before=None)
    ema: bool = False  # keep, score and end with an exponential moving average of the weights
    ema_momentum: float = setting(  # train.ema: momentum of the moving average
        0.99, Interval(0, 1, closed="neither"))
    # epoch_choice=last: end with the mean of the weights after each of the last this many
    # epochs (stochastic weight averaging); 0 or 1: the last epoch's weights
    average_last: int = setting(0, Int(0))
    # epoch_choice=inner: end with the mean of the weights of the this many epochs best on
    # the inner holdout (a soup of the top checkpoints); None: the best epoch's weights
    average_top: int | None = setting(None, Optional(Int(2)))
    # MixUp / CutMix of the training batches (Keras's layers), on the frozen prefix's
    # feature maps or on the image where nothing is frozen; both set: one per batch
    mixup: float | None = setting(  # MixUp's Beta alpha; None: off
        None, Optional(Interval(0, 1, closed="right")))
    cutmix: float | None = setting(  # CutMix's factor; None: off
        None, Optional(Interval(0, 1, closed="right")))
    # discriminative learning rates: the first trainable backbone layer learns at this
    # fraction of train.lr, the layers above it geometrically closer to the full rate,
    # which the head keeps; None: one rate for all
    lr_depth_ratio: float | None = setting(
        None, Optional(Interval(0, 1, closed="neither")))
    # after the fit, recompute the trainable BatchNorm layers' moving statistics from the
    # kept weights on up to this many (training row, view) pairs (precise BN); None: keep
    # the fit's moving averages, which trail the weights by about a hundred steps: a fold
    # of 48 images fell to one class in inference mode (bench/README.md, stop 51)
    precise_bn: int | None = setting(4096, Optional(Int(1)), before=None)
    seed: int = setting(0, SEED)  # random seed of the fits
    # which rows choose the kept epoch: last (the end of the step-decay schedule; every
    # training row trains: honest, and the default since it scored best on wbc and digits),
    # inner (a holdout of the training rows: honest, but ~30 images pick the epoch), outer
    # (the scored fold itself: optimistic, the old behaviour)
    epoch_choice: str = setting(  # which rows choose the kept epoch: last, inner or outer
        "last", Options("inner", "last", "outer"))
    stop_fraction: float = setting(  # epoch_choice=inner: share of training rows held out
        0.2, Interval(0, 0.5, closed="neither"))


@dataclass
class AugmentConfig:
    """Training views and test-time augmentation."""

    dihedral: bool = True  # train on the 8 flips / 90-degree rotations of each image
    # random views keep the image's orientation (no flips, small turns): the dihedral
    # views are where flips and quarter turns come in
    random_views: int = setting(0, Int(0))  # extra randomly augmented views per training image
    shift: float = setting(  # random shift of the random views, a fraction of the side
        0.1, Interval(0, 0.5, closed="left"))
    rotation: float = setting(  # random turn of the random views, a fraction of a full turn
        0.05, Interval(0, 0.5))
    zoom: float = setting(  # random zoom range of the random views
        0.1, Interval(0, 1, closed="left"))
    brightness: float = setting(0.1, FRACTION)  # random brightness range of the random views
    contrast: float = setting(0.1, FRACTION)  # random contrast range of the random views
    tta: str = setting(  # test-time augmentation views averaged at prediction
        "dihedral", Options(*TTA_VIEWS))
    # per unit, an inner CV of its training rows (a linear probe on the cached features)
    # decides whether the flip/rotation views help or the image alone trains and predicts
    # (a 6 turned is a 9); the choice is in the unit's metrics.json (comp.training.viewchoice).
    # On by default: +0.026 CV accuracy on the glyphs, all views kept on wbc (bench/README.md)
    choose_views: bool = True
    # online augmentation, a fresh draw every batch, where the model trains from the image
    # itself (no frozen prefix: small_cnn, model.unfreeze=all); 0: off
    online_shift: float = setting(  # online random translation, a fraction of the side
        0.0, Interval(0, 0.5, closed="left"))
    online_rotation: float = setting(  # online random rotation, a fraction of a full turn
        0.0, Interval(0, 0.5))
    online_zoom: float = setting(0.0, Interval(0, 1, closed="left"))  # online random zoom range
    online_randaugment: float | None = setting(  # online RandAugment's magnitude; None: off
        None, Optional(Interval(0, 1, closed="right")))


@dataclass
class ClassicConfig:
    """Classic heads (scikit-learn) on cached embeddings, trained on the same folds."""

    # <features>+<head>; features: one or more parts joined by `+`, each `pixels`,
    # `color` (colour histograms) or a backbone, optionally `@<size>` (input size in
    # pixels) or `@<k>x` (k times the automatic size: more detail from small objects);
    # heads: logreg, svm_rbf, svm_linear, knn, gbm
    models: list[str] = setting(allowed=Each(Text()), factory=lambda: [  # <features>+<head>
        "pixels+svm_rbf", "mobilenet_025+logreg", "mobilenet_025+color+logreg",
        "mobilenet_025@2x+color+logreg"])
    depths: list[str] = setting(  # named depths pooled; empty: all + top
        allowed=Each(Text()), factory=list)
    image_size: int | None = setting(  # backbone input size for embeddings; None: automatic
        None, Optional(Int(16)))
    pixels_size: int = setting(32, Int(4, 512))  # side of the downsampled image for `pixels`
    views: str = setting(  # training views and TTA of classic models
        "dihedral", Options(*TTA_VIEWS))
    inner_folds: int = setting(  # inner group K-fold choosing the views (and for best, the C etc.)
        3, Int(2))
    # average: the head is fitted at every value of its regularisation grid and the fits'
    # probabilities averaged (on ~100-image folds the inner CV cannot tell the values
    # apart, and one pick is a coin flip); best: the one value the inner CV scores best
    regularisation: str = setting(  # average the head's regularisation grid, or fit the best value
        "average", Options("average", "best"))
    # the inner CV also chooses the backbone's pooled depths: all of them, or one alone
    # (beside pixels/colour parts). Off by default: no gain measured (bench/README.md)
    depth_choice: bool = False  # the inner CV also chooses the backbone's pooled depths


@dataclass
class PseudoConfig:
    """Pseudo-labels: which round trains, how many rounds stage=all runs, the rules."""

    round: int = setting(  # stage=train/pseudo: the round to train / to label for (0: no pseudo)
        0, Int(0))
    # pseudo-label rounds that stage=all runs after round 0. 1 by default: with the test
    # images in the pool and the selected teacher, one round raised the selected pipeline
    # on wbc and the glyphs (bench/README.md, levers.py); 0 halves the training time
    rounds: int = setting(1, Int(0))  # pseudo-label rounds that stage=all runs after round 0
    # the test images too by default (common Kaggle practice; fold k's pool never holds a
    # twin of a fold-k validation image, so CV stays honest), unless the folder labels
    # them (test/<class>/: a holdout, comp.pseudo.files.pool_splits)
    splits: list[str] = setting(  # pools labelled
        allowed=Each(Options(*POOL_SPLITS)), factory=lambda: ["unlabeled", "test"])
    # quota: per class the most confident rows, round(fraction x pool x class prior) of
    # them; threshold: every row whose top probability passes `threshold` (class_cap, ...)
    rule: str = setting(  # how pseudo-labels are chosen: per-class quota or a threshold
        "quota", Options("quota", "threshold"))
    fraction: float = setting(  # rule=quota: share of the pool labelled, split by class prior
        0.5, Interval(0, 1, closed="right"))
    min_confidence: float = setting(0.4, FRACTION)  # rule=quota: never below this top probability
    threshold: float = setting(0.8, FRACTION)  # rule=threshold: minimum top probability of the vote
    top_fraction: float = setting(  # per class, the most confident fraction of those passing
        1.0, Interval(0, 1, closed="right"))
    class_cap: float = setting(  # per class at most this times its labelled count
        0.5, Interval(0, None, closed="neither"))
    soft: bool = False  # soft targets (the vote, sharpened) instead of hard labels
    temperature: float = setting(1.0, POSITIVE)  # sharpening of soft targets: p ** (1 / T)
    weight: float = setting(0.5, Interval(0, None))  # sample weight of a pseudo-labelled image
    # stage=all trains a round only where its teacher's labels are right at least this
    # often: the rule applied to the teacher's out-of-fold predictions on each unit's
    # training rows, scored on their labels. 0.98: on the bench folders every round
    # whose teacher scored below it gained nothing or lost (bench/README.md); None: always
    min_precision: float | None = setting(  # least share of right teacher labels to train a round
        0.98, Optional(FRACTION))
    # knowledge distillation in a round's fine-tunes: each labelled training row of unit
    # u trains twice, on its label and (with this sample weight) on unit u's teacher's
    # probabilities for it, sharpened by `temperature`; the teacher's models trained on
    # those rows (their train.csv), never on unit u's validation rows; None: off
    distill: float | None = setting(  # weight of the teacher's targets on labelled rows
        None, Optional(Interval(0, None, closed="neither")))
    # round r's fine-tunes start from the weights of the models they replace (round r-1,
    # same unit: trained without that unit's validation rows) and run only the last this
    # many epochs of train.epochs' schedule; None: from the ImageNet weights, every epoch
    warm_epochs: int | None = setting(  # warm-started rounds: the schedule's last epochs
        None, Optional(Int(1)))
    # the rows whose batches make an epoch of a round's fine-tunes: `all` one pass over the
    # labelled and the pseudo-labelled rows (1.3-1.5x round 0's steps on the bench's
    # digit folders); `labelled` as many batches as the labelled rows make, drawn from
    # all of them, so a round costs what round 0 did. `all`: `labelled` took 28-37% less
    # of the round's fine-tune time and its fits scored 1-4 images lower (bench/README.md)
    epoch_rows: str = setting(  # a round's fine-tune epoch: all rows' batches or the labelled's
        "all", Options("all", "labelled"))
    # a round's fit of a fine-tuned model joins the model's earlier fits: stage=ensemble
    # averages its fits of rounds 0..r (each trained without the unit's validation rows)
    # and that mean is the model's entry in the choice of rank 1, in place of its round-r
    # fit alone. The selected pipeline rose by 0.004-0.005 on 2,000 MNIST digits, the
    # glyphs and digits, where the round's fits alone lost 0.002-0.0025 or tied
    # (bench/README.md, stop 54); False: the round's fits replace the earlier ones
    average_fits: bool = True  # a fine-tune's entry after a round: the mean of its fits so far
    voters: list[str] = field(default_factory=list)  # backbones that vote; empty: all
    # selected: per unit, the voter or ensemble of voters (ensemble.methods) best by
    # submit.rank_by on the OOF rows outside the unit's validation rows, as the nested
    # selection would pick it; mean: the plain mean of the voters' probabilities
    teacher: str = setting(  # what labels the pool: the selected entry or the voters' mean
        "selected", Options(*TEACHERS))
    truth: str | None = setting(  # optional CSV id,label of the unlabeled images, to score
        None, ExistingFile())


@dataclass
class TuneConfig:
    """Optuna studies: one per (backbone, outer fold), so a fold's validation images
    never choose its own settings; trials validate on an inner holdout."""

    backbones: list[str] = field(default_factory=list)  # to tune; empty: the first of backbones
    # finished trials each study should have; a rerun continues. 0 by default: on the
    # benchmarks fine-tune tuning did not beat the defaults (bench/README.md, levers.py)
    n_trials: int = setting(0, Int(0))  # finished trials each study should have; a rerun continues
    # Optuna storage URL, journal:<file> (JournalStorage in one file on a shared file
    # system, no server), or env:VAR to read it from an environment variable (keeps a
    # password off the command line); None: sqlite:///runs/<name>/optuna.db
    storage: str | None = None  # Optuna storage URL or env:VAR; None: runs/<name>/optuna.db
    epochs: int = setting(20, Int(1))  # epochs per trial fit
    inner_folds: int = setting(  # inner stratified group K-fold of the training rows scores a trial
        3, Int(2))
    metric: str = setting(  # what a trial maximises (log_loss: minimises)
        "auc", Options(*TUNING_METRICS))
    pruner: str = setting("median", Options(*PRUNERS))  # Optuna pruner that stops bad trials early
    seed: int = setting(0, SEED)  # seed of the studies' samplers
    heartbeat_grace: int = setting(  # seconds without a heartbeat before a trial counts as killed
        60, Int(1))
    params: list[str] = setting(  # the settings the studies search over
        allowed=Each(Options(*SPACE)), factory=lambda: list(SPACE))


@dataclass
class EnsembleConfig:
    """Which ensembles stage=ensemble builds, from which finished models."""

    # mean, geometric, weighted (scipy), optuna (TPE weights), greedy (Caruana), stacked
    # (logistic regression), rank (AUC only: never turned into labels). Mean and Optuna
    # weights by default: the nested Optuna ensemble raised the selected pipeline on the
    # glyphs (+0.012 accuracy) and left wbc's as it was; greedy and stacked did not beat
    # the mean or the best single model (bench/README.md)
    methods: list[str] = setting(  # stage=ensemble builds these
        allowed=Each(Options(*METHODS)), factory=lambda: ["mean", "optuna"])
    members: list[str] = field(default_factory=list)  # model ids or backbones; empty: all
    optuna_trials: int = setting(  # trials of each ensemble-weight study (method optuna)
        150, Int(1))


@dataclass
class PredictConfig:
    """stage=predict: new images through a finished model or ensemble."""

    input: str | None = None  # an image file or a folder of images (or of sub-folders of them)
    using: str | None = None  # model id or ensemble-<method>; None: rank 1 (submit.rank_by)
    output: str | None = setting(  # CSV path; None: runs/<name>/predictions/<input>__<using>.csv
        None, NotAFolder())


@dataclass
class ExportConfig:
    """stage=export: a trained model as plain Keras files (no comp needed to use them)."""

    # model id, or an ensemble of one backbone's fine-tunes (ensemble-fits-...); None:
    # rank 1 (submit.rank_by), or where rank 1 is another ensemble or a classic head the
    # best entry that exports (a fine-tuned model or such an ensemble)
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
    format: str = setting("lines", Options("lines", "slurm", "kubernetes"))
    output: str | None = None  # file for the script or manifest; None: stdout
    image: str = "python:3.11"  # kubernetes: the container image with comp installed
    workdir: str | None = None  # the shared folder the jobs run in; None: the current one


@dataclass
class OnlyConfig:
    """Restrict stage=train to one unit, for job arrays (see stage=plan)."""

    model: str | None = None  # a model id or a backbone entry of backbones
    fold: int | None = setting(  # a unit: fold k of repeat r is r * data.folds + k
        None, Optional(Int(0)))


@dataclass
class SubmitConfig:
    """How submissions are ranked."""

    # the competition's score: names files and CV figures (qwk: kappa); auto: AUC where
    # the submission holds probabilities, accuracy where it holds labels
    # (comp.submission.submission_metric)
    metric: str = setting(  # the competition's score; auto: auc for probabilities, else accuracy
        AUTO_METRIC, Options(AUTO_METRIC, *HIGHER_IS_BETTER))
    # the CV score that ranks the leaderboard and so picks rank 1 (submit, predict, export);
    # auto: submit.metric; log_loss: a steadier choice that favours calibrated ensembles
    rank_by: str = setting("auto", Options("auto", *HIGHER_IS_BETTER))
    # where pseudo-label rounds ran: the latest rounds' pick replaces round 0's pick only
    # if better by more than this many paired bootstrap standard errors of rank_by on the
    # OOF rows (per outer fold in the nested CV); null: the latest rounds always
    round_margin: float | None = setting(  # evidence a pseudo-label round needs to be picked
        0.5, Optional(Interval(0, None)))


@dataclass
class ComputeConfig:
    """How models run: the same code on CPU and GPU, these options for GPUs."""

    # auto (mixed_float16 where a GPU is seen; on a CPU with AMX mixed_bfloat16 for the
    # models it speeds up, small_cnn; else float32) | float32 | mixed_float16 |
    # mixed_bfloat16 (CPU/TPU)
    precision: str = setting("auto", Options(*PRECISIONS))
    jit_compile: str = setting(  # XLA: auto (Keras decides) | true | false
        "auto", Options(*JIT_COMPILE))
    distribute: str = setting(  # none | mirrored (tf.distribute.MirroredStrategy, all GPUs)
        "none", Options(*DISTRIBUTE))
    # training units (model, fold) run at once, each in a worker process with the cores
    # shared out; auto: 1 with a GPU, else one per core (at most 4, memory allowing)
    workers: Any = setting(  # auto | units trained at once, one process each
        "auto", AnyOf(Options("auto"), Int(1)))


@dataclass
class Config:
    """The whole config; every key a user can set is declared here."""

    stage: str = "all"  # the stage to run (see stages above); all runs the chain
    # experiment name: runs/<name>/ and submissions/<name>/; None: default_run_name()
    name: str | None = setting(None, Text())
    # backbone entries to fine-tune; auto: the strongest whose ImageNet weights can be had
    # here, sized to the machine and time_limit, + a CNN from scratch for
    # grayscale images (comp.models.choice)
    backbones: list[str] = setting(allowed=Each(Text()), factory=lambda: ["auto"])
    weights: str = setting(  # imagenet | none (random init) | <path to a .h5 weight file>
        "imagenet", AnyOf(Options("imagenet", "none"), ExistingFile()))
    weights_dir: str | None = None  # extra folder searched first for ImageNet weight files
    runs_dir: str = setting("runs", Text())  # folder of the run directories runs/<name>/
    submissions_dir: str = setting(  # folder of submissions/<name>/ and its leaderboard
        "submissions", Text())
    quiet: bool = False  # log warnings and errors only
    # seconds; once spent, no new fold, round or tuning starts, and stage=all still
    # ensembles and submits what finished; stage=all skips a pseudo-label round that
    # would not finish in the time left (estimated from the round before). None: no limit
    time_limit: int | None = setting(  # seconds; once spent, no new fold, round or tuning starts
        None, Optional(Int(1)))
    progress: str = setting(  # auto (bars on a terminal, else lines) | bar | lines | off
        "auto", Options(*PROGRESS_MODES))
    tensorboard: bool = False  # TensorBoard event files per fold in models/<id>/fold<k>/logs
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    classic: ClassicConfig = field(default_factory=ClassicConfig)
    pseudo: PseudoConfig = field(default_factory=PseudoConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    params: str = setting(  # default | best: train with each fold's best tuned settings
        "default", Options("default", "best"))
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


class Settings:
    """One section (model, train or augment) of one model's settings, read-only: the
    frozen twin of the section's schema dataclass (`frozen_settings`), whose fields and
    defaults it takes. Code reads attributes (`spec.train.lr`).

    `absent` names the keys that a spec.json written by an older comp does not record
    (keys added since): they read as their defaults (or, for a key whose default changed
    training, as the schema's `before` value: how that model was trained) but stay out of
    `as_dict`, which ModelSpec hashes, so such a model keeps its recorded id.
    """

    absent: frozenset[str]

    def as_dict(self) -> dict[str, Any]:
        """{key: value} of the settings in schema order, the absent keys left out."""
        return {item.name: getattr(self, item.name) for item in dataclasses.fields(self)
                if item.name != "absent" and item.name not in self.absent}

    def replaced(self, values: dict[str, Any]) -> Settings:
        """These settings with `values` ({key: value}) in place (a key given is not
        absent any more); an unknown key is a TypeError."""
        return dataclasses.replace(self, **values, absent=self.absent - values.keys())

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str) -> Settings:
        """The settings a spec.json recorded as {key: value} (`where` names the section
        in errors): keys it lacks take their defaults and are absent; a key this comp
        does not know (a newer comp's) is a CompError."""
        known = {item.name for item in dataclasses.fields(cls)} - {"absent"}
        unknown = sorted(values.keys() - known)
        if unknown:
            raise CompError(f"{where}: unknown setting(s) {unknown}; was it written by a "
                            "newer comp? Use that version")
        absent = known - values.keys()
        before = {item.name: item.metadata["before"] for item in dataclasses.fields(cls)
                  if item.name in absent and "before" in item.metadata}
        return cls(**values, **before, absent=frozenset(absent))


def frozen_settings(schema: type) -> type[Settings]:
    """The frozen twin of the schema dataclass `schema` (`TrainConfig` -> `TrainSettings`):
    the same fields with the same defaults, plus `absent` (see Settings). The schema
    itself stays mutable: OmegaConf makes the config of a frozen dataclass read-only,
    and Hydra writes the overrides into it."""
    items = [(item.name, item.type, field(default=item.default,
                                          default_factory=item.default_factory,
                                          metadata=item.metadata))
             for item in dataclasses.fields(schema)]
    items.append(("absent", "frozenset[str]", field(default=frozenset(), repr=False)))
    name = schema.__name__.replace("Config", "Settings")
    twin = dataclasses.make_dataclass(name, items, bases=(Settings,), frozen=True)
    twin.__module__, twin.__qualname__ = __name__, name  # pickled by reference, like a class
    twin.__doc__ = f"{schema.__doc__} Read-only (comp.config.Settings)."
    return twin


# section -> its settings class: the frozen twin of each of _OVERRIDABLE_SECTIONS
SETTINGS: dict[str, type[Settings]] = {
    name: frozen_settings(schema) for name, schema in _OVERRIDABLE_SECTIONS.items()}
ModelSettings, TrainSettings, AugmentSettings = (
    SETTINGS["model"], SETTINGS["train"], SETTINGS["augment"])


def schema_fields(cls: type, prefix: str = "") -> Iterator[tuple[str, type, dataclasses.Field]]:
    """Every leaf key of the schema `cls`, in declaration order: (dotted key, the dataclass
    that declares it, its field)."""
    for item in dataclasses.fields(cls):
        factory = item.default_factory
        if isinstance(factory, type) and dataclasses.is_dataclass(factory):
            yield from schema_fields(factory, f"{prefix}{item.name}.")
        else:
            yield prefix + item.name, cls, item


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

    nodes = {(cls.name, n.target.id): n for cls in classes.values() for n in cls.body
             if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
    return {key: describe(nodes[owner.__name__, item.name])
            for key, owner, item in schema_fields(Config)}


def close_key(key: str) -> str | None:
    """The schema key closest to a misspelt `key` (difflib), or None."""
    close = difflib.get_close_matches(key, list(key_descriptions()), n=1, cutoff=0.6)
    return close[0] if close else None


@cache
def _register() -> None:
    """Put the schema into Hydra's ConfigStore, once a process (Hydra finds a structured
    schema nowhere else; its name, comp_schema, is comp's own). Cached: turning the schema
    into a config node takes tens of milliseconds, and every load would pay it again."""
    ConfigStore.instance().store(name="comp_schema", node=Config)


DEMO_MARK = "${comp_demo:}"  # the bundled demo's folder in a config value (data/demo.yaml)


def _demo_paths(node: DictConfig | ListConfig) -> None:
    """Write the demo folder where a value says `${comp_demo:}`, before the config is
    resolved: comp's own interpolation, replaced here rather than by a resolver put into
    OmegaConf's registry, which is the whole process's."""
    keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
    for key in keys:
        child = node._get_node(key)
        if isinstance(child, DictConfig | ListConfig):
            if not child._is_none() and not child._is_missing():
                _demo_paths(child)
            continue
        value = child._value()
        if isinstance(value, str) and DEMO_MARK in value:
            node[key] = value.replace(DEMO_MARK, str(DEMO_DIR))


def hydra_quote(text: str) -> str:
    """`text` as a quoted Hydra override value that parses back to exactly `text`
    (backslashes are escaped only before a quote or at the end, as Hydra's grammar wants)."""
    escaped = re.sub(r"(\\+)(?='|$)", r"\1\1", text).replace("'", "\\'")
    return f"'{escaped}'"


def _as_backbones(override: str) -> str:
    """`backbones=auto` is the list [auto] (the key is a list), and `backbone=<name>` (one
    backbone alone) is `backbones=[<name>]`."""
    if override.lstrip("+~") == "backbones=auto":
        return override.replace("backbones=auto", "backbones=[auto]", 1)
    key, sep, value = override.partition("=")
    if sep and key.lstrip("+~") == "backbone" and value and value[:1] not in "[{'\"$":
        return f"backbones=[{value}]"
    return override


def _quote_non_ascii(override: str) -> str:
    """`name=expé` as `name='expé'`: Hydra's lexer takes non-ASCII text only when quoted;
    lists, dicts, interpolations and values already quoted are left as written."""
    key, sep, value = override.partition("=")
    if not sep or value.isascii() or value[:1] in "'\"[{" or "${" in value:
        return override
    return f"{key}={hydra_quote(value)}"


def _home_expanded(override: str) -> str:
    """`key=~/folder` with the home folder written out, and any other value holding a `~`
    quoted: a shell leaves the `~` of `data.dir=~/x` as it is (not a variable
    assignment), and Hydra's lexer rejects a `~` in a value that is not quoted."""
    key, sep, value = override.partition("=")
    if not sep or "~" not in value or value[:1] in "'\"[{" or "${" in value:
        return override
    if value == "~" or value.startswith("~/"):
        value = os.path.expanduser(value)
    return f"{key}={hydra_quote(value)}"


def _check_added_key(override: str) -> None:
    """`+key=value` adds a key: only backbone_overrides takes new keys. Hydra adds any
    other one too, where comp never reads it (`+trian.epochs=3` was taken in silence), and
    refuses one that exists in its own words; either is a CompError here."""
    if not override.startswith("+") or override.startswith("++"):  # ++ sets a key
        return  # whether or not it is there (Competition.load's saved settings)
    key, _, value = override[1:].partition("=")
    if key.startswith("backbone_overrides.") or key.startswith("hydra."):
        return
    if key in key_descriptions():
        raise CompError(f"config: {key} is a key already: set it without the leading +"
                        f" ({key}={value})")
    close = close_key(key)
    hint = f" (did you mean {close}?)" if close else ""
    raise CompError(f"config: unknown key '{key}'{hint}; a leading + adds keys only under "
                    "backbone_overrides.<backbone>")


def load_config(overrides: list[str], config_dir=CONFIG_DIR) -> DictConfig:
    """Compose the config from `configs/` and `key=value` overrides; raise CompError."""
    _register()
    for override in overrides:
        _check_added_key(str(override))
    overrides = [_as_backbones(f"{o}") for o in overrides]
    overrides = [_quote_non_ascii(_home_expanded(o)) for o in overrides]
    try:
        with config_dir_path(config_dir) as folder, initialize_config_dir(
                config_dir=str(folder), version_base="1.3"):
            cfg = compose(config_name="config", overrides=list(overrides),
                          return_hydra_config=True)
        choices = dict(cfg.hydra.runtime.choices)
        with open_dict(cfg):
            del cfg["hydra"]
        _demo_paths(cfg)
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        raise CompError(f"config: {_short_message(exc, overrides)}") from None
    _require_data_dir(cfg, choices, overrides)
    if cfg.name is None:
        cfg.name = default_run_name(cfg.data.dir, choices.get("experiment"))
    cfg.tune.storage = storage_from_env(cfg.tune.storage)
    validate(cfg)
    from comp.models.registry import get_backbone

    for backbone in list(cfg.backbones) + list(cfg.backbone_overrides):
        if backbone != "auto":
            get_backbone(backbone)
    for backbone in cfg.backbone_overrides:
        model_settings(cfg, backbone)  # validates the override's keys and types
    return cfg


# every key's rule, from the `setting(..., allowed)` beside its field
CONSTRAINTS: dict[str, Constraint] = {
    key: item.metadata["allowed"] for key, _, item in schema_fields(Config)
    if item.metadata.get("allowed") is not None}
_PER_BACKBONE = tuple(f"{section}." for section in _OVERRIDABLE_SECTIONS)


def validate(cfg: DictConfig) -> None:
    """Check every key of `CONSTRAINTS` in `cfg` (and each backbone's merged settings);
    raise one CompError line naming the first bad key, its value and the rule."""
    plain = OmegaConf.to_container(cfg)  # plain dicts: a key lookup costs nanoseconds
    for key, constraint in CONSTRAINTS.items():
        value = _get(plain, key)
        if value is not _MISSING:
            check_setting(key, value, constraint)
    if "backbone_overrides" not in plain:
        return
    # bases before variants, so a bad value is named where it was set
    for backbone in sorted(plain["backbone_overrides"], key=lambda b: ("-" in b, b)):
        merged = OmegaConf.to_container(model_settings(cfg, backbone))
        for key, constraint in CONSTRAINTS.items():
            if key.startswith(_PER_BACKBONE):
                value = _get(merged, key)
                if value is not _MISSING and value != _get(plain, key):
                    check_setting(f"backbone_overrides.{backbone}.{key}", value, constraint)


def describe_constraint(key: str) -> str | None:
    """The allowed values of `key` as text (e.g. 'sgd|adam', 'a number > 0'), or None."""
    constraint = CONSTRAINTS.get(key)
    return constraint.describe() if constraint else None


_MISSING = object()


def _get(plain: dict, key: str) -> Any:
    node: Any = plain
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


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
        try:
            merged[section] = OmegaConf.merge(_section_schema(section), merged[section], values)
        except OmegaConfBaseException as exc:
            raise CompError(
                f"config: backbone_overrides.{backbone}.{section}: {_short_message(exc)}"
            ) from None
    return merged


def given_settings(overrides: list[str]) -> frozenset[str]:
    """The model/train/augment keys that `overrides` (key=value, as the command line and
    the API pass them) set by name: {"train.epochs", ...}. `++key=value` is left out: it
    is how `Competition.load` replays every key of a run's saved config, which are not
    settings this run chose."""
    keys = (str(o).lstrip("+~").split("=", 1)[0].strip() for o in overrides
            if not str(o).startswith("++"))
    return frozenset(k for k in keys if k.split(".", 1)[0] in _OVERRIDABLE_SECTIONS)


def shadowed_settings(cfg: DictConfig, backbone: str, given: frozenset[str]
                      ) -> dict[str, tuple]:
    """The model/train/augment keys the run's overrides set (`given`, given_settings)
    that `backbone` does not train with, because its backbone_overrides (comp's own, e.g.
    small_cnn's 40 epochs of Adam, or the user's) set them otherwise:
    {"section.key": (the run's value, the backbone's value, the backbone_overrides entry
    that sets it)}. A global key never reaches a backbone whose overrides hold it, so
    `train.epochs=3` alone leaves small_cnn at 40; the run says so in one line (comp.run)
    instead of training it silently for longer."""
    base, _, tag = backbone.partition("-")
    entries = [base, backbone] if tag else [base]
    merged = model_settings(cfg, backbone)
    out = {}
    for entry in entries:  # a variant's own entry after its base's: it wins
        for section, values in (cfg.backbone_overrides.get(entry) or {}).items():
            for key in values:
                run_value, value = cfg[section][key], merged[section][key]
                if f"{section}.{key}" in given and value != run_value:
                    out[f"{section}.{key}"] = (run_value, value, entry)
    return out


@cache
def _section_schema(section: str) -> DictConfig:
    """The schema of an overridable section as a struct config node, made once: merge
    copies it and never changes it."""
    schema = OmegaConf.structured(_OVERRIDABLE_SECTIONS[section])
    OmegaConf.set_struct(schema, True)
    return schema


def frozen_sections(merged: DictConfig) -> dict[str, Settings]:
    """The sections of `merged` (what `model_settings` returns) as read-only settings
    objects: {"model": ModelSettings, "train": TrainSettings, "augment": AugmentSettings}."""
    return {name: settings(**OmegaConf.to_container(merged[name], resolve=True))
            for name, settings in SETTINGS.items()}


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
    missing = re.search(r"Could not find '([^/']+)/(.*)'", first)
    if missing:  # a config group's option that is not there (experiment=fast)
        group, value = missing.groups()
        listed = text.partition(f"Available options in '{group}':")[2]
        options = re.findall(r"^\t(\S+)$", listed.partition("Config search path")[0], re.M)
        hint = (f"; a competition folder is data=folder data.dir={value}"
                if group == "data" and ("/" in value or Path(value).is_dir()) else "")
        return f"{group}={value}: not one of {options}{hint}"
    key = _full_key(text)
    wrong = re.search(r"Value '(.*)' (?:of type '\w+' could not be converted to (\w+)|"
                      r"is not a valid (bool))", first)
    if key and wrong:  # OmegaConf's words for a value of the wrong type
        value, kind = wrong.group(1), wrong.group(2) or wrong.group(3)
        wanted = {"Integer": "a whole number", "Float": "a number",
                  "bool": "true or false"}.get(kind, kind)
        allowed = describe_constraint(key) or ""
        if value.lower() == "none" and allowed.startswith("None or "):  # Python's word
            return (f"{key}={value}: write {key}=null for none (YAML reads None as text); "
                    f"else {allowed.removeprefix('None or ')}")
        return f"{key}={value}: must be {wanted}"
    section = re.search(r"is not a subclass of (\w+)Config", first)
    if key and section:  # `train=1`: a whole section given one value
        return f"{key} is a section: set its keys, e.g. {key}.<key>=<value> (comp --help)"
    parse = re.search(r"(?:no viable alternative at input|mismatched input) '(.*)'", first)
    if parse:  # Hydra's grammar: name the override it could not read
        given = next((o for o in overrides if parse.group(1) in o.partition("=")[2]),
                     parse.group(1))
        return (f"cannot read {given!r} ({first}); close its brackets, and quote a value "
                "that holds spaces, '=' or brackets")
    if key and "is not a ListConfig, list or tuple" in first:
        return f"{key}: must be a list, e.g. {key}=[a,b]"
    if key and key not in first:
        first = f"{key}: {first}"
    return first


def _full_key(text: str) -> str | None:
    match = re.search(r"full_key: (\S+)", text)
    return match.group(1) if match else None
