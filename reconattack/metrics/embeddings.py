"""Image embeddings that need no learnt weights (pure torch, batched, device-agnostic).

Used for *retrieval* metrics (find each reconstruction's own original among N held-out
originals by nearest embedding) when CLIP weights are not available offline. Results
computed with these embeddings are always reported under the embedding's own name
(:attr:`HOGEmbedding.name` = ``"hog"``), never as CLIP.

- :func:`hog`: Histogram of Oriented Gradients (Dalal & Triggs 2005) of grayscale images,
  numerically matching ``skimage.feature.hog(image, orientations, pixels_per_cell=(cell,
  cell), cells_per_block=(block, block), block_norm="L2-Hys", transform_sqrt=False,
  feature_vector=True, channel_axis=None)``.
- :class:`HOGEmbedding`: RGB images → resize → ITU-R 601 luma → :func:`hog`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["HOGEmbedding", "hog", "hog_dim"]

# ITU-R BT.601 luma weights (R, G, B), as PIL's "L" mode (skimage.color.rgb2gray uses the
# BT.709 weights 0.2125, 0.7154, 0.0721 instead).
LUMA_601 = (0.299, 0.587, 0.114)

_EPS = 1e-5  # skimage's _hog_normalize_block eps


def hog_dim(height: int, width: int, orientations: int = 9, cell: int = 8, block: int = 2) -> int:
    """Length of the :func:`hog` feature vector of an ``height × width`` image.

    ``orientations · block² · (height // cell - block + 1) · (width // cell - block + 1)``.
    """
    return orientations * block * block * (height // cell - block + 1) * (width // cell - block + 1)


def _work_dtype(device: torch.device) -> torch.dtype:
    # float64 where supported (as skimage's histogram stage), float32 on MPS
    return torch.float32 if device.type == "mps" else torch.float64


def _bin_edges(orientations: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    # skimage's Cython histogram uses C ``float`` (float32) bin borders:
    # step = (float)(180. / n); border_i = step * i in float32 arithmetic.
    step = torch.tensor(180.0 / orientations, dtype=torch.float32)
    edges = step * torch.arange(orientations + 1, dtype=torch.float32)
    return edges.to(device=device, dtype=dtype)


def hog(gray: Tensor, orientations: int = 9, cell: int = 8, block: int = 2) -> Tensor:
    """Histogram of Oriented Gradients (Dalal & Triggs 2005) of a batch of grayscale images.

    Matches ``skimage.feature.hog(img, orientations=orientations, pixels_per_cell=(cell,
    cell), cells_per_block=(block, block), block_norm="L2-Hys", transform_sqrt=False,
    feature_vector=True)`` on each image (to float rounding; tested to 1e-5):

    1. gradients by central differences ``[-1, 0, 1]`` along rows and columns in the
       image's float dtype, zero on the first/last row (resp. column);
    2. magnitude ``hypot(g_row, g_col)`` and unsigned orientation
       ``rad2deg(atan2(g_row, g_col)) mod 180`` ∈ [0, 180);
    3. per cell of ``cell × cell`` pixels (non-overlapping; the last ``H mod cell`` rows and
       ``W mod cell`` columns are not in any cell), for each of ``orientations`` bins
       ``[b_i, b_{i+1})`` with ``b_i = i · 180 / orientations`` (float32 borders, as
       skimage's Cython code): the sum of the magnitudes of the cell's pixels whose
       orientation falls in the bin (hard binning, no interpolation), divided by
       ``cell²``;
    4. for every ``block × block`` window of cells (stride 1 cell): L2-Hys normalisation
       ``v / sqrt(|v|² + eps²)``, clip at 0.2, renormalise the same way (``eps = 1e-5``);
    5. flattened in the order (block row, block column, cell row in block, cell column in
       block, orientation).

    Steps 2-4 run in float64 (float32 on MPS).

    Args:
        gray: (B, H, W) float grayscale images, any range (typically [0, 1]); needs
            ``H, W >= cell · block``.
        orientations: number of orientation bins over [0°, 180°).
        cell: cell size in pixels (square cells).
        block: block size in cells (square blocks).

    Returns:
        (B, D) tensor with ``D = hog_dim(H, W, orientations, cell, block)``, values in
        [0, 1] (each block is a unit vector, or zero where the block has no gradient, e.g.
        a constant image gives all zeros). dtype float64 for float64 input, float32
        otherwise.
    """
    if gray.dim() != 3:
        raise ValueError(f"expected (B, H, W) grayscale images, got shape {tuple(gray.shape)}")
    b, h, w = gray.shape
    n_rows, n_cols = h // cell, w // cell
    nb_rows, nb_cols = n_rows - block + 1, n_cols - block + 1
    if nb_rows <= 0 or nb_cols <= 0:
        raise ValueError(
            f"images of {h}x{w} are too small for HOG with {cell}-px cells and {block}x{block} "
            f"blocks: need at least {cell * block}x{cell * block}"
        )
    out_dtype = torch.float64 if gray.dtype == torch.float64 else torch.float32
    img = gray.to(out_dtype)  # skimage: float16 → float32, float32/float64 kept
    work = _work_dtype(img.device)

    # 1. central differences in the image dtype (as skimage), zero on the borders
    g_row = torch.zeros_like(img)
    g_col = torch.zeros_like(img)
    g_row[:, 1:-1, :] = img[:, 2:, :] - img[:, :-2, :]
    g_col[:, :, 1:-1] = img[:, :, 2:] - img[:, :, :-2]
    # only the pixels inside cells vote
    g_row = g_row[:, : n_rows * cell, : n_cols * cell].to(work)
    g_col = g_col[:, : n_rows * cell, : n_cols * cell].to(work)

    # 2. magnitude and unsigned orientation in degrees
    magnitude = torch.hypot(g_col, g_row)
    angle = torch.remainder(torch.rad2deg(torch.atan2(g_row, g_col)), 180.0)

    # 3. hard binning: bin i holds b_i <= angle < b_{i+1}
    edges = _bin_edges(orientations, img.device, work)
    a = angle.unsqueeze(-1)
    votes = ((a >= edges[:-1]) & (a < edges[1:])).to(work) * magnitude.unsqueeze(-1)
    hist = votes.reshape(b, n_rows, cell, n_cols, cell, orientations).sum(dim=(2, 4))
    hist = hist / float(cell * cell)  # (B, n_rows, n_cols, O)

    # 4. blocks of block x block cells, stride 1 → (B, nb_rows, nb_cols, block, block, O)
    blocks = hist.unfold(1, block, 1).unfold(2, block, 1).permute(0, 1, 2, 4, 5, 3)
    blocks = blocks.reshape(b, nb_rows, nb_cols, -1)
    blocks = blocks / torch.sqrt(blocks.square().sum(-1, keepdim=True) + _EPS**2)
    blocks = blocks.clamp(max=0.2)
    blocks = blocks / torch.sqrt(blocks.square().sum(-1, keepdim=True) + _EPS**2)

    # 5. (block row, block col, cell row, cell col, orientation) order
    return blocks.reshape(b, -1).to(out_dtype)


class HOGEmbedding(nn.Module):
    """HOG image embedding with no learnt weights (no download), reported as ``"hog"``.

    ``forward``: RGB images → bilinear resize to ``size × size``
    (``F.interpolate(mode="bilinear", antialias=True, align_corners=False)``, skipped when
    already that size) → grayscale with the ITU-R BT.601 luma weights
    ``0.299 R + 0.587 G + 0.114 B`` → :func:`hog` (``orientations`` bins, ``cell``-px cells,
    ``block × block`` blocks, L2-Hys), i.e. ``skimage.feature.hog`` of that grayscale image.

    A stand-in for CLIP in retrieval metrics when CLIP weights are unavailable offline;
    results must be reported under :attr:`name` (``"hog"``), never as CLIP.

    Attributes:
        name: ``"hog"``.
        dim: feature length ``orientations · block² · (size // cell - block + 1)²``.
    """

    name = "hog"

    def __init__(self, size: int = 64, orientations: int = 9, cell: int = 8, block: int = 2):
        super().__init__()
        if size // cell < block:
            raise ValueError(
                f"size {size} is too small for {cell}-px cells and {block}x{block} blocks"
            )
        self.size = size
        self.orientations = orientations
        self.cell = cell
        self.block = block
        self.dim = hog_dim(size, size, orientations, cell, block)
        self.register_buffer(
            "luma", torch.tensor(LUMA_601, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )

    def describe(self) -> str:
        """One-line description of the embedding, for reports."""
        s, c, k = self.size, self.cell, self.block
        return (
            f"HOG (Dalal-Triggs; {s}x{s} gray, {self.orientations} orientations, {c}-px cells, "
            f"{k}x{k} blocks, L2-Hys), no learnt weights"
        )

    def forward(self, images: Tensor) -> Tensor:
        """Embed a batch of RGB images.

        Args:
            images: (B, 3, H, W) RGB images in [0, 1], any float dtype (computed in float32).

        Returns:
            (B, D) float32 features, ``D = self.dim``, values in [0, 1]; compare with
            Euclidean or cosine distance.
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected (B, 3, H, W) RGB images, got shape {tuple(images.shape)}")
        x = images.to(torch.float32)
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(
                x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False
            )
        gray = (x * self.luma.to(x.device)).sum(dim=1)
        return hog(gray, self.orientations, self.cell, self.block)
