"""The training order of a stage as a function of the seed and the step, so that a stage
continued from a checkpoint sees the very batches an uninterrupted run would have seen
(SPEC §8, resume).

:class:`ResumableSampler` is the sampler of every training DataLoader in the package. Its order
for an epoch depends on ``(seed, epoch)`` only, never on the global RNG or on how many epochs
this process has iterated; each process takes its share of the epoch's order, as
:class:`~torch.utils.data.DistributedSampler` does (Lightning leaves such a sampler in place under
DDP and sets its epoch); and it starts where the Trainer's restored step says
(:func:`consumed_batches`), skipping the batches the checkpointed run had already trained on by
index, without loading them. With ``item_seeds`` it yields ``(index, item_seed)`` pairs: a seed
for the item's random augmentation that is a function of ``(seed, epoch, position)``, the same in
a loader worker, in the main process, before and after a restart.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

#: item seeds are drawn below this bound (63 bits: they fit an int64 tensor)
SEED_BOUND = 2**63 - 1


def steps_per_iteration(trainer) -> int:
    """Optimizer steps of one training iteration of the Trainer's module: its
    ``optimizer_steps_per_iteration`` (a GAN stage steps two optimizers per batch; default 1)."""
    try:
        module = trainer.lightning_module
    except (AttributeError, RuntimeError):
        module = None
    return max(1, int(getattr(module, "optimizer_steps_per_iteration", 1) or 1))


def consumed_batches(trainer) -> int:
    """Training batches this process has finished in the Trainer's current fit: 0 for a fresh
    fit; after ``trainer.fit(ckpt_path=...)`` restored a checkpoint (called from
    ``train_dataloader``, which Lightning calls after the restore), the checkpoint's position.

    It is ``global_step`` (optimizer steps) over :func:`steps_per_iteration`.
    """
    if trainer is None:
        return 0
    return int(getattr(trainer, "global_step", 0) or 0) // steps_per_iteration(trainer)


def loader_generator(seed: int) -> torch.Generator:
    """The generator a training DataLoader draws its workers' base seed from at every epoch's
    ``iter()``: its own, so that drawing it does not advance the global RNG (which the training
    step's dropout reads) at epoch boundaries an interrupted run would not cross the same way."""
    return torch.Generator().manual_seed(int(seed))


def trainer_rank_and_world(holder) -> tuple[int, int]:
    """(global rank, world size) of the Trainer attached to ``holder`` (a DataModule), or (0, 1)."""
    trainer = getattr(holder, "trainer", None)
    if trainer is None:
        return 0, 1
    return int(getattr(trainer, "global_rank", 0) or 0), int(getattr(trainer, "world_size", 1) or 1)


class ResumableSampler(DistributedSampler):
    """Training order of one process (see the module docstring).

    Every epoch yields exactly ``len(self)`` items, ``batches_per_epoch`` full batches of
    ``batch_size`` (the remainder of the epoch's order is dropped, as ``drop_last``).

    Args:
        length: items in the dataset (N).
        batch_size: this process's batch (the DataLoader's ``batch_size``).
        seed: seeds the order and the item seeds (the run seed: training randomness).
        shuffle: a new permutation of the N items every epoch; False: dataset order.
        rank, world_size: this process and the number of processes.
        start_batch: batches this process has already trained on in this stage
            (:func:`consumed_batches`); the iteration of epoch ``e`` skips
            ``min(max(start_batch - e * batches_per_epoch, 0), batches_per_epoch)`` batches.
        item_seeds: yield ``(index, item_seed)`` instead of ``index``.
    """

    def __init__(self, length: int, batch_size: int, seed: int = 0, shuffle: bool = True,
                 rank: int = 0, world_size: int = 1, start_batch: int = 0,
                 item_seeds: bool = False) -> None:
        super().__init__(range(int(length)), num_replicas=int(world_size), rank=int(rank),
                         shuffle=bool(shuffle), seed=int(seed), drop_last=True)
        self.length, self.batch_size = int(length), int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batches_per_epoch = (self.length // self.num_replicas) // self.batch_size
        self.start_batch = max(0, int(start_batch))
        self.item_seeds = bool(item_seeds)

    def __len__(self) -> int:
        return self.batches_per_epoch * self.batch_size

    def order(self, epoch: int) -> np.ndarray:
        """The epoch's order of all N items (every process computes the same one)."""
        if not self.shuffle:
            return np.arange(self.length)
        return np.random.default_rng([self.seed, int(epoch)]).permutation(self.length)

    def seeds(self, epoch: int) -> np.ndarray:
        """Augmentation seeds of the epoch's positions 0..N-1 (int64, in [0, 2**63 - 1))."""
        return np.random.default_rng([self.seed, int(epoch), 1]).integers(SEED_BOUND, size=self.length)

    def skipped(self, epoch: int) -> int:
        """Batches of ``epoch`` already trained on before the restart (0 for a fresh fit)."""
        done = self.start_batch - int(epoch) * self.batches_per_epoch
        return min(max(done, 0), self.batches_per_epoch)

    def positions(self, epoch: int) -> np.ndarray:
        """Positions in the epoch's order that this process trains on, in order, before the skip."""
        used = self.batches_per_epoch * self.batch_size * self.num_replicas
        return np.arange(self.rank, used, self.num_replicas)

    def __iter__(self) -> Iterator:
        epoch = int(self.epoch)
        positions = self.positions(epoch)[self.skipped(epoch) * self.batch_size:]
        index = self.order(epoch)[positions].tolist()
        if not self.item_seeds:
            return iter(index)
        return iter(zip(index, self.seeds(epoch)[positions].tolist()))


class ResumableLoader(DataLoader):
    """A training DataLoader whose ``sampler`` is a :class:`ResumableSampler`.

    It answers Lightning's stateful-loader protocol (``state_dict`` / ``load_state_dict``) so that
    Lightning knows it continues mid-epoch: its position is not a state of its own but the
    restored step, read when the loader is built (:func:`consumed_batches`), so the state it
    keeps in a checkpoint is empty."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.sampler, ResumableSampler):
            raise TypeError(f"ResumableLoader needs a ResumableSampler, got {type(self.sampler).__name__}")

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state_dict: dict) -> None:
        return None


__all__ = ["ResumableLoader", "ResumableSampler", "SEED_BOUND", "consumed_batches", "loader_generator", "steps_per_iteration",
           "trainer_rank_and_world"]
