import numpy as np
import pytest

from comp.data.folds import duplicate_groups, fingerprints, make_folds
from comp.data.views import DIHEDRAL, dihedral_view
from comp.errors import CompError
from tests.helpers import synthetic_image


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([np.asarray(synthetic_image(rng, ["alpha", "beta"][i % 2], 48))
                     for i in range(n)])


def test_dihedral_views_are_the_eight_symmetries():
    image = np.arange(16, dtype=np.uint8).reshape(1, 4, 4, 1)
    views = {dihedral_view(image, v).tobytes() for v in DIHEDRAL}
    assert len(views) == 8


@pytest.mark.parametrize("shape,dtype", [((3, 6, 6, 3), np.uint8), ((2, 5, 5, 1), np.uint8),
                                         ((2, 4, 4, 5), np.float16)])
def test_dihedral_views_move_whole_pixels(shape, dtype):
    """The views move each pixel's channels as one item: the same arrays as turning and
    flipping the channels one by one, for colour, grayscale and feature maps."""
    images = np.random.default_rng(1).integers(0, 256, shape).astype(dtype)
    for view in DIHEDRAL:
        expected = np.rot90(images, k=view % 4, axes=(1, 2))
        expected = expected[:, :, ::-1] if view >= 4 else expected
        got = dihedral_view(images[:, :, :], view)
        assert got.dtype == dtype and got.flags.c_contiguous
        np.testing.assert_array_equal(got, expected, err_msg=f"view {view}")
    strided = images[:, ::-1]  # a non-contiguous batch
    np.testing.assert_array_equal(dihedral_view(strided, 1), np.rot90(strided, 1, (1, 2)))


def test_flipped_and_rotated_copies_are_grouped():
    images = _images(12)
    copies = np.stack([dihedral_view(images[:1], 5)[0], dihedral_view(images[1:2], 2)[0]])
    groups = duplicate_groups(fingerprints(np.concatenate([images, copies])), 6, 0.95)
    assert groups[12] == groups[0] and groups[13] == groups[1]
    assert len(set(groups[:12])) == 12  # distinct images stay apart


def _strokes(n: int, seed: int) -> np.ndarray:
    """n different 28 px "ones": a vertical stroke, each with its own position, slant and
    width, as different writers draw it."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28, 3), np.uint8)
    yy, xx = np.mgrid[0:28, 0:28]
    for image in images:
        x0, slant, width = 14 + rng.uniform(-3, 3), rng.uniform(-0.3, 0.3), rng.uniform(1.5, 3)
        image[(np.abs(xx - (x0 + slant * (yy - 14))) < width) & (yy > 4) & (yy < 24)] = 255
    return images


def test_look_alike_drawings_are_not_chained_into_one_group_but_copies_are_joined():
    strokes = _strokes(40, seed=0)
    # the hashes alone chain different strokes into a group that no fold split can balance
    assert np.bincount(duplicate_groups(fingerprints(strokes), 6, -1.0)).max() >= 10
    copies = np.concatenate([strokes, dihedral_view(strokes[:1], 5),  # a flipped copy
                             strokes[1:2] // 2 + 60])  # a darker, lower-contrast copy
    groups = duplicate_groups(fingerprints(copies), 6, 0.95)
    assert groups[40] == groups[0] and groups[41] == groups[1]
    assert len(set(groups[:40])) == 40  # the 40 different strokes stay apart


def test_folds_are_stratified_and_keep_groups_together():
    labels = ["a"] * 20 + ["b"] * 10
    groups = np.arange(30)
    groups[[1, 2, 3]] = 0  # images 0..3 are one duplicate group
    folds = make_folds([f"{i}.png" for i in range(30)], labels, groups, 5, seed=0)
    assert folds.loc[[0, 1, 2, 3], "fold"].nunique() == 1
    per_fold = folds.groupby("fold")["label"].value_counts().unstack()
    assert (per_fold["b"] >= 1).all() and (per_fold["a"] >= 2).all()


def test_class_smaller_than_folds_is_an_error():
    with pytest.raises(CompError, match="class 'b' has 2 image"):
        make_folds(["1", "2", "3", "4", "5", "6"], ["a"] * 4 + ["b"] * 2, np.arange(6), 3, 0)


def test_joined_groups_join_duplicates_and_keys_transitively():
    from comp.data.folds import joined_groups

    groups = joined_groups(np.array([0, 1, 1, 2, 3, 4]), np.array(["a", "b", "c", "c", "d", "a"]))
    # 0 and 5 share a key; 1-2 are duplicates and 2-3 share a key; 4 is alone
    assert groups[0] == groups[5] and groups[1] == groups[2] == groups[3]
    assert len({groups[0], groups[1], groups[4]}) == 3


def test_a_group_column_keeps_each_patients_images_in_one_fold(tmp_path, capsys, comp_caplog):
    """data.group_column: every group (here 8 patients, each with images of every class)
    lies in one fold; a changed value after the folds exist, a missing column and an empty
    value are each one line."""
    import pandas as pd

    from tests.helpers import make_competition, run_comp, tiny_overrides

    root = make_competition(tmp_path / "g")
    train = pd.read_csv(root / "train.csv", dtype=str)
    train["patient"] = [f"p{i % 8}" for i in range(len(train))]
    train.to_csv(root / "train.csv", index=False)
    overrides = tiny_overrides(tmp_path, root, **{"data.folds": "3"})
    assert run_comp("stage=prepare", *overrides, "data.group_column=patient",
                    "quiet=false") == 0
    assert "8 groups of 'patient', each in one fold" in comp_caplog.text
    folds = pd.read_csv(tmp_path / "runs/tiny/folds.csv", dtype=str).merge(train, on="id")
    assert (folds.groupby("patient")["fold"].nunique() == 1).all()
    assert folds["fold"].nunique() == 3
    assert run_comp("stage=prepare", *overrides) == 2  # the folds were made with groups
    assert "data.group_column=None, made with patient" in capsys.readouterr().err
    other = [*overrides, "name=other"]
    assert run_comp("stage=prepare", *other, "data.group_column=slide") == 2
    assert "no column 'slide' (data.group_column)" in capsys.readouterr().err
    train.loc[3, "patient"] = " "
    train.to_csv(root / "train.csv", index=False)
    assert run_comp("stage=prepare", *other, "data.group_column=patient") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.csv line 5: empty 'patient'" in err[0], err
    train.loc[3, "patient"] = "p1"  # a group changed after the folds were made
    train.to_csv(root / "train.csv", index=False)
    assert run_comp("stage=prepare", *overrides, "data.group_column=patient") == 2
    assert "(its data.group_column values differ)" in capsys.readouterr().err
