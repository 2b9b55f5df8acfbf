"""Adversarial losses on discriminator logits.

RaGAN (relativistic average GAN, CFGAN paper eqs. 5-8) with the sigmoid inside the loss:
D'(x_r) = sigmoid(D(x_r) - E[D(x_f)]), D'(x_f) = sigmoid(D(x_f) - E[D(x_r)]).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def ragan_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator loss, paper eq. 5: -E log D'(real) - E log(1 - D'(fake)).

    Args: logits (B,) of real and generated images (fake detached by the caller). Returns a scalar.
    """
    return _bce(real_logits - fake_logits.mean(), 1.0) + _bce(fake_logits - real_logits.mean(), 0.0)


def ragan_g_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator adversarial loss, paper eq. 6: -E log D'(fake) - E log(1 - D'(real)). Scalar."""
    return _bce(fake_logits - real_logits.mean(), 1.0) + _bce(real_logits - fake_logits.mean(), 0.0)
