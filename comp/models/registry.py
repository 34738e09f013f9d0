"""One table of backbones: constructor, preprocessing, size, unfreeze points, weight file.

Adding a backbone is one entry in BACKBONES; nothing else in comp names a backbone.
Unfreeze points name where the frozen prefix ends, in one of two forms:
`"<layer>"` (that layer and everything after it train) or `"after:<layer>"` (everything
after that layer trains). Names are Keras's stable layer names, chosen at block
boundaries so that the frozen prefix is a clean cut of the graph.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Backbone:
    """A registered backbone (see module docstring)."""

    name: str
    constructor: Callable[..., object]  # (input_shape=, weights=) -> no-top keras.Model
    preprocess: Callable[[np.ndarray], np.ndarray]  # float32 RGB 0..255 -> model input
    default_size: int
    unfreeze_points: dict[str, str] = field(default_factory=dict)
    default_unfreeze: str = "all"
    weight_file: Callable[[int], str] | None = None  # image size -> Keras's no-top file name
    weight_md5: str | None = None  # Keras's published hash of that file (md5 or sha256)
    min_size: int = 32
    # for backbones=auto (comp.models.choice): ImageNet top-1 of the Keras weights (the
    # keras.io applications table; None: no ImageNet weights), published multiply-adds
    # (G) of one image at `default_size`, and the family (auto takes one per family)
    top1: float | None = None
    gmacs: float = 0.0
    family: str = ""
    # images smaller than default_size are upsampled this many times (ImageNet networks
    # expect larger objects: fine-tuned MobileNet 0.25 on 48 px letters scored 0.967 CV at
    # 2x, 0.985 at 3x, 0.988 at 4x; on 28 px digits 0.967 / 0.978 / 0.980, and 0.988 at
    # 144 px, each step up to 2x the fold's time, bench/README.md; a CNN from scratch
    # learns at the images' own size)
    upsample: int = 3
    # frozen passes on a CPU through TFLite's XNNPACK kernels (comp.training.lite): for the
    # depthwise-separable families, 1.4-6.4x TensorFlow's images per second here; the
    # dense-convolution ones (VGG, ResNet, Inception, DenseNet, EfficientNetV2-B3/S) ran
    # at 0.85-1.23x, which does not pay for a conversion of 2-22 s (bench/README.md)
    lite: bool = False
    # training steps in mixed bfloat16 where the CPU has AMX (compute.precision=auto,
    # comp.training.compute): small_cnn's dense 3x3 convolutions took 0.64-0.66x of
    # float32's step time on one core here; MobileNet 0.25's depthwise ones 1.2-2.9x, so a
    # row is marked only where its fit was measured faster (bench/fit_step.py)
    amx_bfloat16: bool = False


def _apps():
    import keras

    return keras.applications


def _mobilenet(alpha: float) -> Callable[..., object]:
    def build(input_shape, weights):
        return _apps().MobileNet(
            input_shape=input_shape, alpha=alpha, include_top=False, weights=weights
        )

    return build


def _mobilenet_file(alpha_text: str) -> Callable[[int], str]:
    def name(size: int) -> str:
        rows = size if size in (128, 160, 192, 224) else 224
        return f"mobilenet_{alpha_text}_{rows}_tf_no_top.h5"

    return name


def _mobilenet_v2_file(size: int) -> str:
    rows = size if size in (96, 128, 160, 192, 224) else 224
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{rows}_no_top.h5"


def _app(ctor_name: str) -> Callable[..., object]:
    def build(input_shape, weights):
        return getattr(_apps(), ctor_name)(
            input_shape=input_shape, include_top=False, weights=weights
        )

    return build


def _preprocess(module: str) -> Callable[[np.ndarray], np.ndarray]:
    def preprocess(x: np.ndarray) -> np.ndarray:
        return getattr(_apps(), module).preprocess_input(x)

    return preprocess


def _app_kw(ctor_name: str, **extra) -> Callable[..., object]:
    def build(input_shape, weights):
        return getattr(_apps(), ctor_name)(
            input_shape=input_shape, include_top=False, weights=weights, **extra
        )

    return build


def _fixed(name: str) -> Callable[[int], str]:
    return lambda size: name


def _identity(x: np.ndarray) -> np.ndarray:
    return x


def small_cnn(input_shape, weights):
    """A small CNN trained from scratch: three conv blocks (32, 64, 128 filters).

    Its BatchNormalization layers keep their moving statistics with momentum 0.9, not
    Keras's 0.99: a few hundred images make a few steps an epoch, and at 0.99 the moving
    statistics lag the changing weights so far that inference-mode predictions fell to
    chance on 26 colour letter classes while training-mode accuracy rose (bench/README.md,
    "small_cnn on the glyphs")."""
    import keras
    from keras import layers

    inputs = keras.Input(input_shape)
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    for block, filters in enumerate((32, 64, 128), start=1):
        for conv in (1, 2):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False,
                              name=f"block{block}_conv{conv}")(x)
            x = layers.BatchNormalization(momentum=0.9, name=f"block{block}_bn{conv}")(x)
            x = layers.Activation("relu", name=f"block{block}_relu{conv}")(x)
        x = layers.MaxPooling2D(name=f"block{block}_pool")(x)
    return keras.Model(inputs, x, name="small_cnn")


_MOBILENET_POINTS = {
    "block12": "after:conv_pw_11_relu",
    "block9": "after:conv_pw_8_relu",
    "block6": "after:conv_pw_5_relu",
}

_EFFICIENTNET_V2_POINTS = {"block6a": "block6a_expand_conv", "block5a": "block5a_expand_conv"}


def _convnext_points(model: str) -> dict[str, str]:
    return {"stage3": f"{model}_downsampling_block_2", "stage2": f"{model}_downsampling_block_1"}


def _row(name: str, constructor, preprocess, *, size: int = 224, unfreeze: dict | None = None,
         default_unfreeze: str = "all", weight_file: Callable[[int], str] | None = None,
         md5: str | None = None, min_size: int = 32, top1: float | None = None,
         gmacs: float = 0.0, family: str = "", upsample: int = 3, lite: bool = False,
         amx_bfloat16: bool = False) -> Backbone:
    """One registry row, written with keywords (timm's `_cfg(...)` style).

    Why fifteen parameters: one per field of `Backbone`, the table's columns; all but
    the first three are keywords whose defaults are the common values, so each row
    names only what sets it apart."""
    return Backbone(name, constructor, preprocess, size, dict(unfreeze or {}), default_unfreeze,
                    weight_file, md5, min_size, top1, gmacs, family or name, upsample, lite,
                    amx_bfloat16)


BACKBONES: dict[str, Backbone] = {
    b.name: b
    for b in [
        _row("vgg16", _app("VGG16"), _preprocess("vgg16"),
             unfreeze={"block5": "block5_conv1", "block4": "block4_conv1"},
             default_unfreeze="block5",
             weight_file=_fixed("vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"),
             md5="6d6bbae143d832006294945121d1f1fc", top1=71.3, gmacs=15.5, family="vgg"),
        _row("vgg19", _app("VGG19"), _preprocess("vgg19"),
             unfreeze={"block5": "block5_conv1", "block4": "block4_conv1"},
             default_unfreeze="block5",
             weight_file=_fixed("vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"),
             md5="253f8cb515780f3b799900260a226db6", top1=71.3, gmacs=19.6, family="vgg"),
        _row("resnet50", _app("ResNet50"), _preprocess("resnet50"),
             unfreeze={"conv5": "after:conv4_block6_out", "conv4": "after:conv3_block4_out"},
             default_unfreeze="conv5",
             weight_file=_fixed("resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
             md5="4d473c1dd8becc155b73f8504c6f6626", top1=74.9, gmacs=4.1, family="resnet"),
        _row("inception_v3", _app("InceptionV3"), _preprocess("inception_v3"), size=299,
             unfreeze={"mixed9": "after:mixed8", "mixed8": "after:mixed7"},
             default_unfreeze="mixed9",
             weight_file=_fixed("inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"),
             md5="bcbd6486424b2319ff4ef7d526e38f63", min_size=75, top1=77.9, gmacs=5.7),
        # block12 starts at layer 106, the block boundary nearest the "unfreeze after
        # layer 108" of the classic Keras fine-tuning recipe
        _row("xception", _app("Xception"), _preprocess("xception"), size=299,
             unfreeze={"block12": "block12_sepconv1_act", "block13": "block13_sepconv1_act"},
             default_unfreeze="block12",
             weight_file=_fixed("xception_weights_tf_dim_ordering_tf_kernels_notop.h5"),
             md5="b0042744bf5b25fce3cb969f33bebb97", min_size=71, top1=79.0, gmacs=8.4),
        _row("inception_resnet_v2", _app("InceptionResNetV2"),
             _preprocess("inception_resnet_v2"), size=299,
             unfreeze={"block8_10": "after:block8_9_ac", "block8_1": "after:mixed_7a"},
             default_unfreeze="block8_10",
             weight_file=_fixed(
                 "inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5"),
             md5="d19885ff4a710c122648d3b5c3b684e4", min_size=75, top1=80.3, gmacs=13.2),
        *[_row(f"mobilenet_{tag}", _mobilenet(alpha), _preprocess("mobilenet"),
               unfreeze=_MOBILENET_POINTS, default_unfreeze="block9",
               weight_file=_mobilenet_file(text), top1=top1, gmacs=gmacs, family="mobilenet",
               lite=True)
          for tag, alpha, text, top1, gmacs in (
              ("025", 0.25, "2_5", 50.6, 0.041), ("050", 0.5, "5_0", 63.7, 0.149),
              ("075", 0.75, "7_5", 68.4, 0.325), ("100", 1.0, "1_0", 70.4, 0.569))],
        _row("mobilenet_v2", _app("MobileNetV2"), _preprocess("mobilenet_v2"),
             unfreeze={"block_16": "block_16_expand", "block_13": "block_13_expand"},
             default_unfreeze="block_13", weight_file=_mobilenet_v2_file, top1=71.3,
             gmacs=0.30, lite=True),
        _row("efficientnet_b0", _app("EfficientNetB0"), _identity,
             unfreeze={"block7a": "block7a_expand_conv", "block6a": "block6a_expand_conv"},
             default_unfreeze="block6a", weight_file=_fixed("efficientnetb0_notop.h5"),
             md5="50bc09e76180e00e4465e1a485ddc09d", top1=77.1, gmacs=0.39,
             family="efficientnet", lite=True),
        _row("densenet121", _app("DenseNet121"), _preprocess("densenet"),
             unfreeze={"conv5": "after:pool4_pool", "conv4": "after:pool3_pool"},
             default_unfreeze="conv5",
             weight_file=_fixed("densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"),
             md5="30ee3e1110167f948a6b9946edeeb738", top1=75.0, gmacs=2.9),
        # the modern keras.applications families (preprocessing inside the model: 0..255 in)
        *[_row(f"efficientnetv2_{tag}", _app_kw(f"EfficientNetV2{tag.upper()}"), _identity,
               size=size, unfreeze=_EFFICIENTNET_V2_POINTS, default_unfreeze="block6a",
               weight_file=_fixed(f"efficientnetv2-{tag}_notop.h5"), md5=md5, top1=top1,
               gmacs=gmacs, family="efficientnetv2", lite=lite)
          for tag, size, md5, top1, gmacs, lite in (
              ("b0", 224, "893217f2bb855e2983157299931e43ff", 78.7, 0.72, True),
              ("b1", 240, "0e80663031ca32d657f9caa404b6ec37", 79.8, 1.2, True),
              ("b2", 260, "1dfe2e7a5d45b6632553a8961ea609eb", 80.5, 1.7, True),
              ("b3", 300, "f6abf7b5849ac99a89b50dd3fd532856", 82.0, 3.0, False),
              ("s", 384, "af0682fb74e8c54910f2d4393339c070", 83.9, 8.8, False))],
        *[_row(f"convnext_{tag}", _app_kw(f"ConvNeXt{tag.title()}"), _identity,
               unfreeze=_convnext_points(f"convnext_{tag}"), default_unfreeze="stage3",
               weight_file=_fixed(f"convnext_{tag}_notop.h5"), md5=sha, top1=top1,
               gmacs=gmacs, family="convnext", lite=True)
          for tag, sha, top1, gmacs in (
              ("tiny", "d547c096cabd03329d7be5562c5e14798aa39ed24b474157cef5e85ab9e49ef1",
               81.3, 4.5),
              ("small", "6fc8009faa2f00c1c1dfce59feea9b0745eb260a7dd11bee65c8e20843da6eab",
               82.3, 8.7))],
        *[_row(f"resnet{depth}v2", _app(f"ResNet{depth}V2"), _preprocess("resnet_v2"),
               unfreeze={"conv5": "conv5_block1_preact_bn", "conv4": "conv4_block1_preact_bn"},
               default_unfreeze="conv5",
               weight_file=_fixed(f"resnet{depth}v2_weights_tf_dim_ordering_tf_kernels_notop.h5"),
               md5=md5, top1=top1, gmacs=gmacs, family="resnetv2")
          for depth, md5, top1, gmacs in (
              ("50", "fac2f116257151a9d068a22e544a4917", 76.0, 4.1),
              ("101", "c0ed64b8031c3730f411d2eb4eea35b5", 77.2, 7.8))],
        _row("mobilenet_v3_large", _app("MobileNetV3Large"), _identity,
             unfreeze={"block12": "expanded_conv_12_expand", "block6": "expanded_conv_6_expand"},
             default_unfreeze="block12",
             weight_file=_fixed("weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5"),
             md5="07fb09a5933dd0c8eaafa16978110389", top1=75.6, gmacs=0.22,
             family="mobilenet_v3", lite=True),
        _row("mobilenet_v3_small", _app("MobileNetV3Small"), _identity,
             unfreeze={"block8": "expanded_conv_8_expand", "block4": "expanded_conv_4_expand"},
             default_unfreeze="block8",
             weight_file=_fixed("weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5"),
             md5="d3e8ec802a04aa4fc771ee12a9a9b836", top1=68.1, gmacs=0.056,
             family="mobilenet_v3", lite=True),
        _row("small_cnn", small_cnn, _identity, size=64,
             unfreeze={"block3": "block3_conv1", "block2": "block2_conv1"}, min_size=16,
             gmacs=0.155, upsample=1, amx_bfloat16=True),
    ]
}


def get_backbone(name: str) -> Backbone:
    """The registered backbone of `name`, or CompError listing the known names.

    `name` may be a variant `<backbone>-<tag>` (e.g. `mobilenet_025-block12`): the same
    backbone, with its own settings in `backbone_overrides.<backbone>-<tag>`.
    """
    from comp.errors import CompError

    name = name.split("-", 1)[0]
    if name not in BACKBONES:
        raise CompError(
            f"config: unknown backbone {name!r}; choose from {', '.join(sorted(BACKBONES))}"
        )
    return BACKBONES[name]
