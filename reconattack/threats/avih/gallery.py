"""The encrypted gallery: built once per gallery, key models and encryption settings (an artifact
that a whole key-share x seed sweep shares), streamed to disk as it is made, read back
memory-mapped.

Layout of the artifact folder (:func:`load_encrypted_gallery` reads it):

- ``encrypted.npy``, ``recovered.npy``: float32 (M, 3, H, W) in [-1, 1], one row per encryption
  job (lossless; ``recovered`` = the job's key model applied to it);
- ``jobs.pt``: ``index`` / ``key_id`` int64 (M,), ``role`` int8 (M,) (:class:`~.roles.Role`),
  ``names`` (the gallery images' provenance);
- ``metrics.json`` (the ``encrypt/*`` values of the build), ``curve.csv`` (the loss curve).

While it is built, :class:`GalleryWriter` writes each batch's rows into the two ``.npy`` files in
the artifact's work folder with positioned writes (nothing of the gallery is kept in memory: a
VeRi-size gallery of 2,000 images at 256x256 is 1.5 GB a tensor), flushes them to disk, and only
then records the batch's jobs as done (``done-*.pt``): a build killed midway continues from the
rows it recorded, and a row is never recorded before its bytes are on disk.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from reconattack.data.avih import to_tensor
from reconattack.utils.files import atomic_torch_save
from reconattack.utils.grids import save_grid

from .roles import Role

log = logging.getLogger(__name__)

#: the two image arrays of an encrypted gallery
ARRAYS = ("encrypted", "recovered")


class GalleryWriter:
    """Streams encryption jobs into ``folder/{encrypted,recovered}.npy`` (float32 (jobs, 3, H, W))
    as they are made: an :class:`~.encryption.EncryptionSink`.

    Rows already recorded in ``folder`` (``done-*.pt``, by a build of the same gallery that was
    killed) are kept: :attr:`done` says which, :meth:`stored` reads them back memory-mapped.
    """

    def __init__(self, folder: str | os.PathLike, jobs: int, image_shape: Sequence[int]) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.jobs = int(jobs)
        self.shape = (self.jobs, *map(int, image_shape))
        self.row_bytes = int(np.prod(self.shape[1:])) * 4
        self.done = np.zeros(self.jobs, dtype=bool)
        self._curve: list[tuple[int, list[dict]]] = []
        self.offset = {a: self._data_offset(self.folder / f"{a}.npy") for a in ARRAYS}
        if None in self.offset.values():  # another shape or a missing file: start over
            for record in self.folder.glob("done-*.pt"):
                record.unlink()
            for a in ARRAYS:  # the header and a (sparse) file of the full size
                arr = np.lib.format.open_memmap(self.folder / f"{a}.npy", mode="w+", dtype=np.float32,
                                                shape=self.shape)
                arr.flush()
                del arr
            self.offset = {a: self._data_offset(self.folder / f"{a}.npy") for a in ARRAYS}
        for record in sorted(self.folder.glob("done-*.pt")):
            try:
                r = torch.load(record, map_location="cpu", weights_only=True)
                slot = np.asarray(r["slot"], dtype=np.int64)
                if slot.size and (slot.min() < 0 or slot.max() >= self.jobs):
                    raise ValueError(f"job {int(slot.max())} of {self.jobs}")
            except Exception as exc:  # a torn or foreign record: its jobs are encrypted again
                log.warning("encrypted gallery: record %s unreadable (%s); its jobs are encrypted again",
                            record, exc)
                continue
            self.done[slot] = True
            self._curve.append((int(slot.min()) if slot.size else 0, list(r.get("curve", []))))

    def _data_offset(self, path: Path) -> int | None:
        """Where the rows of the ``.npy`` file ``path`` start (after its header), or None when it
        is missing, unreadable or not float32 of this gallery's shape."""
        try:
            arr = np.load(path, mmap_mode="r")
        except (OSError, ValueError):
            return None
        offset = int(arr.offset) if arr.shape == self.shape and arr.dtype == np.float32 else None
        del arr
        return offset

    def write(self, slot: torch.Tensor, encrypted: torch.Tensor, recovered: torch.Tensor,
              curve: list[dict]) -> None:
        """Write the rows of jobs ``slot`` (n,) — ``encrypted`` / ``recovered`` (n, 3, H, W) in
        [-1, 1] — to disk, then record them as done (with the batch's curve rows)."""
        slots = slot.long().numpy()
        for name, rows in (("encrypted", encrypted), ("recovered", recovered)):
            data = np.ascontiguousarray(rows.detach().float().cpu().numpy())
            fd = os.open(self.folder / f"{name}.npy", os.O_WRONLY)
            try:
                for k, s in enumerate(slots):
                    os.pwrite(fd, data[k].tobytes(), self.offset[name] + int(s) * self.row_bytes)
                os.fsync(fd)
            finally:
                os.close(fd)
        atomic_torch_save({"slot": torch.from_numpy(slots.copy()), "curve": list(curve)},
                          self.folder / f"done-{int(slots.min()):08d}-{int(slots.max()):08d}.pt")
        self.done[slots] = True
        self._curve.append((int(slots.min()), list(curve)))

    def stored(self, name: str = "encrypted") -> torch.Tensor:
        """The rows written so far as a memory-mapped float32 (jobs, 3, H, W) tensor (copy on write:
        the file is never changed through it); rows not :attr:`done` are zeros."""
        return torch.from_numpy(np.load(self.folder / f"{name}.npy", mmap_mode="c"))

    @property
    def curve(self) -> list[dict]:
        """The loss-curve rows of every recorded batch, in job order."""
        return [row for _, rows in sorted(self._curve, key=lambda t: t[0]) for row in rows]

    def publish(self, dest: str | os.PathLike) -> None:
        """Move the two arrays into ``dest`` (the artifact being built); every job must be done."""
        if not self.done.all():
            raise RuntimeError(f"encryption left {int((~self.done).sum())} of {self.jobs} jobs undone")  # a bug
        for a in ARRAYS:
            shutil.move(self.folder / f"{a}.npy", Path(dest) / f"{a}.npy")


def save_jobs(dest: Path, index: np.ndarray, key_id: np.ndarray, role: np.ndarray, names: list[str]) -> None:
    """The jobs' table of an encrypted gallery (``jobs.pt``)."""
    torch.save({"index": torch.from_numpy(np.asarray(index, np.int64)),
                "key_id": torch.from_numpy(np.asarray(key_id, np.int64)),
                "role": torch.from_numpy(np.asarray(role, np.int8)), "names": list(names)}, dest / "jobs.pt")


def load_encrypted_gallery(path: str | os.PathLike) -> dict:
    """An encrypted-gallery artifact: ``encrypted`` / ``recovered`` float32 (M, 3, H, W) in
    [-1, 1], memory-mapped (paged in as rows are read; copy on write), ``index`` / ``key_id``
    int64 (M,), ``role`` int8 (M,), ``names``."""
    path = Path(path)
    out = torch.load(path / "jobs.pt", map_location="cpu", weights_only=True)
    for a in ARRAYS:
        out[a] = torch.from_numpy(np.load(path / f"{a}.npy", mmap_mode="c"))
    return out


def write_curve(rows: list[dict], path: Path) -> None:
    """Loss-curve rows as CSV (nothing without rows)."""
    if not rows:
        return
    cols = list(rows[0])
    path.write_text(",".join(cols) + "\n" + "\n".join(",".join(f"{r[c]:.6g}" for c in cols)
                                                    for r in rows) + "\n")


def write_build_record(dest: Path, metrics: dict, curve: list[dict]) -> None:
    (dest / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    write_curve(curve, dest / "curve.csv")


@torch.no_grad()
def encryption_grid(gallery: dict, images: np.ndarray, keys: Sequence[nn.Module], path: Path,
                    rows: int) -> None:
    """``samples/encrypt_grid.png``: the first ``rows`` held-out images — original, encrypted,
    key-model recovery and (several keys) another key's recovery; ``images`` the gallery's uint8
    (N, H, W, 3)."""
    held = torch.nonzero(gallery["role"] == Role.HELD_OUT).flatten()[:rows]
    x = to_tensor(images[gallery["index"][held].numpy()])
    enc, rec = gallery["encrypted"][held], gallery["recovered"][held]
    cols = [x, enc, rec]
    if len(keys) > 1:
        wrong_key = (gallery["key_id"][held] + 1) % len(keys)
        cols.append(torch.cat([keys[int(k)](enc[i:i + 1]) for i, k in enumerate(wrong_key)]))
    save_grid(cols, path, max_rows=rows)
    path.with_suffix(".txt").write_text("original | encrypted | key-model recovery"
                                        + (" | wrong-key recovery" if len(keys) > 1 else "") + "\n")


__all__ = ["GalleryWriter", "encryption_grid", "load_encrypted_gallery", "save_jobs", "write_build_record",
           "write_curve"]
