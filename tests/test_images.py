import numpy as np
import pytest
from PIL import Image

from comp.data.images import Decoding, cached_images, decode_image
from comp.errors import CompError

LIMIT = 10_000_000
DECODING = Decoding(LIMIT)


def _red(size=(40, 30)):
    return Image.new("RGB", size, (255, 0, 0))


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "LA", "I;16", "I", "F"])
def test_modes_decode_to_rgb(tmp_path, mode):
    image = _red()
    if mode in ("I;16", "I", "F"):
        array = np.full((30, 40), 40000 if mode != "F" else 0.5, dtype=np.float32)
        image = Image.fromarray(array.astype(np.uint16) if mode == "I;16" else array)
        image = image.convert(mode) if mode != "I;16" else image
    else:
        image = image.convert(mode)
    path = tmp_path / ("x.tif" if mode in ("I;16", "I", "F", "CMYK") else "x.png")
    image.save(path)
    out = decode_image(path, 16, LIMIT)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8


def test_sixteen_bit_is_scaled_by_bit_depth_the_same_for_every_image(tmp_path):
    # two 16-bit images with different maxima: one intensity, one output value
    for name, top in (("a.png", 4095), ("b.png", 65535)):
        array = np.full((32, 32), 1000, dtype=np.uint16)
        array[0, 0] = top
        Image.fromarray(array).save(tmp_path / name)
    a = decode_image(tmp_path / "a.png", 32, LIMIT)
    b = decode_image(tmp_path / "b.png", 32, LIMIT)
    assert a[5, 5, 0] == b[5, 5, 0] == round(1000 / 257)
    assert b[0, 0, 0] == 255 and a[0, 0, 0] == round(4095 / 257)


def test_intensity_range_maps_twelve_bit_data(tmp_path):
    array = np.linspace(0, 4095, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(array).save(tmp_path / "x.png")
    out = decode_image(tmp_path / "x.png", 64, LIMIT, intensity_range=(0, 4095))
    assert out.max() >= 250 and out.min() <= 5  # 0..4095 fills 0..255


def test_float_tiff_in_unit_range_is_not_black(tmp_path):
    array = np.full((16, 16), 0.5, dtype=np.float32)
    array[0, 0] = 1.0
    Image.fromarray(array).save(tmp_path / "x.tif")
    out = decode_image(tmp_path / "x.tif", 16, LIMIT)
    assert out[5, 5, 0] in (127, 128) and out[0, 0, 0] == 255


def test_float_outside_unit_range_needs_intensity_range(tmp_path):
    Image.fromarray(np.full((16, 16), 200.0, dtype=np.float32)).save(tmp_path / "x.tif")
    with pytest.raises(CompError, match="data.intensity_range"):
        decode_image(tmp_path / "x.tif", 16, LIMIT)
    out = decode_image(tmp_path / "x.tif", 16, LIMIT, intensity_range=(0, 255))
    assert out[0, 0, 0] == 200


def test_comp_pixel_limit_is_the_only_limit(tmp_path, monkeypatch):
    # an image over Pillow's own limit decodes when data.max_image_pixels allows it
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    Image.new("L", (100, 100), 7).save(tmp_path / "x.png")
    assert decode_image(tmp_path / "x.png", 8, 20_000)[0, 0, 0] == 7
    with pytest.raises(CompError, match="max_image_pixels=5000"):
        decode_image(tmp_path / "x.png", 8, 5000)


def test_exif_rotation_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 20, 20))  # white left half
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    image.save(tmp_path / "x.jpg", exif=exif, quality=95)
    out = decode_image(tmp_path / "x.jpg", 20, LIMIT).mean(axis=2)
    assert out[:10].mean() > 200 and out[10:].mean() < 60  # white half now on top


def test_rgba_alpha_composited_on_black(tmp_path):
    Image.new("RGBA", (8, 8), (255, 255, 255, 0)).save(tmp_path / "x.png")
    assert decode_image(tmp_path / "x.png", 8, LIMIT).max() == 0


@pytest.mark.parametrize("content, needle", [
    (b"", "0 bytes"),
    (b"this is not an image", "cannot read image"),
])
def test_unreadable_files(tmp_path, content, needle):
    path = tmp_path / "x.png"
    path.write_bytes(content)
    with pytest.raises(CompError, match=needle):
        decode_image(path, 8, LIMIT)


def test_truncated_jpeg(tmp_path):
    _red((64, 64)).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(CompError, match="cut.jpg"):
        decode_image(tmp_path / "cut.jpg", 8, LIMIT)


def test_huge_image_refused_before_decoding(tmp_path):
    Image.new("L", (5000, 4000)).save(tmp_path / "big.png")
    with pytest.raises(CompError, match="max_image_pixels"):
        decode_image(tmp_path / "big.png", 8, 1_000_000)


def test_cache_is_reused_and_invalidated(tmp_path):
    path = tmp_path / "a.png"
    _red().save(path)
    first = cached_images(tmp_path / "cache", "train", [str(path)], 8, DECODING)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1
    Image.new("RGB", (40, 30), (0, 0, 255)).save(path)
    second = cached_images(tmp_path / "cache", "train", [str(path)], 8, DECODING)
    assert first[0, 0, 0, 0] == 255 and second[0, 0, 0, 2] == 255


def _random_files(folder, n, shape, suffix):
    """`n` files of random RGB pixels of `shape` (height, width) in `folder`; their paths."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"im{i}{suffix}"
        Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_enlarged_sizes_are_resized_on_read_from_one_cache_equal_to_decoding(tmp_path, suffix):
    # every image 24 x 24: sizes above 24 are resized from the 24 px cache on read, with
    # the same pixels as decoding each file at that size (what stage=predict does)
    paths = _random_files(tmp_path, 3, (24, 24), suffix)
    cache = tmp_path / "cache"
    for size in (56, 24, 100):
        images = cached_images(cache, "train", paths, size, DECODING)
        assert images.shape == (3, size, size, 3) and len(images) == 3
        direct = np.stack([decode_image(p, size, LIMIT) for p in paths])
        np.testing.assert_array_equal(np.asarray(images), direct)
        np.testing.assert_array_equal(images[[2, 0]], direct[[2, 0]])
        np.testing.assert_array_equal(images[1], direct[1])
        np.testing.assert_array_equal(np.stack(list(images)), direct)
    assert sorted(p.name.split("_")[1] for p in cache.glob("*.npy")) == ["24"]
    smaller = cached_images(cache, "train", paths, 16, DECODING)  # shrunk: cached at its size
    np.testing.assert_array_equal(smaller, np.stack([decode_image(p, 16, LIMIT) for p in paths]))
    assert sorted(p.name.split("_")[1] for p in cache.glob("*.npy")) == ["16", "24"]


def test_mixed_sizes_are_cached_at_each_size(tmp_path):
    Image.new("RGB", (24, 24), (255, 0, 0)).save(tmp_path / "a.png")
    Image.new("RGB", (30, 20), (0, 255, 0)).save(tmp_path / "b.png")
    paths = [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    images = cached_images(tmp_path / "cache", "train", paths, 48, DECODING)
    assert isinstance(images, np.ndarray) and images.shape == (2, 48, 48, 3)
    assert sorted(p.name.split("_")[1] for p in (tmp_path / "cache").glob("*.npy")) == ["48"]


def test_cheap_large_decodes_are_read_from_the_files_not_cached(tmp_path, monkeypatch):
    from comp.data import images as images_module

    paths = _random_files(tmp_path, 5, (90, 70), ".jpg")
    direct = np.stack([decode_image(p, 96, LIMIT) for p in paths])
    cache = tmp_path / "cache"
    lazy = cached_images(cache, "train", paths, 96, DECODING)  # 5 small JPEGs: cheap
    assert isinstance(lazy, images_module.DecodedImages) and not list(cache.glob("*_96_*.npy"))
    assert lazy.shape == (5, 96, 96, 3) and lazy.dtype == np.uint8 and len(lazy) == 5
    np.testing.assert_array_equal(np.asarray(lazy), direct)
    np.testing.assert_array_equal(lazy[[4, 1]], direct[[4, 1]])
    np.testing.assert_array_equal(lazy[2], direct[2])
    np.testing.assert_array_equal(lazy[1:3], direct[1:3])
    # small decodes are cached whatever they cost (hashes, pixels@32)
    assert isinstance(cached_images(cache, "train", paths, 32, DECODING), np.memmap)
    # slow decoding (here: any) is cached, with the same pixels
    monkeypatch.setattr(images_module, "CHEAP_DECODE_SECONDS", -1.0)
    # ... but the decision is taken once per cache file: the first stays uncached
    assert isinstance(cached_images(cache, "train", paths, 96, DECODING),
                      images_module.DecodedImages)
    slow = tmp_path / "slow"
    cached = cached_images(slow, "train", paths, 96, DECODING)
    assert isinstance(cached, np.memmap) and len(list(slow.glob("train_96_*.npy"))) == 1
    np.testing.assert_array_equal(cached, direct)
    # a cache file once written is read back, whatever the timing says now
    monkeypatch.setattr(images_module, "CHEAP_DECODE_SECONDS", 1e9)
    assert isinstance(cached_images(slow, "train", paths, 96, DECODING), np.memmap)


def test_decoded_once_decodes_each_image_a_single_time_for_many_passes(tmp_path, monkeypatch):
    from comp.data import images as images_module

    paths = []
    for i in range(4):
        path = tmp_path / f"im{i}.png"
        Image.new("RGB", (20, 20), (10 * i, 0, 0)).save(path)
        paths.append(str(path))
    lazy = images_module.DecodedImages(paths, 80, DECODING)
    decoded = []
    real = images_module.decode_image
    monkeypatch.setattr(images_module, "decode_image",
                        lambda path, *args: decoded.append(path) or real(path, *args))
    scratch = tmp_path / "scratch"
    with images_module.decoded_once(lazy, scratch, passes=8) as once:
        for _ in range(8):  # a pass per view
            rows = np.asarray(once[0:4])
        assert len(list(scratch.iterdir())) == 1
    assert sorted(decoded) == sorted(paths)  # each file decoded once, not 8 times
    np.testing.assert_array_equal(rows[:, 0, 0, 0], [0, 10, 20, 30])
    assert list(scratch.iterdir()) == []  # the decoded copy is gone with the pass
    with images_module.decoded_once(lazy, scratch, passes=1) as single:
        assert single is lazy  # one pass: read straight from the files


def test_frozen_forward_takes_the_view_and_preprocessing_in_its_graph():
    """Every registered backbone's preprocessing and each dihedral view, run inside the
    feature pass's one traced graph (an identity network here), give NumPy's numbers to
    within an ulp, for batches of any size from the one trace."""
    import keras

    from comp.data.views import DIHEDRAL, dihedral_view
    from comp.models.registry import BACKBONES
    from comp.training.features import frozen_forward

    images = np.random.default_rng(0).integers(0, 256, (3, 9, 9, 3), dtype=np.uint8)
    inputs = keras.Input((9, 9, 3))
    identity = keras.Model(inputs, keras.layers.Identity()(inputs))
    for name, backbone in BACKBONES.items():
        forward = frozen_forward(identity, backbone.preprocess, "float32")
        for view in DIHEDRAL:
            for count in (3, 1):
                batch = images[:count]
                expected = backbone.preprocess(dihedral_view(batch, view).astype(np.float32))
                got = forward(batch, view)
                assert got.dtype == np.float32 and got.shape == expected.shape, (name, view)
                np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6,
                                           err_msg=f"{name} view {view}")
