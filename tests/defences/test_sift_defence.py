"""Each SIFT defence's transformation on made keypoints (reconattack/defences/sift.py)."""

import numpy as np
import pytest

from reconattack.defences.sift import SiftDefence, sift_defence
from reconattack.errors import ConfigError


def made(n=400, seed=0):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 64, (n, 2)).astype(np.float32)
    desc = rng.integers(0, 256, (n, 128)).astype(np.uint8)
    strength = rng.random(n).astype(np.float32)
    return xy, desc, strength


@pytest.mark.parametrize("keep", [1.0, 0.5, 0.25, 0.1, 0.001])
def test_keep_random_shares_that_fraction_in_the_extractors_order(keep):
    xy, desc, s = made()
    out_xy, out_desc = SiftDefence(keep=keep)(xy, desc, s, np.random.default_rng(1))
    assert len(out_xy) == len(out_desc) == int(np.floor(keep * 400 + 0.5))
    # the kept rows are rows of the input, in its order
    rows = [int(np.flatnonzero((xy == p).all(1))[0]) for p in out_xy]
    assert rows == sorted(rows)
    np.testing.assert_array_equal(out_desc, desc[rows])


def test_keep_random_is_uniform_and_seeded():
    xy, desc, s = made(n=100)
    d = SiftDefence(keep=0.3)
    counts = np.zeros(100)
    for i in range(2000):
        kept, _ = d(xy, desc, s, np.random.default_rng(i))
        counts[[int(np.flatnonzero((xy == p).all(1))[0]) for p in kept]] += 1
    # each keypoint kept with probability 0.3: 600 of 2000 draws, binomial std ~20.5
    assert abs(counts.mean() - 600) < 1e-9 and counts.min() > 600 - 5 * 20.5 and counts.max() < 600 + 5 * 20.5
    a, _ = d(xy, desc, s, np.random.default_rng(7))
    b, _ = d(xy, desc, s, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)


def test_keep_response_shares_the_strongest():
    xy, desc, s = made()
    out_xy, _ = SiftDefence(keep=0.25, select="response")(xy, desc, s, np.random.default_rng(0))
    strongest = np.sort(np.argsort(-s)[:100])
    np.testing.assert_array_equal(out_xy, xy[strongest])
    with pytest.raises(ValueError, match="strength"):
        SiftDefence(keep=0.25, select="response")(xy, desc, None)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 6, 8])
def test_descriptor_bits_quantise_to_mid_levels(bits):
    xy, desc, s = made()
    _, q = SiftDefence(descriptor_bits=bits)(xy, desc, s)
    step = 2 ** (8 - bits)
    assert len(np.unique(q)) <= 2 ** bits
    assert np.abs(q.astype(int) - desc.astype(int)).max() <= step // 2
    if bits < 8:  # every value the middle of its level
        assert set(np.unique(q % step)) == {step // 2}
        np.testing.assert_array_equal(q // step, desc // step)
    else:
        np.testing.assert_array_equal(q, desc)


def test_descriptor_noise_has_its_standard_deviation():
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 64, (2000, 2)).astype(np.float32)
    desc = rng.integers(60, 196, (2000, 128)).astype(np.uint8)  # far from the clipping bounds
    _, noisy = SiftDefence(descriptor_noise=8.0)(xy, desc, None, np.random.default_rng(4))
    diff = noisy.astype(np.float64) - desc
    assert abs(diff.mean()) < 0.05 and abs(diff.std() - np.sqrt(8.0 ** 2 + 1 / 12)) < 0.05  # + rounding
    _, clipped = SiftDefence(descriptor_noise=50.0)(xy, np.zeros_like(desc), None, np.random.default_rng(4))
    assert clipped.min() == 0 and clipped.dtype == np.uint8


def test_withheld_coordinates_place_each_descriptor_at_its_nearest_reference():
    rng = np.random.default_rng(5)
    ref_xy = rng.uniform(0, 64, (30, 2)).astype(np.float32)
    ref_desc = rng.integers(0, 256, (30, 128)).astype(np.uint8)
    pick = rng.integers(0, 30, 50)
    desc = np.clip(ref_desc[pick].astype(int) + rng.integers(-3, 4, (50, 128)), 0, 255).astype(np.uint8)
    xy = rng.uniform(0, 64, (50, 2)).astype(np.float32)  # the true positions: never shared
    out_xy, out_desc = SiftDefence(coordinates="withheld")(xy, desc, None, reference=(ref_xy, ref_desc))
    np.testing.assert_array_equal(out_xy, ref_xy[pick])
    np.testing.assert_array_equal(out_desc, desc)
    # brute force, another reference: the nearest by Euclidean distance
    other = rng.integers(0, 256, (40, 128)).astype(np.uint8)
    out_xy, _ = SiftDefence(coordinates="withheld")(xy, desc, None, reference=(ref_xy[:40].repeat(2, 0)[:40], other))
    want = [np.argmin(((other.astype(float) - d.astype(float)) ** 2).sum(1)) for d in desc]
    np.testing.assert_array_equal(out_xy, ref_xy[:40].repeat(2, 0)[:40][want])
    empty = SiftDefence(coordinates="withheld")(xy, desc, None, reference=(np.zeros((0, 2)), np.zeros((0, 128))))
    assert empty[0].shape == (0, 2) and empty[1].shape == (0, 128)


def test_positions_only_shares_positions_and_a_constant_descriptor():
    xy, desc, s = made()
    out_xy, out_desc = SiftDefence(positions_only=True)(xy, desc, s)
    np.testing.assert_array_equal(out_xy, xy)
    assert (out_desc == 255).all() and out_desc.shape == desc.shape


def test_config_and_refusals():
    assert sift_defence({"name": "none"}) is None and sift_defence(None) is None
    assert sift_defence({"name": "sift", "keep": 1.0, "labels": {}, "order": {}}) is None  # changes nothing
    d = sift_defence({"name": "sift", "keep": 0.5, "descriptor_bits": 4, "labels": {"keep": "x"}})
    assert d == SiftDefence(keep=0.5, descriptor_bits=4) and d.describe() == "keep=0.5, descriptor_bits=4"
    for bad in ({"keep": 0.0}, {"keep": 1.5}, {"select": "best"}, {"descriptor_bits": 0}, {"descriptor_bits": 9},
                {"descriptor_noise": -1.0}, {"coordinates": "blurred"}, {"coordinates": "withheld", "positions_only": True},
                {"reference_images": 0}, {"kep": 0.5}):
        with pytest.raises(ConfigError):
            sift_defence({"name": "sift", **bad})
