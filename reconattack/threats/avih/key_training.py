"""Training the client's key model (SPEC §3.1): ``threat.key.train``.

The AVIH attack paper says only that the key model is "the standard U-Net" (§IV-A); the AVIH
paper's official code takes a frozen pix2pix generator trained elsewhere. A key must map the
noise-like encrypted images back to natural images: the encryption searches, for each gallery
image x, an x' far from x (the difference and VC terms) with G(x') ≈ x (the recovery term). A
random network can do that only by chance, through whatever its random weights happen to
compute; a network trained to *restore* images of the category from heavy corruption has, by
training, a large set of noise-like inputs that it maps onto natural images of the category.

Objective implemented: **blind denoising** on the victim's own images of the category (never the
attacker's auxiliary images, nor the gallery: the key the attacker must undo is not fitted to the
attacker's prior; ``data.victim``, or the embedded demos' victim split) — a
restoration network, as the official key (a pix2pix generator) is an image-to-image network. Each
training image x in [0, 1] gets Gaussian noise of a level drawn per image, σ ~ U(0, ``noise``) on
the [0, 1] scale, and the key learns G(clamp(x + σ ε, 0, 1)) ≈ x with an L1 loss (pix2pix's
reconstruction term). ``signal: [lo, hi]`` trains it instead to recover a faint copy of the image
buried in uniform noise, a x + (1 - a) u with a ~ U(lo, hi): a key made for hiding, whose
recoveries are much closer to the originals (the demo: README, "Trained key models"). Each key
model starts from its own seed and sees its own noise and order (``seed + i``), so the keys differ
as private keys must. The client trains it once: a content-addressed artifact, like the demo's
face models.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler


class KeyDenoiser(pl.LightningModule):
    """Trains a key model (:class:`reconattack.models.keys.KeyModel`, (B, 3, H, W) in [-1, 1] →
    same) as a blind denoiser (see the module docstring).

    Args:
        key: the key model, trained in place.
        noise: the largest noise level σ, on the [0, 1] image scale (each image draws its own
            σ ~ U(0, noise)).
        lr, betas: Adam settings (pix2pix's 2e-4, (0.5, 0.999)).
        signal: (lo, hi), or None: train on faint copies in uniform noise instead (:meth:`corrupt`).
    """

    def __init__(self, key: nn.Module, noise: float = 1.0, lr: float = 2e-4,
                 betas: tuple[float, float] = (0.5, 0.999), signal: tuple[float, float] | None = None) -> None:
        super().__init__()
        if noise <= 0 or lr <= 0:
            raise ValueError(f"key training needs noise > 0 and lr > 0, got {noise}, {lr}")
        self.key = key
        self.noise, self.lr, self.betas = float(noise), float(lr), tuple(float(b) for b in betas)
        self.signal = tuple(float(s) for s in signal) if signal is not None else None

    def corrupt(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] → the same images with Gaussian noise of a level drawn per image
        (σ ~ U(0, noise) on the [0, 1] scale), clamped to the image range; with ``signal``
        (lo, hi): a faint copy in uniform noise, a x + (1 - a) u on the [0, 1] scale with
        a ~ U(lo, hi) per image and u ~ U(0, 1) per pixel."""
        b = x.shape[0]
        if self.signal is not None:
            lo, hi = self.signal
            a = lo + (hi - lo) * torch.rand(b, 1, 1, 1, device=x.device, dtype=x.dtype)
            return (a * (x + 1) / 2 + (1 - a) * torch.rand_like(x)) * 2 - 1
        sigma = self.noise * torch.rand(b, 1, 1, 1, device=x.device, dtype=x.dtype)
        return (x + 2 * sigma * torch.randn_like(x)).clamp(-1, 1)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        x = batch
        loss = (self.key(self.corrupt(x)) - x).abs().mean()
        self.log("train/l1", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=x.shape[0])
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.key.parameters(), lr=self.lr, betas=self.betas)


class _Draws(Sampler[int]):
    """``n`` indices into ``size`` items, drawn with replacement from ``seed``."""

    def __init__(self, size: int, n: int, seed: int) -> None:
        self.size, self.n, self.seed = int(size), int(n), int(seed)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed)
        return iter(torch.randint(self.size, (self.n,), generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def key_train_loader(images: Dataset, steps: int, batch_size: int, seed: int,
                     num_workers: int = 0) -> DataLoader:
    """Exactly ``steps`` batches of ``batch_size`` images of ``images`` (items (3, H, W) in
    [-1, 1]), drawn with replacement in an order fixed by ``seed``."""
    if len(images) == 0:
        raise ValueError("key training needs the victim's images; the set is empty")
    return DataLoader(images, batch_size=batch_size, sampler=_Draws(len(images), steps * batch_size, seed),
                      drop_last=True, num_workers=num_workers)
