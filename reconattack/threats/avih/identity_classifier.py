"""Training a recognition model (face or re-identification) as an identity classifier (the AVIH
threat's embedded demos build their service and evaluation models this way; real runs load
published checkpoints).

The embedder's unit embeddings feed a CosFace head (normalised class weights, scale ``s``,
additive margin ``m``), the usual way face models are trained so that cosine similarity of
embeddings separates identities (re-identification models are trained with an ID loss too,
TransReID's beside a triplet loss; for the demo's few identities the margin does the same).
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from reconattack.data.avih import LabelledImages
from reconattack.losses.identity import augment as random_shift


class IdentityClassifier(pl.LightningModule):
    """Embedder + CosFace head.

    Args:
        embedder: (B, 3, H, W) in [-1, 1] (and a batch's ``"side"`` as keywords: a
            re-identification model's cameras and views) → (B, E) unit embeddings
            (``embed_dim`` attribute).
        num_classes: identities.
        lr, weight_decay: AdamW settings.
        scale, margin: CosFace s and m.
        shift: random translation (pixels) used as augmentation; 0 disables it.
        color: random per-image colour change used as augmentation: per-channel gains in
            [1 - color, 1 + color] and offsets in [-color/2, color/2] on the [0, 1] scale (0
            disables it), so that
            cosine scores do not collapse on images with a colour cast (e.g. key-model
            recoveries) although the training images are grey.
    """

    def __init__(self, embedder: nn.Module, num_classes: int, lr: float = 1e-3,
                 weight_decay: float = 5e-4, scale: float = 16.0, margin: float = 0.2,
                 shift: int = 2, color: float = 0.0) -> None:
        super().__init__()
        self.embedder = embedder
        self.head = nn.Parameter(torch.randn(num_classes, embedder.embed_dim) * 0.01)
        self.lr, self.weight_decay = float(lr), float(weight_decay)
        self.scale, self.margin, self.shift = float(scale), float(margin), int(shift)
        self.color = float(color)

    def logits(self, emb: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        cos = emb @ F.normalize(self.head, dim=-1).t()
        if labels is not None:
            cos = cos - self.margin * F.one_hot(labels, cos.shape[1]).to(cos)
        return self.scale * cos

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x = batch["image"]
        if self.shift:
            x = random_shift(x, flip=False, pad=self.shift, crop=True)
        if self.color:
            b = x.shape[0]
            gain = 1 + self.color * (2 * torch.rand(b, 3, 1, 1, device=x.device) - 1)
            offset = self.color * (torch.rand(b, 3, 1, 1, device=x.device) - 0.5)
            x = (((x + 1) / 2 * gain + offset).clamp(0, 1)) * 2 - 1
        logits = self.logits(self.embedder(x, **(batch.get("side") or {})), batch["label"])
        loss = F.cross_entropy(logits, batch["label"])
        acc = (logits.argmax(-1) == batch["label"]).float().mean()
        self.log_dict({"train/loss": loss, "train/acc": acc}, on_step=True, on_epoch=False,
                      prog_bar=True, batch_size=x.shape[0])
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)


def train_loader(images, labels, steps: int, batch_size: int, seed: int,
                 num_workers: int = 0, side=None) -> DataLoader:
    """A loader of exactly ``steps`` batches of random labelled images (with their ``side``
    information, per image, when given)."""
    return DataLoader(LabelledImages(images, labels, steps * batch_size, seed, side), batch_size=batch_size,
                      shuffle=False, drop_last=True, num_workers=num_workers)
