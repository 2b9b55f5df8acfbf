"""Fuzzing the readers of untrusted bytes with hypothesis: the ``.bin`` reader
(:func:`~reconattack.data.faces.load_bin`), the SIFT cache reader
(:class:`~reconattack.data.sift.cache.SiftCache`) and the image decoder
(:func:`~reconattack.data.images.decode_image`).

Random bytes, truncations of valid files, byte flips and splices must end in the reader's
clear error (``ImageReadError``; ``BinFormatError`` or ``ImageReadError``; ``ValueError`` /
a recomputed SIFT entry) or a well-formed result — never another exception. Every test is
bounded (``max_examples``) and reproducible (``derandomize=True``, no example database).

The in-process tests check the error types; a crash (segfault, abort), a hang or a memory
bomb inside OpenCV or the unpickler would take pytest down with it, so
:func:`test_fuzz_batch_in_child_process` runs a seeded batch of corrupted inputs in a child
process (``tests/data/fuzz_cases.py``) and checks its exit status, peak memory and time.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from reconattack.data.faces import BinFormatError, load_bin
from reconattack.data.images import ImageReadError, decode_image
from reconattack.data.sift import cache as sift_cache
from reconattack.data.sift.cache import SiftCache
from reconattack.data.sift.extraction import DESC_DIM, extract
from tests.data.fuzz_cases import PICKLE_OPCODES, SIGNATURES, bin_files, image_encodings

ROOT = Path(__file__).resolve().parents[2]


def _fuzz_settings(n: int) -> settings:
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


CHEAP = _fuzz_settings(200)  # decoders of a few hundred bytes: well under 1 ms an example
MEDIUM = _fuzz_settings(150)  # a file write + load_bin
COSTLY = _fuzz_settings(100)  # a SIFT extraction and two cache reads

ENCODINGS = image_encodings()
BINS = bin_files()

# -- strategies ------------------------------------------------------------------------------


def _truncations(sources: dict) -> st.SearchStrategy[bytes]:
    """Strict prefixes (possibly empty) of one of ``sources``."""
    keys = sorted(sources)
    return st.sampled_from(keys).flatmap(
        lambda k: st.integers(0, len(sources[k]) - 1).map(lambda cut: sources[k][:cut])
    )


@st.composite
def _flipped(draw, sources: dict, region: int | None = None, may_cut: bool = True) -> bytes:
    """One of ``sources`` with 1–8 distinct bytes XOR-ed with a non-zero mask (within the
    first ``region`` bytes when given), then possibly truncated."""
    data = bytearray(sources[draw(st.sampled_from(sorted(sources)))])
    limit = len(data) if region is None else min(region, len(data))
    for pos in draw(st.lists(st.integers(0, limit - 1), min_size=1, max_size=8, unique=True)):
        data[pos] ^= draw(st.integers(1, 255))
    if may_cut and draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


@st.composite
def _spliced(draw, sources: dict) -> bytes:
    """One of ``sources`` with a random run inserted, a range deleted or a range repeated."""
    data = bytearray(sources[draw(st.sampled_from(sorted(sources)))])
    pos = draw(st.integers(0, len(data)))
    span = draw(st.integers(1, 64))
    how = draw(st.sampled_from(["insert", "delete", "repeat"]))
    if how == "insert":
        data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
    elif how == "delete":
        del data[pos : pos + span]
    else:
        data[pos:pos] = data[pos : pos + span]
    return bytes(data)


_signed_bytes = st.builds(
    lambda sig, tail: sig + tail,
    st.sampled_from(sorted(SIGNATURES.values())),
    st.binary(max_size=512),
)
fuzzed_images = st.one_of(
    st.binary(max_size=1024),
    _signed_bytes,
    _truncations(ENCODINGS),
    _flipped(ENCODINGS),
    _flipped(ENCODINGS, region=64),
    _spliced(ENCODINGS),
)

_opcode_soup = st.builds(
    lambda head, body: head + b"".join(body) + b".",
    st.sampled_from([b""] + [b"\x80" + bytes([p]) for p in range(6)]),
    st.lists(
        st.one_of(st.sampled_from(PICKLE_OPCODES), st.binary(min_size=1, max_size=4)), max_size=40
    ),
)

_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.integers(),
    st.floats(),
    st.binary(max_size=16),
    st.text(max_size=8),
    st.just(ENCODINGS["png"]),
)
_objects = st.recursive(
    _leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.tuples(inner, inner),
        st.dictionaries(st.text(max_size=3), inner, max_size=3),
    ),
    max_leaves=20,
)
#: arbitrary objects, and objects shaped like (image list, flag list) with odd members
_bin_like = st.one_of(
    _objects,
    st.tuples(
        st.lists(st.one_of(st.just(ENCODINGS["png"]), st.binary(max_size=8), _objects), max_size=6),
        st.lists(st.one_of(st.booleans(), st.integers(-2, 3), _objects), max_size=3),
    ),
)

# -- helpers ---------------------------------------------------------------------------------


def _check_rgb(img: np.ndarray) -> None:
    assert isinstance(img, np.ndarray) and img.dtype == np.uint8
    assert img.ndim == 3 and img.shape[2] == 3 and img.shape[0] > 0 and img.shape[1] > 0
    assert img.flags.c_contiguous


def _decode_or_clear_error(data: bytes) -> None:
    try:
        img = decode_image(data, "fuzz.img")
    except ImageReadError as exc:
        assert "fuzz.img" in str(exc)
        return
    _check_rgb(img)


@pytest.fixture(scope="module")
def bin_path(tmp_path_factory) -> Path:
    """One file, overwritten by each example."""
    return tmp_path_factory.mktemp("fuzz_bin") / "fuzz.bin"


def _load_bin_or_clear_error(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    try:
        images, is_same = load_bin(path)
    except (BinFormatError, ImageReadError) as exc:
        assert str(path) in str(exc)
        return
    assert images.dtype == np.uint8 and images.ndim == 4 and images.shape[3] == 3
    assert is_same.dtype == bool and len(images) == 2 * len(is_same) >= 2


# -- image decoder ---------------------------------------------------------------------------

#: a valid PNG whose IDAT length field says 3.5 GB (the input that found the chunk bomb)
PNG_BOMB = ENCODINGS["png"][:33] + (0xD30005C3).to_bytes(4, "big") + ENCODINGS["png"][37:]


@CHEAP
@given(data=st.one_of(st.binary(max_size=2048), _signed_bytes))
@example(data=b"")
@example(data=PNG_BOMB)
def test_decode_image_random_bytes(data):
    _decode_or_clear_error(data)


@CHEAP
@given(data=_truncations(ENCODINGS))
def test_decode_image_truncated(data):
    _decode_or_clear_error(data)


@CHEAP
@given(data=st.one_of(_flipped(ENCODINGS), _flipped(ENCODINGS, region=64)))
def test_decode_image_flipped_bytes(data):
    _decode_or_clear_error(data)


@CHEAP
@given(data=_spliced(ENCODINGS))
def test_decode_image_spliced(data):
    _decode_or_clear_error(data)


# -- .bin reader -----------------------------------------------------------------------------


@CHEAP
@given(data=st.one_of(st.binary(max_size=2048), _opcode_soup))
@example(data=b"\x80\x02]r\x00\xc2\xeb\x0b.")  # LONG_BINPUT 2e8: the memo bomb
@example(data=b"\x80\x04\x8e" + (2**40).to_bytes(8, "little") + b"x.")  # BINBYTES8 of 1 TB
def test_load_bin_random_bytes_and_opcodes(bin_path, data):
    _load_bin_or_clear_error(bin_path, data)


@MEDIUM
@given(data=_truncations(BINS))
def test_load_bin_truncated(bin_path, data):
    """A strict prefix of a pickle has no STOP opcode: always a BinFormatError."""
    bin_path.write_bytes(data)
    with pytest.raises(BinFormatError, match="not an insightface verification .bin"):
        load_bin(bin_path)


@MEDIUM
@given(data=st.one_of(_flipped(BINS), _spliced(BINS)))
def test_load_bin_corrupted(bin_path, data):
    _load_bin_or_clear_error(bin_path, data)


@MEDIUM
@given(obj=_bin_like, protocol=st.integers(0, 5))
@example(obj=([b"a", b"b"], [10**5000]), protocol=4)  # repr() of the flag raised ValueError
def test_load_bin_arbitrary_structures(bin_path, obj, protocol):
    _load_bin_or_clear_error(bin_path, pickle.dumps(obj, protocol=protocol))


@MEDIUM
@given(
    images=st.lists(
        st.one_of(fuzzed_images, st.sampled_from(sorted(ENCODINGS.values()))),
        min_size=2,
        max_size=4,
    )
)
def test_load_bin_fuzzed_images(bin_path, images):
    """Well-formed pickles holding corrupted images: the image's error names the pair (or a
    size mismatch between decodable images is a BinFormatError)."""
    images = images[: len(images) // 2 * 2]
    flags = [True] * (len(images) // 2)
    _load_bin_or_clear_error(bin_path, pickle.dumps((images, flags), protocol=2))


# -- SIFT cache reader -----------------------------------------------------------------------


def _sift_image(size: int = 64) -> np.ndarray:
    """A textured RGB image on which SIFT finds a few dozen keypoints."""
    img = cv2.resize(
        np.random.default_rng(1).integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8),
        (size, size),
        interpolation=cv2.INTER_NEAREST,
    )
    cv2.circle(img, (size // 3, size // 2), size // 6, (250, 40, 90), -1)
    return img


SIFT_IMAGE = _sift_image()
SIFT_XY, SIFT_DESC = extract(SIFT_IMAGE)
with tempfile.TemporaryDirectory() as _tmp:  # a valid entry, as the cache writes it
    _cache = SiftCache(_tmp)
    _cache.get(SIFT_IMAGE)
    SIFT_ENTRY = _cache.path(SIFT_IMAGE).read_bytes()
#: bytes before the keypoint data (header); the data is 8 + 128 bytes per keypoint
SIFT_HEADER = len(SIFT_ENTRY) - len(SIFT_XY) * (8 + DESC_DIM)
ENTRIES = {"entry": SIFT_ENTRY}


def test_sift_fixture_is_sound():
    assert len(SIFT_XY) >= 5 and SIFT_HEADER >= 16


@contextlib.contextmanager
def _sift_warnings():
    """Collect the WARNING records of the SIFT module's logger."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger(sift_cache.__name__)
    level = logger.level
    logger.setLevel(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


#: bytes that can never be a valid entry: prefixes, header corruption (magic, keypoint
#: count, descriptor size), trailing bytes
_bad_entries = st.one_of(
    _truncations(ENTRIES),
    _flipped(ENTRIES, region=16, may_cut=False),
    st.binary(min_size=1, max_size=64).map(lambda tail: SIFT_ENTRY + tail),
)


@CHEAP
@given(buf=_bad_entries)
def test_decode_entry_rejects_corrupt_entries(buf):
    with pytest.raises(ValueError):
        sift_cache._decode_entry(bytearray(buf))


@CHEAP
@given(
    buf=st.one_of(
        st.binary(max_size=1024),
        st.binary(
            min_size=len(SIFT_ENTRY) - SIFT_HEADER, max_size=len(SIFT_ENTRY) - SIFT_HEADER
        ).map(lambda body: SIFT_ENTRY[:SIFT_HEADER] + body),  # valid header, random data
        _flipped(ENTRIES),
        _spliced(ENTRIES),
    )
)
def test_decode_entry_arbitrary_bytes(buf):
    """ValueError, or arrays of the shapes the header declares — nothing else."""
    try:
        xy, desc = sift_cache._decode_entry(bytearray(buf))
    except ValueError:
        return
    assert xy.dtype == np.float32 and xy.ndim == 2 and xy.shape[1] == 2
    assert desc.dtype == np.uint8 and desc.shape == (len(xy), DESC_DIM)
    assert len(buf) == SIFT_HEADER + len(xy) * (8 + DESC_DIM)


@pytest.fixture(scope="module")
def sift_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz_sift")


@COSTLY
@given(fuzzed=st.one_of(st.binary(max_size=600), _bad_entries))
@example(fuzzed=b"")
def test_sift_cache_recomputes_fuzzed_entry(sift_root, fuzzed):
    """An entry overwritten with fuzzed bytes is reported, recomputed and rewritten: ``get``
    returns what a fresh extraction gives."""
    cache = SiftCache(sift_root)
    path = cache.path(SIFT_IMAGE)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(fuzzed)
    with _sift_warnings() as records:
        xy, desc = cache.get(SIFT_IMAGE)
    np.testing.assert_array_equal(xy, SIFT_XY)
    np.testing.assert_array_equal(desc, SIFT_DESC)
    assert records, "a corrupt SIFT cache entry was not reported"
    with _sift_warnings() as records:
        xy, desc = cache.get(SIFT_IMAGE)  # the rewritten entry is valid
    assert not records
    np.testing.assert_array_equal(xy, SIFT_XY)
    np.testing.assert_array_equal(desc, SIFT_DESC)


def test_sift_cache_detects_flipped_data_byte(tmp_path):
    cache = SiftCache(tmp_path)
    cache.get(SIFT_IMAGE)
    path = cache.path(SIFT_IMAGE)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # the last descriptor value
    path.write_bytes(bytes(data))
    _, desc = cache.get(SIFT_IMAGE)
    np.testing.assert_array_equal(desc, SIFT_DESC)


# -- crashes, hangs and memory bombs: a child process ----------------------------------------


def test_fuzz_batch_in_child_process():
    """~1,900 corrupted images and .bin files (tests/data/fuzz_cases.py, seeded) through
    decode_image and load_bin in a child: it must exit normally (a negative return code is
    a fatal signal, e.g. -11 for a segfault), finish in time, and stay under 1 GB of memory
    with no allocation failure behind any clear error."""
    paths = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths))  # this checkout first
    code = "import sys; from tests.data.fuzz_cases import main; sys.exit(main())"
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code, "0"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the fuzz batch hung: no result after {exc.timeout} s")
    lines = proc.stdout.strip().splitlines()
    summary = json.loads(lines[-1]) if lines else {}
    assert proc.returncode == 0, (
        f"fuzz batch exited with {proc.returncode}; summary {summary}; stderr tail:\n"
        + proc.stderr[-3000:]
    )
    assert not summary["defects"]
    assert summary["images"] >= 1000 and summary["bins"] >= 500
