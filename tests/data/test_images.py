"""Image decoding and sources (reconattack.data.images). Fixtures are written to tmp_path."""

from __future__ import annotations

import multiprocessing
import pickle
import warnings

import cv2
import numpy as np
import pytest

from reconattack.data.images import (
    ArraySource,
    DataNotFoundError,
    ImageFolderSource,
    ImageReadError,
    ImageSource,
    LMDBSource,
    SmallImageWarning,
    decode_image,
    lfw_faces,
    open_source,
    read_image,
    resize,
)


def _encode(image: np.ndarray, ext: str = ".png") -> bytes:
    ok, buf = cv2.imencode(ext, image)
    assert ok
    return buf.tobytes()


def _write(path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_encode(image, path.suffix))


def _rgb_pattern(h: int = 6, w: int = 8) -> np.ndarray:
    """uint8 (h, w, 3) RGB with distinct channel values."""
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = 200  # R
    img[..., 1] = np.arange(w, dtype=np.uint8)[None, :] * 10  # G
    img[..., 2] = 30  # B
    return img


# -- decoding --------------------------------------------------------------------------------


def test_colour_png_is_rgb(tmp_path):
    rgb = _rgb_pattern()
    path = tmp_path / "c.png"
    _write(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))  # files are BGR for OpenCV
    out = read_image(path)
    assert out.dtype == np.uint8 and out.shape == (6, 8, 3)
    np.testing.assert_array_equal(out, rgb)


def test_grey_png_becomes_three_channels(tmp_path):
    grey = (np.arange(48, dtype=np.uint8) * 5).reshape(6, 8)
    path = tmp_path / "g.png"
    _write(path, grey)
    out = read_image(path)
    assert out.shape == (6, 8, 3) and out.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], grey)
    one_channel = decode_image(_encode(grey[..., None]), "g1.png")
    np.testing.assert_array_equal(one_channel, out)


def test_rgba_png_drops_alpha(tmp_path):
    rgb = _rgb_pattern()
    bgra = np.dstack([cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), np.full((6, 8), 7, np.uint8)])
    path = tmp_path / "a.png"
    _write(path, bgra)
    out = read_image(path)
    assert out.shape == (6, 8, 3)
    np.testing.assert_array_equal(out, rgb)


def test_16bit_png_scaled_to_8bit(tmp_path):
    values = np.array([[0, 257, 1000, 65535], [257 * 100, 128, 129, 65534]], np.uint16)
    path = tmp_path / "d.png"
    _write(path, values)
    out = read_image(path)
    assert out.dtype == np.uint8 and out.shape == (2, 4, 3)
    expected = np.rint(values / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(out[..., 0], expected)
    assert out[0, 3, 0] == 255 and out[1, 0, 0] == 100 and out[0, 2, 0] == 4


def test_float_tiff_scaled():
    img = np.linspace(0, 1, 2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3)
    out = decode_image(_encode(img, ".tif"), "f.tif")
    assert out.dtype == np.uint8
    expected = cv2.cvtColor(np.rint(img * 255).astype(np.uint8), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(out, expected)


def test_corrupt_and_empty_raise_image_read_error(tmp_path):
    bad = tmp_path / "broken_file.jpg"
    bad.write_bytes(b"this is not an image")
    with pytest.raises(ImageReadError, match="broken_file.jpg"):
        read_image(bad)
    with pytest.raises(ImageReadError, match="empty.png"):
        decode_image(b"", "empty.png")
    truncated = _encode(_rgb_pattern(64, 64), ".png")[:40]
    with pytest.raises(ImageReadError, match="cut.png"):
        decode_image(truncated, "cut.png")
    assert issubclass(ImageReadError, ValueError)


def test_png_chunk_longer_than_file_refused_before_decoding():
    """Found by fuzzing: a PNG whose IDAT length field was corrupted (one flipped byte) made
    OpenCV allocate and zero-fill the declared length — 3.4 GB and 2.5 s for a 1.2 KB file —
    before failing. Such chunks are refused before OpenCV sees the buffer."""
    png = bytearray(_encode(_rgb_pattern(24, 20), ".png"))
    assert png[37:41] == b"IDAT"  # the chunk after the 25-byte IHDR
    png[33:37] = (0xD30005C3).to_bytes(4, "big")
    with pytest.raises(ImageReadError, match=r"bomb.png: truncated or corrupt PNG: chunk b'IDAT'"):
        decode_image(bytes(png), "bomb.png")
    png[33:37] = (2**31).to_bytes(4, "big")  # over the spec's maximum, whatever the file size
    with pytest.raises(ImageReadError, match="declares 2147483648 bytes"):
        decode_image(bytes(png) + bytes(100), "big.png")
    # valid PNGs, with trailing bytes after IEND, still decode
    img = _rgb_pattern(24, 20)
    good = _encode(img[..., ::-1].copy(), ".png")
    np.testing.assert_array_equal(decode_image(good + b"trailing junk", "ok.png"), img)


# -- resize ----------------------------------------------------------------------------------


def test_resize_matches_cv2_bilinear():
    img = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    out = resize(img, 256)
    assert out.shape == (256, 256, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, cv2.resize(img, (256, 256), interpolation=cv2.INTER_LINEAR))
    same = np.zeros((256, 256, 3), np.uint8)
    assert resize(same, 256) is same


def test_small_images_upscaled_with_one_warning(tmp_path):
    small = np.full((25, 25, 3), 90, np.uint8)
    key = f"{tmp_path}/source"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = resize(small, 64, source=key)
        resize(small, 64, source=key)
        resize(np.zeros((10, 80, 3), np.uint8), 64, source=key)
        resize(np.zeros((100, 100, 3), np.uint8), 64, source=key)  # larger: no warning
    assert out.shape == (64, 64, 3) and (out == 90).all()
    small_warnings = [w for w in caught if issubclass(w.category, SmallImageWarning)]
    assert len(small_warnings) == 1
    assert key in str(small_warnings[0].message) and "25x25" in str(small_warnings[0].message)


# -- folder source ---------------------------------------------------------------------------


def test_folder_nested_sorted(tmp_path):
    root = tmp_path / "imgs"
    names = ["b/2.png", "a.png", "b/10.jpg", "c/d/e.PNG", "z.bmp"]
    for i, name in enumerate(names):
        _write(root / name.replace(".PNG", ".png"), np.full((4, 5, 3), i * 10, np.uint8))
    (root / "c/d/e.png").rename(root / "c/d/e.PNG")
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(_encode(np.zeros((4, 4, 3), np.uint8)))
    src = ImageFolderSource(root)
    assert isinstance(src, ImageSource)
    assert len(src) == 5
    assert [src.name(i) for i in range(len(src))] == sorted(names)
    img = src.load(src.files.index("z.bmp"))
    assert img.shape == (4, 5, 3) and (img == 40).all()
    assert pickle.loads(pickle.dumps(src)).files == src.files


def test_folder_missing_or_empty(tmp_path):
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    with pytest.raises(DataNotFoundError) as err:
        ImageFolderSource(empty)
    assert str(empty) in str(err.value)
    assert "expected a folder of image files (searched recursively" in str(err.value)
    missing = tmp_path / "nope"
    with pytest.raises(DataNotFoundError, match="nope"):
        ImageFolderSource(missing)
    assert issubclass(DataNotFoundError, FileNotFoundError)


# -- LMDB source -----------------------------------------------------------------------------


def _make_lmdb(path, images: dict[bytes, bytes]) -> None:
    import lmdb

    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for key, value in images.items():
            txn.put(key, value)
    env.close()


def _load_in_child(src: LMDBSource, i: int, queue) -> None:
    queue.put(src.load(i))


@pytest.fixture()
def lsun_lmdb(tmp_path):
    rgb = [_rgb_pattern(10, 12) + i for i in range(3)]
    entries = {
        b"b2c9a0f1": _encode(cv2.cvtColor(rgb[0], cv2.COLOR_RGB2BGR), ".png"),
        b"0a11": _encode(cv2.cvtColor(rgb[1], cv2.COLOR_RGB2BGR), ".png"),
        b"ffee": _encode(cv2.cvtColor(rgb[2], cv2.COLOR_RGB2BGR), ".jpg"),
    }
    path = tmp_path / "bird_train_lmdb"
    _make_lmdb(path, entries)
    return path, dict(zip([b"b2c9a0f1", b"0a11", b"ffee"], rgb, strict=True))


def test_lmdb_read_and_pickle(lsun_lmdb):
    path, rgb = lsun_lmdb
    src = LMDBSource(path)
    assert len(src) == 3
    assert [src.name(i) for i in range(3)] == ["0a11", "b2c9a0f1", "ffee"]  # LMDB key order
    np.testing.assert_array_equal(src.load(0), rgb[b"0a11"])
    np.testing.assert_array_equal(src.load(1), rgb[b"b2c9a0f1"])
    jpeg = src.load(2)
    assert jpeg.shape == (10, 12, 3) and np.abs(jpeg.astype(int) - rgb[b"ffee"]).max() < 30

    # a DataLoader worker receives a pickled copy: the open environment must not travel
    blob = pickle.dumps(src)
    assert len(blob) < 2000
    clone = pickle.loads(blob)
    np.testing.assert_array_equal(clone.load(1), rgb[b"b2c9a0f1"])
    np.testing.assert_array_equal(src.load(0), rgb[b"0a11"])  # original still works

    # several sources on one database in one process (train/val/test splits) share the env
    other = LMDBSource(path)
    np.testing.assert_array_equal(other.load(0), rgb[b"0a11"])
    other.close()
    np.testing.assert_array_equal(src.load(0), rgb[b"0a11"])  # reopened after close


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_lmdb_in_forked_worker(lsun_lmdb):
    path, rgb = lsun_lmdb
    src = LMDBSource(path)
    src.load(0)  # the parent has an open environment when the worker is forked
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_load_in_child, args=(src, 1, queue))
    proc.start()
    out = queue.get(timeout=30)
    proc.join(timeout=30)
    assert proc.exitcode == 0
    np.testing.assert_array_equal(out, rgb[b"b2c9a0f1"])


def test_lmdb_missing_or_invalid(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        LMDBSource(tmp_path / "missing_lmdb")
    assert "missing_lmdb" in str(err.value) and "data.mdb" in str(err.value)

    folder = tmp_path / "plain"
    folder.mkdir()
    with pytest.raises(DataNotFoundError, match="LSUN"):
        LMDBSource(folder)

    fake = tmp_path / "fake_lmdb"
    fake.mkdir()
    (fake / "data.mdb").write_bytes(b"\0garbage" * 100)
    with pytest.raises(DataNotFoundError, match="fake_lmdb"):
        LMDBSource(fake)


def test_open_source(tmp_path, lsun_lmdb):
    path, _ = lsun_lmdb
    assert isinstance(open_source("auto", path), LMDBSource)
    assert isinstance(open_source("lmdb", path), LMDBSource)
    assert len(open_source("auto", path / "data.mdb")) == 3  # the data file itself
    folder = tmp_path / "folder"
    _write(folder / "x.png", np.zeros((3, 3, 3), np.uint8))
    assert isinstance(open_source("auto", folder), ImageFolderSource)
    assert isinstance(open_source("folder", folder), ImageFolderSource)
    with pytest.raises(ValueError, match="folder, lmdb, auto"):
        open_source("zip", folder)


# -- in-memory sources -----------------------------------------------------------------------


def test_array_source():
    imgs = np.random.default_rng(0).integers(0, 256, (4, 5, 6, 3), dtype=np.uint8)
    src = ArraySource(imgs)
    assert len(src) == 4 and src.name(3) == "000003"
    np.testing.assert_array_equal(src.load(2), imgs[2])
    named = ArraySource(imgs, names=list("abcd"))
    assert named.name(-1) == "d"
    with pytest.raises(IndexError):
        src.load(4)
    with pytest.raises(ValueError, match="uint8"):
        ArraySource(imgs.astype(np.float32))
    with pytest.raises(ValueError, match="names"):
        ArraySource(imgs, names=["a"])


def test_lfw_faces():
    from skimage.data import lfw_subset

    src = lfw_faces()
    assert len(src) == 100 and isinstance(src, ImageSource)
    img = src.load(0)
    assert img.shape == (25, 25, 3) and img.dtype == np.uint8
    expected = np.rint(lfw_subset()[0] * 255).astype(np.uint8)
    np.testing.assert_array_equal(img[..., 1], expected)
    assert len(lfw_faces(10)) == 10
    with pytest.raises(ValueError):
        lfw_faces(101)


def test_image_sizes_are_an_int_or_h_w():
    from reconattack.errors import ConfigError
    from reconattack.utils.config import as_hw

    assert as_hw(112) == (112, 112) and as_hw([256, 128]) == (256, 128) and as_hw((32, 16)) == (32, 16)
    for bad in ([1, 2, 3], 0, [0, 4], "big", True):
        with pytest.raises(ConfigError, match=r"\[H, W\]"):
            as_hw(bad)
