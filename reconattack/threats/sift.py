"""The SIFT threat model (SPEC §2, the CFGAN paper §III-A): a system shares the SIFT keypoints and
descriptors of its images (OpenCV SIFT, contrast threshold 0.03, on 256x256 images), placed into
a dense descriptor map and compressed by 2x2 blocks.

The attacker can extract SIFT from images of its own (same distribution), so it trains on
(SIFT map, image) pairs of the training split and is evaluated on held-out images. Batches are
those of :class:`reconattack.data.sift_data.SiftDataModule`: ``"input"`` (B, 128, S, S) maps in
[-1, 1], ``"target"`` (B, 3, H, H) images in [-1, 1].

Controls:

- ``mean_image``: the mean training image as the reconstruction of every test image (what an
  attacker knows without reading any feature); not applicable without a training split;
- ``shuffled_input``: the trained attack given another test image's SIFT map (image i gets the
  map of image i - 1, cyclically): what the attack reconstructs from the category alone.

The attack reads the features when it beats both.

Stored features (``threat.stored``): rows ``stored/<name>/*`` of the trained attack on the same
held-out images with their SIFT as another system stores it — COLMAP's instead of OpenCV's, or
extracted at the photos' own resolution and mapped onto the model's grid as ``python -m
reconattack.invert`` maps a database's (:class:`~reconattack.data.sift_data.StoredVariant`): how far
the attack carries over to a real database.

Training statistics (``threat.keypoint_stats``): when it prepares its data the threat measures
what the model will see of its keypoints — the per-image keypoint counts and the keypoint scales
of the training images at the model's size (:mod:`reconattack.data.sift.stats`) — and writes them
to ``sift_stats.json`` in the run directory: ``invert`` compares each database image with them, and
the stored rows with ``scale_filter: training`` keep the keypoints in their range of scales.

Utility (``threat.utility``): what the run's defence costs the system that uses the features, in
the same run: once its data is prepared, rank 0 matches each held-out image's shared features
(through the defence, as the attack sees them) with those the system extracts from a random
homography of the image (:mod:`reconattack.threats.sift_utility`); metrics ``utility/*`` in
``metrics.json``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from reconattack.data.images import DataNotFoundError
from reconattack.data.sift.mapper import SiftMapper
from reconattack.data.sift.stats import STATS_FILE, KeypointStats, TrustSettings
from reconattack.data.sift_data import SiftDataModule
from reconattack.threats.base import Reconstruct, ThreatEvaluation, ThreatModel
from reconattack.threats.sift_utility import UtilitySettings, sift_utility
from reconattack.utils.config import build, plain
from reconattack.utils.files import atomic_write_text

log = logging.getLogger(__name__)


def sift_visualisation(sift: torch.Tensor, size: int) -> torch.Tensor:
    """Picture of a SIFT map for sample grids: keypoint positions, brightness = mean |descriptor|.

    (B, 128, S, S) in [-1, 1] (0 = empty) -> (B, 3, size, size) in [-1, 1], black background.
    """
    occupied = (sift != 0).any(1, keepdim=True)
    strength = ((sift + 1) / 2).mean(1, keepdim=True)  # descriptor values back in [0, 1]
    v = torch.where(occupied, 0.35 + 0.65 * strength / strength.amax((2, 3), keepdim=True).clamp_min(1e-6),
                    torch.zeros_like(strength))
    v = F.interpolate(v, size=size, mode="nearest")
    return (v * 2 - 1).expand(-1, 3, -1, -1)


class SiftEvaluation(ThreatEvaluation):
    """Mean-image and shuffled-SIFT controls, and the stored-features rows ``stored_<name>`` (see
    the module docstring)."""

    def __init__(self, mean_image: torch.Tensor | None) -> None:
        super().__init__()
        self.has_mean = mean_image is not None
        self.register_buffer("mean_image", mean_image if mean_image is not None else torch.zeros(0))

    def controls(self, batch: dict, reconstruct: Reconstruct | None) -> dict[str, torch.Tensor]:
        out = {}
        if self.has_mean:
            out["mean_image"] = self.mean_image.to(batch["target"]).expand_as(batch["target"])
        if reconstruct is not None and "shuffled_input" in batch:
            out["shuffled_input"] = reconstruct({**batch, "input": batch["shuffled_input"]})
        if reconstruct is not None:
            for name, stored in batch.get("stored", {}).items():
                out[f"stored_{name}"] = reconstruct({**batch, "input": stored})
        return out


class SiftThreat(ThreatModel):
    """SIFT features of images (see the module docstring).

    Args:
        data: the ``data`` config: a :class:`~reconattack.data.sift_data.SiftDataModule` config
            (image source, image size, splits, loader settings).
        contrast_threshold: OpenCV SIFT contrast threshold (paper 0.03).
        compress: 2x2 block compression of the map (paper; Table III ablation: false).
        cache_dir: the sparse keypoint cache (shared by runs, keyed by image content + settings).
        placement: a keypoint whose pixel is taken is dropped (``first``, CFGAN) or moved to a free
            neighbour (``sli``, SLI's map; :func:`reconattack.data.sift.maps.build_maps`).
        occupancy: the system shares where its keypoints are, not their descriptors: a 1-channel
            occupancy map (SLI-B). (``defence.positions_only`` is another thing: the 128 channels
            kept, every descriptor 255, for attacks that read descriptor maps.)
        features: whose SIFT the system shares: ``opencv`` (the CFGAN paper's) or ``colmap``
            (COLMAP's, what structure-from-motion and localisation databases hold); ``colmap``:
            COLMAP extraction options overrides (default: COLMAP's defaults).
        stored: more test rows, ``{name: {features: opencv | colmap | null, size: model | native |
            factor}}``: the trained attack on the held-out images' SIFT as another system stores
            it (module docstring); metrics ``stored/<name>/*``.
        defence: the run's ``defence`` config (``conf/defence/``): a SIFT defence
            (:mod:`reconattack.defences.sift`) transforms every keypoint set the attacker sees,
            its training pairs included.
        keypoint_stats: the training statistics' settings
            (:class:`~reconattack.data.sift.stats.TrustSettings`: how many training images, the
            range of quantiles, the share outside it that ``invert`` warns of).
        utility: the utility measurement's settings (:class:`~reconattack.threats.sift_utility.
            UtilitySettings`: on or off, the random homographies, RANSAC, the thresholds, how many
            test images); metrics ``utility/*``.
    """

    provides = frozenset({"sift_map", "paired_images"})
    control_names = ("mean_image", "shuffled_input")
    defences = ("none", "sift")

    def __init__(self, data: Any, seed: int = 0, contrast_threshold: float = 0.03,
                 compress: bool = True, cache_dir: str = "./cache/sift", placement: str = "first",
                 occupancy: bool = False, features: str = "opencv", colmap: Any = None,
                 stored: Any = None, defence: Any = None, keypoint_stats: Any = None, utility: Any = None,
                 **base: Any) -> None:
        super().__init__(data, seed=seed, defence=defence, **base)
        self.contrast_threshold, self.compress = float(contrast_threshold), bool(compress)
        self.placement, self.occupancy = str(placement), bool(occupancy)
        self.features, self.colmap = str(features), plain(colmap) or {}
        self.cache_dir = str(cache_dir)
        self.dm: SiftDataModule = build(data, _recursive_=False, compress=self.compress,
                                        contrast_threshold=self.contrast_threshold,
                                        cache_dir=self.cache_dir, map_seed=self.seed,
                                        placement=self.placement, occupancy=self.occupancy,
                                        features=self.features, colmap=self.colmap,
                                        stored=plain(stored) or {}, defence=self.defence)
        #: keypoints -> the model's input map with the run's settings and defence (training's and
        #: ``invert``'s; without the reference images of ``coordinates: withheld``, which the data
        #: module adds at set-up)
        self.mapper: SiftMapper = self.dm.mapper
        self.image_size, self.map_size = self.mapper.image_size, self.mapper.map_size
        self.channels = self.mapper.channels
        self.mean_image: torch.Tensor | None = None
        #: how the training statistics are made and read (``threat.keypoint_stats``)
        self.trust = TrustSettings.from_config(plain(keypoint_stats))
        #: the utility measurement (``threat.utility``; :meth:`prepare`)
        self.utility = UtilitySettings.from_config(plain(utility))
        #: the training statistics (:meth:`prepare`; None without a training split)
        self.stats: KeypointStats | None = None

    def missing_inputs(self) -> list[str]:
        try:
            self.dm.check()
        except DataNotFoundError as exc:
            return [f"data.source: {exc}"]
        return []

    def prepare(self, ctx) -> dict:
        self.dm.run_dir = ctx.run_dir  # split.json goes there
        self.dm.prepare_data()
        self.dm.setup("fit")
        self.mean_image = self.dm.mean_train_image()
        if self.mean_image is None:
            log.warning("no training split: the mean-image control is not applicable")
        self.stats = self.dm.keypoint_stats(self.trust.max_images, self.trust.range)
        self.dm.use_stats(self.stats)
        if self.stats is not None:
            lo, hi = self.stats.scale_range
            log.info("training keypoints (%d images): median %g per image, grid scales [%.3g, %.3g] between the "
                     "quantiles %g and %g (%s)", self.stats.images, self.stats.median_count, lo, hi,
                     *self.stats.range, STATS_FILE)
            if ctx.is_global_zero:
                atomic_write_text(ctx.run_dir / STATS_FILE, json.dumps(self.stats.to_json(), indent=1))
        if self.utility.enabled and ctx.is_global_zero:  # once per run: metrics.json is rank 0's
            return sift_utility(self.dm.datasets.get("test"), self.utility, self.seed)
        return {}

    def datamodule(self, iterations: int | None = None) -> SiftDataModule:
        return self.dm

    def scoring(self) -> SiftEvaluation:
        return SiftEvaluation(self.mean_image)

    def control_rows(self) -> dict[str, str]:
        """The report's controls, and ``stored_<name>: stored/<name>`` per stored-features row."""
        return {**super().control_rows(), **{f"stored_{v.name}": f"stored/{v.name}" for v, _ in self.dm.stored}}

    # ------------------------------------------------------------------------------- display
    def visualise(self, batch: Mapping) -> torch.Tensor:
        return sift_visualisation(batch["input"], batch["target"].shape[-1])

    def input_example(self, batch_size: int = 1) -> torch.Tensor:
        return torch.zeros(batch_size, self.channels, self.map_size, self.map_size)
