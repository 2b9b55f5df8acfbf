"""IVR — Dosovitskiy & Brox, *Inverting visual representations with convolutional networks*
(CVPR 2016) — as the CFGAN paper's baseline on SIFT maps (Table I; SPEC §2.5): one network
(:class:`reconattack.models.ivr.IVRNet`) from the SIFT threat's map to the image, trained with a
pixel loss alone. One stage, ``ivr``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from reconattack.attacks.base import Attack, GANStage
from reconattack.errors import ConfigError
from reconattack.utils.config import build

PIXEL_LOSSES = ("l1", "l2")


class IVRStage(GANStage):
    """The IVR network trained on (SIFT map, image) pairs with a pixel loss (no discriminator).

    Batches (the SIFT threat's): ``"input"`` (B, 128, S, S) maps, ``"target"`` (B, 3, H, H) in
    [-1, 1]. ``pixel``: ``"l2"`` (mean squared error, the paper's Euclidean loss) or ``"l1"``.
    """

    def __init__(self, net: nn.Module, pixel: str = "l2", **gan: Any) -> None:
        if pixel not in PIXEL_LOSSES:
            raise ConfigError(f"loss.pixel must be one of {PIXEL_LOSSES}, got {pixel!r}")
        super().__init__(None, log_prefix="ivr/train/", **gan)
        self.net = net
        self.pixel = pixel

    def reconstruct(self, batch: dict) -> torch.Tensor:
        return self.net(batch["input"])

    def generate(self, batch: dict) -> torch.Tensor:
        return self.net(batch["input"])

    def generator_losses(self, batch: dict, fake: torch.Tensor) -> dict[str, torch.Tensor]:
        loss = (F.mse_loss if self.pixel == "l2" else F.l1_loss)(fake, batch["target"])
        return {"pix": loss, "total": loss}


class IVR(Attack):
    """The IVR baseline (see the module docstring).

    Args:
        optimizer: partial optimiser (not in the CFGAN paper: Adam 1e-4 as in Dosovitskiy & Brox).
        lr_scheduler: partial schedule ``f(optimizer, total_steps)`` or None.
        grad_clip: max gradient norm or None.
        **base: :class:`~reconattack.attacks.base.Attack` settings; ``model.net`` is the
            :class:`~reconattack.models.ivr.IVRNet` config, ``loss.pixel`` the pixel loss.
    """

    reads = frozenset({"sift_map", "paired_images"})

    def __init__(self, optimizer: Any, lr_scheduler: Any = None, grad_clip: float | None = None,
                 **base: Any) -> None:
        super().__init__(**base)
        self.optimizer_cfg, self.lr_scheduler_cfg, self.grad_clip = optimizer, lr_scheduler, grad_clip

    def net(self, threat) -> nn.Module:
        return build(self.model_cfg.net, in_ch=threat.input_example().shape[1],
                     final_scale=threat.image_size // threat.map_size)

    def build_stage(self, stage: str, threat, previous) -> IVRStage:
        return IVRStage(self.net(threat), pixel=str(self.loss_cfg.get("pixel", "l2")),
                        optimizer=build(self.optimizer_cfg), lr_scheduler=self.optimizer(self.lr_scheduler_cfg),
                        grad_clip=self.grad_clip, iterations=self.steps[stage])

    def profile_models(self, threat) -> dict:
        net = self.net(threat).eval()
        x = threat.input_example()
        return {"ivr": (net, (x,)), f"{self.label} (inference)": (net, (x,))}
