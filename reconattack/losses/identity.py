"""The DR attack's augmented identity loss (SPEC §3.3, paper eq. 7).

L_id = || f(A(G_theta(x'))) - f(x') ||, A = random horizontal flip, random black padding of
``pad`` px, random crop back to the original size; each image of the batch draws its own A.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from reconattack.errors import ConfigError
from reconattack.losses.avih import task_loss


def augment(x: torch.Tensor, flip: bool = True, pad: int = 5, crop: bool = True,
            generator: torch.Generator | None = None, fill: float = -1.0) -> torch.Tensor:
    """Random flip + padding + crop, independently per image; differentiable w.r.t. ``x``.

    x: (B, C, H, W), in [-1, 1] for images. Per image: a horizontal flip with probability 0.5
    (``flip``), padding of ``pad`` px with ``fill`` on every side (-1: black, the official code's
    zero padding of [0, 1] images), and a crop of H x W at an offset (dy, dx) drawn uniformly
    from {0, ..., 2 * pad}^2 (``crop=True``) or the centre crop (dy = dx = pad, ``crop=False``:
    no translation). Output (B, C, H, W): the (flipped) image shifted by (pad - dy, pad - dx)
    with ``fill`` entering. ``flip=False`` with ``pad=0`` or ``crop=False``
    returns ``x`` itself. Random draws use ``generator`` (on its own device) or the global RNG.
    """
    if pad < 0:
        raise ConfigError(f"augment: pad must be >= 0, got {pad}")
    if x.dim() != 4:
        raise ValueError(f"augment expects (B, C, H, W), got shape {tuple(x.shape)}")
    b, c, h, w = x.shape
    dev = generator.device if generator is not None else x.device
    out = x
    if flip:
        flips = (torch.rand(b, generator=generator, device=dev) < 0.5).to(x.device)
        out = torch.where(flips[:, None, None, None], x.flip(-1), x)
    if pad == 0 or not crop:  # the centre crop of the zero-padded image is the image itself
        return out
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=dev).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=dev).to(x.device)
    padded = F.pad(out, (pad, pad, pad, pad), value=fill)  # (B, C, H + 2p, W + 2p)
    rows = dy[:, None] + torch.arange(h, device=x.device)  # (B, H)
    cols = dx[:, None] + torch.arange(w, device=x.device)  # (B, W)
    padded = padded.gather(2, rows[:, None, :, None].expand(b, c, h, w + 2 * pad))
    return padded.gather(3, cols[:, None, None, :].expand(b, c, h, w))


def augmented_identity_loss(embed: Callable[[torch.Tensor], torch.Tensor], recon: torch.Tensor,
                            target_emb: torch.Tensor, augment_kwargs: Mapping[str, Any] | None = None,
                            distance: str = "l2", generator: torch.Generator | None = None) -> torch.Tensor:
    """Augmented identity loss (paper eq. 7), per image.

    embed: the service model, (B, 3, H, W) in [-1, 1] -> (B, E); recon: G_theta(x'), (B, 3, H, W)
    in [-1, 1]; target_emb: (B, E), f(x') (the encrypted images' embeddings). Returns (B,)
    ``task_loss(embed(augment(recon, **augment_kwargs)), target_emb, distance)`` (embeddings
    L2-normalised; distance "l2" | "l2sq" | "cos" | "mse").
    """
    aug = augment(recon, **dict(augment_kwargs or {}), generator=generator)
    return task_loss(embed(aug), target_emb, distance)
