"""augment.choose_views: an inner CV of a unit's training rows decides whether the
flip/rotation views help (pure functions; the end-to-end path is in test_predict)."""

import numpy as np

from comp.data.views import DIHEDRAL, dihedral_view
from comp.training.viewchoice import ALL, IDENTITY, choose_views, probe_descriptors


def _views(images: np.ndarray) -> np.ndarray:
    return np.stack([dihedral_view(images, v) for v in DIHEDRAL])


def _images(labels: np.ndarray, oriented: bool, seed: int = 0) -> np.ndarray:
    """16 px noise; class 0/1 by a bright bar at the top or bottom (oriented: a flip
    turns one class into the other) or by a bright or dark image (any view keeps it)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, (len(labels), 16, 16, 3)).astype(np.uint8)
    for i, label in enumerate(labels):
        if oriented:
            images[i, (0 if label == 0 else 12):(4 if label == 0 else 16)] += 150
        else:
            images[i] += np.uint8(100 * label)
    return images


def test_descriptors_keep_the_layout():
    images = _images(np.array([0, 1]), oriented=True)
    descriptors = probe_descriptors(_views(images))
    assert descriptors.shape == (8, 2, 8 * 8 * 3)
    assert not np.allclose(descriptors[0], descriptors[2])  # a half turn moves the bar
    wide = probe_descriptors(np.ones((8, 2, 6, 6, 32), np.float16))
    assert wide.shape == (8, 2, 2 * 2 * 32)


def test_orientation_labels_keep_the_image_alone_and_invariant_ones_all_views():
    labels = np.repeat([0, 1], 30)
    oriented = probe_descriptors(_views(_images(labels, oriented=True)))
    invariant = probe_descriptors(_views(_images(labels, oriented=False)))
    views = list(range(8))
    assert choose_views(oriented, views, views, labels, None, seed=0) == IDENTITY
    assert choose_views(invariant, views, views, labels, None, seed=0) == ALL
    # one training view: nothing to choose
    assert choose_views(oriented, [0], [0], labels, None, seed=0) == ALL
