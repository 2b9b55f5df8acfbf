"""Face-verification data for the AVIH threat: where the gallery, its verification pairs and the
attacker's auxiliary images come from, and the Datasets built on them.

Sources (configs name them with ``_target_``; a user adds one by writing a class with the same
two methods and a YAML file):

- gallery sources — :class:`DigitsFaces` (the embedded demo: scikit-learn's digits, every role
  from one seeded split), :class:`BinGallery` (an insightface verification ``.bin``: the first
  image of each pair is the gallery image, the second its query), :class:`IdentityFolderGallery`
  (one sub-folder per identity: pairs built from the labels). ``gallery.load(size, n_gallery,
  seed, pool)`` returns a :class:`GalleryParts` (the first ``pool`` gallery images are the
  attacker's; a source whose photos can repeat keeps the held-out ones apart from them).
- auxiliary sources — :class:`AuxiliaryFolder` (e.g. CelebA, read lazily). The digits demo's
  gallery source provides its own auxiliary set (``data.auxiliary: null``). The same class reads
  ``data.victim``: images the victim holds and the attacker does not (they train the victim's
  key models when ``threat.key.train`` is set); the embedded demos provide their own.

Each source also answers ``missing()``: human-readable lines for the files it needs that are not
there (all are listed in one message before any work).

Images are uint8 ``(N, H, W, 3)`` RGB numpy arrays at ``data.image_size`` in memory; every
Dataset here yields float tensors ``(3, H, W)`` in [-1, 1], the package's image convention.

**Side information.** A recognition model may take more than the image: TransReID takes each
image's 0-based camera and view (``model(images, cams=..., views=...)``). An :class:`ImageSet`
carries them as ``side`` (``{"cams": int64 (N,), "views": int64 (N,)}``; empty for faces), and
every Dataset here passes an item's as ``"side": {"cams": int, "views": int}`` (batched by the
default collate to (B,) tensors), so that the encryption and the attack call the service model
as ``service(images, **batch["side"])``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from reconattack.data.faces import IdentityFolderSource, build_pairs, digits_faces, load_bin
from reconattack.data.images import DataNotFoundError, read_image, resize
from reconattack.errors import ConfigError
from reconattack.utils.config import as_hw

log = logging.getLogger(__name__)


class WrongSizeWarning(UserWarning):
    """Images of a source are not ``data.image_size`` and are resized."""


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) or (H, W, 3) → float32 (N, 3, H, W) / (3, H, W) in [-1, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(images)).float().div_(127.5).sub_(1.0)
    return t.movedim(-1, -3).contiguous()


def _fit_size(images: np.ndarray, size: int, source: str) -> np.ndarray:
    """Resize (N, h, w, 3) uint8 to (N, size, size, 3), warning once when resizing is needed."""
    if images.shape[1:3] == (size, size):
        return images
    warnings.warn(f"{source}: images are {images.shape[2]}x{images.shape[1]}, resized to "
                  f"{size}x{size} (data.image_size)", WrongSizeWarning, stacklevel=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one warning per source is enough
        return np.stack([resize(im, size) for im in images]) if len(images) else images


def _path(raw: str | os.PathLike | None, key: str) -> Path:
    if not raw:
        raise ConfigError(f"{key}.path is not set")
    return Path(os.path.expanduser(str(raw)))


@dataclass
class ImageSet:
    """In-memory images with identity labels (-1 = unknown), names (provenance) and the side
information the recognition model takes (``{"cams": int64 (N,), "views": int64 (N,)}``, 0-based;
empty for faces)."""

    images: np.ndarray  # uint8 (N, H, W, 3)
    labels: np.ndarray  # int64 (N,)
    names: list[str] = field(default_factory=list)
    side: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, idx: np.ndarray) -> ImageSet:
        idx = np.asarray(idx, dtype=np.int64)
        names = [self.names[i] for i in idx] if self.names else []
        return ImageSet(self.images[idx], self.labels[idx], names, {k: v[idx] for k, v in self.side.items()})


def side_item(side: dict[str, np.ndarray] | None, i: int) -> dict:
    """``{"side": {name: int}}`` for item ``i`` of per-image side arrays, or ``{}`` without any."""
    return {"side": {k: int(v[i]) for k, v in side.items()}} if side else {}


class LazyImages(Dataset):
    """An image source read on demand and brought to ``size`` (an int: square; or (H, W)):
    ``crop`` True centre-crops each image to the target's aspect ratio first (faces), False
    resizes it whole (re-identification crops, whose aspect is the model's).

    Item: float32 (3, H, W) in [-1, 1]."""

    def __init__(self, source, indices: np.ndarray, size: int | tuple[int, int], name: str,
                 crop: bool = True) -> None:
        self.source, self.indices, self.name = source, np.asarray(indices), name
        self.hw, self.crop = as_hw(size), bool(crop)
        self._warned = False

    def __len__(self) -> int:
        return len(self.indices)

    def load(self, i: int) -> np.ndarray:
        img = self.source.load(int(self.indices[i]))
        h, w = img.shape[:2]
        th, tw = self.hw
        if (h, w) != (th, tw):
            if not self._warned:  # resizing whole is the rule for re-identification crops: logged
                self._warned = True
                how = "centre-cropped to its aspect ratio and resized" if self.crop else "resized (not cropped)"
                message = f"{self.name}: images of {w}x{h} are {how} to {tw}x{th} (data.image_size)"
                if self.crop:
                    warnings.warn(message, WrongSizeWarning, stacklevel=2)
                else:
                    log.info(message)
            if self.crop:  # the largest centred box of the target's aspect ratio
                ch, cw = min(h, round(w * th / tw)), min(w, round(h * tw / th))
                top, left = (h - ch) // 2, (w - cw) // 2
                img = img[top:top + ch, left:left + cw]
            img = cv2.resize(np.ascontiguousarray(img), (tw, th), interpolation=cv2.INTER_LINEAR)
        return img

    def __getitem__(self, i: int) -> torch.Tensor:
        return to_tensor(self.load(i))


class ArrayImages(Dataset):
    """In-memory uint8 (N, H, W, 3) images as a Dataset of float32 (3, H, W) in [-1, 1]."""

    def __init__(self, images: np.ndarray) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return to_tensor(self.images[i])


def image_digest(image: np.ndarray) -> str:
    """A photo's identity by content: the BLAKE2b digest of its uint8 pixels and shape."""
    image = np.ascontiguousarray(image)
    return hashlib.blake2b(repr(image.shape).encode() + image.tobytes(), digest_size=16).hexdigest()


@dataclass
class GalleryParts:
    """What a gallery source yields: the gallery images (in a seeded random order), the query
    images and the verification pairs ``(gallery index, query index, is_same)``; the embedded
    demo also yields its auxiliary set, the images that train its face models and the victim's
    own images (``victim``: train the victim's key models; the attacker holds none of them).
    ``heldout_removed``: held-out candidates the source left out because they share a photo with
    the attacker's pool."""

    gallery: ImageSet
    queries: ImageSet
    pair_gallery: np.ndarray  # int64 (P,)
    pair_query: np.ndarray  # int64 (P,)
    pair_same: np.ndarray  # bool (P,)
    auxiliary: Dataset | None = None
    models_train: ImageSet | None = None
    victim: Dataset | None = None
    heldout_removed: int = 0


# ------------------------------------------------------------------------------ gallery sources
class DigitsFaces:
    """The embedded demo "faces": scikit-learn's 1,797 digits (identities = digit classes), split
    with the selection seed into the roles ``models`` (trains the demo face models; also the
    victim's own images, which train its key models with ``threat.key.train``), ``auxiliary``,
    gallery and ``queries`` (one genuine and one impostor pair per gallery image). Every digit
    image is distinct, so the roles share no photo.

    Args:
        split: ``{"models": n, "auxiliary": n, "queries": n}`` (the gallery size comes from
            ``data.gallery_size``).
    """

    #: the source gives the victim's own images (``victim``)
    has_victim = True

    def __init__(self, split: dict) -> None:
        self.split = {k: int(split[k]) for k in ("models", "auxiliary", "queries")}

    def missing(self) -> list[str]:
        return []

    def load(self, size: int, n_gallery: int, seed: int, pool: int | None = None) -> GalleryParts:
        images, labels = digits_faces(size)
        every = ImageSet(images, labels, [f"digits#{i}" for i in range(len(images))])
        sizes = {"models": self.split["models"], "auxiliary": self.split["auxiliary"],
                 "gallery": n_gallery, "queries": self.split["queries"]}
        if sum(sizes.values()) > len(every):
            raise ConfigError(f"data.source.split asks for {sum(sizes.values())} images ({sizes}) but "
                              f"the digits have {len(every)}")
        order = np.random.default_rng(seed).permutation(len(every))
        parts, start = {}, 0
        for role, n in sizes.items():
            parts[role] = every.subset(order[start:start + n])
            start += n
        pg, pq, ps = build_pairs(parts["gallery"].labels, parts["queries"].labels, seed=seed)
        return GalleryParts(parts["gallery"], parts["queries"], pg, pq, ps,
                            auxiliary=ArrayImages(parts["auxiliary"].images),
                            models_train=parts["models"], victim=ArrayImages(parts["models"].images))


class BinGallery:
    """An insightface verification ``.bin`` (LFW, AgeDB-30, CFP-FP; SPEC §3.4): ``n_gallery``
    pairs drawn with the seed; the first image of each is the gallery image, the second its
    query, and the file's is-same flag labels the pair.

    The pair lists reuse photos (LFW's 6,000 pairs hold fewer distinct images), so a photo could be
    both in the attacker's pool and in a held-out pair. The pairs are taken in a seeded random
    order: the first ``pool`` are the pool; then a pair becomes a held-out candidate only when
    neither of its photos (by content, :func:`image_digest`) is a pool gallery image, until
    ``n_gallery - pool`` are held out. ``heldout_removed`` counts the pairs passed over."""

    def __init__(self, path: str) -> None:
        self.path = path

    def missing(self) -> list[str]:
        p = _path(self.path, "data.source")
        return [] if p.is_file() else [
            f"data.source: an insightface verification .bin file at {p} (set data.source.path "
            "or RECONATTACK_DATA)"]

    def load(self, size: int, n_gallery: int, seed: int, pool: int | None = None) -> GalleryParts:
        path = _path(self.path, "data.source")
        images, is_same = load_bin(path)
        n_pairs = len(is_same)
        if n_pairs < n_gallery:
            raise ConfigError(f"gallery smaller than requested: {path} has {n_pairs} pairs, "
                              f"data.gallery_size asks for {n_gallery} (one gallery image per pair)")
        pool = 0 if pool is None else int(pool)
        order = np.random.default_rng(seed).permutation(n_pairs)  # pool first, then held-out candidates
        digest = [image_digest(im) for im in images]  # at the stored size: the same photo, the same bytes
        pool_photos = {digest[2 * p] for p in order[:pool]}
        held, removed = [], 0
        for p in order[pool:]:
            if len(held) == n_gallery - pool:
                break
            if digest[2 * p] in pool_photos or digest[2 * p + 1] in pool_photos:
                removed += 1
            else:
                held.append(p)
        if len(held) < n_gallery - pool:
            raise ConfigError(f"{path}: only {len(held)} pairs share no photo with the attacker's {pool} pool "
                              f"images ({removed} do), data.gallery_size - data.pool asks for {n_gallery - pool}")
        if removed:
            log.info("%s: %d held-out candidate pair(s) passed over: they share a photo with the "
                     "attacker's pool", path, removed)
        chosen = np.concatenate([order[:pool], np.asarray(held, np.int64)]).astype(np.int64)
        unknown = np.full(n_gallery, -1, np.int64)
        pairs = _fit_size(images[np.stack([2 * chosen, 2 * chosen + 1], axis=1).ravel()], size, str(path))
        gallery = ImageSet(pairs[0::2], unknown, [f"{path.name}#pair{i}/0" for i in chosen])
        queries = ImageSet(pairs[1::2], unknown.copy(), [f"{path.name}#pair{i}/1" for i in chosen])
        same = np.arange(n_gallery, dtype=np.int64)
        return GalleryParts(gallery, queries, same, same.copy(), is_same[chosen].astype(bool),
                            heldout_removed=removed)


class IdentityFolderGallery:
    """A folder with one sub-folder per identity: per identity one image becomes a query, the
    others gallery candidates; ``n_gallery`` of them are drawn with the seed and the pairs are
    built from the identity labels."""

    def __init__(self, path: str) -> None:
        self.path = path

    def missing(self) -> list[str]:
        p = _path(self.path, "data.source")
        return [] if p.is_dir() else [
            f"data.source: a folder with one sub-folder of images per identity at {p} (set "
            "data.source.path or RECONATTACK_DATA)"]

    def load(self, size: int, n_gallery: int, seed: int, pool: int | None = None) -> GalleryParts:
        path = _path(self.path, "data.source")
        rng = np.random.default_rng(seed)
        src = IdentityFolderSource(path)
        labels = np.asarray(src.labels)
        if (labels < 0).any():
            raise ConfigError(f"data.source: {path} has no identity sub-folders; a gallery needs one "
                              "sub-folder per identity (to build verification pairs)")
        q_idx, g_idx = [], []
        for lab in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == lab))
            if len(members) >= 2:
                q_idx.append(members[0])
                g_idx.extend(members[1:])
        g_idx = np.asarray(g_idx, np.int64)
        if len(g_idx) < n_gallery:
            raise ConfigError(f"gallery smaller than requested: {path} has {len(g_idx)} usable gallery "
                              f"images (identities with >= 2 images, one kept as query), "
                              f"data.gallery_size asks for {n_gallery}")
        g_idx = rng.choice(g_idx, n_gallery, replace=False)
        q_idx = np.asarray(q_idx, np.int64)

        def load(idx):
            return _fit_size(np.stack([src.load(int(i)) for i in idx]), size, str(path))

        gallery = ImageSet(load(g_idx), labels[g_idx], [src.name(int(i)) for i in g_idx])
        queries = ImageSet(load(q_idx), labels[q_idx], [src.name(int(i)) for i in q_idx])
        pg, pq, ps = build_pairs(gallery.labels, queries.labels, seed=seed)
        return GalleryParts(gallery, queries, pg, pq, ps)


# ---------------------------------------------------------------------------- auxiliary sources
class AuxiliaryFolder:
    """Unrelated images of the gallery's category (CelebA for faces, LPW for persons, Stanford
    Cars for vehicles), flat or one sub-folder per identity (any depth of image files for
    ``recursive``), read lazily; ``size`` draws that many with the seed (None: all); ``crop``:
    images are centre-cropped to the gallery's aspect ratio before the resize (faces), or resized
    whole (False: re-identification crops). Also reads ``data.victim`` (``key``: the config key
    named in messages)."""

    def __init__(self, path: str, size: int | None = None, crop: bool = True, key: str = "data.auxiliary") -> None:
        self.path, self.size, self.crop, self.key = path, size, bool(crop), str(key)

    def missing(self) -> list[str]:
        p = _path(self.path, self.key)
        return [] if p.is_dir() else [
            f"{self.key}: a folder of images (one sub-folder per identity, or flat) at {p} "
            f"(set {self.key}.path or RECONATTACK_DATA)"]

    def load(self, size: int | tuple[int, int], seed: int) -> Dataset:
        path = _path(self.path, self.key)
        src = IdentityFolderSource(path)
        n = len(src) if self.size in (None, "") else min(int(self.size), len(src))
        idx = np.sort(np.random.default_rng(seed + 1).choice(len(src), n, replace=False))
        return LazyImages(src, idx, size, str(path), crop=self.crop)


# ------------------------------------------------------------------------------------ datasets
class RowsOf:
    """Rows ``rows`` of a tensor, taken one at a time when asked for (``len``, ``[k]``): a
    memory-mapped encrypted gallery (``torch.load(mmap=True)``) stays on disk but for the rows a
    batch reads (2,000 VeRi images at 256x256 are 1.5 GB a tensor)."""

    def __init__(self, tensor: torch.Tensor, rows) -> None:
        self.tensor, self.rows = tensor, np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, k: int) -> torch.Tensor:
        return self.tensor[int(self.rows[k])].clone()


class ImageFiles:
    """Image files as an array-like of uint8 (H, W, 3) RGB images at ``size`` = (H, W), read
    (and resized whole, not cropped) when indexed: ``[i]`` one image, ``[idx]`` (N, H, W, 3);
    ``len``, ``shape``. Stands in for an in-memory ``ImageSet.images`` where the images are many
    or large (image memory O(batch))."""

    def __init__(self, files: list, size: tuple[int, int]) -> None:
        self.files, self.size = list(files), (int(size[0]), int(size[1]))

    def __len__(self) -> int:
        return len(self.files)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.files), *self.size, 3)

    dtype = np.dtype(np.uint8)

    def load(self, i: int) -> np.ndarray:
        img = read_image(self.files[i])
        h, w = self.size
        if img.shape[:2] != (h, w):
            img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
        return img

    def __getitem__(self, idx):
        if isinstance(idx, (int, np.integer)):
            return self.load(int(idx))
        idx = np.asarray(idx)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        if idx.ndim == 0:
            return self.load(int(idx))
        return ImageFiles([self.files[int(i)] for i in idx], self.size)

    def __array__(self, dtype=None, copy=None):
        out = np.stack([self.load(i) for i in range(len(self))]) if len(self) else np.zeros(self.shape, np.uint8)
        return out if dtype is None else out.astype(dtype)


class EncryptionJobs(Dataset):
    """One item per encryption job (gallery image × key model).

    Item: ``{"image": (3, H, W) in [-1, 1], "index": gallery index, "key_id": int, "slot": job
    number}`` and, when ``encrypted`` is given (a stored gallery, or the jobs an interrupted
    encryption finished), ``"encrypted": (3, H, W) in [-1, 1]`` and ``"done"``: whether that
    encryption is there (``done`` (M,) bool; default every job); when ``decoy`` (M,) bool is
    given, ``"decoy"``: the job is a decoy (reported apart); with ``side`` (per gallery image,
    see the module docstring) the image's ``"side"``.
    """

    def __init__(self, gallery: np.ndarray, index: np.ndarray, key_id: np.ndarray,
                 encrypted: torch.Tensor | None = None, done: torch.Tensor | None = None,
                 decoy: np.ndarray | None = None, side: dict[str, np.ndarray] | None = None) -> None:
        self.gallery, self.index, self.key_id, self.encrypted = gallery, index, key_id, encrypted
        self.done, self.decoy, self.side = done, decoy, side

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, slot: int) -> dict:
        item = {"image": to_tensor(self.gallery[self.index[slot]]), "index": int(self.index[slot]),
                "key_id": int(self.key_id[slot]), "slot": slot, **side_item(self.side, int(self.index[slot]))}
        if self.encrypted is not None:
            item["encrypted"] = self.encrypted[slot]
            item["done"] = bool(self.done[slot]) if self.done is not None else True
        if self.decoy is not None:
            item["decoy"] = bool(self.decoy[slot])
        return item


class LeakedWithAuxiliary(Dataset):
    """Training items of an attack on the AVIH threat: a leaked encrypted image and an auxiliary
    image, both drawn at random (seeded per item, so any sampler or process split is
    reproducible).

    Item: ``{"input": (3, H, W) in [-1, 1] (encrypted), "aux": (3, H, W) in [-1, 1]}`` and, with
    ``side`` (per leaked image), the leaked image's ``"side"``."""

    def __init__(self, leaked: torch.Tensor, auxiliary: Dataset, length: int, seed: int,
                 side: dict[str, np.ndarray] | None = None) -> None:
        self.leaked, self.auxiliary, self.length, self.seed = leaked, auxiliary, int(length), int(seed)
        self.side = side

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng((self.seed, i))
        j = int(rng.integers(len(self.leaked)))
        return {"input": self.leaked[j], "aux": self.auxiliary[int(rng.integers(len(self.auxiliary)))],
                **side_item(self.side, j)}


class HeldOutRows(Dataset):
    """Evaluation items over the held-out gallery images encrypted with the target key.

    Item: ``{"index", "label" (identity), "target" (original), "input" (encrypted),
    "key_recovered", "random": (3, H, W) in [-1, 1], "query": (P, 3, H, W), "is_same": (P,)
    bool, "pair_valid": (P,) bool}`` where P is the largest number of pairs of one gallery image
    (padding has ``pair_valid`` False; no pairs: P = 0, as for retrieval), and the gallery
    image's ``"side"`` when the gallery has side information.
    """

    def __init__(self, gallery: ImageSet, queries: ImageSet | None, pairs: tuple[np.ndarray, ...],
                 auxiliary: Dataset, index: np.ndarray, encrypted: torch.Tensor,
                 key_recovered: torch.Tensor, random_idx: np.ndarray) -> None:
        self.gallery, self.queries, self.auxiliary = gallery, queries, auxiliary
        self.index = np.asarray(index)
        self.encrypted, self.key_recovered, self.random_idx = encrypted, key_recovered, random_idx
        self.pairs: dict[int, list[tuple[int, bool]]] = {}
        for g, q, s in zip(*pairs):
            self.pairs.setdefault(int(g), []).append((int(q), bool(s)))
        self.P = max((len(self.pairs.get(int(i), [])) for i in self.index), default=0)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, k: int) -> dict:
        i = int(self.index[k])
        query = torch.zeros(self.P, 3, *self.gallery.images.shape[1:3])
        is_same = torch.zeros(self.P, dtype=torch.bool)
        valid = torch.zeros(self.P, dtype=torch.bool)
        for j, (q, s) in enumerate(self.pairs.get(i, [])):
            query[j] = to_tensor(self.queries.images[q])
            is_same[j], valid[j] = s, True
        return {"index": i, "label": int(self.gallery.labels[i]), **side_item(self.gallery.side, i),
                "target": to_tensor(self.gallery.images[i]),
                "input": self.encrypted[k], "key_recovered": self.key_recovered[k],
                "random": self.auxiliary[int(self.random_idx[k])],
                "query": query, "is_same": is_same, "pair_valid": valid}


class LabelledImages(Dataset):
    """uint8 (N, H, W, 3) images and int labels → ``{"image": (3, H, W) in [-1, 1], "label"}``
    (and the image's ``"side"`` with ``side``), drawn at random with replacement for ``length``
    items (seeded per item)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, length: int, seed: int,
                 side: dict[str, np.ndarray] | None = None) -> None:
        self.images, self.labels = to_tensor(images), torch.as_tensor(labels, dtype=torch.long)
        self.length, self.seed, self.side = int(length), int(seed), side

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        j = int(torch.randint(len(self.images), (1,), generator=torch.Generator().manual_seed(
            self.seed * 1_000_003 + i)))
        return {"image": self.images[j], "label": self.labels[j], **side_item(self.side, j)}


__all__ = ["ArrayImages", "AuxiliaryFolder", "BinGallery", "DataNotFoundError", "DigitsFaces",
           "EncryptionJobs", "GalleryParts", "HeldOutRows", "IdentityFolderGallery", "ImageSet", "image_digest",
           "LabelledImages", "LazyImages", "LeakedWithAuxiliary", "WrongSizeWarning", "to_tensor"]
