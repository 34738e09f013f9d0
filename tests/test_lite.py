"""Frozen passes through TFLite (comp.training.lite): the same numbers as Keras, for
every view and batch size, and Keras where TFLite cannot run the network."""

import numpy as np
import pytest

from comp.data.views import DIHEDRAL, dihedral_view


def _network(size=24, channels=3):
    """A small frozen network with a batch norm that folds into its convolution (random
    statistics, so a folding that went wrong would show)."""
    import keras

    inputs = keras.Input((size, size, channels))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(inputs)
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    norm = keras.layers.BatchNormalization()
    x = keras.layers.ReLU(6.0)(norm(x))
    model = keras.Model(inputs, keras.layers.Conv2D(4, 1)(x))
    rng = np.random.default_rng(7)
    gamma, beta, mean, variance = norm.get_weights()
    norm.set_weights([rng.uniform(0.5, 2.0, gamma.shape), rng.normal(0, 0.5, beta.shape),
                      rng.normal(0, 0.5, mean.shape), rng.uniform(0.5, 2.0, variance.shape)])
    return model


def _preprocess(x):
    return x / 127.5 - 1.0


def _keras_outputs(model, batch, view):
    return model.predict_on_batch(_preprocess(dihedral_view(batch, view).astype(np.float32)))


@pytest.mark.parametrize("threads", [1, 3])
def test_lite_pass_gives_keras_numbers_for_every_view_and_batch_size(threads):
    """One interpreter, or three side by side (each its share of the chunks)."""
    from comp.training.lite import LITE_ROWS, lite_forward

    model = _network()
    forward = lite_forward(model, _preprocess, "float32", threads)
    assert forward is not None
    images = np.random.default_rng(0).integers(0, 256, (2 * LITE_ROWS + 1, 24, 24, 3),
                                               dtype=np.uint8)
    for view in DIHEDRAL:
        for count in (len(images), 1, LITE_ROWS):  # short chunks are padded
            got = forward(images[:count], view)
            expected = _keras_outputs(model, images[:count], view)
            assert got.shape == expected.shape and got.dtype == np.float32
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4,
                                       err_msg=f"view {view}, {count} images")
    assert forward(images[:0], 0).shape == (0, 12, 12, 4)
    half = lite_forward(model, _preprocess, "float16", 2)(images, 3)
    assert half.dtype == np.float16
    np.testing.assert_allclose(half, _keras_outputs(model, images, 3), rtol=2e-3, atol=2e-3)


def test_keras_runs_what_tflite_cannot(tmp_path, monkeypatch, comp_caplog):
    """No interpreter, or outputs that disagree with Keras on the probe batch: None from
    lite_forward (the second with its reason in one line), and frozen_forward runs the
    network in TensorFlow with the same numbers."""
    import comp.training.lite as lite
    from comp.training.features import frozen_forward

    model = _network()
    monkeypatch.setattr(lite, "_interpreter_class", lambda: None)
    assert lite.lite_forward(model, _preprocess, "float32", 1) is None
    monkeypatch.undo()
    monkeypatch.setattr(lite, "PROBE_TOLERANCE", -1.0)  # no difference passes
    assert lite.lite_forward(model, _preprocess, "float32", 1, tmp_path) is None
    assert any("TensorFlow runs it, not TFLite: its outputs differ from Keras's" in r.message
               for r in comp_caplog.records)
    # remembered: a later pass neither converts nor probes again
    assert [p.suffix for p in tmp_path.iterdir()] == [".tensorflow"]
    monkeypatch.setattr(lite, "_converted", lambda *args: pytest.fail("converted again"))
    assert lite.lite_forward(model, _preprocess, "float32", 1, tmp_path) is None
    images = np.random.default_rng(1).integers(0, 256, (3, 24, 24, 3), dtype=np.uint8)
    np.testing.assert_allclose(frozen_forward(model, _preprocess, "float32", None)(images, 6),
                               _keras_outputs(model, images, 6), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("gpus,backbone,lite_used", [(0, "mobilenet_025", True),
                                                     (1, "mobilenet_025", False),
                                                     (0, "resnet50", False)])
def test_tflite_runs_frozen_passes_on_a_cpu_for_backbones_it_speeds_up(
        tmp_path, monkeypatch, gpus, backbone, lite_used):
    """lite_folder gives the cache folder on a machine without a GPU for a backbone
    marked `lite` (MobileNet), None with a GPU or for a backbone TFLite does not speed up
    (ResNet50); frozen_forward then converts (on the worker's threads) or runs Keras,
    with the same numbers either way."""
    import comp.training.compute as compute
    import comp.training.lite as lite
    from comp.models.registry import get_backbone
    from comp.training.features import frozen_forward

    monkeypatch.setattr(compute, "visible_gpus", lambda: gpus)
    folder = lite.lite_folder(get_backbone(backbone), tmp_path)
    assert folder == (tmp_path if lite_used else None)
    assert lite.lite_folder(get_backbone(backbone), None) is None  # nothing may be written
    calls = []
    real = lite.lite_forward
    monkeypatch.setattr(lite, "lite_forward",
                        lambda *args: calls.append(args[3]) or real(*args))
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "1")  # a worker's share of the cores
    model = _network(16, 1)
    images = np.random.default_rng(2).integers(0, 256, (5, 16, 16, 1), dtype=np.uint8)
    got = frozen_forward(model, _preprocess, "float32", folder)(images, 5)
    assert calls == ([1] if lite_used else [])
    assert len(list(tmp_path.iterdir())) == (1 if lite_used else 0)
    np.testing.assert_allclose(got, _keras_outputs(model, images, 5), rtol=1e-4, atol=1e-4)


def test_process_threads_follow_the_workers_share(monkeypatch):
    import os

    from comp.training.lite import process_threads

    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "3")
    assert process_threads() == 3
    monkeypatch.delenv("TF_NUM_INTRAOP_THREADS")
    assert process_threads() == len(os.sched_getaffinity(0))


def test_a_converted_network_is_kept_and_read_back(tmp_path, monkeypatch):
    """With a cache folder the converted network is written once, under a key of its
    weights as built; a second pass reads it back without converting or folding its
    batch norms (a converter and a folding that fail prove it) and gives the same
    numbers; other weights get a file of their own."""
    import comp.models.build as build
    import comp.training.lite as lite

    model = _network()
    images = np.random.default_rng(3).integers(0, 256, (5, 24, 24, 3), dtype=np.uint8)
    first = lite.lite_forward(model, _preprocess, "float32", 1, tmp_path)(images, 2)
    assert [p.suffix for p in tmp_path.iterdir()] == [".tflite"]

    def no_conversion(*args):
        raise AssertionError("converted again")

    monkeypatch.setattr(lite, "_converted", no_conversion)
    monkeypatch.setattr(build, "fold_batch_norms", no_conversion)
    again = lite.lite_forward(model, _preprocess, "float32", 1, tmp_path)(images, 2)
    np.testing.assert_array_equal(again, first)
    monkeypatch.undo()
    other = _network()  # other random weights
    assert lite.network_key(other, _preprocess) != lite.network_key(model, _preprocess)
    lite.lite_forward(other, _preprocess, "float32", 1, tmp_path)
    assert len(list(tmp_path.iterdir())) == 2
    # float16 outputs are cast inside the converted network: a file of their own
    half = lite.lite_forward(model, _preprocess, "float16", 1, tmp_path)(images, 2)
    assert half.dtype == np.float16 and len(list(tmp_path.iterdir())) == 3
    np.testing.assert_array_equal(half, first.astype(np.float16))
