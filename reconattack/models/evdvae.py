"""EVDVAE's network, SIFT-conditioned (Hazami et al., *Efficient-VDVAE: Less is more*, arXiv
2203.13751; its MIT-licensed code read as facts, not copied). Networks only; the adaptation is
described in :mod:`reconattack.attacks.evdvae` and ``conf/model/evdvae_paper.yaml``.

A hierarchical VAE over resolutions ``levels`` = ``[(side, width, blocks), ...]`` from the lowest
to the image's:

- the **bottom-up encoder** (:class:`BottomUp`, training only) reads the image and keeps its
  activations at every level;
- the **SIFT encoder** (:class:`ConditionPyramid`) reads the map and gives a feature map at every
  level (levels above the map's resolution get its finest one, upsampled);
- the **top-down decoder** (:class:`TopDownBlock` x ``blocks`` per level): each block adds the
  level's SIFT feature to its state, predicts the prior p(z | state) and, in training, the
  posterior q(z | state, encoder activation); z (sampled from q in training; the prior's mean at
  test: the conditional prior reconstructs) updates the state through a residual path. KL(q || p)
  is summed over every latent.

Residual blocks are Efficient-VDVAE's bottleneck blocks (1x1 → 3x3 → 3x3 → 1x1, GELU, the last
layer's weights scaled down by the depth); standard deviations are softplus of the predictions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from reconattack.errors import ConfigError


class Bottleneck(nn.Module):
    """Efficient-VDVAE's residual bottleneck: GELU, 1x1 (→ width/4), 3x3, 3x3, 1x1 (→ out)."""

    def __init__(self, in_ch: int, out_ch: int, residual: bool = True, scale: float = 1.0) -> None:
        super().__init__()
        mid = max(in_ch // 4, 1)
        self.net = nn.Sequential(nn.GELU(), nn.Conv2d(in_ch, mid, 1), nn.GELU(), nn.Conv2d(mid, mid, 3, 1, 1),
                                 nn.GELU(), nn.Conv2d(mid, mid, 3, 1, 1), nn.GELU(), nn.Conv2d(mid, out_ch, 1))
        with torch.no_grad():
            self.net[-1].weight.mul_(scale)
        self.residual = residual and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        return x + y if self.residual else y


def _levels(levels: Sequence[Sequence[int]]) -> list[tuple[int, int, int]]:
    out = [(int(s), int(w), int(b)) for s, w, b in levels]
    for (s0, _, _), (s1, _, _) in zip(out[:-1], out[1:]):
        if s1 != 2 * s0:
            raise ConfigError(f"EVDVAE levels must double in side from one to the next, got {[s for s, _, _ in out]}")
    return out


def descend(h: torch.Tensor, blocks: nn.ModuleList, moves: nn.ModuleList, sides: Sequence[int]) -> dict[int, torch.Tensor]:
    """Down a pyramid: at each level the level's block, its output kept under its side, then a
    2x average pooling and the 1x1 move to the next level's width."""
    out = {}
    for i, block in enumerate(blocks):
        h = block(h)
        out[sides[i]] = h
        if i < len(moves):
            h = moves[i](F.avg_pool2d(h, 2))
    return out


class BottomUp(nn.Module):
    """The image (B, 3, H, W) → ``{side: activation (B, width, side, side)}`` at every level."""

    def __init__(self, levels: Sequence[tuple[int, int, int]], scale: float) -> None:
        super().__init__()
        lv = list(reversed(levels))  # from the image's side down
        self.stem = nn.Conv2d(3, lv[0][1], 3, 1, 1)
        self.stages = nn.ModuleList(nn.Sequential(*[Bottleneck(w, w, scale=scale) for _ in range(max(b, 1))])
                                    for _, w, b in lv)
        self.moves = nn.ModuleList(nn.Conv2d(w0, w1, 1) for (_, w0, _), (_, w1, _) in zip(lv[:-1], lv[1:]))
        self.sides = [s for s, _, _ in lv]

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        return descend(self.stem(x), self.stages, self.moves, self.sides)


class ConditionPyramid(nn.Module):
    """The SIFT map (B, in_ch, S, S) → ``{side: feature (B, width, side, side)}`` at every level
    (a 3x3 stem at S, then a residual block and a halving per level below it; levels above S get
    the finest feature upsampled)."""

    def __init__(self, in_ch: int, map_side: int, levels: Sequence[tuple[int, int, int]], scale: float) -> None:
        super().__init__()
        below = [(s, w) for s, w, _ in reversed(levels) if s <= map_side]
        if not below or below[0][0] != map_side:
            raise ConfigError(f"EVDVAE: the map's side {map_side} must be one of the levels {[s for s, _, _ in levels]}")
        self.stem = nn.Conv2d(in_ch, below[0][1], 3, 1, 1)
        self.blocks = nn.ModuleList(Bottleneck(w, w, scale=scale) for _, w in below)
        self.moves = nn.ModuleList(nn.Conv2d(w0, w1, 1) for (_, w0), (_, w1) in zip(below[:-1], below[1:]))
        self.sides, self.map_side = [s for s, _ in below], int(map_side)
        self.up = nn.ModuleDict({str(s): nn.Conv2d(below[0][1], w, 1) for s, w, _ in levels if s > map_side})

    def forward(self, sift: torch.Tensor) -> dict[int, torch.Tensor]:
        out = descend(self.stem(sift), self.blocks, self.moves, self.sides)
        finest = out[self.map_side]
        for side, proj in self.up.items():
            out[int(side)] = proj(F.interpolate(finest, size=int(side), mode="nearest"))
        return out


def gaussian_kl(mu_q: torch.Tensor, std_q: torch.Tensor, mu_p: torch.Tensor, std_p: torch.Tensor) -> torch.Tensor:
    """KL(N(mu_q, std_q²) || N(mu_p, std_p²)) element-wise."""
    return torch.log(std_p / std_q) + (std_q ** 2 + (mu_q - mu_p) ** 2) / (2 * std_p ** 2) - 0.5


class TopDownBlock(nn.Module):
    """One top-down block (see the module docstring). ``forward(h, cond, act=None)`` →
    ``(h', kl)``; kl (B,) summed over this block's latents (zeros without ``act``)."""

    def __init__(self, width: int, z_ch: int, scale: float) -> None:
        super().__init__()
        self.z_ch = int(z_ch)
        self.prior = Bottleneck(width, 2 * z_ch + width, residual=False)
        self.posterior = Bottleneck(2 * width, 2 * z_ch, residual=False)
        self.z_proj = nn.Conv2d(z_ch, width, 1)
        with torch.no_grad():
            self.z_proj.weight.mul_(scale)
        self.res = Bottleneck(width, width, scale=scale)

    def forward(self, h: torch.Tensor, cond: torch.Tensor, act: torch.Tensor | None = None,
                temperature: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        x = h + cond
        p = self.prior(x)
        mu_p, std_p, feat = p[:, :self.z_ch], F.softplus(p[:, self.z_ch:2 * self.z_ch]) + 1e-4, p[:, 2 * self.z_ch:]
        x = x + feat
        if act is not None:
            q = self.posterior(torch.cat([x, act], dim=1))
            mu_q, std_q = q[:, :self.z_ch], F.softplus(q[:, self.z_ch:]) + 1e-4
            z = mu_q + std_q * torch.randn_like(mu_q)
            kl = gaussian_kl(mu_q, std_q, mu_p, std_p).sum((1, 2, 3))
        else:  # the conditional prior: its mean (temperature 0) or a sample
            z = mu_p + temperature * std_p * torch.randn_like(mu_p) if temperature else mu_p
            kl = torch.zeros(h.shape[0], device=h.device, dtype=h.dtype)
        x = x + self.z_proj(z)
        return self.res(x), kl


class EVDVAE(nn.Module):
    """The SIFT-conditioned hierarchical VAE (see the module docstring).

    Args:
        in_ch: the map's channels; map_side: its side (one of the levels).
        levels: ``[(side, width, blocks), ...]`` from the lowest resolution to the image's.
        z_ch: latent channels of every top-down block.

    ``forward(sift, image=None)`` → ``(reconstruction (B, 3, H, W) in [-1, 1], kl (B,))``: with
    ``image`` the posterior path (training), without it the conditional prior's means.
    """

    def __init__(self, in_ch: int = 128, map_side: int = 128, levels: Sequence[Sequence[int]] = (), z_ch: int = 16,
                 temperature: float = 0.0) -> None:
        super().__init__()
        lv = _levels(levels)
        if not lv:
            raise ConfigError("EVDVAE needs levels")
        n_blocks = sum(b for _, _, b in lv)
        scale = 1 / math.sqrt(max(n_blocks, 1))
        self.levels, self.temperature = lv, float(temperature)
        self.h0 = nn.Parameter(torch.zeros(1, lv[0][1], lv[0][0], lv[0][0]))
        self.encoder = BottomUp(lv, scale)
        self.condition = ConditionPyramid(in_ch, map_side, lv, scale)
        self.blocks = nn.ModuleList(nn.ModuleList(TopDownBlock(w, z_ch, scale) for _ in range(b)) for _, w, b in lv)
        self.moves = nn.ModuleList(nn.Conv2d(w0, w1, 1) for (_, w0, _), (_, w1, _) in zip(lv[:-1], lv[1:]))
        self.to_rgb = nn.Conv2d(lv[-1][1], 3, 3, 1, 1)
        self.image_side = lv[-1][0]

    def forward(self, sift: torch.Tensor, image: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        cond = self.condition(sift)
        acts = self.encoder(image) if image is not None else None
        h = self.h0.repeat(sift.shape[0], 1, 1, 1)  # not a view: a view of a parameter made under no_grad still requires grad
        kl = torch.zeros(sift.shape[0], device=sift.device, dtype=sift.dtype)
        for i, ((side, _, _), blocks) in enumerate(zip(self.levels, self.blocks)):
            for block in blocks:
                h, k = block(h, cond[side], acts[side] if acts is not None else None, self.temperature)
                kl = kl + k
            if i < len(self.moves):
                h = self.moves[i](F.interpolate(h, scale_factor=2, mode="nearest"))
        return torch.tanh(self.to_rgb(h)), kl

    def reconstruct(self, sift: torch.Tensor) -> torch.Tensor:
        """The conditional prior's reconstruction of maps (B, C, S, S): (B, 3, H, W) in [-1, 1]."""
        return self(sift)[0]


class PriorPath(nn.Module):
    """EVDVAE as it reconstructs (the prior path), for profiling: map → image."""

    def __init__(self, vae: EVDVAE) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, sift: torch.Tensor) -> torch.Tensor:
        return self.vae.reconstruct(sift)


__all__ = ["EVDVAE", "PriorPath", "gaussian_kl"]
