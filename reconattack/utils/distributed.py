"""Batch sizes under data parallelism.

``data.batch_size`` in every config is the batch of one optimisation step over **all** processes
together, as the papers state it (CFGAN: 8 on 2 GPUs): a run on 1, 2 or 8 GPUs trains with the
same recipe. Each process loads its share; DataModules call :func:`per_process_batch` when they
build their loaders (the Trainer, and so the world size, is known then).
"""

from __future__ import annotations

import math

from reconattack.errors import ConfigError


def world_size_of(obj) -> int:
    """The number of processes of the Trainer attached to ``obj`` (a LightningModule or
    LightningDataModule), 1 without one."""
    try:
        trainer = obj.trainer  # a LightningModule without a Trainer raises RuntimeError
    except (AttributeError, RuntimeError):
        return 1
    return int(getattr(trainer, "world_size", 1) or 1) if trainer is not None else 1


def per_process_batch(total: int, world_size: int, key: str = "data.batch_size", exact: bool = True) -> int:
    """Each process's share of a batch of ``total`` images. ``exact`` (training): ``total`` must
    split evenly (else ConfigError naming ``key``); otherwise (evaluation) rounded up."""
    total, world_size = int(total), max(1, int(world_size))
    if total < 1:
        raise ConfigError(f"{key} must be >= 1, got {total}")
    if not exact:
        return math.ceil(total / world_size)
    if total % world_size:
        raise ConfigError(f"{key}={total} is the batch of all {world_size} processes together and must "
                          f"split evenly among them; use a multiple of {world_size}")
    return total // world_size
