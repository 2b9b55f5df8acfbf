"""Utility of the SIFT threat's shared features under the run's defence: what the defence costs the
system that uses them (SPEC §10; ``threat.utility``, issue 29 §3), measured in the same run as the
attack, once per run (rank 0, when the threat prepares its data).

The pairs: each held-out test image ``I`` (at the model's size, S x S) and ``I`` seen through a
seeded random homography ``H`` (:func:`~reconattack.metrics.matching.random_homography`,
SuperPoint-style; drawn from ``numpy.random.default_rng([run seed, k])`` for the k-th test image,
so every run of the same seed and split uses the same pairs, whatever its defence;
:func:`~reconattack.metrics.matching.warp_image`, black outside).

- Image 1, the stored side, is what the system shares of ``I``: its keypoints through the run's
  defence exactly as the attack holds them at evaluation, by the test dataset's own path
  (:meth:`~reconattack.data.sift_data.SiftImageDataset._keypoints`: the SIFT cache, then
  :meth:`~reconattack.data.sift.mapper.SiftMapper.share` with the item's evaluation key).
- Image 2 is what the system extracts from a new photo of the scene: SIFT of the warped image
  with the threat's own extractor and settings (:meth:`~reconattack.data.sift.cache.SiftCache.extract`,
  not cached), undefended.

The measures and their accumulation are :class:`~reconattack.metrics.utility.MatchingUtility`
(mutual nearest neighbours by L2; MMA, match count, inlier ratio, homography accuracy and AUC,
pair retrieval). A defence that removes what geometry needs makes the geometric keys
``"missing: <why>"``: ``coordinates: withheld`` (the shared positions are a reference image's,
not the keypoints'; pair retrieval by descriptors is still measured), ``positions_only`` and
``threat.occupancy`` (no descriptors: every measure but the pair count missing).

Cost: one SIFT extraction, one mutual-nearest-neighbour match and one RANSAC per test image,
image by image (only the descriptors of the first ``retrieval_images`` pairs are kept), plus
``retrieval_images²`` matches for pair retrieval; the demo's 20 test images of 64 x 64 take well
under a second.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from reconattack.data.images import resize
from reconattack.errors import ConfigError
from reconattack.metrics.matching import random_homography, warp_image
from reconattack.metrics.utility import MatchingUtility

__all__ = ["UtilitySettings", "sift_utility"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UtilitySettings:
    """``threat.utility`` (``conf/threat/sift.yaml``).

    Args:
        enabled: measure it (metrics ``utility/*``).
        perturbation: largest corner displacement of the random homography, a fraction of the
            side, in [0, 0.25).
        rotation_deg: largest rotation, degrees, in [0, 180].
        scale: (low, high) range of the homography's scale factor, 0 < low <= high.
        ransac_px: RANSAC reprojection threshold, pixels (> 0).
        thresholds: pixel thresholds of ``mma@t``, ``h_acc@t``, ``h_auc@t`` (> 0).
        max_images: how many test images (the split's first) make pairs; None: all.
        retrieval_images: how many pairs (the first) pair retrieval looks among (chance 1 / it);
            None: every pair.
    """

    enabled: bool = True
    perturbation: float = 0.15
    rotation_deg: float = 10.0
    scale: tuple[float, float] = (0.9, 1.1)
    ransac_px: float = 3.0
    thresholds: tuple[float, ...] = (1.0, 3.0, 5.0)
    max_images: int | None = None
    retrieval_images: int | None = 100

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> UtilitySettings:
        """The settings of a ``threat.utility`` mapping (None: the defaults); ConfigError for an
        unknown key or a value out of range."""
        cfg = dict(cfg or {})
        names = {f.name for f in fields(cls)}
        unknown = set(cfg) - names
        if unknown:
            raise ConfigError(f"threat.utility: unknown key(s) {sorted(unknown)}; expected {sorted(names)}")
        default = cls()

        def get(k: str) -> Any:
            return cfg.get(k, getattr(default, k))

        def count(k: str) -> int | None:
            return None if get(k) is None else int(get(k))

        try:
            s = cls(enabled=bool(get("enabled")), perturbation=float(get("perturbation")),
                    rotation_deg=float(get("rotation_deg")), scale=tuple(float(v) for v in get("scale")),
                    ransac_px=float(get("ransac_px")), thresholds=tuple(float(v) for v in get("thresholds")),
                    max_images=count("max_images"), retrieval_images=count("retrieval_images"))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"threat.utility: {exc}") from None
        if not 0 <= s.perturbation < 0.25:
            raise ConfigError(f"threat.utility.perturbation must be in [0, 0.25), got {s.perturbation}")
        if not 0 <= s.rotation_deg <= 180:
            raise ConfigError(f"threat.utility.rotation_deg must be in [0, 180], got {s.rotation_deg}")
        if len(s.scale) != 2 or not 0 < s.scale[0] <= s.scale[1]:
            raise ConfigError(f"threat.utility.scale must be [low, high] with 0 < low <= high, got {list(s.scale)}")
        if s.ransac_px <= 0:
            raise ConfigError(f"threat.utility.ransac_px must be > 0, got {s.ransac_px}")
        if not s.thresholds or any(t <= 0 for t in s.thresholds):
            raise ConfigError(f"threat.utility.thresholds must be pixel thresholds > 0, got {list(s.thresholds)}")
        for k in ("max_images", "retrieval_images"):
            v = getattr(s, k)
            if v is not None and v < (0 if k == "max_images" else 1):
                raise ConfigError(f"threat.utility.{k} must be null or >= {0 if k == 'max_images' else 1}, got {v}")
        return s


def _missing_reasons(mapper) -> tuple[str | None, str | None]:
    """``(no_geometry, no_descriptors)``: why the shared features of ``mapper`` (a
    :class:`~reconattack.data.sift.mapper.SiftMapper`) carry no true coordinates, no descriptors."""
    defence = mapper.defence
    if mapper.occupancy:
        return None, ("threat.occupancy: the system shares keypoint positions only, no descriptors to match them by")
    if defence is not None and defence.positions_only:
        return None, ("defence.positions_only: the system shares keypoint positions only, no descriptors to match "
                      "them by")
    if defence is not None and defence.coordinates == "withheld":
        return ("defence.coordinates=withheld: the system shares no keypoint coordinates (the positions are a "
                "reference image's), which matching accuracy and homography estimation need; pair retrieval by "
                "descriptors is measured"), None
    return None, None


def sift_utility(dataset, settings: UtilitySettings, seed: int) -> dict[str, float | int | str]:
    """The ``utility/*`` metrics of a held-out split (see the module docstring).

    Args:
        dataset: the test split, a :class:`~reconattack.data.sift_data.SiftImageDataset` (its
            source, indices, SIFT cache, mapper with the run's defence; images of side
            ``dataset.image_size``), or None for no test split (every measure missing).
        settings: ``threat.utility``.
        seed: the run seed: the homographies' draws and OpenCV's RANSAC.

    Returns:
        ``{"utility/<name>": value}`` (:meth:`~reconattack.metrics.utility.MatchingUtility.result`).
    """
    start = time.perf_counter()
    no_geometry, no_descriptors = _missing_reasons(dataset.mapper) if dataset is not None else (None, None)
    acc = MatchingUtility(settings.thresholds, settings.ransac_px, seed, settings.retrieval_images,
                          no_geometry=no_geometry, no_descriptors=no_descriptors)
    n = 0 if dataset is None else len(dataset)
    if settings.max_images is not None:
        n = min(n, settings.max_images)
    for k in range(n):
        side = dataset.image_size
        image = resize(dataset.source.load(dataset.indices[k]), side)  # (S, S, 3) uint8, as the test item's
        xy1, desc1 = dataset._keypoints(k)  # what the system shares, through the defence, as the attack sees it
        H = random_homography(side, side, np.random.default_rng([int(seed) & 0xFFFFFFFFFFFFFFFF, k]),
                              settings.perturbation, settings.rotation_deg, settings.scale)
        xy2, desc2 = dataset.cache.extract(warp_image(image, H, (side, side)))[:2]
        acc.add(xy1, desc1, xy2, desc2, H, (side, side))
    out = acc.result()
    log.info("utility of the shared SIFT (%d pairs, %.1f s): %s", acc.pairs, time.perf_counter() - start,
             ", ".join(f"{k.split('/', 1)[1]} {v:.3g}" for k, v in out.items() if isinstance(v, (int, float))))
    return out
