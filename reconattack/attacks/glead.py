"""GleaD — Bai et al., *GLeaD: Improving GANs with a generator-leading task* (CVPR 2023) — as the
CFGAN paper's baseline on SIFT maps (Table I; SPEC §2.5). The CFGAN paper "adopted the released
code" and trained it on SIFT maps without saying how; that code is unconditional StyleGAN2-ADA
under NVIDIA's non-commercial licence, not used here. This is a SIFT-conditioned version built
from the GLeaD paper:

- **generator** (:class:`reconattack.models.glead.GleaDGenerator`): a SIFT-map encoder gives a
  StyleGAN2-style synthesis network its start feature map and one latent code per block (in place
  of StyleGAN2's learnt constant and mapping network: the map decides the image);
- **discriminator** (:class:`~reconattack.models.glead.GleaDDiscriminator`): StyleGAN2's residual
  discriminator, trained with the non-saturating logistic loss and the R1 penalty on real images;
- **the generator-leading task** (the paper's contribution): the discriminator also extracts,
  from its features of a real or a generated image, a start map and codes that the generator's
  synthesis decodes back into the image; the reconstruction error is added to the
  discriminator's loss (the generator is fixed for it), so D must learn features G can decode;
- the generator's loss: the adversarial term and, as the attack has pairs, an L1 term to the
  ground-truth image (and, with pretrained VGG19, a perceptual one).

One stage (``glead``). What the GLeaD paper fixes and what was chosen: ``conf/model/glead_paper.yaml``
and ``conf/loss/glead.yaml``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from reconattack.attacks.base import Attack, GANStage
from reconattack.errors import ConfigError
from reconattack.losses.perceptual import VGGFeatures, perceptual_loss
from reconattack.utils.config import build
from reconattack.utils.weights import MissingWeightsError

LOSS_TERMS = ("l1", "per", "adv", "r1", "lead")


def leading_loss(generator: nn.Module, discriminator: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """GLeaD's reconstruction error of ``images`` (B, 3, H, W) in [-1, 1]: the discriminator's start
    map and codes decoded by the generator's synthesis, L1 to the images. Scalar. (The paper
    measures it with LPIPS; offline, L1.)"""
    _, spatial, ws = discriminator.leading(images)
    return F.l1_loss(generator.synthesis(spatial, ws), images)


class GleaDStage(GANStage):
    """The GleaD generator and discriminator (see the module docstring).

    Batches (the SIFT threat's): ``"input"`` (B, 128, S, S) maps, ``"target"`` (B, 3, H, W) in
    [-1, 1], H = 2 S.

    Args:
        generator, discriminator: the networks.
        weights: ``{"l1", "per", "adv", "r1", "lead"}`` (``r1``: gamma, the penalty is gamma / 2
            · ||∇D(real)||²).
        vgg: VGG19 taps for ``per`` > 0.
        r1_every, lead_every: lazy regularisation (StyleGAN2's for R1: every 16 iterations, the term
            multiplied by 16): the R1 penalty and the leading task every this many iterations.
        **gan: :class:`~reconattack.attacks.base.GANStage` settings.
    """

    def __init__(self, generator: nn.Module, discriminator: nn.Module | None, weights: dict,
                 vgg: VGGFeatures | None = None, r1_every: int = 16, lead_every: int = 1, **gan: Any) -> None:
        w = {k: float(weights.get(k, 0.0)) for k in LOSS_TERMS}
        if w["per"] > 0 and vgg is None:
            raise ConfigError("loss.per > 0 needs VGG19 features")
        super().__init__(discriminator if w["adv"] > 0 else None, log_prefix="glead/train/", **gan)
        self.generator, self.w = generator, w
        self.r1_every, self.lead_every = max(int(r1_every), 1), max(int(lead_every), 1)
        self.attach("vgg", vgg)

    def _due(self, every: int) -> bool:
        return (self.global_step // self.optimizer_steps_per_iteration) % every == 0

    def reconstruct(self, batch: dict) -> torch.Tensor:
        return self.generator(batch["input"])

    def generate(self, batch: dict) -> torch.Tensor:
        return self.generator(batch["input"])

    def discriminator_loss(self, batch: dict, fake: torch.Tensor) -> torch.Tensor:
        r1 = self.w["r1"] > 0 and self._due(self.r1_every)
        real = batch["target"].detach().requires_grad_(r1)
        real_logits = self.discriminator(real)
        loss = F.softplus(-real_logits).mean() + F.softplus(self.discriminator(fake)).mean()
        if r1:
            grad, = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
            loss = loss + self.w["r1"] * self.r1_every / 2 * grad.pow(2).sum((1, 2, 3)).mean()
        if self.w["lead"] > 0 and self._due(self.lead_every):  # the generator-leading task, real and fake
            lead = leading_loss(self.generator, self.discriminator, real.detach())
            lead = lead + leading_loss(self.generator, self.discriminator, fake)
            loss = loss + self.w["lead"] * self.lead_every * lead
        return loss

    def generator_losses(self, batch: dict, fake: torch.Tensor) -> dict[str, torch.Tensor]:
        real = batch["target"]
        terms = {"l1": F.l1_loss(fake, real)}
        vgg = self.attached("vgg")
        if vgg is not None and self.w["per"] > 0:
            terms["per"] = perceptual_loss(vgg(fake), vgg(real))
        if self.discriminator is not None:
            terms["adv"] = F.softplus(-self.discriminator(fake)).mean()
        terms["total"] = sum(self.w[k] * v for k, v in terms.items())
        return terms


class GleaD(Attack):
    """The GleaD baseline (see the module docstring).

    Args:
        optimizer, optimizer_d, lr_scheduler, grad_clip: as :class:`~reconattack.attacks.inv.INV`
            (StyleGAN2: Adam 2e-3 (0.0025 at 256), betas (0, 0.99)).
        **base: :class:`~reconattack.attacks.base.Attack` settings; ``model`` holds ``generator``
            and ``discriminator``, ``loss`` the weights and the ``perceptual`` settings.
    """

    reads = frozenset({"sift_map", "paired_images"})

    def __init__(self, optimizer: Any, optimizer_d: Any = None, lr_scheduler: Any = None,
                 grad_clip: float | None = None, **base: Any) -> None:
        super().__init__(**base)
        if self.stages != ["glead"]:
            raise ConfigError(f"attack.stages must be [glead], got {self.stages}")
        self.optimizer_cfg, self.optimizer_d_cfg = optimizer, optimizer_d
        self.lr_scheduler_cfg, self.grad_clip = lr_scheduler, grad_clip
        self.weights = {k: float(self.loss_cfg.get(k, 0.0)) for k in LOSS_TERMS}
        self._vgg: VGGFeatures | None = None

    def generator(self, threat) -> nn.Module:
        return build(self.model_cfg.generator, in_ch=threat.input_example().shape[1])

    def discriminator(self, threat, generator: nn.Module) -> nn.Module:
        """The discriminator, its leading heads sized for the generator's synthesis: they read its
        features after as many halvings as the synthesis doubles (its start resolution)."""
        syn = generator.synthesis
        return build(self.model_cfg.discriminator, spatial_ch=syn.in_ch, num_ws=syn.num_ws, w_dim=syn.w_dim,
                     image_size=threat.image_size, lead_at=syn.num_ws - 1)

    def check(self, threat) -> None:
        g = self.model_cfg.generator
        scale = 2 ** (len(g.synthesis) - 1) / 2 ** (len(g.encoder) - 1)
        if threat.map_size * scale != threat.image_size:
            raise ConfigError(f"GleaD's generator turns a {threat.map_size}-px map into a {threat.map_size * scale:g}-px "
                              f"image, the threat's images are {threat.image_size} px: change "
                              "model.generator.encoder / synthesis (their lengths set the scale)")
        d = len(self.model_cfg.discriminator.widths) - 1
        if threat.image_size % 2 ** d or threat.image_size // 2 ** d < 1:
            raise ConfigError(f"GleaD's discriminator halves {d} times: data.image_size={threat.image_size} does not divide")
        if self.weights["per"] <= 0:
            return
        p = self.loss_cfg.perceptual
        try:
            self._vgg = VGGFeatures(layers=p.layers, weights_path=p.weights_path, download=p.download)
        except MissingWeightsError as exc:
            raise MissingWeightsError(f"{exc}\nGleaD's perceptual loss needs pretrained VGG19 weights; refusing "
                                      "to train with random ones. Set loss.per=0 or give the file.") from exc

    def build_stage(self, stage: str, threat, previous) -> GleaDStage:
        gen = self.generator(threat)
        disc = self.discriminator(threat, gen) if self.weights["adv"] > 0 else None
        return GleaDStage(gen, disc, self.weights, vgg=self._vgg, r1_every=int(self.loss_cfg.get("r1_every", 16)),
                          lead_every=int(self.loss_cfg.get("lead_every", 1)), optimizer=build(self.optimizer_cfg),
                          optimizer_d=self.optimizer(self.optimizer_d_cfg),
                          lr_scheduler=self.optimizer(self.lr_scheduler_cfg), grad_clip=self.grad_clip,
                          iterations=self.steps[stage])

    def profile_models(self, threat) -> dict:
        sift = threat.input_example()
        gen = self.generator(threat).eval()
        disc = self.discriminator(threat, gen).eval()
        image = torch.zeros(1, 3, threat.image_size, threat.image_size)
        return {"generator": (gen, (sift,)), "discriminator (with its leading heads)": (_Leading(disc), (image,)),
                f"{self.label} (inference)": (gen, (sift,))}


class _Leading(nn.Module):
    """The discriminator with its leading heads, for profiling."""

    def __init__(self, disc: nn.Module) -> None:
        super().__init__()
        self.disc = disc

    def forward(self, x: torch.Tensor):
        return self.disc.leading(x)
