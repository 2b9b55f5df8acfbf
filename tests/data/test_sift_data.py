import json

import cv2
import numpy as np
import pytest
import torch

from reconattack.data.images import DataNotFoundError, resize
from reconattack.data.sift.extraction import extract
from reconattack.data.sift.maps import build_maps, grid_xy
from reconattack.data.sift_data import (
    SiftDataModule,
    collate_sift,
    drop_unreadable,
    make_split,
    split_counts,
    stored_variants,
)
from reconattack.errors import ConfigError
from tests.helpers import make_image_folder, textured_images


def _dm(tmp_path, root, **kw):
    args = dict(source={"_target_": "reconattack.data.images.ImageFolderSource", "root": str(root)},
                image_size=32, val=2, test=2, cache_dir=str(tmp_path / "cache"),
                run_dir=str(tmp_path / "run"), batch_size=2)
    args.update(kw)
    return SiftDataModule(**args)


def test_split_counts_fractions_and_counts():
    assert split_counts(100, 0.1, 0.1) == (80, 10, 10)
    assert split_counts(100, 10, 20) == (70, 10, 20)
    assert split_counts(30, 0, 1.0) == (0, 0, 30)
    with pytest.raises(ValueError, match="only 5"):
        split_counts(5, 3, 3)


def test_make_split_is_seeded_and_disjoint():
    names = [f"n{i}" for i in range(50)]
    a, b = make_split(names, 0.1, 0.1, seed=3), make_split(names, 0.1, 0.1, seed=3)
    assert a == b and make_split(names, 0.1, 0.1, seed=4) != a
    assert sorted(a["train"] + a["val"] + a["test"]) == sorted(names)
    assert len(make_split(names, 0.1, 0.1, seed=0, max_images=20)["test"]) == 2


def test_datamodule_batches_and_split_file(tmp_path):
    root = make_image_folder(tmp_path / "imgs", n=8, size=40)
    dm = _dm(tmp_path, root)
    dm.prepare_data()
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 32, 32) and batch["image"].dtype == torch.uint8
    maps = build_maps(batch["xy"], batch["desc"], 32, True)
    assert maps.shape == (2, 128, 16, 16) and (maps != 0).any()
    saved = json.loads((tmp_path / "run" / "split.json").read_text())
    assert {k: len(v) for k, v in saved["split"].items()} == {"train": 4, "val": 2, "test": 2}


def test_unreadable_images_are_skipped_with_a_warning(tmp_path, caplog):
    root = make_image_folder(tmp_path / "imgs", n=6, size=40)
    (root / "broken.png").write_bytes(b"not an image at all")
    dm = _dm(tmp_path, root, val=1, test=1)
    dm.prepare_data()
    dm.setup()
    assert "broken.png" in caplog.text
    used = [n for part in dm.split.values() for n in part]
    assert len(used) == 6 and not any("broken" in n for n in used)


def _run(tmp_path, root, run, **kw):
    """One job on the folder (its own run directory, the shared SIFT cache): its split."""
    dm = _dm(tmp_path, root, run_dir=str(tmp_path / run), **kw)
    dm.prepare_data()
    dm.setup()
    return dm


def _listing(root):
    from reconattack.data.images import ImageFolderSource

    source = ImageFolderSource(str(root))
    return [source.name(i) for i in range(len(source))]


def _without(split, name):
    return {part: [n for n in names if n != name] for part, names in split.items()}


def test_a_read_error_of_one_job_does_not_change_the_split_of_later_jobs(tmp_path):
    """The split is make_split of the listing and the seed; an image a job cannot read is left
    out of the part it fell in, for that job alone (its split.json says so): a later job that
    reads it, or fails on another image, splits as the listing and the seed say."""
    root = make_image_folder(tmp_path / "imgs", n=12, size=40)
    names = _listing(root)
    full = make_split(names, 2, 2, seed=0)
    broken, other = full["test"][0], full["train"][0]
    good = (root / broken).read_bytes()
    (root / broken).write_bytes(b"half a file")  # job A: a transient read error
    a = _run(tmp_path, root, "a")
    assert a.split == _without(full, broken)
    record = json.loads((tmp_path / "a" / "split.json").read_text())
    assert record["split"] == a.split and list(record["unreadable"]) == [broken]

    (root / broken).write_bytes(good)  # job B: the file is whole again
    b = _run(tmp_path, root, "b")
    assert b.split == full
    assert json.loads((tmp_path / "b" / "split.json").read_text())["unreadable"] == {}

    good = (root / other).read_bytes()
    (root / other).write_bytes(b"")  # job C: another file fails
    c = _run(tmp_path, root, "c")
    assert c.split == _without(full, other)
    (root / other).write_bytes(good)
    assert _run(tmp_path, root, "d").split == full
    assert not [p for p in (tmp_path / "cache").rglob("*") if "unreadable" in p.name]  # nothing shared


def test_a_resumed_run_and_other_ranks_leave_out_what_the_run_could_not_read(tmp_path, monkeypatch):
    """A run started again in its directory (resume, or another DDP rank reading rank 0's
    split.json) trains on the same split although the image reads now; other data settings in
    that directory do not take the record."""
    root = make_image_folder(tmp_path / "imgs", n=12, size=40)
    names = _listing(root)
    full = make_split(names, 2, 2, seed=0)
    broken = full["train"][1]
    good = (root / broken).read_bytes()
    (root / broken).write_bytes(b"not an image")
    first = _run(tmp_path, root, "run").split
    (root / broken).write_bytes(good)
    assert first == _without(full, broken)
    assert _run(tmp_path, root, "run").split == first  # resumed
    monkeypatch.setenv("LOCAL_RANK", "1")
    rank1 = _dm(tmp_path, root, run_dir=str(tmp_path / "run"))
    rank1.setup()
    assert rank1.split == first
    monkeypatch.delenv("LOCAL_RANK")
    other = _run(tmp_path, root, "run", selection_seed=5).split
    assert other == make_split(names, 2, 2, seed=5)


def test_drop_unreadable_keeps_every_other_name_in_its_part_and_order():
    split = make_split([f"n{i}" for i in range(20)], 0.2, 0.2, seed=1)
    gone = {split["train"][3], split["val"][0], split["test"][-1]}
    kept = drop_unreadable(split, gone)
    assert kept == {part: [n for n in names if n not in gone] for part, names in split.items()}
    assert drop_unreadable(split, {"not listed"}) == split


def test_empty_folder_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    dm = _dm(tmp_path, tmp_path / "empty")
    with pytest.raises(DataNotFoundError, match=str(tmp_path / "empty")):
        dm.prepare_data()


def test_max_images_scans_only_the_selected_subset(tmp_path, monkeypatch):
    root = make_image_folder(tmp_path / "imgs", n=12, size=40)
    dm = _dm(tmp_path, root, max_images=6, val=1, test=1)
    calls = []
    orig = dm.cache.get
    monkeypatch.setattr(dm.cache, "get", lambda img: calls.append(1) or orig(img))
    dm.prepare_data()
    assert len(calls) == 6
    dm.setup()
    assert sum(len(v) for v in dm.split.values()) == 6


def test_image_without_keypoints_gives_an_all_zero_map(tmp_path):
    root = tmp_path / "flat"
    root.mkdir()
    import cv2

    for i in range(4):
        cv2.imwrite(str(root / f"flat{i}.png"), np.full((40, 40, 3), 120, np.uint8))
    dm = _dm(tmp_path, root, val=0, test=1)
    dm.prepare_data()
    dm.setup()
    item = dm.datasets["train"][0]
    assert item["xy"].shape == (0, 2)
    maps = build_maps(collate_sift([item])["xy"], [item["desc"]], 32, True)
    assert maps.abs().sum() == 0


def test_hflip_extracts_sift_after_flipping(tmp_path):
    root = make_image_folder(tmp_path / "imgs", n=4, size=32)
    dm = _dm(tmp_path, root, val=0, test=1, hflip=True)
    dm.prepare_data()
    dm.setup()
    ds = dm.datasets["train"]
    torch.manual_seed(0)
    seen = set()
    for _ in range(20):
        item = ds[0]
        img = item["image"].permute(1, 2, 0).numpy()
        xy, desc = dm.cache.get(np.ascontiguousarray(img))
        assert np.array_equal(xy, item["xy"].numpy())  # keypoints belong to the shown image
        seen.add(img.tobytes())
    assert len(seen) == 2


def test_device_batches_hold_maps_targets_and_the_shuffled_neighbour(tmp_path):
    """What attacks on the SIFT threat read: ``input`` maps and ``target`` images in [-1, 1]; test
    items also carry the previous test image's map (cyclically) for the shuffled-SIFT control."""
    root = make_image_folder(tmp_path / "imgs", n=8, size=40)
    dm = _dm(tmp_path, root, val=0, test=3, eval_batch_size=3)
    dm.prepare_data()
    dm.setup()
    batch = dm.device_batch(next(iter(dm.test_dataloader())), "cpu")
    assert batch["input"].shape == (3, 128, 16, 16) and batch["target"].shape == (3, 3, 32, 32)
    assert -1 <= batch["target"].min() and batch["target"].max() <= 1
    for i in range(3):  # item i's shuffled input is item i-1's input
        torch.testing.assert_close(batch["shuffled_input"][i], batch["input"][(i - 1) % 3])
    train = dm.device_batch(next(iter(dm.train_dataloader())), "cpu")
    assert "shuffled_input" not in train and train["input"].shape == (2, 128, 16, 16)
    assert dm.mean_train_image().shape == (3, 32, 32)
    test_only = _dm(tmp_path / "t", root, val=0, test=1.0)
    test_only.prepare_data()
    test_only.setup()
    assert test_only.mean_train_image() is None  # no training split: the control does not apply


def test_shift_extracts_sift_of_the_shifted_image(tmp_path):
    root = make_image_folder(tmp_path / "imgs", n=4, size=32)
    dm = _dm(tmp_path, root, val=0, test=1, shift=3)
    dm.prepare_data()
    dm.setup()
    ds = dm.datasets["train"]
    assert dm.datasets["test"].shift == 0  # evaluation images are never shifted
    torch.manual_seed(0)
    seen = set()
    for _ in range(12):
        item = ds[0]
        img = np.ascontiguousarray(item["image"].permute(1, 2, 0).numpy())
        xy, _ = extract(img)
        assert np.array_equal(xy, item["xy"].numpy())  # keypoints belong to the shown image
        seen.add(img.tobytes())
    assert len(seen) > 3


def test_training_draws_are_functions_of_the_item_seeds(tmp_path):
    """A training item's flip / shift and its batch's 2x2-block representatives come from the
    item seeds the sampler hands out (functions of the run seed, the epoch and the position), so
    the same batch gives the same maps in any fit, any worker and after a restart; other seeds
    other draws."""
    from types import SimpleNamespace

    root = make_image_folder(tmp_path / "imgs", n=8, size=128)
    dm = _dm(tmp_path, root, val=0, test=2, map_seed=3, image_size=128, hflip=True, shift=3)
    dm.prepare_data()
    dm.setup()
    dm.trainer = SimpleNamespace(training=True, global_rank=0, world_size=1, global_step=0,
                                 lightning_module=None)
    keys = list(dm.train_dataloader().sampler)[:6]
    assert all(isinstance(k, tuple) for k in keys)
    ds = dm.datasets["train"]
    batch = collate_sift([ds[k] for k in keys])
    first = dm.on_after_batch_transfer(batch, 0)["input"]
    again = dm.on_after_batch_transfer(collate_sift([ds[k] for k in keys]), 0)["input"]
    torch.testing.assert_close(again, first)  # same items, same seeds: same images and maps
    other = collate_sift([ds[(i, s + 1)] for i, s in keys])
    assert not torch.equal(dm.on_after_batch_transfer(other, 0)["input"], first)


def test_stored_variants_parse_dedupe_and_refuse():
    """``threat.stored``: own features at the model's size is ``test`` itself and a repeat is the
    earlier row: both left out; a factor of 1 is the model's size; bad entries are refused."""
    got = stored_variants({"own": {"size": "model"}, "colmap": {"features": "colmap"},
                           "native": {"features": None, "size": "native"}, "again": {"features": "opencv", "size": "native"},
                           "one": {"features": "colmap", "size": 1}, "x2": {"size": 2}, "dropped": None}, "opencv")
    assert [(v.name, v.features, v.size) for v in got] == [
        ("colmap", "colmap", "model"), ("native", "opencv", "native"), ("x2", "opencv", 2.0)]
    for bad in ({"a": {"features": "vlfeat"}}, {"a": {"size": 0}}, {"a": {"size": "huge"}}, {"a": {"scale": 2}},
                {"a": {"size": True}}):
        with pytest.raises(ConfigError):
            stored_variants(bad, "opencv")


def test_stored_rows_extract_at_their_size_and_map_onto_the_model_grid(tmp_path):
    """Each stored row holds the test image's SIFT as its variant extracts it: from the image as
    its source stores it (``native``, 120x90 here), from the source resized to a factor of the
    model's size, or by another extractor at the model's size; the keypoints mapped onto the
    model's grid with ``grid_xy`` and the map built as training builds its own."""
    pytest.importorskip("pycolmap")
    root = tmp_path / "imgs"
    root.mkdir()
    for i, img in enumerate(textured_images(5, 120, seed=3)):
        cv2.imwrite(str(root / f"p{i}.png"), np.ascontiguousarray(img[:, 15:105, ::-1]))  # 120 high, 90 wide
    dm = _dm(tmp_path, root, image_size=48, val=0, test=2, eval_batch_size=2,
             stored={"native": {"size": "native"}, "x2": {"size": 2}, "colmap": {"features": "colmap"}})
    dm.prepare_data()
    dm.setup()
    ds = dm.datasets["test"]
    batch = collate_sift([ds[0], ds[1]])
    maps = dm.device_batch(batch, "cpu")["stored"]
    assert set(maps) == {"native", "x2", "colmap"} and "stored" not in dm.datasets["train"][0]
    for k in range(2):
        raw = ds.source.load(ds.indices[k])
        assert raw.shape == (120, 90, 3)
        expect = {"native": (extract(raw), raw.shape[:2]),
                  "x2": (extract(resize(raw, 96)), (96, 96)),
                  "colmap": (extract(resize(raw, 48), features="colmap"), (48, 48))}
        for name, ((xy, desc), size) in expect.items():
            want_xy = grid_xy(xy, size, 48)
            np.testing.assert_allclose(batch["stored"][name][0][k].numpy(), want_xy, atol=1e-5)
            np.testing.assert_array_equal(batch["stored"][name][1][k].numpy(), desc)
            torch.testing.assert_close(maps[name][k], build_maps([want_xy], [desc], 48, True)[0])
    assert len(batch["stored"]["native"][0][0]) != len(batch["stored"]["x2"][0][0])  # other sizes, other keypoints


def test_defence_reaches_training_pairs_test_items_and_controls(tmp_path):
    """``defence=sift``: every keypoint set the attacker sees is the defended one — the training
    pairs it makes of its own images (Kerckhoffs), the test items, the shuffled neighbour and the
    stored rows; test items are defended the same way on every read, training items by their seed."""
    root = make_image_folder(tmp_path / "imgs", n=10, size=40)
    plain_dm = _dm(tmp_path / "a", root, val=0, test=3, eval_batch_size=3)
    dm = _dm(tmp_path / "b", root, val=0, test=3, eval_batch_size=3, stored={"native": {"size": "native"}},
             defence={"name": "sift", "keep": 0.5, "descriptor_bits": 2, "labels": {}})
    for d in (plain_dm, dm):
        d.prepare_data()
        d.setup()
    for part in ("train", "test"):
        for k in range(3):
            key = (k, 1234 + k) if part == "train" else k
            clean, defended = plain_dm.datasets[part][key], dm.datasets[part][key]
            n = len(clean["xy"])
            assert len(defended["xy"]) == int(np.floor(0.5 * n + 0.5))
            assert len(np.unique(defended["desc"].numpy())) <= 4  # 2 bits
            # the kept keypoints are the clean item's, quantised (SIFT repeats a position with
            # another orientation: compared as (position, levels) pairs)
            pairs = lambda xy, desc: [(*p, *(d // 64)) for p, d in zip(xy.tolist(), desc.numpy())]  # noqa: E731
            assert set(pairs(defended["xy"], defended["desc"])) <= set(pairs(clean["xy"], clean["desc"]))
    again = dm.datasets["test"][1]
    torch.testing.assert_close(again["xy"], dm.datasets["test"][1]["xy"])  # the same on every read
    batch = dm.device_batch(collate_sift([dm.datasets["test"][k] for k in range(3)]), "cpu")
    torch.testing.assert_close(batch["shuffled_input"][1], batch["input"][0])  # the neighbour's defended map
    native = dm.datasets["test"][0]["stored"]["native"][1].numpy()
    assert len(np.unique(native)) <= 4
    # training items: another seed, another draw of the kept half
    a, b = dm.datasets["train"][(0, 1)], dm.datasets["train"][(0, 2)]
    assert not torch.equal(a["xy"], b["xy"])


def test_withheld_coordinates_place_by_the_attackers_own_reference_images(tmp_path):
    """``coordinates: withheld``: each descriptor at the position of its nearest descriptor in the
    first training image (split order); a training image that is the reference is placed by the
    next one, never by itself."""
    root = make_image_folder(tmp_path / "imgs", n=8, size=40)
    dm = _dm(tmp_path, root, val=0, test=2, eval_batch_size=2,
             defence={"name": "sift", "coordinates": "withheld", "reference_images": 1})
    dm.prepare_data()
    dm.setup()
    train, test = dm.datasets["train"], dm.datasets["test"]
    ref0 = dm.cache.get(resize(train.source.load(train.indices[0]), 32))
    ref1 = dm.cache.get(resize(train.source.load(train.indices[1]), 32))
    item = test[0]
    clean = dm.cache.get(resize(test.source.load(test.indices[0]), 32))
    want = [ref0[0][np.argmin(((ref0[1].astype(float) - d.astype(float)) ** 2).sum(1))] for d in clean[1]]
    np.testing.assert_array_equal(item["xy"].numpy(), np.array(want).reshape(-1, 2))
    own = train[(0, 5)]  # the reference image itself: placed by the second training image
    assert set(map(tuple, own["xy"].numpy())) <= set(map(tuple, ref1[0]))
    with pytest.raises(ConfigError, match="training split"):
        only = _dm(tmp_path / "t", root, val=0, test=1.0, defence={"name": "sift", "coordinates": "withheld"})
        only.prepare_data()
        only.setup()
