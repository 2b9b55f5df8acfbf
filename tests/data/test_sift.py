"""SIFT extraction, dense maps and the sparse cache (reconattack.data.sift: extraction, maps, cache;
SPEC §2.1)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
import torch

from reconattack.data.images import resize
from reconattack.data.sift import cache as sift_cache
from reconattack.data.sift.cache import SiftCache
from reconattack.data.sift.extraction import extract
from reconattack.data.sift.maps import build_maps, to_map

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_sift.py"


def _rgb(name: str, size: int = 256) -> np.ndarray:
    img = np.asarray(getattr(skimage.data, name)())
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    return resize(np.ascontiguousarray(img[..., :3]), size)


@pytest.fixture(scope="module")
def real_images() -> list[np.ndarray]:
    return [_rgb(n) for n in ("astronaut", "coffee", "camera", "rocket")]


@pytest.fixture(scope="module")
def real_features(real_images):
    return [extract(img) for img in real_images]


def _desc(*rows: int) -> np.ndarray:
    """uint8 (len(rows), 128) descriptors, row i filled with rows[i]."""
    return np.array([[v] * 128 for v in rows], dtype=np.uint8)


# -- extract ---------------------------------------------------------------------------------


def test_extract_real_image(real_images):
    xy, desc = extract(real_images[0])
    assert xy.dtype == np.float32 and desc.dtype == np.uint8
    assert xy.ndim == 2 and xy.shape[1] == 2 and desc.shape == (len(xy), 128)
    assert len(xy) > 100
    assert (xy >= 0).all() and (xy < 256).all()
    assert desc.max() > 100  # real descriptor values, not normalised floats


def test_extract_no_keypoints():
    flat = np.full((256, 256, 3), 128, np.uint8)
    xy, desc = extract(flat)
    assert xy.shape == (0, 2) and xy.dtype == np.float32
    assert desc.shape == (0, 128) and desc.dtype == np.uint8
    for compress in (False, True):
        size = 128 if compress else 256
        assert torch.equal(to_map(xy, desc, 256, compress), torch.zeros(128, size, size))
        assert torch.equal(build_maps([xy], [desc], 256, compress), torch.zeros(1, 128, size, size))


def test_extract_rejects_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        extract(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        extract(np.zeros((8, 8), np.uint8))


def test_extract_threshold_changes_result(real_images):
    many, _ = extract(real_images[0], contrast_threshold=0.01)
    few, _ = extract(real_images[0], contrast_threshold=0.1)
    assert len(many) > len(few)


# -- to_map rules on hand-made keypoints -----------------------------------------------------


def test_placement_ceil_minus_one_and_clamp():
    xy = np.array([[0.5, 0.5], [3.0, 2.0], [4.2, 6.7], [7.5, 0.0], [8.0, 9.0]], np.float32)
    m = to_map(xy, _desc(10, 20, 30, 40, 255), size=8, compress=False)
    assert m.shape == (128, 8, 8) and m.dtype == torch.float32
    occupied = (m != 0).any(0)
    expected = {(0, 0): 10, (1, 2): 20, (6, 4): 30, (0, 7): 40, (7, 7): 255}
    # (row, col) = (ceil(y) - 1, ceil(x) - 1); y = 0 -> -1 is clamped to 0, x = 8 -> 7
    assert occupied.sum() == len(expected)
    for (r, c), v in expected.items():
        assert torch.equal(m[:, r, c], torch.full((128,), v / 127.5 - 1))


def test_value_scaling_and_empty_pixels():
    desc = np.zeros((1, 128), np.uint8)
    desc[0, :3] = [0, 255, 127]
    m = to_map(np.array([[1.0, 1.0]], np.float32), desc, size=4, compress=False)
    assert m[0, 0, 0] == -1.0 and m[1, 0, 0] == 1.0
    assert m[2, 0, 0] == pytest.approx(127 / 127.5 - 1)
    assert m[3:, 0, 0].eq(-1).all()
    assert m[:, 1:, :].eq(0).all() and m[:, :, 1:].eq(0).all()


def test_collision_first_keypoint_wins():
    xy = np.array([[2.5, 1.5], [2.1, 1.9], [2.9, 1.2]], np.float32)  # all at row 1, col 2
    m = to_map(xy, _desc(50, 60, 70), size=4, compress=False)
    assert (m != 0).any(0).sum() == 1
    assert torch.equal(m[:, 1, 2], torch.full((128,), 50 / 127.5 - 1))


def test_accepts_torch_inputs():
    xy = np.array([[1.5, 2.5], [3.5, 0.5]], np.float32)
    desc = _desc(1, 2)
    a = to_map(xy, desc, 4, False)
    b = to_map(torch.from_numpy(xy), torch.from_numpy(desc), 4, False)
    c = build_maps([torch.from_numpy(xy)], [torch.from_numpy(desc)], 4, False)[0]
    assert torch.equal(a, b) and torch.equal(a, c)


# block (0, 0) of an 8x8 grid gets pixels (1, 1) [kp 0], (0, 0) [kp 1, and kp 2 colliding];
# block (1, 2) gets only kp 3; kp 4 lands in block (0, 0) at pixel (1, 0)
_BLOCK_XY = np.array(
    [[2.0, 2.0], [1.0, 1.0], [0.5, 0.2], [5.0, 3.0], [0.7, 1.5]], np.float32
)  # (x, y)
_BLOCK_DESC = _desc(10, 20, 30, 40, 50)
_WINNERS_00 = {10, 20, 50}  # pixel winners of block (0, 0); kp 2 (30) lost its pixel to kp 1


def _block_value(m: torch.Tensor, r: int, c: int) -> int:
    return round((float(m[0, r, c]) + 1) * 127.5)


def test_compression_deterministic_first_placed():
    m = to_map(_BLOCK_XY, _BLOCK_DESC, size=8, compress=True)
    assert m.shape == (128, 4, 4)
    assert (m != 0).any(0).sum() == 2
    assert _block_value(m, 0, 0) == 10  # first placed, although (0, 0) is the top-left pixel
    assert _block_value(m, 1, 2) == 40
    b = build_maps([_BLOCK_XY], [_BLOCK_DESC], size=8, compress=True)[0]
    assert torch.equal(m, b)


@pytest.mark.parametrize("impl", ["to_map", "build_maps"])
def test_compression_random_choice(impl):
    def run(seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        if impl == "to_map":
            return to_map(_BLOCK_XY, _BLOCK_DESC, 8, True, generator=g)
        return build_maps([_BLOCK_XY], [_BLOCK_DESC], 8, True, generator=g)[0]

    seen = set()
    for seed in range(60):
        m = run(seed)
        assert (m != 0).any(0).sum() == 2
        assert _block_value(m, 1, 2) == 40
        v = _block_value(m, 0, 0)
        assert v in _WINNERS_00  # never the keypoint that lost its pixel (30)
        seen.add(v)
        assert torch.equal(m[:, 0, 0], torch.full((128,), v / 127.5 - 1))
    assert seen == _WINNERS_00  # every pixel winner gets chosen for some seed
    assert torch.equal(run(7), run(7))  # reproducible for a fixed seed


def test_compress_needs_even_size():
    with pytest.raises(ValueError, match="even"):
        to_map(_BLOCK_XY, _BLOCK_DESC, 7, True)
    with pytest.raises(ValueError, match="even"):
        build_maps([_BLOCK_XY], [_BLOCK_DESC], 7, True)


# -- build_maps == to_map on real images -----------------------------------------------------


@pytest.mark.parametrize("compress", [False, True])
def test_build_maps_matches_to_map(real_features, compress):
    flat = extract(np.full((256, 256, 3), 77, np.uint8))
    feats = [real_features[0], flat, *real_features[1:]]
    batched = build_maps([f[0] for f in feats], [f[1] for f in feats], 256, compress)
    size = 128 if compress else 256
    assert batched.shape == (len(feats), 128, size, size)
    assert batched.dtype == torch.float32 and batched.is_contiguous()
    for i, (xy, desc) in enumerate(feats):
        assert torch.equal(batched[i], to_map(xy, desc, 256, compress)), f"sample {i}"
    assert batched[1].eq(0).all()
    assert batched[0].ne(0).any(0).sum() > 100


def test_build_maps_random_is_valid_and_reproducible(real_features):
    xys, descs = [f[0] for f in real_features], [f[1] for f in real_features]
    det = build_maps(xys, descs, 256, True)
    full = build_maps(xys, descs, 256, False)
    a = build_maps(xys, descs, 256, True, generator=torch.Generator().manual_seed(3))
    b = build_maps(xys, descs, 256, True, generator=torch.Generator().manual_seed(3))
    c = build_maps(xys, descs, 256, True, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c) and not torch.equal(a, det)
    assert torch.equal(a.ne(0).any(1), det.ne(0).any(1))  # same blocks occupied
    # each block's choice is one of the block's pixel values of the uncompressed map
    blocks = full.unflatten(2, (128, 2)).unflatten(4, (128, 2))  # (B, 128, 128, 2, 128, 2)
    blocks = blocks.permute(0, 2, 4, 3, 5, 1).reshape(len(xys), 128, 128, 4, 128)
    match = (blocks == a.permute(0, 2, 3, 1).unsqueeze(3)).all(-1)  # (B, 128, 128, 4)
    occupied = det.ne(0).any(1)
    assert match.any(-1)[occupied].all()


def test_build_maps_empty_batch_and_device():
    assert build_maps([], [], 256, True).shape == (0, 128, 128, 128)
    xy, desc = _BLOCK_XY, _BLOCK_DESC
    assert build_maps([xy], [desc], 8, False, device="cpu").device.type == "cpu"


# -- cache -----------------------------------------------------------------------------------


def test_cache_hit_does_not_recompute(tmp_path, real_images, monkeypatch):
    cache = SiftCache(tmp_path)
    img = real_images[1]
    assert img not in cache
    xy, desc = cache.get(img)
    assert img in cache
    ref_xy, ref_desc = extract(img)
    np.testing.assert_array_equal(xy, ref_xy)
    np.testing.assert_array_equal(desc, ref_desc)

    calls = []
    monkeypatch.setattr(sift_cache, "extract", lambda *a, **k: calls.append(1) or ref)
    ref = (ref_xy, ref_desc)
    xy2, desc2 = cache.get(img.copy())  # same content, another array
    assert calls == []
    assert xy2.dtype == np.float32 and desc2.dtype == np.uint8
    assert xy2.flags.writeable and desc2.flags.writeable
    np.testing.assert_array_equal(xy2, ref_xy)
    np.testing.assert_array_equal(desc2, ref_desc)


def test_cache_settings_and_size(tmp_path, real_images):
    a, b = SiftCache(tmp_path, 0.03), SiftCache(tmp_path, 0.04)
    img = real_images[0]
    a.get(img)
    assert img in a and img not in b
    xy_b, _ = b.get(img)
    assert len(xy_b) != len(a.get(img)[0])
    assert a.path(img) != b.path(img) and a.dir != b.dir
    assert (a.dir / "settings.json").is_file()
    files = [p for p in tmp_path.rglob("*.sift")]
    assert len(files) == 2
    for f in files:
        assert f.stat().st_size < 150_000
    assert a.path(img).stat().st_size == 20 + 140 * len(a.get(img)[0])
    assert not [p for p in tmp_path.rglob("*.tmp")]  # no temporary files left


def test_cache_keeps_each_keypoints_strength(tmp_path, real_images):
    """The cache stores OpenCV's detector response per keypoint (``defence.select=response``),
    read back as the detector gave it, in keypoint order."""
    img = real_images[1]
    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    kps, _ = cv2.SIFT_create(contrastThreshold=0.03).detectAndCompute(grey, None)
    cache = SiftCache(tmp_path)
    for _ in range(2):  # computed, then read from the file
        xy, desc, strength = cache.get(img, with_strength=True)
        np.testing.assert_array_equal(strength, np.array([k.response for k in kps], np.float32))
        assert strength.shape == (len(xy),) and len(desc) == len(xy)


def test_cache_corrupt_entry_recomputed(tmp_path, real_images):
    cache = SiftCache(tmp_path)
    img = real_images[2]
    ref_xy, ref_desc = cache.get(img)
    path = cache.path(img)
    whole = path.read_bytes()
    flipped = bytearray(whole)
    flipped[-1] ^= 0x01  # one bit of a descriptor: same size, valid header, wrong checksum
    for garbage in (b"", b"junk", whole[:-5], bytes(flipped)):
        path.write_bytes(garbage)
        xy, desc = cache.get(img)
        np.testing.assert_array_equal(xy, ref_xy)
        np.testing.assert_array_equal(desc, ref_desc)
        assert path.stat().st_size == 20 + 140 * len(ref_xy)  # rewritten


def test_cache_fill_and_zero_keypoints(tmp_path, real_images):
    cache = SiftCache(tmp_path)
    flat = np.full((64, 64, 3), 9, np.uint8)
    assert cache.fill([real_images[0], real_images[3], flat]) == 3
    assert cache.fill([real_images[0], flat]) == 0
    xy, desc = cache.get(flat)
    assert xy.shape == (0, 2) and desc.shape == (0, 128)
    read_only = real_images[0].copy()
    read_only.flags.writeable = False  # e.g. ArraySource.load views
    assert read_only in cache and len(cache.get(read_only)[0]) > 0
    os.remove(cache.path(real_images[3]))
    assert cache.fill(real_images[:1] + real_images[3:]) == 1


# -- official algorithm ----------------------------------------------------------------------


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_sift", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_official_reference_agrees_with_ours(real_images):
    bench = _bench_module()
    img = real_images[0]
    ref = bench.official_reference_map(img)
    assert ref.shape == (128, 128, 128)
    ours = to_map(*extract(img), 256, compress=True).double()
    assert torch.equal(torch.from_numpy(ref != 0), ours != 0)
    assert np.abs(ref - ours.numpy()).max() < 1e-6
    assert bench.self_check(img) < 1e-6
