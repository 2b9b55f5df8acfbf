"""Adversarial losses on discriminator logits.

RaGAN (relativistic average GAN, CFGAN paper eqs. 5-8) with the sigmoid inside the loss:
D'(x_r) = sigmoid(D(x_r) - E[D(x_f)]), D'(x_f) = sigmoid(D(x_f) - E[D(x_r)]).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reconattack.errors import ConfigError


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


# --- JS-divergence GAN losses for a tanh-activated PatchGAN (AVIH DR attack, paper eqs. 11-13) ---
#
# D(x) = tanh(s) in (-1, 1) with s the pre-activation patch score (PatchGAN.scores); its
# probability of "real" is p = (1 + tanh(s)) / 2 = sigmoid(2 s), so every log is a softplus
# of 2 s: -log p = softplus(-2 s), -log(1 - p) = softplus(2 s) (finite for any s).


def js_d_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """Discriminator loss, paper eq. 13: E[-log p(real)] + E[-log(1 - p(fake))].

    real_scores / fake_scores: pre-activation scores s of any shape (e.g. PatchGAN patch maps
    (B, 1, h, w); fake detached by the caller); each expectation is the mean over its tensor.
    p = (1 + tanh(s)) / 2 = sigmoid(2 s). Scalar >= 0 (2 log 2 at s = 0).
    """
    return _bce(2 * real_scores, 1.0) + _bce(2 * fake_scores, 0.0)


def js_g_loss(fake_scores: torch.Tensor, mode: str = "minimax") -> torch.Tensor:
    """Generator (attacker key model) adversarial loss on pre-activation scores s of G's images.

    ``"minimax"`` (paper eq. 12): E[log(1 - p(fake))] = -E[softplus(2 s)] (<= 0, minimised);
    ``"non_saturating"``: E[-log p(fake)] = E[softplus(-2 s)] (>= 0). p = sigmoid(2 s). Scalar.
    """
    if mode == "minimax":
        return -F.softplus(2 * fake_scores).mean()
    if mode == "non_saturating":
        return F.softplus(-2 * fake_scores).mean()
    raise ConfigError(f"js_g_loss mode must be 'minimax' or 'non_saturating', got {mode!r}")


# --- SLI's relativistic losses (official ``main.py``: GANLoss('re_avg_gan'), SPEC §2.5) ---
#
# D outputs d (patch maps; the official discriminator ends in a sigmoid, and these losses then
# take its probabilities as logits: BCE-with-logits of differences of probabilities). The
# discriminator's is the relativistic standard form, patch by patch; the generator's the
# relativistic average form, halved.


def sli_d_loss(real_out: torch.Tensor, fake_out: torch.Tensor) -> torch.Tensor:
    """Discriminator loss: BCE-with-logits(d(real) - d(fake), 1), patch by patch. Scalar."""
    return _bce(real_out - fake_out, 1.0)


def sli_g_loss(real_out: torch.Tensor, fake_out: torch.Tensor) -> torch.Tensor:
    """Generator adversarial loss: [BCE(d(real) - mean d(fake), 0) + BCE(d(fake) - mean d(real), 1)]
    / 2 (the weight, official 0.2, is applied by the caller). Scalar."""
    return (_bce(real_out - fake_out.mean(), 0.0) + _bce(fake_out - real_out.mean(), 1.0)) / 2
