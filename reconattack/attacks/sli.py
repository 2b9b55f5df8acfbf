"""SLI — Wu & Zhou, *Privacy leakage of SIFT features via deep generative model based image
reconstruction* (IEEE TIFS 2021; official code ``HighwayWu/SIFT_Reconstruction``, read as facts)
— as the CFGAN paper's baseline on SIFT maps (Table I; SPEC §2.5). Two stages:

- ``lbp``: the LBP generator (:class:`reconattack.models.sli.SLIUNet`, nearest-upsampling
  decoder) from the SIFT map to the local binary pattern of the image
  (:func:`reconattack.data.lbp.lbp_target`, computed on the batch's device from the paired
  image), trained with L1 (x100) + perceptual (x1, VGG19 relu1_1..relu5_1 on the LBP repeated to
  three channels) + relativistic adversarial (x0.2) losses against its PatchGAN;
- ``image``: the image generator (transposed-convolution decoder) from the SIFT map and the
  frozen LBP generator's output, trained with L1 (x100) + perceptual (x1) + style (x10, Gram
  matrices of relu2_2, relu3_4, relu4_4, relu5_2) + adversarial (x0.2) losses.

The official code trains both networks in one loop (``TRAIN_BOTH``; the image net on the LBP net's
current output), and says "the performance would be better if the LBP network is trained first":
here the LBP stage is trained first, then the image stage on its frozen output. SLI-B (a system
that shares keypoint positions only: the threat's 1-channel occupancy map) is the image stage
alone on that map (``attack=sli_b``).

The SLI map is the SIFT threat's with ``compress: false`` and ``placement: sli`` (colliding
keypoints moved to a free neighbour; :func:`reconattack.data.sift.maps.build_maps`); the ``sli_*``
experiments set both.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from reconattack.attacks.base import Attack, GANStage
from reconattack.data.lbp import lbp_target
from reconattack.errors import ConfigError
from reconattack.losses.gan import sli_d_loss, sli_g_loss
from reconattack.losses.perceptual import VGGFeatures, perceptual_loss, style_loss
from reconattack.models.sli import SLIPipeline
from reconattack.utils.config import build
from reconattack.utils.weights import MissingWeightsError

LOSS_TERMS = ("l1", "per", "style", "adv")
STAGES = ("lbp", "image")


class SLIStage(GANStage):
    """The LBP generator (``"lbp"``) or the image generator (``"image"``).

    Batches (the SIFT threat's): ``"input"`` (B, C, H, W) maps at the image's resolution (C = 128,
    or 1 for positions only), ``"target"`` (B, 3, H, W) in [-1, 1].

    Args:
        stage: ``"lbp"`` or ``"image"``.
        net: the stage's generator.
        discriminator: its PatchGAN, or None (``adv`` 0).
        weights: ``{"l1", "per", "style", "adv"}`` of this stage.
        lbp_net: the trained LBP generator for the image stage (frozen, in the checkpoint); None for
            SLI-B (the image net reads the map alone).
        vgg: VGG19 taps (:class:`~reconattack.losses.perceptual.VGGFeatures`), required when
            ``per`` or ``style`` > 0; ``per_taps`` / ``style_taps``: which of its outputs each uses.
        **gan: :class:`~reconattack.attacks.base.GANStage` settings.
    """

    def __init__(self, stage: str, net: nn.Module, discriminator: nn.Module | None, weights: dict,
                 lbp_net: nn.Module | None = None, vgg: VGGFeatures | None = None,
                 per_taps: tuple[int, ...] = (), style_taps: tuple[int, ...] = (), **gan: Any) -> None:
        if stage not in STAGES:
            raise ConfigError(f"SLI stages are {STAGES}, got {stage!r}")
        w = {k: float(weights.get(k, 0.0)) for k in LOSS_TERMS}
        if (w["per"] > 0 or w["style"] > 0) and vgg is None:
            raise ConfigError("loss per / style > 0 needs VGG19 features")
        super().__init__(discriminator if w["adv"] > 0 else None, log_prefix=f"{stage}/train/", **gan)
        self.stage, self.w, self.net = stage, w, net
        self.lbp_net = self.freeze("lbp_net", lbp_net) if lbp_net is not None else None
        self.attach("vgg", vgg)
        self.per_taps, self.style_taps = tuple(per_taps), tuple(style_taps)

    # ------------------------------------------------------------------------------ forward
    def lbp(self, sift: torch.Tensor) -> torch.Tensor:
        """The frozen LBP generator's structure map (B, 1, H, W) in [-1, 1], no gradients."""
        with torch.no_grad():
            return self.lbp_net(sift)

    def _forward(self, sift: torch.Tensor) -> torch.Tensor:
        if self.stage == "lbp" or self.lbp_net is None:
            return self.net(sift)
        return self.net(torch.cat([self.lbp(sift).to(sift.dtype), sift], dim=1))

    def reconstruct(self, batch: dict) -> torch.Tensor:
        out = self._forward(batch["input"])
        return out.expand(-1, 3, -1, -1) if self.stage == "lbp" else out

    def stage_target(self, batch: dict) -> torch.Tensor:
        """What this stage learns: the LBP of the paired image (lbp) or the image."""
        return lbp_target(batch["target"]).to(batch["target"].dtype) if self.stage == "lbp" else batch["target"]

    def validation_step(self, batch: dict, batch_idx: int) -> dict | None:
        if "target" not in batch:
            return None
        target = self.stage_target(batch)
        pred = self._forward(batch["input"]).detach().clamp(-1, 1)
        if self.stage == "lbp":  # the structure map against the image's: its own curves
            pred, target = pred.expand(-1, 3, -1, -1), target.expand(-1, 3, -1, -1)
        return {"pred": pred, "target": target}

    # ------------------------------------------------------------------------------- losses
    def generate(self, batch: dict) -> torch.Tensor:
        batch["stage_target"] = self.stage_target(batch)
        return self._forward(batch["input"])

    def discriminator_loss(self, batch: dict, fake: torch.Tensor) -> torch.Tensor:
        return sli_d_loss(self.discriminator(batch["stage_target"]), self.discriminator(fake))

    def generator_losses(self, batch: dict, fake: torch.Tensor) -> dict[str, torch.Tensor]:
        real = batch["stage_target"]
        terms = {"l1": F.l1_loss(fake, real)}
        vgg = self.attached("vgg")
        if vgg is not None and (self.w["per"] > 0 or self.w["style"] > 0):
            rgb = (lambda x: x.expand(-1, 3, -1, -1)) if self.stage == "lbp" else (lambda x: x)  # noqa: E731
            ff, fr = vgg(rgb(fake)), vgg(rgb(real))
            if self.w["per"] > 0:
                terms["per"] = perceptual_loss([ff[i] for i in self.per_taps], [fr[i] for i in self.per_taps])
            if self.w["style"] > 0:
                terms["style"] = style_loss([ff[i] for i in self.style_taps], [fr[i] for i in self.style_taps])
        if self.discriminator is not None:
            terms["adv"] = sli_g_loss(self.discriminator(real), self.discriminator(fake))
        terms["total"] = sum(self.w[k] * v for k, v in terms.items())
        return terms


class SLI(Attack):
    """SLI and SLI-B (see the module docstring).

    Args:
        optimizer: partial optimiser (official: Adam 1e-4, betas (0.9, 0.999)), also the
            discriminators' unless ``optimizer_d``.
        optimizer_d, lr_scheduler, grad_clip: as :class:`~reconattack.attacks.inv.INV`.
        **base: :class:`~reconattack.attacks.base.Attack` settings; ``model`` holds ``lbp``,
            ``image``, ``lbp_discriminator`` and ``image_discriminator`` configs, ``loss`` the
            per-stage weights (``lbp``, ``image``: ``{l1, per, style, adv}``) and the ``vgg`` taps.
    """

    reads = frozenset({"sift_map", "paired_images"})

    def __init__(self, optimizer: Any, optimizer_d: Any = None, lr_scheduler: Any = None,
                 grad_clip: float | None = None, **base: Any) -> None:
        super().__init__(**base)
        if self.stages not in (["lbp", "image"], ["image"]):
            raise ConfigError(f"attack.stages must be [lbp, image] (SLI) or [image] (SLI-B), got {self.stages}")
        self.optimizer_cfg, self.optimizer_d_cfg = optimizer, optimizer_d
        self.lr_scheduler_cfg, self.grad_clip = lr_scheduler, grad_clip
        self.weights = {s: {k: float((self.loss_cfg.get(s) or {}).get(k, 0.0)) for k in LOSS_TERMS}
                        for s in STAGES}
        self._vgg: VGGFeatures | None = None

    @property
    def with_lbp(self) -> bool:
        return "lbp" in self.stages

    def _taps(self) -> tuple[list[int], tuple[int, ...], tuple[int, ...]]:
        v = self.loss_cfg.vgg
        per, style = [int(i) for i in v.perceptual_layers], [int(i) for i in v.style_layers]
        layers = sorted({*per, *style})
        return layers, tuple(layers.index(i) for i in per), tuple(layers.index(i) for i in style)

    def check(self, threat) -> None:
        if threat.map_size != threat.image_size:
            raise ConfigError(f"SLI reads the map at the image's resolution ({threat.image_size}); the threat's "
                              f"is {threat.map_size}: set threat.compress=false (the sli_* experiments do)")
        depth = len(self.model_cfg.image.widths)
        if threat.image_size % 2 ** depth:
            raise ConfigError(f"SLI's U-Nets of {depth} stages take image sides divisible by {2 ** depth}, "
                              f"got data.image_size={threat.image_size}")
        if self.with_lbp and threat.input_example().shape[1] == 1:
            raise ConfigError("SLI's LBP stage reads descriptors; with threat.occupancy=true use attack=sli_b")
        if not any(w["per"] > 0 or w["style"] > 0 for s, w in self.weights.items() if s in self.stages):
            return
        v = self.loss_cfg.vgg
        try:
            self._vgg = VGGFeatures(layers=self._taps()[0], weights_path=v.weights_path, download=v.download)
        except MissingWeightsError as exc:
            raise MissingWeightsError(
                f"{exc}\nSLI's perceptual and style losses need pretrained VGG19 weights; refusing to train "
                "with random ones. Place the file, set loss.vgg.weights_path=..., or set the per / style "
                "weights to 0.") from exc

    def net(self, stage: str, threat) -> nn.Module:
        c = threat.input_example().shape[1]
        in_ch = c + (1 if stage == "image" and self.with_lbp else 0)
        return build(self.model_cfg[stage], in_ch=in_ch)

    def discriminator(self, stage: str) -> nn.Module:
        return build(self.model_cfg[f"{stage}_discriminator"])

    def build_stage(self, stage: str, threat, previous: SLIStage | None) -> SLIStage:
        w = self.weights[stage]
        disc = self.discriminator(stage) if w["adv"] > 0 else None
        lbp_net = copy.deepcopy(previous.net) if stage == "image" and self.with_lbp else None
        _, per, style = self._taps()
        return SLIStage(stage, self.net(stage, threat), disc, w, lbp_net=lbp_net, vgg=self._vgg,
                        per_taps=per, style_taps=style, optimizer=build(self.optimizer_cfg),
                        optimizer_d=self.optimizer(self.optimizer_d_cfg),
                        lr_scheduler=self.optimizer(self.lr_scheduler_cfg), grad_clip=self.grad_clip,
                        iterations=self.steps[stage])

    def profile_models(self, threat) -> dict:
        sift = threat.input_example()
        size = threat.image_size
        image = self.net("image", threat).eval()
        rows = {}
        whole: nn.Module = image
        if self.with_lbp:
            lbp = self.net("lbp", threat).eval()
            rows["LBP generator"] = (lbp, (sift,))
            rows["LBP discriminator"] = (self.discriminator("lbp").eval(), (torch.zeros(1, 1, size, size),))
            whole = SLIPipeline(lbp, image)
            rows["image generator"] = (image, (torch.zeros(1, sift.shape[1] + 1, size, size),))
        else:
            rows["image generator"] = (image, (sift,))
        rows["image discriminator"] = (self.discriminator("image").eval(), (torch.zeros(1, 3, size, size),))
        rows[f"{self.label} (inference)"] = (whole, (sift,))
        return rows
