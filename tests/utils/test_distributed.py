"""data.batch_size is the batch of all processes together; each DDP process loads its share."""

from types import SimpleNamespace

import pytest

from reconattack.errors import ConfigError
from reconattack.utils.distributed import per_process_batch, world_size_of


def test_per_process_batch():
    assert per_process_batch(8, 1) == 8 and per_process_batch(8, 2) == 4 and per_process_batch(8, 8) == 1
    with pytest.raises(ConfigError, match="data.batch_size=6 .* all 4 processes"):
        per_process_batch(6, 4)
    assert per_process_batch(10, 4, exact=False) == 3  # evaluation: rounded up
    with pytest.raises(ConfigError, match=">= 1"):
        per_process_batch(0, 1)
    assert world_size_of(SimpleNamespace(trainer=None)) == 1
    assert world_size_of(SimpleNamespace(trainer=SimpleNamespace(world_size=4))) == 4
    import pytorch_lightning as pl

    assert world_size_of(pl.LightningModule()) == 1  # no Trainer attached (its .trainer raises)


def test_sift_loader_takes_its_share(tmp_path):
    from reconattack.data.sift_data import SiftDataModule
    from tests.helpers import make_image_folder

    root = make_image_folder(tmp_path / "images", n=12, size=32)
    dm = SiftDataModule({"_target_": "reconattack.data.images.ImageFolderSource", "root": str(root)},
                        image_size=32, val=0, test=2, cache_dir=str(tmp_path / "cache"), batch_size=4,
                        eval_batch_size=2)
    dm.setup("fit")
    assert dm.train_dataloader().batch_size == 4
    dm.trainer = SimpleNamespace(world_size=2, training=False, global_rank=0)
    assert dm.train_dataloader().batch_size == 2 and dm.test_dataloader().batch_size == 1
    dm.trainer = SimpleNamespace(world_size=3, training=False, global_rank=0)
    with pytest.raises(ConfigError, match="data.batch_size=4"):
        dm.train_dataloader()
