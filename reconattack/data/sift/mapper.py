"""The one path from an image's SIFT keypoints to the model's input map, the run's defence included
(SPEC §2.1, §9).

Every map a SIFT model reads is made by a :class:`SiftMapper`: the training pairs, the test
items, the shuffled-SIFT control, the stored-features rows
(:class:`~reconattack.data.sift_data.SiftDataModule`) and the images ``python -m
reconattack.invert`` reconstructs from a database. It holds the run's map settings (the model's
grid side, compression, collision rule, descriptor or occupancy channels) and the run's SIFT
defence, and makes a map in two steps:

1. :meth:`SiftMapper.share`, per image (numpy, on the CPU: in the loader workers): the keypoints
   of an image of ``source_size`` (H, W) are put on the model's grid as ``cv2.resize`` of the whole
   image maps pixel centres (:func:`~reconattack.data.sift.maps.grid_xy`; unchanged when the image
   is at the model's size), then go through the defence (:mod:`reconattack.defences.sift`): what
   the attacker holds of that image.
2. :meth:`SiftMapper.maps`, per batch (on the training device): the dense maps of those keypoints
   (:func:`~reconattack.data.sift.maps.build_maps` with the run's settings).

``mapper(xy, desc, source_size, key=...)`` does both for one image.

A defence's random draws (``keep`` with ``select: random``, ``descriptor_noise``) come from
``numpy.random.default_rng([defence.seed, *key])``, ``key`` one of:

- :func:`training_key` of a training item's seed (a function of the run seed, the epoch and the
  position: :class:`~reconattack.data.sampling.ResumableSampler`);
- :func:`evaluation_key` of a held-out item's split and index: a test image is defended the same
  way in every run and process;
- :func:`name_key` of an image's name (``invert``): the same image name is defended the same way
  in every inversion.

``coordinates: withheld`` places each descriptor at its nearest descriptor's position among the
reference images' (:attr:`SiftMapper.references`: the first ``reference_images`` images of the
attacker's own training split, per feature kind; an image is never its own reference).

The scale filter (``scale_range``: ``invert --scale-filter training``, a ``threat.stored`` row's
``scale_filter: training``) is the first step of :meth:`SiftMapper.share`: it keeps the keypoints
whose scale, mapped onto the model's grid (:func:`~reconattack.data.sift.stats.grid_scale`), lies in
the range training saw (:mod:`reconattack.data.sift.stats`), before the grid and the defence: what a
photo larger than the model's input holds beyond what the model learnt is left out, as if the
system had shared only those keypoints.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from reconattack.data.sift.extraction import DESC_DIM
from reconattack.data.sift.maps import PLACEMENTS, build_maps, grid_xy, map_side
from reconattack.data.sift.stats import grid_scale, in_range
from reconattack.defences.sift import SiftDefence
from reconattack.errors import ConfigError

__all__ = ["SiftMapper", "evaluation_key", "name_key", "training_key"]

#: a reference image: (its source index, xy (R, 2) on the model's grid, desc (R, 128) uint8)
Reference = tuple[int, np.ndarray, np.ndarray]


def training_key(item_seed: int) -> tuple[int, ...]:
    """The defence key of a training item: its seed (mod 2^64)."""
    return (int(item_seed) & 0xFFFFFFFFFFFFFFFF,)


def evaluation_key(part: str, k: int) -> tuple[int, ...]:
    """The defence key of item ``k`` of a held-out split ``part``: (CRC-32 of the split's name, k)."""
    return zlib.crc32(part.encode()), int(k)


def name_key(name: str) -> tuple[int, ...]:
    """The defence key of an image known by its name (``invert``): the first 16 bytes of the
    SHA-256 of the name (UTF-8) as four little-endian 32-bit words."""
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).digest()
    return tuple(int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4))


class SiftMapper:
    """Keypoints, descriptors and their image's size → the model's input map, with the run's
    settings and defence (see the module docstring).

    Args:
        image_size: the model's image side ``S``: the grid keypoints are placed on.
        compress: 2x2 block compression (map side ``S // 2``).
        placement: a keypoint whose pixel is taken is dropped (``first``) or moved (``sli``).
        occupancy: a 1-channel occupancy map (SLI-B) instead of the 128 descriptor channels.
        defence: the run's SIFT defence, or None.
        references: ``{features: [(source index, xy, desc)]}``, the reference images of
            ``coordinates: withheld`` (:meth:`with_references`).
    """

    def __init__(self, image_size: int, compress: bool = True, placement: str = "first", occupancy: bool = False,
                 defence: SiftDefence | None = None, references: Mapping[str, Sequence[Reference]] | None = None
                 ) -> None:
        if placement not in PLACEMENTS:
            raise ConfigError(f"threat.placement must be one of {PLACEMENTS}, got {placement!r}")
        self.image_size, self.compress = int(image_size), bool(compress)
        self.map_size = map_side(self.image_size, self.compress)
        self.placement, self.occupancy = str(placement), bool(occupancy)
        self.defence = defence
        self.references = {str(f): list(refs) for f, refs in (references or {}).items()}

    @property
    def channels(self) -> int:
        """Channels of the map: 1 (occupancy) or 128 (descriptors)."""
        return 1 if self.occupancy else DESC_DIM

    @property
    def needs_strength(self) -> bool:
        """The defence reads each keypoint's strength (``select: response``)."""
        return self.defence is not None and self.defence.needs_strength

    @property
    def needs_reference(self) -> bool:
        """The defence places descriptors by reference images (``coordinates: withheld``)."""
        return self.defence is not None and self.defence.needs_reference

    def with_references(self, references: Mapping[str, Sequence[Reference]]) -> SiftMapper:
        """This mapper with the reference images of ``coordinates: withheld``."""
        return SiftMapper(self.image_size, self.compress, self.placement, self.occupancy, self.defence, references)

    def settings(self) -> dict[str, Any]:
        """The map settings and the defence (its fields, or None), as plain data."""
        return {"image_size": self.image_size, "map_size": self.map_size, "compress": self.compress,
                "placement": self.placement, "occupancy": self.occupancy,
                "defence": asdict(self.defence) if self.defence is not None else None}

    # ------------------------------------------------------------------- 1. sparse, per image
    def reference(self, features: str, exclude: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The reference keypoints ``(xy (R, 2), desc (R, 128))`` of ``features`` for an image with
        source index ``exclude`` (never its own reference): the first ``reference_images`` others."""
        if features not in self.references:
            raise ConfigError(f"defence.coordinates=withheld places descriptors by reference images of the "
                              f"attacker's training split, and none of {features} SIFT were given")
        refs = [r for r in self.references[features] if exclude is None or r[0] != exclude]
        refs = refs[: self.defence.reference_images]
        if not refs:
            return np.zeros((0, 2), np.float32), np.zeros((0, DESC_DIM), np.uint8)
        return (np.concatenate([r[1] for r in refs]).reshape(-1, 2),
                np.concatenate([r[2] for r in refs]).reshape(-1, DESC_DIM))

    def share(self, xy: np.ndarray, desc: np.ndarray, strength: np.ndarray | None = None,
              source_size: tuple[int, int] | None = None, *, key: Sequence[int], features: str = "opencv",
              exclude: int | None = None, scale: np.ndarray | None = None,
              scale_range: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """What the attacker holds of one image: with ``scale_range`` only its keypoints whose
        grid scale lies in it, then its keypoints on the model's grid, through the defence.

        Args:
            xy: float (N, 2) keypoint (x, y) in the image's pixels (OpenCV's convention).
            desc: uint8 (N, 128) descriptors.
            strength: float (N,) keypoint strength (read by ``select: response`` alone).
            source_size: (H, W) of the image the keypoints were found in; None: the model's size.
            key: the defence's key of this image (:func:`training_key`, :func:`evaluation_key`,
                :func:`name_key`).
            features: the keypoints' SIFT (``opencv`` | ``colmap``): which reference images place
                them when coordinates are withheld.
            exclude: the image's source index (never its own reference).
            scale: float (N,) keypoint scales in the image's pixels (SIFT sigma,
                :func:`~reconattack.data.sift.extraction.extract` ``with_scale``); read by the
                scale filter alone.
            scale_range: ``(lo, hi)``: keep only the keypoints whose scale on the model's grid
                (:func:`~reconattack.data.sift.stats.grid_scale`) is in ``[lo, hi]`` (order kept);
                None: every keypoint.

        Returns:
            ``(xy, desc)``: float32 (M, 2) on the model's grid, uint8 (M, 128).
        """
        if scale_range is not None:
            if scale is None or len(scale) != len(xy):
                raise ValueError(f"the scale filter needs a scale per keypoint ({len(xy)}), got "
                                 f"{'none' if scale is None else len(scale)}")
            keep = in_range(grid_scale(scale, source_size, self.image_size), scale_range)
            xy, desc = np.asarray(xy)[keep], np.asarray(desc)[keep]
            strength = None if strength is None else np.asarray(strength)[keep]
        if source_size is not None:
            xy = grid_xy(np.asarray(xy, np.float32), source_size, self.image_size)
        if self.defence is None:
            return xy, desc
        rng = np.random.default_rng([self.defence.seed, *key])
        reference = self.reference(features, exclude) if self.defence.needs_reference else None
        return self.defence(xy, desc, strength, rng, reference)

    # ------------------------------------------------------------------ 2. dense, per batch
    def maps(self, xys: Sequence, descs: Sequence, generator: torch.Generator | None = None,
             device: torch.device | str | None = None) -> torch.Tensor:
        """(B, C, s, s) float32 maps of shared keypoints (:meth:`share`) on ``device``: the
        2x2-block representatives drawn with ``generator`` (training), else the first-placed."""
        return build_maps(xys, descs, self.image_size, self.compress, generator=generator, device=device,
                          placement=self.placement, occupancy=self.occupancy)

    def __call__(self, xy: np.ndarray, desc: np.ndarray, source_size: tuple[int, int] | None = None,
                 strength: np.ndarray | None = None, *, key: Sequence[int], features: str = "opencv",
                 exclude: int | None = None, device: torch.device | str | None = None) -> torch.Tensor:
        """The (C, s, s) map of one image: :meth:`share`, then :meth:`maps`."""
        xy, desc = self.share(xy, desc, strength, source_size, key=key, features=features, exclude=exclude)
        return self.maps([xy], [desc], device=device)[0]

    def __repr__(self) -> str:
        defence = self.defence.describe() if self.defence is not None else "none"
        return (f"SiftMapper(image_size={self.image_size}, compress={self.compress}, placement={self.placement!r}, "
                f"occupancy={self.occupancy}, defence={defence!r})")

