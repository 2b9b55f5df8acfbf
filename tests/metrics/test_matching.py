"""Matching utility of local features (reconattack/metrics/matching.py): every expected value is
computed in the test itself — brute-force loops, homogeneous divisions and trapezoids written out
by hand, or a copy of the reference code (SuperGlue's ``pose_auc``) — never taken from the
implementation."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from reconattack.metrics import matching
from reconattack.metrics.matching import (
    corner_error,
    estimate_homography,
    homography_accuracy,
    homography_auc,
    matching_accuracy,
    mutual_nearest_neighbours,
    random_homography,
    warp_image,
)

#: a mild perspective homography, image 1 → image 2, x-then-y homogeneous
H_KNOWN = np.array([
    [0.95, 0.08, 12.0],
    [-0.05, 1.04, -7.0],
    [2e-4, -1e-4, 1.0],
])


def _map_point(H, x, y):
    """(x, y) mapped by H: the homogeneous division written out."""
    X = H[0][0] * x + H[0][1] * y + H[0][2]
    Y = H[1][0] * x + H[1][1] * y + H[1][2]
    W = H[2][0] * x + H[2][1] * y + H[2][2]
    return X / W, Y / W


def _brute_mutual_nn(d1, d2):
    """Mutual nearest neighbours by loops over the full squared-distance matrix; ties go to the
    lowest index (the comparison key is (distance, index))."""
    n, m = len(d1), len(d2)
    dist = [[sum((float(a) - float(b)) ** 2 for a, b in zip(d1[i], d2[j], strict=True))
             for j in range(m)] for i in range(n)]
    nn12 = [min(range(m), key=lambda j, i=i: (dist[i][j], j)) for i in range(n)]
    nn21 = [min(range(n), key=lambda i, j=j: (dist[i][j], i)) for j in range(m)]
    return [(i, nn12[i]) for i in range(n) if nn21[nn12[i]] == i]


def _brute_mma(xy1, d1, xy2, d2, H, thresholds):
    pairs = _brute_mutual_nn(d1, d2)
    out = {}
    for t in thresholds:
        correct = 0
        for i, j in pairs:
            x, y = _map_point(H, xy1[i][0], xy1[i][1])
            if math.sqrt((x - xy2[j][0]) ** 2 + (y - xy2[j][1]) ** 2) <= t:
                correct += 1
        out[f"mma@{t:g}"] = correct / len(pairs) if pairs else 0.0
    out["matches"] = len(pairs)
    return out


def _synthetic_pair(seed, n_true=25, n_noise1=10, n_noise2=12, dim=16):
    """Keypoints and descriptors of two 64 x 48 images: n_true true correspondences under
    H_KNOWN (image-2 positions off by 0 to 6 px, descriptors slightly perturbed), plus noise
    keypoints with random descriptors in each image; image 2's order is shuffled."""
    rng = np.random.default_rng(seed)
    xy1 = rng.uniform(0, [63, 47], size=(n_true + n_noise1, 2))
    d1 = rng.normal(size=(n_true + n_noise1, dim))
    xy2_true = np.array([_map_point(H_KNOWN, x, y) for x, y in xy1[:n_true]])
    angle = rng.uniform(0, 2 * np.pi, n_true)
    off = rng.uniform(0, 6, n_true)
    xy2_true += np.stack([np.cos(angle), np.sin(angle)], 1) * off[:, None]
    d2_true = d1[:n_true] + 0.3 * rng.normal(size=(n_true, dim))
    xy2 = np.concatenate([xy2_true, rng.uniform(0, [63, 47], size=(n_noise2, 2))])
    d2 = np.concatenate([d2_true, rng.normal(size=(n_noise2, dim))])
    perm = rng.permutation(len(xy2))
    return xy1, d1, xy2[perm], d2[perm]


# --- mutual nearest neighbours and MMA -----------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_mutual_nn_matches_brute_force(seed):
    _, d1, _, d2 = _synthetic_pair(seed)
    got = mutual_nearest_neighbours(d1, d2)
    assert got.dtype == np.int64 and got.shape[1] == 2
    assert [tuple(p) for p in got.tolist()] == _brute_mutual_nn(d1, d2)


def test_mutual_nn_of_integer_descriptors_is_the_brute_force_ties_included():
    """Integer descriptors (SIFT's uint8) take the exact float64 product: the brute-force matches,
    ties included (1-bit descriptors are full of them); float ones the summed differences."""
    rng = np.random.default_rng(0)
    for n, m in ((40, 55), (1, 7), (30, 30)):
        a, b = rng.integers(0, 160, (n, 128)).astype(np.uint8), rng.integers(0, 160, (m, 128)).astype(np.uint8)
        coarse_a, coarse_b = (a // 128) * 128 + 64, (b // 128) * 128 + 64  # one bit a value: ties
        for x, y in ((a, b), (coarse_a, coarse_b), (a[:, :2] // 64, b[:, :2] // 64)):
            assert [tuple(p) for p in mutual_nearest_neighbours(x, y).tolist()] == _brute_mutual_nn(x, y)
    f1, f2 = rng.normal(size=(20, 8)), rng.normal(size=(25, 8))
    assert [tuple(p) for p in mutual_nearest_neighbours(f1, f2).tolist()] == _brute_mutual_nn(f1, f2)
    assert mutual_nearest_neighbours(np.zeros((0, 128), np.uint8), a).shape == (0, 2)


def test_mutual_nn_in_blocks_and_torch(monkeypatch):
    _, d1, _, d2 = _synthetic_pair(7)
    monkeypatch.setattr(matching, "_BLOCK_ELEMENTS", 50)  # a few rows per block
    got = mutual_nearest_neighbours(torch.from_numpy(d1).float(), torch.from_numpy(d2).float())
    expected = _brute_mutual_nn(d1.astype(np.float32), d2.astype(np.float32))
    assert [tuple(p) for p in got.tolist()] == expected


def test_mutual_nn_ties_lowest_index_and_empty():
    # desc2 has two equal descriptors: image 1's point picks the first; desc1 likewise
    assert mutual_nearest_neighbours([[0.0, 0.0]], [[1.0, 0.0], [1.0, 0.0]]).tolist() == [[0, 0]]
    assert mutual_nearest_neighbours([[0.0, 0.0], [0.0, 0.0]], [[1.0, 0.0]]).tolist() == [[0, 0]]
    for a, b in [(np.zeros((0, 4)), np.ones((3, 4))), (np.ones((3, 4)), np.zeros((0, 4)))]:
        out = mutual_nearest_neighbours(a, b)
        assert out.shape == (0, 2) and out.dtype == np.int64
    with pytest.raises(ValueError):
        mutual_nearest_neighbours(np.ones((2, 3)), np.ones((2, 4)))


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_matching_accuracy_matches_brute_force(seed):
    xy1, d1, xy2, d2 = _synthetic_pair(seed)
    thresholds = (1, 3, 5)
    got = matching_accuracy(xy1, d1, xy2, d2, H_KNOWN, thresholds)
    expected = _brute_mma(xy1, d1, xy2, d2, H_KNOWN, thresholds)
    assert set(got) == {"mma@1", "mma@3", "mma@5", "matches"}
    assert got["matches"] == expected["matches"] > 0
    assert isinstance(got["matches"], int)
    for t in thresholds:
        assert got[f"mma@{t}"] == pytest.approx(expected[f"mma@{t}"], abs=1e-12)
    # the data are built so the thresholds separate: not all 0, not all 1
    assert 0 < expected["mma@5"] and expected["mma@1"] < 1


def test_matching_accuracy_torch_inputs_and_key_names():
    xy1, d1, xy2, d2 = _synthetic_pair(11)
    thresholds = (0.5, 2.5, 4)
    got = matching_accuracy(*(torch.from_numpy(a) for a in (xy1, d1, xy2, d2, H_KNOWN)),
                            thresholds=thresholds)
    expected = _brute_mma(xy1, d1, xy2, d2, H_KNOWN, thresholds)
    assert set(got) == {"mma@0.5", "mma@2.5", "mma@4", "matches"}
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-12)


def test_matching_accuracy_obvious_case():
    # identity H; four points with one-hot descriptors; the last is 2 px off in image 2
    xy1 = np.array([[10.0, 10.0], [20.0, 5.0], [30.0, 40.0], [5.0, 25.0]])
    xy2 = xy1.copy()
    xy2[3, 0] += 2.0
    desc = np.eye(4)
    got = matching_accuracy(xy1, desc, xy2, desc, np.eye(3))
    assert got == {"mma@1": 0.75, "mma@3": 1.0, "mma@5": 1.0, "matches": 4}


def test_matching_accuracy_no_match_and_one_match():
    empty = matching_accuracy(np.zeros((0, 2)), np.zeros((0, 8)), np.ones((3, 2)),
                              np.ones((3, 8)), np.eye(3))
    assert empty == {"mma@1": 0.0, "mma@3": 0.0, "mma@5": 0.0, "matches": 0}
    empty2 = matching_accuracy(np.ones((3, 2)), np.ones((3, 8)), np.zeros((0, 2)),
                               np.zeros((0, 8)), np.eye(3))
    assert empty2 == empty
    # one point per image: always a mutual match; translated by (3, 4) then 2 px off in y:
    # |(1 + 3, 2 + 4) - (4, 8)| = 2 px -> wrong at 1 px, right at 3 and 5 px
    H = np.array([[1.0, 0, 3], [0, 1, 4], [0, 0, 1]])
    one = matching_accuracy([[1.0, 2.0]], [[0.2, 0.7]], [[4.0, 8.0]], [[5.0, -1.0]], H)
    assert one == {"mma@1": 0.0, "mma@3": 1.0, "mma@5": 1.0, "matches": 1}
    # exactly t px off counts as correct (<= t): 3-4-5 triangle
    edge = matching_accuracy([[1.0, 2.0]], [[1.0]], [[4.0, 6.0]], [[1.0]], np.eye(3), (4.9, 5))
    assert edge == {"mma@4.9": 0.0, "mma@5": 1.0, "matches": 1}
    with pytest.raises(ValueError):
        matching_accuracy(np.ones((3, 2)), np.ones((2, 8)), np.ones((3, 2)), np.ones((3, 8)),
                          np.eye(3))


# --- corner error, accuracy, AUC ----------------------------------------------------------------

def test_corner_error_by_hand():
    H_est = np.array([
        [0.97, 0.07, 11.0],
        [-0.04, 1.02, -6.0],
        [1e-4, -2e-4, 1.0],
    ])
    h, w = 48, 64
    corners = [(0, 0), (w - 1, 0), (0, h - 1), (w - 1, h - 1)]
    dists = []
    for x, y in corners:
        wt = H_KNOWN[2, 0] * x + H_KNOWN[2, 1] * y + H_KNOWN[2, 2]
        xt = (H_KNOWN[0, 0] * x + H_KNOWN[0, 1] * y + H_KNOWN[0, 2]) / wt
        yt = (H_KNOWN[1, 0] * x + H_KNOWN[1, 1] * y + H_KNOWN[1, 2]) / wt
        we = H_est[2, 0] * x + H_est[2, 1] * y + H_est[2, 2]
        xe = (H_est[0, 0] * x + H_est[0, 1] * y + H_est[0, 2]) / we
        ye = (H_est[1, 0] * x + H_est[1, 1] * y + H_est[1, 2]) / we
        dists.append(math.hypot(xt - xe, yt - ye))
    expected = sum(dists) / 4
    assert corner_error(H_KNOWN, H_est, (h, w)) == pytest.approx(expected, rel=1e-12)
    assert corner_error(torch.from_numpy(H_KNOWN), torch.from_numpy(H_est), (h, w)) == (
        pytest.approx(expected, rel=1e-12))


def test_corner_error_special_cases():
    assert corner_error(H_KNOWN, H_KNOWN.copy(), (48, 64)) == 0.0
    assert corner_error(H_KNOWN, 2.5 * H_KNOWN, (48, 64)) == pytest.approx(0.0, abs=1e-9)
    shift = np.array([[1.0, 0, 3], [0, 1, 4], [0, 0, 1]])
    assert corner_error(np.eye(3), shift, (480, 640)) == pytest.approx(5.0, abs=1e-12)
    assert corner_error(np.eye(3), None, (480, 640)) == math.inf
    # every corner sent to infinity (third row 0)
    assert corner_error(np.eye(3), np.diag([1.0, 1.0, 0.0]), (480, 640)) == math.inf


ERRORS = [0.5, 2.0, 4.0, math.inf]


def test_homography_accuracy_by_hand():
    assert homography_accuracy(ERRORS, (1, 2, 3, 5)) == {
        "h_acc@1": 1 / 4, "h_acc@2": 2 / 4, "h_acc@3": 2 / 4, "h_acc@5": 3 / 4}
    assert homography_accuracy(np.array(ERRORS)) == homography_accuracy(ERRORS)
    assert homography_accuracy([]) == {"h_acc@1": 0.0, "h_acc@3": 0.0, "h_acc@5": 0.0}


def test_homography_auc_by_hand():
    # sorted errors with (0, 0) prepended: e = 0, 0.5, 2, 4, inf; recall r = 0, 1/4, 2/4, 3/4, 1
    # t = 3: points with e < 3 are (0, 0), (0.5, .25), (2, .5); the cut adds (3, .5)
    auc3 = (0.5 * (0 + 0.25) / 2 + 1.5 * (0.25 + 0.5) / 2 + 1.0 * (0.5 + 0.5) / 2) / 3
    # t = 1: (0, 0), (0.5, .25), cut (1, .25)
    auc1 = (0.5 * (0 + 0.25) / 2 + 0.5 * (0.25 + 0.25) / 2) / 1
    # t = 5: (0, 0), (0.5, .25), (2, .5), (4, .75), cut (5, .75)
    auc5 = (0.5 * 0.25 / 2 + 1.5 * 0.75 / 2 + 2.0 * 1.25 / 2 + 1.0 * 1.5 / 2) / 5
    assert (auc1, auc3, auc5) == pytest.approx((0.1875, 0.375, 0.525))
    got = homography_auc(ERRORS)
    assert set(got) == {"h_auc@1", "h_auc@3", "h_auc@5"}
    assert got["h_auc@1"] == pytest.approx(auc1, abs=1e-15)
    assert got["h_auc@3"] == pytest.approx(auc3, abs=1e-15)
    assert got["h_auc@5"] == pytest.approx(auc5, abs=1e-15)
    assert homography_auc([]) == {"h_auc@1": 0.0, "h_auc@3": 0.0, "h_auc@5": 0.0}
    assert homography_auc([0.0, 0.0], (3,)) == {"h_auc@3": 1.0}
    assert homography_auc([math.inf], (3,)) == {"h_auc@3": 0.0}


def _superglue_pose_auc(errors, thresholds):
    """SuperGlue's ``pose_auc`` (models/utils.py, also LoFTR's ``error_auc``), copied; only
    ``np.trapz`` is spelled ``np.trapezoid`` (NumPy 2)."""
    sort_idx = np.argsort(errors)
    errors = np.array(errors.copy())[sort_idx]
    recall = (np.arange(len(errors)) + 1) / len(errors)
    errors = np.r_[0., errors]
    recall = np.r_[0., recall]
    aucs = []
    for t in thresholds:
        last_index = np.searchsorted(errors, t)
        r = np.r_[recall[:last_index], recall[last_index - 1]]
        e = np.r_[errors[:last_index], t]
        aucs.append(np.trapezoid(r, x=e) / t)
    return aucs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_homography_auc_matches_superglue_pose_auc(seed):
    rng = np.random.default_rng(seed)
    errors = rng.exponential(3.0, size=37)
    errors[rng.choice(37, 5, replace=False)] = np.inf
    errors[0] = 3.0  # an error exactly at a threshold
    thresholds = (1, 3, 5, 10)
    expected = _superglue_pose_auc(list(errors), thresholds)
    got = homography_auc(errors, thresholds)
    for t, value in zip(thresholds, expected, strict=True):
        assert got[f"h_auc@{t}"] == pytest.approx(value, abs=1e-12)


# --- homography estimation -----------------------------------------------------------------------

def test_estimate_homography_recovers_known():
    rng = np.random.default_rng(0)
    n_in, n_out = 40, 15
    xy1 = rng.uniform(0, [639, 479], size=(n_in + n_out, 2))
    xy2 = np.array([_map_point(H_KNOWN, x, y) for x, y in xy1])
    # outliers: moved 30 to 200 px away from where H sends them
    angle = rng.uniform(0, 2 * np.pi, n_out)
    off = rng.uniform(30, 200, n_out)
    xy2[n_in:] += np.stack([np.cos(angle), np.sin(angle)], 1) * off[:, None]
    perm = rng.permutation(n_in + n_out)
    truth = perm < n_in
    H, inliers = estimate_homography(xy1[perm], xy2[perm], ransac_px=3.0, seed=0)
    assert H is not None and H.shape == (3, 3) and H.dtype == np.float64
    assert corner_error(H_KNOWN, H, (480, 640)) < 0.1
    assert inliers.dtype == bool and inliers.shape == (n_in + n_out,)
    assert (inliers == truth).all()
    H2, inliers2 = estimate_homography(torch.from_numpy(xy1[perm]), torch.from_numpy(xy2[perm]))
    assert np.array_equal(H, H2) and np.array_equal(inliers, inliers2)  # reproducible


def test_estimate_homography_too_few():
    H, inliers = estimate_homography([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]],
                                     [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert H is None
    assert inliers.dtype == bool and inliers.tolist() == [False, False, False]
    H, inliers = estimate_homography(np.zeros((0, 2)), np.zeros((0, 2)))
    assert H is None and inliers.shape == (0,)


# --- random homographies and warping -------------------------------------------------------------

def test_random_homography_deterministic_and_bounded():
    h, w, p, s_lo, s_hi = 120, 160, 0.15, 0.9, 1.1
    a = random_homography(h, w, np.random.default_rng(3), perturbation=p, scale=(s_lo, s_hi))
    b = random_homography(h, w, np.random.default_rng(3), perturbation=p, scale=(s_lo, s_hi))
    c = random_homography(h, w, np.random.default_rng(4), perturbation=p, scale=(s_lo, s_hi))
    assert a.shape == (3, 3) and a.dtype == np.float64
    assert np.array_equal(a, b) and not np.allclose(a, c)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    diag = math.hypot(w - 1, h - 1)
    corners = [(0, 0), (w - 1, 0), (w - 1, h - 1), (0, h - 1)]  # cyclic order
    rng = np.random.default_rng(123)
    for _ in range(200):
        H = random_homography(h, w, rng, perturbation=p, rotation_deg=10.0, scale=(s_lo, s_hi))
        moved = []
        for x, y in corners:
            assert H[2, 0] * x + H[2, 1] * y + H[2, 2] > 0  # finite, no flip through infinity
            moved.append(_map_point(H, x, y))
        for X, Y in moved:
            r = math.hypot(X - cx, Y - cy)
            assert s_lo * (0.5 - p) * diag - 1e-3 <= r <= s_hi * (0.5 + p) * diag + 1e-3
        # convex, same orientation as the image (y down: clockwise on screen = positive cross)
        for k in range(4):
            (x0, y0), (x1, y1), (x2, y2) = moved[k], moved[(k + 1) % 4], moved[(k + 2) % 4]
            assert (x1 - x0) * (y2 - y1) - (y1 - y0) * (x2 - x1) > 0


def test_random_homography_follows_documented_recipe():
    h, w, p = 50, 70, 0.2
    H = random_homography(h, w, np.random.default_rng(9), perturbation=p, rotation_deg=30.0,
                          scale=(0.8, 1.2))
    rng = np.random.default_rng(9)  # the same draws, in the documented order
    noise = rng.uniform(-p, p, size=(4, 2))
    angle = math.radians(rng.uniform(-30.0, 30.0))
    s = rng.uniform(0.8, 1.2)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    for k, (x, y) in enumerate([(0, 0), (w - 1, 0), (0, h - 1), (w - 1, h - 1)]):
        dx = x + noise[k, 0] * (w - 1) - cx
        dy = y + noise[k, 1] * (h - 1) - cy
        ex = cx + s * (math.cos(angle) * dx - math.sin(angle) * dy)
        ey = cy + s * (math.sin(angle) * dx + math.cos(angle) * dy)
        X, Y = _map_point(H, x, y)
        assert math.hypot(X - ex, Y - ey) < 1e-3
    ident = random_homography(h, w, np.random.default_rng(0), perturbation=0.0,
                              rotation_deg=0.0, scale=(1.0, 1.0))
    assert np.allclose(ident, np.eye(3), atol=1e-6)
    with pytest.raises(ValueError):
        random_homography(h, w, np.random.default_rng(0), perturbation=0.25)


def test_warp_image_translation():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    H = np.array([[1.0, 0, 2], [0, 1, 3], [0, 0, 1]])  # point (x, y) -> (x + 2, y + 3)
    out = warp_image(img, H, (20, 30))
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    assert np.array_equal(out[3:, 2:], img[:17, :28])
    assert (out[:3] == 0).all() and (out[:, :2] == 0).all()
    f = img[..., :1].astype(np.float32) / 255
    out1 = warp_image(f, H, (25, 40))
    assert out1.shape == (25, 40, 1) and out1.dtype == np.float32
    assert np.allclose(out1[3:23, 2:32], f, atol=1e-6)  # float path: interpolation rounding
    assert warp_image(img[..., 0], H, (20, 30)).shape == (20, 30)


# --- re-export and import order ------------------------------------------------------------------

def test_functional_reexport_without_cycle():
    from reconattack.metrics import functional

    assert functional.corner_error is corner_error
    assert functional.matching_accuracy is matching_accuracy
    code = ("import sys, reconattack.metrics.matching; "
            "assert 'reconattack.metrics.functional' not in sys.modules; "
            "assert 'cv2' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
