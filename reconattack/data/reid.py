"""Re-identification datasets as published (SPEC §3.5; the AVIH attack paper's Appendix A):
Market-1501 (persons) and VeRi-776 (vehicles), read from their own folder layouts and file names.

- **Market-1501** (``<root>/``): ``bounding_box_test/`` (the gallery), ``query/``,
  ``bounding_box_train/``; files ``PPPP_cCsS_FFFFFF_NN.jpg`` (person, camera 1-6, sequence,
  frame, box). Identity ``-1`` (junk boxes) is ignored, as the benchmark does; ``0000``
  (distractors) stays in the gallery as a negative.
- **VeRi-776** (``<root>/``): ``image_test/`` (the gallery), ``image_query/``,
  ``image_train/``; files ``VVVV_cCCC_TTTTTTTT_N.jpg`` (vehicle, camera 1-20, time, index).
  Views 0-7 come from ``keypoint_train.txt`` / ``keypoint_test.txt`` in the root when present
  (TransReID reads them: per line an image path first and the view last; the query images
  are test images), else view 0 with a warning.

:func:`read_reid` returns the splits as :class:`ReidSet` (file names, identities, cameras, views);
images are read on demand (:meth:`ReidSet.load`), resized to the model's (H, W) — re-id crops
are not square and are not cropped square.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from reconattack.data.avih import ArrayImages, ImageFiles, ImageSet, side_item, to_tensor
from reconattack.data.images import IMAGE_EXTENSIONS, DataNotFoundError
from reconattack.errors import ConfigError

#: split -> sub-folder, per dataset layout
LAYOUTS = {
    "market1501": {"gallery": "bounding_box_test", "query": "query", "train": "bounding_box_train"},
    "veri": {"gallery": "image_test", "query": "image_query", "train": "image_train"},
}
_NAMES = {
    "market1501": re.compile(r"^(-?\d+)_c(\d)s\d+_\d+_\d+"),
    "veri": re.compile(r"^(\d+)_c(\d+)_"),
}
#: the view file of each VeRi split (query images are test images)
_VIEW_FILES = {"gallery": "keypoint_test.txt", "query": "keypoint_test.txt", "train": "keypoint_train.txt"}


class MissingViewsWarning(UserWarning):
    """VeRi without its keypoint files: every image gets view 0."""


@dataclass
class ReidSet:
    """One split of a re-identification dataset.

    Attributes:
        files: the image files, in name order.
        ids: int64 (N,) identities (0 = distractor; junk is left out).
        cams: int64 (N,) cameras, as the file names number them (from 1).
        views: int64 (N,) viewpoints (VeRi; 0 when unknown or for persons).
    """

    files: list[Path]
    ids: np.ndarray
    cams: np.ndarray
    views: np.ndarray

    def __len__(self) -> int:
        return len(self.files)

    def load(self, i: int, size: tuple[int, int]) -> torch.Tensor:
        """Image ``i`` resized (bilinear, not cropped) to ``size`` = (H, W): float32 (3, H, W) RGB
        in [-1, 1]."""
        return to_tensor(ImageFiles([self.files[i]], size)[0])


def missing(root: str | Path, layout: str) -> list[str]:
    """What of ``layout``'s folders is missing under ``root`` (one line each; empty: all there)."""
    root = Path(root)
    if not root.is_dir():
        return [f"{root}: the {layout} dataset folder ({', '.join(LAYOUTS[layout].values())})"]
    return [f"{root / sub}: the {split} images of {layout}" for split, sub in LAYOUTS[layout].items()
            if not (root / sub).is_dir()]


def _views(root: Path, split: str) -> dict[str, int] | None:
    path = root / _VIEW_FILES[split]
    if not path.is_file():
        return None
    out = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2:
            out[Path(parts[0]).name] = int(float(parts[-1]))
    return out


def read_reid(root: str | Path, layout: str) -> dict[str, ReidSet]:
    """The splits ``gallery``, ``query``, ``train`` of the dataset at ``root`` in ``layout``
    (``market1501`` | ``veri``).

    Raises:
        DataNotFoundError: a folder is missing, a split has no image, or a file name does not
            follow the layout (naming the file).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown re-identification layout {layout!r}; known: {sorted(LAYOUTS)}")
    root = Path(root)
    gone = missing(root, layout)
    if gone:
        raise DataNotFoundError("missing re-identification data:\n  " + "\n  ".join(gone))
    pattern = _NAMES[layout]
    out = {}
    warned = False
    for split, sub in LAYOUTS[layout].items():
        files, ids, cams = [], [], []
        for path in sorted((root / sub).iterdir()):
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                continue  # Thumbs.db and the like
            m = pattern.match(path.name)
            if m is None:
                raise DataNotFoundError(f"{path}: not a {layout} file name (expected "
                                        f"{'PPPP_cCsS_FFFFFF_NN.jpg' if layout == 'market1501' else 'VVVV_cCCC_TTTTTTTT_N.jpg'})")
            pid, cam = int(m.group(1)), int(m.group(2))
            if pid < 0:
                continue  # junk: not part of the benchmark
            files.append(path)
            ids.append(pid)
            cams.append(cam)
        if not files:
            raise DataNotFoundError(f"{root / sub}: no {layout} images")
        views = np.zeros(len(files), dtype=np.int64)
        if layout == "veri":
            table = _views(root, split)
            if table is None:
                if not warned:
                    warnings.warn(f"{root}: no {_VIEW_FILES[split]}; every {split} image gets view 0 "
                                  f"(TransReID's view embeddings then see one view)", MissingViewsWarning,
                                  stacklevel=2)
                    warned = True
            else:
                views = np.array([table.get(f.name, 0) for f in files], dtype=np.int64)
        out[split] = ReidSet(files, np.array(ids, dtype=np.int64), np.array(cams, dtype=np.int64), views)
    return out


# ------------------------------------------------------------------- the AVIH re-id threat's data
@dataclass
class RetrievalParts:
    """What a re-identification gallery source yields for the AVIH threat: the gallery images (in
    a seeded random order; the threat's first ``data.pool`` are the attacker's pool) with their
    identities and side information (0-based cameras and views), the queries (read on demand),
    and, from the embedded demo, its auxiliary set, the images that train its models and the
    victim's own images (``victim``: train the victim's key models; the attacker holds none)."""

    gallery: ImageSet
    queries: QuerySet
    auxiliary: Dataset | None = None
    models_train: ImageSet | None = None
    victim: Dataset | None = None
    heldout_removed: int = 0


class QuerySet(Dataset):
    """Re-identification queries, in memory (uint8 (Q, H, W, 3) ``images``) or read from
    ``files`` at ``size`` = (H, W) on demand: image memory O(batch) for a real query folder.

    Item: ``{"image": (3, H, W) in [-1, 1], "label": identity, "side": {"cams", "views"}}``
    (0-based cameras and views, as the models take them).
    """

    def __init__(self, ids: np.ndarray, side: dict[str, np.ndarray], images: np.ndarray | None = None,
                 files: list[Path] | None = None, size: tuple[int, int] | None = None) -> None:
        if (images is None) == (files is None):
            raise ValueError("QuerySet takes images or files")
        self.ids, self.side = np.asarray(ids, np.int64), side
        self.images, self.files, self.size = images, files, size

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def cams(self) -> np.ndarray:
        return self.side["cams"]

    def subset(self, idx: np.ndarray) -> QuerySet:
        idx = np.asarray(idx, dtype=np.int64)
        return QuerySet(self.ids[idx], {k: v[idx] for k, v in self.side.items()},
                        None if self.images is None else self.images[idx],
                        None if self.files is None else [self.files[i] for i in idx], self.size)

    def __getitem__(self, i: int) -> dict:
        image = to_tensor(self.images[i] if self.images is not None else ImageFiles([self.files[i]], self.size)[0])
        return {"image": image, "label": int(self.ids[i]), **side_item(self.side, i)}


class ReidGallery:
    """A published re-identification dataset as the AVIH threat's gallery (SPEC §3.5): ``n_gallery``
    images of its gallery split (``bounding_box_test`` / ``image_test``; junk left out, distractors
    kept) drawn with the seed, in a seeded random order, resized to (H, W) without a crop; the
    query split as the queries.

    Args:
        root: the dataset folder (``$RECONATTACK_DATA/market1501``, ``.../veri``).
        layout: ``market1501`` | ``veri``.
    """

    def __init__(self, root: str, layout: str) -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"data.source.layout must be one of {sorted(LAYOUTS)}, got {layout!r}")
        self.root, self.layout = root, layout

    def missing(self) -> list[str]:
        return [f"data.source: {line} (set data.source.root or RECONATTACK_DATA)"
                for line in missing(self.root, self.layout)]

    def load(self, size: tuple[int, int], n_gallery: int, seed: int, pool: int | None = None) -> RetrievalParts:
        sets = read_reid(self.root, self.layout)
        gal, qry = sets["gallery"], sets["query"]
        if len(gal) < n_gallery:
            raise ConfigError(f"gallery smaller than requested: {self.root} has {len(gal)} gallery images "
                              f"(junk left out), data.gallery_size asks for {n_gallery}")
        rng = np.random.default_rng(seed)
        chosen = rng.choice(len(gal), n_gallery, replace=False)  # drawn, in a random order
        images = ImageFiles([gal.files[i] for i in chosen], size)  # read when used: memory O(batch)
        gallery = ImageSet(images, gal.ids[chosen], [gal.files[i].name for i in chosen],
                           {"cams": gal.cams[chosen] - 1, "views": gal.views[chosen]})
        queries = QuerySet(qry.ids, {"cams": qry.cams - 1, "views": qry.views}, files=qry.files, size=tuple(size))
        return RetrievalParts(gallery, queries)


# --------------------------------------------------------------------------------- the demo's
def digit_persons(size: tuple[int, int], identities: int, images_per_identity: int, cameras: int,
                  seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The embedded re-identification demo: "persons" made of scikit-learn's digits (offline).

    A person is a top and a bottom garment: two digit classes and two colours, fixed per identity
    (drawn with ``seed``, no two identities alike); each of its images takes other handwritten
    samples of its two classes (one above the other, each resized to (H/2, W)) and is seen by one
    of ``cameras`` cameras, each with its own light (gain), colour cast, background and offset,
    plus per-image noise. Identity thus lies in shapes and colours, the camera in the rest, as in
    person re-identification.

    Args:
        size: (H, W) of the images (H even).

    Returns:
        ``(images, ids, cams)``: uint8 (N, H, W, 3), int64 (N,) identities from 1, int64 (N,)
        0-based cameras; N = identities x images_per_identity, grouped by identity.
    """
    from sklearn.datasets import load_digits

    h, w = int(size[0]), int(size[1])
    if h % 2 or h < 4 or w < 2:
        raise ConfigError(f"digit persons need an even height >= 4, got {h}x{w}")
    digits = load_digits()
    small, classes = np.asarray(digits.images, np.float32) / 16.0, np.asarray(digits.target)
    by_class = [np.flatnonzero(classes == c) for c in range(10)]
    rng = np.random.default_rng(seed)
    palette = np.array([[1.0, 0.2, 0.2], [0.2, 0.9, 0.2], [0.25, 0.35, 1.0], [1.0, 0.9, 0.2],
                        [0.9, 0.3, 1.0], [0.2, 0.9, 0.9], [1.0, 0.6, 0.2], [0.9, 0.9, 0.9]], np.float32)
    combos = [(a, b, ca, cb) for a in range(10) for b in range(10) for ca in range(len(palette))
              for cb in range(len(palette))]
    if identities > len(combos):
        raise ConfigError(f"digit persons: at most {len(combos)} identities, asked for {identities}")
    picked = [combos[i] for i in rng.choice(len(combos), identities, replace=False)]
    cam_rng = np.random.default_rng(seed + 7)
    gains = cam_rng.uniform(0.55, 1.0, cameras)
    casts = cam_rng.uniform(0.75, 1.0, (cameras, 3)).astype(np.float32)
    backs = cam_rng.uniform(0.0, 0.3, (cameras, 3)).astype(np.float32)
    offsets = cam_rng.integers(-1, 2, cameras)
    n = identities * images_per_identity
    images = np.empty((n, h, w, 3), np.uint8)
    ids = np.repeat(np.arange(1, identities + 1), images_per_identity).astype(np.int64)
    cams = rng.integers(cameras, size=n).astype(np.int64)
    for k in range(n):
        a, b, ca, cb = picked[k // images_per_identity]
        cam = cams[k]
        halves = []
        for cls, colour in ((a, ca), (b, cb)):
            digit = small[rng.choice(by_class[cls])]
            mask = np.clip(cv2.resize(digit, (w, h // 2), interpolation=cv2.INTER_CUBIC), 0, 1)[..., None]
            halves.append(mask * palette[colour] + (1 - mask) * backs[cam])
        img = np.concatenate(halves, axis=0) * casts[cam] * gains[cam]
        img = np.roll(img, int(offsets[cam]), axis=1) + rng.normal(0, 0.03, img.shape)
        images[k] = np.rint(np.clip(img, 0, 1) * 255).astype(np.uint8)
    return images, ids, cams


class DigitPersons:
    """The embedded re-identification demo's data (:func:`digit_persons`): one seeded split of
    identities and images into every role of the threat model — ``models`` identities train the
    demo's service and evaluation models (disjoint from the evaluated ones, as re-identification
    models are trained on other persons than they are tested on) and give the attacker's
    auxiliary images; the ``test`` identities give the gallery and, per identity and camera seen,
    at most ``queries_per_camera`` queries. The ``models`` identities' images not given to the
    attacker are the victim's own (``victim``: they train its key models with ``threat.key.train``).

    Args:
        identities: ``{"models": n, "test": n}``.
        images_per_identity, cameras: see :func:`digit_persons`.
        auxiliary: images of the ``models`` identities given to the attacker.
        queries_per_camera: queries per test identity and camera (from its images not in the
            gallery).
    """

    #: the source gives the victim's own images (``victim``)
    has_victim = True

    def __init__(self, identities: dict, images_per_identity: int = 12, cameras: int = 4,
                 auxiliary: int = 400, queries_per_camera: int = 1) -> None:
        self.identities = {k: int(identities[k]) for k in ("models", "test")}
        self.per_identity, self.cameras = int(images_per_identity), int(cameras)
        self.auxiliary, self.queries_per_camera = int(auxiliary), int(queries_per_camera)

    def missing(self) -> list[str]:
        return []

    def load(self, size: tuple[int, int], n_gallery: int, seed: int, pool: int | None = None) -> RetrievalParts:
        total = self.identities["models"] + self.identities["test"]
        images, ids, cams = digit_persons(size, total, self.per_identity, self.cameras, seed)
        views = np.zeros_like(cams)
        rng = np.random.default_rng(seed + 1)
        models = ids <= self.identities["models"]
        train_idx = np.flatnonzero(models)
        models_train = ImageSet(images[train_idx], ids[train_idx] - 1, [f"person#{i}" for i in train_idx],
                                {"cams": cams[train_idx], "views": views[train_idx]})
        aux = rng.choice(train_idx, min(self.auxiliary, len(train_idx)), replace=False)
        query_idx, rest = [], []
        for pid in np.unique(ids[~models]):
            members = rng.permutation(np.flatnonzero(ids == pid))
            taken: dict[int, int] = {}
            for i in members:
                if taken.get(int(cams[i]), 0) < self.queries_per_camera and len(taken) < self.cameras - 1:
                    taken[int(cams[i])] = taken.get(int(cams[i]), 0) + 1
                    query_idx.append(i)
                else:
                    rest.append(i)
        rest = np.asarray(rest)
        if len(rest) < n_gallery:
            raise ConfigError(f"data.gallery_size={n_gallery}: the demo's test identities leave {len(rest)} "
                              "gallery images (raise data.source.identities.test or images_per_identity)")
        chosen = rng.choice(rest, n_gallery, replace=False)
        gallery = ImageSet(images[chosen], ids[chosen], [f"person#{i}" for i in chosen],
                           {"cams": cams[chosen], "views": views[chosen]})
        q = np.asarray(query_idx)
        queries = QuerySet(ids[q], {"cams": cams[q], "views": views[q]}, images=images[q])
        victim = np.setdiff1d(train_idx, aux)  # model identities' images the attacker was not given
        return RetrievalParts(gallery, queries, auxiliary=ArrayImages(images[aux]), models_train=models_train,
                              victim=ArrayImages(images[victim]))
