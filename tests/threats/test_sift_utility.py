"""Utility of the shared SIFT under a defence (issue 29 §3; reconattack/threats/sift_utility.py,
reconattack/metrics/utility.py): pairs of scikit-image crops and homographies of them through the
real extractor and the test dataset's own path to the shared features; expected values from the
definitions (the identity homography, written-out loops), and comparisons between defences on the
same pairs, never the code's own numbers."""

import json
import math

import numpy as np
import pytest
import skimage.data

from reconattack.data.sift.cache import SiftCache
from reconattack.data.sift.mapper import SiftMapper
from reconattack.data.sift_data import SiftImageDataset
from reconattack.defences.sift import SiftDefence
from reconattack.errors import ConfigError
from reconattack.metrics.utility import MatchingUtility, pair_retrieval
from reconattack.threats.sift_utility import UtilitySettings, sift_utility

SIDE = 128
GEOMETRIC = ("mma@1", "mma@3", "mma@5", "inlier_ratio", "h_acc@1", "h_acc@3", "h_acc@5", "h_auc@1", "h_auc@3",
             "h_auc@5")
IDENTITY = UtilitySettings(perturbation=0.0, rotation_deg=0.0, scale=(1.0, 1.0))


class _Images:
    """An image source (``len``, ``name``, ``load``) of (S, S, 3) uint8 RGB arrays."""

    def __init__(self, images):
        self.images = [np.ascontiguousarray(i) for i in images]

    def __len__(self):
        return len(self.images)

    def name(self, i):
        return f"crop_{i}"

    def load(self, i):
        return self.images[i]


def _crops() -> list[np.ndarray]:
    """Six 128 x 128 RGB crops of scikit-image's sample photos (no download)."""
    d = skimage.data
    camera = np.repeat(d.camera()[..., None], 3, axis=2)
    return [d.astronaut()[40:168, 160:288], d.chelsea()[60:188, 120:248], d.coffee()[100:228, 200:328],
            camera[60:188, 180:308], d.astronaut()[300:428, 300:428], d.coffee()[200:328, 380:508]]


def _test_split(tmp_path, defence: SiftDefence | None = None, occupancy: bool = False) -> SiftImageDataset:
    """The crops as a held-out split, their SIFT (OpenCV, contrast threshold 0.03) shared through
    ``defence``; with ``coordinates: withheld`` the references are another photo's crop."""
    mapper = SiftMapper(SIDE, True, occupancy=occupancy, defence=defence)
    cache = SiftCache(tmp_path / "cache")
    if defence is not None and defence.needs_reference:
        ref = np.ascontiguousarray(skimage.data.rocket()[100:228, 200:328])
        mapper = mapper.with_references({"opencv": [(99, *cache.get(ref))]})
    return SiftImageDataset(_Images(_crops()), range(6), mapper, cache, part="test")


def _short(metrics: dict) -> dict:
    return {k.removeprefix("utility/"): v for k, v in metrics.items()}


# ------------------------------------------------------------------------------ the measures

def test_pair_retrieval_is_the_written_out_loop_with_shared_ties():
    rng = np.random.default_rng(1)
    counts = rng.integers(0, 4, (12, 15))  # small counts: many ties
    expected = 0.0
    for q in range(12):
        best = max(counts[q])
        winners = [g for g in range(15) if counts[q][g] == best]
        expected += (1 / len(winners) if q in winners else 0.0) / 12
    assert pair_retrieval(counts) == pytest.approx(expected, abs=1e-12)
    assert pair_retrieval(np.full((5, 5), 3)) == pytest.approx(1 / 5)  # all alike: chance
    assert pair_retrieval(np.eye(4) * 7) == 1.0
    assert math.isnan(pair_retrieval(np.zeros((0, 3))))
    with pytest.raises(ValueError):
        pair_retrieval(np.zeros((4, 3)))


def test_the_measures_of_a_hand_made_pair():
    """Seven keypoints a side, image 2 = image 1 shifted by (2, 0) px, descriptors equal pair by
    pair; the last keypoint of image 2 sits 4 px from where the shift puts it. By the definitions:
    MMA@1 = MMA@3 = 6/7, MMA@5 = 1; RANSAC at 3 px keeps the six (a homography through the
    outlier and three others leaves the other three off), so the inlier ratio is 6/7 and the
    estimate is the shift: corner error ~0, h_acc = 1 at every threshold."""
    H = np.array([[1, 0, 2], [0, 1, 0], [0, 0, 1]], np.float64)
    xy1 = np.array([[10, 10], [50, 12], [20, 60], [55, 50], [33, 30], [5, 40], [44, 25]], np.float32)
    xy2 = xy1 + np.float32([2, 0])
    xy2[6] += [0, 4]
    desc = np.eye(7, 128, dtype=np.uint8) * 200
    acc = MatchingUtility((1, 3, 5), ransac_px=3.0)
    acc.add(xy1, desc, xy2, desc, H, (64, 64))
    out = _short(acc.result())
    assert out["mma@1"] == out["mma@3"] == pytest.approx(6 / 7) and out["mma@5"] == 1.0
    assert out["inlier_ratio"] == pytest.approx(6 / 7)
    assert out["h_acc@1"] == out["h_acc@3"] == out["h_acc@5"] == 1.0
    assert out["matches"] == 7 and out["pairs"] == 1 and out["pair_retrieval@1"] == 1.0


# ------------------------------------------------------------------------------ the pipeline

def test_an_undefended_identity_pair_matches_everything(tmp_path):
    """With a homography of zero perturbation, rotation and scale change the warped image is the
    image: its SIFT is the stored SIFT, every keypoint's nearest descriptor is its own (up to
    duplicate descriptors), the homography is found at every pair, and each warped image finds
    its own source."""
    out = _short(sift_utility(_test_split(tmp_path), IDENTITY, seed=0))
    assert out["pairs"] == 6 and out["pair_retrieval_n"] == 6
    assert out["mma@1"] >= 0.95
    assert out["h_acc@1"] == out["h_acc@3"] == 1.0
    assert out["pair_retrieval@1"] == 1.0
    assert out["matches"] >= 20  # textured photos: tens of keypoints each at 128 px
    for k in GEOMETRIC:
        assert 0.0 <= out[k] <= 1.0


def test_keeping_a_tenth_or_one_bit_costs_utility_on_the_same_pairs(tmp_path):
    """The same pairs (same seed): sharing a tenth of the keypoints, or 1-bit descriptors, leaves
    fewer matches and fewer homographies found. (MMA is a precision: 1-bit descriptors keep fewer
    mutual matches, but those they keep need not be less accurate, so it is not compared.)"""
    settings = UtilitySettings()
    plain = _short(sift_utility(_test_split(tmp_path), settings, seed=3))
    keep = _short(sift_utility(_test_split(tmp_path, SiftDefence(keep=0.1)), settings, seed=3))
    bits = _short(sift_utility(_test_split(tmp_path, SiftDefence(descriptor_bits=1)), settings, seed=3))
    assert plain["h_acc@3"] > 0.5  # the undefended system does its job on most pairs
    assert keep["matches"] < plain["matches"] and keep["h_acc@3"] < plain["h_acc@3"]
    assert bits["matches"] < plain["matches"] and bits["h_acc@3"] < plain["h_acc@3"]
    assert keep["h_auc@3"] < plain["h_auc@3"] and bits["h_auc@3"] < plain["h_auc@3"]
    again = _short(sift_utility(_test_split(tmp_path), settings, seed=3))
    assert again == plain  # seeded: the same pairs, the same numbers


def test_withheld_coordinates_and_positions_only_say_what_is_missing(tmp_path):
    """Coordinates withheld: the geometric measures are missing (with the reason), matches and
    pair retrieval by descriptors are numbers. Positions only (the defence's, or the threat's
    occupancy map): no descriptors, every measure but the pair count missing, with the reason."""
    withheld = _short(sift_utility(_test_split(tmp_path, SiftDefence(coordinates="withheld")), IDENTITY, 0))
    for k in GEOMETRIC:
        assert withheld[k].startswith("missing: defence.coordinates=withheld"), (k, withheld[k])
    assert isinstance(withheld["pair_retrieval@1"], float) and 0 <= withheld["pair_retrieval@1"] <= 1
    assert isinstance(withheld["matches"], float) and withheld["pairs"] == 6
    for split, cause in ((_test_split(tmp_path, SiftDefence(positions_only=True)), "defence.positions_only"),
                         (_test_split(tmp_path, occupancy=True), "threat.occupancy")):
        out = _short(sift_utility(split, IDENTITY, 0))
        for k in (*GEOMETRIC, "matches", "pair_retrieval@1"):
            assert out[k].startswith(f"missing: {cause}") and "positions only" in out[k], (k, out[k])
        assert out["pairs"] == 6


def test_no_test_split_and_max_images(tmp_path):
    out = _short(sift_utility(None, UtilitySettings(), 0))
    assert out["pairs"] == 0 and all(out[k].startswith("missing: ") for k in (*GEOMETRIC, "matches"))
    two = _short(sift_utility(_test_split(tmp_path), UtilitySettings(max_images=2, retrieval_images=1), 0))
    assert two["pairs"] == 2 and two["pair_retrieval_n"] == 1 and two["pair_retrieval@1"] == 1.0


def test_the_settings_refuse_what_they_cannot_mean():
    assert UtilitySettings.from_config({"thresholds": [1, 3], "scale": [1, 1]}).thresholds == (1.0, 3.0)
    for bad in ({"perturbation": 0.3}, {"ransac": 3}, {"thresholds": [0]}, {"scale": [1.2, 1.1]},
                {"retrieval_images": 0}, {"rotation_deg": "a lot"}):
        with pytest.raises(ConfigError, match="threat.utility"):
            UtilitySettings.from_config(bad)


# ------------------------------------------------------------------------------ in a run

def test_a_tiny_run_reports_its_utility(tmp_path):
    """The default experiment, tiny: ``utility/*`` in the returned metrics and in metrics.json,
    one pair per held-out image."""
    from reconattack.run import run
    from tests.helpers import coarse_only, compose_cfg

    cfg = compose_cfg(coarse_only(tmp_path, "threat.stored.colmap=null", "threat.stored.colmap_native=null",
                                  "threat.stored.native=null"))
    metrics = run(cfg)
    test_images = len(json.loads((tmp_path / "run" / "split.json").read_text())["split"]["test"])
    assert metrics["utility/pairs"] == test_images > 0
    for k in ("mma@1", "mma@3", "mma@5", "h_acc@3", "h_auc@3", "inlier_ratio", "pair_retrieval@1"):
        assert isinstance(metrics[f"utility/{k}"], float) and 0 <= metrics[f"utility/{k}"] <= 1, k
    assert metrics["utility/matches"] > 0
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["utility/h_acc@3"] == metrics["utility/h_acc@3"]
    off = run(compose_cfg(coarse_only(tmp_path / "off", "threat.stored.colmap=null",
                                      "threat.stored.colmap_native=null", "threat.stored.native=null",
                                      "threat.utility.enabled=false")))
    assert not any(k.startswith("utility/") for k in off)
