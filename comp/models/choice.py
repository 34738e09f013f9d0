"""`backbones=auto`: the fine-tuned models a run trains, chosen for the data and the machine.

The rule (one function, `choose_backbones`, pure given its inputs):
1. Candidates are the registry's ImageNet backbones (`Backbone.top1` set), strongest first
   by ImageNet top-1, at the input size the run would use (`auto_size`).
2. A candidate is skipped when its weights cannot be had here (no file in `weights_dir`,
   the Keras cache or comp's bundled weights, and no network to download it), when one
   image costs more multiply-adds than the machine affords (`Hardware.gmacs_cap`: a few
   hundred million on a small CPU, ~9 G on a GPU), or when its estimated training time
   passes its share of `time_limit`.
3. Up to `Hardware.n_pretrained` of them are taken, one per family (MobileNet,
   EfficientNetV2, ConvNeXt, ...).
4. `small_cnn` (trained from scratch, with online shifts) is added where ImageNet
   features are weak: grayscale images, or where no ImageNet backbone is left. Small
   colour images do not get it: on the 48 px colour glyphs (26 classes, 100 a class) it
   stayed at chance while MobileNet features scored 0.99+ AUC (bench/README.md).
5. Where one ImageNet backbone is left and no `small_cnn`, a second unfreeze depth of it
   (`<backbone>-<point>`, its first other named point) is added, so the run still has
   several fine-tuned models to ensemble. Beside `small_cnn` it is not: on both grayscale
   bench folders it was the weakest fine-tune and no pick's member, and its folds took
   182 of the 2,207 unit-seconds of 2,000 MNIST digits' two rounds (bench/README.md).
The choice and its reasons are one log line at the start of the run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from comp.errors import CompError
from comp.models.registry import BACKBONES, Backbone

AUTO = "auto"
FROM_SCRATCH = "small_cnn"
# multiply-adds per second that comp's training and feature passes reach (measured on the
# 2-core AVX-512 CPU of bench/README.md: ~20 G per core; a GPU is taken as 100x that)
CPU_GMACS_PER_CORE = 20.0
GPU_GMACS = 2000.0


@dataclass(frozen=True)
class Hardware:
    """What the machine offers: GPUs and CPU cores."""

    gpus: int
    cpus: int

    @property
    def gmacs_cap(self) -> float:
        """The most multiply-adds (G) per image a fine-tuned backbone may cost here."""
        return 9.0 if self.gpus else 0.15 * self.cpus

    @property
    def n_pretrained(self) -> int:
        """How many ImageNet backbones auto takes."""
        return 3 if self.gpus else 2

    @property
    def gmacs_per_second(self) -> float:
        return GPU_GMACS * self.gpus if self.gpus else CPU_GMACS_PER_CORE * self.cpus

    def describe(self) -> str:
        return f"{self.gpus} GPU(s)" if self.gpus else f"CPU, {self.cpus} core(s)"


@dataclass(frozen=True)
class Budget:
    """The run's `time_limit` (seconds; None: none) and the training it pays for:
    `epochs` per fold over `folds` folds."""

    time_limit: float | None = None
    epochs: int = 40
    folds: int = 5


@dataclass(frozen=True)
class ImageTraits:
    """What the training images are like: median side, grayscale, how many."""

    native_side: int | None
    grayscale: bool
    n_images: int


@dataclass(frozen=True)
class BackboneChoice:
    """The chosen backbone entries, why, and which strong candidates were skipped."""

    names: list[str]
    reasons: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def line(self) -> str:
        """The one log line: chosen, why, skipped."""
        text = f"backbones=auto: {', '.join(self.names) or 'none'}"
        if self.reasons:
            text += f" ({'; '.join(self.reasons)})"
        if self.skipped:
            by_reason: dict[str, list[str]] = {}
            for name, reason in self.skipped.items():
                by_reason.setdefault(reason, []).append(name)
            text += "; skipped: " + "; ".join(
                f"{', '.join(names[:4])}{' ...' if len(names) > 4 else ''} ({reason})"
                for reason, names in by_reason.items())
        return text


def detect_hardware() -> Hardware:
    """GPUs TensorFlow sees and the CPU cores this process may use."""
    from comp.training.compute import visible_gpus

    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return Hardware(visible_gpus(), cpus)


def image_traits(paths: list[str], sample: int = 64) -> ImageTraits:
    """Median side (the longer one) and grayscale-ness of a sample of the images: an image
    is grayscale when its mode has one channel or its RGB channels are equal."""
    from PIL import Image

    step = max(1, len(paths) // sample)
    sides, gray = [], []
    for path in paths[::step][:sample]:
        try:
            with Image.open(path) as img:
                sides.append(max(img.size))
                if img.mode in ("1", "L", "LA", "I", "I;16", "F"):  # one channel
                    gray.append(True)
                    continue
                rgb = np.asarray(img.convert("RGB").resize((32, 32)), dtype=np.int16)
                gray.append(bool(np.abs(rgb - rgb[..., :1]).max() <= 2))
        except OSError:
            continue
    return ImageTraits(int(np.median(sides)) if sides else None,
                       bool(gray) and float(np.mean(gray)) >= 0.9, len(paths))


def choose_backbones(
    traits: ImageTraits, hardware: Hardware, has_weights: Callable[[Backbone, int], bool],
    size_for: Callable[[Backbone], int], budget: Budget = Budget(),
) -> BackboneChoice:
    """The `backbones=auto` rule (module docstring). `has_weights(backbone, size)` says
    whether its ImageNet file can be had; `size_for(backbone)` is its input size here."""
    reasons = [f"{hardware.describe()}: up to {hardware.n_pretrained} ImageNet backbones of "
               f"<= {hardware.gmacs_cap:.2f} GMACs per image, strongest by ImageNet top-1, "
               "one per family"]
    chosen: list[str] = []
    families: set[str] = set()
    skipped: dict[str, str] = {}
    candidates = sorted((b for b in BACKBONES.values() if b.top1 is not None),
                        key=lambda b: -b.top1)
    for backbone in candidates:
        if len(chosen) >= hardware.n_pretrained:
            break
        if backbone.family in families:
            continue
        size = size_for(backbone)
        cost = backbone.gmacs * (size / backbone.default_size) ** 2
        if cost > hardware.gmacs_cap:
            skipped[backbone.name] = "too slow for this machine"
            continue
        if budget.time_limit and (_estimated_seconds(cost, traits.n_images, budget, hardware)
                                  > budget.time_limit / (len(chosen) + 2)):
            skipped[backbone.name] = "too slow for time_limit"
            continue
        if not has_weights(backbone, size):
            skipped[backbone.name] = "no weight file here and no network"
            continue
        chosen.append(backbone.name)
        families.add(backbone.family)
    from_scratch = not chosen or traits.grayscale
    if len(chosen) == 1 and not from_scratch:
        other = [p for p in BACKBONES[chosen[0]].unfreeze_points
                 if p != BACKBONES[chosen[0]].default_unfreeze]
        if other:
            chosen.append(f"{chosen[0]}-{other[0]}")
            reasons.append(f"only {chosen[0]} qualifies, so also a second unfreeze depth "
                           f"({other[0]})")
    if from_scratch:
        why = "grayscale images" if traits.grayscale else "no ImageNet backbone qualifies"
        chosen.append(FROM_SCRATCH)
        reasons.append(f"{FROM_SCRATCH} from scratch: {why}")
    return BackboneChoice(chosen, reasons, skipped)


def _estimated_seconds(gmacs: float, n_images: int, budget: Budget,
                       hardware: Hardware) -> float:
    """Rough training time of one backbone: the 8-view feature pass over every image, and
    (as an upper bound, the whole network training) forward + backward (3x) per epoch
    over each fold's training rows."""
    epochs, folds = budget.epochs, budget.folds
    work = gmacs * n_images * (8 + 3 * epochs * folds * (folds - 1) / folds)
    return work / hardware.gmacs_per_second


def resolve_auto(cfg, paths: list[str], hardware: Hardware | None = None,
                 allow_download: bool | None = None) -> BackboneChoice | None:
    """Replace `auto` in `cfg.backbones` by the chosen entries (in place); None when
    `backbones` has no `auto`. `paths` are the training images."""
    from comp.config import model_settings
    from comp.models.spec import backbone_size
    from comp.models.weights import find_local_weights, network_allows_downloads

    if AUTO not in cfg.backbones:
        return None
    weights = str(cfg.weights)
    if weights.lower() not in ("imagenet", "none", "random", "null"):
        raise CompError(f"config: backbones=auto needs weights=imagenet (or none); "
                        f"weights={weights} is one file: name its backbone in backbones=[...]")
    traits = image_traits(paths)
    if weights.lower() != "imagenet":
        choice = BackboneChoice([FROM_SCRATCH], ["weights=none: no ImageNet backbone"])
    else:
        hardware = hardware or detect_hardware()
        if allow_download is None:
            allow_download = network_allows_downloads()

        def has_weights(backbone: Backbone, size: int) -> bool:
            return allow_download or find_local_weights(backbone, size,
                                                        cfg.weights_dir) is not None

        def size_for(backbone: Backbone) -> int:
            given = model_settings(cfg, backbone.name).model.image_size
            return int(given or backbone_size(backbone, traits.native_side))

        choice = choose_backbones(traits, hardware, has_weights, size_for,
                                  Budget(cfg.time_limit, int(cfg.train.epochs),
                                         int(cfg.data.folds)))
    rest = [b for b in cfg.backbones if b != AUTO and b not in choice.names]
    cfg.backbones = [*choice.names, *rest]
    return choice
