"""Local binary patterns: the structure target of SLI (Wu & Zhou, IEEE TIFS 2021; the official
code ``HighwayWu/SIFT_Reconstruction`` ``main.py`` ``load_lbp``, read as facts; SPEC §2.5).

The 8-neighbour LBP of a grey image: each pixel gets one bit per neighbour, set when the
neighbour is >= the centre, with the official bit order — top-right 1, right 2, bottom-right 4,
bottom 8, bottom-left 16, left 32, top-left 64, top 128. A neighbour outside the image counts 0
(the official per-pixel loop gets 0 past the bottom and right edges, but Python's index -1 wraps
the top row and left column around to the far side: a bug, not reproduced). The official loop
takes seconds an image; :func:`lbp_map` is vectorised (eight shifted comparisons of the whole
batch), on any device.

SLI trains its LBP network on ``lbp / 127.5 - 1`` (:func:`lbp_target`).
"""

from __future__ import annotations

import numpy as np
import torch

#: (row offset, column offset, bit value) of each neighbour, in the official order
NEIGHBOURS = ((-1, 1, 1), (0, 1, 2), (1, 1, 4), (1, 0, 8), (1, -1, 16), (0, -1, 32), (-1, -1, 64), (-1, 0, 128))


def lbp_map(grey: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """The 8-neighbour LBP codes of grey images (see the module docstring).

    Args:
        grey: uint8 (B, H, W) (numpy or torch, any device).

    Returns:
        uint8 (B, H, W) codes in [0, 255], of the input's kind and device.
    """
    as_numpy = isinstance(grey, np.ndarray)
    g = torch.from_numpy(grey) if as_numpy else grey
    if g.dim() != 3 or g.dtype != torch.uint8:
        raise ValueError(f"lbp_map takes uint8 (B, H, W) grey images, got {g.dtype} {tuple(g.shape)}")
    b, h, w = g.shape
    centre = g.to(torch.int16)
    padded = torch.full((b, h + 2, w + 2), -1, dtype=torch.int16, device=g.device)  # outside: never >= centre
    padded[:, 1:-1, 1:-1] = centre
    code = torch.zeros((b, h, w), dtype=torch.int16, device=g.device)
    for dr, dc, bit in NEIGHBOURS:
        neighbour = padded[:, 1 + dr:1 + dr + h, 1 + dc:1 + dc + w]
        code += (neighbour >= centre).to(torch.int16) * bit
    out = code.to(torch.uint8)
    return out.numpy() if as_numpy else out


def grey_of(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [-1, 1] → (B, H, W) uint8 grey exactly as OpenCV's
    ``COLOR_BGR2GRAY`` computes it from the uint8 image (the official code's input): 0.299 R +
    0.587 G + 0.114 B in OpenCV's 15-bit fixed point, ``(9798 R + 19235 G + 3735 B + 2^14) >> 15``."""
    u8 = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.int32)
    r, g, b = u8.unbind(1)
    return ((9798 * r + 19235 * g + 3735 * b + 16384) >> 15).to(torch.uint8)


def lbp_target(images: torch.Tensor) -> torch.Tensor:
    """SLI's structure target of (B, 3, H, W) RGB images in [-1, 1]: the LBP of their grey image,
    ``lbp / 127.5 - 1``, float (B, 1, H, W) in [-1, 1]."""
    return lbp_map(grey_of(images)).unsqueeze(1).float() / 127.5 - 1


__all__ = ["NEIGHBOURS", "grey_of", "lbp_map", "lbp_target"]
