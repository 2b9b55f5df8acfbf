"""The one keypoints-to-map path (reconattack.data.sift.mapper.SiftMapper): the grid, the defence
and its keys, the map settings, and that training's data module and the threat use it."""

import hashlib
import math
import zlib
from dataclasses import asdict

import numpy as np
import pytest

from reconattack.data.sift.mapper import SiftMapper, evaluation_key, name_key, training_key
from reconattack.data.sift_data import collate_sift
from reconattack.defences.sift import SiftDefence
from reconattack.errors import ConfigError


def _made(n=60, side=64.0, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.uniform(-0.5, side - 0.5, (n, 2)).astype(np.float32), rng.integers(0, 256, (n, 128)).astype(np.uint8),
            rng.random(n).astype(np.float32))


def test_an_image_of_another_size_lands_where_resizing_takes_its_pixel_centres():
    """A 200x100 (H x W) image's keypoints on the 32-pixel grid: x to (x + 0.5) * 32 / 100 - 0.5,
    y to (y + 0.5) * 32 / 200 - 0.5; uncompressed, the cell (ceil(y) - 1, ceil(x) - 1) holds d / 127.5 - 1."""
    mapper = SiftMapper(32, compress=False)
    xy = np.array([[49.5, 99.5], [0.0, 0.0], [99.0, 199.0]], np.float32)
    desc = np.array([[10] * 128, [200] * 128, [255] * 128], np.uint8)
    got = mapper(xy, desc, (200, 100), key=(0,))
    want = np.zeros((128, 32, 32))
    for (x, y), d in zip(xy.astype(np.float64), desc):
        gx, gy = (x + 0.5) * 32 / 100 - 0.5, (y + 0.5) * 32 / 200 - 0.5
        want[:, min(max(math.ceil(gy) - 1, 0), 31), min(max(math.ceil(gx) - 1, 0), 31)] = d / 127.5 - 1
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-6)
    shared, _ = mapper.share(xy, desc, source_size=(32, 32), key=(0,))
    np.testing.assert_array_equal(shared, xy)  # at the model's size: the keypoints as they are


def test_the_defence_is_applied_with_draws_from_its_seed_and_the_key():
    xy, desc, strength = _made()
    defence = SiftDefence(keep=0.5, seed=7)
    mapper = SiftMapper(64, defence=defence)
    got = mapper.share(xy, desc, strength, key=(3, 4))
    want = defence(xy, desc, strength, np.random.default_rng([7, 3, 4]))
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    other = mapper.share(xy, desc, strength, key=(3, 5))
    assert not np.array_equal(other[0], got[0])
    assert mapper.needs_strength is False and SiftMapper(64, defence=SiftDefence(keep=0.5, select="response")).needs_strength
    assert SiftMapper(64).share(xy, desc, key=(0,))[0] is xy  # no defence, no grid: untouched


def test_keys():
    assert training_key(-1) == (2 ** 64 - 1,) and training_key(5) == (5,)
    assert evaluation_key("test", 3) == (zlib.crc32(b"test"), 3)
    digest = hashlib.sha256("shots/a.jpg".encode()).digest()
    assert name_key("shots/a.jpg") == tuple(int.from_bytes(digest[i:i + 4], "little") for i in (0, 4, 8, 12))
    assert name_key("a") != name_key("b") and len(name_key("\udcff")) == 4  # any name, even a lone surrogate


def test_withheld_coordinates_place_by_the_references_never_the_image_itself():
    xy, desc, _ = _made(10)
    ref_a = (0, np.array([[1.0, 1.0]], np.float32), desc[:1])
    ref_b = (1, np.array([[9.0, 9.0]], np.float32), desc[1:2])
    mapper = SiftMapper(64, defence=SiftDefence(coordinates="withheld", reference_images=1))
    with pytest.raises(ConfigError, match="reference images of the attacker's training split"):
        mapper.share(xy, desc, key=(0,))  # none given
    mapper = mapper.with_references({"opencv": [ref_a, ref_b]})
    placed, _ = mapper.share(xy, desc, key=(0,), exclude=5)
    assert (placed == [1.0, 1.0]).all()  # the first reference alone
    placed, _ = mapper.share(xy, desc, key=(0,), exclude=0)
    assert (placed == [9.0, 9.0]).all()  # image 0 is not its own reference: the next one


def test_map_settings_channels_and_refusals():
    mapper = SiftMapper(48, compress=True, placement="sli", occupancy=True, defence=SiftDefence(descriptor_bits=4))
    assert (mapper.map_size, mapper.channels) == (24, 1)
    assert mapper.settings() == {"image_size": 48, "map_size": 24, "compress": True, "placement": "sli",
                                 "occupancy": True, "defence": asdict(SiftDefence(descriptor_bits=4))}
    xy, desc, _ = _made(5, side=48)
    occupancy = mapper(xy, desc, key=(0,))
    assert occupancy.shape == (1, 24, 24) and set(occupancy.unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(ConfigError, match="placement"):
        SiftMapper(48, placement="nearest")
    with pytest.raises(ConfigError, match="even"):
        SiftMapper(47, compress=True)


def test_the_threat_and_its_data_module_share_one_mapper(tmp_path):
    """The threat's mapper (what ``invert`` uses) is the data module's, with the run's settings and
    defence; the datasets hold it with the reference images added."""
    from reconattack.engine.runner import build_threat
    from tests.helpers import compose_cfg, experiment_overrides

    cfg = compose_cfg([*experiment_overrides(None, tmp_path), "defence=sift", "defence.descriptor_bits=3",
                       "threat.compress=false", "threat.placement=sli",
                       "threat.stored.colmap=null", "threat.stored.colmap_native=null"])  # (COLMAP rows need pycolmap)
    threat = build_threat(cfg)
    mapper = threat.mapper
    assert mapper is threat.dm.mapper and mapper.defence == SiftDefence(descriptor_bits=3)
    assert (mapper.image_size, mapper.compress, mapper.placement, mapper.occupancy) == (
        int(cfg.data.image_size), False, "sli", False)
    assert threat.input_example().shape == (1, 128, mapper.map_size, mapper.map_size)
    threat.dm.prepare_data()
    threat.dm.setup()
    for ds in threat.dm.datasets.values():
        assert ds.mapper.defence is mapper.defence and ds.mapper.settings() == mapper.settings()
    batch = threat.dm.device_batch(collate_sift([threat.dm.datasets["test"][0]]), "cpu")
    levels = {(16 + 32 * j) / 127.5 - 1 for j in range(8)}  # 3 bits: the middle of each 32-value level
    assert all(any(abs(v - lv) < 1e-6 for lv in levels) for v in batch["input"][batch["input"] != 0].unique().tolist())
    assert (batch["input"] != 0).any()
