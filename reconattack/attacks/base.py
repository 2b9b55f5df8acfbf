"""The attack: how a reconstruction is learnt from a threat's leak (SPEC §7).

- :class:`Attack` — one attack (CFGAN, IVR, INV, the DR attack): its stages, their step counts,
  the settings that say how each stage is trained, and :meth:`Attack.build_stage`. It declares
  what it :attr:`~Attack.reads` from the threat model.
- :class:`AttackStage` — one trainable stage, a LightningModule. It reads the batches of the
  threat's DataModule (``"input"``, ``"target"``, ``"aux"``; see
  :mod:`reconattack.threats.base`) and :meth:`~AttackStage.reconstruct` returns
  ``(B, 3, H, W)`` RGB in [-1, 1].
- :class:`GANStage` — the shared adversarial step (discriminator step, then generator step,
  Lightning manual optimisation, gradient clipping, learning-rate schedules), which stops the
  run with :class:`~reconattack.errors.NonFiniteLossError` before a NaN or infinite loss reaches
  the weights.

Networks given by the threat or by a library (the AVIH service model, VGG for perceptual
losses) are *attached* to a stage (:meth:`AttackStage.attach`): frozen, moved with the module,
and kept out of its checkpoints, which hold what the attack trained.

The runner (:mod:`reconattack.engine.runner`) fits the stages one Trainer each, in order; a new attack
is a subclass of :class:`Attack` and its stage modules, and a YAML file in ``conf/attack/``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from reconattack.errors import ConfigError, NonFiniteLossError
from reconattack.utils.config import build, plain
from reconattack.utils.distributed import world_size_of
from reconattack.utils.files import safe_name


class AttackStage(pl.LightningModule):
    """One trainable stage of an attack.

    Subclasses implement :meth:`reconstruct` and ``training_step``; :meth:`intermediates` gives
    the images of earlier stages (evaluated with pixel metrics beside the final ones).
    ``optimizer_steps_per_iteration``: how many ``optimizer.step()`` calls one training
    iteration makes (Lightning's ``global_step`` counts them all).
    """

    optimizer_steps_per_iteration = 1

    def __init__(self) -> None:
        super().__init__()
        self._frozen: dict[str, nn.Module] = {}

    # ------------------------------------------------------------------- attached networks
    def attach(self, name: str, module: nn.Module | None) -> None:
        """Keep ``module`` frozen (eval mode, no gradients) and moved with this stage, but out
        of its state dict (checkpoints hold what the attack trained, not the threat's models)."""
        if module is not None:
            module.eval().requires_grad_(False)
        self._frozen[name] = module

    def attached(self, name: str) -> nn.Module | None:
        return self._frozen.get(name)

    def freeze(self, name: str, module: nn.Module) -> nn.Module:
        """Register ``module`` as a frozen submodule (kept in eval mode, no gradients, but part
        of the checkpoint): an earlier stage of the same attack, e.g. CFGAN's trained coarse net
        inside the fine stage."""
        module.requires_grad_(False).eval()
        setattr(self, name, module)
        self._frozen_children = (*getattr(self, "_frozen_children", ()), name)
        return module

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        for module in self._frozen.values():
            if module is not None:
                module._apply(fn, *args, **kwargs)
        return self

    def train(self, mode: bool = True):
        super().train(mode)
        for module in self._frozen.values():  # fixed functions: BN statistics, no dropout
            if module is not None:
                module.eval()
        for name in getattr(self, "_frozen_children", ()):
            getattr(self, name).eval()
        return self

    # -------------------------------------------------------------------------- interface
    def reconstruct(self, batch: dict) -> torch.Tensor:
        """The attack's reconstruction of ``batch["input"]``: (B, 3, H, W) RGB, trained toward
        [-1, 1] (the evaluation clamps it)."""
        raise NotImplementedError

    def intermediates(self, batch: dict) -> dict[str, torch.Tensor]:
        """Images of earlier stages inside this one, ``{stage: (B, 3, H, W)}`` (default none)."""
        return {}

    def validation_step(self, batch: dict, batch_idx: int) -> dict | None:
        if "target" not in batch:
            return None
        return {"pred": self.reconstruct(batch).detach().clamp(-1, 1), "target": batch["target"]}


class GANStage(AttackStage):
    """A stage trained with a generator loss and, when ``discriminator`` is given, an adversarial
    game: per iteration one discriminator step, then one generator step (manual optimisation;
    the STYLE.md GAN recipe).

    Subclasses implement :meth:`generate` (the generator's output for a batch, with gradients),
    :meth:`generator_losses` (weighted terms and their sum ``"total"``) and, with a
    discriminator, :meth:`discriminator_loss`; :meth:`update_discriminator` may skip a
    discriminator update (InvSfM's loss threshold) — the step is then taken without gradients,
    which leaves the discriminator unchanged and keeps two optimizer steps per iteration.

    Args:
        generator: the trained network(s) called by :meth:`generate` (registered by the subclass).
        discriminator: the discriminator, or None.
        optimizer: partial optimiser factory for the generator (and D unless ``optimizer_d``).
        optimizer_d: partial optimiser factory for D, or None.
        lr_scheduler: partial schedule factory called as ``f(optimizer, total_steps=iterations)``
            (e.g. :func:`reconattack.attacks.schedules.cosine_decay`), or None for constant rates.
        grad_clip: max gradient norm (Lightning unscales mixed-precision gradients first), or None.
        iterations: training iterations of the stage (the schedule's length).
        log_prefix: prefix of the logged losses (``"<stage>/train/"``).
    """

    def __init__(self, discriminator: nn.Module | None, optimizer: Callable, optimizer_d: Callable | None = None,
                 lr_scheduler: Callable | None = None, grad_clip: float | None = None,
                 iterations: int = 1, log_prefix: str = "train/") -> None:
        super().__init__()
        self.automatic_optimization = False
        self.discriminator = discriminator
        self.optimizer_factory = optimizer
        self.optimizer_d_factory = optimizer_d or optimizer
        self.scheduler_factory = lr_scheduler
        self.grad_clip = float(grad_clip) if grad_clip else None
        self.iterations = int(iterations)
        self.log_prefix = log_prefix
        #: the last training iteration's loss terms as logged, without the prefix (``loss_d``,
        #: ``loss_g/<term>``; detached): what the run's loss checks record
        #: (:class:`reconattack.engine.diagnostics.LossHistory`)
        self.step_losses: dict[str, torch.Tensor] = {}

    @property
    def optimizer_steps_per_iteration(self) -> int:  # type: ignore[override]
        return 2 if self.discriminator is not None else 1

    def generator_parameters(self):
        """Parameters of the trained generator(s) (default: all but the discriminator's)."""
        skip = {id(p) for p in self.discriminator.parameters()} if self.discriminator is not None else set()
        return [p for p in self.parameters() if id(p) not in skip and p.requires_grad]

    # ------------------------------------------------------------------- to be implemented
    def generate(self, batch: dict) -> torch.Tensor:
        raise NotImplementedError

    def generator_losses(self, batch: dict, fake: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def discriminator_loss(self, batch: dict, fake: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def update_discriminator(self, d_loss: torch.Tensor) -> bool:
        return True

    # ------------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        opts = [self.optimizer_factory(self.generator_parameters())]
        if self.discriminator is not None:
            opts.append(self.optimizer_d_factory(self.discriminator.parameters()))
        if self.scheduler_factory is None:
            return opts
        return opts, [self.scheduler_factory(o, total_steps=self.iterations) for o in opts]

    def check_finite(self, terms: Mapping[str, torch.Tensor]) -> None:
        """Raise :class:`~reconattack.errors.NonFiniteLossError` naming the step and the loss
        term(s) when any of ``terms`` (scalars) is NaN or infinite, before any update from them.
        One device synchronisation; under DDP every rank stops together (a rank that raised
        alone would leave the others waiting in the next all-reduce)."""
        values = torch.stack([v.detach().float().reshape(()) for v in terms.values()])
        bad = not bool(torch.isfinite(values).all())
        if world_size_of(self) > 1:
            bad = self.trainer.strategy.reduce_boolean_decision(bad, all=False)
        if not bad:
            return
        named = ", ".join(f"{k}={float(v):g}" for k, v in zip(terms, values.tolist()) if not math.isfinite(v))
        iteration = self.global_step // self.optimizer_steps_per_iteration
        raise NonFiniteLossError(
            f"{self.log_prefix.rstrip('/')}: non-finite loss at iteration {iteration} (global step "
            f"{self.global_step}): {named or 'on another process'}. Stopped before the update; the "
            f"weights are those of the step before")

    def _step(self, opt, loss: torch.Tensor, update: bool = True) -> None:
        opt.zero_grad(set_to_none=True)
        if update:
            self.manual_backward(loss)
            if self.grad_clip:  # Lightning unscales mixed-precision gradients before clipping
                self.clip_gradients(opt, gradient_clip_val=self.grad_clip, gradient_clip_algorithm="norm")
        opt.step()

    def _step_schedulers(self) -> None:
        scheds = self.lr_schedulers()
        if scheds is None:
            return
        for s in scheds if isinstance(scheds, list) else [scheds]:
            s.step()

    def training_step(self, batch: dict, batch_idx: int) -> None:
        opts = self.optimizers()
        opt_g, opt_d = (opts[0], opts[1]) if isinstance(opts, (list, tuple)) else (opts, None)
        fake = self.generate(batch)
        logs = {}
        if opt_d is not None:
            self.toggle_optimizer(opt_d)
            d_loss = self.discriminator_loss(batch, fake.detach())
            self.check_finite({"loss_d": d_loss})
            self._step(opt_d, d_loss, update=self.update_discriminator(d_loss))
            self.untoggle_optimizer(opt_d)
            logs["loss_d"] = d_loss.detach()
            self.toggle_optimizer(opt_g)
        terms = self.generator_losses(batch, fake)
        self.check_finite({f"loss_g/{k}": v for k, v in terms.items()})
        self._step(opt_g, terms["total"])
        if opt_d is not None:
            self.untoggle_optimizer(opt_g)
        self._step_schedulers()
        logs.update({f"loss_g/{k}": v.detach() for k, v in terms.items()})
        self.step_losses = logs
        n = fake.shape[0]
        self.log_dict({f"{self.log_prefix}{k}": v for k, v in logs.items()}, batch_size=n)
        self.log(f"{self.log_prefix}loss", terms["total"].detach(), prog_bar=True, logger=False,
                 batch_size=n)


class Attack:
    """Base class of attacks (see the module docstring).

    Args:
        name: short name (``cfgan``); label: the name in tables (``CFGAN``).
        stages: the stages in training order; each is fitted by its own Trainer.
        steps: ``{stage: training iterations}``.
        checkpoints: ``{stage: path}`` — load that stage from a checkpoint of an earlier run
            instead of training it (a later stage's checkpoint also holds the earlier stages it
            embeds, e.g. CFGAN's fine checkpoint holds the frozen coarse net).
        test_only: train nothing; needs the final stage (or the stage holding it) in
            ``checkpoints``.
        resume: ``{stage: last.ckpt}`` — continue training a stage from such a file.
        checkpoint_every: keep the latest state in ``checkpoints/<stage>/last.ckpt`` every this
            many iterations (None: off).
        val_every_n_epochs: validation frequency (when the data has a validation split).
        num_samples: rows of ``samples/test_grid.png``.
        reference: the paper's figures for this attack (``params_M``, ``gflops``, ``latency_s``,
            ``networks``: ``{network: params_M}``; printed beside ``profile``'s measurements).
        model, loss: the ``model`` and ``loss`` configs of the attack's networks and losses.
    """

    #: what the attack reads from the threat model (see ``ThreatModel.provides``)
    reads: frozenset[str] = frozenset()

    def __init__(self, name: str, stages: list[str], steps: Mapping[str, int], label: str | None = None,
                 checkpoints: Mapping[str, str | None] | None = None, test_only: bool = False,
                 resume: Mapping[str, str | None] | None = None, checkpoint_every: int | None = None,
                 val_every_n_epochs: int = 1, num_samples: int = 8, reference: Mapping | None = None,
                 model: Any = None, loss: Any = None) -> None:
        self.name = safe_name(name, "attack.name")
        self.label = str(label or name)
        self.stages = [safe_name(s, "attack.stages") for s in stages]
        if not self.stages:
            raise ConfigError(f"attack.stages of attack {self.name!r} is empty")
        steps = plain(steps) or {}
        missing = [s for s in self.stages if s not in steps]
        if missing:
            raise ConfigError(f"attack.steps has no entry for stage(s) {missing} of attack {self.name!r}")
        self.steps = {s: int(steps[s]) for s in self.stages}
        bad = [s for s, n in self.steps.items() if n < 1]
        if bad:
            raise ConfigError(f"attack.steps must be >= 1, got {self.steps}")
        self.checkpoints = {k: v for k, v in (plain(checkpoints) or {}).items() if v not in (None, "")}
        self.resume = {k: v for k, v in (plain(resume) or {}).items() if v not in (None, "")}
        for what, table in (("checkpoints", self.checkpoints), ("resume", self.resume)):
            unknown = sorted(set(table) - set(self.stages))
            if unknown:
                raise ConfigError(f"attack.{what} names stage(s) {unknown}; the stages of "
                                  f"{self.name!r} are {self.stages}")
        self.test_only = bool(test_only)
        self.checkpoint_every = int(checkpoint_every) if checkpoint_every else None
        self.val_every_n_epochs = int(val_every_n_epochs)
        self.num_samples = int(num_samples)
        self.reference = plain(reference) or {}
        self.model_cfg, self.loss_cfg = model, loss

    # ------------------------------------------------------------------------ before any work
    def check(self, threat) -> None:
        """Raise a clear error for settings that cannot work with ``threat`` (missing pretrained
        weights for a loss, sizes the networks cannot take), before any work."""

    # ------------------------------------------------------------------------------- stages
    def build_stage(self, stage: str, threat, previous: AttackStage | None) -> AttackStage:
        """A fresh module for ``stage``; ``previous`` is the trained module of the stage before
        it (None for the first)."""
        raise NotImplementedError

    def profile_models(self, threat) -> dict[str, tuple[nn.Module, tuple[torch.Tensor, ...]]]:
        """The attack's networks with example inputs at batch size 1 (for ``profile``), and
        ``"<name> (inference)"``: the whole attack as it reconstructs."""
        return {}

    # ------------------------------------------------------------------------------ helpers
    def optimizer(self, cfg: Any):
        """A partial optimiser factory from a ``_partial_: true`` config (None stays None)."""
        return build(cfg) if cfg else None
