"""What a system that shares SIFT features can do about the leak (``defence=sift``, SPEC §9).

Each image's sparse features — keypoint coordinates ``xy`` (N, 2) in the image's pixels (OpenCV's
convention), uint8 descriptors ``desc`` (N, 128) and the detector's strength per keypoint — go
through, in this order:

1. ``keep`` — the fraction of keypoints shared, ``round(keep * N)`` of them: ``select: random``
   (uniformly, without replacement) or ``response`` (the strongest: OpenCV's detector response,
   COLMAP's scale); the kept ones stay in the extractor's order;
2. ``descriptor_noise`` — Gaussian noise of this standard deviation, in descriptor units (uint8
   steps), added to every descriptor value, then rounded and clipped to [0, 255];
3. ``descriptor_bits`` — each value quantised to ``bits`` bits: ``2^(8 - bits)`` values share a
   level, represented by the middle of their range (8: unchanged);
4. ``coordinates: withheld`` — only descriptors are shared: the attack places each at the position
   of its nearest descriptor (Euclidean) in a reference image of the category (the SLI paper's
   reference-based variant, SLI-R), here the first ``reference_images`` images of the attacker's
   own training split (their descriptors quantised alike);
   ``positions_only`` — only keypoint positions are shared (SLI-B's case): every descriptor
   becomes the constant 255, so the map holds +1 at a keypoint in all 128 channels (the
   information of SLI-B's 1-channel occupancy map, in the shape every SIFT attack reads; the
   threat's ``occupancy`` setting is that 1-channel map itself, for SLI-B).

Random draws come from a generator seeded per image by
:class:`~reconattack.data.sift.mapper.SiftMapper`, the one path from keypoints to the model's map:
from the defence's seed and the training item's seed (a function of the run seed, the epoch and the
position), its split and index at evaluation, or its name in ``python -m reconattack.invert``, so
a test image is defended the same way in every run and process.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from reconattack.defences.base import META_KEYS
from reconattack.errors import ConfigError

SELECT = ("random", "response")
COORDINATES = ("exact", "withheld")


@dataclass(frozen=True)
class SiftDefence:
    """One SIFT defence setting (see the module docstring)."""

    keep: float = 1.0
    select: str = "random"
    descriptor_bits: int = 8
    descriptor_noise: float = 0.0
    coordinates: str = "exact"
    positions_only: bool = False
    reference_images: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.keep <= 1.0:
            raise ConfigError(f"defence.keep must be in (0, 1], got {self.keep}")
        if self.select not in SELECT:
            raise ConfigError(f"defence.select must be one of {SELECT}, got {self.select!r}")
        if not 1 <= self.descriptor_bits <= 8:
            raise ConfigError(f"defence.descriptor_bits must be in 1..8, got {self.descriptor_bits}")
        if self.descriptor_noise < 0:
            raise ConfigError(f"defence.descriptor_noise must be >= 0, got {self.descriptor_noise}")
        if self.coordinates not in COORDINATES:
            raise ConfigError(f"defence.coordinates must be one of {COORDINATES}, got {self.coordinates!r}")
        if self.positions_only and self.coordinates == "withheld":
            raise ConfigError("defence.positions_only with defence.coordinates=withheld shares nothing")
        if self.reference_images < 1:
            raise ConfigError(f"defence.reference_images must be >= 1, got {self.reference_images}")

    @property
    def needs_strength(self) -> bool:
        """The keypoints' strength is read (``select: response`` with ``keep`` < 1)."""
        return self.keep < 1.0 and self.select == "response"

    @property
    def needs_reference(self) -> bool:
        """Descriptors are placed by a reference image (``coordinates: withheld``)."""
        return self.coordinates == "withheld"

    def quantise(self, desc: np.ndarray) -> np.ndarray:
        """uint8 (N, 128) descriptors at ``descriptor_bits`` bits: each value to the middle of its
        level's range of ``2^(8 - bits)`` values (uint8, (N, 128))."""
        if self.descriptor_bits == 8:
            return desc
        step = 1 << (8 - self.descriptor_bits)
        return ((desc // step) * step + step // 2).astype(np.uint8)

    def select_keypoints(self, n: int, strength: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
        """Indices (increasing) of the ``round(keep * n)`` keypoints shared out of ``n``."""
        k = int(np.floor(self.keep * n + 0.5))
        if k >= n:
            return np.arange(n)
        if self.select == "response":
            if strength is None or len(strength) != n:
                raise ValueError("defence.select=response needs each keypoint's strength")
            chosen = np.argsort(-np.asarray(strength, np.float64), kind="stable")[:k]
        else:
            chosen = rng.choice(n, size=k, replace=False)
        return np.sort(chosen)

    def __call__(self, xy: np.ndarray, desc: np.ndarray, strength: np.ndarray | None = None,
                 rng: np.random.Generator | None = None,
                 reference: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The features an attacker receives.

        Args:
            xy: float32 (N, 2) keypoint (x, y) in pixels.
            desc: uint8 (N, 128) descriptors.
            strength: float (N,) keypoint strength (``select: response``).
            rng: the item's generator (``keep`` with ``select: random``, ``descriptor_noise``).
            reference: ``coordinates: withheld``: the reference keypoints ``(xy (R, 2), desc (R, 128))``
                on the same pixel grid as ``xy``.

        Returns:
            ``(xy, desc)``: float32 (M, 2), uint8 (M, 128), M = ``round(keep * N)`` (0 when
            coordinates are withheld and the reference has no keypoint).
        """
        rng = rng if rng is not None else np.random.default_rng(self.seed)
        xy, desc = np.asarray(xy, np.float32), np.asarray(desc, np.uint8)
        idx = self.select_keypoints(len(xy), strength, rng)
        xy, desc = xy[idx], desc[idx]
        if self.descriptor_noise > 0 and len(desc):
            noisy = desc.astype(np.float64) + rng.normal(0.0, self.descriptor_noise, desc.shape)
            desc = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
        desc = self.quantise(desc)
        if self.needs_reference:
            if reference is None:
                raise ValueError("defence.coordinates=withheld needs the reference keypoints")
            xy = self.place_by_reference(desc, *reference)
            if len(xy) < len(desc):  # an empty reference: nothing can be placed
                desc = desc[:0]
        if self.positions_only:
            desc = np.full_like(desc, 255)
        return np.ascontiguousarray(xy, np.float32), np.ascontiguousarray(desc)

    def place_by_reference(self, desc: np.ndarray, ref_xy: np.ndarray, ref_desc: np.ndarray) -> np.ndarray:
        """Each descriptor's position: that of its nearest (Euclidean) descriptor among the
        reference's, quantised as the shared ones. (N, 128) uint8, (R, 2), (R, 128) -> (N, 2)
        float32; (0, 2) when R is 0."""
        if len(ref_xy) == 0 or len(desc) == 0:
            return np.zeros((0 if len(ref_xy) == 0 else len(desc), 2), np.float32)
        a = desc.astype(np.float32)
        b = self.quantise(np.asarray(ref_desc, np.uint8)).astype(np.float32)
        d2 = (a * a).sum(1, keepdims=True) - 2.0 * a @ b.T + (b * b).sum(1)[None, :]
        return np.asarray(ref_xy, np.float32)[np.argmin(d2, axis=1)]

    def describe(self) -> str:
        """The non-default settings, ``key=value`` joined (``none`` when there are none)."""
        default = asdict(SiftDefence())
        parts = [f"{k}={v}" for k, v in asdict(self).items() if v != default[k] and k != "seed"]
        return ", ".join(parts) or "none"


def sift_defence(cfg: Mapping[str, Any] | None) -> SiftDefence | None:
    """The SIFT defence of a ``defence`` config (``conf/defence/*.yaml``), or None when the config
    is none (``name: none``), is not a SIFT defence (the AVIH one), or changes nothing."""
    cfg = dict(cfg or {})
    name = cfg.pop("name", "none")
    if name != "sift":
        return None
    fields = {k: cfg[k] for k in SiftDefence.__dataclass_fields__ if k in cfg}
    unknown = set(cfg) - set(SiftDefence.__dataclass_fields__) - META_KEYS
    if unknown:
        raise ConfigError(f"defence: unknown SIFT defence key(s) {sorted(unknown)}; expected "
                          f"{sorted(SiftDefence.__dataclass_fields__)}")
    fields = {k: (type(getattr(SiftDefence, k))(v) if k not in ("select", "coordinates") else str(v))
              for k, v in fields.items()}
    defence = SiftDefence(**fields)
    return None if defence == SiftDefence(seed=defence.seed) else defence


__all__ = ["COORDINATES", "SELECT", "SiftDefence", "sift_defence"]
