"""SIFT features as CFGAN input (SPEC §2.1).

Pipeline: :func:`extract` runs OpenCV SIFT once per image and returns the *sparse* result
(keypoint coordinates + uint8 descriptors); :class:`SiftCache` keeps it on disk keyed by the
image content and the SIFT settings; :func:`build_maps` turns a batch of sparse results into
dense descriptor maps on the training device, vectorised. :func:`to_map` is a plain,
independent reference implementation of the same placement rules for one sample.

Placement rules (official CFGAN code, except where noted):

- a keypoint at OpenCV coordinates ``(x, y)`` goes to row ``ceil(y) - 1``, column
  ``ceil(x) - 1``, **clamped** to ``[0, size - 1]`` (the official code would wrap the index
  ``-1`` of a keypoint with ``y <= 0`` to the last row; we clamp instead);
- on a pixel collision the first keypoint in OpenCV's order wins;
- an occupied pixel holds ``desc / 127.5 - 1`` (128 values in ``[-1, 1]``), an empty one 0;
- compression (paper §III-B): aligned 2×2 blocks of the ``size``-resolution placement; a block
  with several occupied pixels keeps ONE of them — deterministically the first-placed one
  (smallest OpenCV index among the block's pixel winners) when no generator is given, else
  one chosen uniformly at random with the generator. (The official code keeps a fixed pixel
  of a window shifted by one pixel; that bug is not reproduced.)

Other ways systems or attacks lay out the same features (``build_maps`` arguments):

- ``placement="sli"`` (SLI, Wu & Zhou 2021; official ``main.py`` ``load_sift``): the pixel
  winners as above, then every keypoint whose pixel was taken, in OpenCV's order, goes to the
  first free pixel of its 3x3 neighbourhood in scan order — rows -1, 0, +1, columns -1, 0, +1,
  inside the image — else it is dropped. (The official second pass writes the descriptor of
  another keypoint, indexing the descriptors with the position in the list of the moved ones: a
  bug, not reproduced.)
- ``positions_only``: a 1-channel occupancy map (1 at a kept keypoint, 0 elsewhere): what is
  left when a system shares where its keypoints are but not their descriptors (SLI-B).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from reconattack.errors import ConfigError
from reconattack.utils.files import atomic_write_bytes

__all__ = [
    "DESC_DIM",
    "PLACEMENTS",
    "SiftCache",
    "build_maps",
    "extract",
    "grid_xy",
    "to_map",
]

log = logging.getLogger(__name__)

DESC_DIM = 128
#: bump when the on-disk format or the extraction procedure changes
CACHE_FORMAT_VERSION = 3  # 2: CRC-32 of the payload in the header; 3: each keypoint's strength

_local = threading.local()


# --------------------------------------------------------------------------------------------
# extraction
# --------------------------------------------------------------------------------------------


def _detector(contrast_threshold: float) -> cv2.SIFT:
    """A SIFT detector for ``contrast_threshold``, created once per process and thread."""
    pid = os.getpid()
    cache = getattr(_local, "detectors", None)
    if cache is None or getattr(_local, "pid", None) != pid:
        cache = _local.detectors = {}
        _local.pid = pid
    key = float(contrast_threshold)
    det = cache.get(key)
    if det is None:
        det = cache[key] = cv2.SIFT_create(contrastThreshold=key)
    return det


#: the SIFT implementations a threat can share (``threat.features``)
FEATURES = ("opencv", "colmap")


def _colmap_extractor(options: str):
    """A pycolmap CPU SIFT extractor with COLMAP's default extraction options updated by
    ``options`` (JSON of ``FeatureExtractionOptions`` fields, nested ``sift`` as a dict), created
    once per process and thread."""
    import pycolmap

    pid = os.getpid()
    cache = getattr(_local, "colmap", None)
    if cache is None or getattr(_local, "colmap_pid", None) != pid:
        cache = _local.colmap = {}
        _local.colmap_pid = pid
    ex = cache.get(options)
    if ex is None:
        opts = pycolmap.FeatureExtractionOptions()
        if options != "{}":
            opts.mergedict(json.loads(options))
        ex = cache[options] = pycolmap.FeatureExtractor.create(opts, device=pycolmap.Device.cpu)
    return ex


def colmap_options_key(options: dict | None) -> str:
    """``threat.colmap`` (COLMAP extraction options overrides) as sorted JSON: hashable."""
    return json.dumps(dict(options or {}), sort_keys=True)


def _grey(image: np.ndarray) -> np.ndarray:
    """The grey image both extractors read: uint8 (H, W, 3) RGB → ``cv2.COLOR_RGB2GRAY``;
    ValueError for anything else."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"extract expects a uint8 (H, W, 3) RGB image, got {image.dtype} {tuple(image.shape)}"
        )
    return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)


def extract_colmap(image: np.ndarray, options: dict | None = None,
                   with_strength: bool = False) -> tuple[np.ndarray, ...]:
    """COLMAP's SIFT (pycolmap, CPU) on an RGB image, as given: what a structure-from-motion or
    localisation system stores in its database. The grey image is OpenCV's ``RGB2GRAY``;
    ``FeatureExtractor.create(FeatureExtractionOptions(), device=cpu).extract_from_uint8_array``
    with COLMAP's defaults (updated by ``options``: ``FeatureExtractionOptions`` fields, e.g.
    ``{"sift": {"max_num_features": 4096}}``). COLMAP puts the centre of the top-left pixel at
    (0.5, 0.5), OpenCV at (0, 0): 0.5 is subtracted so that the coordinates follow OpenCV's, as
    :func:`build_maps` places them. Returns ``(xy, desc)`` as :func:`extract` (COLMAP's uint8
    descriptors as stored; with ``with_strength`` also each keypoint's scale, what COLMAP keeps
    first when it limits the number of features: it stores no detector response)."""
    grey = _grey(image)
    keypoints, descriptors = _colmap_extractor(colmap_options_key(options)).extract_from_uint8_array(grey)
    if len(keypoints) == 0:
        return _empty(with_strength)
    xy = np.asarray([(k.x, k.y) for k in keypoints], dtype=np.float32).reshape(-1, 2) - 0.5
    desc = np.asarray(descriptors.data)
    if desc.dtype != np.uint8:  # float descriptors (other options): COLMAP's own uint8 conversion
        desc = np.clip(np.rint(desc * 512), 0, 255).astype(np.uint8)
    out = (xy, np.array(desc.reshape(-1, DESC_DIM), dtype=np.uint8))  # a writable copy
    if with_strength:
        out += (np.asarray([k.compute_scale() for k in keypoints], dtype=np.float32),)
    return out


def _empty(with_strength: bool) -> tuple[np.ndarray, ...]:
    out = (np.zeros((0, 2), np.float32), np.zeros((0, DESC_DIM), np.uint8))
    return out + (np.zeros(0, np.float32),) if with_strength else out


def extract(image: np.ndarray, contrast_threshold: float = 0.03, features: str = "opencv",
            colmap: dict | None = None, with_strength: bool = False) -> tuple[np.ndarray, ...]:
    """Run SIFT on an RGB image, as given (no resize): OpenCV's (``features="opencv"``, the CFGAN
    paper's) or COLMAP's (``"colmap"``, :func:`extract_colmap` with the ``colmap`` options).

    OpenCV: the image is converted with ``cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)`` and passed to
    ``cv2.SIFT_create(contrastThreshold=contrast_threshold).detectAndCompute(grey, None)``
    (other parameters default).

    Args:
        image: uint8 ``(H, W, 3)`` RGB in ``[0, 255]``.
        contrast_threshold: OpenCV SIFT contrast threshold (CFGAN: 0.03).
        features: ``"opencv"`` or ``"colmap"``.
        colmap: COLMAP extraction options overrides (``features="colmap"``).
        with_strength: also return each keypoint's strength, float32 ``(N,)``: OpenCV's detector
            response (``KeyPoint.response``); COLMAP's scale (:func:`extract_colmap`). What a
            system keeps when it shares its strongest keypoints (``defence.select=response``).

    Returns:
        ``(xy, desc)``: ``xy`` float32 ``(N, 2)``, OpenCV keypoint coordinates ``(x, y)`` in
        pixels (``x`` along the width), in OpenCV's keypoint order; ``desc`` uint8
        ``(N, 128)`` in ``[0, 255]`` (OpenCV's float descriptors, rounded and clipped).
        ``N`` may be 0: shapes ``(0, 2)`` and ``(0, 128)``.
    """
    if features == "colmap":
        return extract_colmap(image, colmap, with_strength)
    if features != "opencv":
        raise ConfigError(f"threat.features must be one of {FEATURES}, got {features!r}")
    grey = _grey(image)
    keypoints, desc = _detector(contrast_threshold).detectAndCompute(grey, None)
    if not keypoints or desc is None:
        return _empty(with_strength)
    xy = np.asarray(cv2.KeyPoint_convert(keypoints), dtype=np.float32).reshape(-1, 2)
    desc = np.clip(np.rint(desc), 0, 255).astype(np.uint8)
    if with_strength:
        return xy, desc, np.asarray([k.response for k in keypoints], dtype=np.float32)
    return xy, desc


# --------------------------------------------------------------------------------------------
# dense maps
# --------------------------------------------------------------------------------------------


def _as_tensor(a, dtype: torch.dtype, shape_tail: tuple[int, ...], what: str) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        t = a
    else:
        arr = np.asarray(a)
        t = torch.from_numpy(arr) if arr.flags.writeable else torch.tensor(arr)
    if t.numel() == 0:
        return torch.zeros((0, *shape_tail), dtype=dtype, device=t.device)
    if t.ndim != 1 + len(shape_tail) or tuple(t.shape[1:]) != shape_tail:
        raise ValueError(
            f"{what} must have shape (N, {', '.join(map(str, shape_tail))}), got {tuple(t.shape)}"
        )
    return t.to(dtype)


def _check_size(size: int, compress: bool) -> int:
    size = int(size)
    if size <= 0 or (compress and size % 2):
        raise ConfigError(f"size must be positive (and even when compress=True), got {size}")
    return size // 2 if compress else size


def to_map(
    xy,
    desc,
    size: int,
    compress: bool,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Dense SIFT descriptor map of one image — the plain reference implementation.

    See the module docstring for the placement and compression rules. This version loops
    over keypoints in Python; :func:`build_maps` is the vectorised batched version and gives
    exactly the same result when ``generator`` is None.

    Args:
        xy: float ``(N, 2)`` keypoint coordinates ``(x, y)`` from :func:`extract` (numpy or
            torch).
        desc: uint8 ``(N, 128)`` descriptors in ``[0, 255]`` (numpy or torch).
        size: side of the placement grid (the image size, e.g. 256).
        compress: keep one keypoint per aligned 2×2 block (output side ``size // 2``).
        generator: with compression, pick a block's keypoint at random with this CPU
            generator; None picks the first-placed one (deterministic).

    Returns:
        float32 ``(128, S, S)`` on the CPU, ``S = size // 2 if compress else size``; values in
        ``[-1, 1]`` at occupied pixels, 0 at empty ones.
    """
    out_size = _check_size(size, compress)
    xy_t = _as_tensor(xy, torch.float32, (2,), "xy").cpu()
    desc_t = _as_tensor(desc, torch.uint8, (DESC_DIM,), "desc").cpu()
    if len(xy_t) != len(desc_t):
        raise ValueError(f"{len(xy_t)} keypoints but {len(desc_t)} descriptors")
    out = torch.zeros((DESC_DIM, out_size, out_size), dtype=torch.float32)
    n = len(xy_t)
    if n == 0:
        return out
    rows = (torch.ceil(xy_t[:, 1]) - 1).clamp(0, size - 1).long().tolist()
    cols = (torch.ceil(xy_t[:, 0]) - 1).clamp(0, size - 1).long().tolist()

    # pixel -> index of the first keypoint placed there (dict preserves placement order)
    pixel_winner: dict[tuple[int, int], int] = {}
    for i in range(n):
        pixel_winner.setdefault((rows[i], cols[i]), i)

    if not compress:
        chosen = {pix: i for pix, i in pixel_winner.items()}
    else:
        blocks: dict[tuple[int, int], list[int]] = {}
        for (r, c), i in pixel_winner.items():  # in increasing keypoint index
            blocks.setdefault((r // 2, c // 2), []).append(i)
        chosen = {}
        for blk, members in blocks.items():
            if generator is None or len(members) == 1:
                chosen[blk] = members[0]
            else:
                k = int(torch.randint(len(members), (1,), generator=generator))
                chosen[blk] = members[k]

    values = desc_t.to(torch.float32) / 127.5 - 1.0
    for (r, c), i in chosen.items():
        out[:, r, c] = values[i]
    return out


def _cat_to(tensors: list[torch.Tensor], device: torch.device, same_device: bool) -> torch.Tensor:
    if same_device:
        return torch.cat(tensors).to(device, non_blocking=device.type != "cpu")
    return torch.cat([t.to(device) for t in tensors])


def build_maps(
    xys: Sequence,
    descs: Sequence,
    size: int,
    compress: bool,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    placement: str = "first",
    positions_only: bool = False,
) -> torch.Tensor:
    """Dense SIFT descriptor maps of a batch, vectorised (no Python loop over keypoints).

    Same rules as :func:`to_map`, and the identical result when ``generator`` is None. All
    keypoints of the batch are concatenated with a batch index ``b`` and a global index
    ``i`` (increasing in OpenCV order within each sample). A stable sort by pixel
    ``(b, row, col)`` puts each pixel's keypoints in OpenCV order, so the first of each run is
    the pixel winner. With compression the winners are sorted by ``(block, key)`` and the
    first of each block is kept, where ``key`` is ``i`` (first-placed, deterministic) or a
    random permutation drawn from ``generator`` (uniform among a block's pixel winners,
    reproducible for a given generator state). The kept descriptors are then written with a
    single flat ``index_put_``.

    On the CPU the output is allocated zero-filled by the OS (``calloc`` through
    ``numpy.zeros``), which saves a second zeroing pass over the 8 MB/sample map.

    Args:
        xys: ``B`` float arrays/tensors ``(N_b, 2)`` of keypoint ``(x, y)`` (numpy or torch).
        descs: ``B`` uint8 arrays/tensors ``(N_b, 128)`` in ``[0, 255]`` (numpy or torch).
        size: side of the placement grid (the image size, e.g. 256).
        compress: keep one keypoint per aligned 2×2 block (output side ``size // 2``).
        generator: random block choice (on any device; the permutation is drawn on the
            generator's device and moved); None → first-placed keypoint.
        device: where to build the maps (default: CPU).
        placement: ``"first"`` (the first keypoint of a pixel wins, the others are dropped) or
            ``"sli"`` (the others move to a free neighbour; module docstring). The moves depend on
            one another, so ``"sli"`` loops over the keypoints that collided (a few per image) on
            the CPU.
        positions_only: a 1-channel occupancy map instead of the descriptors (SLI-B).

    Returns:
        float32 ``(B, C, S, S)`` contiguous on ``device``, ``C = 1 if positions_only else 128``,
        ``S = size // 2 if compress else size``; values ``desc / 127.5 - 1`` in ``[-1, 1]`` (or 1
        for ``positions_only``) at kept keypoints, 0 elsewhere.
    """
    if placement not in PLACEMENTS:
        raise ConfigError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    if len(xys) != len(descs):
        raise ValueError(f"{len(xys)} keypoint arrays but {len(descs)} descriptor arrays")
    out_size = _check_size(size, compress)
    device = torch.device("cpu") if device is None else torch.device(device)
    batch = len(xys)
    channels = 1 if positions_only else DESC_DIM
    shape = (batch, channels, out_size, out_size)
    if device.type == "cpu":
        out = torch.from_numpy(np.zeros(shape, dtype=np.float32))
    else:
        out = torch.zeros(shape, dtype=torch.float32, device=device)

    xy_list, desc_list, counts = [], [], []
    for b in range(batch):
        xy_b = _as_tensor(xys[b], torch.float32, (2,), f"xys[{b}]")
        desc_b = _as_tensor(descs[b], torch.uint8, (DESC_DIM,), f"descs[{b}]")
        if len(xy_b) != len(desc_b):
            raise ValueError(f"sample {b}: {len(xy_b)} keypoints but {len(desc_b)} descriptors")
        xy_list.append(xy_b)
        desc_list.append(desc_b)
        counts.append(len(xy_b))
    total = sum(counts)
    if total == 0:
        return out

    # concatenate where the inputs are (usually the CPU), then one transfer each
    same_device = len({t.device for t in xy_list + desc_list}) == 1
    xy = _cat_to(xy_list, device, same_device)  # (M, 2) float32
    desc = _cat_to(desc_list, device, same_device)  # (M, 128) uint8
    bidx = torch.repeat_interleave(
        torch.arange(batch, device=device), torch.tensor(counts, device=device)
    )  # (M,) sample of each keypoint
    rows = (torch.ceil(xy[:, 1]) - 1).clamp(0, size - 1).long()
    cols = (torch.ceil(xy[:, 0]) - 1).clamp(0, size - 1).long()

    # 1. pixel winners: first keypoint (OpenCV order) of each (sample, row, col)
    pixel = (bidx * size + rows) * size + cols
    order = torch.sort(pixel, stable=True).indices  # ties keep increasing keypoint index
    sorted_pixel = pixel[order]
    first = torch.ones_like(sorted_pixel, dtype=torch.bool)
    first[1:] = sorted_pixel[1:] != sorted_pixel[:-1]
    sel = order[first]  # (P,) global indices of the pixel winners
    if placement == "sli" and not bool(first.all()):
        sel, rows, cols = _sli_moves(order[~first], sel, pixel[sel], bidx, rows, cols, size)

    # 2. compression: one pixel winner per aligned 2x2 block, the one with the smallest key
    if compress:
        rows, cols = rows // 2, cols // 2
        if generator is None:
            key = sel
        else:
            perm = torch.randperm(total, generator=generator, device=generator.device)
            key = perm.to(device)[sel]
        block = (bidx[sel] * out_size + rows[sel]) * out_size + cols[sel]
        order = torch.sort(block * total + key).indices  # keys are unique: no ties
        sorted_block = block[order]
        first = torch.ones_like(sorted_block, dtype=torch.bool)
        first[1:] = sorted_block[1:] != sorted_block[:-1]
        sel = sel[order[first]]

    # 3. write: flat index of (b, channel, row, col) for every kept keypoint and channel
    plane = out_size * out_size
    base = bidx[sel] * (channels * plane) + rows[sel] * out_size + cols[sel]  # (K,)
    if positions_only:
        out.view(-1).index_put_((base,), torch.ones_like(base, dtype=torch.float32))
        return out
    flat_index = torch.arange(DESC_DIM, device=device).mul_(plane).unsqueeze(1) + base  # (128, K)
    values = desc[sel].t().contiguous().to(torch.float32).div_(127.5).sub_(1.0)  # (128, K)
    out.view(-1).index_put_((flat_index.view(-1),), values.view(-1))
    return out


def grid_xy(xy: np.ndarray, size: tuple[int, int], side: int) -> np.ndarray:
    """Keypoints (OpenCV's pixel convention) of an image of ``size`` = (H, W) on the model's
    ``side`` x ``side`` grid, as ``cv2.resize`` of the whole image maps pixel centres."""
    h, w = size
    out = np.empty_like(xy, dtype=np.float32)
    out[:, 0] = (xy[:, 0] + 0.5) * side / w - 0.5
    out[:, 1] = (xy[:, 1] + 0.5) * side / h - 0.5
    return out


#: ways of placing keypoints whose pixel is taken (:func:`build_maps`)
PLACEMENTS = ("first", "sli")
#: SLI's search order around a taken pixel: rows -1, 0, +1, columns -1, 0, +1
SLI_NEIGHBOURHOOD = tuple((dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1))


def _sli_moves(losers: torch.Tensor, sel: torch.Tensor, taken_pixels: torch.Tensor, bidx: torch.Tensor,
               rows: torch.Tensor, cols: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SLI's second pass: each keypoint of ``losers`` (global indices whose pixel was taken), in
    OpenCV's order, to the first free pixel of its 3x3 neighbourhood, else dropped. Returns
    ``sel`` with the moved keypoints appended and ``rows`` / ``cols`` with their new places."""
    losers = torch.sort(losers).values.cpu().tolist()
    taken = set(taken_pixels.cpu().tolist())
    b_all, r_all, c_all = bidx.cpu(), rows.cpu(), cols.cpu()
    moved, new_rows, new_cols = [], [], []
    for i in losers:
        b, r, c = int(b_all[i]), int(r_all[i]), int(c_all[i])
        for dr, dc in SLI_NEIGHBOURHOOD:
            rr, cc = r + dr, c + dc
            if 0 <= rr < size and 0 <= cc < size and (b * size + rr) * size + cc not in taken:
                taken.add((b * size + rr) * size + cc)
                moved.append(i)
                new_rows.append(rr)
                new_cols.append(cc)
                break
    if not moved:
        return sel, rows, cols
    device = rows.device
    idx = torch.tensor(moved, device=device)
    rows, cols = rows.clone(), cols.clone()
    rows[idx] = torch.tensor(new_rows, device=device)
    cols[idx] = torch.tensor(new_cols, device=device)
    return torch.cat([sel, idx]), rows, cols


# --------------------------------------------------------------------------------------------
# cache
# --------------------------------------------------------------------------------------------

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
            import pycolmap

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

    def extract(self, image: np.ndarray, with_strength: bool = False) -> tuple[np.ndarray, ...]:
        """:func:`extract` with this cache's settings (not cached)."""
        return extract(image, self.contrast_threshold, self.features, self.colmap, with_strength)

    def _compute_and_store(self, image: np.ndarray, path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        entry = self.extract(image, with_strength=True)
        self._ensure_dir()
        atomic_write_bytes(path, _encode_entry(*entry), durable=False)
        return entry

    # -- public API ----------------------------------------------------------------------
    def get(self, image: np.ndarray, with_strength: bool = False) -> tuple[np.ndarray, ...]:
        """SIFT of ``image`` from the cache, computed and stored on a miss.

        Args:
            image: uint8 ``(H, W, 3)`` RGB in ``[0, 255]`` (as passed to :func:`extract`).
            with_strength: also each keypoint's strength (:func:`extract`).

        Returns:
            ``(xy, desc)`` as :func:`extract`: float32 ``(N, 2)``, uint8 ``(N, 128)``; with
            ``with_strength`` also float32 ``(N,)``.
        """
        path = self.path(image)
        entry = self._read(path)
        if entry is None:
            entry = self._compute_and_store(image, path)
        return entry if with_strength else entry[:2]

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
