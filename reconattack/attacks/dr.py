"""The DR attack against AVIH (the AVIH attack paper §III-B, eqs. 6–13; SPEC §3.3).

The attacker trains its own key model G_θ (a U-Net from a random initialisation) on the leaked
encrypted images x' that share the target key, with

- the **augmented identity loss** w_id · ‖f̂(A(G_θ(x'))) − f̂(x')‖ (A: random horizontal flip,
  padding, random crop; f̂: unit embedding of the white-box service model the threat gives), and
- the **GAN loss** against the threat's auxiliary images of the same category: a PatchGAN whose
  last layer is a tanh, in the JS-divergence form (:func:`reconattack.losses.gan.js_d_loss` /
  :func:`~reconattack.losses.gan.js_g_loss`), weight w_gan.

One stage (``attack``). Without the GAN loss (Table IV ablation) there is no discriminator.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import torch
from torch import nn

from reconattack.attacks.base import Attack, GANStage
from reconattack.losses.gan import js_d_loss, js_g_loss
from reconattack.losses.identity import augmented_identity_loss
from reconattack.models.keys import make_key_model
from reconattack.utils.config import build, factory, plain
from reconattack.utils.seeding import seeded

NO_AUGMENT = {"flip": False, "pad": 0, "crop": False}


class DRStage(GANStage):
    """Attacker key model + PatchGAN trained against AVIH-encrypted images.

    Batches (the AVIH threat's): ``"input"`` (B, 3, H, W) leaked encrypted images and ``"aux"``
    auxiliary images, both in [-1, 1]; ``"side"`` (optional): the leaked images' side
    information for the service model.

    Args:
        attacker: G_θ, (B, 3, H, W) in [-1, 1] → (B, 3, H, W) in [-1, 1].
        discriminator: PatchGAN with ``scores(x)`` (pre-tanh, (B, 1, h, w)), or None.
        service: the white-box service model, (B, 3, H, W) in [-1, 1] → (B, E) unit embeddings,
            given the batch's side information as keywords (``batch["side"]``: a re-identification
            model's cameras and views) (attached: frozen, not in checkpoints).
        weights: ``{identity, gan}`` loss weights (paper: 30 and 1).
        augment: :func:`reconattack.losses.identity.augment` arguments (``flip``, ``pad``,
            ``crop``), or None for the plain identity loss of eq. 6.
        identity_distance: distance of unit embeddings (``"l2"``, ``"l2sq"``, ``"cos"``, ``"mse"``;
            :func:`reconattack.losses.avih.task_loss`).
        gan_mode: ``"minimax"`` (eq. 12) or ``"non_saturating"``.
        **gan: :class:`~reconattack.attacks.base.GANStage` settings.
    """

    def __init__(self, attacker: nn.Module, discriminator: nn.Module | None, service: nn.Module,
                 weights: Mapping[str, float], augment: Mapping | None, identity_distance: str = "l2",
                 gan_mode: str = "minimax", **gan: Any) -> None:
        self.w_gan = float(weights.get("gan", 0.0))
        super().__init__(discriminator if self.w_gan > 0 else None, log_prefix="attack/train/", **gan)
        self.attacker = attacker
        self.attach("service", service)
        self.w_id = float(weights.get("identity", 1.0))
        self.augment = dict(augment) if augment else None
        self.identity_distance = identity_distance
        self.gan_mode = gan_mode

    def forward(self, x_enc: torch.Tensor) -> torch.Tensor:
        """Reconstruct: (B, 3, H, W) encrypted images in [-1, 1] → (B, 3, H, W) in [-1, 1]."""
        return self.attacker(x_enc)

    def reconstruct(self, batch: dict) -> torch.Tensor:
        return self(batch["input"])

    def generate(self, batch: dict) -> torch.Tensor:
        return self(batch["input"])

    def discriminator_loss(self, batch: dict, fake: torch.Tensor) -> torch.Tensor:
        return js_d_loss(self.discriminator.scores(batch["aux"]), self.discriminator.scores(fake))

    def generator_losses(self, batch: dict, fake: torch.Tensor) -> dict[str, torch.Tensor]:
        side = batch.get("side") or {}
        service = partial(self.attached("service"), **side) if side else self.attached("service")
        with torch.no_grad():
            target_emb = service(batch["input"])
        augment = self.augment or NO_AUGMENT  # eq. 6 (plain) or eq. 7 (augmented)
        terms = {"identity": augmented_identity_loss(service, fake, target_emb, augment,
                                                     distance=self.identity_distance).mean()}
        total = self.w_id * terms["identity"]
        if self.discriminator is not None:
            terms["adv"] = js_g_loss(self.discriminator.scores(fake), mode=self.gan_mode)
            total = total + self.w_gan * terms["adv"]
        terms["total"] = total
        return terms


class DRAttack(Attack):
    """The DR attack (see the module docstring).

    Args:
        optimizer, optimizer_d: partial optimisers (not in the paper: pix2pix's Adam 2e-4,
            betas (0.5, 0.999)).
        **base: :class:`~reconattack.attacks.base.Attack` settings; ``model`` holds the
            ``attacker`` (``net``: ``_target_``) and ``discriminator`` configs, ``loss`` the
            ``identity`` / ``gan`` weights, ``identity_distance``, ``gan_mode`` and ``augment``.
    """

    reads = frozenset({"encrypted_images", "auxiliary_images", "service_model"})

    def __init__(self, optimizer: Any, optimizer_d: Any = None, lr_scheduler: Any = None,
                 grad_clip: float | None = None, **base: Any) -> None:
        super().__init__(**base)
        self.optimizer_cfg, self.optimizer_d_cfg = optimizer, optimizer_d
        self.lr_scheduler_cfg, self.grad_clip = lr_scheduler, grad_clip

    def attacker(self, seed: int) -> nn.Module:
        return make_key_model(factory(self.model_cfg.attacker.net), seed=seed)

    def discriminator(self, seed: int) -> nn.Module:
        with seeded(seed):
            return build(self.model_cfg.discriminator)

    def build_stage(self, stage: str, threat, previous) -> DRStage:
        lw = self.loss_cfg
        seed = threat.seed
        disc = self.discriminator(seed + 1) if float(lw.gan) > 0 else None
        return DRStage(self.attacker(seed), disc, threat.given("service_model"),
                       weights={"identity": float(lw.identity), "gan": float(lw.gan)},
                       augment=plain(lw.augment) if lw.get("augment") else None,
                       identity_distance=str(lw.identity_distance), gan_mode=str(lw.gan_mode),
                       optimizer=build(self.optimizer_cfg), optimizer_d=self.optimizer(self.optimizer_d_cfg),
                       lr_scheduler=self.optimizer(self.lr_scheduler_cfg), grad_clip=self.grad_clip,
                       iterations=self.steps[stage])

    def profile_models(self, threat) -> dict:
        x = threat.input_example()
        attacker = self.attacker(0).eval()
        return {"attacker": (attacker, (x,)), "discriminator": (self.discriminator(1).eval(), (x,)),
                f"{self.label} (inference)": (attacker, (x,))}
