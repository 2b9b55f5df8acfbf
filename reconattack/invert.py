"""``python -m reconattack.invert RUN_DIR --colmap DATABASE --out DIR`` (or ``--npz FILE...``):
reconstruct the images behind SIFT features a system stores, with a trained SIFT attack (SPEC §9).

- ``--colmap DATABASE``: a COLMAP database (``database.db``, SQLite): every image (or those named
  with ``--images NAME...``), each with its camera's width and height, its keypoints (float32
  rows x cols, cols 2, 4 or 6, x and y first, COLMAP's pixel convention: the top-left pixel's
  centre at (0.5, 0.5), the image spans [0, W] x [0, H]) and descriptors (uint8 rows x 128).
- ``--npz FILE...``: OpenCV-style features, one file per image: ``keypoints`` (N, >= 2) x, y in
  pixels (OpenCV's convention: the image spans [-0.5, W - 0.5] x [-0.5, H - 0.5]),
  ``descriptors`` (N, 128) uint8, ``image_size`` (H, W); ``response`` (N,), OpenCV's detector
  response, is read only for a run whose defence keeps the strongest keypoints.

Each image's features take training's own path to the model's input, the run's
:class:`~reconattack.data.sift.mapper.SiftMapper` (``threat.mapper``): its keypoints are mapped from
its own width and height onto the model's grid the way training mapped its images (``cv2.resize``
of the whole image to ``data.image_size``, no crop: a pixel centre x goes to ``(x + 0.5) * S / W -
0.5``; an image at the model's size keeps its keypoints), go through the run's defence
(``defence=sift``: the features as the defended system would share them, the model having been
trained on such), and the map is built with the run's compression, collision rule and channels; the
run's final stage reconstructs it. A defence's random draws (``keep`` at random,
``descriptor_noise``) are seeded by the defence's seed and the image's name
(:func:`~reconattack.data.sift.mapper.name_key`): the same name is defended the same way in every
inversion. A run trained with ``defence.coordinates=withheld`` is refused (exit 2): its attacker
places descriptors by reference images of its own training split, which a run directory does not
hold; with ``defence.select=response`` the keypoints' strength is read (a database's keypoint
scales, an ``.npz`` file's ``response``) and an image without one is refused. One PNG per image,
named after it, and ``invert.json`` (the run, the checkpoint, the features, the map settings, the
defence applied, and per image: keypoints read, shared through the defence and placed, original
size) make the folder ``--out``.

How far to trust a reconstruction: a model trained at its input size ``S`` has seen a certain
number of keypoints per image, of certain scales; a photo larger than ``S`` holds many more, most
of them finer than any training showed once mapped onto the model's grid. The run's
``sift_stats.json`` (written by the SIFT threat in training; :mod:`reconattack.data.sift.stats`)
holds the training images' keypoint counts and scales on the grid; ``invert.json`` gives per
image its keypoint scales on the grid (``grid_scale``: 10th, 50th, 90th percentile; a database's
scale, an ``.npz`` file's ``scale`` or ``size / 2``), its ``count_ratio`` to the training median,
the share of its keypoints outside training's range of scales (``outside_training_scales``) and
``warnings`` by the thresholds of ``threat.keypoint_stats``; the console says which images are
flagged. ``--scale-filter training`` keeps only the keypoints in training's range of grid scales
(:meth:`~reconattack.data.sift.mapper.SiftMapper.share`, before the grid and the defence). A run
made before the statistics were recorded inverts as before, ``invert.json`` saying "no training
statistics"; a statistics file that is damaged or of another run is not used (the reason is
recorded); either way ``--scale-filter training`` is refused (exit 2).

Everything ``invert`` reads comes from elsewhere and is untrusted:

- The run directory runs no code. The configuration built is this checkout's ``conf/`` composed
  with the choices the run recorded (``.hydra/overrides.yaml``), each of which may only pick a
  config of ``conf/`` or set plain values (no dict, no interpolation, no Hydra key). The run's
  ``.hydra/config.yaml`` is read without resolving anything, and must name the same classes
  (``_target_`` and Hydra's other instantiation keys, at every node) and hold the same settings
  in the nodes that make the model and the maps (:data:`COMPARED`); nothing it names is built.
  Anything else is refused with one message naming the node (exit 2). The checkpoint is read
  ``weights_only``.
- Every value read from a database or a features file is checked: types, sizes (at most
  ``--max-keypoints`` keypoints, sides of at most :data:`MAX_SIDE` px), blob lengths, and
  every keypoint inside its image; a failure ends in one message naming the image, exit 2.
- The result is published whole: written into a hidden folder beside ``--out``
  (``.<name>.invert-*``, same file system) and renamed into place when every image is done, so
  ``--out`` never holds part of a result. A non-empty ``--out`` is refused unless ``--force``,
  which replaces an earlier inversion's folder (one holding ``invert.json``) whole. The hidden
  folder a killed run left is removed by the next run into the same ``--out``.

A run trained on other features than the input holds (``threat.features``: ``opencv`` | ``colmap``)
is refused with exit 2, naming both; ``--other-features`` tries anyway and ``invert.json`` says so.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import logging
import os
import re
import shutil
import sqlite3
import sys
import tempfile
import urllib.parse
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reconattack.errors import ConfigError, UserError
from reconattack.utils.config import CONF_DIR

log = logging.getLogger(__name__)

#: the most keypoints one image may hold (COLMAP's default extraction keeps 8192): more is refused
MAX_KEYPOINTS = 1_000_000
#: the longest image side (camera width or height) accepted, in pixels
MAX_SIDE = 1 << 17
#: the columns a COLMAP keypoints blob may have (x, y; + scale, orientation; + affine shape)
KEYPOINT_COLS = (2, 4, 6)
#: the largest ``.hydra/*.yaml`` file read, in bytes
MAX_CONFIG_BYTES = 4 << 20
#: the deepest nesting of a ``.hydra/*.yaml`` file read
MAX_CONFIG_DEPTH = 64
#: Hydra's instantiation keys: a run's config.yaml must have the same ones as the composed config
HYDRA_KEYS = ("_target_", "_partial_", "_args_", "_recursive_", "_convert_")
#: the nodes that make the model and the maps: the run's recorded settings there must equal the
#: composed config's (a key only one of them has is allowed: a setting added or removed since)
COMPARED = ("threat", "attack", "model", "loss", "data", "defence", "seed")


class InvertInputError(UserError, ValueError):
    """Features that cannot be inverted: not a database, a bad blob, bad coordinates, a missing
    camera (the message names the image)."""


class OutputExistsError(UserError, FileExistsError):
    """``--out`` holds something the inversion may not replace."""


@dataclass
class Features:
    """One image's stored features: ``xy`` float32 (N, 2) in OpenCV's pixel convention, ``desc``
    uint8 (N, 128), the image's original ``size`` (H, W), when asked for each keypoint's
    ``strength`` float32 (N,) (COLMAP's scale; an ``.npz`` file's ``response``) and, when the
    input holds it, each keypoint's ``scale`` float32 (N,): its SIFT sigma in the image's pixels
    (a database's scale, an ``.npz`` file's ``scale`` or ``size / 2``)."""

    name: str
    xy: np.ndarray
    desc: np.ndarray
    size: tuple[int, int]
    extra: dict = field(default_factory=dict)
    strength: np.ndarray | None = None
    scale: np.ndarray | None = None


def _short(value: Any, limit: int = 80) -> str:
    """A one-line ``repr`` of at most about ``limit`` characters, for messages."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} characters)"


# ---------------------------------------------------------------------------------- readers
def _check_size(size: Any, label: str) -> tuple[int, int]:
    """``size`` = (H, W) as Python ints in 1..MAX_SIDE, else InvertInputError naming the image."""
    h, w = size
    for what, v in (("height", h), ("width", w)):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or not 1 <= v <= MAX_SIDE:
            raise InvertInputError(f"{label}: an image {what} of {_short(v)} (expected an integer in 1..{MAX_SIDE})")
    return int(h), int(w)


def _check_xy(xy: np.ndarray, size: tuple[int, int], label: str, low: float) -> None:
    """Every keypoint finite and inside its image: ``low <= x <= W + low``, ``low <= y <= H + low``
    (``low`` 0: COLMAP's pixel convention; -0.5: OpenCV's)."""
    if not np.isfinite(xy).all():
        raise InvertInputError(f"{label}: keypoint coordinates that are not finite (NaN or inf)")
    h, w = size
    outside = (xy[:, 0] < low) | (xy[:, 0] > w + low) | (xy[:, 1] < low) | (xy[:, 1] > h + low)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise InvertInputError(
            f"{label}: {int(outside.sum())} keypoints outside the {w}x{h} image, e.g. keypoint {i} at "
            f"({float(xy[i, 0]):.6g}, {float(xy[i, 1]):.6g}) (x must be in [{low:g}, {w + low:g}], y in "
            f"[{low:g}, {h + low:g}])")


def _sqlite_uri(path: Path) -> str:
    """A read-only SQLite URI of ``path`` (any character: ``#``, ``?`` and ``%`` are escaped)."""
    return f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro"


def _check_strength(strength: np.ndarray, label: str, what: str, low: float | None = None) -> np.ndarray:
    """``strength`` as float32 when every value is finite (and at least ``low``), else
    InvertInputError naming the image."""
    if not np.isfinite(strength).all():
        raise InvertInputError(f"{label}: keypoint {what} that is not finite (NaN or inf)")
    if low is not None and len(strength) and float(strength.min()) < low:
        raise InvertInputError(f"{label}: a keypoint {what[:-1]} of {float(strength.min()):.6g} (expected >= {low:g})")
    return strength.astype(np.float32)


def colmap_scale(kp: np.ndarray) -> np.ndarray:
    """Each keypoint's scale from a COLMAP keypoints blob (rows x 4: x, y, scale, orientation;
    rows x 6: x, y, a11, a12, a21, a22), as COLMAP's ``FeatureKeypoint::ComputeScale``: the mean of
    the affine shape's column norms, ``(sqrt(a11^2 + a21^2) + sqrt(a12^2 + a22^2)) / 2``."""
    if kp.shape[1] == 4:
        return kp[:, 2].astype(np.float64)
    a11, a12, a21, a22 = (kp[:, i].astype(np.float64) for i in range(2, 6))
    return (np.hypot(a11, a21) + np.hypot(a12, a22)) / 2


class _Database:
    """A COLMAP database opened read-only, every value it returns checked (see :func:`colmap_images`)."""

    TABLES = ("cameras", "images", "keypoints", "descriptors")

    def __init__(self, path: Path, max_keypoints: int, strength: bool = False) -> None:
        self.path, self.max_keypoints, self.strength = path, int(max_keypoints), bool(strength)
        try:
            self.con = sqlite3.connect(_sqlite_uri(path), uri=True)
        except sqlite3.Error as exc:
            raise InvertInputError(f"{path}: cannot open it as an SQLite database ({exc})") from None
        try:
            self.con.execute("PRAGMA query_only = ON")
            self.con.execute("PRAGMA trusted_schema = OFF")  # no functions with side effects in its schema
            tables = {r[0] for r in self.con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.Error as exc:
            self.close()
            raise InvertInputError(f"{path} is not a COLMAP database (SQLite: {exc})") from None
        if not set(self.TABLES) <= tables:
            self.close()
            raise InvertInputError(f"{path} is not a COLMAP database (tables: {_short(sorted(tables), 200)}; "
                                   f"needs {', '.join(self.TABLES)})")

    def close(self) -> None:
        self.con.close()

    def query(self, sql: str, args: tuple, label: str) -> list[tuple]:
        try:
            return self.con.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise InvertInputError(f"{label}: the database cannot be read ({self.path}, SQLite: {exc})") from None

    def images(self) -> list[tuple[int, str, int]]:
        """``(image_id, name, camera_id)`` of every image, in image_id order, each value checked."""
        out = []
        for image_id, name, camera_id in self.query("SELECT image_id, name, camera_id FROM images ORDER BY image_id",
                                                    (), f"{self.path}: the images table"):
            if not _is_int(image_id):
                raise InvertInputError(f"{self.path}: an image_id {_short(image_id)} (name {_short(name)}), "
                                       "not an integer")
            if not isinstance(name, str):
                raise InvertInputError(f"image_id {image_id}: its name is {_short(name)}, not text")
            if not _is_int(camera_id):
                raise InvertInputError(f"{_label(name, image_id)}: its camera_id is {_short(camera_id)}, not an integer")
            out.append((image_id, name, camera_id))
        return out

    def camera(self, camera_id: int, where: str) -> tuple[int, int]:
        """The camera's (height, width), checked."""
        rows = self.query("SELECT width, height FROM cameras WHERE camera_id = ?", (camera_id,), where)
        if not rows:
            raise InvertInputError(f"{where}: its camera {camera_id} is not in the database")
        if len(rows) > 1:
            raise InvertInputError(f"{where}: its camera {camera_id} is in the database {len(rows)} times")
        (width, height), = rows
        return _check_size((height, width), f"{where} (camera {camera_id})")

    def blob_shape(self, table: str, image_id: int, dtype, cols: tuple[int, ...], where: str) -> tuple[int, int]:
        """(rows, cols) of the image's row of ``table`` ((0, cols[0]) when it has none), checked
        against the caps and the blob's length before the blob is read."""
        found = self.query(f"SELECT rows, cols, typeof(data), length(data) FROM {table} WHERE image_id = ?",
                           (image_id,), where)
        if not found:
            return 0, cols[0]
        if len(found) > 1:
            raise InvertInputError(f"{where}: {len(found)} rows of {table}")
        (rows, ncols, kind, length), = found
        if not _is_int(rows) or not 0 <= rows <= self.max_keypoints:
            raise InvertInputError(f"{where}: {table} rows = {_short(rows)} (expected an integer in "
                                   f"0..{self.max_keypoints}, --max-keypoints)")
        if not _is_int(ncols) or ncols not in cols:
            raise InvertInputError(f"{where}: {table} cols = {_short(ncols)} (expected {' or '.join(map(str, cols))})")
        size = rows * ncols * np.dtype(dtype).itemsize
        if not (kind == "blob" and length == size) and not (size == 0 and kind == "null"):
            held = f"{length} bytes" if kind == "blob" else f"a {kind} value"
            raise InvertInputError(f"{where}: the {table} blob holds {held}, not rows x cols = {rows} x {ncols} of "
                                   f"{np.dtype(dtype).name} ({size} bytes)")
        return rows, ncols

    def blob(self, table: str, image_id: int, shape: tuple[int, int], dtype, where: str) -> np.ndarray:
        if shape[0] == 0:
            return np.zeros(shape, dtype)
        (data,), = self.query(f"SELECT data FROM {table} WHERE image_id = ?", (image_id,), where)
        if not isinstance(data, bytes) or len(data) != shape[0] * shape[1] * np.dtype(dtype).itemsize:
            raise InvertInputError(f"{where}: the {table} blob changed while it was read")
        return np.frombuffer(data, dtype=dtype).reshape(shape)

    def features(self, image_id: int, name: str, camera_id: int) -> Features:
        where = _label(name, image_id)
        size = self.camera(camera_id, where)
        kp_shape = self.blob_shape("keypoints", image_id, np.float32, KEYPOINT_COLS, where)
        d_shape = self.blob_shape("descriptors", image_id, np.uint8, (128,), where)
        if kp_shape[0] != d_shape[0]:
            raise InvertInputError(f"{where}: {kp_shape[0]} keypoints and {d_shape[0]} descriptors")
        blob = self.blob("keypoints", image_id, kp_shape, np.float32, where)
        kp = blob[:, :2].astype(np.float64)
        desc = self.blob("descriptors", image_id, d_shape, np.uint8, where)
        _check_xy(kp, size, where, low=0.0)
        xy = (kp - 0.5).astype(np.float32)  # COLMAP's pixel centres -> OpenCV's
        scale = None  # 2 columns: x, y alone
        if kp_shape[0] == 0:
            scale = np.zeros(0, np.float32)
        elif kp_shape[1] != 2:
            scale = _check_strength(colmap_scale(blob), where, "scales", low=0.0)
        strength = None
        if self.strength:  # what the run's defence keeps the largest of (select: response)
            if scale is None:
                raise InvertInputError(f"{where}: its keypoints have 2 columns (x, y) and no scale, which the "
                                       "run's defence (defence.select=response) keeps the largest of")
            strength = scale
        return Features(name, xy, desc, size, strength=strength, scale=scale)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _label(name: str, image_id: int | None = None) -> str:
    """``image 'NAME' (image_id N)`` for messages (a long name cut)."""
    return f"image {_short(name)}" + (f" (image_id {image_id})" if image_id is not None else "")


def colmap_images(path: Path, names: list[str] | None = None, max_keypoints: int = MAX_KEYPOINTS,
                  strength: bool = False) -> tuple[int, Iterator[Features]]:
    """``(count, features of each image)`` of a COLMAP database, read one image at a time; with
    ``strength`` each image's keypoint scales too (:func:`colmap_scale`; keypoints without one are
    refused).

    The database is opened read-only (any path) and every value is checked: ids, names and
    sizes of the right type, cameras of 1..:data:`MAX_SIDE` px, at most ``max_keypoints``
    keypoints, blob lengths equal to rows x cols, keypoints finite and inside their camera
    ([0, W] x [0, H]); the cameras and blob sizes of every image are checked before the first is
    read. A failure is an :class:`InvertInputError` naming the image."""
    if not path.is_file():
        raise InvertInputError(f"{path}: no such file")
    db = _Database(path, max_keypoints, strength)
    try:
        rows = db.images()
        if names:
            known = {r[1] for r in rows}
            unknown = [n for n in names if n not in known]
            if unknown:
                raise InvertInputError(f"{path}: no image named {_short(unknown)} (it has {len(rows)} images)")
            wanted = set(names)
            rows = [r for r in rows if r[1] in wanted]
        for image_id, name, camera_id in rows:  # everything but the blobs, before any work
            where = _label(name, image_id)
            db.camera(camera_id, where)
            db.blob_shape("keypoints", image_id, np.float32, KEYPOINT_COLS, where)
            db.blob_shape("descriptors", image_id, np.uint8, (128,), where)
    except BaseException:
        db.close()
        raise

    def read() -> Iterator[Features]:
        try:
            for image_id, name, camera_id in rows:
                yield db.features(image_id, name, camera_id)
        finally:
            db.close()

    return len(rows), read()


def npz_images(paths: list[Path], max_keypoints: int = MAX_KEYPOINTS,
               strength: bool = False) -> tuple[int, Iterator[Features]]:
    """``(count, features of each file)`` of OpenCV-style ``.npz`` feature files (checked as a
    database's are: sizes, at most ``max_keypoints`` keypoints, each inside its image); with
    ``strength`` each file's ``response`` too ((N,) numbers: OpenCV's ``KeyPoint.response``); a
    file's keypoint scales when it holds them: ``scale`` (N,) (SIFT sigma, in pixels) or else
    ``size`` (N,) (OpenCV's ``KeyPoint.size``, the diameter: sigma is half of it)."""

    def read() -> Iterator[Features]:
        for path in paths:
            name = path.stem
            where = f"{_label(name)} ({path})"
            try:
                with np.load(path, allow_pickle=False) as z:
                    kp, desc, size = z["keypoints"], z["descriptors"], z["image_size"]
                    response = z["response"] if strength and "response" in z.files else None
                    given = next(((k, z[k]) for k in ("scale", "size") if k in z.files), None)
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
                raise InvertInputError(f"{where}: not a features file with keypoints, descriptors and image_size "
                                       f"({_short(str(exc), 200)})") from None
            if kp.size == 0:
                kp = np.zeros((0, 2), np.float32)
            if kp.ndim != 2 or kp.shape[1] < 2 or kp.dtype.kind not in "fiu" or len(kp) > max_keypoints:
                raise InvertInputError(f"{where}: keypoints {kp.shape} {kp.dtype} (expected N x >= 2 numbers, "
                                       f"N <= {max_keypoints})")
            if desc.shape != (len(kp), 128) or desc.dtype != np.uint8:
                raise InvertInputError(f"{where}: keypoints {kp.shape} and descriptors {desc.shape} {desc.dtype} "
                                       "(expected N x >= 2 and N x 128 uint8)")
            flat = np.asarray(size).reshape(-1)
            if flat.shape != (2,) or flat.dtype.kind not in "iu":
                raise InvertInputError(f"{where}: image_size {_short(flat.tolist())} (expected two integers H, W)")
            hw = _check_size(tuple(int(v) for v in flat), where)
            xy = kp[:, :2].astype(np.float64)
            _check_xy(xy, hw, where, low=-0.5)
            if strength:  # what the run's defence keeps the largest of (select: response)
                if response is None or response.shape != (len(kp),) or response.dtype.kind not in "fiu":
                    found = "none" if response is None else f"{response.shape} {response.dtype}"
                    raise InvertInputError(f"{where}: the run's defence (defence.select=response) keeps the "
                                           f"keypoints of largest response, and the file's response is {found} "
                                           f"(expected {len(kp)} numbers)")
                response = _check_strength(response.astype(np.float64), where, "responses")
            scale = None
            if given is not None:
                key, value = given
                if value.shape != (len(kp),) or value.dtype.kind not in "fiu":
                    raise InvertInputError(f"{where}: its {key} is {value.shape} {value.dtype} (expected {len(kp)} "
                                           "numbers, one per keypoint)")
                scale = _check_strength(value.astype(np.float64) / (2 if key == "size" else 1), where, "scales",
                                        low=0.0)
            yield Features(name, xy.astype(np.float32), np.ascontiguousarray(desc), hw, strength=response,
                           scale=scale)

    return len(paths), read()


# ------------------------------------------------------------------------ the run's config
def _read_yaml(path: Path, what: str) -> Any:
    """A YAML file of a run directory as plain data (no tags, no anchors or aliases, at most
    :data:`MAX_CONFIG_BYTES`); nothing in it is resolved."""
    import yaml

    if not path.is_file():
        raise ConfigError(f"{path.parent.parent}: no .hydra/{path.name} ({what}); invert needs a run directory "
                          "made by python -m reconattack.run")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: {path.stat().st_size} bytes, more than a run's {what} can be "
                          f"({MAX_CONFIG_BYTES})")
    try:
        text = path.read_text(encoding="utf-8")
        depth = 0
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                raise ConfigError(f"{path}: YAML aliases, which a run's {what} never has")
            depth += isinstance(event, yaml.CollectionStartEvent) - isinstance(event, yaml.CollectionEndEvent)
            if depth > MAX_CONFIG_DEPTH:
                raise ConfigError(f"{path}: nested more than {MAX_CONFIG_DEPTH} levels deep, which a run's {what} "
                                  "never is")
        if path.name == "overrides.yaml":
            return yaml.safe_load(text)
        from omegaconf import OmegaConf  # its own reading of numbers, as the composed config's

        return OmegaConf.to_container(OmegaConf.create(text), resolve=False)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - YAML, UTF-8 and OmegaConf errors alike: a damaged file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{path}: not a readable {what} ({_short(first, 200)})") from None


_KEY = re.compile(r"[A-Za-z0-9_-]+(?:[./][A-Za-z0-9_-]+)*")
_OPTION = re.compile(r"[A-Za-z0-9_-]+(?:/[A-Za-z0-9_-]+)*")


def check_override(text: Any, source: str) -> str:
    """``text`` when it is an override a foreign run may record: a choice of an existing config of
    this checkout's ``conf/`` (``model=cfgan_small``, ``+experiment=demo_colmap``,
    ``face@threat.service=adaface_ir18``) or a plain value (a number, a string, null, a list of
    those) for a key that is no Hydra instantiation key (``_target_``...) and not under
    ``hydra``; no dict, no interpolation or resolver (``${...}``), no sweep. Else ConfigError."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    def refuse(why: str) -> None:
        raise ConfigError(f"{source}: the override {_short(text)} {why}; a run directory may only choose "
                          "configs of this checkout's conf/ and set plain values")

    if not isinstance(text, str):
        refuse("is not a string")
    try:
        override = OverridesParser.create().parse_override(text)
    except Exception as exc:  # noqa: BLE001 - Hydra's grammar errors
        refuse(f"cannot be read ({_short(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, 120)})")
    for key in (override.key_or_group, override.package):
        if key is None:
            continue
        if not _KEY.fullmatch(key):
            refuse("has a key that is not a plain dotted name")
        parts = re.split(r"[./]", key)
        if parts[0] == "hydra":
            refuse("sets Hydra's own settings")
        if any(len(p) > 1 and p.startswith("_") and p.endswith("_") for p in parts):
            refuse("sets a Hydra instantiation key")
    if override.is_sweep_override():
        refuse("is a sweep")
    value = override.value()
    group = override.key_or_group
    if "/" in group or (CONF_DIR / group).is_dir():  # a config group: only this checkout's configs
        for option in value if isinstance(value, list) else [value]:
            if option is None:
                continue
            if not (isinstance(option, str) and _OPTION.fullmatch(option) and (CONF_DIR / group / f"{option}.yaml").is_file()):
                refuse(f"chooses {_short(option)}, not a config of conf/{group}/")
    elif not _plain(value):
        refuse("sets something other than a plain value (a dict, an interpolation ${...})")
    return text


def _plain(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float)):
        return True
    if isinstance(value, str):
        return "${" not in value
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return False


def _hydra_keys(node: Any, path: str = "") -> dict[str, Any]:
    """``{dotted path: value}`` of every Hydra instantiation key below ``node`` (plain data)."""
    out: dict[str, Any] = {}
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        where = f"{path}.{key}" if path else str(key)
        if key in HYDRA_KEYS:
            out[where] = value
        out.update(_hydra_keys(value, where))
    return out


def _first_difference(recorded: Any, composed: Any, path: str) -> str | None:
    """The first dotted path where two plain configs hold different values (a key only one of
    two dicts has is not a difference; lists must have the same length)."""
    if isinstance(recorded, dict) and isinstance(composed, dict):
        for key in recorded.keys() & composed.keys():
            found = _first_difference(recorded[key], composed[key], f"{path}.{key}" if path else str(key))
            if found is not None:
                return found
        return None
    if isinstance(recorded, list) and isinstance(composed, list) and len(recorded) == len(composed):
        for i, (a, b) in enumerate(zip(recorded, composed)):
            found = _first_difference(a, b, f"{path}.{i}")
            if found is not None:
                return found
        return None
    same = type(recorded) is type(composed) and recorded == composed
    return None if same else path


def _at(node: Any, path: str) -> Any:
    for key in path.split("."):
        node = node[int(key)] if isinstance(node, list) else node.get(key) if isinstance(node, dict) else None
    return node


def run_config(run_dir: Path):
    """The configuration of a run directory that may come from elsewhere (see the module
    docstring): this checkout's ``conf/config.yaml`` composed with the run's checked
    ``.hydra/overrides.yaml``, after checking that the run's ``.hydra/config.yaml`` names the
    same classes everywhere and holds the same settings in :data:`COMPARED`. Nothing of the
    run's own config is built or resolved. ConfigError (exit 2, naming the node) otherwise."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    hydra_dir = run_dir / ".hydra"
    recorded = _read_yaml(hydra_dir / "config.yaml", "config")
    if not isinstance(recorded, dict):
        raise ConfigError(f"{hydra_dir / 'config.yaml'}: not a config (a mapping)")
    overrides = _read_yaml(hydra_dir / "overrides.yaml", "overrides")
    if not isinstance(overrides, list):
        raise ConfigError(f"{hydra_dir / 'overrides.yaml'}: not a list of overrides")
    overrides = [check_override(o, str(hydra_dir / "overrides.yaml")) for o in overrides]
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=overrides)
    except Exception as exc:  # noqa: BLE001 - Hydra's and OmegaConf's composition errors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{run_dir}: its .hydra/overrides.yaml does not compose with this checkout's conf/ "
                          f"({_short(first, 200)})") from None
    composed = OmegaConf.to_container(cfg, resolve=False)
    theirs, ours = _hydra_keys(recorded), _hydra_keys(composed)
    for where in sorted(theirs.keys() | ours.keys(), key=lambda k: (not k.endswith("._target_"), k)):
        if where not in ours or where not in theirs or type(theirs[where]) is not type(ours[where]) \
                or theirs[where] != ours[where]:
            raise ConfigError(
                f"{run_dir}: .hydra/config.yaml has {where} = {_short(theirs.get(where, 'nothing'))}, this "
                f"checkout's conf/ with the run's overrides has {_short(ours.get(where, 'nothing'))}; invert "
                "builds only this checkout's configs and refuses a run whose config names other classes")
    for node in COMPARED:
        if node not in recorded or node not in composed:
            continue
        where = _first_difference(recorded[node], composed[node], node)
        if where is not None:
            raise ConfigError(
                f"{run_dir}: .hydra/config.yaml has {where} = {_short(_at(recorded, where))}, this checkout's "
                f"conf/ with the run's overrides has {_short(_at(composed, where))}; the run was made with "
                "other configs (or its config.yaml was edited), refused")
    return cfg


# ------------------------------------------------------------------------------- the model
def _zero_pretrained_losses(node) -> None:
    """Set every perceptual / style weight of a loss config to 0: inverting trains nothing, and
    an attack would otherwise load VGG weights it does not use here."""
    from omegaconf import DictConfig

    if not isinstance(node, DictConfig):
        return
    for key in list(node.keys()):
        value = node[key]
        if isinstance(value, DictConfig):
            _zero_pretrained_losses(value)
        elif key in ("per", "style") and isinstance(value, (int, float)):
            node[key] = 0.0


def load_run(run_dir: Path, device: torch.device):
    """The run's config (:func:`run_config`), threat, final stage (loaded from its checkpoint,
    ``weights_only``, eval mode) and the checkpoint's path."""
    from omegaconf import open_dict

    from reconattack.engine.runner import build_attack, build_threat, load_stage

    if not (run_dir / ".hydra" / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no .hydra/config.yaml)")
    cfg = run_config(run_dir)
    if cfg.get("threat") is None or cfg.threat.get("name") != "sift" or cfg.get("attack") is None:
        raise ConfigError(f"{run_dir}: invert needs a run of a SIFT attack (threat sift and an attack)")
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
        if cfg.get("loss") is not None:
            _zero_pretrained_losses(cfg.loss)
    threat, attack = build_threat(cfg), build_attack(cfg)
    final = attack.stages[-1]
    ckpt = run_dir / "checkpoints" / f"{final}.ckpt"
    if not ckpt.is_file():
        raise ConfigError(f"{run_dir}: no final checkpoint {ckpt} (did the run finish?)")
    previous = None
    for stage in attack.stages:
        previous = attack.build_stage(stage, threat, previous)
    module = load_stage(previous, str(ckpt), final).to(device).eval()
    return cfg, threat, module, ckpt


def safe_filename(name: str, taken: set[str]) -> str:
    """An image name as a PNG file name: path separators and odd characters as ``_``, at most
    100 characters before ``.png``, unique."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "image"
    stem = re.sub(r"\.(png|jpe?g|tiff?|bmp|webp)$", "", stem, flags=re.I)[:100]
    out, k = f"{stem}.png", 1
    while out in taken:
        out, k = f"{stem}_{k}.png", k + 1
    taken.add(out)
    return out


# ------------------------------------------------------------------------------ publishing
#: the hidden folders beside ``--out``: ``.<name>.invert-*``
STAGING = ".{}.invert-"


def check_out(out: Path, force: bool, inputs: list[Path]) -> Path:
    """``out`` made absolute (symbolic links followed) when the inversion may become it: absent,
    an empty folder, or with ``force`` an earlier inversion's folder (one holding
    ``invert.json``) that holds none of ``inputs``. OutputExistsError otherwise."""
    out = out.expanduser().resolve()
    if not out.name:
        raise OutputExistsError(f"--out {out}: give a folder of its own")
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise OutputExistsError(f"--out {out} is not empty; --force replaces it whole (an earlier "
                                    "inversion's folder)")
        if not (out / "invert.json").is_file():
            raise OutputExistsError(f"--out {out} is not empty and holds no invert.json: --force replaces only an "
                                    "earlier inversion's folder")
    for p in inputs:
        p = p.expanduser().resolve()
        if p == out or out in p.parents:
            raise OutputExistsError(f"--out {out} holds the input {p}; give another folder")
    return out


@contextlib.contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """A new hidden folder beside ``out`` (same file system), locked while this process lives and
    removed on the way out; first the unlocked ones a killed run left are removed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    prefix = STAGING.format(out.name)
    for old in out.parent.glob(glob.escape(prefix) + "*"):
        _remove_if_unlocked(old)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=out.parent))
    fd = os.open(tmp, os.O_RDONLY)
    try:
        _lock(fd, block=True)
        yield tmp
    finally:
        os.close(fd)
        shutil.rmtree(tmp, ignore_errors=True)


def _lock(fd: int, block: bool) -> bool:
    """An exclusive ``flock`` on ``fd`` (True when held; no locking where fcntl is missing: True
    when blocking, False otherwise, so nothing is removed there)."""
    try:
        import fcntl
    except ImportError:
        return block
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


def _remove_if_unlocked(path: Path) -> None:
    """Remove a staging folder that no running inversion holds (a killed run's)."""
    if path.is_symlink() or not path.is_dir():
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        if _lock(fd, block=False):
            log.info("removing %s, left by an inversion that did not finish", path)
            shutil.rmtree(path, ignore_errors=True)
    finally:
        os.close(fd)


def _publish(tmp: Path, out: Path, force: bool) -> None:
    """Rename the finished ``tmp`` to ``out``: atomic when ``out`` is absent or an empty folder;
    with ``force`` an earlier inversion there is first renamed aside (hidden, then removed)."""
    try:
        if out.is_dir() and any(out.iterdir()):
            check_out(out, force, [])
            aside = Path(tempfile.mkdtemp(prefix=f"{STAGING.format(out.name)}old-", dir=out.parent))
            os.replace(out, aside / "out")
            os.replace(tmp, out)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except OSError as exc:
        raise OutputExistsError(f"--out {out}: could not put the result there ({exc})") from None


# ---------------------------------------------------------------- how far from training
#: ``--scale-filter``: none, or keep the keypoints whose grid scale lies in the training range
SCALE_FILTERS = ("none", "training")
#: per-image warning lines printed before the summary line
MAX_WARNING_LINES = 10


def training_stats(run_dir: Path, features: str, image_size: int):
    """``(statistics or None, what invert.json says of them)``: the run's ``sift_stats.json``
    (:mod:`reconattack.data.sift.stats`), checked as untrusted; absent (a run made before they were
    recorded) or refused, None and a ``status`` (``missing`` | ``refused``) with a message."""
    from reconattack.data.sift.stats import STATS_FILE, StatsError, load_stats

    path = run_dir / STATS_FILE
    try:
        stats = load_stats(path, features, image_size)
    except FileNotFoundError:
        return None, {"status": "missing", "message": f"no training statistics: the run directory holds no "
                      f"{STATS_FILE} (a run made before they were recorded); how far each image lies from "
                      "what the model learnt is not measured"}
    except (StatsError, OSError) as exc:
        return None, {"status": "refused", "message": f"the training statistics are not used: {exc}"}
    return stats, {"status": "ok", "file": str(path), **stats.summary()}


def _warn_summary(records: list[dict], note: dict, scale_filter: str) -> list[str]:
    """The console lines of the inversion's warnings (logged once every image is done)."""
    lines = [] if note["status"] == "ok" else [note["message"]]
    unscaled = [r["name"] for r in records if r["keypoints"] and r["grid_scale"] is None]
    if unscaled:
        lines.append(f"{len(unscaled)} of {len(records)} images hold no keypoint scales (x, y only; e.g. "
                     f"{_short(unscaled[0])}): their scales are not compared with training's")
    flagged = [r for r in records if r.get("warnings")]
    for r in flagged[:MAX_WARNING_LINES]:
        lines.append(f"{r['name']}: " + "; ".join(w["message"] for w in r["warnings"]))
    if flagged:
        advice = ("" if scale_filter == "training" else "; --scale-filter training keeps the keypoints in training's "
                  "range of scales")
        lines.append(f"{len(flagged)} of {len(records)} images lie outside what the run trained on (keypoint count or "
                     f"scales; invert.json images[].warnings){advice}: their reconstructions say less than the "
                     "run's test metrics")
    return lines


# ------------------------------------------------------------------------------- inverting
def invert(run_dir: Path, out: Path, colmap: Path | None = None, npz: list[Path] | None = None,
           images: list[str] | None = None, force: bool = False, other_features: bool = False,
           batch_size: int = 16, device: str | None = None, max_keypoints: int = MAX_KEYPOINTS,
           scale_filter: str = "none") -> dict:
    """Reconstruct every image of the input into the folder ``out`` (see the module docstring):
    ``force`` replaces an earlier inversion there, ``other_features`` inverts features of another
    kind than the run's, ``scale_filter="training"`` keeps only the keypoints whose scale on the
    model's grid lies in the training range; returns ``invert.json``'s content."""
    import cv2

    from reconattack.data.sift.mapper import name_key
    from reconattack.data.sift.stats import check, distance
    from reconattack.engine.console import iter_progress

    out = check_out(Path(out), force, [Path(run_dir), *([Path(colmap)] if colmap else []), *(npz or [])])
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    kind = "colmap" if colmap is not None else "opencv"
    cfg, threat, module, ckpt = load_run(run_dir, dev)
    trained = str(cfg.threat.get("features", "opencv"))
    if trained != kind and not other_features:
        raise ConfigError(f"the run {run_dir} was trained on {trained} SIFT, the input holds {kind} SIFT "
                          f"({colmap or 'npz files'}); --other-features tries anyway")
    mapper = threat.mapper  # training's keypoints -> map path, the run's defence included
    if mapper.needs_reference:
        raise ConfigError(
            f"the run {run_dir} was trained with defence.coordinates=withheld: its attacker places each descriptor "
            "at the position of the nearest descriptor in reference images of its own training split, which invert "
            "does not have (a run directory names its split, it does not hold the images); refused")
    if scale_filter not in SCALE_FILTERS:
        raise ConfigError(f"--scale-filter must be one of {', '.join(SCALE_FILTERS)}, got {scale_filter!r}")
    trust = threat.trust  # threat.keypoint_stats: the thresholds of the warnings
    stats, note = training_stats(Path(run_dir), trained, mapper.image_size)
    scale_range = None
    if scale_filter == "training":
        if stats is None:
            raise ConfigError(f"--scale-filter training keeps the keypoints in the range of scales the run trained on, "
                              f"and {note['message']}")
        scale_range = stats.scale_range
    strength = mapper.needs_strength
    count, stream = (colmap_images(colmap, images, max_keypoints, strength) if colmap is not None
                     else npz_images(list(npz or []), max_keypoints, strength))
    if count == 0:
        raise InvertInputError("no image to invert")
    records, taken, batch = [], set(), []
    with _staging(out) as tmp:
        def flush() -> None:
            maps = mapper.maps([xy for _, xy, _ in batch], [desc for _, _, desc in batch], device=dev)
            with torch.no_grad():
                recon = module.reconstruct({"input": maps}).clamp(-1, 1)
            placed = (maps != 0).flatten(2).any(1).sum(1).tolist()
            for (f, xy, _), img, n in zip(batch, recon, placed):
                file = safe_filename(f.name, taken)
                rgb = ((img.float().cpu().permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()
                if not cv2.imwrite(str(tmp / file), np.ascontiguousarray(rgb[:, :, ::-1])):
                    raise OSError(f"could not write {tmp / file}")
                dist = distance(f.scale, len(f.xy), f.size, mapper.image_size, stats)
                record = {"name": f.name, "file": file, "keypoints": int(len(f.xy)), "shared": int(len(xy)),
                          "placed": int(n), "original_size": list(f.size), **dist}
                warnings = check(dist, len(f.xy), stats, trust) if stats is not None else []
                if scale_range is not None:
                    kept = record["kept_by_scale_filter"] = dist["in_training_scales"]
                    lo, hi = stats.count_range
                    if not lo <= kept <= hi:
                        warnings.append({"check": "keypoint_count_after_filter", "value": kept, "threshold": [lo, hi],
                                         "message": f"{kept} keypoints after the scale filter, outside training's "
                                                    f"per-image range [{lo:g}, {hi:g}]"})
                records.append({**record, "warnings": warnings})
            batch.clear()

        for f in iter_progress(stream, total=count, desc="invert"):
            if scale_range is not None and f.scale is None:
                raise InvertInputError(f"{_label(f.name)}: its keypoints hold no scale (x, y only), which "
                                       "--scale-filter training keeps the keypoints by")
            # the scale filter, onto the model's grid and through the run's defence, its draws seeded by the name
            batch.append((f, *mapper.share(f.xy, f.desc, f.strength, f.size, key=name_key(f.name), features=kind,
                                           scale=f.scale, scale_range=scale_range)))
            if len(batch) == batch_size:
                flush()
        if batch:
            flush()
        lines = _warn_summary(records, note, scale_filter)
        settings = mapper.settings()
        defence = settings.pop("defence")
        if defence is not None:
            defence = {**defence, "applied": mapper.defence.describe(),
                       "draws": "numpy.random.default_rng([seed, *name_key(image name)]): the first 16 bytes of "
                                "the SHA-256 of the name as four 32-bit words (reconattack.data.sift.mapper)"}
        summary = {"run": str(run_dir), "checkpoint": str(ckpt), "features": kind, "trained_on": trained,
                   "other_features": bool(other_features and trained != kind),
                   "input": str(colmap) if colmap else [str(p) for p in npz],
                   "image_size": settings.pop("image_size"), "map": settings, "defence": defence,
                   "training_stats": note,
                   "trust": {"range": list(stats.range if stats is not None else trust.range),
                             "max_outside": trust.max_outside,
                             "count_range": list(stats.count_range) if stats is not None else None,
                             "grid_scale_range": list(stats.scale_range) if stats is not None else None},
                   "scale_filter": None if scale_range is None else {
                       "mode": "training", "grid_scale_range": list(scale_range),
                       "quantiles": list(stats.range)},
                   "warnings": lines, "flagged_images": sum(bool(r["warnings"]) for r in records),
                   "images": records}
        (tmp / "invert.json").write_text(json.dumps(summary, indent=2))
        _publish(tmp, out, force)  # every image read and written: the folder becomes --out whole
    for line in lines:
        log.warning("%s", line)
    return summary


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m reconattack.invert",
                                 description="Reconstruct the images behind stored SIFT features with a trained run.")
    ap.add_argument("run_dir", type=Path, help="a run directory of a SIFT attack (its final checkpoint is used)")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--colmap", type=Path, metavar="DATABASE", help="a COLMAP database (database.db)")
    src.add_argument("--npz", type=Path, nargs="+", metavar="FILE", help="OpenCV-style feature files")
    ap.add_argument("--images", nargs="+", metavar="NAME", help="only these images of the database")
    ap.add_argument("--out", type=Path, required=True,
                    help="the folder the PNGs and invert.json become (absent or empty, or see --force)")
    ap.add_argument("--force", action="store_true", help="replace an earlier inversion's folder --out")
    ap.add_argument("--other-features", action="store_true",
                    help="invert features of another kind (opencv / colmap) than the run was trained on")
    ap.add_argument("--max-keypoints", type=int, default=MAX_KEYPOINTS,
                    help=f"refuse an image with more keypoints (default {MAX_KEYPOINTS})")
    ap.add_argument("--scale-filter", choices=SCALE_FILTERS, default="none",
                    help="training: keep only the keypoints whose scale on the model's grid lies in the range the "
                         "run trained on (its sift_stats.json; threat.keypoint_stats.range)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        summary = invert(args.run_dir, args.out, colmap=args.colmap, npz=args.npz, images=args.images,
                         force=args.force, other_features=args.other_features, batch_size=args.batch_size,
                         device=args.device, max_keypoints=args.max_keypoints, scale_filter=args.scale_filter)
    except UserError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"{len(summary['images'])} images reconstructed into {args.out} (invert.json)")


if __name__ == "__main__":
    main()
