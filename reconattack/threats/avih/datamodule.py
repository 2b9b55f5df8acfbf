"""The AVIH threat's DataModule: the attacker's training items and the held-out rows."""

from __future__ import annotations

import pytorch_lightning as pl
from torch.utils.data import DataLoader, Dataset

from reconattack.data.sampling import (
    ResumableLoader,
    ResumableSampler,
    consumed_batches,
    loader_generator,
    trainer_rank_and_world,
)
from reconattack.utils.distributed import per_process_batch, world_size_of


class AVIHDataModule(pl.LightningDataModule):
    """The AVIH leak and held-out data: ``train`` = leaked same-key encrypted images with
    auxiliary images (:class:`~reconattack.data.avih.LeakedWithAuxiliary`), ``test`` = the
    held-out rows (:class:`~reconattack.data.avih.HeldOutRows`)."""

    def __init__(self, train: Dataset | None, test: Dataset, batch_size: int = 32,
                 eval_batch_size: int = 64, num_workers: int = 0) -> None:
        super().__init__()
        self.train_set, self.test_set = train, test
        self.batch_size, self.eval_batch_size = int(batch_size), int(eval_batch_size)
        self.num_workers = int(num_workers)

    def train_dataloader(self) -> DataLoader:
        """The leaked items in dataset order (each item is drawn from its own seed), each process
        its share, started where a restored checkpoint left off."""
        rank, world = trainer_rank_and_world(self)
        batch = per_process_batch(self.batch_size, world)
        sampler = ResumableSampler(len(self.train_set), batch, shuffle=False, rank=rank, world_size=world,
                                   start_batch=consumed_batches(self.trainer))
        return ResumableLoader(self.train_set, batch_size=batch, sampler=sampler, drop_last=True,
                               generator=loader_generator(0),
                               num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def test_dataloader(self) -> DataLoader:
        batch = per_process_batch(self.eval_batch_size, world_size_of(self), "data.eval_batch_size", exact=False)
        return DataLoader(self.test_set, batch_size=batch, shuffle=False,
                          num_workers=self.num_workers)


__all__ = ["AVIHDataModule"]
