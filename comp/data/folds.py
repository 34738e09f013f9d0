"""Stratified K folds with near-duplicate images (also flipped/rotated) kept in one fold."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.fft import dctn
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.model_selection import StratifiedGroupKFold

from comp.data.views import DIHEDRAL, dihedral_view
from comp.errors import CompError


@dataclass(frozen=True)
class Fingerprints:
    """What the near-duplicate check compares, for N images: (8, N) 64-bit DCT
    perceptual hashes of each image's 8 dihedral views (pHash: grayscale at 32x32, 2-D
    DCT, the top-left 8x8 low frequencies thresholded at their median without the DC
    term) and (N, 32, 32) float32 grayscale thumbnails with mean 0 and norm 1."""

    hashes: np.ndarray
    thumbs: np.ndarray


def fingerprints(images: np.ndarray) -> Fingerprints:
    """The Fingerprints of `images` (N, H, W, 3) uint8."""
    gray = _gray32(images)
    bits = 1 << np.arange(64, dtype=np.uint64)
    hashes = np.zeros((len(DIHEDRAL), len(images)), dtype=np.uint64)
    for view in DIHEDRAL:
        low = dctn(dihedral_view(gray[..., None], view)[..., 0], axes=(1, 2), norm="ortho")
        low = low[:, :8, :8].reshape(len(images), 64)
        above = low > np.median(low[:, 1:], axis=1, keepdims=True)
        hashes[view] = (above.astype(np.uint64) * bits).sum(axis=1, dtype=np.uint64)
    centred = gray - gray.mean(axis=(1, 2), keepdims=True)
    norms = np.linalg.norm(centred.reshape(len(images), -1), axis=1)
    thumbs = centred / np.maximum(norms, 1e-9)[:, None, None]
    return Fingerprints(hashes, thumbs.astype(np.float32))


def _gray32(images: np.ndarray) -> np.ndarray:
    from PIL import Image

    gray = np.empty((len(images), 32, 32), dtype=np.float64)
    for i, image in enumerate(images):
        gray[i] = np.asarray(
            Image.fromarray(image).convert("L").resize((32, 32), Image.Resampling.BOX)
        )
    return gray


def near_duplicate_pairs(a: Fingerprints, b: Fingerprints, max_distance: int,
                         min_correlation: float) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i, j) of near-duplicates between the images of `a` and of `b`: their hashes
    differ in at most `max_distance` bits in some dihedral view (hamming_within), and
    their thumbnails correlate at least `min_correlation` in the best view.

    The hash alone joins look-alikes that are different images: simple shapes such as
    handwritten digits or letters share their low frequencies, and such pairs chain (on
    2,000 MNIST digits, one group of 448 images, most of the 1s, 6s and 7s, all in one
    fold). Copies of one image (recompressed, resized, recontrasted, turned) keep their
    pixels: at 0.95 bench/dedup.py still joins every such copy of wbc and MNIST images,
    and MNIST's largest group is 46 images."""
    i, j = hamming_within(a.hashes, b.hashes, max_distance)
    keep = best_view_correlation(a.thumbs, b.thumbs, i, j) >= min_correlation
    return i[keep], j[keep]


def best_view_correlation(a: np.ndarray, b: np.ndarray, i: np.ndarray, j: np.ndarray,
                          chunk: int = 4096) -> np.ndarray:
    """The correlation of thumbnails a[i] and b[j], the best over b's dihedral views."""
    best = np.full(len(i), -1.0, dtype=np.float32)
    for start in range(0, len(i), chunk):
        left, right = a[i[start:start + chunk]], b[j[start:start + chunk]][..., None]
        for view in DIHEDRAL:
            best[start:start + chunk] = np.maximum(
                best[start:start + chunk],
                (left * dihedral_view(right, view)[..., 0]).sum(axis=(1, 2)))
    return best


def duplicate_groups(prints: Fingerprints, max_distance: int,
                     min_correlation: float) -> np.ndarray:
    """Group ids (N,) joining near-duplicate images (near_duplicate_pairs), transitively.
    Singletons get their own group."""
    n = prints.hashes.shape[1]
    i, j = near_duplicate_pairs(prints, prints, max_distance, min_correlation)
    keep = i != j
    graph = coo_matrix((np.ones(int(keep.sum())), (i[keep], j[keep])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def joined_groups(groups: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Group ids (N,) joining the images that share a group in `groups` (e.g.
    duplicate_groups) or a key in `keys` (e.g. a patient id), transitively."""
    n = len(groups)
    _, group_codes = np.unique(groups, return_inverse=True)
    _, key_codes = np.unique(keys, return_inverse=True)
    images = np.arange(n)
    # images and the two labelings' values as one graph's nodes: image -> its group, its key
    links = np.concatenate([n + group_codes, n + group_codes.max() + 1 + key_codes])
    graph = coo_matrix((np.ones(2 * n), (np.concatenate([images, images]), links)),
                       shape=(links.max() + 1,) * 2)
    return connected_components(graph, directed=False)[1][:n]


def hamming_within(a: np.ndarray, b: np.ndarray, max_distance: int,
                   chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i, j) of images whose (8, N) dihedral hashes `a` and (8, M) `b` differ in
    at most `max_distance` bits in some view, compared both ways (view 0 of each image
    against every view of the other), so the relation is symmetric."""
    rows, cols = [], []
    for start in range(0, a.shape[1], chunk):
        distance = np.full((min(chunk, a.shape[1] - start), b.shape[1]), 65, dtype=np.int64)
        for view in range(a.shape[0]):
            for left, right in ((a[0, start:start + chunk], b[view]),
                                (a[view, start:start + chunk], b[0])):
                xor = np.bitwise_xor(left[:, None], right[None, :])
                distance = np.minimum(distance, np.bitwise_count(xor).astype(np.int64))
        i, j = np.nonzero(distance <= max_distance)
        rows.append(i + start)
        cols.append(j)
    if not rows:
        return np.zeros(0, int), np.zeros(0, int)
    return np.concatenate(rows), np.concatenate(cols)


def cross_duplicates(pool: Fingerprints, train: Fingerprints, max_distance: int,
                     min_correlation: float) -> list[tuple[int, int]]:
    """(pool row, train row) pairs that are near-duplicates (near_duplicate_pairs)."""
    i, j = near_duplicate_pairs(pool, train, max_distance, min_correlation)
    return list(zip(i.tolist(), j.tolist(), strict=True))


def make_folds(
    ids: list[str], labels: list[str], groups: np.ndarray, n_folds: int, seed: int,
    repeats: int = 1,
) -> pd.DataFrame:
    """Assign folds with StratifiedGroupKFold: columns id, label, fold, group, and for
    each repeat r >= 1 (`repeats` > 1) a column fold_r<r> split with seed `seed + r`; a
    near-duplicate group is in one fold of every repeat."""
    counts = pd.Series(labels).value_counts()
    rare = counts[counts < n_folds]
    if len(rare):
        name, count = rare.index[0], int(rare.iloc[0])
        raise CompError(
            f"train labels: class {name!r} has {count} image(s), fewer than "
            f"data.folds={n_folds}; lower data.folds or add images of that class"
        )
    if n_folds < 2:
        raise CompError(f"config: data.folds={n_folds}; use at least 2 folds")
    if repeats < 1:
        raise CompError(f"config: data.repeats={repeats}; use at least 1 repeat")
    n_groups = len(np.unique(groups))
    if n_groups < n_folds:
        raise CompError(
            f"data.dedup_max_distance: the near-duplicate check joins the {len(ids)} training "
            f"images into {n_groups} group(s), fewer than data.folds={n_folds} (a group stays "
            "in one fold); lower data.dedup_max_distance (default 6), raise "
            "data.dedup_min_correlation (default 0.95) or set data.dedup=false"
        )
    frame = pd.DataFrame({"id": ids, "label": labels,
                          "fold": _split(labels, groups, n_folds, seed), "group": groups})
    for repeat in range(1, repeats):
        frame[repeat_column(repeat)] = _split(labels, groups, n_folds, seed + repeat)
    return frame


def repeat_column(repeat: int) -> str:
    """folds.csv's column of repeat `repeat`: fold (repeat 0), fold_r1, fold_r2, ..."""
    return "fold" if repeat == 0 else f"fold_r{repeat}"


def _split(labels: list[str], groups: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    fold = np.zeros(len(labels), dtype=int)
    for k, (_, val) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
        fold[val] = k
    return fold
