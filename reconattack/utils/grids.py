"""Sample grids: images side by side, one row per image and one column per kind (target |
reconstruction | controls), as the runs write them (``samples/*.png``) and the loggers show them.
``reconattack.report`` reads the tiles back (:data:`GRID_PAD`)."""

from __future__ import annotations

from pathlib import Path

import torch

#: padding between tiles (torchvision's ``make_grid`` default), in pixels
GRID_PAD = 2


def grid(columns: list[torch.Tensor], max_rows: int = 8) -> torch.Tensor:
    """A picture with one row per image and one column per tensor of ``columns`` (each
    (B, 3, H, W) in [-1, 1], same B, H, W; the first ``max_rows`` images) -> (3, H', W') in
    [0, 1], white padding of :data:`GRID_PAD` pixels."""
    import torchvision

    n = min(max_rows, columns[0].shape[0])
    tiles = torch.stack([c[:n].detach().float().cpu().clamp(-1, 1) for c in columns], dim=1).flatten(0, 1)
    return torchvision.utils.make_grid((tiles + 1) / 2, nrow=len(columns), padding=GRID_PAD, pad_value=1.0)


def save_grid(columns: list[torch.Tensor], path: Path, max_rows: int = 8) -> None:
    """Save :func:`grid` of ``columns`` as a PNG at ``path`` (e.g. ground truth | input
    visualisation | reconstruction)."""
    import torchvision

    path.parent.mkdir(parents=True, exist_ok=True)
    torchvision.utils.save_image(grid(columns, max_rows), str(path))
