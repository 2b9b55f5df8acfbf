"""Matching utility of local features: what a defence of the features (e.g. of SIFT descriptors)
costs the system that uses them, measured HPatches / SuperPoint style.

Two image-pair measures, both on keypoints ``xy`` in pixels and descriptors ``desc``:

- :func:`matching_accuracy` — mean matching accuracy (MMA, D2-Net / SuperPoint HPatches): the
  share of mutual-nearest-neighbour matches whose point in image 1, mapped by the ground-truth
  homography, lands within ``t`` px of its point in image 2.
- homography estimation — :func:`estimate_homography` (OpenCV RANSAC on the matches), its
  :func:`corner_error` against the ground truth, and over a data set of pairs
  :func:`homography_accuracy` (share of pairs with corner error <= ``t``) and
  :func:`homography_auc` (the SuperGlue / LoFTR ``pose_auc`` of the corner errors).

Conventions shared by every function here:

- **Points** are (N, 2) arrays, **x (column) then y (row)**, in pixels, with pixel *centres* at
  integer coordinates (OpenCV's convention: the top-left pixel's centre is (0, 0), the
  bottom-right one's is (w - 1, h - 1)).
- **Homographies** are (3, 3) matrices mapping image 1 to image 2 in homogeneous x-then-y
  coordinates: ``[x2, y2, 1] ~ H @ [x1, y1, 1]`` (what ``cv2.findHomography(xy1, xy2)``,
  ``cv2.getPerspectiveTransform`` and ``cv2.warpPerspective`` use).
- **Sizes** are ``(h, w)`` in pixels (rows, columns), as image arrays are shaped.
- Arrays may be numpy arrays or torch tensors (any device); computation is numpy float64 on the
  CPU and results are numpy arrays or Python numbers.

OpenCV (``cv2``) is imported inside the functions that need it, so importing this module (and
:mod:`reconattack.metrics.functional`, which re-exports :func:`matching_accuracy` and
:func:`corner_error`) stays light.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

#: rows of a (N, M) distance block computed at once by :func:`mutual_nearest_neighbours`, so the
#: (rows, M, D) difference array stays near 2**24 elements (128 MiB in float64)
_BLOCK_ELEMENTS = 1 << 24


def _as_numpy(x, name: str) -> np.ndarray:
    """``x`` (numpy array, torch tensor or nested sequence) as a float64 numpy array."""
    if hasattr(x, "detach"):  # torch tensor, any device
        x = x.detach().to("cpu").double().numpy()
    return np.asarray(x, dtype=np.float64)


def _points(xy, name: str) -> np.ndarray:
    p = _as_numpy(xy, name)
    if p.size == 0:
        return p.reshape(0, 2)
    if p.ndim != 2 or p.shape[1] != 2:
        raise ValueError(f"{name} must be (N, 2) x-then-y points, got shape {p.shape}")
    return p


def _descriptors(desc, name: str) -> np.ndarray:
    d = _as_numpy(desc, name)
    if d.ndim != 2:
        raise ValueError(f"{name} must be (N, D) descriptors, got shape {d.shape}")
    if not np.isfinite(d).all():
        raise ValueError(f"{name} contains NaN or inf")
    return d


def _homography(H, name: str) -> np.ndarray:
    m = _as_numpy(H, name)
    if m.shape != (3, 3):
        raise ValueError(f"{name} must be a (3, 3) homography, got shape {m.shape}")
    return m


def _project(H: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """(N, 2) points mapped by ``H`` with the homogeneous division; a point sent to infinity
    (third coordinate 0) comes back as inf / NaN, never as an error."""
    hom = np.concatenate([xy, np.ones((xy.shape[0], 1))], axis=1) @ H.T
    with np.errstate(divide="ignore", invalid="ignore"):
        return hom[:, :2] / hom[:, 2:3]


def _thresholds(thresholds: Iterable[float]) -> list[float]:
    ts = [float(t) for t in thresholds]
    if any(not (t >= 0) for t in ts):  # also rejects NaN
        raise ValueError(f"thresholds must be >= 0 px, got {ts}")
    return ts


#: the largest integer float64 holds exactly (2^53): integer descriptors' squared distances by the
#: ``|a|² + |b|² − 2 a·b`` expansion are exact below it
_EXACT = float(1 << 53)


def _squared_distances(d1: np.ndarray, d2: np.ndarray) -> np.ndarray:
    """(N, M) squared L2 distances, exactly: for integer-valued descriptors (SIFT's uint8) whose
    squared norms stay far below 2^53, the expansion ``|a|² + |b|² − 2 a·b`` by one float64 matrix
    product (integers throughout, so equal distances are bit-equal; about 50 times faster at 500
    keypoints a side); otherwise squared differences summed in blocks (no expansion)."""
    na, nb = (d1 * d1).sum(1), (d2 * d2).sum(1)
    integer = np.all(d1 == np.rint(d1)) and np.all(d2 == np.rint(d2))
    if integer and max(na.max(), nb.max()) * 4 < _EXACT:  # |a - b|² <= 2 (|a|² + |b|²)
        return na[:, None] + nb[None, :] - 2.0 * (d1 @ d2.T)
    n, m = d1.shape[0], d2.shape[0]
    dist = np.empty((n, m), dtype=np.float64)
    rows = max(1, _BLOCK_ELEMENTS // max(1, m * d1.shape[1]))
    for start in range(0, n, rows):
        diff = d1[start:start + rows, None, :] - d2[None, :, :]
        dist[start:start + rows] = np.einsum("ijk,ijk->ij", diff, diff)
    return dist


def mutual_nearest_neighbours(desc1, desc2) -> np.ndarray:
    """Mutual nearest neighbours of two descriptor sets by Euclidean (L2) distance.

    ``(i, j)`` is a match when ``j`` is the nearest descriptor of ``desc2`` to ``desc1[i]`` and
    ``i`` is the nearest descriptor of ``desc1`` to ``desc2[j]``. Distances are computed exactly
    (:func:`_squared_distances`: integer descriptors by an exact float64 product, others as
    squared differences summed), so equal descriptors give bit-equal distances; ties go to the
    **lowest index** on both sides (deterministic). Memory: the (N, M) distance matrix plus blocks
    of about 2²⁴ elements.

    Args:
        desc1: (N, D) descriptors of image 1, any scale (not normalised here), finite.
        desc2: (M, D) descriptors of image 2, same D and scale.

    Returns:
        (K, 2) int64 numpy array of index pairs ``(i, j)`` sorted by ``i``; K <= min(N, M).
        An empty side (N = 0 or M = 0) gives (0, 2).

    Raises:
        ValueError: not 2-D, different D, NaN / inf values.
    """
    d1 = _descriptors(desc1, "desc1")
    d2 = _descriptors(desc2, "desc2")
    if d1.shape[1] != d2.shape[1]:
        raise ValueError(f"descriptor sizes differ: {d1.shape[1]} vs {d2.shape[1]}")
    n, m = d1.shape[0], d2.shape[0]
    if n == 0 or m == 0:
        return np.zeros((0, 2), dtype=np.int64)
    dist = _squared_distances(d1, d2)
    nn12 = np.argmin(dist, axis=1)  # numpy's argmin returns the first (lowest) index of a tie
    nn21 = np.argmin(dist, axis=0)
    i = np.nonzero(nn21[nn12] == np.arange(n))[0]
    return np.stack([i, nn12[i]], axis=1).astype(np.int64)


def match_errors(xy1, xy2, pairs: np.ndarray, H) -> np.ndarray:
    """(K,) distances in pixels of image 2 between each match's point in image 1 mapped by ``H``
    and its point in image 2 (``pairs``: (K, 2) indices ``(i, j)``); ``inf`` for a point ``H``
    sends to infinity. What :func:`matching_accuracy` thresholds."""
    p1, p2 = _points(xy1, "xy1"), _points(xy2, "xy2")
    err = np.linalg.norm(_project(_homography(H, "H"), p1[pairs[:, 0]]) - p2[pairs[:, 1]], axis=1)
    return np.where(np.isfinite(err), err, np.inf)


def matching_accuracy(xy1, desc1, xy2, desc2, H,
                      thresholds: Sequence[float] = (1, 3, 5)) -> dict[str, float | int]:
    """Mean matching accuracy (MMA) of one image pair, the HPatches protocol of D2-Net /
    SuperPoint without keypoint filtering.

    Matches are the :func:`mutual_nearest_neighbours` of the descriptors (L2). A match
    ``(i, j)`` is correct at threshold ``t`` when ``‖π(H · [xy1[i], 1]) − xy2[j]‖₂ <= t`` (π the
    homogeneous division); ``mma@t`` = correct matches / matches. A point that ``H`` sends to
    infinity is never correct. Keypoints are not restricted to the area both images share.

    Args:
        xy1: (N, 2) keypoints of image 1, x then y, in pixels (numpy or torch).
        desc1: (N, D) their descriptors.
        xy2: (M, 2) keypoints of image 2, x then y, in pixels.
        desc2: (M, D) their descriptors (same D and scale as ``desc1``).
        H: (3, 3) ground-truth homography mapping image 1 to image 2 (x-then-y homogeneous).
        thresholds: pixel thresholds ``t`` >= 0 (HPatches plots use 1 to 10; default 1, 3, 5).

    Returns:
        ``{"mma@<t>": float in [0, 1], ..., "matches": int}`` with keys ``f"mma@{t:g}"``
        (``mma@1``, ``mma@3``, ``mma@5``, ``mma@2.5``); higher is better. No match (an empty
        side, or no mutual pair) gives every ``mma`` 0.0 and ``matches`` 0.

    Raises:
        ValueError: malformed shapes, keypoint and descriptor counts that differ, NaN / inf
            descriptors, negative thresholds.
    """
    ts = _thresholds(thresholds)
    p1, p2 = _points(xy1, "xy1"), _points(xy2, "xy2")
    d1, d2 = _descriptors(desc1, "desc1"), _descriptors(desc2, "desc2")
    if p1.shape[0] != d1.shape[0] or p2.shape[0] != d2.shape[0]:
        raise ValueError(
            f"keypoints and descriptors differ in number: {p1.shape[0]} vs {d1.shape[0]} "
            f"(image 1), {p2.shape[0]} vs {d2.shape[0]} (image 2)"
        )
    _homography(H, "H")
    pairs = mutual_nearest_neighbours(d1, d2)
    out: dict[str, float | int] = {}
    if pairs.shape[0] == 0:
        out.update({f"mma@{t:g}": 0.0 for t in ts})
        out["matches"] = 0
        return out
    err = match_errors(p1, p2, pairs, H)
    for t in ts:
        out[f"mma@{t:g}"] = float(np.mean(err <= t))
    out["matches"] = int(pairs.shape[0])
    return out


def image_corners(size: tuple[int, int]) -> np.ndarray:
    """The four corner pixel centres of an image of ``size`` = (h, w): (4, 2) float64, x then
    y, in the order (0, 0), (w − 1, 0), (0, h − 1), (w − 1, h − 1) — top-left, top-right,
    bottom-left, bottom-right (SuperPoint's HPatches evaluation's corners)."""
    h, w = (int(v) for v in size)
    if h < 1 or w < 1:
        raise ValueError(f"size must be (h, w) with h, w >= 1, got {size}")
    return np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1]], dtype=np.float64)


def corner_error(H_true, H_est, size: tuple[int, int]) -> float:
    """Mean corner error of an estimated homography (SuperPoint's HPatches homography
    estimation measure).

    The corner pixel centres of image 1, ``(0, 0), (w − 1, 0), (0, h − 1), (w − 1, h − 1)`` (x
    then y; see :func:`image_corners`), are mapped by both homographies (with the homogeneous
    division); the error is the mean over the 4 corners of the Euclidean distance between the
    two mapped points. (LoFTR and SuperGlue's HPatches code use the same corners, listed in
    another order; the mean does not depend on it.)

    Args:
        H_true: (3, 3) ground-truth homography, image 1 → image 2 (x-then-y homogeneous).
        H_est: (3, 3) estimated homography, or None when estimation failed.
        size: (h, w) of image 1 in pixels.

    Returns:
        The error in pixels of image 2, in [0, inf); 0 when the two are equal up to scale.
        ``inf`` when ``H_est`` is None or a corner is sent to infinity (or NaN) by either.
    """
    if H_est is None:
        return math.inf
    corners = image_corners(size)
    a = _project(_homography(H_true, "H_true"), corners)
    b = _project(_homography(H_est, "H_est"), corners)
    with np.errstate(invalid="ignore"):
        err = float(np.mean(np.linalg.norm(a - b, axis=1)))
    return err if math.isfinite(err) else math.inf


def _errors(errors: Iterable[float]) -> np.ndarray:
    if not (hasattr(errors, "detach") or isinstance(errors, np.ndarray)):
        errors = list(errors)
    e = _as_numpy(errors, "errors").ravel()
    e = np.where(np.isnan(e), np.inf, e)  # NaN: a failed pair, like inf
    if (e < 0).any():
        raise ValueError("corner errors must be >= 0")
    return e


def homography_accuracy(errors: Iterable[float],
                        thresholds: Sequence[float] = (1, 3, 5)) -> dict[str, float]:
    """Homography estimation accuracy over a set of image pairs: the share of pairs whose
    :func:`corner_error` is <= ``t`` (SuperPoint's "homography estimation correctness").

    Args:
        errors: (P,) per-pair corner errors in pixels, >= 0; ``inf`` (or NaN) marks a failed
            estimation and counts as incorrect at every threshold.
        thresholds: pixel thresholds ``t`` >= 0 (SuperPoint reports 1, 3, 5).

    Returns:
        ``{"h_acc@<t>": float in [0, 1], ...}`` with keys ``f"h_acc@{t:g}"``; higher is better.
        No pairs: every value 0.0.
    """
    ts = _thresholds(thresholds)
    e = _errors(errors)
    if e.size == 0:
        return {f"h_acc@{t:g}": 0.0 for t in ts}
    return {f"h_acc@{t:g}": float(np.mean(e <= t)) for t in ts}


def homography_auc(errors: Iterable[float],
                   thresholds: Sequence[float] = (1, 3, 5)) -> dict[str, float]:
    """Area under the cumulative corner-error curve up to ``t``, divided by ``t`` — the
    SuperGlue / LoFTR ``pose_auc`` (LoFTR's and many later papers' HPatches "AUC@3/5/10px").

    Exactly ``pose_auc``: the errors sorted ascending, recall ``(i + 1) / P`` at the i-th, the
    point (0, 0) prepended; the curve is cut at ``t``: the points with error < ``t`` are kept
    (``np.searchsorted(errors, t)``, side left) and the point ``(t, recall of the last kept
    point)`` is appended — the recall is held flat from the last error below ``t`` to ``t``, not
    interpolated towards the next point, as the reference code does. AUC = trapezoid integral
    of recall over error on [0, t], divided by t.

    Args:
        errors: (P,) per-pair corner errors in pixels, >= 0; ``inf`` (or NaN) marks a failed
            estimation: it stays in P (lowers every recall) and never enters the curve.
        thresholds: pixel thresholds ``t`` > 0 (LoFTR reports 3, 5, 10).

    Returns:
        ``{"h_auc@<t>": float in [0, 1], ...}`` with keys ``f"h_auc@{t:g}"``; higher is better
        (1 only if every error is 0). No pairs: every value 0.0.
    """
    ts = _thresholds(thresholds)
    if any(t == 0 for t in ts):
        raise ValueError("homography_auc thresholds must be > 0 px")
    e = np.sort(_errors(errors))
    if e.size == 0:
        return {f"h_auc@{t:g}": 0.0 for t in ts}
    recall = np.r_[0.0, np.arange(1, e.size + 1) / e.size]
    e = np.r_[0.0, e]
    out = {}
    for t in ts:
        last = int(np.searchsorted(e, t))  # >= 1: e[0] = 0 < t
        r = np.r_[recall[:last], recall[last - 1]]
        x = np.r_[e[:last], t]
        out[f"h_auc@{t:g}"] = float(np.sum((x[1:] - x[:-1]) * (r[1:] + r[:-1]) / 2) / t)
    return out


def estimate_homography(xy1, xy2, ransac_px: float = 3.0,
                        seed: int = 0) -> tuple[np.ndarray | None, np.ndarray]:
    """Homography from matched points by OpenCV RANSAC:
    ``cv2.findHomography(xy1, xy2, cv2.RANSAC, ransac_px)`` (OpenCV's defaults otherwise:
    2000 iterations, confidence 0.995, then a Levenberg–Marquardt refinement on the inliers).

    ``cv2.setRNGSeed(seed)`` is called first (it seeds OpenCV's RNG of the calling thread, a
    side effect on other OpenCV random calls of that thread), so results are reproducible.

    Args:
        xy1: (K, 2) matched points in image 1, x then y, in pixels.
        xy2: (K, 2) their matches in image 2 (row k matches row k).
        ransac_px: RANSAC reprojection threshold in pixels of image 2 (> 0).
        seed: OpenCV RNG seed.

    Returns:
        ``(H, inliers)``: H a (3, 3) float64 homography mapping image 1 to image 2, normalised
        by OpenCV to ``H[2, 2] = 1``, or None when K < 4 or OpenCV finds none (degenerate
        points); ``inliers`` a (K,) bool numpy array (all False when H is None).
    """
    p1, p2 = _points(xy1, "xy1"), _points(xy2, "xy2")
    if p1.shape[0] != p2.shape[0]:
        raise ValueError(f"xy1 and xy2 differ in number: {p1.shape[0]} vs {p2.shape[0]}")
    if not ransac_px > 0:
        raise ValueError(f"ransac_px must be > 0, got {ransac_px}")
    k = p1.shape[0]
    none = (None, np.zeros(k, dtype=bool))
    if k < 4 or not (np.isfinite(p1).all() and np.isfinite(p2).all()):
        return none
    import cv2

    cv2.setRNGSeed(int(seed))
    try:
        H, mask = cv2.findHomography(
            p1.astype(np.float32), p2.astype(np.float32), cv2.RANSAC, float(ransac_px)
        )
    except cv2.error:  # pragma: no cover - OpenCV reports degenerate input by returning None
        return none
    if H is None or H.shape != (3, 3) or not np.isfinite(H).all():
        return none
    inliers = np.zeros(k, dtype=bool) if mask is None else mask.ravel().astype(bool)
    return H.astype(np.float64), inliers


def random_homography(h: int, w: int, rng: np.random.Generator, perturbation: float = 0.15,
                      rotation_deg: float = 10.0,
                      scale: tuple[float, float] = (0.9, 1.1)) -> np.ndarray:
    """A seeded random homography for synthetic image pairs, a simplified version of
    SuperPoint's ``sample_homography`` (homographic adaptation / training pairs).

    The corners ``c_k`` of image 1 (:func:`image_corners`, pixel centres, x then y) are moved:

    1. each corner by independent uniform noise, ``U(−p, p) · (w − 1)`` in x and
       ``U(−p, p) · (h − 1)`` in y, ``p = perturbation`` (a (4, 2) draw from ``rng``);
    2. then all four rotated about the image centre ``((w − 1)/2, (h − 1)/2)`` by an angle
       ``U(−rotation_deg, rotation_deg)`` (positive: clockwise on screen, y pointing down) and
       scaled about it by ``U(scale[0], scale[1])`` (one draw each, in that order).

    The homography is ``cv2.getPerspectiveTransform(corners, moved corners)`` (OpenCV takes the
    points as float32 and solves in float64), so it maps each ``c_k`` to its moved corner up to
    float32 rounding (about 1e-5 px on a 1000-px image).

    Bounds (why ``perturbation < 0.25``): after step 1 each corner's offset from the centre
    is, in x, between ``(1/2 − p)(w − 1)`` and ``(1/2 + p)(w − 1)`` in size (same for y with
    ``h − 1``), with the sign of the original corner's, so each corner keeps its own quadrant;
    with ``p < 1/4`` the moved quadrilateral is moreover convex with the image's orientation
    (its diagonals cross), so the homography keeps the whole image at finite points (its third
    homogeneous coordinate has one sign over the image) and ``cv2.warpPerspective`` shows
    image 1 unfolded. Step 2 is a similarity, which keeps all this. Hence, with
    ``d = √((w − 1)² + (h − 1)²)`` the image diagonal, every warped corner lies between
    ``min(scale) · (1/2 − p) · d`` and ``max(scale) · (1/2 + p) · d`` px from the centre
    (0.315 d and 0.715 d with the defaults, against 0.5 d for the identity).

    Args:
        h, w: image size in pixels (>= 2 each).
        rng: the numpy random generator the draws come from (same state → same homography).
        perturbation: largest corner displacement as a fraction of the side, in [0, 0.25).
        rotation_deg: largest rotation in degrees, in [0, 180].
        scale: (low, high) range of the scale factor, 0 < low <= high.

    Returns:
        (3, 3) float64 homography mapping image 1 to image 2 (x-then-y homogeneous),
        normalised to ``H[2, 2] = 1``.
    """
    if int(h) < 2 or int(w) < 2:
        raise ValueError(f"random_homography needs h, w >= 2, got {h}, {w}")
    if not 0 <= perturbation < 0.25:
        raise ValueError(f"perturbation must be in [0, 0.25), got {perturbation}")
    if not 0 <= rotation_deg <= 180:
        raise ValueError(f"rotation_deg must be in [0, 180], got {rotation_deg}")
    lo, hi = (float(s) for s in scale)
    if not 0 < lo <= hi:
        raise ValueError(f"scale must be (low, high) with 0 < low <= high, got {scale}")
    import cv2

    src = image_corners((h, w))
    side = np.array([w - 1, h - 1], dtype=np.float64)
    centre = side / 2
    noise = rng.uniform(-perturbation, perturbation, size=(4, 2)) * side
    angle = math.radians(rng.uniform(-rotation_deg, rotation_deg))
    s = rng.uniform(lo, hi)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    dst = centre + s * (src + noise - centre) @ rot.T
    H = cv2.getPerspectiveTransform(src.astype(np.float32), dst.astype(np.float32))
    return (H / H[2, 2]).astype(np.float64)


def warp_image(image: np.ndarray, H, size: tuple[int, int]) -> np.ndarray:
    """Image 1 seen through a homography: ``cv2.warpPerspective`` (bilinear, constant border 0).

    Output pixel ``q`` takes image 1's value at ``H⁻¹ q`` (pixel centres at integers), so a
    point ``p`` of ``image`` appears at ``H p`` in the result; areas with no source are 0.

    Args:
        image: (H, W, C) or (H, W) numpy image, uint8 (0–255) or float (any range, float32 or
            float64); any C.
        H: (3, 3) homography mapping ``image`` to the output (x-then-y homogeneous).
        size: (h, w) of the output in pixels.

    Returns:
        The warped image, (h, w, C) (or (h, w) for a 2-D input), same dtype and range as
        ``image``.
    """
    import cv2

    img = np.asarray(image)
    if img.ndim not in (2, 3):
        raise ValueError(f"image must be (H, W) or (H, W, C), got shape {img.shape}")
    oh, ow = (int(v) for v in size)
    out = cv2.warpPerspective(
        np.ascontiguousarray(img), _homography(H, "H"), (ow, oh), flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT, borderValue=0,
    )
    if img.ndim == 3 and out.ndim == 2:  # OpenCV drops a single channel's axis
        out = out[:, :, None]
    return out
