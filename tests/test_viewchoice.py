"""augment.choose_views: an inner CV of a unit's training rows decides whether the
flip/rotation views help (pure functions; the end-to-end path is in test_predict)."""

import numpy as np

from comp.config import AugmentSettings, TrainSettings
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
    arms = {ALL: (views, views), IDENTITY: ([0], [0])}
    assert choose_views(oriented, arms, labels, None, seed=0) == IDENTITY
    assert choose_views(invariant, arms, labels, None, seed=0) == ALL
    # one training view: nothing to choose
    same = {ALL: ([0], [0]), IDENTITY: ([0], [0])}
    assert choose_views(oriented, same, labels, None, seed=0) == ALL


def test_random_views_keep_the_orientation_and_follow_their_strengths():
    from comp.data.views import Jitter, random_views

    images = _images(np.repeat([0, 1], 4), oriented=True)  # a bright bar at top or bottom
    for jitter in (Jitter(), Jitter(shift=0.1, rotation=0.03, zoom=0.1, brightness=0.1,
                                    contrast=0.1)):
        for view in random_views(images, 3, jitter, seed=0):
            top = view[:, :4].mean(axis=(1, 2, 3))
            bottom = view[:, 12:].mean(axis=(1, 2, 3))
            # no flip or half turn: the bar stays where it was
            assert ((top > bottom) == (np.arange(8) < 4)).all()
    plain = random_views(images, 1, Jitter(), seed=0)[0]
    assert (plain == images).all()  # no strength: the image as it is
    moved = random_views(images, 1, Jitter(shift=0.2), seed=0)[0]
    assert not (moved == images).all()
    augment = AugmentSettings(shift=0.1, rotation=0.05, zoom=0.0, brightness=0.0, contrast=0.0)
    assert Jitter.of(augment) == Jitter(0.1, 0.05)
    assert Jitter.of(None) == Jitter()


def test_a_unit_decides_its_views_once_for_the_same_features_and_rows(tmp_path, monkeypatch):
    """A pseudo-label round's unit asks the same question of the same cached features and
    rows as round 0's: the decision is read back from the run's cache, not probed again;
    other rows (another fold) are probed."""
    from types import SimpleNamespace

    from comp.training import trainer
    from comp.training.features import ViewPlan

    labels = np.repeat([0, 1], 30)
    features = _views(_images(labels, oriented=True))
    augment = AugmentSettings(dihedral=True, tta="dihedral", random_views=0, choose_views=True)
    featured = SimpleNamespace(plan=ViewPlan.from_augment(augment), features={"train": features},
                               train_key={"backbone": "test"}, choice_cache=tmp_path)
    spec = SimpleNamespace(augment=augment, train=TrainSettings(seed=0))
    probes = []
    real = trainer.choose_views

    def counted(*args, **kwargs):
        probes.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "choose_views", counted)
    rows = np.arange(60)
    assert trainer.unit_views(featured, spec, labels, rows, None) == IDENTITY
    assert trainer.unit_views(featured, spec, labels, rows, None) == IDENTITY
    assert len(probes) == 1
    assert trainer.unit_views(featured, spec, labels, rows[::2], None) == IDENTITY
    assert len(probes) == 2
