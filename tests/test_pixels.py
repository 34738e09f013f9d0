"""Pixel-CSV competitions (Digit Recognizer layout): train.csv = label,pixel0,...; test.csv
= pixel rows (maybe with an id column); sample_submission.csv = ImageId,Label. The rows
are read as images through prepare, and bad pixel files are one clear line."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from comp.config import load_config
from comp.data.pixels import recorded_order
from comp.data.prepared import prepare
from comp.errors import CompError
from comp.inference import input_images
from comp.run import main
from tests.helpers import make_pixel_competition, run_path, tiny_overrides


def _pixels(root, name="train.csv") -> np.ndarray:
    frame = pd.read_csv(root / name)
    return frame[[c for c in frame.columns if c.startswith("pixel")]].to_numpy(np.uint8)


def test_prepare_reads_pixel_rows_as_images(tmp_path):
    root = make_pixel_competition(tmp_path / "digits", side=8)
    overrides = tiny_overrides(tmp_path, root)
    assert main(["stage=prepare", *overrides]) == 0
    run = run_path(tmp_path)
    folds = pd.read_csv(run / "folds.csv", dtype=str)
    assert folds["id"].tolist() == [str(i) for i in range(1, 31)]  # row numbers 1..N
    assert sorted(folds["label"].unique()) == ["0", "1", "2"]
    hashes = pd.read_csv(run / "hashes.csv", dtype=str)
    train_hashes = hashes[hashes["split"] == "train"]["hash"].tolist()
    expected = [hashlib.blake2b(row.tobytes(), digest_size=16).hexdigest()
                for row in _pixels(root)]
    assert train_hashes == expected  # the hash of each row's pixel bytes
    prepared = prepare(load_config(overrides))
    images = np.asarray(prepared.images("train", 8))
    assert images.shape == (30, 8, 8, 3)
    gray = _pixels(root).reshape(30, 8, 8)  # row-major, grayscale on every channel
    assert (images == gray[..., None]).all()
    test = prepared.competition.test
    assert test["submission_id"].tolist() == [str(i) for i in range(1, 7)]
    assert (np.asarray(prepared.images("test", 8))[:, :, :, 0]
            == _pixels(root, "test.csv").reshape(6, 8, 8)).all()


def test_sample_ids_follow_the_test_id_column(tmp_path):
    root = make_pixel_competition(tmp_path / "kannada", side=28, test_ids=True)
    sample = pd.read_csv(root / "sample_submission.csv")
    sample.iloc[::-1].to_csv(root / "sample_submission.csv", index=False)  # another order
    prepared = prepare(load_config(tiny_overrides(tmp_path, root)))
    test = prepared.competition.test
    assert test["submission_id"].tolist() == [f"t{i}" for i in range(5, -1, -1)]
    pixels = _pixels(root, "test.csv").reshape(6, 28, 28)
    images = np.asarray(prepared.images("test", 28))[:, :, :, 0]
    assert (images == pixels[::-1]).all()  # each id gets its own row's pixels


@pytest.mark.parametrize("order", ["interleaved", "planar"])
def test_colour_rows_are_read_in_their_order(order, tmp_path, caplog):
    root = make_pixel_competition(tmp_path / "colour", side=12, colour=order)
    truth = np.load(root / "colour_images.npy")
    overrides = [*tiny_overrides(tmp_path, root), 'quiet="false"']
    assert main(["stage=prepare", *overrides]) == 0
    other = {"interleaved": "planar", "planar": "interleaved"}[order]
    said = [r.getMessage() for r in caplog.records if "pixel columns read as" in r.getMessage()]
    assert len(said) == 1 and f"12x12 colour images with the values {order}" in said[0], said
    assert f"set data.pixel_order={other} if" in said[0]
    prepared = prepare(load_config(overrides))
    assert (np.asarray(prepared.images("train", 12)) == truth[:30]).all()
    assert (np.asarray(prepared.images("test", 12)) == truth[30:]).all()


def test_a_colour_order_set_is_read_as_set(tmp_path):
    root = make_pixel_competition(tmp_path / "colour", side=12, colour="planar")
    truth = np.load(root / "colour_images.npy")
    # read the other way, as told: each image is the planar values laid out interleaved
    told = [*tiny_overrides(tmp_path, root), "data.pixel_order=interleaved"]
    flat = truth.transpose(0, 3, 1, 2).reshape(len(truth), 12, 12, 3)
    assert (np.asarray(prepare(load_config(told)).images("train", 12)) == flat[:30]).all()


def test_row_by_column_names_are_pixel_columns(tmp_path):
    """mnist-in-csv's header: label,1x1,1x2,...,8x8 (row x column, from 1)."""
    root = make_pixel_competition(tmp_path / "grid", side=8)
    names = {f"pixel{i}": f"{i // 8 + 1}x{i % 8 + 1}" for i in range(64)}
    for name in ("train.csv", "test.csv"):
        _edit(root, name, lambda f: f.rename(columns=names, inplace=True))
    frame = pd.read_csv(root / "train.csv")
    shuffled = ["label", *np.random.default_rng(0).permutation(list(names.values()))]
    frame[shuffled].to_csv(root / "train.csv", index=False)  # any column order
    prepared = prepare(load_config(tiny_overrides(tmp_path, root)))
    gray = frame[list(names.values())].to_numpy(np.uint8).reshape(30, 8, 8)
    assert (np.asarray(prepared.images("train", 8))[..., 0] == gray).all()


def test_images_are_written_once(tmp_path):
    root = make_pixel_competition(tmp_path / "digits")
    overrides = tiny_overrides(tmp_path, root)
    assert main(["stage=prepare", *overrides]) == 0
    written = sorted((run_path(tmp_path) / "cache" / "pixels").rglob("*.png"))
    times = [p.stat().st_mtime_ns for p in written]
    assert len(written) == 36
    assert main(["stage=prepare", *overrides]) == 0
    assert [p.stat().st_mtime_ns for p in written] == times


def _edit(root, name, change):
    """Rewrite competition file `name` after `change` (in place, or returning a new frame)."""
    frame = pd.read_csv(root / name, dtype=str)
    changed = change(frame)
    (changed if isinstance(changed, pd.DataFrame) else frame).to_csv(root / name, index=False)


def _set(name, column, value):
    return lambda root: _edit(root, name, lambda f: f.__setitem__(column, f[column].where(
        f.index != 2, value)))


def _noise_columns(frame, count):
    """`frame` with `count` noise pixel columns in place of its own (one concat, not one
    insert a column: pandas warns of a fragmented frame)."""
    rng = np.random.default_rng(0)
    noise = pd.DataFrame(rng.integers(0, 256, (len(frame), count)), index=frame.index,
                         columns=[f"pixel{i}" for i in range(count)])
    return pd.concat([frame.drop(columns=[c for c in frame if c.startswith("pixel")]), noise],
                     axis=1)


BAD = {
    "not a square": (lambda r: _edit(r, "train.csv", lambda f: f.pop("pixel63")),
                     "train.csv: 63 pixel columns is neither a square number of pixels"),
    "colour order unclear": (lambda r: [_edit(r, name, lambda f: _noise_columns(f, 192))
                                        for name in ("train.csv", "test.csv")],
                             "train.csv: 192 pixel columns are 8x8 colour images, and "
                             "whether each pixel's 3 values"),
    "a gap": (lambda r: [_edit(r, name, lambda f: f.rename(columns={"pixel9": "pixel64"},
                                                             inplace=True))
                         for name in ("train.csv", "test.csv")],
              "pixel columns pixel0..pixel64 have a gap (first odd one: pixel10)"),
    "no header": (lambda r: (r / "train.csv").write_text(
        "\n".join((r / "train.csv").read_text().splitlines()[1:]) + "\n"),
                  "train.csv: its first line is 65 numbers, not column names: a pixel CSV "
                  "without a header (EMNIST's layout); add the header line "
                  "label,pixel0,...,pixel63"),
    "text pixel": (_set("train.csv", "pixel5", "x"),
                   "train.csv line 4: pixel5='x' is not a number"),
    "above 255": (_set("train.csv", "pixel7", "256"), "train.csv line 4: pixel7=256 is outside"),
    "negative": (_set("test.csv", "pixel0", "-1"), "test.csv line 4: pixel0=-1 is outside"),
    "fraction": (_set("train.csv", "pixel1", "0.5"), "not a whole number"),
    "test size differs": (lambda r: _edit(r, "test.csv", lambda f: f.pop("pixel63")),
                          "test.csv: 63 pixel columns (pixel0, pixel62) differ from "
                          "train.csv's 64"),
    "sample ids not rows": (_set("sample_submission.csv", "ImageId", "99"),
                            "ids are not 1..6"),
    "no test.csv": (lambda r: (r / "test.csv").unlink(), "test.csv: not found"),
    "empty label": (_set("train.csv", "label", ""), "train.csv line 4: empty label"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_pixel_files_are_one_line(case, tmp_path, capsys):
    root = make_pixel_competition(tmp_path / "digits")
    mutate, needle = BAD[case]
    mutate(root)
    assert main(["stage=prepare", *tiny_overrides(tmp_path, root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("comp: error: "), err
    assert needle in err[0], err


@pytest.mark.slow
def test_stage_all_writes_the_samples_ids_and_integer_labels(tmp_path):
    root = make_pixel_competition(tmp_path / "digits", side=28)
    assert main(["stage=all", *tiny_overrides(tmp_path, root, **{"submit.metric": "qwk"})]) == 0
    board = pd.read_csv(tmp_path / "submissions" / "tiny" / "leaderboard.csv")
    assert board["cv_qwk"].is_monotonic_decreasing  # ranked by quadratic weighted kappa
    text = (tmp_path / "submissions" / "tiny" / board["file"].iloc[0]).read_text().splitlines()
    assert text[0] == "ImageId,Label"
    rows = [line.split(",") for line in text[1:]]
    assert [r[0] for r in rows] == [str(i) for i in range(1, 7)]
    assert all(r[1] in {"0", "1", "2"} for r in rows)  # integers, as in train.csv
    # the same rows given to stage=predict: the rank-1 model's labels, by the row numbers
    overrides = tiny_overrides(tmp_path, root, **{"submit.metric": "qwk"})
    using = board["name"].iloc[0]
    assert main(["stage=predict", *overrides, f"predict.input={root / 'test.csv'}",
                 f"predict.using={using}"]) == 0
    predicted = pd.read_csv(run_path(tmp_path) / "predictions" / f"test__{using}.csv",
                            dtype=str)
    assert predicted["id"].tolist() == [r[0] for r in rows]
    assert predicted["label"].tolist() == [r[1] for r in rows]


@pytest.mark.parametrize("ids", [False, True])
def test_pixel_rows_to_predict_are_images_by_their_ids(ids, tmp_path):
    root = make_pixel_competition(tmp_path / "colour", side=12, colour="planar", test_ids=ids)
    images = input_images(root / "test.csv", tmp_path / "pixels")
    assert list(images) == ([f"t{i}" for i in range(6)] if ids else
                            [str(i) for i in range(1, 7)])
    truth = np.load(root / "colour_images.npy")[30:]
    assert all((np.asarray(Image.open(path)) == image).all()
               for path, image in zip(images.values(), truth, strict=True))


def test_rows_to_predict_are_read_in_the_order_training_took(tmp_path):
    root = make_pixel_competition(tmp_path / "colour", side=12, colour="planar")
    prepared = prepare(load_config(tiny_overrides(tmp_path, root)))
    pixel_dir = prepared.run.pixel_images
    assert recorded_order(pixel_dir) == "planar"
    # two noisy rows alone cannot tell their order; the run's record can
    rows = pd.read_csv(root / "test.csv").head(2)
    pixels = [c for c in rows.columns if c.startswith("pixel")]
    rows[pixels] = np.random.default_rng(0).integers(0, 256, (2, len(pixels)))
    rows.to_csv(tmp_path / "new.csv", index=False)
    with pytest.raises(CompError, match="cannot be told from the images"):
        input_images(tmp_path / "new.csv", tmp_path / "predict")
    images = input_images(tmp_path / "new.csv", tmp_path / "predict", "auto",
                          recorded_order(pixel_dir))
    planar = rows[pixels].to_numpy(np.uint8).reshape(2, 3, 12, 12).transpose(0, 2, 3, 1)
    assert all((np.asarray(Image.open(path)) == image).all()
               for path, image in zip(images.values(), planar, strict=True))


def test_a_label_column_in_test_csv_is_not_taken_for_ids(tmp_path):
    """A labelled test.csv (EMNIST's test rows carry their labels): the rows are still
    numbered 1..N for the sample's ImageId, not named by their labels."""
    root = make_pixel_competition(tmp_path / "digits")
    _edit(root, "test.csv", lambda f: f.insert(0, "label", [str(i % 3) for i in range(6)]))
    prepared = prepare(load_config(tiny_overrides(tmp_path, root)))
    assert prepared.competition.test["submission_id"].tolist() == [str(i) for i in range(1, 7)]
    assert (np.asarray(prepared.images("test", 8))[..., 0]
            == _pixels(root, "test.csv").reshape(6, 8, 8)).all()
