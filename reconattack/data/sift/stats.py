"""What a SIFT model saw of its keypoints in training, and how far other features lie from it.

A model trained on SIFT extracted at its own input size ``S`` has seen a certain number of
keypoints per image and keypoints of certain scales. A database extracted from photos larger than
``S`` holds many more keypoints, most of them finer than anything training showed once their
scale is mapped onto the model's grid; the model's output on such maps says little (README, "How
far to trust it"). This module measures that:

- a keypoint's **scale** is its SIFT ``sigma`` in the pixels of the image it was found in
  (:func:`~reconattack.data.sift.extraction.extract` ``with_scale``: OpenCV's ``KeyPoint.size /
  2``, COLMAP's scale);
- its **grid scale** is that scale on the model's grid, as ``cv2.resize`` of the whole image to
  ``S x S`` shrinks it (:func:`grid_scale`: ``scale * S / sqrt(H * W)``, the geometric mean of the
  two axes' factors; an image at the model's size keeps its scales);
- the **training statistics** (:class:`KeypointStats`, ``sift_stats.json`` in the run directory,
  written by the SIFT threat when it prepares its data): the quantiles :data:`QUANTILES` of the
  training images' per-image keypoint counts and of their pooled grid scales, and the
  ``range``: the grid scales between two of those quantiles (default the 1st and the 99th
  percentile), what the model learnt;
- an image's **distance from training** (:func:`distance`): its keypoint count against the
  training counts' ``range`` quantiles and the training median, and the share of its keypoints
  whose grid scale lies outside the training range (about 2 % for a training image, by the
  range's definition); :func:`check` turns it into warnings with the thresholds of
  :class:`TrustSettings` (``threat.keypoint_stats``);
- the **scale filter** (:func:`in_range`, applied in
  :meth:`~reconattack.data.sift.mapper.SiftMapper.share`): keep only the keypoints whose grid
  scale lies in the training range.

A statistics file read back (``invert`` reads a run directory from elsewhere) is untrusted:
:func:`load_stats` checks its size, its JSON and every field, and refuses anything else.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reconattack.data.sift.extraction import FEATURES
from reconattack.errors import ConfigError

__all__ = ["QUANTILES", "SCHEMA", "STATS_FILE", "KeypointStats", "StatsError", "TrustSettings", "check",
           "distance", "grid_scale", "in_range", "load_stats", "parse_stats", "summarise"]

#: the training statistics' file in a run directory
STATS_FILE = "sift_stats.json"
#: the statistics' format (the file's ``schema``)
SCHEMA = "reconattack.sift_stats/1"
#: the quantiles recorded of the training counts and grid scales (numpy's default, linear)
QUANTILES = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0)
#: the largest statistics file read, in bytes (a real one is under 2 KB)
MAX_STATS_BYTES = 64 << 10
#: what a scale is, as the file and invert.json say it
SCALE_DEFINITION = ("SIFT sigma on the model's grid: OpenCV's KeyPoint.size / 2 or COLMAP's scale, times "
                    "S / sqrt(H * W) for an image of H x W mapped onto the S x S grid")


class StatsError(ValueError):
    """A statistics file that cannot be used (the message says why)."""


def grid_scale(scale: np.ndarray, source_size: tuple[int, int] | None, side: int) -> np.ndarray:
    """Scales (float (N,), in the pixels of an image of ``source_size`` (H, W)) on the ``side x
    side`` model grid: ``scale * side / sqrt(H * W)`` (None: the image is at the model's size,
    the scales are kept)."""
    scale = np.asarray(scale, np.float64).reshape(-1)
    if source_size is None:
        return scale
    h, w = source_size
    return scale * (float(side) / math.sqrt(float(h) * float(w)))


def in_range(grid: np.ndarray, scale_range: Sequence[float]) -> np.ndarray:
    """Boolean (N,): the grid scales ``lo <= g <= hi``."""
    lo, hi = scale_range
    grid = np.asarray(grid, np.float64)
    return (grid >= lo) & (grid <= hi)


def _quantiles(values: np.ndarray) -> list[float]:
    if len(values) == 0:
        return [0.0] * len(QUANTILES)
    return [float(v) for v in np.quantile(np.asarray(values, np.float64), QUANTILES)]


def _at(quantiles: Sequence[float], q: float) -> float:
    return float(quantiles[QUANTILES.index(q)])


@dataclass(frozen=True)
class TrustSettings:
    """``threat.keypoint_stats``: how the training statistics are made and read.

    Args:
        max_images: the training images read for the statistics (the training split's first, in
            its random order); more gives steadier quantiles at one extraction each.
        range: two of :data:`QUANTILES`, ``[lo, hi]``: the training range of grid scales (and of
            per-image counts) is what lies between these quantiles of training's.
        max_outside: an image is flagged when a larger share of its keypoints has a grid scale
            outside the training range (a training image has about ``lo + 1 - hi`` outside on
            average, by the range's definition).
    """

    max_images: int = 1000
    range: tuple[float, float] = (0.01, 0.99)
    max_outside: float = 0.25

    @classmethod
    def from_config(cls, node: Mapping | None) -> TrustSettings:
        node = dict(node or {})
        unknown = set(node) - {"max_images", "range", "max_outside"}
        if unknown:
            raise ConfigError(f"threat.keypoint_stats: unknown key(s) {sorted(unknown)}; expected max_images, range, "
                              "max_outside")
        out = cls(**{k: tuple(v) if k == "range" and isinstance(v, (list, tuple)) else v for k, v in node.items()})
        if isinstance(out.max_images, bool) or not isinstance(out.max_images, int) or out.max_images < 1:
            raise ConfigError(f"threat.keypoint_stats.max_images must be a positive integer, got {out.max_images!r}")
        if not (isinstance(out.range, tuple) and len(out.range) == 2 and all(q in QUANTILES for q in out.range)
                and out.range[0] < out.range[1]):
            raise ConfigError(f"threat.keypoint_stats.range must be two increasing values of {list(QUANTILES)}, "
                              f"got {out.range!r}")
        if isinstance(out.max_outside, bool) or not isinstance(out.max_outside, (int, float)) \
                or not 0 <= out.max_outside <= 1:
            raise ConfigError(f"threat.keypoint_stats.max_outside must be a share in [0, 1], got {out.max_outside!r}")
        return out


@dataclass(frozen=True)
class KeypointStats:
    """The training statistics (see the module docstring), as ``sift_stats.json`` holds them.

    ``count``, ``grid_scale`` and ``outside``: the values at :data:`QUANTILES` of the per-image
    keypoint counts, of the pooled grid scales of every keypoint, and of the per-image share of
    keypoints outside ``range`` (the grid scales between the ``range`` quantiles)."""

    features: str
    image_size: int
    images: int
    keypoints: int
    range: tuple[float, float]
    count: tuple[float, ...]
    grid_scale: tuple[float, ...]
    outside: tuple[float, ...]

    @property
    def scale_range(self) -> tuple[float, float]:
        """``(lo, hi)``: the training range of grid scales."""
        return _at(self.grid_scale, self.range[0]), _at(self.grid_scale, self.range[1])

    @property
    def count_range(self) -> tuple[float, float]:
        """``(lo, hi)``: the training range of per-image keypoint counts (the same quantiles)."""
        return _at(self.count, self.range[0]), _at(self.count, self.range[1])

    @property
    def median_count(self) -> float:
        return _at(self.count, 0.5)

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "scale": SCALE_DEFINITION, "quantiles": list(QUANTILES),
                **{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}}

    def summary(self) -> dict[str, Any]:
        """What ``invert.json`` says of the statistics."""
        lo, hi = self.range
        return {"images": self.images, "keypoints": self.keypoints, "quantiles": [lo, 0.5, hi],
                "count": [_at(self.count, q) for q in (lo, 0.5, hi)],
                "grid_scale": [_at(self.grid_scale, q) for q in (lo, 0.5, hi)],
                "outside_share": [_at(self.outside, q) for q in (lo, 0.5, hi)]}


def summarise(scales: Iterable[np.ndarray], features: str, image_size: int,
              scale_range: Sequence[float] = (0.01, 0.99)) -> KeypointStats:
    """The statistics of images at the model's size from each image's keypoint scales (its
    count is their number): the quantiles of the counts and of the pooled scales, then of each
    image's share of scales outside the ``scale_range`` quantiles of the pooled ones."""
    per_image = [np.asarray(s, np.float64).reshape(-1) for s in scales]
    pooled = np.concatenate(per_image) if per_image else np.zeros(0)
    grid = _quantiles(pooled)
    q = (float(scale_range[0]), float(scale_range[1]))
    lo, hi = _at(grid, q[0]), _at(grid, q[1])
    outside = [float((~in_range(s, (lo, hi))).mean()) for s in per_image if len(s)]
    return KeypointStats(str(features), int(image_size), len(per_image), int(len(pooled)), q,
                         tuple(_quantiles(np.array([len(s) for s in per_image], np.float64))), tuple(grid),
                         tuple(_quantiles(np.array(outside))))


def distance(scales: np.ndarray | None, count: int, source_size: tuple[int, int], image_size: int,
             stats: KeypointStats | None) -> dict[str, Any]:
    """One image's keypoints against training's: ``grid_scale`` (the 10th, 50th and 90th
    percentile of its grid scales; None without scales or keypoints); with ``stats`` also
    ``count_ratio`` (its keypoint count over the training median; None when that is 0),
    ``outside_training_scales`` (the share of its keypoints whose grid scale lies outside the
    training range) and ``in_training_scales`` (how many lie inside: what the scale filter keeps),
    both None without scales."""
    out: dict[str, Any] = {"grid_scale": None}
    grid = grid_scale(scales, source_size, image_size) if scales is not None and len(scales) else None
    if grid is not None:
        out["grid_scale"] = dict(zip(("p10", "median", "p90"), (float(v) for v in np.quantile(grid, (0.1, 0.5, 0.9)))))
    if stats is None:
        return out
    med = stats.median_count
    out["count_ratio"] = count / med if med > 0 else None
    inside = None if scales is None else in_range(grid if grid is not None else np.zeros(0), stats.scale_range)
    out["outside_training_scales"] = float((~inside).mean()) if inside is not None and len(inside) else None
    out["in_training_scales"] = int(inside.sum()) if inside is not None else None
    return out


def check(dist: Mapping[str, Any], count: int, stats: KeypointStats, settings: TrustSettings) -> list[dict]:
    """The warnings of one image's :func:`distance`: ``{check, value, threshold, message}`` for a
    keypoint count outside the training counts' range and for a share of keypoints outside the
    training scales above ``settings.max_outside``."""
    out = []
    lo, hi = stats.count_range
    if not lo <= count <= hi:
        out.append({"check": "keypoint_count", "value": count, "threshold": [lo, hi],
                    "message": f"{count} keypoints, outside training's per-image range [{lo:g}, {hi:g}] "
                               f"(quantiles {stats.range[0]:g}-{stats.range[1]:g}; median {stats.median_count:g})"})
    share = dist.get("outside_training_scales")
    if share is not None and share > settings.max_outside:
        s_lo, s_hi = stats.scale_range
        out.append({"check": "keypoint_scale", "value": share, "threshold": settings.max_outside,
                    "message": f"{share:.0%} of the keypoints have a scale on the model's grid outside training's "
                               f"[{s_lo:.3g}, {s_hi:.3g}] (more than {settings.max_outside:g})"})
    return out


# ---------------------------------------------------------------------------- the file, read back
def _number_list(data: Mapping, key: str, where: str, low: float = 0.0, high: float = math.inf) -> tuple[float, ...]:
    v = data.get(key)
    if not isinstance(v, list) or len(v) != len(QUANTILES):
        raise StatsError(f"{where}: {key} is not a list of {len(QUANTILES)} numbers")
    for x in v:
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or not low <= x <= high:
            raise StatsError(f"{where}: {key} holds {x!r} (expected numbers in [{low:g}, {high:g}])")
    if any(b < a for a, b in zip(v, v[1:])):
        raise StatsError(f"{where}: {key} is not in increasing order, as quantiles are")
    return tuple(float(x) for x in v)


def _count(data: Mapping, key: str, where: str) -> int:
    v = data.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise StatsError(f"{where}: {key} is {v!r}, not a count")
    return v


def parse_stats(data: Any, where: str = STATS_FILE) -> KeypointStats:
    """:class:`KeypointStats` from the JSON of a statistics file, every field checked; StatsError
    otherwise."""
    if not isinstance(data, dict):
        raise StatsError(f"{where}: not a JSON object")
    if data.get("schema") != SCHEMA:
        raise StatsError(f"{where}: schema {str(data.get('schema'))[:80]!r}, not {SCHEMA!r}")
    if data.get("quantiles") != list(QUANTILES):
        raise StatsError(f"{where}: quantiles are not {list(QUANTILES)}")
    if data.get("features") not in FEATURES:
        raise StatsError(f"{where}: features {str(data.get('features'))[:80]!r}, not one of {FEATURES}")
    rng = data.get("range")
    if not (isinstance(rng, list) and len(rng) == 2 and all(q in QUANTILES and not isinstance(q, bool) for q in rng)
            and rng[0] < rng[1]):
        raise StatsError(f"{where}: range {str(rng)[:80]} is not two increasing values of {list(QUANTILES)}")
    image_size = _count(data, "image_size", where)
    if image_size < 1:
        raise StatsError(f"{where}: image_size 0")
    return KeypointStats(data["features"], image_size, _count(data, "images", where), _count(data, "keypoints", where),
                         (float(rng[0]), float(rng[1])), _number_list(data, "count", where),
                         _number_list(data, "grid_scale", where), _number_list(data, "outside", where, high=1.0))


def load_stats(path: Path, features: str, image_size: int) -> KeypointStats:
    """The statistics file ``path`` of a run of ``features`` SIFT at ``image_size``, checked
    (:func:`parse_stats`; at most :data:`MAX_STATS_BYTES`; the same features and image size as the
    run's). FileNotFoundError when absent, StatsError when unusable."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(path)
    if not path.is_file():
        raise StatsError(f"{path}: not a file")
    with open(path, "rb") as f:
        raw = f.read(MAX_STATS_BYTES + 1)
    if len(raw) > MAX_STATS_BYTES:
        raise StatsError(f"{path}: more than the {MAX_STATS_BYTES} bytes a statistics file may hold")

    def refuse_constant(name: str) -> None:
        raise StatsError(f"{path}: {name}, which JSON does not allow")

    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        if isinstance(exc, StatsError):
            raise
        raise StatsError(f"{path}: not JSON ({type(exc).__name__}: {str(exc)[:120]})") from None
    stats = parse_stats(data, str(path))
    if stats.features != features or stats.image_size != int(image_size):
        raise StatsError(f"{path}: statistics of {stats.features} SIFT at {stats.image_size} px, the run has "
                         f"{features} SIFT at {image_size} px")
    return stats
