"""Image decoding and image sources (SPEC §2.1, §2.4, §6).

Everything here returns images as ``np.ndarray`` of dtype ``uint8``, shape ``(H, W, 3)``,
RGB channel order, values in ``[0, 255]``, at their original size; :func:`resize` brings them
to the training resolution the way the official CFGAN code does (``cv2.resize``, bilinear,
no crop).

A *source* is anything with the small interface of :class:`ImageSource`:

- ``len(source)`` — number of images;
- ``source.name(i) -> str`` — a stable, human-readable identifier of image ``i`` (relative
  path, LMDB key, ...), used for split files and error messages;
- ``source.load(i) -> np.ndarray`` — image ``i``, uint8 RGB ``(H, W, 3)``, original size.

Implementations: :class:`ImageFolderSource` (a folder of image files, searched recursively),
:class:`LMDBSource` (the official LSUN LMDB export), :class:`ArraySource` (images already in
memory) and :func:`lfw_faces` (the 25×25 LFW crops shipped inside scikit-image, for demos and
tests). :func:`open_auto` picks the reader for a path. Configs name a source with ``_target_``.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import cv2
import numpy as np

from reconattack.errors import ConfigError, UserError
from reconattack.utils.config import as_hw  # noqa: F401  (re-exported: data sources take sizes)

__all__ = [
    "IMAGE_EXTENSIONS",
    "SOURCE_KINDS",
    "ArraySource",
    "DataNotFoundError",
    "ImageFolderSource",
    "ImageReadError",
    "ImageSource",
    "LMDBSource",
    "SmallImageWarning",
    "decode_image",
    "lfw_faces",
    "open_auto",
    "open_source",
    "read_image",
    "resize",
    "warn_if_small",
]

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
SOURCE_KINDS: tuple[str, ...] = ("folder", "lmdb", "auto")

_LMDB_LAYOUT = "an LMDB directory holding data.mdb as exported by the LSUN tools"

# open LMDB environments by (process id, real path): py-lmdb allows one per path and process,
# and an environment inherited through fork must not be used in the child
_lmdb_envs: dict[tuple[int, str], object] = {}
_lmdb_lock = threading.Lock()


class ImageReadError(UserError, ValueError):
    """An image file or buffer could not be decoded (corrupt, empty, unsupported format)."""


class DataNotFoundError(UserError, FileNotFoundError):
    """A dataset path does not exist or does not have the expected layout."""


class SmallImageWarning(UserWarning):
    """An image is smaller than the target size and is upscaled by :func:`resize`."""


# --------------------------------------------------------------------------------------------
# decoding
# --------------------------------------------------------------------------------------------


def _to_uint8(image: np.ndarray, name: str) -> np.ndarray:
    """Convert a decoded image of any supported dtype to uint8 (same shape).

    uint8 is returned as is; uint16 is scaled with ``round(x / 257)`` (65535 → 255);
    float images are assumed to be in ``[0, 1]``, clipped to it and scaled with
    ``round(x * 255)``.
    """
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return np.rint(image.astype(np.float32) / 257.0).astype(np.uint8)
    if np.issubdtype(image.dtype, np.floating):
        img = np.nan_to_num(image.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        return np.rint(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)
    raise ImageReadError(
        f"{name}: unsupported pixel type {image.dtype} (expected 8/16-bit or float)"
    )


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_MAX_CHUNK = 2**31 - 1  # PNG spec: a chunk length is at most 2^31 - 1


def _check_png_chunks(data: bytes, name: str) -> None:
    """Refuse a PNG with a chunk that declares more bytes than the buffer holds.

    OpenCV's PNG reader allocates (and zero-fills) a chunk's declared length before reading
    it: one corrupt length field (a single flipped byte) makes a 1 KB file cost up to 4 GB
    of memory and seconds of work before the read fails anyway. Walking the chunk headers
    first is cheap (12 bytes per chunk, stopping at ``IEND``); whatever passes is left to
    OpenCV, which checks the rest (CRCs, zlib data, ...).
    """
    pos, end = len(_PNG_SIGNATURE), len(data)
    while end - pos >= 8:  # a chunk header: 4-byte big-endian length, 4-byte type
        length = int.from_bytes(data[pos : pos + 4], "big")
        ctype = bytes(data[pos + 4 : pos + 8])
        if length > _PNG_MAX_CHUNK or length > end - pos - 12:
            raise ImageReadError(
                f"{name}: truncated or corrupt PNG: chunk {ctype!r} at byte {pos} declares "
                f"{length} bytes of data but only {max(end - pos - 12, 0)} follow"
            )
        if ctype == b"IEND":
            return
        pos += 12 + length


def decode_image(data: bytes, name: str) -> np.ndarray:
    """Decode an encoded image (JPEG, PNG, WebP, BMP, TIFF, ...) to RGB uint8.

    Decoding uses ``cv2.imdecode(..., cv2.IMREAD_UNCHANGED)`` and then normalises the result:

    - greyscale ``(H, W)`` or ``(H, W, 1)`` → replicated to 3 channels;
    - grey + alpha and BGRA (4 channels) → the **alpha channel is dropped** (colour values are
      kept as stored, not composited on a background);
    - 16-bit → 8-bit with ``round(x / 257)``; float (e.g. float TIFF) → assumed in ``[0, 1]``,
      ``round(clip(x, 0, 1) * 255)``.

    Note that ``IMREAD_UNCHANGED`` does not apply the EXIF orientation of JPEG files.

    Args:
        data: the encoded file content.
        name: file name or key, used in error messages.

    Returns:
        ``np.ndarray`` uint8, shape ``(H, W, 3)``, RGB, values in ``[0, 255]``.

    Raises:
        ImageReadError: the buffer is empty, corrupt (including a PNG chunk that declares
            more bytes than the buffer holds, refused before OpenCV allocates them), or of an
            unsupported pixel layout; the message names ``name``.
    """
    if data is None or len(data) == 0:
        raise ImageReadError(f"{name}: empty image data")
    if bytes(data[: len(_PNG_SIGNATURE)]) == _PNG_SIGNATURE:
        _check_png_chunks(data, name)
    buf = np.frombuffer(data, dtype=np.uint8)
    try:
        image = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise ImageReadError(f"{name}: could not decode image ({exc})") from exc
    if image is None or image.size == 0:
        raise ImageReadError(f"{name}: could not decode image (corrupt or unsupported format)")
    image = _to_uint8(image, name)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3:
        raise ImageReadError(f"{name}: unsupported image shape {image.shape}")
    channels = image.shape[2]
    if channels == 1:
        out = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    elif channels == 2:  # grey + alpha (OpenCV normally expands this to BGRA itself)
        out = cv2.cvtColor(np.ascontiguousarray(image[:, :, 0]), cv2.COLOR_GRAY2RGB)
    elif channels == 3:
        out = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    elif channels == 4:
        out = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)  # drops alpha
    else:
        raise ImageReadError(f"{name}: unsupported number of channels ({channels})")
    return np.ascontiguousarray(out, dtype=np.uint8)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read and decode an image file.

    Returns:
        ``np.ndarray`` uint8 ``(H, W, 3)`` RGB in ``[0, 255]``, original size.

    Raises:
        FileNotFoundError: the file does not exist.
        ImageReadError: the file cannot be decoded (message names the path).
    """
    path = Path(path)
    with open(path, "rb") as f:
        data = f.read()
    return decode_image(data, str(path))


# --------------------------------------------------------------------------------------------
# resizing
# --------------------------------------------------------------------------------------------

_warned_sources: set[str] = set()
_warned_lock = threading.Lock()


def warn_if_small(image: np.ndarray, size: int, source: str | None = None) -> bool:
    """Warn (once per ``source`` and process) when ``image`` is smaller than ``size``.

    Args:
        image: ``(H, W, C)`` or ``(H, W)`` array, any dtype.
        size: target side length in pixels.
        source: key that identifies the data source (e.g. its path); one warning is emitted
            per distinct key. ``None`` uses a shared key.

    Returns:
        True when the image is smaller than ``size`` in height or width (whether or not a
        warning was emitted this time).
    """
    h, w = image.shape[:2]
    if h >= size and w >= size:
        return False
    key = "<unnamed source>" if source is None else str(source)
    with _warned_lock:
        first = key not in _warned_sources
        _warned_sources.add(key)
    if first:
        warnings.warn(
            f"{key}: image of {h}x{w} pixels is smaller than the target size {size}x{size} and "
            "is upscaled (bilinear); further small images from this source are not reported.",
            SmallImageWarning,
            stacklevel=3,
        )
    return True


def resize(image: np.ndarray, size: int, source: str | None = None) -> np.ndarray:
    """Resize to ``size × size`` with ``cv2.resize`` bilinear (``INTER_LINEAR``), no crop.

    This is what the official CFGAN code does; the aspect ratio is not preserved. Images
    smaller than ``size`` are upscaled, with one :class:`SmallImageWarning` per ``source``
    (see :func:`warn_if_small`).

    Args:
        image: uint8 ``(H, W, 3)`` RGB in ``[0, 255]``.
        size: output side length in pixels (> 0).
        source: key of the data source, for the one-time small-image warning.

    Returns:
        uint8 ``(size, size, 3)`` RGB in ``[0, 255]`` (the input itself when it already has
        that size).
    """
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"resize expects a uint8 (H, W, 3) image, got {image.dtype} {tuple(image.shape)}"
        )
    if image.shape[0] == size and image.shape[1] == size:
        return image
    warn_if_small(image, size, source)
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)


# --------------------------------------------------------------------------------------------
# sources
# --------------------------------------------------------------------------------------------


@runtime_checkable
class ImageSource(Protocol):
    """What datasets need from a collection of images (see the module docstring)."""

    def __len__(self) -> int: ...

    def name(self, i: int) -> str: ...

    def load(self, i: int) -> np.ndarray: ...


def _check_index(i: int, n: int) -> int:
    i = int(i)
    if i < 0:
        i += n
    if not 0 <= i < n:
        raise IndexError(f"image index {i} out of range for a source of {n} images")
    return i


def normalise_extensions(extensions: Sequence[str]) -> tuple[str, ...]:
    """Lower-case extensions with a leading dot (``"PNG"`` → ``".png"``)."""
    return tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)


def is_image_file(filename: str, extensions: tuple[str, ...]) -> bool:
    """Not hidden and one of ``extensions`` (normalised, see :func:`normalise_extensions`)."""
    return not filename.startswith(".") and os.path.splitext(filename)[1].lower() in extensions


def images_under(folder: Path, extensions: tuple[str, ...]) -> list[str]:
    """Image files under ``folder`` (recursive, hidden files and folders skipped), as sorted
    relative POSIX paths."""
    files: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel_dir = os.path.relpath(dirpath, folder)
        for fn in filenames:
            if is_image_file(fn, extensions):
                files.append(Path(fn if rel_dir == "." else os.path.join(rel_dir, fn)).as_posix())
    files.sort()
    return files


class FileListSource:
    """Shared part of the folder sources: ``self.root`` and ``self.files`` (relative POSIX
    paths, in item order) give ``len``, ``name(i)`` and ``load(i)``."""

    root: Path
    files: list[str]

    def __len__(self) -> int:
        return len(self.files)

    def name(self, i: int) -> str:
        """Relative POSIX path of image ``i`` (e.g. ``"sub/0001.jpg"``)."""
        return self.files[_check_index(i, len(self.files))]

    def load(self, i: int) -> np.ndarray:
        """Image ``i``: uint8 ``(H, W, 3)`` RGB in ``[0, 255]``, original size."""
        return read_image(self.root / self.name(i))


class ImageFolderSource(FileListSource):
    """A folder of image files, searched recursively.

    Files are matched by extension (case-insensitive); hidden files and folders (name starting
    with ``.``) are skipped. Images are ordered by their relative POSIX path (sorted), so the
    order — and any seeded split built on it — does not depend on the file system.

    Args:
        root: the folder.
        extensions: accepted file extensions, with the leading dot.

    Raises:
        DataNotFoundError: ``root`` is missing, not a folder, or holds no image files.
    """

    def __init__(
        self, root: str | os.PathLike, extensions: Sequence[str] = IMAGE_EXTENSIONS
    ) -> None:
        self.root = Path(os.path.expanduser(str(root)))
        self.extensions = normalise_extensions(extensions)
        layout = (
            "expected a folder of image files (searched recursively; extensions "
            f"{', '.join(self.extensions)})"
        )
        if not self.root.is_dir():
            what = "is not a folder" if self.root.exists() else "does not exist"
            raise DataNotFoundError(f"{self.root} {what}; {layout}.")
        files = images_under(self.root, self.extensions)
        if not files:
            raise DataNotFoundError(f"no image files found in {self.root}; {layout}.")
        self.files: list[str] = files

    def __repr__(self) -> str:
        return f"ImageFolderSource({str(self.root)!r}, {len(self)} images)"


class LMDBSource:
    """An LSUN LMDB export: keys are image ids, values encoded image bytes (WebP/JPEG).

    The environment is opened read-only (``lock=False, readahead=False``), lazily and once
    per process and path (sources on the same path, e.g. the train/val/test splits of one
    database, share it). It is kept in a per-process registry, not on the object, so the
    object pickles into DataLoader worker processes without it and each worker (spawned or
    forked) opens its own on first :meth:`load`. The key
    list is read once at construction, with a keys-only cursor scan, and kept as a compact
    numpy byte-string array (cheap to pickle, no per-key Python objects in forked workers).

    Args:
        path: the LMDB directory (holding ``data.mdb``) or the ``data.mdb`` file itself.
        max_readers: LMDB reader slots (one per process/thread reading concurrently).

    Raises:
        DataNotFoundError: the path is missing, not an LMDB environment, or empty.
    """

    def __init__(self, path: str | os.PathLike, max_readers: int = 2048) -> None:
        self.path = Path(os.path.expanduser(str(path)))
        self.max_readers = int(max_readers)
        if not self.path.exists():
            raise DataNotFoundError(f"{self.path} does not exist; expected {_LMDB_LAYOUT}.")
        if self.path.is_dir():
            if not (self.path / "data.mdb").is_file():
                raise DataNotFoundError(f"{self.path} holds no data.mdb; expected {_LMDB_LAYOUT}.")
            self._subdir = True
        else:
            self._subdir = False
        # registry key: the data file (the same database may be named by folder or by file)
        self._real_path = os.path.realpath(self.path / "data.mdb" if self._subdir else self.path)
        with self.env.begin(write=False) as txn:
            keys = list(txn.cursor().iternext(keys=True, values=False))
        if not keys:
            raise DataNotFoundError(f"{self.path} is an empty LMDB; expected {_LMDB_LAYOUT}.")
        # numpy 'S' arrays strip trailing NUL bytes; keep a plain list in that (rare) case
        if any(k.endswith(b"\x00") for k in keys):
            self._keys: np.ndarray | list[bytes] = keys
        else:
            self._keys = np.array(keys, dtype=np.bytes_)

    @property
    def env(self):
        """The ``lmdb.Environment`` of this process (opened on first use, shared by all
        sources reading the same path in this process: LMDB allows one per process)."""
        pid = os.getpid()
        key = (pid, self._real_path)
        env = _lmdb_envs.get(key)
        if env is None:
            with _lmdb_lock:
                env = _lmdb_envs.get(key)
                if env is None:
                    # an environment inherited through fork must not be used in the child, and
                    # py-lmdb refuses a second open of the same files while it is registered:
                    # close the inherited copy (harmless to the parent with lock=False)
                    for old in [k for k in _lmdb_envs if k[1] == self._real_path and k[0] != pid]:
                        _lmdb_envs.pop(old).close()
                    env = _lmdb_envs[key] = self._open()
        return env

    def _open(self):
        import lmdb

        try:
            return lmdb.open(
                str(self.path),
                subdir=self._subdir,
                readonly=True,
                lock=False,
                readahead=False,
                meminit=False,
                max_readers=self.max_readers,
            )
        except lmdb.Error as exc:
            raise DataNotFoundError(
                f"{self.path} could not be opened as LMDB ({exc}); expected {_LMDB_LAYOUT}."
            ) from exc

    def __len__(self) -> int:
        return len(self._keys)

    def key(self, i: int) -> bytes:
        """Raw LMDB key of image ``i``."""
        return bytes(self._keys[_check_index(i, len(self._keys))])

    def name(self, i: int) -> str:
        """LMDB key of image ``i`` as text (ASCII; undecodable bytes escaped)."""
        return self.key(i).decode("ascii", errors="backslashreplace")

    def load(self, i: int) -> np.ndarray:
        """Image ``i``: uint8 ``(H, W, 3)`` RGB in ``[0, 255]``, original size."""
        key = self.key(i)
        with self.env.begin(write=False, buffers=False) as txn:
            data = txn.get(key)
        if data is None:
            raise ImageReadError(f"{self.path}: key {key!r} not found")
        return decode_image(data, f"{self.path}[{key.decode('ascii', 'backslashreplace')}]")

    def close(self) -> None:
        """Close this process's environment of this path (reopened on the next :meth:`load`)."""
        with _lmdb_lock:
            env = _lmdb_envs.pop((os.getpid(), self._real_path), None)
        if env is not None:
            env.close()

    def __repr__(self) -> str:
        return f"LMDBSource({str(self.path)!r}, {len(self)} images)"


class ArraySource:
    """Images held in memory.

    Args:
        images: uint8 ``(N, H, W, 3)`` RGB in ``[0, 255]``.
        names: ``N`` identifiers; default ``"000000"``, ``"000001"``, ...
    """

    def __init__(self, images: np.ndarray, names: Sequence[str] | None = None) -> None:
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
            raise ValueError(
                f"ArraySource expects uint8 images of shape (N, H, W, 3), got {images.dtype} "
                f"{tuple(images.shape)}"
            )
        if names is None:
            names = [f"{i:06d}" for i in range(len(images))]
        names = [str(n) for n in names]
        if len(names) != len(images):
            raise ValueError(f"{len(names)} names given for {len(images)} images")
        self.images = images
        self.names = names

    def __len__(self) -> int:
        return len(self.images)

    def name(self, i: int) -> str:
        return self.names[_check_index(i, len(self.images))]

    def load(self, i: int) -> np.ndarray:
        """Image ``i``: uint8 ``(H, W, 3)`` RGB in ``[0, 255]`` (a read-only view)."""
        view = self.images[_check_index(i, len(self.images))].view()
        view.flags.writeable = False
        return view

    def __repr__(self) -> str:
        return f"ArraySource({len(self)} images of {self.images.shape[1]}x{self.images.shape[2]})"


def lfw_faces(n: int = 100) -> ArraySource:
    """The first ``n`` (≤ 100) face crops of ``skimage.data.lfw_subset()``, no download.

    ``lfw_subset`` holds 200 greyscale 25×25 float images in ``[0, 1]``: the first 100 are
    faces, the rest non-faces. They are converted with ``round(x * 255)`` to uint8 and
    replicated to RGB.

    Returns:
        :class:`ArraySource` of uint8 ``(n, 25, 25, 3)`` images, names ``"lfw_subset_000"``...
    """
    if not 0 < n <= 100:
        raise ConfigError(f"lfw_faces: n must be in 1..100 (lfw_subset has 100 faces), got {n}")
    from skimage.data import lfw_subset

    faces = np.asarray(lfw_subset()[:n], dtype=np.float64)
    grey = np.rint(np.clip(faces, 0.0, 1.0) * 255.0).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    return ArraySource(rgb, [f"lfw_subset_{i:03d}" for i in range(n)])


def open_auto(path: str | os.PathLike) -> ImageFolderSource | LMDBSource:
    """The LSUN LMDB export at ``path`` (a directory holding ``data.mdb``, or an ``.mdb`` file), else
    a folder of image files. Raises DataNotFoundError naming both layouts when ``path`` is missing."""
    p = Path(os.path.expanduser(str(path)))
    if not p.exists():
        raise DataNotFoundError(
            f"{p} does not exist; expected LSUN's LMDB export (a directory holding data.mdb) or a "
            f"folder of image files (set paths.data_dir or the RECONATTACK_DATA environment variable "
            f"to the datasets root)")
    return open_source("auto", p)


def open_source(kind: str, path: str | os.PathLike) -> ImageFolderSource | LMDBSource:
    """Open the image source at ``path``.

    Args:
        kind: ``"folder"`` (:class:`ImageFolderSource`), ``"lmdb"`` (:class:`LMDBSource`) or
            ``"auto"`` (LMDB when ``path/data.mdb`` exists or ``path`` is an ``.mdb`` file,
            else folder).
        path: dataset location.

    Raises:
        ValueError: unknown ``kind``.
        DataNotFoundError: nothing usable at ``path``.
    """
    if kind not in SOURCE_KINDS:
        raise ValueError(
            f"unknown image source kind {kind!r}; valid kinds: {', '.join(SOURCE_KINDS)}"
        )
    p = Path(os.path.expanduser(str(path)))
    if kind == "auto":
        is_lmdb = (p / "data.mdb").is_file() or (p.is_file() and p.suffix == ".mdb")
        kind = "lmdb" if is_lmdb else "folder"
    if kind == "lmdb":
        return LMDBSource(p)
    return ImageFolderSource(p)
