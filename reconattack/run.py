"""Hydra entry point: ``python -m reconattack.run [+experiment=NAME] [overrides]``.

Composes ``conf/config.yaml`` (a threat model, an attack, data, trainer, logger, metrics), runs
the experiment with the one runner (:mod:`reconattack.engine.runner`), writes ``metrics.json`` into the
run directory and prints where the results are. Returns ``cfg.optimized_metric`` (if set) for
Hydra sweepers. An error the user caused (:class:`~reconattack.errors.UserError`: a bad config
value, missing or malformed data, checkpoints or weights) is printed as one line and the exit
status is 2; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from omegaconf import DictConfig
from pytorch_lightning.utilities.exceptions import SIGTERMException

from reconattack.engine.context import is_global_zero, write_metrics
from reconattack.engine.runner import run_experiment
from reconattack.engine.sweeps import clear_failure, job_guard
from reconattack.errors import UserError

log = logging.getLogger("reconattack")


def _run_dir(cfg: DictConfig) -> Path:
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(cfg.paths.output_dir)


def run(cfg: DictConfig) -> dict:
    """Run the configured experiment; returns its flat final metrics (also in ``metrics.json``)."""
    pl.seed_everything(cfg.seed, workers=True)
    run_dir = _run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.get("resume") and is_global_zero():
        clear_failure(run_dir)  # a sweep job that failed before is being run again
    metrics = run_experiment(cfg, run_dir)
    if is_global_zero():
        path = write_metrics(metrics, run_dir)
        print(summary(metrics))
        print(f"Results in {run_dir.resolve()}: metrics.json, samples/, checkpoints/, .hydra/ "
              f"({path.name} written)")
    return metrics


def summary(metrics: dict) -> str:
    """The final metrics as printed, one ``  name: value`` line each (floats to 4 decimals); a
    metric that could not be computed says ``missing (N)``, and each reason (N) is printed once
    after them instead of on every row (``metrics.json`` keeps it on every row). The collapse
    checks' warnings come last, a line each (:func:`~reconattack.metrics.diagnostics.warning_lines`)."""
    from reconattack.metrics.diagnostics import WARNINGS_KEY, warning_lines
    from reconattack.metrics.suite import MISSING_PREFIX

    reasons: dict[str, int] = {}
    lines = []
    for key, value in sorted(metrics.items()):
        if key == WARNINGS_KEY:  # the collapse checks' flags: after the numbers, a line each
            continue
        if isinstance(value, str) and value.startswith(MISSING_PREFIX):
            n = reasons.setdefault(value[len(MISSING_PREFIX):], len(reasons) + 1)
            value = f"missing ({n})"
        elif isinstance(value, float):
            value = round(value, 4)
        lines.append(f"  {key}: {value}")
    lines += [f"  ({n}) missing: {reason}" for reason, n in reasons.items()]
    lines += [f"  {line}" for line in warning_lines(metrics)]
    return "\n".join(lines)


# errors a user causes and can fix (bad config values; missing or malformed data, checkpoints,
# weights): one clear line, exit 2. Every other exception is a bug and keeps its traceback.
USER_ERRORS = (UserError,)


def user_error(exc: BaseException) -> BaseException | None:
    """The user error ``exc`` stands for, or None when it is a bug.

    That is ``exc`` itself when it is one of :data:`USER_ERRORS`, or the user error that a Hydra
    ``InstantiationException`` was raised from (``hydra.utils.instantiate`` wraps whatever a
    ``_target_`` raises, with the original as ``__cause__``). Other exceptions are not looked
    through: a bug raised while handling a user error stays a bug.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, USER_ERRORS):
            return exc
        if not isinstance(exc, InstantiationException):
            return None
        seen.add(id(exc))
        exc = exc.__cause__
    return None


def run_cli(cfg: DictConfig) -> float | None:
    """:func:`run` for the command line: a user error becomes one line on the log (console and
    ``run.log``) and exit status 2 (``HYDRA_FULL_ERROR=1``: raised with its traceback instead);
    any other exception propagates. In a multirun a failed job is recorded instead and the sweep
    goes on (:mod:`reconattack.engine.sweeps`). Returns ``cfg.optimized_metric``'s value (or None)."""
    metrics = None
    try:
        with job_guard(_run_dir(cfg), is_user_error=lambda e: user_error(e) is not None):
            metrics = run(cfg)
    except SIGTERMException:  # Lightning stopped an evaluation or encryption pass on SIGTERM
        log.warning("stopped by SIGTERM; continue with resume=true and the same run directory")
        sys.exit(128 + signal.SIGTERM)
    except Exception as exc:
        err = user_error(exc)
        if err is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        log.error("%s: %s", type(err).__name__, err)  # console (stderr) and run.log
        sys.exit(2)
    if metrics is None:  # a failed job of a multirun, recorded in its directory
        return None
    key = cfg.get("optimized_metric")
    value = metrics.get(key) if key else None
    return value if isinstance(value, (int, float)) else None


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    return run_cli(cfg)


if __name__ == "__main__":
    main()
