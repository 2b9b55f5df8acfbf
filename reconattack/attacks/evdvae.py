"""EVDVAE — Hazami et al., *Efficient-VDVAE: Less is more* (arXiv 2203.13751) — as the CFGAN
paper's baseline on SIFT maps (Table I; SPEC §2.5). The CFGAN paper "adopted the released code"
and trained it on SIFT maps without saying how; that code (MIT) is an unconditional hierarchical
VAE. This is a SIFT-conditioned version built from the paper
(:class:`reconattack.models.evdvae.EVDVAE`):

- the top-down prior is conditioned on a SIFT-map encoder at every resolution; the posterior also
  reads a bottom-up encoder of the image (training only);
- training maximises the ELBO of the image given the map: a reconstruction term and KL(q || p)
  summed over every latent, per image dimension (nats per dim), with KL weight ``kl``;
- at test time the image is reconstructed from the **conditional prior** (its means: temperature
  0; ``model.net.temperature`` samples instead), as an attacker has the map and not the image;
- as the attack is judged on that prior path, which the ELBO trains only through the KL, the loss
  also reconstructs the image from the prior path (``prior`` weight: the hybrid objective of
  conditional VAEs, Sohn et al., NeurIPS 2015; not in Efficient-VDVAE; 0 turns it off).

What differs from Efficient-VDVAE and why: the output is the mean image (an L1 / MSE
reconstruction term) instead of a discretised mixture of logistics — a reconstruction attack wants
one image, and the mixture's sampling would only add noise; Adamax and the gradient-skip of the
paper are replaced by Adam with gradient-norm clipping (``attack.grad_clip``). One stage
(``evdvae``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from reconattack.attacks.base import Attack, GANStage
from reconattack.errors import ConfigError
from reconattack.models.evdvae import PriorPath
from reconattack.utils.config import build

RECON = ("l1", "mse")


class EVDVAEStage(GANStage):
    """The conditional VAE, trained on the ELBO (no discriminator: :class:`GANStage`'s generator
    step alone).

    Batches (the SIFT threat's): ``"input"`` (B, 128, S, S) maps, ``"target"`` (B, 3, H, W) in
    [-1, 1].

    Args:
        vae: the :class:`~reconattack.models.evdvae.EVDVAE`.
        recon: ``"l1"`` or ``"mse"`` per pixel; weights ``{"recon", "kl", "prior"}``.
    """

    def __init__(self, vae: nn.Module, weights: dict, recon: str = "mse", **gan: Any) -> None:
        if recon not in RECON:
            raise ConfigError(f"loss.recon_distance must be one of {RECON}, got {recon!r}")
        super().__init__(None, log_prefix="evdvae/train/", **gan)
        self.vae, self.recon = vae, recon
        self.w = {k: float(weights.get(k, d)) for k, d in (("recon", 1.0), ("kl", 1.0), ("prior", 0.0))}

    def reconstruct(self, batch: dict) -> torch.Tensor:
        return self.vae.reconstruct(batch["input"])

    def generate(self, batch: dict) -> torch.Tensor:
        out, kl = self.vae(batch["input"], batch["target"])
        batch["kl"] = kl
        return out

    def generator_losses(self, batch: dict, fake: torch.Tensor) -> dict[str, torch.Tensor]:
        real = batch["target"]
        dims = real[0].numel()
        distance = F.l1_loss if self.recon == "l1" else F.mse_loss
        terms = {"recon": distance(fake, real), "kl": batch["kl"].mean() / dims}  # KL in nats per dimension
        if self.w["prior"] > 0:  # the test-time path: the conditional prior's means
            terms["prior"] = distance(self.vae.reconstruct(batch["input"]), real)
        terms["total"] = sum(self.w[k] * v for k, v in terms.items())
        return terms


class EVDVAEAttack(Attack):
    """The EVDVAE baseline (see the module docstring).

    Args:
        optimizer, lr_scheduler, grad_clip: as :class:`~reconattack.attacks.inv.INV`.
        **base: :class:`~reconattack.attacks.base.Attack` settings; ``model.net`` the VAE,
            ``loss`` ``recon`` / ``kl`` weights and ``recon_distance``.
    """

    reads = frozenset({"sift_map", "paired_images"})

    def __init__(self, optimizer: Any, lr_scheduler: Any = None, grad_clip: float | None = None,
                 **base: Any) -> None:
        super().__init__(**base)
        if self.stages != ["evdvae"]:
            raise ConfigError(f"attack.stages must be [evdvae], got {self.stages}")
        self.optimizer_cfg, self.lr_scheduler_cfg, self.grad_clip = optimizer, lr_scheduler, grad_clip

    def net(self, threat) -> nn.Module:
        return build(self.model_cfg.net, in_ch=threat.input_example().shape[1], map_side=threat.map_size)

    def check(self, threat) -> None:
        levels = [int(s) for s, _, _ in self.model_cfg.net.levels]
        if levels[-1] != threat.image_size or threat.map_size not in levels:
            raise ConfigError(f"EVDVAE's levels {levels} must end at the image side {threat.image_size} and "
                              f"include the map's {threat.map_size}: change model.net.levels")

    def build_stage(self, stage: str, threat, previous) -> EVDVAEStage:
        lw = self.loss_cfg
        return EVDVAEStage(self.net(threat), {"recon": lw.recon, "kl": lw.kl, "prior": lw.get("prior", 0.0)},
                           recon=str(lw.recon_distance),
                           optimizer=build(self.optimizer_cfg), lr_scheduler=self.optimizer(self.lr_scheduler_cfg),
                           grad_clip=self.grad_clip, iterations=self.steps[stage])

    def profile_models(self, threat) -> dict:
        sift = threat.input_example()
        vae = self.net(threat).eval()
        image = torch.zeros(1, 3, threat.image_size, threat.image_size)
        return {"VAE (training: posterior path)": (vae, (sift, image)),
                f"{self.label} (inference)": (PriorPath(vae), (sift,))}
