"""Face data: insightface verification ``.bin`` files, identity folders, pairs (SPEC §3.4, §6).

- :func:`load_bin` reads the insightface verification sets (LFW, AgeDB-30, CFP-FP) with a
  **restricted unpickler**: these files are pickles, and a plain ``pickle.load`` of an
  untrusted file runs whatever code the file names. Only bytes, lists, tuples, bools and ints
  are admitted, plus the one callable ``_codecs.encode`` (with a latin-1 text argument) that
  Python 3 pickles of protocol ≤ 2 use to store ``bytes``. Python-2 pickles (``str`` stored
  as ``BINSTRING``) load too: they are read with ``encoding="bytes"``.
- :func:`make_bin` writes such a file (PNG images), for fixtures and users' own pair lists.
- :class:`IdentityFolderSource` reads a folder with one sub-folder per identity (a CelebA-style
  auxiliary set or a user gallery), or a flat folder of images of unknown identity.
- :func:`digits_faces` is the embedded demo data (scikit-learn's 8×8 digits, identities =
  digit classes), available offline.
- :func:`build_pairs` builds verification pairs from identity labels when a dataset has none.

All images are uint8 ``(H, W, 3)`` RGB numpy arrays, as in :mod:`reconattack.data.images`.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import warnings
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from reconattack.data.images import (
    IMAGE_EXTENSIONS,
    DataNotFoundError,
    FileListSource,
    decode_image,
    images_under,
    is_image_file,
    normalise_extensions,
    resize,
)
from reconattack.errors import ConfigError, UserError

__all__ = [
    "BinFormatError",
    "IdentityFolderSource",
    "build_pairs",
    "digits_faces",
    "load_bin",
    "make_bin",
]

_BIN_EXPECTED = (
    "not an insightface verification .bin: expected (list of image bytes, list of is-same "
    "flags) with 2 images per pair"
)
_BIN_LAYOUT = (
    "expected an insightface verification .bin file (e.g. lfw.bin, agedb_30.bin, cfp_fp.bin): "
    "a pickle of (list of encoded image bytes, list of is-same flags)"
)
# spellings of latin-1 that ``_codecs.encode`` may be called with (Python writes "latin1")
_LATIN1_NAMES = frozenset({"latin1", "latin-1", "latin_1", "iso-8859-1", "iso8859-1", "l1"})


class BinFormatError(UserError, ValueError):
    """A file is not a (safe, well-formed) insightface verification ``.bin``."""


# --------------------------------------------------------------------------------------------
# restricted unpickling
# --------------------------------------------------------------------------------------------


def _latin1_encode(text: object, encoding: object = "latin1", *rest: object) -> bytes:
    """The only callable a ``.bin`` may use: ``_codecs.encode(text, "latin1")`` → bytes.

    Narrower than the real ``_codecs.encode``: the text must be a ``str``, the codec latin-1
    and no further arguments are accepted (no arbitrary codec lookup).
    """
    if (
        not isinstance(text, str)
        or not isinstance(encoding, str)
        or encoding.lower() not in _LATIN1_NAMES
        or rest
    ):
        raise pickle.UnpicklingError(
            "_codecs.encode is admitted only as _codecs.encode(str, 'latin1') (how Python "
            f"pickles bytes); got arguments of types {type(text).__name__}, "
            f"{type(encoding).__name__}{', ...' if rest else ''}"
        )
    return text.encode("latin-1")


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global except ``_codecs.encode``.

    Without globals a pickle can only build builtin values (bytes, str, numbers, bools, None,
    lists, tuples, dicts, sets); nothing can be called or imported. The structure is checked
    afterwards by :func:`load_bin`.
    """

    def __init__(self, file, name: str) -> None:
        super().__init__(file, encoding="bytes")
        self._name = name

    def find_class(self, module: str, name: str):
        if module == "_codecs" and name == "encode":
            return _latin1_encode
        raise BinFormatError(
            f"{self._name}: refused to load global {module}.{name} — a verification .bin may "
            "only hold image bytes, lists, tuples, bools and ints (the one admitted callable "
            "is _codecs.encode); the file is not an insightface verification .bin or is "
            "malicious, and nothing in it was executed."
        )

    def persistent_load(self, pid):
        raise BinFormatError(f"{self._name}: refused a persistent id in the pickle; {_BIN_LAYOUT}.")


_MEMO_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})


def _check_opcodes(data: bytes) -> None:
    """Walk the pickle's opcodes with :func:`pickletools.genops` (nothing is built or run).

    This catches, before the unpickler allocates anything, what would make it allocate far
    more than the file holds:

    - a memo index (``PUT``/``BINPUT``/``LONG_BINPUT``) beyond the number of opcodes before
      it — picklers number memo entries 0, 1, 2, ..., but CPython's unpickler grows its memo
      table to twice any index it is given and zero-fills it: one flipped byte in a 9-byte
      file costs 16 × 2^32 bytes (an out-of-memory kill rather than an error);
    - a length field (counted bytes/str) that runs past the end of the data; genops reads
      only what is there.

    Raises:
        ValueError: (from genops or here) the opcode stream is malformed.
    """
    for n_before, (opcode, arg, pos) in enumerate(pickletools.genops(data)):
        if opcode.name in _MEMO_PUTS and arg > n_before:
            raise ValueError(
                f"memo index {arg} at byte {pos} is beyond the {n_before} opcodes before it"
            )


def _restricted_loads(data: bytes, name: str = "<bytes>") -> object:
    """Unpickle ``data`` with :class:`_RestrictedUnpickler` (errors → :class:`BinFormatError`).

    The opcode stream is checked first (:func:`_check_opcodes`), so corrupt files fail
    without the unpickler's oversized allocations.
    """
    if len(data) == 0:
        raise BinFormatError(f"{name}: {_BIN_EXPECTED}; the file is empty.")
    try:
        _check_opcodes(data)
        return _RestrictedUnpickler(io.BytesIO(data), name).load()
    except BinFormatError:
        raise
    except RecursionError as exc:
        raise BinFormatError(f"{name}: {_BIN_EXPECTED}; the pickle nests too deeply.") from exc
    except Exception as exc:  # any unpickling failure means the file is not a valid .bin
        raise BinFormatError(
            f"{name}: {_BIN_EXPECTED}; could not unpickle it (truncated or corrupt: "
            f"{type(exc).__name__}: {exc})."
        ) from exc


def _describe(obj: object) -> str:
    """Short description of an unpickled object, for error messages."""
    if isinstance(obj, list | tuple):
        kinds = sorted({type(x).__name__ for x in obj})
        return f"a {type(obj).__name__} of {len(obj)} items ({', '.join(kinds) or 'empty'})"
    return f"a {type(obj).__name__}"


def _short_repr(value: object, limit: int = 60) -> str:
    """A bounded ``repr`` of an unpickled value for an error message; never raises.

    ``repr`` itself is not safe on unpickled data: an int of more than 4300 digits raises
    ValueError (CPython's int/str conversion limit) and a deeply nested list RecursionError.
    """
    if type(value) is int and value.bit_length() > 64:
        return f"an int of {value.bit_length()} bits"
    if isinstance(value, list | tuple | dict | set | frozenset):
        return f"a {type(value).__name__} of {len(value)} items"
    try:
        text = repr(value)
    except Exception:  # a str/bytes subclass cannot come out of the restricted unpickler
        return f"a {type(value).__name__}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_bin_structure(obj: object, name: str) -> tuple[list[bytes], list[bool]]:
    """Validate the unpickled ``(bins, issame)`` structure; return it as lists."""

    def fail(what: str) -> BinFormatError:
        return BinFormatError(f"{name}: {_BIN_EXPECTED}; got {what}.")

    if not isinstance(obj, list | tuple) or len(obj) != 2:
        raise fail(_describe(obj))
    bins, issame = obj
    if not isinstance(bins, list | tuple):
        raise fail(f"{_describe(bins)} as the image list")
    if not isinstance(issame, list | tuple):
        raise fail(f"{_describe(issame)} as the is-same list")
    bad = next((i for i, b in enumerate(bins) if type(b) is not bytes), None)
    if bad is not None:
        raise fail(f"image entry {bad} of type {type(bins[bad]).__name__} (expected bytes)")
    bad = next(
        (i for i, s in enumerate(issame) if type(s) not in (bool, int) or s not in (0, 1)),
        None,
    )
    if bad is not None:
        raise fail(f"is-same flag {bad} = {_short_repr(issame[bad])} (expected a bool or 0/1)")
    if not issame:
        raise fail(f"no pairs ({len(bins)} images, 0 is-same flags)")
    if len(bins) != 2 * len(issame):
        raise fail(
            f"{len(bins)} images for {len(issame)} is-same flags (needs {2 * len(issame)} images)"
        )
    return list(bins), [bool(s) for s in issame]


# --------------------------------------------------------------------------------------------
# .bin files
# --------------------------------------------------------------------------------------------


def load_bin(
    path: str | os.PathLike, size: int | None = None, max_pairs: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read an insightface verification ``.bin`` (LFW, AgeDB-30, CFP-FP) safely.

    The file is a pickle of ``(bins, issame)``: ``bins`` a list of encoded images (JPEG/PNG,
    112×112 RGB in the insightface releases), ``issame`` a list of bools; pair ``i`` is images
    ``2i`` and ``2i+1``. It is unpickled with a restricted unpickler (see the module
    docstring) — a file that tries to call or import anything else is refused before any of
    it runs.

    Args:
        path: the ``.bin`` file.
        size: resize every image to ``size × size`` (bilinear, see
            :func:`reconattack.data.images.resize`; one warning when upscaling). ``None``
            keeps the stored size, which must then be the same for all images.
        max_pairs: decode only the first ``max_pairs`` pairs (the whole structure is still
            validated). ``None``: all pairs.

    Returns:
        ``(images, is_same)``: uint8 ``(N, H, W, 3)`` RGB with ``N = 2 × pairs``, and bool
        ``(N // 2,)``.

    Raises:
        DataNotFoundError: ``path`` does not exist or is not a file.
        BinFormatError: not a valid verification ``.bin`` (refused global, corrupt, truncated
            or empty pickle, wrong structure, images of different sizes with ``size=None``).
        ImageReadError: an image cannot be decoded (message names the file and pair).
    """
    path = Path(os.path.expanduser(str(path)))
    if size is not None and (isinstance(size, bool) or int(size) != size or size <= 0):
        raise ValueError(f"load_bin: size must be a positive int or None, got {size!r}")
    if max_pairs is not None and (
        isinstance(max_pairs, bool) or int(max_pairs) != max_pairs or max_pairs <= 0
    ):
        raise ValueError(f"load_bin: max_pairs must be a positive int or None, got {max_pairs!r}")
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise DataNotFoundError(f"{path} {what}; {_BIN_LAYOUT}.")
    name = str(path)
    bins, issame = _check_bin_structure(_restricted_loads(path.read_bytes(), name), name)

    n_pairs = len(issame) if max_pairs is None else min(int(max_pairs), len(issame))
    images: np.ndarray | None = None
    for k in range(2 * n_pairs):
        img = decode_image(bins[k], f"{name}: image {k} (pair {k // 2})")
        if size is not None:
            img = resize(img, int(size), source=name)
        if images is None:
            images = np.empty((2 * n_pairs, *img.shape), dtype=np.uint8)
        elif img.shape != images.shape[1:]:
            raise BinFormatError(
                f"{name}: image {k} (pair {k // 2}) is {img.shape[0]}x{img.shape[1]} but "
                f"image 0 is {images.shape[1]}x{images.shape[2]}; all images of a "
                "verification .bin must have the same size (pass size= to resize them)."
            )
        images[k] = img
    assert images is not None  # n_pairs >= 1 after validation
    return images, np.asarray(issame[:n_pairs], dtype=bool)


def make_bin(
    path: str | os.PathLike,
    images: np.ndarray | Sequence[np.ndarray],
    is_same: Sequence[bool] | np.ndarray,
    protocol: int = 2,
) -> Path:
    """Write an insightface-style verification ``.bin`` that :func:`load_bin` reads back.

    Images are stored PNG-encoded (lossless, so a round trip is exact); ``is_same`` as a list
    of Python bools; the pickle is ``(list of bytes, list of bool)``. Protocol 2 is what the
    insightface releases use.

    Args:
        path: output file (parent folders are created).
        images: ``2 × len(is_same)`` uint8 ``(H, W, 3)`` RGB images (an ``(N, H, W, 3)`` array
            or a sequence); pair ``i`` is images ``2i`` and ``2i+1``.
        is_same: one flag per pair.
        protocol: pickle protocol (0–5).

    Returns:
        The written path.
    """
    flags = [bool(s) for s in np.asarray(is_same).reshape(-1)]
    images = list(images)
    if not flags or len(images) != 2 * len(flags):
        raise ValueError(
            f"make_bin: need 2 images per pair and at least one pair; got {len(images)} "
            f"images for {len(flags)} is-same flags"
        )
    bins: list[bytes] = []
    for k, img in enumerate(images):
        img = np.asarray(img)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(
                f"make_bin: image {k} must be uint8 (H, W, 3) RGB, got {img.dtype} "
                f"{tuple(img.shape)}"
            )
        ok, buf = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2BGR))
        if not ok:
            raise ValueError(f"make_bin: could not PNG-encode image {k}")
        bins.append(buf.tobytes())
    path = Path(os.path.expanduser(str(path)))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump((bins, flags), f, protocol=protocol)
    return path


# --------------------------------------------------------------------------------------------
# identity folders
# --------------------------------------------------------------------------------------------


class IdentityFolderSource(FileListSource):
    """Images in one sub-folder per identity (``root/<identity>/<image>``).

    The layout of a CelebA-style auxiliary set or a user gallery. Items are ordered by
    ``(identity folder name, file path inside it)``; identity sub-folders are searched
    recursively and hidden files/folders (name starting with ``.``) are skipped. Identity
    folders without images are ignored. ``labels[i]`` is the index of item ``i``'s identity
    in ``identities`` (the identity folder names, sorted).

    **Flat layout**: a folder holding images directly and no sub-folder with images is
    accepted too; its images are ordered by file name, get label ``-1`` (unknown identity —
    fine for an auxiliary/GAN set, but not for :func:`build_pairs`) and ``identities`` is
    empty. A folder with images both directly in it and in sub-folders is rejected as
    ambiguous.

    Args:
        root: the folder.
        extensions: accepted file extensions (with or without the leading dot); default
            :data:`reconattack.data.images.IMAGE_EXTENSIONS`.

    Attributes:
        files: relative POSIX paths (``"<identity>/<file>"``, or ``"<file>"`` when flat).
        labels: int64 ``(len,)`` identity index per item (``-1`` when flat).
        identities: identity names (sorted); ``[]`` when flat.
        flat: whether the flat layout was found.

    Raises:
        DataNotFoundError: ``root`` missing or not a folder, no images, or a mixed layout.
    """

    def __init__(self, root: str | os.PathLike, extensions: Sequence[str] | None = None) -> None:
        self.root = Path(os.path.expanduser(str(root)))
        if extensions is None:
            extensions = IMAGE_EXTENSIONS
        self.extensions = normalise_extensions(extensions)
        layout = (
            "expected one sub-folder per identity holding its images (root/<identity>/<image>), "
            "or a flat folder of images of unknown identity (label -1); extensions "
            f"{', '.join(self.extensions)}"
        )
        if not self.root.is_dir():
            what = "is not a folder" if self.root.exists() else "does not exist"
            raise DataNotFoundError(f"{self.root} {what}; {layout}.")
        top_files: list[str] = []
        per_identity: list[tuple[str, list[str]]] = []
        with os.scandir(self.root) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=True):
                    files = images_under(Path(entry.path), self.extensions)
                    if files:
                        per_identity.append((entry.name, files))
                elif is_image_file(entry.name, self.extensions):
                    top_files.append(entry.name)
        if top_files and per_identity:
            raise DataNotFoundError(
                f"{self.root} holds {len(top_files)} images directly and "
                f"{len(per_identity)} sub-folders with images; mixed layouts are ambiguous — "
                f"{layout}."
            )
        if not top_files and not per_identity:
            raise DataNotFoundError(f"no image files found in {self.root}; {layout}.")
        self.flat: bool = bool(top_files)
        if self.flat:
            self.identities: list[str] = []
            self.files: list[str] = sorted(top_files)
            self.labels: np.ndarray = np.full(len(self.files), -1, dtype=np.int64)
        else:
            per_identity.sort(key=lambda item: item[0])
            self.identities = [ident for ident, _ in per_identity]
            self.files = [f"{ident}/{f}" for ident, files in per_identity for f in files]
            self.labels = np.concatenate(
                [
                    np.full(len(files), k, dtype=np.int64)
                    for k, (_, files) in enumerate(per_identity)
                ]
            )

    def __repr__(self) -> str:
        kind = "flat, unknown identities" if self.flat else f"{len(self.identities)} identities"
        return f"IdentityFolderSource({str(self.root)!r}, {len(self)} images, {kind})"


# --------------------------------------------------------------------------------------------
# embedded demo data
# --------------------------------------------------------------------------------------------


def digits_faces(size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """The embedded demo "faces": scikit-learn's 1,797 labelled 8×8 digits (offline).

    Values ``0..16`` are scaled to ``round(x × 255 / 16)``, upsampled to ``size × size`` with
    ``cv2.resize`` ``INTER_CUBIC`` (clipped to ``[0, 255]`` and rounded) and replicated to
    three channels. The digit class plays the identity.

    Returns:
        ``(images, labels)``: uint8 ``(1797, size, size, 3)`` and int64 ``(1797,)`` in ``0..9``.
    """
    if isinstance(size, bool) or int(size) != size or size <= 0:
        raise ConfigError(f"digits_faces: size must be a positive int, got {size!r}")
    size = int(size)
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = (np.asarray(digits.images, dtype=np.float32) * (255.0 / 16.0)).astype(np.float32)
    out = np.empty((len(small), size, size, 3), dtype=np.uint8)
    for k, img in enumerate(small):
        big = cv2.resize(img, (size, size), interpolation=cv2.INTER_CUBIC)
        out[k] = np.rint(np.clip(big, 0.0, 255.0)).astype(np.uint8)[:, :, None]
    return out, np.asarray(digits.target, dtype=np.int64)


# --------------------------------------------------------------------------------------------
# pairs from identity labels
# --------------------------------------------------------------------------------------------


def _as_labels(labels: Sequence[int] | np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(
            f"build_pairs: {what} must be a non-empty 1-D array, got shape {arr.shape}"
        )
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"build_pairs: {what} must be integers, got dtype {arr.dtype}")
    if (arr < 0).any():
        raise ValueError(
            f"build_pairs: {what} contain {int((arr < 0).sum())} unknown identities (label < 0, "
            "e.g. -1 from a flat IdentityFolderSource); pairs need identity labels"
        )
    return arr.astype(np.int64, copy=False)


def build_pairs(
    gallery_labels: Sequence[int] | np.ndarray,
    query_labels: Sequence[int] | np.ndarray,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Verification pairs from identity labels (SPEC §3.4), deterministically.

    For each gallery image ``i`` in order: one genuine pair (a query with the same label) and
    one impostor pair (a query with a different label), each query drawn uniformly with
    ``np.random.default_rng(seed)``. Gallery images whose identity has no query get the
    impostor pair only (one warning per call, with the count). Gallery and query sets are
    meant to be disjoint (e.g. different images of the same people); indices refer to each
    set separately.

    Args:
        gallery_labels: int identity label per gallery image (``>= 0``).
        query_labels: int identity label per query image (``>= 0``).
        seed: seed of the query draws.

    Returns:
        ``(gallery_idx, query_idx, is_same)``: int64, int64, bool arrays of equal length,
        ordered by gallery index, genuine pair before impostor pair.

    Raises:
        ValueError: empty or non-integer labels, unknown identities (``< 0``), fewer than two
            identities among the queries, or no genuine pair possible at all.
    """
    gallery = _as_labels(gallery_labels, "gallery_labels")
    query = _as_labels(query_labels, "query_labels")
    order = np.argsort(query, kind="stable")  # query indices grouped by label
    uniq, starts, counts = np.unique(query[order], return_index=True, return_counts=True)
    if len(uniq) < 2:
        raise ConfigError(
            "build_pairs: the queries hold a single identity; impostor pairs need at least two"
        )
    pos = np.searchsorted(uniq, gallery)
    pos_c = np.minimum(pos, len(uniq) - 1)
    has_genuine = uniq[pos_c] == gallery
    if not has_genuine.any():
        raise ConfigError(
            "build_pairs: no gallery identity has a query image; no genuine pair can be made"
        )
    missing = int((~has_genuine).sum())
    if missing:
        warnings.warn(
            f"build_pairs: {missing} of {len(gallery)} gallery images have no query of the same "
            "identity and get no genuine pair (impostor pair only).",
            UserWarning,
            stacklevel=2,
        )
    rng = np.random.default_rng(seed)
    n_query = len(query)
    g_idx: list[int] = []
    q_idx: list[int] = []
    same: list[bool] = []
    for i in range(len(gallery)):
        if has_genuine[i]:
            start, count = int(starts[pos_c[i]]), int(counts[pos_c[i]])
            g_idx.append(i)
            q_idx.append(int(order[start + int(rng.integers(count))]))
            same.append(True)
        else:
            start, count = 0, 0  # every query is an impostor
        # impostor: the j-th query outside the block [start, start + count) of this label
        j = int(rng.integers(n_query - count))
        g_idx.append(i)
        q_idx.append(int(order[j if j < start else j + count]))
        same.append(False)
    return (
        np.asarray(g_idx, dtype=np.int64),
        np.asarray(q_idx, dtype=np.int64),
        np.asarray(same, dtype=bool),
    )
