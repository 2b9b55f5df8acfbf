"""A run's collapse checks (:mod:`reconattack.metrics.diagnostics` says what each one is): the
training-loss records of each stage, the output checks of the evaluation pass, and the
``warnings`` list of ``metrics.json``.

- :class:`LossHistory` — a stage's loss terms at every iteration (from the stage's
  :attr:`~reconattack.attacks.base.GANStage.step_losses`), kept in its checkpoints' callback state
  so that a stage continued from ``last.ckpt`` has the whole history.
- :class:`RunDiagnostics` — the run's checks (``ctx.diagnostics``): a stage's loss warnings when
  it ends, written to ``diagnostics/<stage>.json`` (a resumed run reads those of the stages it
  finished before), the output checks' callback for the evaluation (its statistics, flagged or
  not, in ``diagnostics/evaluation.json``), and :meth:`~RunDiagnostics.warnings`, the list the
  runner puts in the metrics.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from reconattack.data.sampling import consumed_batches
from reconattack.metrics.diagnostics import (
    DiagnosticsConfig,
    OutputChecks,
    format_warning,
    loss_warnings,
    loss_windows,
)
from reconattack.utils.files import atomic_write_text

log = logging.getLogger(__name__)

#: the folder of the run directory with each stage's loss statistics and warnings
FOLDER = "diagnostics"


class LossHistory(pl.Callback):
    """Every training iteration's loss terms of a stage: ``{term: (iterations,) float32}``, NaN
    where none was recorded (a term logged on some iterations only). The terms are the stage
    module's ``step_losses`` after each training batch (:class:`~reconattack.attacks.base.GANStage`
    sets them: ``loss_d``, ``loss_g/<term>``); a module without them records nothing. 4 bytes per
    term and iteration (a 300k-iteration stage of 6 terms: 7 MB); rank 0's own values under DDP
    (the logged losses are each process's own too).

    Args:
        iterations: the stage's training iterations.
    """

    def __init__(self, iterations: int) -> None:
        self.iterations = int(iterations)
        self.history: dict[str, torch.Tensor] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        losses = getattr(pl_module, "step_losses", None)
        if not losses:
            return
        i = consumed_batches(trainer) - 1  # the iteration that just ended
        if not 0 <= i < self.iterations:
            return
        names = list(losses)
        values = torch.stack([losses[k].detach().float().reshape(()) for k in names]).cpu().tolist()
        for name, value in zip(names, values):
            if name not in self.history:
                self.history[name] = torch.full((self.iterations,), math.nan)
            self.history[name][i] = value

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: v.numpy() for k, v in self.history.items()}

    # kept in the stage's checkpoints (last.ckpt): a continued stage has its whole history
    def state_dict(self) -> dict[str, Any]:
        return {"iterations": self.iterations, "history": dict(self.history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if int(state_dict.get("iterations", -1)) == self.iterations:
            self.history = {k: v.clone().float() for k, v in state_dict.get("history", {}).items()}


def _summary(history: dict[str, np.ndarray], cfg: DiagnosticsConfig) -> dict[str, dict]:
    """Per term, what the loss checks read, for ``diagnostics/<stage>.json``: the iterations
    recorded, the means of the first and last windows, and for a discriminator term the share of
    the last window below ``losses.discriminator.below``."""
    out = {}
    for term, v in history.items():
        start, end = loss_windows(v, cfg)
        row: dict[str, Any] = {"iterations": int(np.isfinite(v).sum()),
                               "first_mean": float(start.mean()) if len(start) else None,
                               "last_mean": float(end.mean()) if len(end) else None}
        if term in cfg.discriminator_terms:
            row["last_below_share"] = float((end < cfg.discriminator_below).mean()) if len(end) else None
        out[term] = row
    return out


class RunDiagnostics:
    """The collapse checks of one run (see the module docstring).

    Args:
        cfg: the run's ``diagnostics`` config node (None: the defaults).
        run_dir: the run directory.
        is_global_zero: whether this process writes files.
    """

    def __init__(self, cfg: Any, run_dir: Path, is_global_zero: bool = True) -> None:
        self.cfg = DiagnosticsConfig.of(cfg)
        self.run_dir = Path(run_dir)
        self.is_global_zero = bool(is_global_zero)
        self.stage_warnings: dict[str, list[dict]] = {}
        self.output: OutputChecks | None = None

    @property
    def enabled(self) -> bool:
        return self.cfg.enabled

    def path(self, stage: str) -> Path:
        return self.run_dir / FOLDER / f"{stage}.json"

    # ------------------------------------------------------------------------------ stages
    def loss_history(self, iterations: int) -> LossHistory | None:
        """The callback that records a stage's losses (None when the checks are off)."""
        return LossHistory(iterations) if self.enabled else None

    def stage_done(self, stage: str, history: LossHistory | None, row: str) -> list[dict]:
        """The loss checks of a stage that finished training; written to
        ``diagnostics/<stage>.json`` (rank 0) with the windows' means of every term."""
        if history is None:
            return []
        arrays = history.arrays()
        found = loss_warnings(stage, arrays, self.cfg, row)
        self.stage_warnings[stage] = found
        if self.is_global_zero:
            record = {"stage": stage, "iterations": history.iterations, "terms": _summary(arrays, self.cfg),
                      "warnings": found}
            atomic_write_text(self.path(stage), json.dumps(record, indent=2, allow_nan=False) + "\n")
        return found

    def _stage(self, stage: str) -> list[dict]:
        if stage in self.stage_warnings:
            return self.stage_warnings[stage]
        path = self.path(stage)  # trained before this run was resumed
        if path.is_file():
            try:
                found = json.loads(path.read_text()).get("warnings") or []
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
                log.warning("%s is unreadable; the loss checks of stage %s are left out", path, stage)
                return []
            return [w for w in found if isinstance(w, dict)]
        return []

    # ------------------------------------------------------------------------------ outputs
    def output_checks(self, row: str, paired_row: str | None) -> OutputChecks | None:
        """The evaluation pass's callback for the output checks of ``row`` (None when off)."""
        if not self.enabled:
            return None
        self.output = OutputChecks(row, paired_row, self.cfg)
        return self.output

    # ------------------------------------------------------------------------------ the list
    def warnings(self, stages: list[str]) -> list[dict]:
        """Every warning of the run: the loss checks of ``stages`` in their order, then the output
        checks."""
        found = [w for s in stages for w in self._stage(s)]
        if self.output is not None:
            found += self.output.warnings()
        return found

    def report(self, stages: list[str]) -> list[dict]:
        """:meth:`warnings`, each also logged as a warning (console and ``run.log``); the output
        checks' statistics, flagged or not, in ``diagnostics/evaluation.json`` (rank 0)."""
        found = self.warnings(stages)
        for w in found:
            log.warning("collapse check: %s", format_warning(w))
        out = self.output
        if out is not None and out.stats and self.is_global_zero:
            stats = {k: (v if math.isfinite(v) else None) for k, v in out.stats.items()}
            record = {"row": out.row, "paired_row": out.paired_row, "statistics": stats,
                      "warnings": out.warnings()}
            atomic_write_text(self.path("evaluation"), json.dumps(record, indent=2, allow_nan=False) + "\n")
        return found
