"""The packaged photos' crops (reconattack.data.photos): each crop is the photo's region at the
positions drawn as written out here, and the split keeps the test photos out of training."""

from __future__ import annotations

import numpy as np
import pytest

from reconattack.data.photos import PHOTOS, packaged_photo, photo_crops
from reconattack.errors import ConfigError


def test_crops_are_the_photos_regions_and_the_test_photos_stay_out_of_training():
    side, test = 64, ("astronaut", "flower")
    crops = photo_crops(side=side, train_crops=2, test_crops=3, test_photos=test, seed=5)
    rng = np.random.default_rng(5)
    names = []
    for photo in PHOTOS:  # the draws, photo by photo in PHOTOS' order: y then x
        image = packaged_photo(photo)
        h, w = image.shape[:2]
        for k in range(3 if photo in test else 2):
            y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            names.append(f"{photo}_{k:03d}")
            np.testing.assert_array_equal(crops.load(len(names) - 1), image[y:y + side, x:x + side])
    assert [crops.name(i) for i in range(len(crops))] == names
    split = crops.fixed_split()
    assert split["val"] == [] and sorted(split["test"]) == sorted(f"{p}_{k:03d}" for p in test for k in range(3))
    assert not {n.rsplit("_", 1)[0] for n in split["train"]} & set(test)
    assert len(split["train"]) == 2 * (len(PHOTOS) - len(test))


def test_the_photos_are_rgb_and_larger_than_the_crops():
    for name in PHOTOS:
        image = packaged_photo(name)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 and min(image.shape[:2]) >= 256
    with pytest.raises(ConfigError, match="no packaged photo 'lena'"):
        photo_crops(test_photos=["lena"])
    with pytest.raises(ConfigError, match="larger than the photo"):
        photo_crops(side=1000)


def test_the_data_module_takes_the_sources_split(tmp_path):
    from reconattack.engine.runner import build_threat
    from tests.helpers import compose_cfg, experiment_overrides

    cfg = compose_cfg(experiment_overrides("demo_photos", tmp_path))
    threat = build_threat(cfg)
    threat.dm.prepare_data()
    threat.dm.setup()
    source = threat.dm.source
    assert threat.dm.split == source.fixed_split()
    test = threat.dm.datasets["test"]
    assert {source.name(i).rsplit("_", 1)[0] for i in test.indices} == set(cfg.data.source.test_photos)
