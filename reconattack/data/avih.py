"""Data for AVIH encryption and the DR attack: the threat model's image sets and the two
DataModules.

Roles (SPEC §3.1), all built deterministically from ``cfg.data`` by :func:`build_avih_data`:

- **gallery** — the images the client encrypts; its first ``pool`` images are the attacker's
  training pool, the rest are held out for evaluation;
- **queries** and **pairs** — verification pairs ``(gallery index, query index, is_same)`` for
  TPR@FAR: from a ``.bin`` file's own pairs (gallery = first image of each pair), or built from
  identity labels (one genuine and one impostor query per gallery image, disjoint query set);
- **auxiliary** — unrelated images of the same category for the attacker's GAN loss (CelebA for
  faces), read lazily (it may be large);
- **models_train** — (embedded demo only) labelled images to train the demo's face models.

Images are uint8 ``(N, H, W, 3)`` RGB numpy arrays at ``data.image_size``; the DataModules give
float tensors ``(B, 3, H, W)`` in [0, 1].
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from reconattack.data.faces import IdentityFolderSource, build_pairs, digits_faces, load_bin
from reconattack.data.images import DataNotFoundError, resize

log = logging.getLogger(__name__)


class WrongSizeWarning(UserWarning):
    """Images of a source are not ``data.image_size`` and are resized."""


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) or (H, W, 3) → float32 (N, 3, H, W) / (3, H, W) in [0, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
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


@dataclass
class ImageSet:
    """In-memory images with identity labels (-1 = unknown) and names (provenance)."""

    images: np.ndarray  # uint8 (N, H, W, 3)
    labels: np.ndarray  # int64 (N,)
    names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, idx: np.ndarray) -> ImageSet:
        idx = np.asarray(idx, dtype=np.int64)
        names = [self.names[i] for i in idx] if self.names else []
        return ImageSet(self.images[idx], self.labels[idx], names)


class LazyImages(Dataset):
    """An image source read on demand, square-cropped and resized to ``size``.

    Item: float32 (3, size, size) in [0, 1]."""

    def __init__(self, source, indices: np.ndarray, size: int, name: str) -> None:
        self.source, self.indices, self.size, self.name = source, np.asarray(indices), int(size), name
        self._warned = False

    def __len__(self) -> int:
        return len(self.indices)

    def load(self, i: int) -> np.ndarray:
        img = self.source.load(int(self.indices[i]))
        h, w = img.shape[:2]
        if (h, w) != (self.size, self.size):
            if not self._warned:
                self._warned = True
                warnings.warn(f"{self.name}: images of {w}x{h} are centre-cropped to a square and "
                              f"resized to {self.size}x{self.size} (data.image_size)",
                              WrongSizeWarning, stacklevel=2)
            s = min(h, w)
            top, left = (h - s) // 2, (w - s) // 2
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                img = resize(np.ascontiguousarray(img[top:top + s, left:left + s]), self.size)
        return img

    def __getitem__(self, i: int) -> torch.Tensor:
        return to_tensor(self.load(i))


class ArrayImages(Dataset):
    """In-memory uint8 (N, H, W, 3) images as a Dataset of float32 (3, H, W) in [0, 1]."""

    def __init__(self, images: np.ndarray) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return to_tensor(self.images[i])


@dataclass
class AVIHData:
    """The threat model's image sets (see the module docstring)."""

    gallery: ImageSet
    pool: int  # gallery[:pool] = attacker's pool, gallery[pool:] = held out
    queries: ImageSet
    pair_gallery: np.ndarray  # int64 (P,) gallery index of each pair
    pair_query: np.ndarray  # int64 (P,) query index
    pair_same: np.ndarray  # bool (P,)
    auxiliary: Dataset  # float (3, H, W) in [0, 1] items
    models_train: ImageSet | None = None
    image_size: int = 112

    @property
    def heldout(self) -> np.ndarray:
        return np.arange(self.pool, len(self.gallery))

    def describe(self) -> str:
        return (f"gallery {len(self.gallery)} ({self.pool} attacker pool / {len(self.gallery) - self.pool} "
                f"held out), {len(self.queries)} queries, {len(self.pair_same)} pairs "
                f"({int(self.pair_same.sum())} genuine), auxiliary {len(self.auxiliary)}"
                + (f", {len(self.models_train)} for the demo face models" if self.models_train else ""))


def _path(cfg_part: Any, key: str) -> Path:
    raw = cfg_part.get("path")
    if not raw:
        raise ValueError(f"{key}.path is not set")
    return Path(os.path.expanduser(str(raw)))


def missing_inputs(data_cfg: Any) -> list[str]:
    """Human-readable lines for every data file/folder the config needs that is not there."""
    out = []
    for role in ("gallery", "auxiliary"):
        part = data_cfg.get(role)
        if part is None or part.get("kind") == "digits":
            continue
        p = _path(part, f"data.{role}")
        ok = p.is_file() if part.get("kind") == "bin" else p.is_dir()
        if not ok:
            what = {"bin": "an insightface verification .bin file",
                    "folder": "a folder of images (one sub-folder per identity, or flat)"}[part.kind]
            out.append(f"data.{role}: {what} at {p} (set data.{role}.path or RECONATTACK_DATA)")
    return out


def _split_sizes(n_total: int, sizes: dict[str, int]) -> dict[str, int]:
    need = sum(sizes.values())
    if need > n_total:
        raise ValueError(f"data.split asks for {need} images ({sizes}) but the source has {n_total}")
    return sizes


def build_avih_data(data_cfg: Any) -> AVIHData:
    """Build the image sets from ``cfg.data`` (see ``conf/data/avih_*.yaml``).

    Raises:
        DataNotFoundError: a file or folder is missing (message names it and the config key).
        ValueError: the gallery is smaller than requested, or the split does not fit.
    """
    size = int(data_cfg.image_size)
    seed = int(data_cfg.get("selection_seed", 0))
    rng = np.random.default_rng(seed)
    g_cfg, a_cfg = data_cfg.gallery, data_cfg.auxiliary
    n_gallery, pool = int(g_cfg.size), int(g_cfg.pool)
    if not 0 < pool < n_gallery:
        raise ValueError(f"data.gallery.pool must be in (0, data.gallery.size={n_gallery}), got {pool}")
    missing = missing_inputs(data_cfg)
    if missing:
        raise DataNotFoundError("missing data:\n  " + "\n  ".join(missing))
    models_train = None

    if g_cfg.kind == "digits":
        images, labels = digits_faces(size)
        names = [f"digits#{i}" for i in range(len(images))]
        every = ImageSet(images, labels, names)
        split = dict(data_cfg.split)
        sizes = _split_sizes(len(every), {"models": int(split["models"]),
                                          "auxiliary": int(split["auxiliary"]),
                                          "gallery": n_gallery, "queries": int(split["queries"])})
        order = rng.permutation(len(every))
        parts, start = {}, 0
        for role, n in sizes.items():
            parts[role] = every.subset(order[start:start + n])
            start += n
        gallery, queries, models_train = parts["gallery"], parts["queries"], parts["models"]
        pg, pq, ps = build_pairs(gallery.labels, queries.labels, seed=seed)
        auxiliary: Dataset = ArrayImages(parts["auxiliary"].images)
    elif g_cfg.kind == "bin":
        path = _path(g_cfg, "data.gallery")
        images, is_same = load_bin(path)
        n_pairs = len(is_same)
        if n_pairs < n_gallery:
            raise ValueError(f"gallery smaller than requested: {path} has {n_pairs} pairs, "
                             f"data.gallery.size asks for {n_gallery} (one gallery image per pair)")
        images = _fit_size(images, size, str(path))
        chosen = np.sort(rng.choice(n_pairs, n_gallery, replace=False))
        chosen = chosen[rng.permutation(n_gallery)]  # pool / held-out: a seeded random split
        gallery = ImageSet(images[2 * chosen], np.full(n_gallery, -1, np.int64),
                           [f"{path.name}#pair{i}/0" for i in chosen])
        queries = ImageSet(images[2 * chosen + 1], np.full(n_gallery, -1, np.int64),
                           [f"{path.name}#pair{i}/1" for i in chosen])
        pg = pq = np.arange(n_gallery, dtype=np.int64)
        ps = is_same[chosen].astype(bool)
    elif g_cfg.kind == "folder":
        path = _path(g_cfg, "data.gallery")
        src = IdentityFolderSource(path)
        labels = np.asarray(src.labels)
        if (labels < 0).any():
            raise ValueError(f"data.gallery: {path} has no identity sub-folders; a gallery needs one "
                             "sub-folder per identity (to build verification pairs)")
        # per identity: one image to the query set, the others are gallery candidates
        q_idx, g_idx = [], []
        for lab in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == lab))
            if len(members) >= 2:
                q_idx.append(members[0])
                g_idx.extend(members[1:])
        g_idx = np.asarray(g_idx, np.int64)
        if len(g_idx) < n_gallery:
            raise ValueError(f"gallery smaller than requested: {path} has {len(g_idx)} usable gallery "
                             f"images (identities with >= 2 images, one kept as query), "
                             f"data.gallery.size asks for {n_gallery}")
        g_idx = rng.choice(g_idx, n_gallery, replace=False)
        q_idx = np.asarray(q_idx, np.int64)

        def load(idx):
            return _fit_size(np.stack([src.load(int(i)) for i in idx]), size, str(path))

        gallery = ImageSet(load(g_idx), labels[g_idx], [src.name(int(i)) for i in g_idx])
        queries = ImageSet(load(q_idx), labels[q_idx], [src.name(int(i)) for i in q_idx])
        pg, pq, ps = build_pairs(gallery.labels, queries.labels, seed=seed)
    else:
        raise ValueError(f"data.gallery.kind must be digits, bin or folder, got {g_cfg.kind!r}")

    if a_cfg.kind == "folder":
        path = _path(a_cfg, "data.auxiliary")
        src = IdentityFolderSource(path)
        n_aux = len(src) if a_cfg.get("size") in (None, "") else min(int(a_cfg.size), len(src))
        idx = np.sort(np.random.default_rng(seed + 1).choice(len(src), n_aux, replace=False))
        auxiliary = LazyImages(src, idx, size, str(path))
    elif a_cfg.kind != "digits":
        raise ValueError(f"data.auxiliary.kind must be digits or folder, got {a_cfg.kind!r}")
    elif g_cfg.kind != "digits":
        raise ValueError("data.auxiliary.kind=digits goes with data.gallery.kind=digits")
    if len(auxiliary) == 0:
        raise DataNotFoundError("data.auxiliary: the auxiliary set is empty")
    data = AVIHData(gallery, pool, queries, np.asarray(pg, np.int64), np.asarray(pq, np.int64),
                    np.asarray(ps, bool), auxiliary, models_train, size)
    log.info("AVIH data: %s", data.describe())
    return data


# ----------------------------------------------------------------------------- encryption
class EncryptionJobs(Dataset):
    """One item per encryption job (gallery image × key model).

    Item: ``{"image": (3, H, W) in [0, 1], "index": gallery index, "key_id": int, "slot": job
    number}`` and, when ``encrypted`` is given (evaluating a stored gallery),
    ``"encrypted": (3, H, W) in [0, 1]``.
    """

    def __init__(self, gallery: np.ndarray, index: np.ndarray, key_id: np.ndarray,
                 encrypted: torch.Tensor | None = None) -> None:
        self.gallery, self.index, self.key_id, self.encrypted = gallery, index, key_id, encrypted

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, slot: int) -> dict:
        item = {"image": to_tensor(self.gallery[self.index[slot]]), "index": int(self.index[slot]),
                "key_id": int(self.key_id[slot]), "slot": slot}
        if self.encrypted is not None:
            item["encrypted"] = self.encrypted[slot]
        return item


def encryption_jobs(pool: int, n_gallery: int, num_keys: int, target_key: int = 0,
                    decoys: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which gallery image is encrypted with which key (independent of ``attack.key_share``, so
    one encryption serves a whole key-share sweep).

    - every held-out image with the target key;
    - every pool image with the target key (the key-share ``p`` then picks ``round(p·pool)`` of
      them as the leaked same-key images);
    - with ``decoys``: every pool image once more with another key (``1 + i mod (K-1)`` after the
      target), the part of the gallery that does not share the target key.

    Returns ``(index, key_id, role)``: int64 gallery indices, int64 key ids, int8 roles
    (0 held out, 1 pool with the target key, 2 decoy).
    """
    if num_keys < 1 or not 0 <= target_key < num_keys:
        raise ValueError(f"need 0 <= target_key < number of keys, got {target_key} and {num_keys}")
    held = np.arange(pool, n_gallery)
    pool_idx = np.arange(pool)
    index = [held, pool_idx]
    key = [np.full(len(held), target_key), np.full(pool, target_key)]
    role = [np.zeros(len(held)), np.ones(pool)]
    if decoys and num_keys > 1:
        others = [k for k in range(num_keys) if k != target_key]
        index.append(pool_idx)
        key.append(np.asarray([others[i % len(others)] for i in range(pool)]))
        role.append(np.full(pool, 2))
    return (np.concatenate(index).astype(np.int64), np.concatenate(key).astype(np.int64),
            np.concatenate(role).astype(np.int8))


class EncryptDataModule(pl.LightningDataModule):
    """Batches of encryption jobs for :class:`reconattack.attacks.avih_encrypt.AVIHEncryptor`
    (its ``test`` loop encrypts and evaluates), in job order."""

    def __init__(self, jobs: EncryptionJobs, batch_size: int = 64, num_workers: int = 0) -> None:
        super().__init__()
        self.jobs, self.batch_size, self.num_workers = jobs, int(batch_size), int(num_workers)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.jobs, batch_size=self.batch_size, shuffle=False,
                          num_workers=self.num_workers)


# ---------------------------------------------------------------------------- the attack
class LeakedWithAuxiliary(Dataset):
    """Training items of the DR attack: a leaked encrypted image and an auxiliary image, both
    drawn at random (seeded per item, so any sampler or process split is reproducible).

    Item: ``{"encrypted": (3, H, W) in [0, 1], "aux": (3, H, W) in [0, 1]}``."""

    def __init__(self, leaked: torch.Tensor, auxiliary: Dataset, length: int, seed: int) -> None:
        self.leaked, self.auxiliary, self.length, self.seed = leaked, auxiliary, int(length), int(seed)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng((self.seed, i))
        return {"encrypted": self.leaked[int(rng.integers(len(self.leaked)))],
                "aux": self.auxiliary[int(rng.integers(len(self.auxiliary)))]}


class HeldOutRows(Dataset):
    """Evaluation items over the held-out gallery images encrypted with the target key.

    Item: ``{"index", "original", "encrypted", "key_recovered", "random": (3, H, W) in [0, 1],
    "query": (P, 3, H, W), "is_same": (P,) bool, "pair_valid": (P,) bool}`` where P is the
    largest number of pairs of one gallery image (padding has ``pair_valid`` False).
    """

    def __init__(self, data: AVIHData, index: np.ndarray, encrypted: torch.Tensor,
                 key_recovered: torch.Tensor, random_idx: np.ndarray) -> None:
        self.data, self.index = data, np.asarray(index)
        self.encrypted, self.key_recovered, self.random_idx = encrypted, key_recovered, random_idx
        self.pairs: dict[int, list[tuple[int, bool]]] = {}
        for g, q, s in zip(data.pair_gallery, data.pair_query, data.pair_same):
            self.pairs.setdefault(int(g), []).append((int(q), bool(s)))
        self.P = max((len(self.pairs.get(int(i), [])) for i in self.index), default=0)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, k: int) -> dict:
        i = int(self.index[k])
        size = self.data.image_size
        query = torch.zeros(self.P, 3, size, size)
        is_same = torch.zeros(self.P, dtype=torch.bool)
        valid = torch.zeros(self.P, dtype=torch.bool)
        for j, (q, s) in enumerate(self.pairs.get(i, [])):
            query[j] = to_tensor(self.data.queries.images[q])
            is_same[j], valid[j] = s, True
        return {"index": i, "original": to_tensor(self.data.gallery.images[i]),
                "encrypted": self.encrypted[k], "key_recovered": self.key_recovered[k],
                "random": self.data.auxiliary[int(self.random_idx[k])],
                "query": query, "is_same": is_same, "pair_valid": valid}


class ReconstructDataModule(pl.LightningDataModule):
    """Data of the DR attack: ``train`` = leaked encrypted images with auxiliary images,
    ``test`` = the held-out rows (see :class:`HeldOutRows`)."""

    def __init__(self, train: LeakedWithAuxiliary, test: HeldOutRows, batch_size: int = 32,
                 eval_batch_size: int = 64, num_workers: int = 0) -> None:
        super().__init__()
        self.train_set, self.test_set = train, test
        self.batch_size, self.eval_batch_size = int(batch_size), int(eval_batch_size)
        self.num_workers = int(num_workers)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=False, drop_last=True,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=self.eval_batch_size, shuffle=False,
                          num_workers=self.num_workers)
