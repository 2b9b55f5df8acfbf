"""CFGAN reverse attack on SIFT features (two stages: coarse net, then fine net).

:class:`CFGANStage` trains one stage with manual optimisation (discriminator step, then
generator step). :func:`run_pipeline` is the experiment: coarse stage, fine stage with the
*trained* coarse net frozen (the official fine-stage script forgets to load it — a bug not
copied), test with the shared metrics callback, sample grids, and the two controls that show
whether the attack reads the SIFT features (mean training image; another image's SIFT map).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from reconattack.data.sift import build_maps
from reconattack.losses.gan import ragan_d_loss, ragan_g_loss
from reconattack.losses.perceptual import VGGFeatures, perceptual_loss, style_loss
from reconattack.losses.pixel import pixel_loss
from reconattack.losses.sift import SiftLoss
from reconattack.metrics.suite import MetricSuite
from reconattack.runtime import (
    make_logger,
    make_metric_callback,
    make_trainer,
    require_file,
    save_grid,
)
from reconattack.utils.weights import MissingWeightsError

log = logging.getLogger(__name__)

LOSS_TERMS = ("pix", "per", "adv", "sift", "style")


def sift_visualisation(sift: torch.Tensor, size: int) -> torch.Tensor:
    """Picture of a SIFT map for sample grids: keypoint positions, brightness = mean |descriptor|.

    (B, 128, S, S) in [-1, 1] (0 = empty) -> (B, 3, size, size) in [-1, 1], black background.
    """
    occupied = (sift != 0).any(1, keepdim=True)
    strength = ((sift + 1) / 2).mean(1, keepdim=True)  # descriptor values back in [0, 1]
    v = torch.where(occupied, 0.35 + 0.65 * strength / strength.amax((2, 3), keepdim=True).clamp_min(1e-6),
                    torch.zeros_like(strength))
    v = nn.functional.interpolate(v, size=size, mode="nearest")
    return (v * 2 - 1).expand(-1, 3, -1, -1)


class CFGANStage(pl.LightningModule):
    """One CFGAN stage (``"coarse"`` or ``"fine"``) as a LightningModule.

    Batches from :class:`reconattack.data.cfgan.CFGANDataModule` hold uint8 images and sparse
    keypoints; :meth:`on_after_batch_transfer` turns them, on the module's device, into
    ``target`` (B, 3, H, H) in [-1, 1] and ``sift`` (B, 128, S, S) dense maps (random block
    representatives during training, seeded per rank; deterministic at evaluation).

    Args:
        stage: ``"coarse"`` or ``"fine"``.
        generator: :class:`~reconattack.models.cfgan.CoarseGenerator` or ``FineGenerator``.
        discriminator: :class:`~reconattack.models.cfgan.Discriminator` (needed when ``adv > 0``).
        optimizer: partial optimiser factory (``_partial_: true``) for G (and D unless
            ``optimizer_d`` is given).
        optimizer_d: partial optimiser factory for D, or None to use ``optimizer``.
        lr_schedule: ``"constant"`` (paper) or ``"cosine"`` (decay to 0 over the stage's steps).
        loss_weights: ``{"pix", "per", "adv", "sift", "style"}`` weights (paper 1 / 0.01 / 0.02 /
            0.01 / 0).
        image_size, compress: image side and SIFT-map compression (map side image_size // 2).
        coarse: the trained coarse generator for the fine stage (frozen, eval mode).
        vgg: VGG feature taps, required when ``per`` or ``style`` is positive.
        grad_clip: max gradient norm for G and D, or None.
        seed: seed of the compression randomness.
    """

    def __init__(self, stage: str, generator: nn.Module, discriminator: nn.Module | None, optimizer,
                 loss_weights: dict, image_size: int, compress: bool, coarse: nn.Module | None = None,
                 vgg: VGGFeatures | None = None, grad_clip: float | None = None, seed: int = 0,
                 optimizer_d=None, lr_schedule: str = "constant"):
        super().__init__()
        if stage not in ("coarse", "fine"):
            raise ValueError(f"stage must be 'coarse' or 'fine', got {stage!r}")
        if stage == "fine" and coarse is None:
            raise ValueError("the fine stage needs the trained coarse generator")
        unknown = set(loss_weights) - set(LOSS_TERMS)
        if unknown:
            raise ValueError(f"unknown loss weights {sorted(unknown)}; known: {LOSS_TERMS}")
        self.w = {k: float(loss_weights.get(k, 0.0)) for k in LOSS_TERMS}
        if (self.w["per"] > 0 or self.w["style"] > 0) and vgg is None:
            raise ValueError("loss.per / loss.style > 0 need VGG19 features")
        if self.w["adv"] > 0 and discriminator is None:
            raise ValueError("loss.adv > 0 needs a discriminator")
        self.automatic_optimization = False
        self.stage = stage
        self.generator = generator
        self.discriminator = discriminator if self.w["adv"] > 0 else None
        self.coarse = coarse
        if coarse is not None:
            coarse.requires_grad_(False).eval()
        self._vgg = [vgg] if vgg is not None else []  # not a submodule: kept out of checkpoints
        self.sift_loss = SiftLoss() if self.w["sift"] > 0 else None
        self.optimizer_factory = optimizer
        self.optimizer_d_factory = optimizer_d or optimizer
        if lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"attack.lr_schedule must be 'constant' or 'cosine', got {lr_schedule!r}")
        self.lr_schedule = lr_schedule
        self.image_size, self.compress = image_size, compress
        self.grad_clip, self.seed = grad_clip, seed
        self._map_gen: torch.Generator | None = None

    # -- data on device -------------------------------------------------------------------------
    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        training = self.trainer is not None and self.trainer.training
        gen = None
        if training and self.compress:
            if self._map_gen is None or self._map_gen.device != self.device:
                self._map_gen = torch.Generator(device=self.device)
                self._map_gen.manual_seed(self.seed * 1000 + self.global_rank)
            gen = self._map_gen
        return self.prepare_batch(batch, gen)

    def prepare_batch(self, batch: dict, generator: torch.Generator | None = None) -> dict:
        """uint8 images + keypoint lists -> ``target`` (B, 3, H, H) in [-1, 1], ``sift`` (B, 128, S, S)."""
        out = dict(batch)
        out["target"] = batch["image"].to(self.device).float() / 127.5 - 1
        out["sift"] = build_maps(batch["xy"], batch["desc"], self.image_size, self.compress,
                                 generator=generator, device=self.device)
        return out

    # -- model ----------------------------------------------------------------------------------
    def train(self, mode: bool = True):
        super().train(mode)
        if self.coarse is not None:
            self.coarse.eval()  # frozen: BN statistics stay those of the trained coarse net
        return self

    def coarse_image(self, sift: torch.Tensor) -> torch.Tensor:
        """Output of the frozen coarse net, (B, 3, H, H), no gradients."""
        with torch.no_grad():
            return self.coarse(sift)

    def forward(self, sift: torch.Tensor) -> torch.Tensor:
        """SIFT map (B, 128, S, S) -> reconstruction (B, 3, H, H), trained toward [-1, 1]."""
        if self.stage == "coarse":
            return self.generator(sift)
        return self.generator(sift, self.coarse_image(sift))

    def configure_optimizers(self):
        opts = [self.optimizer_factory(self.generator.parameters())]
        if self.discriminator is not None:
            opts.append(self.optimizer_d_factory(self.discriminator.parameters()))
        if self.lr_schedule == "constant":
            return opts
        total = self.trainer.max_steps // len(opts)  # generator steps of this stage
        scheds = [torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=max(total, 1)) for o in opts]
        return opts, scheds

    def _step_schedulers(self) -> None:
        scheds = self.lr_schedulers()
        if scheds is None:
            return
        for s in scheds if isinstance(scheds, list) else [scheds]:
            s.step()

    def on_fit_start(self) -> None:
        for v in self._vgg:
            v.to(self.device)

    on_test_start = on_fit_start

    # -- training -------------------------------------------------------------------------------
    def generator_losses(self, fake: torch.Tensor, real: torch.Tensor) -> dict[str, torch.Tensor]:
        """Weighted generator loss terms and their sum ``"total"`` (paper eq. 10)."""
        terms = {"pix": pixel_loss(fake, real)}
        if self.discriminator is not None:
            terms["adv"] = ragan_g_loss(self.discriminator(real), self.discriminator(fake))
        if self._vgg:
            fp, fr = self._vgg[0](fake), self._vgg[0](real)
            if self.w["per"] > 0:
                terms["per"] = perceptual_loss(fp, fr)
            if self.w["style"] > 0:
                terms["style"] = style_loss(fp, fr)
        if self.sift_loss is not None:
            terms["sift"] = self.sift_loss(fake, real)
        terms["total"] = sum(self.w[k] * v for k, v in terms.items())
        return terms

    def _step(self, opt, loss: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        if self.grad_clip:  # Lightning unscales mixed-precision gradients before clipping
            self.clip_gradients(opt, gradient_clip_val=self.grad_clip, gradient_clip_algorithm="norm")
        opt.step()

    def training_step(self, batch: dict, batch_idx: int) -> None:
        real, sift = batch["target"], batch["sift"]
        opts = self.optimizers()
        opt_g, opt_d = (opts if isinstance(opts, (list, tuple)) else (opts, None))
        fake = self(sift)
        logs = {}
        if self.discriminator is not None:
            self.toggle_optimizer(opt_d)
            d_loss = ragan_d_loss(self.discriminator(real), self.discriminator(fake.detach()))
            self._step(opt_d, d_loss)
            self.untoggle_optimizer(opt_d)
            logs["loss_d"] = d_loss.detach()
            self.toggle_optimizer(opt_g)
        terms = self.generator_losses(fake, real)
        self._step(opt_g, terms["total"])
        if self.discriminator is not None:
            self.untoggle_optimizer(opt_g)
        self._step_schedulers()
        logs.update({f"loss_g/{k}": v.detach() for k, v in terms.items()})
        self.log_dict({f"{self.stage}/train/{k}": v for k, v in logs.items()},
                      prog_bar=False, batch_size=real.shape[0])
        self.log(f"{self.stage}/loss", terms["total"].detach(), prog_bar=True, logger=False,
                 batch_size=real.shape[0])

    def _eval_step(self, batch: dict) -> dict:
        pred = self(batch["sift"])
        out = {"pred": pred.detach(), "target": batch["target"]}
        if self.stage == "fine":
            out["coarse"] = self.coarse_image(batch["sift"])
        return out

    def validation_step(self, batch: dict, batch_idx: int) -> dict:
        return self._eval_step(batch)

    def test_step(self, batch: dict, batch_idx: int) -> dict:
        return self._eval_step(batch)


# ---------------------------------------------------------------------------------------------
# the experiment


def load_generator_weights(generator: nn.Module, checkpoint: Path, prefix: str) -> nn.Module:
    """Load ``prefix``-ed weights (e.g. ``"generator."``) from a Lightning checkpoint of a stage.

    Raises a ValueError naming the mismatching keys when the checkpoint was made for another
    architecture.
    """
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    state = state.get("state_dict", state)
    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not sub:
        raise ValueError(f"{checkpoint} holds no '{prefix}*' weights; is it a CFGAN stage checkpoint?")
    missing, unexpected = generator.load_state_dict(sub, strict=False)
    shape_bad = [k for k, v in sub.items() if k in generator.state_dict()
                 and generator.state_dict()[k].shape != v.shape]
    if missing or unexpected or shape_bad:
        raise ValueError(f"{checkpoint} does not fit the configured model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, shape mismatch {shape_bad[:5]}")
    return generator


def _vgg_features(cfg: DictConfig) -> VGGFeatures | None:
    loss = cfg.loss
    if loss.get("per", 0) <= 0 and loss.get("style", 0) <= 0:
        return None
    try:
        return VGGFeatures(layers=loss.perceptual.layers, weights_path=loss.perceptual.weights_path,
                           download=loss.perceptual.download)
    except MissingWeightsError as exc:
        raise MissingWeightsError(
            f"{exc}\nThe perceptual/style loss needs pretrained VGG19 weights; refusing to train with "
            f"random ones. Place the file, set loss.perceptual.weights_path=..., or set loss.per=0 "
            f"loss.style=0.") from exc


def build_stage(cfg: DictConfig, stage: str, final_scale: int, coarse: nn.Module | None = None,
                vgg: VGGFeatures | None = None) -> CFGANStage:
    """Instantiate the generator/discriminator of ``stage`` from ``cfg.model`` and wrap them."""
    generator = hydra.utils.instantiate(cfg.model[stage], final_scale=final_scale)
    weights = {k: cfg.loss.get(k, 0.0) for k in LOSS_TERMS}
    disc = hydra.utils.instantiate(cfg.model.discriminator) if weights["adv"] > 0 else None
    opt_d = cfg.attack.get("optimizer_d")
    return CFGANStage(stage, generator, disc, hydra.utils.instantiate(cfg.attack.optimizer), weights,
                      image_size=cfg.data.image_size, compress=cfg.data.compress, coarse=coarse,
                      vgg=vgg, grad_clip=cfg.attack.get("grad_clip"), seed=cfg.seed,
                      optimizer_d=hydra.utils.instantiate(opt_d) if opt_d else None,
                      lr_schedule=cfg.attack.get("lr_schedule", "constant"))


def init_fine_from_coarse(fine: nn.Module, coarse: nn.Module) -> int:
    """Warm start (not in the paper): copy the trained coarse generator's encoder into the fine
    net's SIFT encoder and its decoder into the fine decoder, where shapes match.

    Returns the number of tensors copied. Only for ``fusion`` paper/official (the two share the
    coarse net's encoder and decoder layout).
    """
    if not hasattr(fine, "sift_encoder"):
        raise ValueError("attack.fine_init_from_coarse needs model.fine.fusion paper or official")
    copied = 0
    for dst, src in ((fine.sift_encoder, coarse.encoder), (fine.decoder, coarse.decoder)):
        dst_state = dst.state_dict()
        for k, v in src.state_dict().items():
            if k in dst_state and dst_state[k].shape == v.shape:
                dst_state[k] = v.clone()
                copied += 1
        dst.load_state_dict(dst_state)
    return copied


def _steps_to_trainer_steps(module: CFGANStage, steps: int) -> int:
    # Lightning's global_step counts every optimizer.step(): D and G steps both count.
    return steps * (2 if module.discriminator is not None else 1)


def fit_stage(cfg: DictConfig, run_dir: Path, module: CFGANStage, dm, logger) -> Path:
    """Train one stage for ``cfg.attack.steps[stage]`` steps; returns its checkpoint path.

    Every ``cfg.attack.checkpoint_every`` steps the latest state is kept in
    ``checkpoints/<stage>/last.ckpt``; ``cfg.attack.resume[stage]`` resumes from such a file.
    """
    from pytorch_lightning.callbacks import ModelCheckpoint

    steps = int(cfg.attack.steps[module.stage])
    val_cb = make_metric_callback(cfg, ("val",), metrics=("mse", "psnr", "ssim"))
    has_val = len(dm.datasets.get("val", ())) > 0
    callbacks = [val_cb]
    every = cfg.attack.get("checkpoint_every")
    if every:
        callbacks.append(ModelCheckpoint(dirpath=str(run_dir / "checkpoints" / module.stage),
                                         filename="last", save_top_k=1, enable_version_counter=False,
                                         every_n_train_steps=_steps_to_trainer_steps(module, int(every))))
    resume = require_file((cfg.attack.get("resume") or {}).get(module.stage), f"attack.resume.{module.stage}")
    trainer = make_trainer(cfg, run_dir, module.stage, _steps_to_trainer_steps(module, steps),
                           logger=logger, callbacks=callbacks, enable_checkpointing=bool(every),
                           check_val_every_n_epoch=int(cfg.attack.val_every_n_epochs),
                           **({} if has_val else {"limit_val_batches": 0}))
    trainer.fit(module, datamodule=dm, ckpt_path=str(resume) if resume else None)
    ckpt = run_dir / "checkpoints" / f"{module.stage}.ckpt"
    trainer.save_checkpoint(str(ckpt))
    log.info("%s stage: %d steps, checkpoint %s", module.stage, steps, ckpt)
    return ckpt


def test_stage(cfg: DictConfig, run_dir: Path, module: CFGANStage, dm, logger) -> dict:
    """Test ``module`` with the shared metrics callback; returns ``{"test/<metric>": value}``."""
    cb = make_metric_callback(cfg, ("test",))
    trainer = make_trainer(cfg, run_dir, module.stage, max_steps=-1, logger=logger, callbacks=[cb])
    trainer.test(module, datamodule=dm, verbose=False)
    return dict(cb.results.get("test", {}))


@torch.no_grad()
def evaluate_controls(module: CFGANStage, dm, samples_dir: Path, num_samples: int) -> dict:
    """The controls of issue 2 on the test split, plus the sample grid.

    - ``baseline/mean_image``: the mean training image as the reconstruction of every test image;
    - ``baseline/shuffled_sift``: the trained model given another test image's SIFT map (test
      image i gets the map of image i-1, cyclically).
    Returns PSNR/SSIM of both (means of per-image values, same settings as the test metrics).
    """
    module.eval()
    mean_img = dm.mean_train_image().to(module.device)
    suites = {name: MetricSuite(metrics=("psnr", "ssim")) for name in ("mean_image", "shuffled_sift")}
    loader = dm.test_dataloader()
    batches = [module.prepare_batch(module.transfer_batch_to_device(b, module.device, 0)) for b in loader]
    carry = batches[-1]["sift"][-1:]
    grid_cols: list[list[torch.Tensor]] = []
    for b in batches:
        real, sift = b["target"], b["sift"]
        suites["mean_image"].update(mean_img.expand_as(real), real)
        shuffled = torch.cat([carry, sift[:-1]])
        carry = sift[-1:]
        suites["shuffled_sift"].update(module(shuffled), real)
        if sum(c[0].shape[0] for c in grid_cols) < num_samples:
            cols = [real, sift_visualisation(sift, real.shape[-1])]
            if module.stage == "fine":
                cols.append(module.coarse_image(sift))
            cols.append(module(sift))
            grid_cols.append(cols)
    columns = [torch.cat([c[j] for c in grid_cols]) for j in range(len(grid_cols[0]))]
    header = "ground truth | SIFT keypoints | " + ("coarse | fine" if module.stage == "fine" else "coarse")
    save_grid(columns, samples_dir / "test_grid.png", max_rows=num_samples)
    (samples_dir / "test_grid.txt").write_text(header + "\n")
    out = {}
    for name, suite in suites.items():
        for k, v in suite.compute().items():
            out[f"baseline/{name}/{k}"] = v
    return out


def run_pipeline(cfg: DictConfig, run_dir: Path) -> dict:
    """CFGAN experiment: train coarse, train fine (trained coarse frozen), test, controls.

    ``cfg.attack.stages``: ``[coarse, fine]`` (CFGAN) or ``[coarse]`` (Table IV "w/o fine net").
    ``cfg.attack.coarse_checkpoint`` / ``fine_checkpoint``: load a trained stage instead of
    training it (e.g. the CelebA-HQ model for the FFHQ generalisation test).
    """
    stages = list(cfg.attack.stages)
    if not stages or stages[0] != "coarse" or any(s not in ("coarse", "fine") for s in stages):
        raise ValueError(f"attack.stages must be [coarse] or [coarse, fine], got {stages}")
    coarse_ckpt = require_file(cfg.attack.get("coarse_checkpoint"), "attack.coarse_checkpoint")
    fine_ckpt = require_file(cfg.attack.get("fine_checkpoint"), "attack.fine_checkpoint")
    dm = hydra.utils.instantiate(cfg.data, run_dir=str(run_dir))
    final_scale = dm.image_size // dm.map_size
    dm.check()  # the data is there (clear message naming the path and layout otherwise)
    vgg = _vgg_features(cfg)  # fails early, before any training, when VGG weights are missing
    dm.prepare_data()
    dm.setup("fit")
    logger = make_logger(cfg, run_dir)
    if logger:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    metrics: dict = {}
    coarse = build_stage(cfg, "coarse", final_scale, vgg=vgg)
    if fine_ckpt is not None and "fine" in stages:
        coarse_ckpt = fine_ckpt  # a fine checkpoint holds the frozen coarse net too
        prefix = "coarse."
    else:
        prefix = "generator."
    if coarse_ckpt is not None:
        load_generator_weights(coarse.generator, coarse_ckpt, prefix)
    elif not cfg.attack.get("test_only", False):
        coarse_ckpt = fit_stage(cfg, run_dir, coarse, dm, logger)
    else:
        raise ValueError("attack.test_only=true needs attack.coarse_checkpoint or attack.fine_checkpoint")
    final = coarse
    if "fine" in stages:
        # hand the *trained* coarse net over explicitly: a fresh instance loaded from its checkpoint
        frozen = load_generator_weights(copy.deepcopy(coarse.generator), coarse_ckpt, prefix)
        fine = build_stage(cfg, "fine", final_scale, coarse=frozen, vgg=vgg)
        if fine_ckpt is not None:
            load_generator_weights(fine.generator, fine_ckpt, "generator.")
        else:
            if cfg.attack.get("fine_init_from_coarse", False):
                log.info("fine stage: warm start from the coarse net (%d tensors)",
                         init_fine_from_coarse(fine.generator, frozen))
            fit_stage(cfg, run_dir, fine, dm, logger)
        metrics.update({f"coarse/{k}": v for k, v in test_stage(cfg, run_dir, coarse, dm, logger).items()
                        if k.split("/")[-1] in ("mse", "psnr", "ssim")})
        final = fine
    metrics.update(test_stage(cfg, run_dir, final, dm, logger))
    if cfg.attack.get("controls", True):
        metrics.update(evaluate_controls(final, dm, run_dir / "samples", int(cfg.attack.num_samples)))
    if logger:
        logger.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        logger.finalize("success")
    return metrics
