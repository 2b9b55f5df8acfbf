"""Pieces every attack pipeline shares: trainers per stage, loggers, sample grids, metrics.json.

An attack pipeline is a function ``pipeline(cfg, run_dir) -> dict`` named by
``cfg.attack.pipeline``; it may train several stages (each a LightningModule fitted by its own
Trainer built with :func:`make_trainer`) and returns the flat final metrics.
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
from omegaconf import DictConfig, OmegaConf

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


def make_logger(cfg: DictConfig, run_dir: Path):
    """The configured Lightning logger (``cfg.logger``), or False for ``logger=none``."""
    if cfg.get("logger") is None or not cfg.logger.get("_target_"):
        return False
    return hydra.utils.instantiate(cfg.logger, save_dir=str(run_dir))


def wandb_logger(save_dir: str, project: str = "reconattack", name: str | None = None,
                 offline: bool | None = None, **kwargs):
    """WandbLogger that goes offline by itself when no API key is configured.

    An API key counts as configured when ``WANDB_API_KEY`` is set or ``~/.netrc`` has an
    entry for api.wandb.ai (what ``wandb login`` writes). ``offline`` forces either mode.
    """
    from pytorch_lightning.loggers import WandbLogger

    if offline is None:
        netrc = Path(os.path.expanduser("~/.netrc"))
        has_key = bool(os.environ.get("WANDB_API_KEY")) or (
            netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore"))
        offline = not has_key or os.environ.get("WANDB_MODE") == "offline"
        if offline:
            log.info("W&B: no API key configured, logging offline to %s (sync later with `wandb sync`)",
                     save_dir)
    return WandbLogger(save_dir=save_dir, project=project, name=name, offline=offline, **kwargs)


def make_trainer(cfg: DictConfig, run_dir: Path, stage: str, max_steps: int, logger=None,
                 callbacks: list | None = None, **overrides) -> pl.Trainer:
    """A Trainer for one stage of an attack, from ``cfg.trainer`` (accelerator, devices, strategy,
    precision, ...), with its checkpoints under ``run_dir/checkpoints/<stage>``."""
    cbs = [hydra.utils.instantiate(c) for c in cfg.trainer.get("callbacks", {}).values() if c]
    cbs += callbacks or []
    tcfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    tcfg.pop("callbacks", None)
    tcfg.setdefault("enable_checkpointing", False)
    tcfg.update(overrides)
    return hydra.utils.instantiate(
        tcfg, max_steps=max_steps, logger=logger if logger is not None else False,
        callbacks=cbs, default_root_dir=str(run_dir / "checkpoints" / stage), _convert_="all")


def make_metric_callback(cfg: DictConfig, stages: tuple[str, ...], metrics=None):
    """The shared :class:`~reconattack.metrics.callback.ReconstructionMetrics` from ``cfg.metrics``
    for ``stages``; ``metrics`` overrides the configured metric names."""
    kwargs = OmegaConf.to_container(cfg.metrics, resolve=True)
    if metrics is not None:
        kwargs["metrics"] = list(metrics)
    return hydra.utils.instantiate(kwargs, stages=stages)


def save_grid(columns: list[torch.Tensor], path: Path, max_rows: int = 8) -> None:
    """Save a PNG grid: one row per image, one column per tensor in ``columns``.

    Each column is (B, 3, H, W) in [-1, 1] (same B, H, W); e.g. ground truth | input
    visualisation | reconstruction.
    """
    import torchvision

    n = min(max_rows, columns[0].shape[0])
    tiles = torch.stack([c[:n].detach().float().cpu().clamp(-1, 1) for c in columns], dim=1)
    tiles = tiles.flatten(0, 1)  # row-major: image i, column j
    path.parent.mkdir(parents=True, exist_ok=True)
    torchvision.utils.save_image((tiles + 1) / 2, str(path), nrow=len(columns), padding=2, pad_value=1.0)


def _jsonable(v):
    if isinstance(v, torch.Tensor):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def write_metrics(metrics: dict, run_dir: Path) -> Path:
    """Write the flat metrics dict to ``run_dir/metrics.json`` (numbers, or strings for missing ones)."""
    path = run_dir / "metrics.json"
    path.write_text(json.dumps({k: _jsonable(v) for k, v in sorted(metrics.items())}, indent=2))
    return path


def require_file(path: str | None, what: str) -> Path | None:
    """Check an optional user-given file path early; raises FileNotFoundError naming it."""
    if path in (None, ""):
        return None
    p = Path(os.path.expanduser(str(path)))
    if not p.is_file():
        raise FileNotFoundError(f"{what}: {p} does not exist")
    return p
