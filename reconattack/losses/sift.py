"""SIFT loss (CFGAN paper eq. 9): L1 distance of kornia dense SIFT descriptors of two images.

kornia is imported when a loss is made, not with this module (which the CFGAN attack imports):
``benchmarks/gpu_check.py`` runs CFGAN on machines without kornia, with the SIFT loss off.
"""

from __future__ import annotations

import torch
from torch import nn


class SiftLoss(nn.Module):
    """L1 distance between dense SIFT descriptors of the grey versions of two images.

    The official code sums |K(I_0) - K(I_g)| over batch, descriptor channels and positions and
    divides by the number of positions only, which grows with the batch size. Here the sum over
    the 128 descriptor values is averaged over batch and positions, so the value is the
    official one at batch size 1 and independent of the batch size.

    Args (forward): pred, target (B, 3, H, W) RGB in [-1, 1]. Returns a scalar.
    """

    def __init__(self, num_ang_bins: int = 8, num_spatial_bins: int = 4, spatial_bin_size: int = 4,
                 rootsift: bool = False):
        super().__init__()
        import kornia

        # official code: kornia defaults with rootsift=False
        self.descriptor = kornia.feature.DenseSIFTDescriptor(
            num_ang_bins=num_ang_bins, num_spatial_bins=num_spatial_bins,
            spatial_bin_size=spatial_bin_size, rootsift=rootsift)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        import kornia

        dp = self.descriptor(kornia.color.rgb_to_grayscale(pred))
        dt = self.descriptor(kornia.color.rgb_to_grayscale(target))
        return (dp - dt).abs().sum(1).mean()
