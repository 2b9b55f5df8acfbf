"""Data of the SIFT threat: images with their sparse SIFT keypoints, seeded splits, and the
LightningDataModule every attack on SIFT features reads.

Samples carry the resized image and its sparse keypoints as the attacker holds them (through the
run's defence); the dense SIFT maps are built per batch on the training device, in the
DataModule's ``on_after_batch_transfer``. Both steps are the run's
:class:`~reconattack.data.sift.mapper.SiftMapper` (:attr:`SiftDataModule.mapper`), the one path
from keypoints to maps that ``python -m reconattack.invert`` takes too. Batches on the device are what an attack on the
``sift`` threat reads:

- ``"input"``: (B, 128, S, S) SIFT descriptor maps in [-1, 1] (0 = no keypoint; (B, 1, S, S) of 0
  and 1 with ``occupancy``);
- ``"target"``: (B, 3, H, H) RGB images in [-1, 1];
- at evaluation also ``"shuffled_input"``: the map of the previous test image (cyclically), the
  input of the shuffled-SIFT control;
- in test batches with ``threat.stored`` also ``"stored"``: ``{name: (B, 128, S, S)}``, the same
  images' maps as another system stores their SIFT (another extractor, another resolution),
  keypoints mapped onto the model's grid (:class:`StoredVariant`).

Image sources are named in the config with ``_target_`` (:class:`~reconattack.data.images.
ImageFolderSource`, :class:`~reconattack.data.images.LMDBSource`, :func:`~reconattack.data.
images.open_auto`, :func:`~reconattack.data.images.lfw_faces`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from reconattack.data.images import DataNotFoundError, ImageReadError, resize
from reconattack.data.sampling import (
    ResumableLoader,
    ResumableSampler,
    consumed_batches,
    loader_generator,
    trainer_rank_and_world,
)
from reconattack.data.sift.cache import SiftCache
from reconattack.data.sift.extraction import FEATURES
from reconattack.data.sift.mapper import SiftMapper, evaluation_key, training_key
from reconattack.data.sift.stats import KeypointStats, summarise
from reconattack.defences.sift import sift_defence
from reconattack.errors import ConfigError, InputNotFoundError
from reconattack.utils.config import build
from reconattack.utils.distributed import per_process_batch
from reconattack.utils.files import atomic_write_text

log = logging.getLogger(__name__)

#: mixed into a batch's first item seed for its 2x2-block draws (the item's augmentation uses the
#: seed itself)
MAP_SEED_SALT = 0x2545F4914F6CDD1D

def split_counts(n: int, val: float, test: float) -> tuple[int, int, int]:
    """Sizes (train, val, test) of ``n`` items.

    ``val`` / ``test`` are fractions when given as floats <= 1 (``1.0`` = everything) and
    counts when given as integers.
    """
    def count(x: float) -> int:
        return int(round(x * n)) if isinstance(x, float) and x <= 1 else int(x)

    n_val, n_test = count(val), count(test)
    if n_val + n_test > n:
        raise ConfigError(f"split asks for {n_val} val + {n_test} test images but only {n} are available")
    return n - n_val - n_test, n_val, n_test


def make_split(names: Sequence[str], val: float, test: float, seed: int,
               max_images: int | None = None) -> dict[str, list[str]]:
    """Seeded random selection of ``max_images`` names, then a random train/val/test split.

    Returns ``{"train": [...], "val": [...], "test": [...]}`` of item names, each list in the
    random order it was drawn (deterministic given ``seed``).
    """
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(names))
    if max_images is not None:
        order = order[:max_images]
    n_train, n_val, n_test = split_counts(len(order), val, test)
    picked = [names[i] for i in order]
    return {"train": picked[:n_train], "val": picked[n_train:n_train + n_val],
            "test": picked[n_train + n_val:]}


def drop_unreadable(split: dict[str, list[str]], unreadable: Any) -> dict[str, list[str]]:
    """``split`` without the names in ``unreadable``, each removed from the part it fell in (the
    other names keep their parts and order): a run that cannot read an image drops it *after*
    the split, so its split is the one every run of the same data and seed gets, less what it
    could not read (never a split reshuffled by it)."""
    bad = set(unreadable)
    out = {part: [n for n in names if n not in bad] for part, names in split.items()}
    gone = {part: [n for n in split[part] if n in bad] for part in split}
    if any(gone.values()):
        log.warning("left out %d unreadable image(s) after the split: %s", sum(map(len, gone.values())),
                    "; ".join(f"{part}: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}"
                              for part, names in gone.items() if names))
    return out


#: where a stored-features row extracts the test image: at the model's size, at the size its
#: source stores it, or at a factor of the model's size (:func:`stored_variants`)
STORED_SIZES = ("model", "native")


#: the scale filters a stored-features row may apply (:class:`StoredVariant`)
SCALE_FILTERS = ("training",)


@dataclass(frozen=True)
class StoredVariant:
    """One way another system may have stored the held-out images' SIFT (``threat.stored``):
    ``features`` (``opencv`` | ``colmap``) extracted from the image at ``size`` (``"model"``: the
    model's ``data.image_size``; ``"native"``: as its source stores it; a float: that factor of
    the model's size, the source image resized to it), then mapped onto the model's grid; with
    ``scale_filter="training"`` only the keypoints whose scale on the model's grid lies in the
    range training saw are kept (:mod:`reconattack.data.sift.stats`, as ``invert --scale-filter
    training`` keeps them)."""

    name: str
    features: str
    size: str | float
    scale_filter: str | None = None


def stored_variants(spec: Any, own_features: str) -> list[StoredVariant]:
    """``threat.stored`` (``{row name: {features: opencv | colmap | null, size: model | native |
    factor, scale_filter: training | null}}``, ``features: null`` = the threat's own) as variants,
    in order. A variant that is the training features themselves (own features at the model's
    size, unfiltered), or repeats an earlier one, is left out with a log line: its row would be
    ``test`` or that one again; a ``null`` entry is left out (an experiment drops a default row
    so)."""
    out: list[StoredVariant] = []
    seen = {(own_features, "model", None): "test"}
    for name, v in dict(spec or {}).items():
        if v is None:
            continue
        v = dict(v)
        unknown = set(v) - {"features", "size", "scale_filter"}
        if unknown:
            raise ConfigError(f"threat.stored.{name}: unknown key(s) {sorted(unknown)}; expected features, size, "
                              "scale_filter")
        scale_filter = v.get("scale_filter")
        if scale_filter is not None and scale_filter not in SCALE_FILTERS:
            raise ConfigError(f"threat.stored.{name}.scale_filter must be one of {SCALE_FILTERS} or null, got "
                              f"{scale_filter!r}")
        features = str(v.get("features") or own_features)
        if features not in FEATURES:
            raise ConfigError(f"threat.stored.{name}.features must be one of {FEATURES} or null, got {features!r}")
        size = v.get("size", "model")
        if not (size in STORED_SIZES or (isinstance(size, (int, float)) and not isinstance(size, bool) and size > 0)):
            raise ConfigError(f"threat.stored.{name}.size must be model, native or a positive factor of "
                              f"data.image_size, got {size!r}")
        size = "model" if size == 1 else size if isinstance(size, str) else float(size)
        if (features, size, scale_filter) in seen:
            log.info("threat.stored.%s is the same extraction as %r; left out", name, seen[features, size, scale_filter])
            continue
        seen[features, size, scale_filter] = str(name)
        out.append(StoredVariant(str(name), features, size, scale_filter))
    return out


_SCAN: dict = {}


def _scan_init(source, cache, size) -> None:
    """Pool initializer: the source and cache are sent to each worker once."""
    _SCAN.update(source=source, cache=cache, size=size)


def _scan_one(i: int) -> tuple[str, str | None]:
    """Decode, resize and cache the SIFT keypoints of item ``i``; returns (name, error or None)."""
    source, cache, size = _SCAN["source"], _SCAN["cache"], _SCAN["size"]
    name = source.name(i)
    try:
        cache.get(resize(source.load(i), size, source=str(getattr(source, "root", "")) or None))
    except ImageReadError as exc:
        return name, str(exc)
    return name, None


class SiftImageDataset(Dataset):
    """Items of a source with their SIFT keypoints as the attacker holds them.

    ``__getitem__(k)`` returns ``{"image": uint8 (3, S, S), "xy": float32 (N, 2), "desc": uint8
    (N, 128), "index": int}`` where S is the mapper's ``image_size``; ``__getitem__((k,
    item_seed))`` (the training sampler's keys, :class:`~reconattack.data.sampling.
    ResumableSampler`) draws the item's augmentation from ``item_seed`` and adds ``"seed":
    item_seed``, so an item's augmentation is the same in any loader worker and after a restart (a
    plain ``k`` draws it from the global torch RNG).

    An item is made in four steps, each a method:

    - :meth:`_augment`: with ``hflip`` the image is mirrored with probability 0.5, with ``shift``
      translated by up to ``shift`` px in each direction (borders replicated), *before* SIFT
      extraction, so keypoints always belong to the image that is shown;
    - :meth:`_features`: its SIFT from ``cache`` (flipped images are cached; shifted ones are
      extracted afresh, not cached);
    - :meth:`_share`: through the ``mapper``'s defence
      (:meth:`~reconattack.data.sift.mapper.SiftMapper.share`), keyed by the item's seed (training)
      or ``part`` and ``k`` (evaluation);
    - the controls and checks: with ``neighbour`` the keypoints of item ``k - 1`` (cyclically) as
      ``"other_xy"`` / ``"other_desc"`` (the shuffled-SIFT control; independent of batching and of
      the process split); with ``stored`` (``[(variant, its cache)]``, :func:`stored_variants`)
      ``"stored"``: ``{name: (xy, desc)}``, the image's SIFT as that variant extracts it, mapped
      onto the model's grid by the same mapper (:meth:`_stored`, as ``invert`` maps a database's),
      a variant with a scale filter keeping the keypoints in :attr:`scale_range`.
    """

    def __init__(self, source, indices: Sequence[int], mapper: SiftMapper, cache: SiftCache,
                 hflip: bool = False, neighbour: bool = False, shift: int = 0,
                 stored: Sequence[tuple[StoredVariant, SiftCache]] = (), part: str = "train"):
        self.source, self.indices, self.mapper, self.cache = source, list(indices), mapper, cache
        self.image_size = mapper.image_size
        self.hflip, self.neighbour, self.shift = hflip, neighbour, int(shift)
        self.stored = list(stored)
        self.part = part
        #: the training range of grid scales (:meth:`SiftDataModule.use_stats`) the stored rows
        #: with ``scale_filter: training`` keep
        self.scale_range: tuple[float, float] | None = None

    def __len__(self) -> int:
        return len(self.indices)

    # -- the steps of an item ---------------------------------------------------------------
    def _augment(self, img: np.ndarray, gen: torch.Generator | None) -> tuple[np.ndarray, bool]:
        """The image as shown (flipped, shifted) and whether it was shifted (not cached)."""
        if self.hflip and torch.rand((), generator=gen) < 0.5:
            img = np.ascontiguousarray(img[:, ::-1])
        dy, dx = (torch.randint(-self.shift, self.shift + 1, (2,), generator=gen).tolist()
                  if self.shift else (0, 0))
        if dy or dx:
            return _translate(img, dy, dx), True
        return img, False

    def _features(self, img: np.ndarray, cache: SiftCache, cached: bool = True) -> tuple[np.ndarray, ...]:
        """(xy, desc[, strength]) of ``img`` from ``cache`` (or extracted afresh)."""
        strength = self.mapper.needs_strength
        return cache.get(img, with_strength=strength) if cached else cache.extract(img, with_strength=strength)

    def _share(self, feats: tuple, cache: SiftCache, k: int, seed: int | None,
               source_size: tuple[int, int] | None = None, scale: np.ndarray | None = None,
               scale_range: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``feats`` (xy, desc[, strength]) of item ``k`` as the attacker holds them."""
        xy, desc, *strength = feats
        key = training_key(seed) if seed is not None else evaluation_key(self.part, k)
        return self.mapper.share(xy, desc, strength[0] if strength else None, source_size, key=key,
                                 features=cache.features, exclude=self.indices[k], scale=scale,
                                 scale_range=scale_range)

    def _keypoints(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Item ``k``'s keypoints at the model's size, unaugmented, as the attacker holds them."""
        img = resize(self.source.load(self.indices[k]), self.image_size)
        return self._share(self._features(img, self.cache), self.cache, k, None)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        k, seed = (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (int(key), None)
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        raw = self.source.load(self.indices[k])
        img, shifted = self._augment(resize(raw, self.image_size), gen)
        xy, desc = self._share(self._features(img, self.cache, cached=not shifted), self.cache, k, seed)
        item = {"image": torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))),
                "xy": torch.from_numpy(xy), "desc": torch.from_numpy(desc), "index": k}
        if seed is not None:
            item["seed"] = seed
        if self.neighbour:
            oxy, odesc = self._keypoints((k - 1) % len(self))
            item.update(other_xy=torch.from_numpy(oxy), other_desc=torch.from_numpy(odesc))
        if self.stored:
            item["stored"] = {v.name: self._stored(v, cache, raw, img, k) for v, cache in self.stored}
        return item

    def _stored(self, variant: StoredVariant, cache: SiftCache, raw: np.ndarray, img: np.ndarray,
                k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The SIFT of item ``k``'s image ``raw`` (as its source stores it; ``img``: at the model's
        size) as ``variant`` extracts it, keypoints on the model's grid (with its scale filter,
        those whose grid scale is in :attr:`scale_range`), through the defence."""
        if variant.size == "model":
            image = img
        elif variant.size == "native":
            image = raw
        else:
            side = max(int(round(variant.size * self.image_size)), 1)
            image = resize(raw, side, source=f"threat.stored.{variant.name}")
        source_size = None if image is img else image.shape[:2]
        if variant.scale_filter is None:
            xy, desc = self._share(self._features(image, cache), cache, k, None, source_size=source_size)
        else:
            if self.scale_range is None:
                raise ConfigError(f"threat.stored.{variant.name}.scale_filter={variant.scale_filter} keeps the "
                                  "keypoints in the training range of scales, and this run has no training statistics")
            *feats, scale = cache.get(image, with_strength=self.mapper.needs_strength, with_scale=True)
            xy, desc = self._share(tuple(feats), cache, k, None, source_size=source_size, scale=scale,
                                   scale_range=self.scale_range)
        return torch.from_numpy(xy), torch.from_numpy(desc)


def _translate(img: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """(S, S, 3) uint8 shifted by (dy, dx) px, the borders replicated."""
    s = img.shape[0]
    rows = np.clip(np.arange(s) - dy, 0, s - 1)
    cols = np.clip(np.arange(s) - dx, 0, s - 1)
    return np.ascontiguousarray(img[rows][:, cols])


def collate_sift(items: list[dict]) -> dict:
    """Stack images (B, 3, S, S) uint8; keep keypoints as lists of (N_i, 2) / (N_i, 128) tensors;
    item seeds (training) as an int64 (B,) ``"seed"``."""
    out = {"image": torch.stack([it["image"] for it in items]),
           "xy": [it["xy"] for it in items], "desc": [it["desc"] for it in items],
           "index": torch.tensor([it["index"] for it in items])}
    if "seed" in items[0]:
        out["seed"] = torch.tensor([it["seed"] for it in items], dtype=torch.int64)
    if "other_xy" in items[0]:
        out["other_xy"] = [it["other_xy"] for it in items]
        out["other_desc"] = [it["other_desc"] for it in items]
    if "stored" in items[0]:  # {name: ([xy (N_i, 2)], [desc (N_i, 128)])}
        out["stored"] = {name: ([it["stored"][name][0] for it in items], [it["stored"][name][1] for it in items])
                         for name in items[0]["stored"]}
    return out


class SiftDataModule(pl.LightningDataModule):
    """Images resized to ``image_size`` with their SIFT keypoints, split train/val/test; dense
    SIFT maps built per batch on the device (see the module docstring for the batch keys).

    Args:
        source: the image source's config (``_target_``: a class or function returning an object
            with ``len()``, ``name(i)`` and ``load(i)``; see :mod:`reconattack.data.images`).
        image_size: side of the square images (paper 256; ``cv2.resize`` bilinear, no crop).
        compress: SIFT map 2x2 compression (map side ``image_size // 2``) or not (threat setting).
        contrast_threshold: OpenCV SIFT contrast threshold (paper 0.03; threat setting).
        map_seed: the run seed: seeds the training order, the augmentation and the random
            choice of one keypoint per 2x2 block during training, all as functions of the seed,
            the epoch and the position (:class:`~reconattack.data.sampling.ResumableSampler`), so
            a stage continued from a checkpoint trains on the same batches; evaluation keeps the
            first-placed keypoint (deterministic).
        val, test: fractions (< 1) or counts (>= 1) of the selected images; ``test: 1.0`` puts
            every image in the test split (generalisation sets such as FFHQ).
        max_images: random subset size before splitting (paper: 50,000 LSUN images), or None.
        split_file: a ``split.json`` written by an earlier run; reused when given. Without it, a
            source that fixes its own split (a ``fixed_split()`` method returning ``{"train":
            [names], "val": [...], "test": [...]}``: :func:`reconattack.data.photos.photo_crops`,
            whose test crops come from photos training never sees) gives it.
        run_dir: where ``split.json`` is written: the split, and the images this run could not
            read (``unreadable``: name -> error), left out of the part they fell in
            (:func:`drop_unreadable`). A run started again in the same directory with the same
            data settings (``resume=true``; the other DDP ranks) leaves them out too, so that it
            trains on the same split.
        cache_dir: SIFT keypoint cache (shared across runs; keyed by image content + settings).
        batch_size, eval_batch_size: images per step of all processes together (each DDP
            process loads its share, :func:`~reconattack.utils.distributed.per_process_batch`).
        num_workers: loader processes (per training process).
        selection_seed: seeds the ``max_images`` subset and the split. Not the run's ``seed``: a
            seed sweep varies training only and tests on the same images (SPEC §8).
        hflip: random horizontal flips of training images (SIFT extracted after the flip). Not
            in the paper (default off); the CPU demo's 80 training faces use it.
        shift: random translations of training images by up to this many pixels (SIFT extracted
            after the shift). Not in the paper (default 0).
        name: the dataset's short name (``celebahq``, ``lsun_bird``); read by reports (the
            columns of CFGAN Table I), not here.
        features: the SIFT implementation (threat setting): ``opencv`` (the paper's) or ``colmap``
            (COLMAP's, through pycolmap: what SfM / localisation systems store); ``colmap``: its
            extraction options overrides.
        placement: where a keypoint whose pixel is taken goes (threat setting):
            :data:`~reconattack.data.sift.maps.PLACEMENTS` (``first``: dropped, CFGAN; ``sli``: to a
            free neighbour, SLI).
        occupancy: a 1-channel occupancy map of the keypoint positions instead of the descriptors
            (SLI-B; threat setting).
        stored: more test rows: the held-out images' SIFT as other systems store it (another
            extractor, the photos' own resolution), ``{name: {features, size}}``
            (:func:`stored_variants`); test batches then carry ``"stored": {name: map}``.
        defence: the ``defence`` config (``conf/defence/``): a SIFT defence
            (:class:`~reconattack.defences.sift.SiftDefence`) is applied to the keypoints of every
            split — the attacker's training pairs go through it too (it knows the defence) — and
            with ``coordinates: withheld`` the first ``reference_images`` training images (split
            order) are the references; other defences leave the data alone.
    """

    def __init__(self, source: Any, image_size: int = 256, compress: bool = True,
                 contrast_threshold: float = 0.03, val: float = 0.1, test: float = 0.1,
                 max_images: int | None = None, split_file: str | None = None,
                 run_dir: str | None = None, cache_dir: str = "./cache/sift", batch_size: int = 8,
                 eval_batch_size: int | None = None, num_workers: int = 0, selection_seed: int = 0,
                 hflip: bool = False, map_seed: int = 0, shift: int = 0, name: str | None = None,
                 placement: str = "first", occupancy: bool = False, features: str = "opencv",
                 colmap: dict | None = None, stored: dict | None = None, defence: dict | None = None):
        super().__init__()
        #: keypoints -> the model's input maps, the run's defence included (training and invert alike)
        self.mapper = SiftMapper(image_size, compress, placement, occupancy, sift_defence(defence))
        self.defence = self.mapper.defence
        if self.defence is not None:
            log.info("SIFT defence: %s (the training pairs and the test features alike)", self.defence.describe())
        self.name = name
        self.source_cfg = source
        self.image_size, self.compress = self.mapper.image_size, self.mapper.compress
        self.map_size = self.mapper.map_size
        self.contrast_threshold = contrast_threshold
        self.val, self.test, self.max_images = val, test, max_images
        self.split_file, self.run_dir = split_file, Path(run_dir) if run_dir else None
        self.cache = SiftCache(cache_dir, contrast_threshold=contrast_threshold, features=features,
                               colmap=dict(colmap or {}))
        self.stored = [(v, SiftCache(cache_dir, contrast_threshold=contrast_threshold, features=v.features,
                                     colmap=dict(colmap or {})))
                       for v in stored_variants(stored, self.cache.features)]
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers, self.hflip, self.shift = num_workers, hflip, int(shift)
        self.selection_seed = int(selection_seed)
        self.map_seed = int(map_seed)
        self.source = None
        self.split: dict[str, list[str]] | None = None
        #: name -> error of the images :meth:`prepare_data` could not read in this process
        self.unreadable: dict[str, str] = {}
        self.datasets: dict[str, SiftImageDataset] = {}

    # -- set-up ---------------------------------------------------------------------------
    def _open(self):
        if self.source is None:
            self.source = build(self.source_cfg)
        return self.source

    def check(self) -> None:
        """Open the data source now: raises DataNotFoundError (naming the path and the expected
        layout) when the data is not there."""
        self._open()

    def _split_basis(self) -> dict[str, Any]:
        """What the split is a function of besides the data's listing (recorded in ``split.json``)."""
        return {"source": self._describe_source(), "selection_seed": self.selection_seed,
                "max_images": self.max_images, "val": self.val, "test": self.test,
                "split_file": str(self.split_file) if self.split_file else None}

    def _recorded_unreadable(self) -> dict[str, str]:
        """The images that an earlier start of this run (its ``split.json`` in ``run_dir``, same
        :meth:`_split_basis`) left out: a resumed run, or another rank, leaves them out too."""
        path = self.run_dir / "split.json" if self.run_dir is not None else None
        if path is None or not path.is_file():
            return {}
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(saved, dict) or {k: saved.get(k) for k in self._split_basis()} != self._split_basis():
            return {}
        return dict(saved.get("unreadable") or {})

    def _describe_source(self) -> str:
        cfg = self.source_cfg
        return ":".join(str(v) for v in (cfg.values() if hasattr(cfg, "values") else [cfg]))

    def _selected(self, names: Sequence[str]) -> list[int]:
        """Indices of the images this run may use: a seeded random subset of ``max_images``."""
        if self.max_images is None or self.max_images >= len(names):
            if self.max_images is not None and self.max_images > len(names):
                log.warning("data.max_images=%d but only %d images exist; using all",
                            self.max_images, len(names))
            return list(range(len(names)))
        return np.random.default_rng(self.selection_seed).permutation(len(names))[: self.max_images].tolist()

    def prepare_data(self) -> None:
        """Check the data, fill the SIFT cache of the selected images (in parallel with
        ``num_workers`` processes) and note the files it could not read (:attr:`unreadable`,
        this process's own: nothing shared with other runs, which must not split otherwise)."""
        source = self._open()
        indices = self._selected([source.name(i) for i in range(len(source))])
        if self.num_workers > 1 and len(indices) > 64:
            with get_context("spawn").Pool(self.num_workers, initializer=_scan_init,
                                           initargs=(source, self.cache, self.image_size)) as pool:
                results = pool.map(_scan_one, indices, chunksize=64)
        else:
            _scan_init(source, self.cache, self.image_size)
            results = [_scan_one(i) for i in indices]
        bad = {name: err for name, err in results if err is not None}
        if bad:
            log.warning("skipping %d unreadable image(s): %s", len(bad),
                        "; ".join(f"{k}: {v}" for k, v in list(bad.items())[:5]))
        if len(bad) == len(indices):
            raise DataNotFoundError(f"none of the {len(indices)} images in "
                                    f"{self._open()!r} could be read")
        self.unreadable = bad

    def setup(self, stage: str | None = None) -> None:
        if self.split is not None:
            return
        source = self._open()
        names = [source.name(i) for i in range(len(source))]
        index_of = {n: i for i, n in enumerate(names)}
        if self.split_file:
            path = Path(self.split_file)
            if not path.is_file():
                raise InputNotFoundError(f"data.split_file={path} does not exist")
            split = json.loads(path.read_text())["split"]
            missing = [n for part in split.values() for n in part if n not in index_of]
            if missing:
                raise ConfigError(f"{len(missing)} image(s) of split file {path} are not in the data "
                                  f"source (e.g. {missing[0]!r})")
        elif callable(getattr(source, "fixed_split", None)):  # the source's own (held-out photos)
            split = {part: list(source.fixed_split().get(part, [])) for part in ("train", "val", "test")}
            missing = [n for part in split.values() for n in part if n not in index_of]
            if missing:
                raise ConfigError(f"the data source's own split names {missing[0]!r}, which it does not hold")
        else:  # a function of the listing and the seed alone; what this run cannot read goes after
            split = make_split([names[i] for i in self._selected(names)], self.val, self.test,
                               self.selection_seed)
        listed = {n for part in split.values() for n in part}
        unreadable = {n: e for n, e in {**self._recorded_unreadable(), **self.unreadable}.items() if n in listed}
        split = drop_unreadable(split, unreadable)
        if split.get("train") and self.batch_size > len(split["train"]):
            raise ConfigError(f"data.batch_size={self.batch_size} is larger than the {len(split['train'])} "
                              f"training images of the split; use data.batch_size <= {len(split['train'])}")
        self.split = split
        if self.run_dir is not None and int(os.environ.get("LOCAL_RANK", 0)) == 0:
            atomic_write_text(self.run_dir / "split.json", json.dumps(
                {**self._split_basis(), "split": split, "unreadable": dict(sorted(unreadable.items()))},
                indent=1))
        mapper = self.mapper.with_references(self._references(source, [index_of[n] for n in split.get("train", [])]))
        self.datasets = {part: SiftImageDataset(source, [index_of[n] for n in split[part]], mapper, self.cache,
                                                hflip=self.hflip and part == "train",
                                                shift=self.shift if part == "train" else 0,
                                                neighbour=part != "train",
                                                stored=self.stored if part == "test" else (), part=part)
                         for part in split}
        log.info("data split: %s", {k: len(v) for k, v in split.items()})

    # -- what training saw of its keypoints ------------------------------------------------
    def keypoint_stats(self, max_images: int = 1000, scale_range: tuple[float, float] = (0.01, 0.99)
                       ) -> KeypointStats | None:
        """The keypoint statistics of the training split (:mod:`reconattack.data.sift.stats`):
        the first ``max_images`` training images (the split's random order) at the model's size,
        unaugmented, with the run's own SIFT (COLMAP's scales from the cache; OpenCV's extracted
        again, the cache holding no scale); None without a training split."""
        ds = self.datasets.get("train")
        if ds is None or len(ds) == 0:
            return None
        scales = [self.cache.get(resize(ds.source.load(i), self.image_size), with_scale=True)[-1]
                  for i in ds.indices[:max_images]]
        return summarise(scales, self.cache.features, self.image_size, scale_range)

    def use_stats(self, stats: KeypointStats | None) -> None:
        """The training statistics the stored rows' scale filters keep the range of; a row with
        a scale filter and no statistics (no training split) is a ConfigError."""
        filtered = [v.name for v, _ in self.stored if v.scale_filter is not None]
        if filtered and stats is None:
            raise ConfigError(f"threat.stored.{filtered[0]}.scale_filter keeps the keypoints in the range of "
                              "scales training saw, and this run has no training split to measure it on; set it "
                              "to null")
        for ds in self.datasets.values():
            ds.scale_range = stats.scale_range if stats is not None else None

    def _references(self, source, train: list[int]) -> dict:
        """The reference images of ``defence.coordinates=withheld``: ``{features: [(source index,
        xy, desc)]}`` of the first ``reference_images`` + 1 training images (one more, so that a
        training image that is a reference is placed by the others), at the model's size, for the
        threat's features and every stored row's."""
        if self.defence is None or not self.defence.needs_reference:
            return {}
        if not train:
            raise ConfigError("defence.coordinates=withheld places descriptors by reference images of the "
                              "attacker's training split, and this split has none")
        caches = {self.cache.features: self.cache, **{c.features: c for _, c in self.stored}}
        chosen = train[: self.defence.reference_images + 1]
        images = {i: resize(source.load(i), self.image_size) for i in chosen}
        return {f: [(i, *cache.get(images[i])) for i in chosen] for f, cache in caches.items()}

    # -- loaders --------------------------------------------------------------------------
    def _loader(self, part: str, train: bool) -> DataLoader:
        ds = self.datasets.get(part)
        if ds is None or len(ds) == 0:
            raise ConfigError(f"the {part} split is empty; check data.val / data.test / data.max_images")
        rank, world = trainer_rank_and_world(self)
        if not train:
            batch = per_process_batch(self.eval_batch_size, world, "data.eval_batch_size", exact=False)
            return DataLoader(ds, batch_size=batch, shuffle=False, num_workers=self.num_workers,
                              collate_fn=collate_sift, persistent_workers=self.num_workers > 0,
                              pin_memory=torch.cuda.is_available())
        batch = per_process_batch(self.batch_size, world)
        sampler = ResumableSampler(len(ds), batch, seed=self.map_seed, shuffle=True, rank=rank,
                                   world_size=world, start_batch=consumed_batches(self.trainer),
                                   item_seeds=True)
        return ResumableLoader(ds, batch_size=batch, sampler=sampler, drop_last=True,
                               generator=loader_generator(self.map_seed),
                               num_workers=self.num_workers, collate_fn=collate_sift,
                               persistent_workers=self.num_workers > 0, pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader | list:
        if not len(self.datasets.get("val", ())):
            return []  # no validation split (data.val=0)
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)

    # -- batches on the device ------------------------------------------------------------
    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """uint8 images + keypoint lists -> ``target`` (B, 3, H, H) in [-1, 1] and ``input``
        (B, 128, S, S) maps on the batch's device; training draws the 2x2-block representatives
        at random, from the batch's first item seed (a function of the run seed, the epoch and
        the position: the same after a restart), evaluation keeps the first-placed keypoint."""
        device = batch["image"].device
        training = self.trainer is not None and self.trainer.training
        gen = None
        if training and self.compress and "seed" in batch:
            gen = torch.Generator(device=device)
            gen.manual_seed(int(batch["seed"][0]) ^ MAP_SEED_SALT)
        return self.device_batch(batch, device, gen)

    def device_batch(self, batch: dict, device: torch.device | str,
                     generator: torch.Generator | None = None) -> dict:
        """The batch as attacks read it (see the module docstring), built on ``device``."""
        maps = self.mapper.maps
        out = {"target": batch["image"].to(device).float() / 127.5 - 1, "index": batch["index"],
               "input": maps(batch["xy"], batch["desc"], generator=generator, device=device)}
        if "other_xy" in batch:
            out["shuffled_input"] = maps(batch["other_xy"], batch["other_desc"], device=device)
        if "stored" in batch:
            out["stored"] = {name: maps(xys, descs, device=device) for name, (xys, descs) in batch["stored"].items()}
        return out

    def mean_train_image(self, limit: int | None = None) -> torch.Tensor | None:
        """Mean of the training images, (3, S, S) float in [-1, 1] (the mean-image control), or
        None when there is no training split (a test-only dataset such as FFHQ)."""
        ds = self.datasets.get("train")
        if ds is None or len(ds) == 0:
            return None
        n = len(ds) if limit is None else min(limit, len(ds))
        acc = torch.zeros(3, self.image_size, self.image_size, dtype=torch.float64)
        for k in range(n):  # the images as stored (no augmentation)
            img = resize(ds.source.load(ds.indices[k]), self.image_size)
            acc += torch.from_numpy(img.transpose(2, 0, 1).astype(np.float64))
        return (acc / max(n, 1) / 127.5 - 1).float()


__all__ = ["SiftDataModule", "SiftImageDataset", "StoredVariant", "collate_sift", "drop_unreadable", "make_split",
           "split_counts", "stored_variants"]
