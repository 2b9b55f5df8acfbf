"""What a defence of shared local features costs the system that uses them: matching utility
accumulated over image pairs (SPEC §10, "Utility of SIFT under a defence").

This module holds the measures and their accumulation, whatever made the pairs; the SIFT threat
makes its pairs (:mod:`reconattack.threats.sift_utility`: each held-out image, the stored side
through the run's defence, against a random homography of it, extracted as the system extracts).
Kept apart because the numbers are metrics of features (``metrics/`` holds what a run is judged
by), while which features are shared and how they are defended is the threat's business.

Per pair (image 1 = what the system stores, image 2 = a homography ``H`` of it, :meth:`MatchingUtility.add`):

- matches: the mutual nearest neighbours of the two descriptor sets by L2
  (:func:`~reconattack.metrics.matching.mutual_nearest_neighbours`);
- ``mma@t``: the share of matches ``(i, j)`` with ``‖π(H · [xy1_i, 1]) − xy2_j‖ <= t`` px
  (:func:`~reconattack.metrics.matching.matching_accuracy`'s definition; 0 without a match);
- the RANSAC homography of the matched points (:func:`~reconattack.metrics.matching.estimate_homography`)
  and its mean corner error against ``H`` (:func:`~reconattack.metrics.matching.corner_error`;
  ``inf`` when estimation fails, fewer than 4 matches included); the inlier ratio (inliers /
  matches) of the pairs with 4 matches or more.

Over the pairs (:meth:`MatchingUtility.result`): the means of ``mma@t`` and of the match count,
the mean inlier ratio, the homography accuracy and AUC at each ``t`` of the corner errors
(:func:`~reconattack.metrics.matching.homography_accuracy`, :func:`~reconattack.metrics.matching.homography_auc`),
the pair count, and **pair retrieval** (:func:`pair_retrieval`): each image 2 of the first
``retrieval_images`` pairs looks for its image 1 among theirs by its number of mutual matches
(descriptors only: meaningful when coordinates are withheld too).

A measure the shared features cannot support is reported as ``"missing: <why>"`` (the run's
convention, :data:`~reconattack.metrics.states.MISSING_PREFIX`): the geometric ones when the
system shares no true coordinates, every descriptor one when it shares no descriptors.

Memory: per pair only its numbers are kept, plus the descriptors (never the images) of the first
``retrieval_images`` pairs for pair retrieval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from reconattack.metrics.matching import (
    corner_error,
    estimate_homography,
    homography_accuracy,
    homography_auc,
    match_errors,
    mutual_nearest_neighbours,
)
from reconattack.metrics.states import MISSING_PREFIX

__all__ = ["MatchingUtility", "pair_retrieval"]

def pair_retrieval(counts: np.ndarray) -> float:
    """Rank-1 pair retrieval: the share of queries whose own partner has the most matches.

    Args:
        counts: (Q, G) numbers of matches (any real values, higher = more alike) of query ``q``
            with gallery item ``g``; query ``q``'s own partner is gallery item ``q`` (Q <= G).

    Returns:
        The mean over queries of ``1/k`` when the partner is among the ``k`` gallery items with
        the query's largest count, else 0: in [0, 1]; ties are shared, so a query whose counts
        are all equal scores exactly ``1/G`` (chance). NaN for no query.
    """
    c = np.asarray(counts, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] > c.shape[1]:
        raise ValueError(f"counts must be (Q, G) with Q <= G, got shape {c.shape}")
    if c.shape[0] == 0:
        return math.nan
    top = c.max(axis=1, keepdims=True)
    own = c[np.arange(c.shape[0]), np.arange(c.shape[0])]
    ties = (c == top).sum(axis=1)
    return float(np.mean(np.where(own == top[:, 0], 1.0 / ties, 0.0)))


class MatchingUtility:
    """Matching utility over image pairs (see the module docstring).

    Args:
        thresholds: pixel thresholds of ``mma@t``, ``h_acc@t`` and ``h_auc@t`` (> 0).
        ransac_px: RANSAC reprojection threshold in pixels.
        seed: OpenCV's RANSAC seed (the same for every pair).
        retrieval_images: how many pairs (the first) pair retrieval looks among; None: every pair
            (their descriptors are kept until :meth:`result`; the cost grows with its square).
        no_geometry: why the shared coordinates are not the keypoints' (e.g. withheld); then the
            geometric measures are ``"missing: <it>"``.
        no_descriptors: why the shared descriptors are not the keypoints' (positions only); then
            every measure but the pair count is ``"missing: <it>"``.
    """

    def __init__(self, thresholds: Sequence[float] = (1, 3, 5), ransac_px: float = 3.0, seed: int = 0,
                 retrieval_images: int | None = 100, no_geometry: str | None = None,
                 no_descriptors: str | None = None) -> None:
        self.thresholds = [float(t) for t in thresholds]
        if not self.thresholds or any(not t > 0 for t in self.thresholds):
            raise ValueError(f"utility thresholds must be > 0 px, got {list(thresholds)}")
        if retrieval_images is not None and int(retrieval_images) < 1:
            raise ValueError(f"retrieval_images must be >= 1 or None, got {retrieval_images}")
        self.ransac_px, self.seed = float(ransac_px), int(seed)
        self.retrieval_images = None if retrieval_images is None else int(retrieval_images)
        self.no_descriptors = no_descriptors
        self.no_geometry = no_geometry or no_descriptors
        self.pairs = 0
        self.mma = {t: 0.0 for t in self.thresholds}  # sums over pairs
        self.matches = 0
        self.inlier_ratios: list[float] = []
        self.errors: list[float] = []  # (pairs,) corner errors: 8 bytes a pair
        self.stored: list[np.ndarray] = []  # descriptors of the first retrieval_images pairs
        self.queries: list[np.ndarray] = []

    def add(self, xy1: np.ndarray, desc1: np.ndarray, xy2: np.ndarray, desc2: np.ndarray, H: np.ndarray,
            size: tuple[int, int]) -> None:
        """One pair.

        Args:
            xy1: (N, 2) keypoints of image 1 as shared (x then y, pixels; OpenCV's convention).
            desc1: (N, 128) their descriptors as shared (uint8 in [0, 255], or any finite values).
            xy2: (M, 2) keypoints of image 2, pixels.
            desc2: (M, 128) their descriptors.
            H: (3, 3) the true homography mapping image 1 to image 2 (x-then-y homogeneous).
            size: (h, w) of image 1 (its corners measure the homography's error).
        """
        self.pairs += 1
        if self.retrieval_images is None or len(self.stored) < self.retrieval_images:
            self.stored.append(np.ascontiguousarray(desc1))
            self.queries.append(np.ascontiguousarray(desc2))
        if self.no_descriptors:
            return
        m = mutual_nearest_neighbours(desc1, desc2)
        self.matches += len(m)
        if self.no_geometry:
            return
        xy1, xy2 = np.asarray(xy1, np.float64).reshape(-1, 2), np.asarray(xy2, np.float64).reshape(-1, 2)
        p1, p2 = xy1[m[:, 0]], xy2[m[:, 1]]
        H = np.asarray(H, np.float64)
        if len(m):
            err = match_errors(xy1, xy2, m, H)
            for t in self.thresholds:
                self.mma[t] += float(np.mean(err <= t))
        H_est, inliers = estimate_homography(p1, p2, self.ransac_px, self.seed)
        if len(m) >= 4:
            self.inlier_ratios.append(float(inliers.sum()) / len(m))
        self.errors.append(corner_error(H, H_est, size))

    def retrieval_counts(self) -> np.ndarray:
        """(Q, Q) mutual-match counts of query (image 2) ``q`` with stored image 1 ``g`` over the
        first ``retrieval_images`` pairs."""
        q = len(self.queries)
        counts = np.zeros((q, q), np.int64)
        for i, d2 in enumerate(self.queries):
            for j, d1 in enumerate(self.stored):
                counts[i, j] = len(mutual_nearest_neighbours(d1, d2))
        return counts

    def result(self, prefix: str = "utility/") -> dict[str, float | int | str]:
        """``{prefix + name: value}``: ``mma@<t>``, ``matches``, ``inlier_ratio``, ``h_acc@<t>``,
        ``h_auc@<t>`` (means over pairs, in [0, 1]; ``matches`` per pair, >= 0),
        ``pair_retrieval@1`` (in [0, 1], chance ``1/pair_retrieval_n``), ``pair_retrieval_n`` and
        ``pairs``; ``"missing: <why>"`` for what the pairs cannot measure."""
        ts = self.thresholds
        geometric = [f"mma@{t:g}" for t in ts] + ["inlier_ratio"] + [f"{k}@{t:g}" for k in ("h_acc", "h_auc") for t in ts]
        out: dict[str, float | int | str] = {}
        why = self.no_geometry or ("no image pair (no held-out image)" if not self.pairs else None)
        if why:
            out.update({k: MISSING_PREFIX + why for k in geometric})
        else:
            out.update({f"mma@{t:g}": self.mma[t] / self.pairs for t in ts})
            out["inlier_ratio"] = (float(np.mean(self.inlier_ratios)) if self.inlier_ratios
                                   else MISSING_PREFIX + "no pair had the 4 matches a homography needs")
            out.update(homography_accuracy(self.errors, ts))
            out.update(homography_auc(self.errors, ts))
        why = self.no_descriptors or ("no image pair (no held-out image)" if not self.pairs else None)
        if why:
            out["matches"] = out["pair_retrieval@1"] = MISSING_PREFIX + why
        else:
            out["matches"] = self.matches / self.pairs
            out["pair_retrieval@1"] = pair_retrieval(self.retrieval_counts())
        out["pair_retrieval_n"] = len(self.queries)
        out["pairs"] = self.pairs
        return {prefix + k: v for k, v in out.items()}
