"""INV — Pittaluga et al., *Revealing scenes by inverting structure from motion reconstructions*
(CVPR 2019; ``francescopittaluga/invsfm``) — as the CFGAN paper's baseline on SIFT maps (Table I;
SPEC §2.5). Its VisibNet needs 3-D points and does not apply to SIFT maps; the two other stages:

- ``coarse``: CoarseNet, a U-Net (:class:`reconattack.models.inv.InvNet`) from the SIFT map to
  the image, trained with pixel (L1) + perceptual (VGG16 relu1_1 / relu2_2 / relu3_3, mean
  squared error averaged over the layers) losses;
- ``refine``: RefineNet, a second U-Net on the SIFT map and the frozen CoarseNet's image, trained
  with the same losses plus an adversarial one against
  :class:`~reconattack.models.inv.InvDiscriminator`, which sees the image with what RefineNet
  was given. InvSfM updates the discriminator only while its loss is above a threshold (0.1).

On the SIFT threat's compressed map (half the image side) RefineNet takes the map and the coarse
image folded to the map's resolution (pixel unshuffle: 3 x 2 x 2 channels) and upsamples like
CoarseNet; the discriminator works at the image's resolution on the image, the coarse image and
the map (nearest-upsampled).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from reconattack.attacks.base import Attack, GANStage
from reconattack.errors import ConfigError
from reconattack.losses.perceptual import VGGFeatures, perceptual_loss
from reconattack.losses.pixel import pixel_loss
from reconattack.utils.config import build
from reconattack.utils.weights import MissingWeightsError

LOSS_TERMS = ("pix", "per", "adv")


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def refine_input(sift: torch.Tensor, coarse: torch.Tensor, scale: int) -> torch.Tensor:
    """RefineNet's input: the map (B, C, S, S) and the coarse image (B, 3, S·scale, S·scale) folded
    to the map's resolution (pixel unshuffle), (B, C + 3·scale², S, S)."""
    folded = F.pixel_unshuffle(coarse, scale) if scale > 1 else coarse
    return torch.cat([sift, folded.to(sift.dtype)], dim=1)


class INVStage(GANStage):
    """CoarseNet (``"coarse"``) or RefineNet (``"refine"``).

    Batches (the SIFT threat's): ``"input"`` (B, 128, S, S) maps, ``"target"`` (B, 3, H, H) in
    [-1, 1], H = S * ``final_scale``.

    Args:
        stage: ``"coarse"`` or ``"refine"``.
        net: the stage's :class:`~reconattack.models.inv.InvNet`.
        discriminator: :class:`~reconattack.models.inv.InvDiscriminator` (refine, ``adv > 0``).
        loss_weights: ``{"pix", "per", "adv"}``.
        coarse: the trained CoarseNet for the refine stage (frozen, eval mode, in the checkpoint).
        vgg: VGG16 feature taps, required when ``per > 0``.
        d_threshold: update the discriminator only while its loss exceeds this (InvSfM: 0.1).
        final_scale: image side / map side.
        **gan: :class:`~reconattack.attacks.base.GANStage` settings.
    """

    def __init__(self, stage: str, net: nn.Module, discriminator: nn.Module | None, loss_weights: dict,
                 coarse: nn.Module | None = None, vgg: VGGFeatures | None = None,
                 d_threshold: float = 0.0, final_scale: int = 1, **gan: Any) -> None:
        if stage not in ("coarse", "refine"):
            raise ConfigError(f"INV stages are 'coarse' and 'refine', got {stage!r}")
        if stage == "refine" and coarse is None:
            raise ValueError("the refine stage needs the trained CoarseNet")
        w = {k: float(loss_weights.get(k, 0.0)) for k in LOSS_TERMS}
        if w["per"] > 0 and vgg is None:
            raise ConfigError("loss.per > 0 needs VGG16 features")
        use_d = stage == "refine" and w["adv"] > 0
        if use_d and discriminator is None:
            raise ConfigError("loss.adv > 0 needs a discriminator for the refine stage")
        super().__init__(discriminator if use_d else None, log_prefix=f"{stage}/train/", **gan)
        self.stage, self.w, self.net = stage, w, net
        self.coarse = self.freeze("coarse", coarse) if coarse is not None else None
        self.attach("vgg", vgg)
        self.d_threshold, self.final_scale = float(d_threshold), int(final_scale)

    # ------------------------------------------------------------------------------ forward
    def coarse_image(self, sift: torch.Tensor) -> torch.Tensor:
        """The frozen CoarseNet's image, (B, 3, H, H), no gradients."""
        with torch.no_grad():
            return self.coarse(sift)

    def _forward(self, batch: dict) -> torch.Tensor:
        sift = batch["input"]
        if self.stage == "coarse":
            return self.net(sift)
        batch["coarse"] = self.coarse_image(sift)
        return self.net(refine_input(sift, batch["coarse"], self.final_scale))

    def reconstruct(self, batch: dict) -> torch.Tensor:
        return self._forward(dict(batch))

    def intermediates(self, batch: dict) -> dict[str, torch.Tensor]:
        return {"coarse": self.coarse_image(batch["input"])} if self.stage == "refine" else {}

    # ------------------------------------------------------------------------------- losses
    def generate(self, batch: dict) -> torch.Tensor:
        return self._forward(batch)

    def _d_input(self, batch: dict, image: torch.Tensor) -> torch.Tensor:
        sift = F.interpolate(batch["input"], scale_factor=self.final_scale, mode="nearest") \
            if self.final_scale > 1 else batch["input"]
        return torch.cat([image, batch["coarse"], sift.to(image.dtype)], dim=1)

    def discriminator_loss(self, batch: dict, fake: torch.Tensor) -> torch.Tensor:
        """Two-class cross-entropy of InvSfM on (fake, real), as one logit: mean of the two BCEs."""
        real = self.discriminator(self._d_input(batch, batch["target"]))
        fake_logits = self.discriminator(self._d_input(batch, fake))
        return 0.5 * (_bce(real, 1.0) + _bce(fake_logits, 0.0))

    def update_discriminator(self, d_loss: torch.Tensor) -> bool:
        return bool(d_loss.detach() > self.d_threshold)

    def generator_losses(self, batch: dict, fake: torch.Tensor) -> dict[str, torch.Tensor]:
        real = batch["target"]
        terms = {"pix": pixel_loss(fake, real)}
        vgg = self.attached("vgg")
        if vgg is not None and self.w["per"] > 0:
            terms["per"] = perceptual_loss(vgg(fake), vgg(real), distance="mse_mean")
        if self.discriminator is not None:
            terms["adv"] = _bce(self.discriminator(self._d_input(batch, fake)), 1.0)
        terms["total"] = sum(self.w[k] * v for k, v in terms.items())
        return terms


class INV(Attack):
    """The INV baseline (see the module docstring).

    Args:
        optimizer: partial optimiser (InvSfM: Adam 1e-4, beta1 0.9, eps 1e-8), also the
            discriminator's unless ``optimizer_d``.
        optimizer_d: partial optimiser for the discriminator, or None.
        lr_scheduler: partial schedule ``f(optimizer, total_steps)`` or None.
        grad_clip: max gradient norm or None.
        **base: :class:`~reconattack.attacks.base.Attack` settings; ``model`` holds ``coarse``,
            ``refine`` and ``discriminator`` configs, ``loss`` the weights, ``d_threshold`` and the
            ``perceptual`` settings.
    """

    reads = frozenset({"sift_map", "paired_images"})

    def __init__(self, optimizer: Any, optimizer_d: Any = None, lr_scheduler: Any = None,
                 grad_clip: float | None = None, **base: Any) -> None:
        super().__init__(**base)
        if self.stages not in (["coarse"], ["coarse", "refine"]):
            raise ConfigError(f"attack.stages must be [coarse] or [coarse, refine], got {self.stages}")
        self.optimizer_cfg, self.optimizer_d_cfg = optimizer, optimizer_d
        self.lr_scheduler_cfg, self.grad_clip = lr_scheduler, grad_clip
        self.weights = {k: float(self.loss_cfg.get(k, 0.0)) for k in LOSS_TERMS}
        self._vgg: VGGFeatures | None = None

    def check(self, threat) -> None:
        if self.weights["per"] <= 0:
            return
        p = self.loss_cfg.perceptual
        try:
            self._vgg = VGGFeatures(layers=p.layers, weights_path=p.weights_path, download=p.download,
                                    arch=str(p.get("arch", "vgg16")))
        except MissingWeightsError as exc:
            raise MissingWeightsError(
                f"{exc}\nThe perceptual loss needs pretrained VGG16 weights; refusing to train with "
                "random ones. Place the file, set loss.perceptual.weights_path=..., or set loss.per=0.") from exc

    def _scale(self, threat) -> int:
        return threat.image_size // threat.map_size

    def net(self, stage: str, threat) -> nn.Module:
        s = self._scale(threat)
        in_ch = threat.input_example().shape[1] + (3 * s * s if stage == "refine" else 0)
        return build(self.model_cfg[stage], in_ch=in_ch, final_scale=s)

    def discriminator(self, threat) -> nn.Module:
        return build(self.model_cfg.discriminator, in_ch=6 + threat.input_example().shape[1],
                     image_size=threat.image_size)

    def build_stage(self, stage: str, threat, previous: INVStage | None) -> INVStage:
        disc = self.discriminator(threat) if stage == "refine" and self.weights["adv"] > 0 else None
        coarse = copy.deepcopy(previous.net) if stage == "refine" else None
        return INVStage(stage, self.net(stage, threat), disc, self.weights, coarse=coarse, vgg=self._vgg,
                        d_threshold=float(self.loss_cfg.get("d_threshold", 0.0)),
                        final_scale=self._scale(threat), optimizer=build(self.optimizer_cfg),
                        optimizer_d=self.optimizer(self.optimizer_d_cfg),
                        lr_scheduler=self.optimizer(self.lr_scheduler_cfg), grad_clip=self.grad_clip,
                        iterations=self.steps[stage])

    def profile_models(self, threat) -> dict:
        sift = threat.input_example()
        s = self._scale(threat)
        coarse = self.net("coarse", threat).eval()
        rows = {"coarse": (coarse, (sift,))}
        whole: nn.Module = coarse
        if "refine" in self.stages:
            refine = self.net("refine", threat).eval()
            image = torch.zeros(1, 3, threat.image_size, threat.image_size)
            rows["refine"] = (refine, (refine_input(sift, image, s),))
            rows["discriminator"] = (self.discriminator(threat).eval(),
                                     (torch.zeros(1, 6 + sift.shape[1], threat.image_size, threat.image_size),))
            whole = CoarseToRefine(coarse, refine, s)
        rows[f"{self.label} (inference)"] = (whole, (sift,))
        return rows


class CoarseToRefine(nn.Module):
    """The whole INV at inference: SIFT map (B, 128, S, S) -> RefineNet(map, CoarseNet(map))."""

    def __init__(self, coarse: nn.Module, refine: nn.Module, scale: int) -> None:
        super().__init__()
        self.coarse, self.refine, self.scale = coarse, refine, int(scale)

    def forward(self, sift: torch.Tensor) -> torch.Tensor:
        return self.refine(refine_input(sift, self.coarse(sift), self.scale))
