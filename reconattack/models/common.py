"""Helpers shared by the networks in :mod:`reconattack.models`."""

from __future__ import annotations

from torch import nn

from reconattack.errors import ConfigError


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters (frozen ones, e.g. fixed BN weights, excluded)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def check_side(x, levels: int, what: str) -> None:
    """Raise a ValueError unless the input's sides are multiples of ``2 ** levels`` (one halving per
    encoder level); ``x`` is (B, C, H, W)."""
    side = 2 ** levels
    if x.shape[-1] % side or x.shape[-2] % side:
        raise ConfigError(f"{what}: input side {tuple(x.shape[-2:])} must be a multiple of "
                          f"2 ** {levels} = {side} (one halving per encoder level)")
