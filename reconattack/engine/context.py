"""The run's services, shared by the runner and the threat models: trainers, the metrics
callback, the logger (its steps continued across the run's Trainers), the artifact store and
``metrics.json`` (sample grids: :mod:`reconattack.utils.grids`).

:class:`RunContext` bundles them for one run, built from the run's ``trainer``, ``metrics``,
``logger`` and ``paths`` configs; the runner hands it to the threat model's ``prepare`` (which
may train demo models or encrypt a gallery in a Trainer of its own) and uses it for every stage.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io import CheckpointIO
from omegaconf import DictConfig, OmegaConf

from reconattack.engine.resume import RunState
from reconattack.errors import ConfigError, InputNotFoundError
from reconattack.utils.checkpoints import AtomicCheckpointIO
from reconattack.utils.files import atomic_write_text

log = logging.getLogger(__name__)


def process_rank() -> int:
    """Global rank of this process from the launcher's environment (0 before any process group
    exists and for single-process runs): ``RANK`` (torchrun, Lightning's DDP launcher),
    ``SLURM_PROCID`` (srun with several tasks), ``LOCAL_RANK``."""
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(var, "") != "":
            if var == "SLURM_PROCID" and int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
                continue
            return int(os.environ[var])
    return 0


def is_global_zero() -> bool:
    """True on the main process (rank 0), also before a process group exists."""
    return process_rank() == 0


def make_logger(cfg: DictConfig, run_dir: Path, version: str | None = None):
    """The configured Lightning logger (``cfg.logger``), or False for ``logger=none``.

    ``version``: the run id of the logger of the run's first start (a resumed run); passed on
    when the logger config says ``continue_run: true`` (W&B continues that run, TensorBoard
    writes into the same version folder); otherwise the resumed run logs as a new version.
    ``logger.images=local``: the logger is given no picture, ever; the grids stay under
    ``run_dir/samples`` (:func:`reconattack.engine.tracking.keep_images_local`)."""
    from reconattack.engine.tracking import image_policy, keep_images_local

    if cfg.get("logger") is None or not cfg.logger.get("_target_"):
        return False
    kwargs = OmegaConf.to_container(cfg.logger, resolve=True)
    local = image_policy(kwargs) == "local"
    kwargs.pop("images", None)
    if kwargs.pop("continue_run", False) and version is not None:
        kwargs["version"] = version
    logger = hydra.utils.instantiate(kwargs, save_dir=str(run_dir))
    if local:
        keep_images_local(logger, run_dir / "samples")
    return logger


#: Trainer settings that shorten a run (debugging); never applied to artifacts shared by runs
SHORTENING = ("fast_dev_run", "limit_train_batches", "limit_val_batches", "limit_test_batches",
              "limit_predict_batches", "overfit_batches")


def make_trainer(cfg: DictConfig, run_dir: Path, stage: str, max_steps: int, logger=None,
                 callbacks: list | None = None, whole: bool = False, **overrides) -> pl.Trainer:
    """A Trainer for one stage of an attack, from ``cfg.trainer`` (accelerator, devices, strategy,
    precision, ...), with its checkpoints under ``run_dir/checkpoints/<stage>``. ``whole``: drop
    the settings that shorten a run (:data:`SHORTENING`), for work whose result is shared.

    The progress display is told ``stage`` (:mod:`reconattack.engine.console`: it shows the stage's name
    and iterations); without one (``trainer.callbacks.progress=null``) there is no progress bar
    unless ``trainer.enable_progress_bar`` says so. The known-harmless messages of Lightning are
    kept off the console (:func:`reconattack.engine.console.quiet`)."""
    from pytorch_lightning.callbacks import ProgressBar

    from reconattack.engine.console import StageProgress, quiet

    quiet()
    cbs = [hydra.utils.instantiate(c) for c in cfg.trainer.get("callbacks", {}).values() if c]
    cbs += callbacks or []
    for cb in cbs:
        if isinstance(cb, StageProgress):
            cb.stage = stage
    tcfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    tcfg.pop("callbacks", None)
    tcfg.setdefault("enable_progress_bar", any(isinstance(cb, ProgressBar) for cb in cbs))
    if whole:
        for key in SHORTENING:
            tcfg.pop(key, None)
    tcfg.setdefault("enable_checkpointing", False)
    tcfg.update(overrides)
    # checkpoints are written atomically in their own folder (utils/checkpoints.py)
    plugins = tcfg.pop("plugins", None) or []
    plugins = [hydra.utils.instantiate(p) if isinstance(p, dict) else p
               for p in (plugins if isinstance(plugins, (list, tuple)) else [plugins])]
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins.append(AtomicCheckpointIO())
    return hydra.utils.instantiate(
        tcfg, max_steps=max_steps, logger=logger if logger is not None else False,
        callbacks=cbs, plugins=plugins, default_root_dir=str(run_dir / "checkpoints" / stage), _convert_="all")


def make_metric_callback(cfg: DictConfig, stages: tuple[str, ...], metrics=None, log_prefix: str = "",
                         leakage: bool = True):
    """The shared :class:`~reconattack.metrics.callback.ReconstructionMetrics` from ``cfg.metrics``
    for ``stages``; ``metrics`` overrides the configured metric names; ``log_prefix`` names the
    logged curves (``"<stage>/"``); ``leakage=False`` leaves out the retrieval and identity rows
    (``metrics.retrieval``, ``metrics.identity``: the final evaluation's; not a training stage's
    validation curves nor the whole encrypted gallery's build, whose per-image embeddings would
    grow with it)."""
    kwargs = OmegaConf.to_container(cfg.metrics, resolve=True)
    if metrics is not None:
        kwargs["metrics"] = list(metrics)
    if not leakage:
        kwargs["retrieval"], kwargs["identity"] = None, None
    # not recursive: metrics.identity.model is a face model's config (its net is built by the
    # suite, from the checkpoint, only when the identity rows are computed)
    return hydra.utils.instantiate(kwargs, stages=stages, log_prefix=log_prefix, _recursive_=False)


#: Lightning's shorthand precisions, by their full names
_PRECISIONS = {"32": "32-true", "64": "64-true", "16": "16-mixed", "bf16": "bf16-mixed"}


def built_with(trainer_cfg: DictConfig) -> dict:
    """What an artifact's numbers depend on besides its config: the kind of device that builds it
    (``cpu``, ``cuda``, ``mps``; ``auto`` / ``gpu`` as Lightning resolves them), the Trainer's
    precision and the torch version. Part of every artifact key (:mod:`reconattack.engine.artifacts`):
    a demo's CPU-made models and galleries and a GPU run's are never taken for one another."""
    accelerator = str(trainer_cfg.get("accelerator", "auto")).lower()
    if accelerator in ("auto", "gpu"):
        accelerator = ("cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available()
                       else "cpu" if accelerator == "auto" else accelerator)
    precision = str(trainer_cfg.get("precision", "32-true"))
    return {"device": accelerator, "precision": _PRECISIONS.get(precision, precision),
            "torch": torch.__version__.split("+")[0]}


def _trainer_name(accelerator: str) -> str:
    """How the user chose the trainer: ``trainer=<choice>`` of the running Hydra job, naming the
    experiment when its file chose it (a paper experiment's ``trainer: gpu``), else
    ``trainer.accelerator=<accelerator>``."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return f"trainer.accelerator={accelerator}"
    hc = HydraConfig.get()
    choice, experiment = hc.runtime.choices.get("trainer"), hc.runtime.choices.get("experiment")
    typed = any(str(o).lstrip("+~").partition("=")[0] == "trainer" for o in hc.overrides.task)
    if choice and experiment and not typed:
        return f"+experiment={experiment} sets trainer={choice}, which"
    return f"trainer={choice}" if choice else f"trainer.accelerator={accelerator}"


def _devices_needed(devices) -> int:
    """How many devices must be visible for a Trainer's ``devices``: a count (``-1``,
    ``"auto"``: every visible one, so at least one), or indices (a list, a ``"0,1"`` string):
    enough for the highest."""
    if isinstance(devices, str):
        text = devices.strip()
        if "," in text:
            devices = [int(i) for i in text.split(",") if i.strip()]
        elif text.lstrip("-").isdigit():
            devices = int(text)
        else:  # "auto"
            return 1
    if isinstance(devices, (list, tuple)):
        return max([len(devices)] + [int(i) + 1 for i in devices])
    return max(int(devices), 1) if devices is not None else 1


def check_accelerator(trainer_cfg: DictConfig) -> None:
    """Refuse a trainer this machine cannot run, before any work (else Lightning's
    ``No supported gpu backend found!`` ends the run after its data and artifacts were
    prepared): ``accelerator: gpu`` / ``cuda`` (``trainer=gpu``, ``ddp``, the paper experiments)
    without a visible CUDA GPU (``gpu`` takes Apple's MPS device where there is one, as
    Lightning does), ``mps`` without one, or more devices (``trainer.devices``) than are
    visible. The message says what to run instead."""
    accelerator = str(trainer_cfg.get("accelerator", "auto")).lower()
    if accelerator not in ("gpu", "cuda", "mps"):
        return
    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    mps = 1 if torch.backends.mps.is_available() else 0
    name = _trainer_name(accelerator)
    if accelerator == "mps" or (accelerator == "gpu" and not cuda and mps):
        visible, kind = mps, "an Apple MPS device"
    else:
        visible, kind = cuda, "a CUDA GPU"
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    why = f" (CUDA_VISIBLE_DEVICES={hidden!r})" if hidden is not None and "CUDA" in kind else ""
    if not visible:
        raise ConfigError(f"{name} needs {kind}, none is visible{why}; run with trainer=cpu (slow) "
                          f"or on a machine with one")
    devices = trainer_cfg.get("devices", "auto")
    if OmegaConf.is_config(devices):
        devices = OmegaConf.to_container(devices)
    needed = _devices_needed(devices)
    if needed > visible:
        raise ConfigError(f"{name} with trainer.devices={devices} needs {needed} devices, "
                          f"{visible} {'is' if visible == 1 else 'are'} visible{why}; run with "
                          f"trainer.devices={visible} (or -1: every visible one)")


#: a Trainer on one device, for work done once by rank 0 (artifact builders)
SINGLE_DEVICE = {"devices": 1, "num_nodes": 1, "strategy": "auto", "sync_batchnorm": False}


class RunContext:
    """The services of one run (see the module docstring).

    Args:
        cfg: the composed run config (its ``trainer``, ``metrics``, ``logger``, ``paths`` and
            ``seed`` are read here, nothing else).
        run_dir: the run directory.
    """

    def __init__(self, cfg: DictConfig, run_dir: Path) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.seed = int(cfg.seed)
        self.cache_dir = Path(str(cfg.paths.cache_dir))
        self.rank = process_rank()
        self.state = RunState(self.run_dir, resume=bool(cfg.get("resume", False)),
                              is_global_zero=self.rank == 0)
        self.preempt_signals = list(cfg.get("preempt_signals") or [])
        self._logger = None
        from reconattack.engine.diagnostics import RunDiagnostics

        # the collapse checks (conf/diagnostics/); their settings are checked here, before any work
        self.diagnostics = RunDiagnostics(cfg.get("diagnostics"), self.run_dir, is_global_zero=self.rank == 0)
        from reconattack.engine.tracking import image_policy

        image_policy(cfg.get("logger"))  # a misspelt logger.images is refused before any work

    @property
    def logger(self):
        """The run's Lightning logger (created at first use; a resumed run continues the first
        start's logger run where the logger can), or False for ``logger=none``."""
        if self._logger is None:
            self._logger = make_logger(self.cfg, self.run_dir, self.state.logger_version())
            if self._logger:
                from reconattack.engine.tracking import job_identity

                params = OmegaConf.to_container(self.cfg, resolve=True)
                params["job"] = job_identity()  # experiment, sweep, the swept parameters
                self._logger.log_hyperparams(params)
                self.state.record_logger_version(self._logger.version)
        return self._logger

    def close_logger(self, metrics: dict | None = None, status: str = "success") -> None:
        """End the run's logging (if a logger was created): the final metrics, the pictures in
        ``samples/``, ``metrics`` as the W&B run summary (:func:`reconattack.engine.tracking.finish`)."""
        if not self._logger:
            return
        from reconattack.engine.tracking import finish

        images = {f"samples/{p.stem}": p for p in sorted((self.run_dir / "samples").glob("*.png"))}
        finish(self._logger, metrics or {}, images, status)
        self._logger = False

    def trainer(self, name: str, max_steps: int = -1, callbacks: list | None = None,
                single_device: bool = False, logger=None, first_step: int = 0, **overrides) -> pl.Trainer:
        """A Trainer from the ``trainer`` config with checkpoints under ``checkpoints/<name>``;
        ``single_device`` for work that rank 0 does alone for every run (artifacts: on one
        device, never shortened by ``fast_dev_run`` / ``limit_*``); ``logger=False`` logs
        nothing (default: the run's logger). ``first_step``: the run's step at which this
        Trainer's step 0 is logged (the iterations of the stages before it), so that the run's
        stages read as one run (:func:`reconattack.engine.tracking.shift_steps`)."""
        from reconattack.engine.tracking import shift_steps

        if single_device:
            overrides = {**SINGLE_DEVICE, **overrides}
        logger = self.logger if logger is None else logger
        shift_steps(logger, first_step)
        return make_trainer(self.cfg, self.run_dir, name, max_steps, logger=logger,
                            callbacks=callbacks, whole=single_device, **overrides)

    def metric_callback(self, stages: tuple[str, ...] = ("test",), metrics=None, log_prefix: str = "",
                        leakage: bool = True):
        """The shared metrics callback (``metrics`` config; ``metrics`` overrides the names;
        ``log_prefix`` names the logged curves; ``leakage``: with the retrieval and identity rows,
        :func:`make_metric_callback`)."""
        return make_metric_callback(self.cfg, stages, metrics, log_prefix, leakage)

    def artifacts(self, reuse: bool = True):
        """The content-addressed artifact store under ``paths.cache_dir/artifacts`` (or, with
        ``reuse=False``, private to this run)."""
        from reconattack.engine.artifacts import ArtifactStore

        return ArtifactStore(self.cache_dir / "artifacts", reuse=reuse,
                             private_root=self.run_dir / "artifacts", rank=self.rank,
                             built_with=built_with(self.cfg.trainer))

    @property
    def is_global_zero(self) -> bool:
        return self.rank == 0


def _jsonable(v):
    if isinstance(v, torch.Tensor):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def write_metrics(metrics: dict, run_dir: Path) -> Path:
    """Write the flat metrics dict to ``run_dir/metrics.json`` (numbers, or strings for missing
    ones), atomically: a reader never sees half a file, and a kill leaves the previous one."""
    return atomic_write_text(run_dir / "metrics.json",
                             json.dumps({k: _jsonable(v) for k, v in sorted(metrics.items())}, indent=2))


def require_file(path: str | None, what: str) -> Path | None:
    """Check an optional user-given file path early; raises FileNotFoundError naming it."""
    if path in (None, ""):
        return None
    p = Path(os.path.expanduser(str(path)))
    if not p.is_file():
        raise InputNotFoundError(f"{what}: {p} does not exist")
    return p
