"""Registry, weight resolution and cutting backbones into prefix + trainable body."""

import functools
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from comp.config import DEMO_DIR, AugmentSettings, ModelSettings
from comp.errors import CompError
from comp.models.build import build_backbone, create_head, split_backbone
from comp.models.registry import BACKBONES, get_backbone
from comp.models.weights import ResolvedWeights, resolve_weights

DEMO_WEIGHTS = DEMO_DIR / "weights"
RANDOM = ResolvedWeights(None, "random-init")


@functools.cache
def _random_base(name: str, size: int):
    """A random-init backbone, built once per module (cutting it changes nothing in it)."""
    return build_backbone(get_backbone(name), size, RANDOM, 0)


def test_registry_has_the_promised_backbones():
    expected = {"vgg16", "vgg19", "resnet50", "inception_v3", "xception",
                "inception_resnet_v2", "mobilenet_025", "mobilenet_050", "mobilenet_075",
                "mobilenet_100", "mobilenet_v2", "efficientnet_b0", "densenet121", "small_cnn"}
    assert expected <= set(BACKBONES)


def test_imagenet_weights_found_in_weights_dir_and_keras_cache(tmp_path, monkeypatch):
    mobilenet = get_backbone("mobilenet_025")
    found = resolve_weights(mobilenet, 128, "imagenet", str(DEMO_WEIGHTS))
    assert found.path.name == "mobilenet_2_5_224_tf_no_top.h5"
    assert found.identity.startswith("sha256:dbdb03ee2a22fd89")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    (tmp_path / "keras" / "models").mkdir(parents=True)
    shutil.copy(found.path, tmp_path / "keras" / "models")
    found = resolve_weights(mobilenet, 224, "imagenet", None)
    assert found.path.parent == tmp_path / "keras" / "models"


def test_missing_imagenet_file_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr("comp.models.weights._download", lambda backbone, name: None)
    with pytest.raises(CompError) as info:
        resolve_weights(get_backbone("vgg16"), 224, "imagenet", str(tmp_path))
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in str(info.value)
    assert "weights_dir" in str(info.value)


def test_the_search_order_names_each_folder_once(tmp_path, monkeypatch):
    """The demo's weights_dir is the bundled folder: the missing file's line listed it
    twice ("comp/demo/weights, then ~/.keras/models, then comp/demo/weights")."""
    from comp.models.weights import bundled_weights_dir, keras_cache_dir, search_folders

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    assert search_folders(str(bundled_weights_dir())) == [bundled_weights_dir(),
                                                           keras_cache_dir()]
    assert search_folders(str(tmp_path / "w")) == [tmp_path / "w", keras_cache_dir(),
                                                   bundled_weights_dir()]
    assert search_folders(None) == [keras_cache_dir(), bundled_weights_dir()]


def test_damaged_file_fails_its_md5(tmp_path):
    (tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5").write_bytes(b"junk")
    with pytest.raises(CompError, match="md5"):
        resolve_weights(get_backbone("vgg16"), 224, "imagenet", str(tmp_path))


def test_weight_path_and_none(tmp_path):
    with pytest.raises(CompError, match="file not found"):
        resolve_weights(get_backbone("mobilenet_025"), 64, str(tmp_path / "x.h5"), None)
    assert resolve_weights(get_backbone("mobilenet_025"), 64, "none", None).path is None
    assert resolve_weights(get_backbone("small_cnn"), 64, "imagenet", None).path is None


def test_real_weights_load_and_split_matches_the_whole_network():
    backbone = get_backbone("mobilenet_025")
    weights = resolve_weights(backbone, 64, "imagenet", str(DEMO_WEIGHTS))
    base = build_backbone(backbone, 64, weights, seed=0)
    split = split_backbone(base, backbone, "block12")
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    x = backbone.preprocess(pixels)
    whole = base(x, training=False)
    parts = split.body(split.prefix(x, training=False), training=False)
    assert np.allclose(whole, parts, atol=1e-5)
    assert not np.allclose(whole, build_backbone(backbone, 64, RANDOM, 0)(x, training=False))


@pytest.mark.parametrize("spec, label", [
    ("all", "all"), ("none", "none"), ("block9", "after:conv_pw_8_relu"),
    ("0.9", re.compile(r"@(\d+)$")), ("conv_dw_13", "conv_dw_13@"), ("80", "@80"),
])
def test_unfreeze_forms(spec, label):
    backbone, base = get_backbone("mobilenet_025"), _random_base("mobilenet_025", 32)
    split = split_backbone(base, backbone, spec)
    if isinstance(label, str):
        assert label in split.cut
    else:  # a depth fraction: the first clean cut at or after 90% of the layers
        index = int(label.search(split.cut).group(1))
        assert round(0.9 * len(base.layers)) <= index < len(base.layers)
    spec = SimpleNamespace(model=ModelSettings(pooling="max", dense_units=8, dropout=0.2),
                           augment=AugmentSettings(online_shift=0.1), backbone="mobilenet_025")
    model = create_head(split, spec, 3, 0)
    assert model.output_shape == (None, 3)
    # online augmentation only where the model trains from the image itself, and never
    # in the prediction graph
    assert ("online_shift" in [layer.name for layer in model.layers]) == (split.prefix is None)
    plain = create_head(split, spec, 3, 0, online=False)
    assert "online_shift" not in [layer.name for layer in plain.layers]
    assert len(plain.weights) == len(model.weights)  # the same weights load into both


def test_online_randaugment_sees_the_backbones_value_range_in_training_only():
    from comp.models.build import input_range, online_augmentation

    assert input_range("mobilenet_025") == (-1.0, 1.0)
    assert input_range("small_cnn") == (0.0, 255.0)
    (layer,) = online_augmentation(AugmentSettings(online_randaugment=0.5), 0, (-1.0, 1.0))
    assert tuple(layer.value_range) == (-1.0, 1.0)
    images = np.random.default_rng(0).uniform(-1, 1, (8, 16, 16, 3)).astype("float32")
    trained = np.asarray(layer(images, training=True))
    assert not np.allclose(trained, images)
    assert trained.min() >= -1.0 - 1e-5 and trained.max() <= 1.0 + 1e-5
    np.testing.assert_array_equal(np.asarray(layer(images, training=False)), images)


def test_the_same_seed_builds_the_same_model_and_leaves_global_seeds_alone():
    """A random backbone and its head are the same for the same seed (whatever the
    process's seeds), differ for another seed, and building them changes no global
    random state of the caller (Python's, NumPy's)."""
    import random

    import tensorflow as tf

    backbone = get_backbone("small_cnn")
    spec = SimpleNamespace(model=ModelSettings(pooling="avg", dense_units=8, dropout=0.2),
                           augment=AugmentSettings(), backbone="small_cnn")

    def weights(seed: int) -> list:
        base = build_backbone(backbone, 32, RANDOM, seed)
        head = create_head(split_backbone(base, backbone, "all"), spec, 3, seed)
        return [w.numpy() if hasattr(w, "numpy") else np.asarray(w) for w in head.weights]

    random.seed(1), np.random.seed(1)
    python, legacy = random.getstate(), np.random.get_state()[1].copy()
    first = weights(7)
    assert random.getstate() == python  # the caller's draws go on as before
    assert np.array_equal(np.random.get_state()[1], legacy)
    random.seed(2), np.random.seed(2), tf.random.set_seed(2)  # other global seeds
    try:
        again = weights(7)
    finally:
        tf.random.set_seed(None)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    other = weights(8)
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_bad_unfreeze_points_are_clear():
    backbone = get_backbone("resnet50")
    base = _random_base("resnet50", 32)
    with pytest.raises(CompError, match="has no layer 'nope'"):
        split_backbone(base, backbone, "nope")
    with pytest.raises(CompError, match="does not cut"):
        split_backbone(base, backbone, "conv5_block1_3_conv")
    split = split_backbone(base, backbone, "conv5")
    assert split.cut == "after:conv4_block6_out"


# 1.7-40 s each to build here (half-speed day): their cut points are checked in the slow run
LARGE = {"inception_resnet_v2", "inception_v3", "densenet121", "convnext_tiny", "convnext_small",
         "efficientnet_b0", "efficientnetv2_b0", "efficientnetv2_b1", "efficientnetv2_b2",
         "efficientnetv2_b3", "efficientnetv2_s", "mobilenet_v3_large", "resnet50v2",
         "resnet101v2", "xception"}


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=[pytest.mark.slow] if name in LARGE else [])
    for name in sorted(set(BACKBONES) - {"small_cnn"})])
def test_every_named_unfreeze_point_cuts_cleanly(name):
    backbone = get_backbone(name)
    base = _random_base(name, max(backbone.min_size, 32))
    cuts = set()
    for point, target in backbone.unfreeze_points.items():
        split = split_backbone(base, backbone, point)
        assert target.removeprefix("after:") in split.cut, (point, split.cut)
        # prefix feeds body, body ends where the backbone ends, and no weight is lost or
        # counted twice
        assert tuple(split.prefix.output.shape[1:]) == split.feature_shape, point
        assert tuple(split.body.input.shape[1:]) == split.feature_shape, point
        assert split.body.output.shape == base.output.shape, point
        assert split.body.count_params() > 0, point
        assert split.prefix.count_params() + split.body.count_params() == base.count_params()
        cuts.add(split.cut)
        # TFLite's conversion (1.4-15 s) in the fast run for MobileNet 0.25 alone
        _check_frozen_pass(backbone, split, lite=point == backbone.default_unfreeze and (
            name in LARGE or name == "mobilenet_025"))
        if point == backbone.default_unfreeze:
            _check_trained_body(split)
    assert len(cuts) == len(backbone.unfreeze_points)  # every named point cuts elsewhere
    assert backbone.default_unfreeze in backbone.unfreeze_points


def _check_trained_body(split):
    """The body the fit trains (`for_training`) is the body's function with its batch
    norms fused, the same weights."""
    import keras

    from comp.models.build import for_training, fused_batch_norm_class

    trained = for_training(split).body
    norms = [layer for layer in _all_layers(split.body)
             if isinstance(layer, keras.layers.BatchNormalization)]
    fused = [layer for layer in _all_layers(trained)
             if isinstance(layer, fused_batch_norm_class())]
    assert len(fused) == len([n for n in norms if _in_functional(split.body, n)])
    assert trained.count_params() == split.body.count_params()
    x = np.random.default_rng(0).uniform(0, 2, (2, *split.feature_shape)).astype("float32")
    np.testing.assert_allclose(trained(x).numpy(), split.body(x).numpy(), rtol=1e-3, atol=1e-3)


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


def _in_functional(model, layer) -> bool:
    """Whether `layer` sits in `model`'s functional graphs (not inside a Sequential block,
    which the swap keeps as it is)."""
    if not hasattr(model, "_nodes_by_depth"):
        return False
    return any(inner is layer or (hasattr(inner, "layers") and _in_functional(inner, layer))
               for inner in model.layers)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(name for name, backbone in BACKBONES.items()
                                        if backbone.lite and name not in LARGE
                                        and name != "mobilenet_025"))
def test_small_backbones_frozen_pass_through_tflite(name):
    backbone = get_backbone(name)
    base = _random_base(name, max(backbone.min_size, 32))
    _check_frozen_pass(backbone, split_backbone(base, backbone, None), lite=True)


def _check_frozen_pass(backbone, split, lite: bool) -> None:
    """The feature pass's encoder (the prefix's batch norms folded, comp.models.build;
    TFLite where the backbone is marked for it, at its default cut) gives the prefix's
    own outputs: before, ConvNeXt's Sequential stem stopped the folding with an
    AttributeError, so its features could not be computed at all."""
    import tempfile

    from comp.training.features import Encoder

    size = split.prefix.input_shape[1]
    images = np.random.default_rng(0).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
    # an eager call: no trace of its own (predict_on_batch traced one a cut, ~0.7 s)
    expected = np.asarray(split.prefix(backbone.preprocess(images.astype("float32")),
                                       training=False))
    with tempfile.TemporaryDirectory() as folder:
        lite_cache = Path(folder) if lite and backbone.lite else None
        got = Encoder(split.prefix, backbone.preprocess, lite_cache).outputs(images, 0)
        assert (lite_cache is None) or any(lite_cache.iterdir()), backbone.name  # converted
    np.testing.assert_allclose(got.astype("float32"), expected, rtol=1e-2,
                               atol=1e-2 * max(1.0, float(np.abs(expected).max())),
                               err_msg=backbone.name)


def _randomise_batch_norms(model, rng) -> None:
    """Statistics far from the identity, so that folding them shows."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0, 0.3, n))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, n))
            layer.gamma.assign(rng.uniform(0.5, 1.5, n))
            layer.beta.assign(rng.normal(0, 0.3, n))


def test_a_residual_block_folds_what_it_can():
    """ResNet's arrangement in small: convolutions with and without bias, a depthwise one,
    two branches meeting in an Add, and a batch norm that is the model's output (kept:
    its input is read by nothing else, but an output is not folded into)."""
    import keras

    from comp.models.build import fold_batch_norms

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(6, 3, padding="same", use_bias=True, name="c1")(inputs)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization(name="b1")(x))
    x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="d2")(x)
    x = keras.layers.BatchNormalization(name="b2")(x)
    shortcut = keras.layers.BatchNormalization(name="bs")(
        keras.layers.Conv2D(6, 1, use_bias=False, name="cs")(inputs))
    x = keras.layers.Add()([x, shortcut])
    out = keras.layers.BatchNormalization(name="b3")(keras.layers.ReLU()(x))
    model = keras.Model(inputs, out)
    _randomise_batch_norms(model, np.random.default_rng(2))
    folded = fold_batch_norms(model)
    kept = {layer.name for layer in folded.layers
            if isinstance(layer, keras.layers.BatchNormalization)}
    assert kept == {"b3"}  # b1, b2 and bs folded into c1, d2 and cs
    x = np.random.default_rng(3).normal(size=(2, 8, 8, 3)).astype("float32")
    expected = np.asarray(model(x, training=False))
    np.testing.assert_allclose(np.asarray(folded(x, training=False)), expected,
                               atol=1e-5 * np.abs(expected).max())


def test_folded_batch_norms_give_the_prefix_outputs():

    from comp.models.build import fold_batch_norms

    backbone = get_backbone("mobilenet_025")
    base = build_backbone(backbone, 32, RANDOM, 0)  # its own: the statistics are changed
    prefix = split_backbone(base, backbone, None).prefix
    rng = np.random.default_rng(0)
    _randomise_batch_norms(prefix, rng)
    folded = fold_batch_norms(prefix)
    kinds = [type(layer).__name__ for layer in folded.layers]
    assert "BatchNormalization" not in kinds and "Folded" in kinds
    x = backbone.preprocess(rng.uniform(0, 255, (3, 32, 32, 3)).astype("float32"))
    expected = np.asarray(prefix(x, training=False))
    np.testing.assert_allclose(np.asarray(folded(x, training=False)), expected,
                               atol=1e-4 * np.abs(expected).max())
    assert fold_batch_norms(folded) is folded  # nothing left to fold


def test_a_heads_trained_body_folds_too():
    import keras

    from comp.models.build import fold_batch_norms, refold_batch_norms

    backbone = get_backbone("mobilenet_025")
    split = split_backbone(build_backbone(backbone, 32, RANDOM, 0), backbone, None)
    spec = SimpleNamespace(model=ModelSettings(pooling="avg", dense_units=0, dropout=0.2),
                           augment=AugmentSettings(), backbone="mobilenet_025")
    head = create_head(split, spec, 3, 0, online=False)
    rng = np.random.default_rng(1)
    for layer in split.body.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0, 0.3, n))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, n))
    folded = fold_batch_norms(head)
    body = next(layer for layer in folded.layers if isinstance(layer, keras.Model))
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in body.layers)
    x = rng.normal(size=(4, *split.feature_shape)).astype("float32")
    np.testing.assert_allclose(folded(x, training=False), head(x, training=False), atol=1e-5)
    # another fold's weights (statistics, kernels, classifier) reach the same folded copy
    before = np.asarray(folded(x, training=False))
    head.set_weights([w + rng.normal(0, 0.2, w.shape).astype(w.dtype) if w.ndim > 1
                      else w * rng.uniform(0.8, 1.25, w.shape).astype(w.dtype)
                      for w in head.get_weights()])
    refold_batch_norms(head, folded)
    after = np.asarray(folded(x, training=False))
    assert np.abs(after - before).max() > 1e-3
    np.testing.assert_allclose(after, head(x, training=False), atol=1e-5)


def test_a_convolution_read_elsewhere_is_not_folded():
    import keras

    from comp.models.build import fold_batch_norms

    inputs = keras.Input((8, 8, 3))
    conv = keras.layers.Conv2D(4, 3, use_bias=False, name="conv")(inputs)
    normed = keras.layers.BatchNormalization(name="bn")(conv)
    model = keras.Model(inputs, keras.layers.Concatenate()([conv, normed]))
    assert fold_batch_norms(model) is model  # the raw convolution output is an output too


def test_a_sequential_block_inside_is_kept_as_it_is():
    """ConvNeXt holds Sequential blocks (its stem), which have no functional graph to
    fold: the block is kept whole, the batch norms around it still fold, and the outputs
    are the model's (before: AttributeError '_nodes_by_depth' on every ConvNeXt pass)."""
    import keras

    from comp.models.build import fold_batch_norms

    stem = keras.Sequential([keras.layers.Conv2D(4, 2, strides=2),
                             keras.layers.LayerNormalization()], name="stem")
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name="conv")(stem(inputs))
    model = keras.Model(inputs, keras.layers.BatchNormalization(name="bn")(
        keras.layers.ReLU()(keras.layers.BatchNormalization(name="b0")(x))))
    _randomise_batch_norms(model, np.random.default_rng(4))
    folded = fold_batch_norms(model)
    assert folded.get_layer("stem") is stem
    assert {type(layer).__name__ for layer in folded.layers} >= {"Folded", "Sequential"}
    x = np.random.default_rng(5).normal(size=(2, 8, 8, 3)).astype("float32")
    expected = np.asarray(model(x, training=False))
    np.testing.assert_allclose(np.asarray(folded(x, training=False)), expected,
                               atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_fused_batch_norm_matches_keras_and_loads_its_weights(policy, tmp_path):
    import keras
    import tensorflow as tf

    from comp.models.build import fused_batch_norm_class, fused_batch_norms

    fused_class = fused_batch_norm_class()
    x = tf.constant(np.random.default_rng(0).normal(1.0, 3.0, (6, 5, 5, 4)), "float32")
    grad_weights = tf.range(4, dtype="float32")
    results = []
    for kind in (keras.layers.BatchNormalization, fused_class):
        layer = kind(momentum=0.9, dtype=policy)
        layer.build(x.shape)
        layer.gamma.assign([0.5, 1.0, 1.5, 2.0])
        layer.beta.assign([0.1, 0.2, 0.3, 0.4])
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(tf.cast(y, "float32") ** 2 * grad_weights)
        grads = tape.gradient(loss, [x, layer.gamma, layer.beta])
        results.append([tf.cast(t, "float32").numpy() for t in (y, *grads, layer(x))]
                       + [layer.moving_mean.numpy(), layer.moving_variance.numpy()])
        assert y.dtype == layer.compute_dtype
    tolerance = 1e-4 if policy == "float32" else 2e-2
    for keras_result, fused_result in zip(*results, strict=True):
        scale = max(1.0, float(np.abs(keras_result).max()))
        assert np.abs(keras_result - fused_result).max() <= tolerance * scale
    # the moving variance takes the batch's plain variance, as Keras's layer does
    seen = tf.cast(tf.cast(x, layer.compute_dtype), "float64")  # what the layer read
    plain = seen.numpy().reshape(-1, 4).var(axis=0)
    np.testing.assert_allclose(results[1][-1], 0.9 + 0.1 * plain, rtol=1e-4)

    # a nested body's Keras layers swapped for fused ones, the weights kept
    inputs = keras.Input((5, 5, 4))
    body = keras.Model(inputs, keras.layers.BatchNormalization(name="bn")(
        keras.layers.Conv2D(4, 1)(inputs)))
    outer_in = keras.Input((5, 5, 4))
    model = keras.Model(outer_in, keras.layers.Dense(2)(body(outer_in)))
    model.get_layer(body.name).get_layer("bn").moving_mean.assign([1.0, 2.0, 3.0, 4.0])
    copy = fused_batch_norms(model)
    assert type(copy.get_layer(body.name).get_layer("bn")) is fused_class
    np.testing.assert_allclose(copy(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-5)
    assert fused_batch_norms(copy) is copy
    # weights saved with either layer load into the other (Keras names them by class)
    copy.get_layer(body.name).get_layer("bn").moving_mean.assign([4.0, 3.0, 2.0, 1.0])
    copy.save_weights(tmp_path / "fused.weights.h5")
    model.load_weights(tmp_path / "fused.weights.h5")
    np.testing.assert_allclose(model.get_layer(body.name).get_layer("bn").moving_mean.numpy(),
                               [4.0, 3.0, 2.0, 1.0])
    model.save_weights(tmp_path / "plain.weights.h5")
    fused_batch_norms(model).load_weights(tmp_path / "plain.weights.h5")
