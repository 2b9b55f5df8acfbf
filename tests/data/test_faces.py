"""Face data (reconattack.data.faces): safe .bin loading, identity folders, demo data, pairs.

Fixtures are written to tmp_path; no real dataset is needed.
"""

from __future__ import annotations

import builtins
import os
import pickle
import struct
import warnings

import cv2
import numpy as np
import pytest

from reconattack.data.faces import (
    BinFormatError,
    IdentityFolderSource,
    _restricted_loads,
    build_pairs,
    digits_faces,
    load_bin,
    make_bin,
)
from reconattack.data.images import DataNotFoundError, ImageReadError, SmallImageWarning


def _images(n: int = 6, size: int = 32) -> np.ndarray:
    """n distinct uint8 (size, size, 3) RGB images: the astronaut and synthetic patterns."""
    from skimage.data import astronaut

    out = np.empty((n, size, size, 3), np.uint8)
    out[0] = cv2.resize(astronaut(), (size, size), interpolation=cv2.INTER_AREA)
    yy, xx = np.mgrid[0:size, 0:size]
    for k in range(1, n):
        out[k, ..., 0] = (xx * (k + 3)) % 256
        out[k, ..., 1] = (yy * 7 + 31 * k) % 256
        out[k, ..., 2] = ((xx + yy) * k) % 256
    return out


def _png(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


def _write_pickle(path, obj, protocol: int = 2):
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


def _py2_pickle(bins: list[bytes], issame: list[bool]) -> bytes:
    """A pickle as Python 2 writes it (protocol 2, image bytes as BINSTRING str objects)."""
    out = [b"\x80\x02("]
    for b in bins:
        out.append(b"T" + struct.pack("<I", len(b)) + b)
    out.append(b"l(")
    out.extend(b"\x88" if s else b"\x89" for s in issame)
    out.append(b"l\x86.")
    return b"".join(out)


# -- load_bin: valid files -------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 0, 1, 4, 5])
def test_bin_round_trip(tmp_path, protocol):
    imgs = _images(6)
    flags = [True, False, True]
    path = make_bin(tmp_path / f"p{protocol}.bin", imgs, flags, protocol=protocol)
    images, is_same = load_bin(path)
    assert images.dtype == np.uint8 and images.shape == (6, 32, 32, 3)
    assert is_same.dtype == bool and is_same.shape == (3,)
    np.testing.assert_array_equal(images, imgs)  # PNG is lossless, RGB order kept
    np.testing.assert_array_equal(is_same, flags)


def test_bin_protocol2_uses_codecs_encode(tmp_path):
    """Insightface-style (Python 3, protocol 2) files store bytes via _codecs.encode."""
    path = make_bin(tmp_path / "a.bin", _images(2), [True])
    assert b"_codecs" in path.read_bytes()
    assert load_bin(path)[1].tolist() == [True]


def test_bin_python2_pickle(tmp_path):
    """Python-2 pickles (bytes as BINSTRING, as the original insightface files) load too."""
    imgs = _images(4)
    path = tmp_path / "py2.bin"
    path.write_bytes(_py2_pickle([_png(x) for x in imgs], [False, True]))
    images, is_same = load_bin(path)
    np.testing.assert_array_equal(images, imgs)
    assert is_same.tolist() == [False, True]


def test_bin_int_flags_and_tuples(tmp_path):
    imgs = _images(4)
    path = _write_pickle(tmp_path / "i.bin", (tuple(_png(x) for x in imgs), [1, 0]), protocol=4)
    images, is_same = load_bin(path)
    assert is_same.dtype == bool and is_same.tolist() == [True, False]
    np.testing.assert_array_equal(images, imgs)


def test_bin_jpeg_images(tmp_path):
    imgs = _images(2, size=112)
    bins = []
    for x in imgs:
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(x, cv2.COLOR_RGB2BGR))
        assert ok
        bins.append(buf.tobytes())
    images, _ = load_bin(_write_pickle(tmp_path / "j.bin", (bins, [True])))
    assert images.shape == (2, 112, 112, 3)
    assert np.abs(images.astype(int) - imgs.astype(int)).mean() < 12  # lossy, but close


def test_bin_max_pairs(tmp_path):
    imgs = _images(6)
    path = make_bin(tmp_path / "m.bin", imgs, [True, False, True])
    images, is_same = load_bin(path, max_pairs=2)
    assert images.shape == (4, 32, 32, 3) and is_same.tolist() == [True, False]
    np.testing.assert_array_equal(images, imgs[:4])
    images, is_same = load_bin(path, max_pairs=10)  # more than available: all
    assert images.shape[0] == 6 and is_same.shape == (3,)
    with pytest.raises(ValueError, match="max_pairs"):
        load_bin(path, max_pairs=0)


def test_bin_max_pairs_skips_decoding(tmp_path):
    """Only the requested pairs are decoded (a bad image later on is not touched)."""
    imgs = _images(2)
    bins = [_png(imgs[0]), _png(imgs[1]), b"not an image", b"neither"]
    path = _write_pickle(tmp_path / "s.bin", (bins, [True, False]))
    images, _ = load_bin(path, max_pairs=1)
    np.testing.assert_array_equal(images, imgs)


def test_bin_size(tmp_path):
    imgs = _images(4, size=32)
    path = make_bin(tmp_path / "r.bin", imgs, [True, False])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # downscaling does not warn
        images, _ = load_bin(path, size=16)
    assert images.shape == (4, 16, 16, 3) and images.dtype == np.uint8
    expected = cv2.resize(imgs[1], (16, 16), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(images[1], expected)
    with pytest.warns(SmallImageWarning) as rec:  # upscaling warns once for the file
        images, _ = load_bin(path, size=64)
    assert len(rec) == 1 and str(path) in str(rec[0].message)
    assert images.shape == (4, 64, 64, 3)
    images, _ = load_bin(path, size=32)  # already that size
    np.testing.assert_array_equal(images, imgs)


def test_bin_mixed_sizes(tmp_path):
    a, b = _images(2, size=32)
    small = cv2.resize(b, (20, 20))
    path = _write_pickle(tmp_path / "x.bin", ([_png(a), _png(small)], [True]))
    with pytest.raises(BinFormatError, match="same size"):
        load_bin(path)
    with pytest.warns(SmallImageWarning):
        images, _ = load_bin(path, size=32)  # resized to a common size: accepted
    assert images.shape == (2, 32, 32, 3)


# -- load_bin: refused and invalid files ------------------------------------------------------


class _Exec:
    """Pickles to builtins.exec(code): creates the marker file if ever unpickled plainly."""

    def __init__(self, marker) -> None:
        self.code = f"open({str(marker)!r}, 'w').close()"

    def __reduce__(self):
        return (builtins.exec, (self.code,))


class _System:
    def __init__(self, marker) -> None:
        self.cmd = f"touch {marker}"

    def __reduce__(self):
        return (os.system, (self.cmd,))


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_bin_malicious_exec_refused(tmp_path, protocol):
    marker = tmp_path / "pwned"
    imgs = _images(2)
    payload = ([_png(imgs[0]), _Exec(marker)], [True])
    path = _write_pickle(tmp_path / "evil.bin", payload, protocol=protocol)
    with pytest.raises(BinFormatError, match=r"refused to load global .*exec") as exc:
        load_bin(path)
    assert str(path) in str(exc.value)
    assert not marker.exists()
    # sanity: the payload is real — a plain pickle.loads would have run it
    pickle.loads(path.read_bytes())
    assert marker.exists()


def test_bin_malicious_system_refused(tmp_path):
    marker = tmp_path / "pwned_system"
    path = _write_pickle(tmp_path / "evil.bin", (_System(marker), [True]))
    with pytest.raises(BinFormatError, match=r"refused to load global \w+\.system"):
        load_bin(path)
    assert not marker.exists()


def test_bin_eval_refused(tmp_path):
    path = _write_pickle(tmp_path / "eval.bin", ([builtins.eval, b"x"], [True]), protocol=4)
    with pytest.raises(BinFormatError, match=r"refused to load global builtins\.eval"):
        load_bin(path)


def test_codecs_encode_alone_is_accepted(tmp_path):
    data = pickle.dumps(b"\x00\xff binary \x89PNG", protocol=2)
    assert b"_codecs" in data and b"encode" in data
    assert _restricted_loads(data) == b"\x00\xff binary \x89PNG"
    # via load_bin: the global is admitted, the structure is what fails
    path = tmp_path / "bytes.bin"
    path.write_bytes(data)
    with pytest.raises(BinFormatError, match="not an insightface verification .bin") as exc:
        load_bin(path)
    assert "refused" not in str(exc.value)


def test_codecs_encode_only_latin1():
    import _codecs

    class _Rot13:
        def __reduce__(self):
            return (_codecs.encode, ("abc", "rot13"))

    with pytest.raises(BinFormatError, match="latin1"):
        _restricted_loads(pickle.dumps(_Rot13(), protocol=2))


def test_bin_dict_refused(tmp_path):
    path = _write_pickle(tmp_path / "d.bin", {"bins": [b"a", b"b"], "issame": [True]})
    with pytest.raises(BinFormatError, match="expected \\(list of image bytes.*got a dict"):
        load_bin(path)


@pytest.mark.parametrize(
    ("obj", "phrase"),
    [
        (([b"a", b"b", b"c"], [True]), "3 images for 1 is-same flags"),
        (([b"a", b"b", b"c", b"d"], [True]), "4 images for 1 is-same flags"),
        (([b"a", b"b"], [True, False]), "2 images for 2 is-same flags"),
        (([], []), "no pairs"),
        (([b"a", "b"], [True]), "image entry 1 of type str"),
        (([b"a", b"b"], [2]), "is-same flag 0 = 2"),
        (([b"a", b"b"], [None]), "is-same flag 0 = None"),
        (([b"a", b"b"], "1"), "as the is-same list"),
        ((b"ab", [True]), "as the image list"),
        (([b"a", b"b"], [True], 1), "a tuple of 3 items"),
    ],
)
def test_bin_bad_structure(tmp_path, obj, phrase):
    path = _write_pickle(tmp_path / "bad.bin", obj, protocol=4)
    with pytest.raises(BinFormatError) as exc:
        load_bin(path)
    msg = str(exc.value)
    assert str(path) in msg and "not an insightface verification .bin" in msg
    assert phrase in msg


def test_bin_garbage_empty_truncated(tmp_path):
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(BinFormatError, match="not an insightface verification .bin"):
        load_bin(garbage)
    text = tmp_path / "text.bin"
    text.write_text("hello, this is not a pickle\n")
    with pytest.raises(BinFormatError, match="truncated or corrupt"):
        load_bin(text)
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    with pytest.raises(BinFormatError, match="empty"):
        load_bin(empty)
    full = make_bin(tmp_path / "full.bin", _images(4), [True, False]).read_bytes()
    for cut in (len(full) // 2, len(full) - 1):
        trunc = tmp_path / f"trunc{cut}.bin"
        trunc.write_bytes(full[:cut])
        with pytest.raises(BinFormatError, match="truncated or corrupt") as exc:
            load_bin(trunc)
        assert str(trunc) in str(exc.value)


def test_bin_huge_or_deep_flag_is_a_format_error(tmp_path):
    """Found by fuzzing: the error message's repr of a bad is-same flag raised ValueError
    (int beyond CPython's 4300-digit str conversion limit) or RecursionError (deeply nested
    list) instead of BinFormatError."""
    huge = _write_pickle(tmp_path / "huge.bin", ([b"a", b"b"], [10**5000]), protocol=4)
    with pytest.raises(BinFormatError, match="is-same flag 0 = an int of 16610 bits"):
        load_bin(huge)
    depth = 200_000  # far beyond the recursion limit; the unpickler builds it without recursing
    deep_list = b"]" * depth + b"a" * (depth - 1)
    raw = b"\x80\x04]C\x01aaC\x01ba]" + deep_list + b"a\x86."  # ([b"a", b"b"], [[[...]]])
    deep = tmp_path / "deep.bin"
    deep.write_bytes(raw)
    with pytest.raises(BinFormatError, match="is-same flag 0 = a list of 1 items"):
        load_bin(deep)


@pytest.mark.parametrize("op", [b"r", b"q"])  # LONG_BINPUT (4-byte index), BINPUT (1 byte)
def test_bin_memo_index_bomb_refused(tmp_path, op):
    """Found by fuzzing: one flipped byte in a memo index made CPython's unpickler grow and
    zero-fill its memo table to 16 × index bytes (a 9-byte file cost 3 GB and 5 s at index
    2e8; an out-of-memory kill further up). The opcodes are checked before unpickling."""
    index = struct.pack("<I", 200_000_000) if op == b"r" else b"\xff"
    path = tmp_path / "memo.bin"
    path.write_bytes(b"\x80\x02]" + op + index + b".")
    with pytest.raises(BinFormatError, match="truncated or corrupt.*memo index"):
        load_bin(path)
    # the memo numbering that picklers write (0, 1, 2, ...) is untouched
    imgs = _images(4)
    for protocol in range(6):
        good = make_bin(tmp_path / f"p{protocol}.bin", imgs, [True, False], protocol=protocol)
        np.testing.assert_array_equal(load_bin(good)[0], imgs)


def test_bin_oversized_length_refused(tmp_path):
    """A counted bytes opcode that claims more than the file holds is refused before the
    unpickler allocates it."""
    path = tmp_path / "len.bin"
    path.write_bytes(b"\x80\x04\x8e" + struct.pack("<Q", 2**40) + b"x.")  # BINBYTES8
    with pytest.raises(BinFormatError, match="truncated or corrupt"):
        load_bin(path)


def test_bin_undecodable_image(tmp_path):
    imgs = _images(4)
    bins = [_png(x) for x in imgs]
    bins[3] = b"\x89PNG\r\n\x1a\n but not really"
    path = _write_pickle(tmp_path / "u.bin", (bins, [True, False]))
    with pytest.raises(ImageReadError, match=r"image 3 \(pair 1\)") as exc:
        load_bin(path)
    assert str(path) in str(exc.value)


def test_bin_missing(tmp_path):
    with pytest.raises(DataNotFoundError, match="nope.bin does not exist"):
        load_bin(tmp_path / "nope.bin")
    with pytest.raises(DataNotFoundError, match="is not a file"):
        load_bin(tmp_path)


def test_make_bin_checks(tmp_path):
    with pytest.raises(ValueError, match="2 images per pair"):
        make_bin(tmp_path / "a.bin", _images(3), [True])
    with pytest.raises(ValueError, match="uint8"):
        make_bin(tmp_path / "a.bin", _images(2).astype(np.float32), [True])


# -- IdentityFolderSource ---------------------------------------------------------------------


def _write_png(path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_png(rgb))


def test_identity_folder_nested(tmp_path):
    imgs = _images(6, size=16)
    layout = {
        "bob/2.png": 0,
        "bob/1.png": 1,
        "alice/z.png": 2,
        "alice/sub/a.png": 3,
        "alice-b/x.png": 4,  # '-' sorts before '/': ordering is by (identity, file)
        "carol/c.png": 5,
    }
    for rel, k in layout.items():
        _write_png(tmp_path / rel, imgs[k])
    (tmp_path / "bob" / "notes.txt").write_text("not an image")
    (tmp_path / "bob" / ".hidden.png").write_bytes(_png(imgs[0]))
    (tmp_path / "empty_identity").mkdir()
    (tmp_path / ".cache").mkdir()
    _write_png(tmp_path / ".cache" / "x.png", imgs[0])
    (tmp_path / "README.md").write_text("ignored")

    src = IdentityFolderSource(tmp_path)
    assert not src.flat
    assert src.identities == ["alice", "alice-b", "bob", "carol"]
    assert src.files == [
        "alice/sub/a.png",
        "alice/z.png",
        "alice-b/x.png",
        "bob/1.png",
        "bob/2.png",
        "carol/c.png",
    ]
    assert src.labels.dtype == np.int64
    assert src.labels.tolist() == [0, 0, 1, 2, 2, 3]
    assert len(src) == 6 and src.name(-1) == "carol/c.png"
    for i, rel in enumerate(src.files):
        out = src.load(i)
        assert out.dtype == np.uint8 and out.shape == (16, 16, 3)
        np.testing.assert_array_equal(out, imgs[layout[rel]])
    with pytest.raises(IndexError):
        src.name(6)
    assert "4 identities" in repr(src)


def test_identity_folder_flat(tmp_path):
    imgs = _images(3, size=8)
    for name, k in (("b.png", 0), ("a.png", 1), ("c.PNG", 2)):
        _write_png(tmp_path / name, imgs[k])
    (tmp_path / "empty_sub").mkdir()  # a sub-folder without images does not count
    src = IdentityFolderSource(tmp_path)
    assert src.flat and src.identities == []
    assert src.files == ["a.png", "b.png", "c.PNG"]
    assert src.labels.dtype == np.int64 and src.labels.tolist() == [-1, -1, -1]
    np.testing.assert_array_equal(src.load(0), imgs[1])


def test_identity_folder_extensions(tmp_path):
    imgs = _images(2, size=8)
    _write_png(tmp_path / "p" / "a.png", imgs[0])
    (tmp_path / "q").mkdir()
    ok, buf = cv2.imencode(".jpg", imgs[1])
    (tmp_path / "q" / "b.jpg").write_bytes(buf.tobytes())
    assert IdentityFolderSource(tmp_path, extensions=["png"]).identities == ["p"]
    assert IdentityFolderSource(tmp_path).identities == ["p", "q"]


def test_identity_folder_errors(tmp_path):
    with pytest.raises(DataNotFoundError, match="does not exist; expected one sub-folder per"):
        IdentityFolderSource(tmp_path / "missing")
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(DataNotFoundError, match="is not a folder"):
        IdentityFolderSource(tmp_path / "file.png")
    empty = tmp_path / "empty"
    (empty / "id1").mkdir(parents=True)
    (empty / "notes.txt").write_text("x")
    with pytest.raises(DataNotFoundError, match="no image files found"):
        IdentityFolderSource(empty)
    mixed = tmp_path / "mixed"
    _write_png(mixed / "a.png", _images(1, 8)[0])
    _write_png(mixed / "id" / "b.png", _images(1, 8)[0])
    with pytest.raises(DataNotFoundError, match="mixed layouts"):
        IdentityFolderSource(mixed)


# -- digits_faces -----------------------------------------------------------------------------


def test_digits_faces():
    images, labels = digits_faces()
    assert images.dtype == np.uint8 and images.shape == (1797, 32, 32, 3)
    assert labels.dtype == np.int64 and labels.shape == (1797,)
    assert set(labels.tolist()) == set(range(10))
    assert images.min() == 0 and images.max() == 255
    np.testing.assert_array_equal(images[..., 0], images[..., 2])  # grey, replicated
    again, labels2 = digits_faces()
    np.testing.assert_array_equal(images, again)
    np.testing.assert_array_equal(labels, labels2)
    small, _ = digits_faces(size=8)  # at the native size: just the scaled values
    from sklearn.datasets import load_digits

    expected = np.rint(load_digits().images * (255.0 / 16.0)).astype(np.uint8)
    assert np.abs(small[..., 0].astype(int) - expected).max() <= 1
    assert digits_faces(size=12)[0].shape == (1797, 12, 12, 3)
    with pytest.raises(ValueError):
        digits_faces(size=0)


# -- build_pairs ------------------------------------------------------------------------------


def test_build_pairs_basic():
    rng = np.random.default_rng(1)
    gallery = rng.integers(0, 5, 40)
    query = rng.integers(0, 5, 60)
    g, q, same = build_pairs(gallery, query, seed=3)
    assert g.dtype == np.int64 and q.dtype == np.int64 and same.dtype == bool
    assert len(g) == len(q) == len(same) == 2 * len(gallery)  # every label has queries
    np.testing.assert_array_equal(g, np.repeat(np.arange(40), 2))
    np.testing.assert_array_equal(same, np.tile([True, False], 40))
    assert (gallery[g[same]] == query[q[same]]).all()
    assert (gallery[g[~same]] != query[q[~same]]).all()
    # deterministic given the seed, different for another seed
    for a, b in zip((g, q, same), build_pairs(gallery, query, seed=3)):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(q, build_pairs(gallery, query, seed=4)[1])
    # queries are drawn from the whole matching set, not always the first one
    assert len(set(q[same & (gallery[g] == gallery[0])].tolist())) > 1


def test_build_pairs_missing_identity_warns():
    gallery = np.array([0, 1, 2, 2, 1])
    query = np.array([1, 1, 0, 3])
    with pytest.warns(UserWarning, match="2 of 5 gallery images have no query") as rec:
        g, q, same = build_pairs(gallery, query)
    assert len(rec) == 1
    assert g.tolist() == [0, 0, 1, 1, 2, 3, 4, 4]
    assert same.tolist() == [True, False, True, False, False, False, True, False]
    assert (gallery[g[same]] == query[q[same]]).all()
    assert (gallery[g[~same]] != query[q[~same]]).all()


def test_build_pairs_errors():
    with pytest.raises(ValueError, match="no genuine pair"):
        build_pairs([0, 1], [2, 3])
    with pytest.raises(ValueError, match="unknown identities"):
        build_pairs([-1, 0], [0, 1])
    with pytest.raises(ValueError, match="unknown identities"):
        build_pairs([0, 1], [0, -1])
    with pytest.raises(ValueError, match="single identity"):
        build_pairs([0, 1], [0, 0])
    with pytest.raises(ValueError, match="non-empty"):
        build_pairs([], [0, 1])
    with pytest.raises(ValueError, match="integers"):
        build_pairs([0.0, 1.0], [0, 1])
