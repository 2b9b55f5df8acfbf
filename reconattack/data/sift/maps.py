"""Dense SIFT maps (SPEC §2.1): where each keypoint of an image lands in the model's input map.

:func:`build_maps` turns a batch of sparse keypoints into dense maps on the training device,
vectorised; :func:`to_map` is a plain, independent reference implementation of the same rules for
one sample; :func:`grid_xy` puts the keypoints of an image of another size on the model's grid.
The run's settings and its defence are applied together by
:class:`~reconattack.data.sift.mapper.SiftMapper`, the one path every map is made by.

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
- ``occupancy``: a 1-channel occupancy map (1 at a kept keypoint, 0 elsewhere) instead of the 128
  descriptor channels: what SLI-B reads, a system that shares where its keypoints are but not their
  descriptors (``threat.occupancy``). Not to be confused with the defence
  ``defence.positions_only``, which keeps the 128 channels and sets every descriptor to 255 so
  that every SIFT attack can read it (:mod:`reconattack.defences.sift`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from reconattack.data.sift.extraction import DESC_DIM
from reconattack.errors import ConfigError

__all__ = ["PLACEMENTS", "SLI_NEIGHBOURHOOD", "build_maps", "grid_xy", "map_side", "to_map"]

#: ways of placing keypoints whose pixel is taken (:func:`build_maps`)
PLACEMENTS = ("first", "sli")
#: SLI's search order around a taken pixel: rows -1, 0, +1, columns -1, 0, +1
SLI_NEIGHBOURHOOD = tuple((dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1))


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


def map_side(size: int, compress: bool) -> int:
    """The side of the map of a ``size`` grid: ``size // 2`` compressed, else ``size``;
    ConfigError for a size that is not positive (or odd with ``compress``)."""
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
    out_size = map_side(size, compress)
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
    occupancy: bool = False,
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
        occupancy: a 1-channel occupancy map instead of the descriptors (SLI-B; module docstring).

    Returns:
        float32 ``(B, C, S, S)`` contiguous on ``device``, ``C = 1 if occupancy else 128``,
        ``S = size // 2 if compress else size``; values ``desc / 127.5 - 1`` in ``[-1, 1]`` (or 1
        for ``occupancy``) at kept keypoints, 0 elsewhere.
    """
    if placement not in PLACEMENTS:
        raise ConfigError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    if len(xys) != len(descs):
        raise ValueError(f"{len(xys)} keypoint arrays but {len(descs)} descriptor arrays")
    out_size = map_side(size, compress)
    device = torch.device("cpu") if device is None else torch.device(device)
    batch = len(xys)
    channels = 1 if occupancy else DESC_DIM
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
    if occupancy:
        out.view(-1).index_put_((base,), torch.ones_like(base, dtype=torch.float32))
        return out
    flat_index = torch.arange(DESC_DIM, device=device).mul_(plane).unsqueeze(1) + base  # (128, K)
    values = desc[sel].t().contiguous().to(torch.float32).div_(127.5).sub_(1.0)  # (128, K)
    out.view(-1).index_put_((flat_index.view(-1),), values.view(-1))
    return out


def grid_xy(xy: np.ndarray, size: tuple[int, int], side: int) -> np.ndarray:
    """Keypoints (OpenCV's pixel convention) of an image of ``size`` = (H, W) on the model's
    ``side`` x ``side`` grid, as ``cv2.resize`` of the whole image maps pixel centres: ``x`` to
    ``(x + 0.5) * side / W - 0.5``, ``y`` alike with ``H``. An image of the grid's size keeps its
    keypoints exactly (a float32 copy: training's own keypoints are never moved by rounding)."""
    h, w = size
    if (h, w) == (side, side):
        return np.array(xy, dtype=np.float32)
    out = np.empty_like(xy, dtype=np.float32)
    out[:, 0] = (xy[:, 0] + 0.5) * side / w - 0.5
    out[:, 1] = (xy[:, 1] + 0.5) * side / h - 0.5
    return out


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
