"""One runner for every experiment (SPEC §7).

check the configuration (:func:`check_config`) and that the machine has the trainer's devices
(:func:`~reconattack.engine.context.check_accelerator`) → build the threat model → check that the attack
can read its leak, that every input is there and that the networks take the configured sizes →
prepare the threat (data, caches, artifacts) → fit the attack's stages in order, one Lightning
Trainer each, with checkpoints → evaluate the final stage and the threat's controls in one
streaming pass through the shared metrics callback and the collapse checks
(:mod:`reconattack.engine.diagnostics`) → ``samples/`` and the flat metrics with the checks'
``warnings`` (the caller writes ``metrics.json``). ``resume=true`` continues a stopped run where
it was (:mod:`reconattack.engine.resume`).

Nothing here names an attack or a threat model: they come from ``cfg.threat`` and ``cfg.attack``
(``_target_``), and their configs travel down into them; the runner reads only the generic
stage settings of :class:`~reconattack.attacks.base.Attack`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from pytorch_lightning.utilities.model_helpers import is_overridden

from reconattack.attacks.base import Attack, AttackStage
from reconattack.data.images import DataNotFoundError
from reconattack.engine.context import RunContext, check_accelerator, require_file
from reconattack.engine.resume import (
    LatestState,
    Preemption,
    RNGState,
    last_checkpoint,
    seed_all,
    stage_seed,
)
from reconattack.engine.tracking import ValidationSamples
from reconattack.errors import ConfigError, NonFiniteLossError, UserError
from reconattack.metrics.diagnostics import WARNINGS_KEY
from reconattack.metrics.roc import write_rocs
from reconattack.threats.base import ThreatEvaluation, ThreatModel
from reconattack.utils.checkpoints import load_strict, read_checkpoint, state_dict_of
from reconattack.utils.config import build
from reconattack.utils.grids import save_grid
from reconattack.utils.memory import release_freed_memory

log = logging.getLogger(__name__)

#: metrics of the intermediate stages' images (e.g. CFGAN's coarse net inside the fine stage)
INTERMEDIATE_METRICS = ("mse", "psnr", "ssim")


# ------------------------------------------------------------------------------ set-up
def check_config(cfg: DictConfig) -> None:
    """Settings no experiment can take, each with one clear message, before anything is built:
    a negative number in the ``loss`` config (weights, kernel sizes, paddings), a run seed that
    is not an integer. (Unknown keys are refused where their object is built,
    :func:`reconattack.utils.config.build`; ranges that depend on the threat or the data where
    those are.)"""
    bad = [f"loss.{key}={value}" for key, value in _numbers(cfg.get("loss")) if value < 0]
    if bad:
        raise ConfigError(f"loss settings must be >= 0 (weights, sizes), got {', '.join(bad)}")
    if not isinstance(cfg.get("seed"), int) or isinstance(cfg.get("seed"), bool):
        raise ConfigError(f"seed must be an integer, got {cfg.get('seed')!r}")


def _numbers(node, prefix: str = ""):
    """(dotted key, value) of every int / float leaf below a config node."""
    from omegaconf import OmegaConf

    if node is None:
        return
    container = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    items = container.items() if isinstance(container, dict) else (
        enumerate(container) if isinstance(container, list) else ())
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, (dict, list)):
            yield from _numbers(value, f"{name}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield name, value


def build_threat(cfg: DictConfig) -> ThreatModel:
    """The threat model of ``cfg.threat``, given the ``data`` config and the run seed."""
    if cfg.get("threat") is None:
        raise ConfigError("no threat model configured (threat=...)")
    return build(cfg.threat, _recursive_=False, data=cfg.data, seed=int(cfg.seed), defence=cfg.get("defence"))


def build_attack(cfg: DictConfig) -> Attack | None:
    """The attack of ``cfg.attack`` with its ``model`` and ``loss`` configs (None: ``attack=none``,
    the threat's controls alone)."""
    if cfg.get("attack") is None:
        return None
    return build(cfg.attack, _recursive_=False, model=cfg.get("model"), loss=cfg.get("loss"))


def check_fit(threat: ThreatModel, attack: Attack | None) -> None:
    """Refuse an attack that cannot read the threat's leak, with one message naming both."""
    if attack is None:
        return
    missing = sorted(attack.reads - threat.provides)
    if missing:
        raise ConfigError(
            f"attack {attack.name!r} cannot run on threat {threat.name!r}: it reads "
            f"{', '.join(sorted(attack.reads))}, the threat provides "
            f"{', '.join(sorted(threat.provides)) or 'nothing'} (missing: {', '.join(missing)}). "
            f"Pick a threat that shares what the attack reads, or an attack for threat={threat.name}.")


def check_inputs(threat: ThreatModel, attack: Attack | None) -> None:
    """Every missing input (data, checkpoints) in one message, before any work."""
    missing = threat.missing_inputs()
    if attack is not None:
        for key, table in (("checkpoints", attack.checkpoints), ("resume", attack.resume)):
            for stage, path in table.items():
                if str(path) == "???":
                    missing.append(f"attack.{key}.{stage}: this experiment needs a checkpoint of stage "
                                   f"{stage} (attack.{key}.{stage}=PATH)")
                elif not Path(str(path)).expanduser().is_file():
                    missing.append(f"attack.{key}.{stage}: a checkpoint of stage {stage} at {path}")
    if missing:
        raise DataNotFoundError("missing inputs (nothing can be downloaded for these):\n  "
                                + "\n  ".join(missing))


def check_networks(threat: ThreatModel, attack: Attack | None) -> None:
    """Build the attack's networks and run them once on PyTorch's ``meta`` device (shapes only:
    no memory, no arithmetic), so that settings the networks cannot take — an image size the
    encoder depth cannot divide, a discriminator too deep for it — fail with their clear message
    before any work. Only user errors are raised here; anything the meta device cannot run is
    left to the real build."""
    if attack is None:
        return
    with torch.device("meta"), torch.no_grad():
        try:
            models = attack.profile_models(threat)
        except UserError:
            raise
        except Exception as exc:  # e.g. a network that reads a file at construction
            log.debug("meta check of %s skipped: %s", attack.name, exc)
            return
        for name, (module, inputs) in models.items():
            try:
                module(*inputs)
            except UserError:
                raise
            except Exception as exc:  # data-dependent code cannot run without data
                log.debug("meta forward of %s skipped: %s", name, exc)


# ------------------------------------------------------------------------------ stages
def load_stage(module: AttackStage, path: str, stage: str) -> AttackStage:
    """Load a stage's weights from a Lightning checkpoint of an earlier run: ``weights_only``
    reading, strict key and shape matching (an error names what does not fit)."""
    state = state_dict_of(read_checkpoint(path, f"attack.checkpoints.{stage}"))
    load_strict(module, state, str(path), f"attack.checkpoints.{stage}",
                hint="Is it a checkpoint of this stage, made with the same model settings?")
    log.info("stage %s: loaded %s", stage, path)
    return module


def _has_validation(dm: pl.LightningDataModule) -> bool:
    if not is_overridden("val_dataloader", dm, pl.LightningDataModule):
        return False
    loaders = dm.val_dataloader()
    return bool(loaders) if isinstance(loaders, (list, tuple)) else True


def first_steps(attack: Attack | None) -> dict[str, int]:
    """The run's step at which each stage's logging starts: the iterations of the stages before
    it (``"evaluation"``: after the last), so that the stages' curves follow each other on one
    axis (:meth:`RunContext.trainer`). Fixed by the config, so a resumed run logs at the same
    steps as an uninterrupted one."""
    out, step = {}, 0
    for stage in attack.stages if attack is not None else ():
        out[stage] = step
        step += int(attack.steps.get(stage, 0) or 0)
    out["evaluation"] = step
    return out


def fit_stage(ctx: RunContext, attack: Attack, stage: str, module: AttackStage,
              threat: ThreatModel) -> Path:
    """Train ``stage`` for ``attack.steps[stage]`` iterations; returns ``checkpoints/<stage>.ckpt``.
    Its curves are logged under the stage's name (``<stage>/train/...``, ``<stage>/val/...``)
    from the run's step :func:`first_steps` gives it.

    Every ``attack.checkpoint_every`` iterations, and when a signal of ``preempt_signals``
    arrives (:class:`~reconattack.engine.resume.Preemption`), the latest state is kept in
    ``checkpoints/<stage>/last.ckpt``, random states included (:class:`~reconattack.engine.resume.
    RNGState`). The stage continues from such a file when the run is resumed (``resume=true``)
    or when it is given as ``attack.resume[stage]``.
    """
    iterations = attack.steps[stage]
    per_iteration = int(module.optimizer_steps_per_iteration)
    dm = threat.datamodule(iterations)
    dm.setup("fit")
    last = last_checkpoint(ctx.run_dir, stage)
    history = ctx.diagnostics.loss_history(iterations)
    callbacks = [ctx.metric_callback(("val",), metrics=INTERMEDIATE_METRICS, log_prefix=f"{stage}/", leakage=False),
                 RNGState(),
                 Preemption(last, ctx.preempt_signals, stage), ValidationSamples(stage, attack.num_samples),
                 *([history] if history is not None else [])]
    if attack.checkpoint_every:
        callbacks.append(LatestState(last, attack.checkpoint_every * per_iteration))
    resume = require_file(attack.resume.get(stage), f"attack.resume.{stage}") or ctx.state.latest_state(stage)
    extra = {} if _has_validation(dm) else {"limit_val_batches": 0}
    trainer = ctx.trainer(stage, iterations * per_iteration, callbacks=callbacks,
                          first_step=first_steps(attack)[stage], enable_checkpointing=bool(attack.checkpoint_every),
                          check_val_every_n_epoch=attack.val_every_n_epochs, **extra)
    if resume:
        log.info("stage %s: continuing from %s", stage, resume)
    log.info("stage %s: training %d iterations", stage, iterations)
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=str(resume) if resume else None, weights_only=True)
    except NonFiniteLossError as exc:
        kept = (f"the last checkpoint, {last}, is kept (continue with attack.resume.{stage}={last} "
                f"after changing what diverged)" if last.is_file() else
                "no checkpoint was written before it (attack.checkpoint_every)")
        raise NonFiniteLossError(f"{exc}; {kept}") from exc
    ckpt = ctx.run_dir / "checkpoints" / f"{stage}.ckpt"
    # the whole training state (optimisers, schedules, loops), so a stage can be continued from it;
    # said explicitly, else Lightning logs that it defaulted to it
    trainer.save_checkpoint(str(ckpt), weights_only=False)
    log.info("stage %s: checkpoint %s", stage, ckpt)
    ctx.diagnostics.stage_done(stage, history, threat.attack_row)  # the loss checks: diagnostics/<stage>.json
    return ckpt


def fit_attack(ctx: RunContext, threat: ThreatModel, attack: Attack) -> AttackStage:
    """Build every stage in order, loading those given in ``attack.checkpoints`` (and, when the
    run is resumed, those it finished before) and training the ones after the last loaded;
    returns the final stage's module. Each stage is built from its own seed
    (:func:`~reconattack.engine.resume.stage_seed`), so it starts the same whether the stages before it
    were trained in this process or loaded."""
    stages = attack.stages
    loaded = dict(attack.checkpoints)
    for stage in stages:
        done = ctx.state.finished_stage(stage)
        if done is not None and stage not in loaded:
            log.info("stage %s: finished before the run was resumed, loading %s", stage, done)
            loaded[stage] = str(done)
    given = [i for i, s in enumerate(stages) if s in loaded]
    last_given = given[-1] if given else -1
    if attack.test_only and last_given != len(stages) - 1:
        raise ConfigError(f"attack.test_only=true trains nothing, so it needs the final stage's "
                          f"checkpoint: attack.checkpoints.{stages[-1]}=PATH")
    previous: AttackStage | None = None
    for i, stage in enumerate(stages):
        seed_all(stage_seed(ctx.seed, i))
        module = attack.build_stage(stage, threat, previous)
        if stage in loaded:
            load_stage(module, loaded[stage], stage)
        elif i > last_given:
            fit_stage(ctx, attack, stage, module, threat)
        # else: an earlier stage whose weights come with a later stage's checkpoint
        previous = module
    return previous


# ------------------------------------------------------------------------------ evaluation
class Evaluator(pl.LightningModule):
    """One streaming pass over the threat's held-out data: the attack's reconstructions, the
    images of its intermediate stages and the threat's controls, as metric groups for the shared
    callback; the first ``num_samples`` rows are kept for ``samples/test_grid.png``.

    Args:
        stage: the attack's final stage (None: the threat's controls alone).
        evaluation: the threat's :class:`~reconattack.threats.base.ThreatEvaluation`.
        attack_row: metrics prefix of the attack's reconstructions.
        control_rows: ``{control: metrics prefix}``.
        visualise: picture of the leak for the grid, batch -> (B, 3, H, W) in [-1, 1] or None.
        num_samples: rows of the sample grid.
    """

    def __init__(self, stage: AttackStage | None, evaluation: ThreatEvaluation, attack_row: str,
                 control_rows: dict[str, str], visualise, num_samples: int = 8) -> None:
        super().__init__()
        self.stage = stage
        self.evaluation = evaluation
        self.attack_row, self.control_rows = attack_row, dict(control_rows)
        self.visualise, self.num_samples = visualise, int(num_samples)
        self.columns: dict[str, list[torch.Tensor]] = {}

    def _reconstruct(self, batch: dict) -> torch.Tensor:
        return self.stage.reconstruct(batch).float().clamp(-1, 1)

    def test_step(self, batch: dict, batch_idx: int) -> dict:
        rows: dict[str, torch.Tensor] = {}
        intermediate: dict[str, torch.Tensor] = {}
        if self.stage is not None:
            rows[self.attack_row] = self._reconstruct(batch)
            intermediate = {f"{name}/{self.attack_row}": img.float().clamp(-1, 1)
                            for name, img in self.stage.intermediates(batch).items()}
        controls = self.evaluation.controls(batch, self._reconstruct if self.stage is not None else None)
        rows.update({self.control_rows[name]: img.float().clamp(-1, 1) for name, img in controls.items()})
        groups = self.evaluation.groups(batch, {**intermediate, **rows})
        for row in intermediate:
            groups[f"{row}/"]["metrics"] = INTERMEDIATE_METRICS
        self._keep_samples(batch, intermediate, rows)
        return {"groups": groups}

    def _keep_samples(self, batch: dict, intermediate: dict, rows: dict) -> None:
        have = len(self.columns.get("target", []))
        if self.num_samples <= 0 or have >= self.num_samples or not self.trainer.is_global_zero:
            return
        take = self.num_samples - have
        leak = self.visualise(batch) if self.visualise is not None else None
        cols = {"target": batch["target"], **({"leak": leak} if leak is not None else {}),
                **intermediate, **rows}
        for name, img in cols.items():
            self.columns.setdefault(name, []).extend(img[:take].detach().float().cpu().unbind(0))

    def save_samples(self, path: Path) -> None:
        if not self.columns:
            return
        names = list(self.columns)
        save_grid([torch.stack(self.columns[n]) for n in names], path, max_rows=self.num_samples)
        h, w = self.columns[names[0]][0].shape[-2:]
        # the column names, then the tile size (the report cuts the tiles back out of the PNG)
        path.with_suffix(".txt").write_text(" | ".join(names) + f"\ntile: {h}x{w}\n")


class ReleaseFreedMemory(pl.Callback):
    """Every ``every`` test batches, and when the pass ends, the C heap's free pages go back to
    the OS (:func:`~reconattack.utils.memory.release_freed_memory`): the evaluation frees what
    each batch allocated (its tensors stay O(batch)), but glibc kept the freed pages, so the
    process grew with the number of test images (SPEC §8; ``benchmarks/eval_memory.py``)."""

    def __init__(self, every: int = 8) -> None:
        self.every = max(int(every), 1)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if (batch_idx + 1) % self.every == 0:
            release_freed_memory()

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        release_freed_memory()


def _paired_row(ctx: RunContext, threat: ThreatModel) -> str | None:
    """The metrics row of the threat's control that runs the trained attack on another image's
    input (``diagnostics.outputs.shuffled_control``; None where the threat has none)."""
    control = ctx.diagnostics.cfg.shuffled_control
    return threat.control_rows().get(str(control)) if control else None


def evaluate(ctx: RunContext, threat: ThreatModel, attack: Attack | None,
             stage: AttackStage | None) -> dict:
    """The final evaluation; returns ``{"<row>/<metric>": value}`` and writes the sample grid.
    The output collapse checks run in the same pass (``ctx.diagnostics``)."""
    evaluator = Evaluator(stage, threat.scoring(), threat.attack_row, threat.control_rows(),
                          threat.visualise, attack.num_samples if attack is not None else 8)
    cb = ctx.metric_callback(("test",))
    dm = threat.datamodule()
    checks = ctx.diagnostics.output_checks(threat.attack_row, _paired_row(ctx, threat)) if stage is not None else None
    trainer = ctx.trainer("evaluation", callbacks=[cb, ReleaseFreedMemory(), *([checks] if checks else [])],
                          first_step=first_steps(attack)["evaluation"])
    trainer.test(evaluator, datamodule=dm, verbose=False)
    if ctx.is_global_zero:
        evaluator.save_samples(ctx.run_dir / "samples" / "test_grid.png")
        write_rocs(ctx.run_dir, cb.curves.get("test", {}))
    return dict(cb.results.get("test", {}))


# ------------------------------------------------------------------------------ the run
def run_experiment(cfg: DictConfig, run_dir: Path) -> dict:
    """Run the experiment of ``cfg`` (see the module docstring); returns its flat metrics.

    With ``resume=true`` it continues the run in ``run_dir`` (:mod:`reconattack.engine.resume`): a
    finished run returns its metrics, finished stages are loaded, a stage stopped midway
    continues from its latest state."""
    check_config(cfg)
    check_accelerator(cfg.trainer)  # before the data, the caches and the artifacts are touched
    ctx = RunContext(cfg, run_dir)
    ctx.state.start(cfg)
    finished = ctx.state.finished_metrics()
    if finished is not None:
        log.info("resume: %s finished before (metrics.json); nothing to do", run_dir)
        return finished
    threat = build_threat(cfg)
    attack = build_attack(cfg)
    check_fit(threat, attack)
    check_inputs(threat, attack)
    if attack is not None:
        attack.check(threat)
    check_networks(threat, attack)
    try:
        metrics = dict(threat.prepare(ctx))
        final = fit_attack(ctx, threat, attack) if attack is not None else None
        metrics.update(evaluate(ctx, threat, attack, final))
        if ctx.diagnostics.enabled:  # a flag beside the numbers: reconattack/metrics/diagnostics.py
            metrics[WARNINGS_KEY] = ctx.diagnostics.report(list(attack.stages) if attack is not None else [])
    except BaseException:
        ctx.close_logger(status="failed")
        raise
    ctx.close_logger(metrics)
    return metrics
