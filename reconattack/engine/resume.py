"""Continuing a run where it stopped (SPEC §8): ``resume=true`` with the same run directory
(``hydra.run.dir=DIR``; in a sweep the same ``hydra.sweep.dir``), after a kill, a crash, a
preemption or a time limit.

What the run directory keeps, and what a resumed run does with it (the runner,
:mod:`reconattack.engine.runner`):

- ``state/config.yaml`` — the configuration of the first start. A resumed run must have the same
  one (a run continued under other settings would be neither); the keys that may differ are
  :data:`FREE_KEYS` (loader processes, the logger, the resume switch itself).
- ``metrics.json`` — written last: a finished run is not run again.
- ``checkpoints/<stage>.ckpt`` — a finished stage: loaded, not trained again.
- ``checkpoints/<stage>/last.ckpt`` — a stage's latest state (every ``attack.checkpoint_every``
  iterations, and when a signal of ``preempt_signals`` arrives, see :class:`Preemption`): the
  stage continues from it with the same batches (:mod:`reconattack.data.sampling`) and the same
  random numbers (:class:`RNGState`) as an uninterrupted run.
- ``state/logger.json`` — the logger's run id (W&B), so the resumed run continues the same W&B
  run instead of starting another.

Artifacts shared between runs (the AVIH encrypted gallery) continue on their own: their builder
keeps finished chunks under the artifact store's work folder (:mod:`reconattack.engine.artifacts`).
"""

from __future__ import annotations

import json
import logging
import random
import signal
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import yaml
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint

from reconattack.errors import ConfigError
from reconattack.utils.distributed import world_size_of
from reconattack.utils.files import atomic_write_text

log = logging.getLogger(__name__)

STATE_DIR = "state"
#: settings a resumed run may change: they do not change what the run computes
FREE_KEYS = ("resume", "data.num_workers", "logger", "trainer.callbacks", "trainer.enable_progress_bar",
             "preempt_signals", "diagnostics")


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): node}


def _free(key: str) -> bool:
    return any(key == f or key.startswith(f + ".") for f in FREE_KEYS)


class RunState:
    """The resumable state of one run directory (see the module docstring).

    Args:
        run_dir: the run directory.
        resume: continue what is there (False: start afresh; the state of an earlier run in the
            same directory is replaced).
        is_global_zero: this process writes the state files (the others only read them).
    """

    def __init__(self, run_dir: Path, resume: bool = False, is_global_zero: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.resume = bool(resume)
        self.is_global_zero = bool(is_global_zero)
        self.dir = self.run_dir / STATE_DIR

    # ------------------------------------------------------------------------ the config
    @staticmethod
    def comparable(cfg: DictConfig) -> dict[str, Any]:
        """The resolved config without ``hydra``, flat (``{"a.b": value}``)."""
        data = OmegaConf.to_container(cfg, resolve=True)
        data.pop("hydra", None)
        return _flat(data)

    def start(self, cfg: DictConfig) -> bool:
        """Check ``cfg`` against the first start's and record it; True when there is earlier
        state to continue. A resumed run with other settings raises ConfigError naming them."""
        path = self.dir / "config.yaml"
        now = self.comparable(cfg)
        if self.resume and path.is_file():
            before = yaml.safe_load(path.read_text()) or {}
            changed = sorted(k for k in set(before) | set(now)
                             if not _free(k) and before.get(k, "<absent>") != now.get(k, "<absent>"))
            if changed:
                shown = "; ".join(f"{k}: {before.get(k, '<absent>')!r} -> {now.get(k, '<absent>')!r}"
                                  for k in changed[:8])
                raise ConfigError(
                    f"resume=true in {self.run_dir}, but the configuration differs from the run's first "
                    f"start in {len(changed)} setting(s): {shown}. Continue with the same settings, or "
                    f"start a new run directory")
            log.info("resume: continuing %s", self.run_dir)
            return True
        if self.resume:
            log.warning("resume=true, but %s holds no earlier run: starting from the beginning (give "
                        "the run's directory with hydra.run.dir=DIR)", self.run_dir)
        if self.is_global_zero:
            atomic_write_text(path, yaml.safe_dump(now, sort_keys=True))
            (self.dir / "logger.json").unlink(missing_ok=True)
        return False

    # --------------------------------------------------------------------- what is there
    def finished_metrics(self) -> dict | None:
        """The metrics of a finished run (resume only), else None."""
        path = self.run_dir / "metrics.json"
        if self.resume and path.is_file():
            return json.loads(path.read_text())
        return None

    def finished_stage(self, stage: str) -> Path | None:
        """``checkpoints/<stage>.ckpt`` of a stage finished earlier (resume only), else None."""
        path = self.run_dir / "checkpoints" / f"{stage}.ckpt"
        return path if self.resume and path.is_file() else None

    def latest_state(self, stage: str) -> Path | None:
        """``checkpoints/<stage>/last.ckpt`` of a stage stopped midway (resume only), else None."""
        path = last_checkpoint(self.run_dir, stage)
        return path if self.resume and path.is_file() else None

    # ------------------------------------------------------------------------ the logger
    def logger_version(self) -> str | None:
        """The logger run id of the first start (resume only), else None."""
        path = self.dir / "logger.json"
        if not self.resume or not path.is_file():
            return None
        return json.loads(path.read_text()).get("version")

    def record_logger_version(self, version: Any) -> None:
        if self.is_global_zero and version is not None:
            atomic_write_text(self.dir / "logger.json", json.dumps({"version": str(version)}))


def last_checkpoint(run_dir: Path, stage: str) -> Path:
    """Where a stage keeps its latest state: ``checkpoints/<stage>/last.ckpt``."""
    return Path(run_dir) / "checkpoints" / stage / "last.ckpt"


class LatestState(ModelCheckpoint):
    """The stage's latest state, ``checkpoints/<stage>/last.ckpt``, every ``every`` optimizer steps
    (one file, replaced). How often it is written is a setting of the run, not of what it holds:
    its state in a checkpoint is found again when a stage continues with another
    ``attack.checkpoint_every`` (Lightning's own key would include the frequency, and the
    continued stage would warn that the callback that made the checkpoint is missing)."""

    def __init__(self, last: Path, every: int) -> None:
        super().__init__(dirpath=str(last.parent), filename=last.stem, save_top_k=1,
                         enable_version_counter=False, every_n_train_steps=int(every))

    @property
    def state_key(self) -> str:
        return "LatestState"

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """The bookkeeping of the writer of the checkpoint, when it wrote into this folder (the
        same run continuing); a checkpoint of another run (``attack.resume.<stage>``) brings
        nothing this one needs (its file is replaced, never ranked)."""
        if state_dict.get("dirpath") == self.dirpath:
            super().load_state_dict(state_dict)


def stage_seed(seed: int, index: int) -> int:
    """The seed a stage's networks are built with: the run seed for the first stage, a number
    derived from (seed, index) for the later ones — so a stage's initial weights do not depend on
    whether the stages before it were trained in this process or loaded."""
    if index == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def seed_all(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (all devices), quietly."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ------------------------------------------------------------------------------- callbacks
def rng_state() -> dict[str, Any]:
    """The global random states (Python, NumPy, torch CPU and CUDA) as tensors and plain
    containers (a ``weights_only`` checkpoint holds them)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, state, gauss_next = random.getstate()
    out = {"python": [version, list(state), gauss_next],
           "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
           "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    version, values, gauss_next = state["python"]
    random.setstate((version, tuple(values), gauss_next))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class RNGState(pl.Callback):
    """Keeps the global random states in every checkpoint and restores them when a stage
    continues from one (Lightning does not), at the start of training: dropout masks and random
    augmentations inside the step then continue as in an uninterrupted run."""

    def __init__(self) -> None:
        self._restore: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"rng": rng_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restore = state_dict.get("rng")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._restore is not None:
            set_rng_state(self._restore)
            self._restore = None


class Preempted(SystemExit):
    """A stage stopped by a signal after saving its state; the exit status is 128 + signal."""


def parse_signal(name: str) -> signal.Signals:
    """A signal of the ``preempt_signals`` config by name (``SIGTERM``, ``USR1``, ...)."""
    key = str(name).upper()
    try:
        return signal.Signals[key if key.startswith("SIG") else f"SIG{key}"]
    except KeyError:
        raise ConfigError(f"preempt_signals: unknown signal {name!r}") from None


def _is_lightnings(handler) -> bool:
    """Lightning's own signal handlers (their work, telling the loop to stop, is done here; its
    SIGTERM handler would also wait for a broadcast the other processes never make)."""
    module = getattr(handler, "__module__", None) or type(handler).__module__
    return str(module).split(".")[0] in ("pytorch_lightning", "lightning", "lightning_fabric")


class Preemption(pl.Callback):
    """On a signal of ``signals`` (SLURM sends SIGTERM before preempting a job, and a chosen
    signal before its time limit, e.g. ``--signal=USR1@120``) the stage finishes its current
    step, saves its state to ``path`` and stops with :class:`Preempted` (exit status 128 +
    signal); ``resume=true`` continues from there. Under DDP the processes agree at every step,
    so all of them stop after the same step.

    The handlers replace the ones before them for the stage's training (Lightning acts on SIGTERM
    only at the end of an epoch on one process); once the state is saved, the previous handler of
    the signal runs unless it is Lightning's (submitit's requeues the job), and the previous
    handlers are restored.
    """

    def __init__(self, path: Path, signals: list[str] | tuple[str, ...] = ("SIGTERM", "SIGUSR1"),
                 stage: str = "") -> None:
        self.path = Path(path)
        self.signals = [parse_signal(s) for s in signals]
        self.stage = stage
        self.received: int | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def _handler(self, signum, frame) -> None:
        self.received = int(signum)
        log.warning("%s received: stage %s saves its state after the current step", signal.Signals(signum).name,
                    self.stage)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in self.signals:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handler)

    def _restore_handlers(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        stop = self.received is not None
        if world_size_of(pl_module) > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if not stop:
            return
        trainer.save_checkpoint(str(self.path), weights_only=False)
        signum = self.received or int(signal.SIGTERM)
        name = signal.Signals(signum).name
        log.warning("stage %s stopped by %s at global step %d; its state is in %s (continue with "
                    "resume=true and the same run directory)", self.stage, name, trainer.global_step, self.path)
        previous = self._previous.get(signal.Signals(signum))
        self._restore_handlers()
        if callable(previous) and not _is_lightnings(previous):  # e.g. submitit's: requeues the job
            previous(signum, None)
        raise Preempted(128 + signum)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if threading.current_thread() is threading.main_thread():
            self._restore_handlers()


__all__ = ["FREE_KEYS", "Preempted", "Preemption", "RNGState", "RunState", "last_checkpoint",
           "parse_signal", "rng_state", "seed_all", "set_rng_state", "stage_seed"]
