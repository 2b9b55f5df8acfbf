"""The DR attack against AVIH (SPEC §3.3, paper eqs. 6–13) as a LightningModule.

The attacker trains its own key model G_θ (a U-Net from a random initialisation) on the leaked
encrypted images x' that share the target key, with

- the **augmented identity loss** w_id · ‖f̂(A(G_θ(x'))) − f̂(x')‖ (A: random horizontal flip,
  padding, random crop; f̂: unit embedding of the white-box service model), and
- the **GAN loss** against an auxiliary image set of the same category: a PatchGAN whose last
  layer is a tanh, in the JS-divergence form (:func:`reconattack.losses.gan.js_d_loss` /
  :func:`~reconattack.losses.gan.js_g_loss`), weight w_gan.

Manual optimisation: per training step one discriminator step, then one generator step (so
``trainer.global_step`` advances by 2 per step when the GAN loss is on). Without the GAN loss
(Table IV ablation) there is no discriminator and one optimiser.

``test_step`` evaluates the paper's rows on held-out images encrypted with the target key, in
one pass: ``original``, ``protected`` (the encrypted images), ``key_model`` (the true key's
reconstruction), ``random`` (auxiliary images) and ``ours`` (G_θ(x')), each with TPR@FAR of the
**evaluation** model's cosine scores on the verification pairs, through the shared metrics
callback (groups ``"<row>/"``).
"""

from __future__ import annotations

from collections.abc import Mapping

import pytorch_lightning as pl
import torch
from torch import nn

from reconattack.losses.gan import js_d_loss, js_g_loss
from reconattack.losses.identity import augmented_identity_loss

NO_AUGMENT = {"flip": False, "pad": 0, "crop": False}
ROWS = ("original", "protected", "key_model", "random", "ours")


class AVIHReconstructor(pl.LightningModule):
    """Attacker key model + PatchGAN trained against AVIH-encrypted images.

    Args:
        attacker: G_θ, (B, 3, H, W) in [0, 1] → (B, 3, H, W) in [0, 1].
        discriminator: PatchGAN with ``scores(x)`` (pre-tanh, (B, 1, h, w)), or None when the
            GAN loss is off.
        service: white-box service model, (B, 3, H, W) in [0, 1] → (B, E) unit embeddings (frozen).
        evaluation: evaluation face model for TPR@FAR (frozen; only used in ``test_step``).
        weights: ``{identity, gan}`` loss weights (paper: 30 and 1).
        augment: :func:`reconattack.losses.identity.augment` arguments (``flip``, ``pad``,
            ``crop``), or None for the plain identity loss of eq. 6.
        identity_distance: distance of unit embeddings (``"l2"``, ``"l2sq"``, ``"cos"``).
        gan_mode: ``"minimax"`` (eq. 12) or ``"non_saturating"``.
        optimizer / optimizer_d: partial optimisers (``torch.optim.Adam`` with lr, betas).
    """

    def __init__(self, attacker: nn.Module, discriminator: nn.Module | None, service: nn.Module,
                 evaluation: nn.Module | None, weights: Mapping[str, float],
                 augment: Mapping | None, identity_distance: str = "l2", gan_mode: str = "minimax",
                 optimizer=None, optimizer_d=None) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.attacker = attacker
        self.discriminator = discriminator if float(weights.get("gan", 0.0)) > 0 else None
        self.service = service
        self.evaluation = evaluation
        for frozen in (service, evaluation):
            if frozen is not None:
                frozen.requires_grad_(False)
        self.w_id = float(weights.get("identity", 1.0))
        self.w_gan = float(weights.get("gan", 0.0))
        self.augment = dict(augment) if augment else None
        self.identity_distance = identity_distance
        self.gan_mode = gan_mode
        self.optimizer_factory = optimizer or (lambda params: torch.optim.Adam(params, lr=2e-4,
                                                                               betas=(0.5, 0.999)))
        self.optimizer_d_factory = optimizer_d or self.optimizer_factory

    def train(self, mode: bool = True):
        super().train(mode)
        for frozen in (self.service, self.evaluation):  # fixed functions: BN statistics, no dropout
            if frozen is not None:
                frozen.eval()
        return self

    def forward(self, x_enc: torch.Tensor) -> torch.Tensor:
        """Reconstruct: (B, 3, H, W) encrypted images in [0, 1] → (B, 3, H, W) in [0, 1]."""
        return self.attacker(x_enc)

    def configure_optimizers(self):
        opts = [self.optimizer_factory(self.attacker.parameters())]
        if self.discriminator is not None:
            opts.append(self.optimizer_d_factory(self.discriminator.parameters()))
        return opts

    def identity_loss(self, fake: torch.Tensor, target_emb: torch.Tensor) -> torch.Tensor:
        """Mean (augmented) identity loss of reconstructions ``fake`` (B, 3, H, W) in [0, 1]."""
        augment = self.augment or NO_AUGMENT  # eq. 6 (plain) or eq. 7 (augmented)
        return augmented_identity_loss(self.service, fake, target_emb, augment,
                                       distance=self.identity_distance).mean()

    def training_step(self, batch: dict, batch_idx: int) -> None:
        x_enc, aux = batch["encrypted"], batch["aux"]
        opts = self.optimizers()
        opt_g = opts[0] if isinstance(opts, list) else opts
        with torch.no_grad():
            target_emb = self.service(x_enc)
        fake = self.attacker(x_enc)
        logs = {}
        if self.discriminator is not None:
            opt_d = opts[1]
            self.toggle_optimizer(opt_d)
            d_loss = js_d_loss(self.discriminator.scores(aux), self.discriminator.scores(fake.detach()))
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(d_loss)
            opt_d.step()
            self.untoggle_optimizer(opt_d)
            logs["train/d_loss"] = d_loss.detach()
        self.toggle_optimizer(opt_g)
        id_loss = self.identity_loss(fake, target_emb)
        g_loss = self.w_id * id_loss
        if self.discriminator is not None:
            adv = js_g_loss(self.discriminator.scores(fake), mode=self.gan_mode)
            g_loss = g_loss + self.w_gan * adv
            logs["train/g_adv"] = adv.detach()
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(g_loss)
        opt_g.step()
        self.untoggle_optimizer(opt_g)
        logs.update({"train/identity": id_loss.detach(), "train/g_loss": g_loss.detach()})
        self.log_dict(logs, prog_bar=False, on_step=True, on_epoch=False, batch_size=x_enc.shape[0])

    def _scores(self, variant: torch.Tensor, query_emb: torch.Tensor, valid: torch.Tensor
                ) -> torch.Tensor:
        emb = self.evaluation(variant)  # (B, E) unit
        return (query_emb * emb[:, None, :]).sum(-1)[valid]  # cosine per valid pair

    @torch.no_grad()
    def rows(self, batch: dict) -> dict[str, torch.Tensor]:
        """The five variants of the held-out gallery images, (B, 3, H, W) in [0, 1] each."""
        return {"original": batch["original"], "protected": batch["encrypted"],
                "key_model": batch["key_recovered"], "random": batch["random"],
                "ours": self.attacker(batch["encrypted"]).clamp(0, 1)}

    def test_step(self, batch: dict, batch_idx: int) -> dict:
        rows = self.rows(batch)
        target = batch["original"] * 2 - 1
        valid = batch["pair_valid"]
        groups = {}
        query_emb = None
        if self.evaluation is not None and valid.any():
            q = batch["query"]
            query_emb = self.evaluation(q.flatten(0, 1)).unflatten(0, q.shape[:2])  # (B, P, E)
        for name, images in rows.items():
            group = {"pred": images * 2 - 1, "target": target}
            if query_emb is not None:
                group["scores"] = self._scores(images, query_emb, valid)
                group["is_same"] = batch["is_same"][valid]
            groups[f"{name}/"] = group
        return {"groups": groups}
