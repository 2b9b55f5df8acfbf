"""Pixel loss (CFGAN paper eq. 3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pixel_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over all pixels and channels; (B, C, H, W) tensors, any range. Scalar."""
    return F.l1_loss(pred, target)
