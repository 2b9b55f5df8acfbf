"""The sparse SIFT cache (SPEC §2.1: extract once, keep the keypoints, build maps per batch):
:class:`SiftCache` keeps :func:`~reconattack.data.sift.extraction.extract` results on disk, keyed by
the image content and the extraction settings, in format 3 (:data:`CACHE_FORMAT_VERSION`; the
entry layout in :class:`SiftCache`)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zlib
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

from reconattack.data.sift.extraction import DESC_DIM, FEATURES, extract
from reconattack.errors import ConfigError
from reconattack.utils.files import atomic_write_bytes

__all__ = ["CACHE_FORMAT_VERSION", "SiftCache"]

log = logging.getLogger(__name__)

#: bump when the on-disk format or the extraction procedure changes
CACHE_FORMAT_VERSION = 3  # 2: CRC-32 of the payload in the header; 3: each keypoint's strength

_MAGIC = b"RASIFT03"
_HEADER = np.dtype([("magic", "S8"), ("n", "<u4"), ("dim", "<u4"), ("crc", "<u4")])


def _encode_entry(xy: np.ndarray, desc: np.ndarray, strength: np.ndarray) -> bytes:
    payload = (np.ascontiguousarray(xy, dtype="<f4").tobytes()
               + np.ascontiguousarray(strength, dtype="<f4").tobytes()
               + np.ascontiguousarray(desc, dtype=np.uint8).tobytes())
    header = np.array([(_MAGIC, len(xy), DESC_DIM, zlib.crc32(payload))], dtype=_HEADER).tobytes()
    return header + payload


def _decode_entry(buf: bytearray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse a cache entry; ValueError when it is malformed."""
    hsize = _HEADER.itemsize
    if len(buf) < hsize:
        raise ValueError("truncated header")
    header = np.frombuffer(buf, dtype=_HEADER, count=1)[0]
    n, dim = int(header["n"]), int(header["dim"])
    if header["magic"] != _MAGIC or dim != DESC_DIM:
        raise ValueError("bad magic or descriptor size")
    if len(buf) != hsize + n * 12 + n * dim:
        raise ValueError(f"size {len(buf)} does not match {n} keypoints")
    if zlib.crc32(memoryview(buf)[hsize:]) != int(header["crc"]):
        raise ValueError("checksum mismatch")
    xy = np.frombuffer(buf, dtype="<f4", count=2 * n, offset=hsize).reshape(n, 2)
    strength = np.frombuffer(buf, dtype="<f4", count=n, offset=hsize + 8 * n)
    desc = np.frombuffer(buf, dtype=np.uint8, count=n * dim, offset=hsize + 12 * n).reshape(n, dim)
    return xy, desc, strength


class SiftCache:
    """Sparse on-disk cache of :func:`extract` results.

    Layout: ``root/<settings>/<k[:2]>/<k[2:]>.sift`` where ``k`` is the sha1 of the image
    bytes, shape and dtype, and ``<settings>`` (``sift-ct<threshold>-<hash>``) is derived from
    the contrast threshold, the OpenCV version and :data:`CACHE_FORMAT_VERSION`; a
    ``settings.json`` in that folder says which. An entry holds a 20-byte header (with a CRC-32
    of the rest), ``xy`` float32 ``(N, 2)``, the keypoints' strength float32 ``(N,)`` and ``desc`` uint8
    ``(N, 128)``: ``20 + 140 N`` bytes (≈ 70 KB for
    500 keypoints). Writes go to a temporary file in the same folder followed by
    ``os.replace``, so several processes can fill the cache at once. A corrupt entry (wrong size, header
    or checksum) is recomputed (and rewritten), never trusted.

    The object holds only paths and settings and is cheap to pickle into DataLoader workers.

    Args:
        root: cache root folder (created on demand).
        contrast_threshold: SIFT contrast threshold passed to :func:`extract` (OpenCV).
        features: ``"opencv"`` or ``"colmap"`` (:func:`extract`); COLMAP's entries live in their own
            folder (``sift-colmap-<hash>``), keyed by the pycolmap version and ``colmap`` options.
        colmap: COLMAP extraction options overrides.
    """

    def __init__(self, root: str | os.PathLike, contrast_threshold: float = 0.03, features: str = "opencv",
                 colmap: dict | None = None) -> None:
        if features not in FEATURES:
            raise ConfigError(f"threat.features must be one of {FEATURES}, got {features!r}")
        self.root = Path(os.path.expanduser(str(root)))
        self.contrast_threshold = float(contrast_threshold)
        self.features, self.colmap = str(features), dict(colmap or {})
        if self.features == "opencv":  # (the keys of caches made before COLMAP features, unchanged)
            self.settings = {
                "contrast_threshold": repr(self.contrast_threshold),
                "opencv": cv2.__version__,
                "format": CACHE_FORMAT_VERSION,
            }
            name = f"sift-ct{self.contrast_threshold:g}"
        else:
            try:
                import pycolmap
            except ImportError:
                raise ConfigError("COLMAP's SIFT (threat.features=colmap, or a threat.stored row with features: "
                                  "colmap) needs pycolmap, which is not installed; install it, or set those rows "
                                  "to null (threat.stored.colmap=null ...)") from None

            self.settings = {"features": "colmap", "pycolmap": pycolmap.__version__, "opencv_grey": cv2.__version__,
                             "colmap": json.loads(json.dumps(self.colmap, sort_keys=True, default=str)),
                             "format": CACHE_FORMAT_VERSION}
            name = "sift-colmap"
        digest = hashlib.sha1(json.dumps(self.settings, sort_keys=True).encode()).hexdigest()
        self.dir = self.root / f"{name}-{digest[:12]}"
        self._dir_ready = False

    # -- keys and paths ------------------------------------------------------------------
    @staticmethod
    def key(image: np.ndarray) -> str:
        """sha1 hex digest of the image bytes, shape and dtype (uint8 ``(H, W, 3)``)."""
        image = np.ascontiguousarray(image)
        h = hashlib.sha1(f"{image.dtype.str}{image.shape}".encode())
        h.update(memoryview(image).cast("B"))
        return h.hexdigest()

    def path(self, image: np.ndarray) -> Path:
        """Cache file of ``image`` (it may not exist yet)."""
        k = self.key(image)
        return self.dir / k[:2] / f"{k[2:]}.sift"

    # -- reading and writing -------------------------------------------------------------
    @staticmethod
    def _read(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Read an entry; None when missing, a warning and None when corrupt."""
        try:
            with open(path, "rb", buffering=0) as f:
                size = os.fstat(f.fileno()).st_size
                buf = bytearray(size)  # writable, so torch.from_numpy does not warn
                got = f.readinto(buf)
        except FileNotFoundError:
            return None
        try:
            if got != size:
                raise ValueError("short read")
            return _decode_entry(buf)
        except ValueError as exc:
            log.warning("SIFT cache entry %s is corrupt (%s); recomputing it", path, exc)
            return None

    def _ensure_dir(self) -> None:
        if self._dir_ready:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        info = self.dir / "settings.json"
        if not info.exists():
            atomic_write_bytes(info, json.dumps(self.settings, indent=2).encode())
        self._dir_ready = True

    def extract(self, image: np.ndarray, with_strength: bool = False, with_scale: bool = False) -> tuple[np.ndarray, ...]:
        """:func:`extract` with this cache's settings (not cached)."""
        return extract(image, self.contrast_threshold, self.features, self.colmap, with_strength, with_scale)

    def _compute_and_store(self, image: np.ndarray, path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        entry = self.extract(image, with_strength=True)
        self._ensure_dir()
        atomic_write_bytes(path, _encode_entry(*entry), durable=False)
        return entry

    # -- public API ----------------------------------------------------------------------
    def get(self, image: np.ndarray, with_strength: bool = False, with_scale: bool = False) -> tuple[np.ndarray, ...]:
        """SIFT of ``image`` from the cache, computed and stored on a miss.

        Args:
            image: uint8 ``(H, W, 3)`` RGB in ``[0, 255]`` (as passed to :func:`extract`).
            with_strength: also each keypoint's strength (:func:`extract`).
            with_scale: also each keypoint's scale (:func:`extract`). COLMAP's entries hold it
                (their strength is the scale); OpenCV's do not (their strength is the detector
                response, and the entry format stays 3), so OpenCV's SIFT is then extracted
                afresh, not cached: the same keypoints in the same order.

        Returns:
            ``(xy, desc)`` as :func:`extract`: float32 ``(N, 2)``, uint8 ``(N, 128)``; with
            ``with_strength`` also float32 ``(N,)``; then with ``with_scale`` float32 ``(N,)``.
        """
        if with_scale and self.features != "colmap":
            return self.extract(image, with_strength, with_scale=True)
        path = self.path(image)
        entry = self._read(path)
        if entry is None:
            entry = self._compute_and_store(image, path)
        return entry[:2] + (entry[2],) * (int(with_strength) + int(with_scale))

    def __contains__(self, image: np.ndarray) -> bool:
        """True when an entry for ``image`` exists (it is not validated)."""
        return self.path(image).is_file()

    def fill(self, images: Iterable[np.ndarray]) -> int:
        """Make sure every image of ``images`` is cached.

        Args:
            images: uint8 ``(H, W, 3)`` RGB images.

        Returns:
            The number of entries newly computed (missing or corrupt ones).
        """
        computed = 0
        for image in images:
            path = self.path(image)
            if self._read(path) is None:
                self._compute_and_store(image, path)
                computed += 1
        return computed

    def __repr__(self) -> str:
        return f"SiftCache({str(self.dir)!r})"
