"""CFGAN reverse attack on SIFT features (the CFGAN paper; SPEC §2): a coarse generator, then a
fine generator on the SIFT map and the frozen coarse image, each trained with L1 + perceptual +
RaGAN + SIFT losses.

Stages ``coarse`` and ``fine`` (``attack.stages: [coarse]`` is Table IV "w/o fine net"). The
fine stage gets the *trained* coarse net from the runner (the official fine-stage script forgets
to load it — a bug not copied), frozen in eval mode and saved in the fine checkpoint.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from torch import nn

from reconattack.attacks.base import Attack, GANStage
from reconattack.errors import ConfigError
from reconattack.losses.gan import ragan_d_loss, ragan_g_loss
from reconattack.losses.perceptual import VGGFeatures, perceptual_loss, style_loss
from reconattack.losses.pixel import pixel_loss
from reconattack.losses.sift import SiftLoss
from reconattack.utils.config import build
from reconattack.utils.weights import MissingWeightsError

log = logging.getLogger(__name__)

LOSS_TERMS = ("pix", "per", "adv", "sift", "style")


class CFGANStage(GANStage):
    """One CFGAN stage (``"coarse"`` or ``"fine"``).

    Batches (the SIFT threat's): ``"input"`` (B, 128, S, S) SIFT maps, ``"target"`` (B, 3, H, H)
    images in [-1, 1].

    Args:
        stage: ``"coarse"`` or ``"fine"``.
        generator: :class:`~reconattack.models.cfgan.CoarseGenerator` or ``FineGenerator``.
        discriminator: :class:`~reconattack.models.cfgan.Discriminator` (used when ``adv > 0``).
        loss_weights: ``{"pix", "per", "adv", "sift", "style"}`` (paper 1 / 0.01 / 0.02 / 0.01 / 0).
        coarse: the trained coarse generator for the fine stage (frozen, eval mode).
        vgg: VGG feature taps, required when ``per`` or ``style`` is positive.
        **gan: :class:`~reconattack.attacks.base.GANStage` settings (optimisers, schedule,
            gradient clipping, iterations).
    """

    def __init__(self, stage: str, generator: nn.Module, discriminator: nn.Module | None,
                 loss_weights: dict, coarse: nn.Module | None = None, vgg: VGGFeatures | None = None,
                 **gan: Any):
        if stage not in ("coarse", "fine"):
            raise ConfigError(f"CFGAN stages are 'coarse' and 'fine', got {stage!r}")
        if stage == "fine" and coarse is None:
            raise ValueError("the fine stage needs the trained coarse generator")
        unknown = set(loss_weights) - set(LOSS_TERMS)
        if unknown:
            raise ConfigError(f"unknown loss weights {sorted(unknown)}; known: {LOSS_TERMS}")
        w = {k: float(loss_weights.get(k, 0.0)) for k in LOSS_TERMS}
        if (w["per"] > 0 or w["style"] > 0) and vgg is None:
            raise ConfigError("loss.per / loss.style > 0 need VGG19 features")
        if w["adv"] > 0 and discriminator is None:
            raise ConfigError("loss.adv > 0 needs a discriminator")
        super().__init__(discriminator if w["adv"] > 0 else None, log_prefix=f"{stage}/train/", **gan)
        self.w = w
        self.stage = stage
        self.generator = generator
        self.coarse = self.freeze("coarse", coarse) if coarse is not None else None
        self.attach("vgg", vgg)
        self.attach("sift_loss", SiftLoss() if w["sift"] > 0 else None)

    def coarse_image(self, sift: torch.Tensor) -> torch.Tensor:
        """Output of the frozen coarse net, (B, 3, H, H), no gradients."""
        with torch.no_grad():
            return self.coarse(sift)

    def forward(self, sift: torch.Tensor) -> torch.Tensor:
        """SIFT map (B, 128, S, S) -> reconstruction (B, 3, H, H), trained toward [-1, 1]."""
        if self.stage == "coarse":
            return self.generator(sift)
        return self.generator(sift, self.coarse_image(sift))

    def reconstruct(self, batch: dict) -> torch.Tensor:
        return self(batch["input"])

    def intermediates(self, batch: dict) -> dict[str, torch.Tensor]:
        return {"coarse": self.coarse_image(batch["input"])} if self.stage == "fine" else {}

    # -------------------------------------------------------------------------------- losses
    def generate(self, batch: dict) -> torch.Tensor:
        return self(batch["input"])

    def discriminator_loss(self, batch: dict, fake: torch.Tensor) -> torch.Tensor:
        return ragan_d_loss(self.discriminator(batch["target"]), self.discriminator(fake))

    def generator_losses(self, batch: dict, fake: torch.Tensor) -> dict[str, torch.Tensor]:
        """Weighted generator loss terms and their sum ``"total"`` (paper eq. 10)."""
        real = batch["target"]
        terms = {"pix": pixel_loss(fake, real)}
        if self.discriminator is not None:
            terms["adv"] = ragan_g_loss(self.discriminator(real), self.discriminator(fake))
        vgg = self.attached("vgg")
        if vgg is not None:
            fp, fr = vgg(fake), vgg(real)
            if self.w["per"] > 0:
                terms["per"] = perceptual_loss(fp, fr)
            if self.w["style"] > 0:
                terms["style"] = style_loss(fp, fr)
        sift_loss = self.attached("sift_loss")
        if sift_loss is not None:
            terms["sift"] = sift_loss(fake, real)
        terms["total"] = sum(self.w[k] * v for k, v in terms.items())
        return terms


class CoarseToFine(nn.Module):
    """The whole CFGAN at inference: SIFT map (B, 128, S, S) -> fine(map, coarse(map))."""

    def __init__(self, coarse: nn.Module, fine: nn.Module) -> None:
        super().__init__()
        self.coarse, self.fine = coarse, fine

    def forward(self, sift: torch.Tensor) -> torch.Tensor:
        return self.fine(sift, self.coarse(sift))


def init_fine_from_coarse(fine: nn.Module, coarse: nn.Module) -> int:
    """Warm start (not in the paper): copy the trained coarse generator's encoder into the fine
    net's SIFT encoder and its decoder into the fine decoder, where shapes match.

    Returns the number of tensors copied. Only for ``fusion`` paper/official (the two share the
    coarse net's encoder and decoder layout).
    """
    if not hasattr(fine, "sift_encoder"):
        raise ConfigError("attack.fine_init_from_coarse needs model.fine.fusion paper or official")
    copied = 0
    for dst, src in ((fine.sift_encoder, coarse.encoder), (fine.decoder, coarse.decoder)):
        dst_state = dst.state_dict()
        for k, v in src.state_dict().items():
            if k in dst_state and dst_state[k].shape == v.shape:
                dst_state[k] = v.clone()
                copied += 1
        dst.load_state_dict(dst_state)
    return copied


class CFGAN(Attack):
    """The CFGAN attack (see the module docstring).

    Args:
        optimizer: G optimiser (partial; paper: Adam 1e-4, betas (0.9, 0.999)); also D's unless
            ``optimizer_d``.
        optimizer_d: D optimiser (partial) or None.
        lr_scheduler: schedule factory (partial, ``f(optimizer, total_steps)``) or None (paper:
            constant).
        grad_clip: max gradient norm or None.
        fine_init_from_coarse: start the fine net's SIFT encoder and decoder from the trained
            coarse net (not in the paper).
        **base: :class:`~reconattack.attacks.base.Attack` settings; ``model`` holds ``coarse``,
            ``fine`` and ``discriminator`` network configs, ``loss`` the weights and the
            ``perceptual`` settings.
    """

    reads = frozenset({"sift_map", "paired_images"})

    def __init__(self, optimizer: Any, optimizer_d: Any = None, lr_scheduler: Any = None,
                 grad_clip: float | None = None, fine_init_from_coarse: bool = False, **base: Any):
        super().__init__(**base)
        bad = [s for s in self.stages if s not in ("coarse", "fine")]
        if bad or self.stages[0] != "coarse":
            raise ConfigError(f"attack.stages must be [coarse] or [coarse, fine], got {self.stages}")
        self.optimizer_cfg, self.optimizer_d_cfg = optimizer, optimizer_d
        self.lr_scheduler_cfg, self.grad_clip = lr_scheduler, grad_clip
        self.fine_init_from_coarse = bool(fine_init_from_coarse)
        self.weights = {k: float(self.loss_cfg.get(k, 0.0)) for k in LOSS_TERMS}
        self._vgg: VGGFeatures | None = None

    def check(self, threat) -> None:
        self._vgg = self.vgg()  # fails early, before any training, when VGG weights are missing

    def vgg(self) -> VGGFeatures | None:
        if self.weights["per"] <= 0 and self.weights["style"] <= 0:
            return None
        p = self.loss_cfg.perceptual
        try:
            return VGGFeatures(layers=p.layers, weights_path=p.weights_path, download=p.download,
                               arch=str(p.get("arch", "vgg19")))
        except MissingWeightsError as exc:
            raise MissingWeightsError(
                f"{exc}\nThe perceptual/style loss needs pretrained VGG weights; refusing to train "
                f"with random ones. Place the file, set loss.perceptual.weights_path=..., or set "
                f"loss.per=0 loss.style=0.") from exc

    def generator(self, stage: str, threat) -> nn.Module:
        return build(self.model_cfg[stage], final_scale=threat.image_size // threat.map_size)

    def build_stage(self, stage: str, threat, previous: CFGANStage | None) -> CFGANStage:
        generator = self.generator(stage, threat)
        disc = build(self.model_cfg.discriminator) if self.weights["adv"] > 0 else None
        coarse = None
        if stage == "fine":  # a frozen copy of the trained coarse generator
            coarse = copy.deepcopy(previous.generator)
            if self.fine_init_from_coarse:
                log.info("fine stage: warm start from the coarse net (%d tensors)",
                         init_fine_from_coarse(generator, coarse))
        return CFGANStage(stage, generator, disc, self.weights, coarse=coarse, vgg=self._vgg,
                          optimizer=build(self.optimizer_cfg), optimizer_d=self.optimizer(self.optimizer_d_cfg),
                          lr_scheduler=self.optimizer(self.lr_scheduler_cfg), grad_clip=self.grad_clip,
                          iterations=self.steps[stage])

    def profile_models(self, threat) -> dict:
        sift = threat.input_example()
        image = torch.zeros(1, 3, threat.image_size, threat.image_size)
        coarse = self.generator("coarse", threat).eval()
        rows = {"coarse": (coarse, (sift,))}
        whole = coarse
        if "fine" in self.stages:
            fine = self.generator("fine", threat).eval()
            rows["fine"] = (fine, (sift, image))
            whole = CoarseToFine(coarse, fine)
        rows["discriminator"] = (build(self.model_cfg.discriminator).eval(), (image,))
        rows[f"{self.label} (inference)"] = (whole, (sift,))
        return rows
