"""Hydra entry point: ``python -m reconattack.run [+experiment=NAME] [overrides]``.

Composes ``conf/config.yaml`` (a threat model, an attack, data, trainer, logger, metrics), runs
the experiment with the one runner (:mod:`reconattack.runner`), writes ``metrics.json`` into the
run directory and prints where the results are. Returns ``cfg.optimized_metric`` (if set) for
Hydra sweepers.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from reconattack.runner import run_experiment
from reconattack.runtime import is_global_zero, write_metrics
from reconattack.utils.weights import MissingWeightsError

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
    metrics = run_experiment(cfg, run_dir)
    if is_global_zero():
        path = write_metrics(metrics, run_dir)
        shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in sorted(metrics.items())}
        print("\n".join(f"  {k}: {v}" for k, v in shown.items()))
        print(f"Results in {run_dir.resolve()}: metrics.json, samples/, checkpoints/, .hydra/ "
              f"({path.name} written)")
    return metrics


# errors a user causes (missing data, weights, files; bad config values): one clear line, exit 2
USER_ERRORS = (FileNotFoundError, MissingWeightsError, ValueError)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    try:
        metrics = run(cfg)
    except USER_ERRORS as exc:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        log.error("%s: %s", type(exc).__name__, exc)  # console (stderr) and run.log
        sys.exit(2)
    key = cfg.get("optimized_metric")
    value = metrics.get(key) if key else None
    return value if isinstance(value, (int, float)) else None


if __name__ == "__main__":
    main()
