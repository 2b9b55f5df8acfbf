"""What training saw of its keypoints (reconattack.data.sift.stats): the statistics against numpy's
quantiles of known scales, the grid scale, the distance and its warnings written out, the scale
filter in the one keypoints-to-map path, the scales the extractors and the cache return, the
stored rows' scale filter, and statistics files that are damaged or hostile."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest

from reconattack.data.sift.cache import SiftCache
from reconattack.data.sift.extraction import extract
from reconattack.data.sift.mapper import SiftMapper
from reconattack.data.sift.stats import (
    QUANTILES,
    SCHEMA,
    KeypointStats,
    StatsError,
    TrustSettings,
    check,
    distance,
    grid_scale,
    load_stats,
    summarise,
)
from reconattack.data.sift_data import StoredVariant, stored_variants
from reconattack.defences.sift import SiftDefence
from reconattack.errors import ConfigError

#: three images' keypoint scales at the model's size (made up, known)
SCALES = [np.array([1.0, 1.5, 2.0, 8.0]), np.array([0.9, 1.1, 1.2]), np.array([1.3, 1.4, 1.6, 1.7, 3.0, 0.5])]


def _stats(scales=SCALES, image_size=64, features="opencv") -> KeypointStats:
    return summarise(scales, features, image_size, (0.01, 0.99))


def test_the_statistics_are_numpys_quantiles_of_the_counts_and_the_pooled_scales():
    stats = _stats()
    pooled = np.concatenate(SCALES)
    np.testing.assert_allclose(stats.grid_scale, np.quantile(pooled, QUANTILES), rtol=0, atol=1e-12)
    np.testing.assert_allclose(stats.count, np.quantile([4, 3, 6], QUANTILES), rtol=0, atol=1e-12)
    lo, hi = np.quantile(pooled, 0.01), np.quantile(pooled, 0.99)
    assert stats.scale_range == pytest.approx((lo, hi), abs=1e-12)
    assert stats.count_range == pytest.approx(tuple(np.quantile([4, 3, 6], (0.01, 0.99))), abs=1e-12)
    shares = [np.mean((s < lo) | (s > hi)) for s in SCALES]  # each image's share outside, written out
    np.testing.assert_allclose(stats.outside, np.quantile(shares, QUANTILES), rtol=0, atol=1e-12)
    assert (stats.images, stats.keypoints, stats.median_count) == (3, 13, 4.0)


def test_an_image_without_keypoints_counts_as_zero_and_adds_no_scale():
    stats = summarise([np.array([1.0, 2.0]), np.zeros(0)], "colmap", 32)
    np.testing.assert_allclose(stats.count, np.quantile([2, 0], QUANTILES))
    np.testing.assert_allclose(stats.grid_scale, np.quantile([1.0, 2.0], QUANTILES))
    assert summarise([], "opencv", 32).images == 0  # no image: zeros, no error


def test_grid_scale_shrinks_as_resizing_the_whole_image_does():
    """sigma * S / sqrt(H * W): the geometric mean of the two axes' factors."""
    scale = np.array([4.0, 1.0])
    np.testing.assert_allclose(grid_scale(scale, (256, 256), 64), [1.0, 0.25])
    np.testing.assert_allclose(grid_scale(scale, (400, 100), 64), scale * 64 / math.sqrt(400 * 100))
    np.testing.assert_array_equal(grid_scale(scale, None, 64), scale)


def test_distance_and_warnings_follow_their_definitions():
    stats = _stats()
    lo, hi = stats.scale_range
    settings = TrustSettings(max_outside=0.25)
    native = np.array([0.5, 1.0, 2.0, 4.0, 8.0, 12.0, 30.0, 40.0])  # at 4x the model's size
    d = distance(native, len(native), (256, 256), 64, stats)
    grid = native / 4
    outside = float(np.mean((grid < lo) | (grid > hi)))
    assert d["outside_training_scales"] == pytest.approx(outside)
    assert d["in_training_scales"] == int(np.sum((grid >= lo) & (grid <= hi)))
    assert d["count_ratio"] == pytest.approx(8 / 4.0)
    assert d["grid_scale"] == pytest.approx(dict(zip(("p10", "median", "p90"), np.quantile(grid, (0.1, 0.5, 0.9)))))
    warnings = check(d, len(native), stats, settings)
    c_lo, c_hi = stats.count_range
    want = (["keypoint_count"] if not c_lo <= 8 <= c_hi else []) + (["keypoint_scale"] if outside > 0.25 else [])
    assert [w["check"] for w in warnings] == want == ["keypoint_count", "keypoint_scale"]
    assert warnings[1]["value"] == pytest.approx(outside) and warnings[1]["threshold"] == 0.25
    # a training-like image: nothing to say
    inside = np.array([1.0, 1.2, 1.5, 2.0])
    d = distance(inside, 4, (64, 64), 64, stats)
    assert d["outside_training_scales"] == 0 and check(d, 4, stats, settings) == []
    # without scales: the count alone; without statistics: the grid scales alone
    assert distance(None, 4, (64, 64), 64, stats)["outside_training_scales"] is None
    assert distance(native, 8, (256, 256), 64, None).keys() == {"grid_scale"}


def test_trust_settings_are_checked():
    assert TrustSettings.from_config({"range": [0.05, 0.95]}).range == (0.05, 0.95)
    for bad, named in (({"range": [0.02, 0.99]}, "range"), ({"range": [0.99, 0.01]}, "range"),
                       ({"max_outside": 2}, "max_outside"), ({"max_images": 0}, "max_images"),
                       ({"max_images": True}, "max_images"), ({"other": 1}, "unknown")):
        with pytest.raises(ConfigError, match=named):
            TrustSettings.from_config(bad)


# --------------------------------------------------------------------- the scale filter
def test_the_scale_filter_keeps_exactly_the_keypoints_in_range_before_the_grid_and_the_defence():
    rng = np.random.default_rng(0)
    n, side = 40, 256
    xy = rng.uniform(-0.5, side - 0.5, (n, 2)).astype(np.float32)
    desc = rng.integers(0, 256, (n, 128)).astype(np.uint8)
    scale = rng.uniform(0.5, 20, n).astype(np.float32)
    mapper = SiftMapper(64, compress=False)
    got_xy, got_desc = mapper.share(xy, desc, source_size=(side, side), key=(0,), scale=scale, scale_range=(1.0, 3.0))
    keep = [i for i in range(n) if 1.0 <= scale[i] * 64 / side <= 3.0]  # written out, in order
    assert 0 < len(keep) < n
    want_xy = (xy[keep].astype(np.float64) + 0.5) * 64 / side - 0.5
    np.testing.assert_allclose(got_xy, want_xy, atol=1e-4)
    np.testing.assert_array_equal(got_desc, desc[keep])
    # then the defence draws from what the filter kept
    defence = SiftDefence(keep=0.5, seed=3)
    defended = SiftMapper(64, defence=defence).share(xy, desc, source_size=(side, side), key=(1, 2), scale=scale,
                                                     scale_range=(1.0, 3.0))
    from reconattack.data.sift.maps import grid_xy

    want = defence(grid_xy(xy[keep], (side, side), 64), desc[keep], None, np.random.default_rng([3, 1, 2]))
    for a, b in zip(defended, want):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="a scale per keypoint"):
        mapper.share(xy, desc, key=(0,), scale_range=(1.0, 3.0))


# ------------------------------------------------------------------- scales of the extractors
def _photo(side: int = 96) -> np.ndarray:
    from skimage import data

    return cv2.resize(data.astronaut(), (side, side), interpolation=cv2.INTER_AREA)


def test_opencv_scale_is_half_its_keypoint_size_and_the_cache_format_is_unchanged(tmp_path):
    img = _photo()
    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    keypoints, _ = cv2.SIFT_create(contrastThreshold=0.03).detectAndCompute(grey, None)
    xy, desc, response, scale = extract(img, with_strength=True, with_scale=True)
    np.testing.assert_allclose(scale, [k.size / 2 for k in keypoints], rtol=1e-6)
    np.testing.assert_allclose(response, [k.response for k in keypoints], rtol=1e-6)
    cache = SiftCache(tmp_path)
    cache.get(img)
    entry = cache.path(img).read_bytes()
    assert len(entry) == 20 + 140 * len(xy)  # format 3: header, xy, strength (the response), desc
    cached = cache.get(img, with_scale=True)  # OpenCV's scale is not in the entry: extracted again
    for a, b in zip(cached, (xy, desc, scale)):
        np.testing.assert_array_equal(a, b)
    assert cache.path(img).read_bytes() == entry
    assert len(cache.get(img, with_strength=True, with_scale=True)) == 4


def test_colmap_scale_comes_from_the_cache(tmp_path):
    pycolmap = pytest.importorskip("pycolmap")
    img = _photo()
    extractor = pycolmap.FeatureExtractor.create(pycolmap.FeatureExtractionOptions(), device=pycolmap.Device.cpu)
    keypoints, _ = extractor.extract_from_uint8_array(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY))
    cache = SiftCache(tmp_path, features="colmap")
    cache.get(img)
    *_, scale = cache.get(img, with_scale=True)
    np.testing.assert_allclose(scale, [k.compute_scale() for k in keypoints], rtol=1e-6)


def test_stored_rows_take_a_scale_filter():
    rows = stored_variants({"a": {"size": "native"}, "b": {"size": "native", "scale_filter": "training"},
                            "c": {"size": "native", "scale_filter": "training"},
                            "d": {"size": "model", "scale_filter": "training"}}, "opencv")
    assert rows == [StoredVariant("a", "opencv", "native"), StoredVariant("b", "opencv", "native", "training"),
                    StoredVariant("d", "opencv", "model", "training")]  # c repeats b
    with pytest.raises(ConfigError, match="scale_filter must be one of"):
        stored_variants({"x": {"scale_filter": "tight"}}, "opencv")


def test_the_data_module_measures_its_training_split_and_filters_the_stored_rows(tmp_path):
    """The training statistics of the default demo (a tiny run's settings): numpy's quantiles of
    OpenCV's scales (size / 2) of the training faces at the model's size, extracted here; a stored
    row of the faces at 4x with ``scale_filter: training`` holds the written-out filter's keypoints."""
    from reconattack.data.images import resize
    from reconattack.data.sift_data import collate_sift
    from reconattack.engine.runner import build_threat
    from tests.helpers import compose_cfg, experiment_overrides

    cfg = compose_cfg([*experiment_overrides(None, tmp_path), "threat.stored.colmap=null",
                       "threat.stored.colmap_native=null", "threat.stored.native=null",
                       "+threat.stored.x4={features:null,size:4,scale_filter:training}"])
    threat = build_threat(cfg)
    threat.dm.prepare_data()
    threat.dm.setup()
    stats = threat.dm.keypoint_stats(1000, (0.01, 0.99))
    train = threat.dm.datasets["train"]
    side = int(cfg.data.image_size)
    detector = cv2.SIFT_create(contrastThreshold=float(cfg.threat.contrast_threshold))

    def sizes(img):
        return [k.size / 2 for k in detector.detectAndCompute(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), None)[0]]

    scales = [sizes(resize(train.source.load(i), side)) for i in train.indices]
    np.testing.assert_allclose(stats.grid_scale, np.quantile(np.concatenate(scales), QUANTILES), rtol=1e-6)
    np.testing.assert_allclose(stats.count, np.quantile([len(s) for s in scales], QUANTILES))
    with pytest.raises(ConfigError, match="no training split"):
        threat.dm.use_stats(None)
    threat.dm.use_stats(stats)
    test = threat.dm.datasets["test"]
    item = test[0]
    big = resize(test.source.load(test.indices[0]), 4 * side)
    xy, desc, scale = extract(big, float(cfg.threat.contrast_threshold), with_scale=True)
    lo, hi = stats.scale_range
    keep = [i for i in range(len(xy)) if lo <= scale[i] * side / (4 * side) <= hi]
    got_xy, got_desc = item["stored"]["x4"]
    np.testing.assert_array_equal(got_desc.numpy(), desc[keep])
    np.testing.assert_allclose(got_xy.numpy(), (xy[keep].astype(np.float64) + 0.5) / 4 - 0.5, atol=1e-4)
    assert "x4" in threat.dm.device_batch(collate_sift([item]), "cpu")["stored"]


# ------------------------------------------------------------------ the file, read back
def _write(path, data) -> None:
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data if isinstance(data, str) else json.dumps(data))


def _with(d: dict, key: str, i: int, text: str) -> str:
    """The JSON of ``d`` with item ``i`` of ``d[key]`` written as ``text``."""
    marked = {**d, key: [*d[key][:i], "@@", *d[key][i + 1:]]}
    return json.dumps(marked).replace('"@@"', text)


def test_a_statistics_file_reads_back(tmp_path):
    stats = _stats()
    _write(tmp_path / "s.json", stats.to_json())
    assert load_stats(tmp_path / "s.json", "opencv", 64) == stats
    with pytest.raises(FileNotFoundError):
        load_stats(tmp_path / "none.json", "opencv", 64)


def _good() -> dict:
    return _stats().to_json()


@pytest.mark.parametrize("damage,message", [
    (lambda d: "[" * 30_000 + "]" * 30_000, "not JSON"),  # nested deeper than Python's recursion
    (lambda d: _with(d, "count", 0, "NaN"), "NaN, which JSON does not allow"),
    (lambda d: _with(d, "count", 0, "-Infinity"), "-Infinity, which JSON does not allow"),
    (lambda d: _with(d, "grid_scale", len(QUANTILES) - 1, "1e999"), "grid_scale holds inf"),
    (lambda d: b"\xff not json", "not JSON"),
    (lambda d: "{", "not JSON"),
    (lambda d: [d], "not a JSON object"),
    (lambda d: {**d, "schema": "other/9"}, "schema 'other/9'"),
    (lambda d: {**d, "quantiles": [0.5]}, "quantiles are not"),
    (lambda d: {**d, "features": "orb"}, "features 'orb'"),
    (lambda d: {**d, "features": "colmap"}, "statistics of colmap SIFT at 64 px, the run has opencv SIFT"),
    (lambda d: {**d, "image_size": 256}, "at 256 px, the run has opencv SIFT at 64 px"),
    (lambda d: {**d, "images": -1}, "images is -1, not a count"),
    (lambda d: {**d, "keypoints": True}, "keypoints is True, not a count"),
    (lambda d: {**d, "count": d["count"][::-1]}, "count is not in increasing order"),
    (lambda d: {**d, "grid_scale": ["1"] * len(QUANTILES)}, "grid_scale holds '1'"),
    (lambda d: {**d, "outside": [2.0] * len(QUANTILES)}, r"outside holds 2.0 \(expected numbers in \[0, 1\]\)"),
    (lambda d: {**d, "grid_scale": d["grid_scale"][:3]}, "grid_scale is not a list of 11 numbers"),
    (lambda d: {**d, "range": [0.01, 0.5, 0.99]}, "range"),
    (lambda d: " " * (70 << 10), "more than the 65536 bytes"),
])
def test_damaged_or_hostile_statistics_files_are_refused_with_a_message(damage, message, tmp_path):
    _write(tmp_path / "s.json", damage(_good()))
    with pytest.raises(StatsError, match=message):
        load_stats(tmp_path / "s.json", "opencv", 64)


def test_a_statistics_path_that_is_no_file_is_refused(tmp_path):
    (tmp_path / "dir").mkdir()
    with pytest.raises(StatsError, match="not a file"):
        load_stats(tmp_path / "dir", "opencv", 64)
    assert _good()["schema"] == SCHEMA
