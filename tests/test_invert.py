"""``python -m reconattack.invert``: reconstruct from a COLMAP database (built here with pycolmap
from images the test makes: several sizes, an image without keypoints) or from OpenCV-style
``.npz`` files, with tiny trained runs (some through a SIFT defence); the maps it feeds the model
against the CFGAN placement and the defences written out here, the files, names, refusals and
messages. Only the tests that extract COLMAP's SIFT or read a COLMAP database need pycolmap: they
skip without it, the others run."""

from __future__ import annotations

import fcntl
import json
import math
import os
import pickle
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
import yaml

from reconattack.data.sift.extraction import extract
from reconattack.data.sift.maps import grid_xy
from reconattack.invert import InvertInputError, colmap_scale, invert, main
from reconattack.run import run
from tests.helpers import coarse_only, compose_cfg

ROOT = Path(__file__).resolve().parents[1]
SIDE = 64  # the tiny runs' data.image_size


def _pycolmap():
    """pycolmap, or the calling test skipped: only COLMAP's SIFT and databases need it."""
    return pytest.importorskip("pycolmap")


class Runs:
    """Tiny CFGAN coarse-only runs, each trained once per module when a test first asks for it:
    ``trained["opencv"]``, ``trained["colmap"]`` (skips without pycolmap), ``trained.get("opencv",
    "defence=sift", ...)``; each kept as the command line keeps a run (``.hydra``)."""

    def __init__(self, factory) -> None:
        self.factory, self.done = factory, {}

    def get(self, kind: str, *extra: str) -> Path:
        from omegaconf import OmegaConf

        if kind == "colmap":
            _pycolmap()
        if (kind, *extra) not in self.done:
            tmp = self.factory.mktemp(kind)
            # the stored-features rows of COLMAP's SIFT are not what invert reads (and need pycolmap)
            rows = ["threat.stored.colmap=null", "threat.stored.colmap_native=null"] if kind == "opencv" else []
            overrides = coarse_only(tmp, f"threat.features={kind}", *rows, *extra)
            cfg = compose_cfg(overrides)
            run(cfg)
            (tmp / "run" / ".hydra").mkdir()
            OmegaConf.save(cfg, tmp / "run" / ".hydra" / "config.yaml")
            (tmp / "run" / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
            self.done[kind, *extra] = tmp / "run"
        return self.done[kind, *extra]

    def __getitem__(self, kind: str) -> Path:
        return self.get(kind)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return Runs(tmp_path_factory)


@pytest.fixture
def fed(monkeypatch):
    """What invert feeds the run's model: ``fed.maps`` (each batch's input maps, in order) and
    ``fed.net`` (the model)."""
    import reconattack.invert as module

    seen = SimpleNamespace(maps=[], net=None)
    real = module.load_run

    def loading(*args, **kwargs):
        cfg, threat, net, ckpt = real(*args, **kwargs)
        forward = net.reconstruct
        net.reconstruct = lambda batch: seen.maps.append(batch["input"].clone()) or forward(batch)
        seen.net = net
        return cfg, threat, net, ckpt

    monkeypatch.setattr(module, "load_run", loading)
    return seen


# --------------------------------------------------------- the map, written out independently
def opencv_sift(image: np.ndarray, contrast_threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """OpenCV's SIFT as the CFGAN paper runs it (SPEC §2.1): ``cv2.SIFT_create(contrastThreshold)``
    on the grey image, other parameters default; keypoint centres, descriptors rounded to uint8,
    detector responses."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    keypoints, desc = cv2.SIFT_create(contrastThreshold=contrast_threshold).detectAndCompute(grey, None)
    xy = np.array([k.pt for k in keypoints], np.float32).reshape(-1, 2)
    desc = np.clip(np.rint(desc), 0, 255).astype(np.uint8) if desc is not None else np.zeros((0, 128), np.uint8)
    return xy, desc, np.array([k.response for k in keypoints], np.float32)


def colmap_sift(image: np.ndarray) -> tuple[list, np.ndarray]:
    """COLMAP's SIFT (pycolmap on the CPU, COLMAP's default options) of the grey image: its
    keypoints (COLMAP's convention and affine shapes) and uint8 descriptors (N, 128)."""
    pycolmap = _pycolmap()
    extractor = pycolmap.FeatureExtractor.create(pycolmap.FeatureExtractionOptions(), device=pycolmap.Device.cpu)
    keypoints, descriptors = extractor.extract_from_uint8_array(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))
    return list(keypoints), np.asarray(descriptors.data, np.uint8).reshape(-1, 128)


def paper_map(xy, values, side: int = SIDE, size: tuple[int, int] | None = None) -> np.ndarray:
    """The CFGAN map at evaluation, compressed (SPEC §2.1), written out: keypoint i (in the
    extractor's order, OpenCV's pixel convention) of an image of ``size`` (H, W; default the
    model's) first goes where ``cv2.resize`` to ``side`` takes its pixel centre from, ``(x + 0.5) *
    side / W - 0.5``; it lands in row ``ceil(y) - 1``, column ``ceil(x) - 1`` (clamped to the image);
    the first keypoint of a pixel wins, and an aligned 2x2 block keeps its first-placed pixel
    winner, which is the first keypoint landing in the block; the block holds ``values[i]`` in its
    128 channels (``desc / 127.5 - 1``), 0 elsewhere."""
    h, w = size or (side, side)
    out = np.zeros((128, side // 2, side // 2), np.float64)
    taken = set()
    for (x, y), v in zip(np.asarray(xy, np.float64), values):
        if (h, w) != (side, side):
            x, y = (x + 0.5) * side / w - 0.5, (y + 0.5) * side / h - 0.5
        row, col = min(max(math.ceil(y) - 1, 0), side - 1), min(max(math.ceil(x) - 1, 0), side - 1)
        if (row // 2, col // 2) not in taken:
            taken.add((row // 2, col // 2))
            out[:, row // 2, col // 2] = v
    return out


def descriptor_values(desc: np.ndarray) -> np.ndarray:
    """``desc / 127.5 - 1`` (SPEC §2.1)."""
    return desc.astype(np.float64) / 127.5 - 1


def _astronaut(width: int = SIDE, height: int = SIDE) -> np.ndarray:
    from skimage import data

    return cv2.resize(data.astronaut(), (width, height), interpolation=cv2.INTER_LINEAR)


def _contrast(run_dir: Path) -> float:
    return float(yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())["threat"]["contrast_threshold"])


def _fed_one(fed) -> np.ndarray:
    """The one map invert fed the model (one image)."""
    assert len(fed.maps) == 1 and fed.maps[0].shape[0] == 1
    return fed.maps[0][0].numpy()


def _photos(tmp: Path) -> dict[str, np.ndarray]:
    from skimage import data

    return {"shots/astronaut.jpg": cv2.resize(data.astronaut(), (160, 120)),
            "shots/coffee.png": cv2.resize(data.coffee(), (90, 140)),
            "blank.jpg": np.full((50, 70, 3), 128, np.uint8)}  # no keypoints


def make_database(path: Path, photos: dict[str, np.ndarray]) -> Path:
    """A COLMAP database of ``photos`` (name: image), each with COLMAP's SIFT of it."""
    db = _pycolmap().Database.open(str(path))
    for name, img in photos.items():
        xy, desc = extract(img, features="colmap")
        _write_image(db, name, img.shape[:2], xy + 0.5, desc)  # back to COLMAP's convention, as a database stores them
    db.close()
    return path


def _write_image(db, name: str, size: tuple[int, int], xy, desc: np.ndarray, shape=None) -> None:
    """One image with its own camera of ``size`` (H, W) and keypoints ``xy`` in COLMAP's convention,
    their affine ``shape`` (N, 4: a11 a12 a21 a22; default the identity)."""
    pycolmap = _pycolmap()
    h, w = size
    cam = db.write_camera(pycolmap.Camera(model="SIMPLE_RADIAL", width=w, height=h, params=[w, w / 2, h / 2, 0]))
    image_id = db.write_image(pycolmap.Image(name=name, camera_id=cam))
    kp = np.zeros((len(xy), 6), np.float32)
    kp[:, :2] = xy
    if shape is None:
        kp[:, 2] = kp[:, 5] = 1
    else:
        kp[:, 2:] = shape
    db.write_keypoints(image_id, kp)
    db.write_descriptors(image_id, pycolmap.FeatureDescriptors(pycolmap.FeatureExtractorType.SIFT, desc))


def _npz(path: Path, xy, size=(10, 10), desc=None, **more) -> Path:
    xy = np.asarray(xy, np.float32).reshape(-1, 2)
    desc = np.zeros((len(xy), 128), np.uint8) if desc is None else desc
    np.savez(path, keypoints=xy, descriptors=desc, image_size=np.array(size), **more)
    return path


def _blank(tmp: Path) -> Path:
    """An ``.npz`` of an image without keypoints."""
    return _npz(tmp / "blank.npz", np.zeros((0, 2)), size=(50, 70))


def test_grid_mapping_is_that_of_resizing_the_whole_image():
    """A keypoint at a pixel centre lands where cv2.resize takes that pixel's value from."""
    xy = np.array([[0.0, 0.0], [159.0, 119.0], [79.5, 59.5]], np.float32)
    g = grid_xy(xy, (120, 160), 64)
    np.testing.assert_allclose(g[2], [31.5, 31.5], atol=1e-5)  # the centre stays the centre
    assert g[0, 0] < 0 < g[1, 0] < 64 and g[1, 1] < 64
    np.testing.assert_array_equal(grid_xy(xy, (64, 64), 64), xy)  # at the grid's size: exactly kept


def test_npz_features_at_the_models_size_give_the_papers_map(trained, fed, tmp_path):
    """OpenCV's SIFT of a 64x64 image, as the paper extracts it, written to an .npz: invert feeds
    the model the paper's map of them, value by value, and the PNG is the model's output on it."""
    run_dir = trained["opencv"]
    img = _astronaut()
    xy, desc, _ = opencv_sift(img, _contrast(run_dir))
    assert len(xy) > 20
    np.savez(tmp_path / "astro.npz", keypoints=xy, descriptors=desc, image_size=np.array([SIDE, SIDE]))
    summary = invert(run_dir, tmp_path / "out", npz=[tmp_path / "astro.npz"], device="cpu")
    want = paper_map(xy, descriptor_values(desc))
    np.testing.assert_allclose(_fed_one(fed), want, rtol=0, atol=1e-6)
    record = summary["images"][0]
    assert record["keypoints"] == record["shared"] == len(xy) and summary["defence"] is None
    assert record["placed"] == int((want != 0).any(0).sum())
    with torch.no_grad():
        out = fed.net.reconstruct({"input": torch.from_numpy(want).float()[None]}).clamp(-1, 1)[0]
    rgb = ((out.permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "out" / "astro.png"))[:, :, ::-1], rgb)


def test_npz_features_of_a_larger_photo_are_placed_as_resizing_maps_pixel_centres(trained, fed, tmp_path):
    """OpenCV's SIFT of a 160x120 photo: each keypoint where cv2.resize of the whole photo to 64x64
    takes its pixel centre from, then the paper's map."""
    img = _astronaut(160, 120)
    xy, desc, _ = opencv_sift(img, 0.03)
    np.savez(tmp_path / "astro.npz", keypoints=xy, descriptors=desc, image_size=np.array(img.shape[:2]))
    summary = invert(trained["opencv"], tmp_path / "out", npz=[tmp_path / "astro.npz"], device="cpu")
    assert summary["images"][0]["file"] == "astro.png" and summary["features"] == "opencv"
    assert summary["images"][0]["original_size"] == [120, 160]
    want = paper_map(xy, descriptor_values(desc), size=(120, 160))
    np.testing.assert_allclose(_fed_one(fed), want, rtol=0, atol=1e-6)
    assert summary["images"][0]["placed"] == int((want != 0).any(0).sum())


def test_a_database_image_at_the_models_size_gives_the_papers_map(trained, fed, tmp_path):
    """COLMAP's SIFT of a 64x64 image (pycolmap, COLMAP's defaults), as a database stores it: invert
    feeds the paper's map of it, COLMAP's pixel centres (0.5, 0.5 the top-left one's) moved to
    OpenCV's."""
    pycolmap = _pycolmap()
    run_dir = trained["colmap"]
    img = _astronaut()
    keypoints, desc = colmap_sift(img)
    stored = np.array([(k.x, k.y) for k in keypoints], np.float32)
    assert len(stored) > 20
    db = pycolmap.Database.open(str(tmp_path / "database.db"))
    _write_image(db, "small.png", (SIDE, SIDE), stored, desc)
    db.close()
    invert(run_dir, tmp_path / "out", colmap=tmp_path / "database.db", device="cpu")
    want = paper_map(stored.astype(np.float64) - 0.5, descriptor_values(desc))
    np.testing.assert_allclose(_fed_one(fed), want, rtol=0, atol=1e-6)


def test_inverting_a_colmap_database(trained, tmp_path):
    db = make_database(tmp_path / "database.db", _photos(tmp_path))
    out = tmp_path / "out"
    summary = invert(trained["colmap"], out, colmap=db, batch_size=2, device="cpu")
    files = sorted(p.name for p in out.iterdir())
    assert files == ["blank.png", "invert.json", "shots_astronaut.png", "shots_coffee.png"]
    saved = json.loads((out / "invert.json").read_text())
    assert saved == summary and saved["features"] == "colmap" and not saved["other_features"]
    assert saved["map"] == {"map_size": 32, "compress": True, "placement": "first", "occupancy": False}
    rows = {r["name"]: r for r in saved["images"]}
    assert rows["shots/coffee.png"]["original_size"] == [140, 90] and rows["blank.jpg"]["keypoints"] == 0
    assert 0 < rows["shots/astronaut.jpg"]["placed"] <= rows["shots/astronaut.jpg"]["keypoints"]
    img = cv2.imread(str(out / "shots_astronaut.png"))
    assert img.shape == (64, 64, 3)  # the model's size
    only = invert(trained["colmap"], tmp_path / "one", colmap=db, images=["blank.jpg"], device="cpu")
    assert [r["name"] for r in only["images"]] == ["blank.jpg"]


def test_features_of_another_kind_are_refused_unless_forced(trained, tmp_path):
    db = make_database(tmp_path / "database.db", _photos(tmp_path))
    res = subprocess.run([sys.executable, "-m", "reconattack.invert", str(trained["opencv"]), "--colmap", str(db),
                          "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "trained on opencv SIFT, the input holds colmap SIFT" in res.stderr
    assert not (tmp_path / "out").exists()
    forced = invert(trained["opencv"], tmp_path / "out", colmap=db, other_features=True, device="cpu")
    assert forced["other_features"] and forced["trained_on"] == "opencv"


# ------------------------------------------------------------------------- the run's defence
#: a deterministic defence: the strongest half of the keypoints, descriptors at 2 bits
STRONGEST_2BITS = ("defence=sift", "defence.keep=0.5", "defence.select=response", "defence.descriptor_bits=2")


def _round(x: float) -> int:
    """``round(keep * N)`` as the defence's configuration defines it: halves up."""
    return int(np.floor(x + 0.5))


def _two_bits(desc: np.ndarray) -> np.ndarray:
    """Each value to the middle of its 2-bit level: 64 values per level, 32 past its start."""
    return (desc // 64) * 64 + 32


def test_invert_applies_the_runs_defence_as_training_did(trained, fed, tmp_path, capsys):
    """A run trained through ``keep=0.5, select=response, descriptor_bits=2``: invert shares the
    strongest half of an image's keypoints (by OpenCV's response) with 2-bit descriptors, as
    written out here, records the defence, and feeds the model the map training builds of the same
    image; features without their response are refused."""
    from reconattack.data.sift_data import collate_sift
    from reconattack.engine.runner import build_threat
    from reconattack.invert import run_config

    run_dir = trained.get("opencv", *STRONGEST_2BITS)
    threat = build_threat(run_config(run_dir))
    threat.dm.prepare_data()
    threat.dm.setup()
    item = threat.dm.datasets["test"][0]
    img = np.ascontiguousarray(item["image"].permute(1, 2, 0).numpy())
    xy, desc, response = opencv_sift(img, _contrast(run_dir))
    n = len(xy)
    assert n > 10
    _npz(tmp_path / "face.npz", xy, (SIDE, SIDE), desc, response=response)
    summary = invert(run_dir, tmp_path / "out", npz=[tmp_path / "face.npz"], device="cpu")
    kept = sorted(sorted(range(n), key=lambda i: -response[i])[:_round(0.5 * n)])  # the strongest, in order
    want = paper_map(xy[kept], descriptor_values(_two_bits(desc[kept])))
    np.testing.assert_allclose(_fed_one(fed), want, rtol=0, atol=1e-6)
    training = threat.dm.device_batch(collate_sift([item]), "cpu")["input"][0].numpy()
    np.testing.assert_array_equal(_fed_one(fed), training)
    assert summary["images"][0]["shared"] == _round(0.5 * n) and summary["images"][0]["keypoints"] == n
    defence = summary["defence"]
    assert (defence["keep"], defence["select"], defence["descriptor_bits"]) == (0.5, "response", 2)
    assert defence["applied"] == "keep=0.5, select=response, descriptor_bits=2" and "name" in defence["draws"]
    assert json.loads((tmp_path / "out" / "invert.json").read_text())["defence"] == defence

    _npz(tmp_path / "bare.npz", xy, (SIDE, SIDE), desc)  # no response
    err = _refused(capsys, run_dir, "--npz", tmp_path / "bare.npz", "--out", tmp_path / "bare")
    assert err.startswith("InvertInputError: image 'bare'") and "keeps the keypoints of largest response" in err
    assert not (tmp_path / "bare").exists()


def test_a_random_defence_is_drawn_per_image_name(trained, fed, tmp_path):
    """``keep=0.5`` at random: half of the keypoints, the same half for the same image name in
    every inversion, another half for another name; every block holds a keypoint of the image."""
    run_dir = trained.get("opencv", "defence=sift", "defence.keep=0.5")
    xy, desc, _ = opencv_sift(_astronaut(), _contrast(run_dir))
    n = len(xy)
    files = [_npz(tmp_path / f"{name}.npz", xy, (SIDE, SIDE), desc) for name in ("a", "a_copy")]
    first = invert(run_dir, tmp_path / "one", npz=files, device="cpu")
    again = invert(run_dir, tmp_path / "two", npz=files[:1], device="cpu")
    (a, copy), (a_again,) = fed.maps[0].numpy(), fed.maps[1].numpy()
    np.testing.assert_array_equal(a, a_again)  # the same name: the same draw
    assert not np.array_equal(a, copy)  # another name: another half
    assert [r["shared"] for r in first["images"] + again["images"]] == [_round(0.5 * n)] * 3
    everything = paper_map(xy, descriptor_values(desc))
    for m in (a, copy):
        occupied = (m != 0).any(0)
        assert occupied.sum() < (everything != 0).any(0).sum() and not (occupied & ~(everything != 0).any(0)).any()
        for r, c in zip(*np.nonzero(occupied)):  # a descriptor of a keypoint in that block
            inside = [i for i, (x, y) in enumerate(xy) if (math.ceil(y) - 1) // 2 == r and (math.ceil(x) - 1) // 2 == c]
            assert any(np.allclose(m[:, r, c], descriptor_values(desc[i]), atol=1e-6) for i in inside)


def test_positions_only_is_plus_one_in_every_channel(trained, fed, tmp_path):
    """``defence.positions_only``: every shared descriptor is 255, +1 in all 128 channels."""
    run_dir = trained.get("opencv", "defence=sift", "defence.positions_only=true")
    xy, desc, _ = opencv_sift(_astronaut(), _contrast(run_dir))
    summary = invert(run_dir, tmp_path / "out", npz=[_npz(tmp_path / "p.npz", xy, (SIDE, SIDE), desc)], device="cpu")
    np.testing.assert_allclose(_fed_one(fed), paper_map(xy, np.ones((len(xy), 128))), rtol=0, atol=1e-6)
    assert summary["defence"]["positions_only"] is True and summary["images"][0]["shared"] == len(xy)


def test_withheld_coordinates_are_refused(trained, tmp_path, capsys):
    """A run trained with ``coordinates: withheld`` places descriptors by reference images of its
    own training split, which invert does not have: exit 2, one line saying so, nothing written."""
    run_dir = trained.get("opencv", "defence=sift", "defence.coordinates=withheld")
    err = _refused(capsys, run_dir, "--npz", _blank(tmp_path), "--out", tmp_path / "out")
    assert err.startswith("ConfigError: ") and "defence.coordinates=withheld" in err
    assert "reference images of its own training split, which invert does not have" in err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.invert-*"))


def test_colmap_scale_is_colmaps_own():
    """A database's keypoint scale (what ``select: response`` keeps the largest of for COLMAP's
    SIFT) is pycolmap's ``compute_scale`` of the keypoint, from 6 columns (affine shape) or 4
    (x, y, scale, orientation)."""
    keypoints, _ = colmap_sift(_astronaut())
    six = np.array([(k.x, k.y, k.a11, k.a12, k.a21, k.a22) for k in keypoints], np.float32)
    np.testing.assert_allclose(colmap_scale(six), [k.compute_scale() for k in keypoints], rtol=1e-5)
    four = np.array([(k.x, k.y, k.compute_scale(), k.compute_orientation()) for k in keypoints], np.float32)
    np.testing.assert_allclose(colmap_scale(four), [k.compute_scale() for k in keypoints], rtol=1e-6)


def test_a_strongest_keypoints_defence_reads_a_databases_scales(trained, fed, tmp_path, capsys):
    """``select: response`` on a COLMAP database keeps the keypoints of largest scale
    (``(|(a11, a21)| + |(a12, a22)|) / 2``, COLMAP's); keypoints stored without a shape are refused."""
    pycolmap = _pycolmap()
    run_dir = trained.get("opencv", *STRONGEST_2BITS)
    img = _astronaut()
    keypoints, desc = colmap_sift(img)
    stored = np.array([(k.x, k.y) for k in keypoints], np.float32)
    shape = np.array([(k.a11, k.a12, k.a21, k.a22) for k in keypoints], np.float32)
    db = pycolmap.Database.open(str(tmp_path / "database.db"))
    _write_image(db, "small.png", (SIDE, SIDE), stored, desc, shape)
    db.close()
    invert(run_dir, tmp_path / "out", colmap=tmp_path / "database.db", other_features=True, device="cpu")
    a11, a12, a21, a22 = shape.astype(np.float64).T
    scale = (np.sqrt(a11 ** 2 + a21 ** 2) + np.sqrt(a12 ** 2 + a22 ** 2)) / 2
    n = len(stored)
    kept = sorted(sorted(range(n), key=lambda i: -scale[i])[:_round(0.5 * n)])
    want = paper_map(stored[kept].astype(np.float64) - 0.5, descriptor_values(_two_bits(desc[kept])))
    np.testing.assert_allclose(_fed_one(fed), want, rtol=0, atol=1e-6)

    _corrupt(tmp_path / "database.db", "UPDATE keypoints SET cols = 2, data = ? WHERE image_id = 1", stored.tobytes())
    err = _refused(capsys, run_dir, "--colmap", tmp_path / "database.db", "--out", tmp_path / "two",
                   "--other-features")
    assert "image 'small.png' (image_id 1): its keypoints have 2 columns (x, y) and no scale" in err


def _corrupt(db: Path, sql: str, *args) -> Path:
    con = sqlite3.connect(db)
    con.execute(sql, args)
    con.commit()
    con.close()
    return db


def _loosen(db: Path, table: str) -> Path:
    """``table`` without its column types and NOT NULL constraints (as a hostile database may have it)."""
    for sql in (f"CREATE TABLE loose AS SELECT * FROM {table}", f"DROP TABLE {table}",
                f"ALTER TABLE loose RENAME TO {table}"):
        _corrupt(db, sql)
    return db


ASTRONAUT, COFFEE, BLANK = (r"image 'shots/astronaut.jpg' \(image_id 1\)", r"image 'shots/coffee.png' \(image_id 2\)",
                            r"image 'blank.jpg' \(image_id 3\)")


@pytest.mark.parametrize("break_it,message", [
    (lambda db: _corrupt(db, "UPDATE keypoints SET rows = rows + 1 WHERE image_id = 2"),
     COFFEE + ": the keypoints blob holds .* bytes, not rows x cols"),
    (lambda db: _corrupt(db, "DELETE FROM cameras WHERE camera_id = 1"), ASTRONAUT + ": its camera 1 is not in"),
    (lambda db: db.write_bytes(b"not a database at all" * 10) and db, "not a COLMAP database"),
    (lambda db: db.write_bytes(db.read_bytes()[:60000]) and db, "not a COLMAP database .*malformed"),
    (lambda db: _corrupt(_loosen(db, "cameras"), "UPDATE cameras SET width = NULL WHERE camera_id = 2"),
     COFFEE + r" \(camera 2\): an image width of None \(expected an integer in 1..131072\)"),
    (lambda db: _corrupt(db, "UPDATE cameras SET height = 'tall' WHERE camera_id = 2"), COFFEE + ".*height of 'tall'"),
    (lambda db: _corrupt(db, "UPDATE cameras SET width = 0 WHERE camera_id = 3"), BLANK + ".*width of 0"),
    (lambda db: _corrupt(db, "UPDATE cameras SET width = 1000000000000 WHERE camera_id = 3"),
     BLANK + ".*width of 1000000000000"),
    (lambda db: _corrupt(db, "UPDATE keypoints SET rows = 'abc' WHERE image_id = 2"),
     COFFEE + r": keypoints rows = 'abc' \(expected an integer in 0..1000000"),
    (lambda db: _corrupt(db, "UPDATE keypoints SET rows = 2000000 WHERE image_id = 1"),
     ASTRONAUT + r": keypoints rows = 2000000 \(expected an integer in 0..1000000, --max-keypoints\)"),
    (lambda db: _corrupt(db, "UPDATE keypoints SET rows = -1 WHERE image_id = 1"), ASTRONAUT + ": keypoints rows = -1"),
    (lambda db: _corrupt(db, "UPDATE keypoints SET cols = 3 WHERE image_id = 1"),
     ASTRONAUT + r": keypoints cols = 3 \(expected 2 or 4 or 6\)"),
    (lambda db: _corrupt(db, "UPDATE keypoints SET data = NULL WHERE image_id = 1"),
     ASTRONAUT + ": the keypoints blob holds a null value"),
    (lambda db: _corrupt(db, "UPDATE keypoints SET data = 'text' WHERE image_id = 1"),
     ASTRONAUT + ": the keypoints blob holds a text value"),
    (lambda db: _corrupt(db, "UPDATE descriptors SET cols = 64 WHERE image_id = 2"), COFFEE + r": descriptors cols = 64"),
    (lambda db: _corrupt(db, "UPDATE descriptors SET rows = rows - 1, data = substr(data, 1, length(data) - 128) "
                             "WHERE image_id = 1"), ASTRONAUT + r": (\d+) keypoints and (\d+) descriptors"),
    (lambda db: _corrupt(db, "UPDATE images SET name = X'00ff' WHERE image_id = 3"),
     r"image_id 3: its name is b'\\x00\\xff', not text"),
    (lambda db: _corrupt(db, "UPDATE images SET camera_id = 'one' WHERE image_id = 2"),
     COFFEE + ": its camera_id is 'one', not an integer"),
    (lambda db: _corrupt(db, "ALTER TABLE keypoints DROP COLUMN data"),
     ASTRONAUT + ": the database cannot be read .*no such column: data"),
    (lambda db: _corrupt(db, "DROP TABLE descriptors"),
     "is not a COLMAP database .*needs cameras, images, keypoints, descriptors"),
    (lambda db: _corrupt(db, "UPDATE cameras SET width = 10, height = 10 WHERE camera_id = 1"),
     ASTRONAUT + r": \d+ keypoints outside the 10x10 image, e\.g\. keypoint \d+ at .* \(x must be in \[0, 10\]"),
])
def test_bad_databases_end_in_a_message_naming_the_image_and_nothing_is_written(break_it, message, trained, tmp_path,
                                                                                capsys):
    """Damaged or hostile databases (the SQL a hostile database could hold): exit 2, one line
    naming the image (name and image_id) where there is one, nothing in or beside --out."""
    db = break_it(make_database(tmp_path / "database.db", _photos(tmp_path)))
    out = tmp_path / "out"
    err = _refused(capsys, trained["colmap"], "--colmap", db, "--out", out, "--batch-size", 1, "--device", "cpu")
    assert err.startswith("InvertInputError: ") and re.search(message, err), err
    assert not out.exists() and not list(tmp_path.glob(".out.invert-*"))


@pytest.mark.parametrize("xy,outside", [
    ([[1.7e9, 5.0]], "keypoint 0 at (1.7e+09, 5)"),  # the issue's
    ([[0.0, 0.0], [10.0, 10.0], [10.01, 5.0]], "keypoint 2 at (10.01, 5)"),
    ([[5.0, -0.01]], "keypoint 0 at (5, -0.01)"),
    ([[0.0, 0.0], [10.0, 10.0]], None),  # COLMAP's convention: a 10x10 camera spans [0, 10] in x and y
])
def test_keypoints_outside_their_camera_are_refused(xy, outside, trained, tmp_path):
    db = _pycolmap().Database.open(str(tmp_path / "database.db"))
    _write_image(db, "tiny.png", (10, 10), np.array(xy, np.float32), np.zeros((len(xy), 128), np.uint8))
    db.close()
    if outside is None:
        summary = invert(trained["colmap"], tmp_path / "out", colmap=tmp_path / "database.db", device="cpu")
        assert summary["images"][0]["keypoints"] == len(xy)
        return
    with pytest.raises(InvertInputError) as exc:
        invert(trained["colmap"], tmp_path / "out", colmap=tmp_path / "database.db", device="cpu")
    assert str(exc.value).startswith("image 'tiny.png' (image_id 1): ") and outside in str(exc.value)
    assert "outside the 10x10 image" in str(exc.value) and not (tmp_path / "out").exists()


def test_the_keypoint_cap_is_a_setting(trained, tmp_path, capsys):
    db = make_database(tmp_path / "database.db", _photos(tmp_path))
    err = _refused(capsys, trained["colmap"], "--colmap", db, "--out", tmp_path / "out", "--max-keypoints", 5)
    assert re.search(ASTRONAUT + r": keypoints rows = \d+ \(expected an integer in 0..5, --max-keypoints\)", err)
    summary = invert(trained["colmap"], tmp_path / "out", colmap=db, images=["blank.jpg"], max_keypoints=0,
                     device="cpu")
    assert summary["images"][0]["keypoints"] == 0


def test_a_database_path_with_uri_characters(trained, tmp_path):
    """``#``, ``?`` and ``%`` in the path are the file's name, not a URI's fragment, query or
    escape: the database there is read, not the decoy at the path's part before ``#``."""
    photos = _photos(tmp_path)
    folder = tmp_path / "we#ird?na%41me"
    folder.mkdir()
    db = make_database(folder / "database.db", {"shots/coffee.png": photos["shots/coffee.png"]})
    make_database(tmp_path / "we", {"decoy.jpg": photos["blank.jpg"]})
    summary = invert(trained["colmap"], tmp_path / "out", colmap=db, device="cpu")
    assert [r["name"] for r in summary["images"]] == ["shots/coffee.png"] and summary["input"] == str(db)


def test_bad_coordinates_are_refused(trained, tmp_path):
    with pytest.raises(InvertInputError, match="nan.*not finite"):
        invert(trained["opencv"], tmp_path / "o", npz=[_npz(tmp_path / "nan.npz", [[1.0, np.nan]])], device="cpu")
    # OpenCV's convention: a 10x10 image spans [-0.5, 9.5] in x and y
    for name, xy in (("neg", [-3.0, 1.0]), ("right", [9.51, 1.0]), ("below", [1.0, 9.51])):
        with pytest.raises(InvertInputError, match=rf"{name}.*1 keypoints outside the 10x10 image"):
            invert(trained["opencv"], tmp_path / "o", npz=[_npz(tmp_path / f"{name}.npz", xy)], device="cpu")
    assert not (tmp_path / "o").exists()
    corners = _npz(tmp_path / "corners.npz", [[-0.5, -0.5], [9.5, 9.5]])
    assert invert(trained["opencv"], tmp_path / "o", npz=[corners], device="cpu")["images"][0]["keypoints"] == 2


# ------------------------------------------------------------- a run directory from elsewhere
def _refused(capsys, *args) -> str:
    """``python -m reconattack.invert ARGS`` in this process: exit 2 and one line on stderr,
    which is returned."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    return err.strip()


def _set(tree, path: str, value) -> None:
    *parents, last = path.split(".")
    for key in parents:
        tree = tree[int(key)] if isinstance(tree, list) else tree[key]
    tree[int(last) if isinstance(tree, list) else last] = value


def _foreign(run_dir: Path, tmp: Path, nodes: dict | None = None, overrides: tuple[str, ...] = ()) -> Path:
    """A copy of ``run_dir`` whose .hydra/config.yaml has ``nodes`` (dotted path: value) set and
    whose .hydra/overrides.yaml has ``overrides`` appended."""
    dst = tmp / "foreign"
    shutil.copytree(run_dir, dst)
    hydra = dst / ".hydra"
    cfg = yaml.safe_load((hydra / "config.yaml").read_text())
    for path, value in (nodes or {}).items():
        _set(cfg, path, value)
    (hydra / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (hydra / "overrides.yaml").write_text(yaml.safe_dump(yaml.safe_load((hydra / "overrides.yaml").read_text())
                                                         + list(overrides)))
    return dst


def _payload(marker: Path) -> dict:
    """A config node that creates ``marker`` when Hydra instantiates it."""
    return {"_target_": "builtins.open", "file": str(marker), "mode": "w"}


def test_the_payloads_are_live(tmp_path):
    """The hostile nodes below do run code when instantiated (a control for the tests that
    nothing runs)."""
    from hydra.utils import instantiate

    instantiate(_payload(tmp_path / "marker")).close()
    assert (tmp_path / "marker").exists()


def test_a_copied_run_directory_inverts(trained, tmp_path):
    """The copy the hostile tests start from is accepted as it is (YAML written again by PyYAML)."""
    blank = _blank(tmp_path)
    summary = invert(_foreign(trained["opencv"], tmp_path), tmp_path / "out", npz=[blank], device="cpu")
    assert [r["name"] for r in summary["images"]] == ["blank"]


@pytest.mark.parametrize("node,value,named", [
    ("model.coarse", "payload", "model.coarse._target_"),  # a network
    ("threat._target_", "builtins.open", "threat._target_"),  # the threat model
    ("data.source", "payload", "data.source._target_"),  # the data
    ("attack.stages.0", "payload", "attack.stages.0._target_"),  # an item of a list
    ("trainer.callbacks.progress", "payload", "trainer.callbacks.progress._target_"),  # a node invert does not use
    ("extra", "payload", "extra._target_"),  # a node of no config
    ("hydra", {"callbacks": {"x": "payload"}}, "hydra.callbacks.x._target_"),
    ("attack.optimizer._partial_", False, "attack.optimizer._partial_"),
    ("model.coarse._args_", ["payload"], "model.coarse._args_.0._target_"),
    ("model.coarse._args_", [1], "model.coarse._args_"),
    ("attack.lr_scheduler._target_", "${oc.env:HOME}", "attack.lr_scheduler._target_"),  # never resolved
])
def test_a_run_config_naming_other_classes_is_refused_and_runs_nothing(node, value, named, trained, tmp_path,
                                                                       capsys):
    marker = tmp_path / "marker"

    def hostile(v):
        return _payload(marker) if v == "payload" else {k: hostile(x) for k, x in v.items()} if isinstance(
            v, dict) else [hostile(x) for x in v] if isinstance(v, list) else v

    run_dir = _foreign(trained["opencv"], tmp_path, {node: hostile(value)})
    blank = _blank(tmp_path)
    err = _refused(capsys, run_dir, "--npz", blank, "--out", tmp_path / "out", "--device", "cpu")
    assert err.startswith("ConfigError: ") and f".hydra/config.yaml has {named} = " in err
    assert "invert builds only this checkout's configs" in err
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_the_issues_torch_load_optimizer_runs_nothing(trained, tmp_path):
    """The issue's run directory: ``attack.optimizer`` is ``torch.load`` of a pickle it ships,
    which would run a command; through the command line, exit 2 and one line, nothing run."""
    marker, control = tmp_path / "marker", tmp_path / "control"
    for pickled, touched in (("extra.pt", marker), ("control.pt", control)):
        (tmp_path / pickled).write_bytes(pickle.dumps(_Touch(str(touched))))
    with pytest.raises(RuntimeError, match="magic number"):  # the pickle is live, then torch.load fails
        torch.load(tmp_path / "control.pt", weights_only=False)
    assert control.exists()
    node = {"_target_": "torch.load", "f": "${paths.output_dir}/extra.pt", "weights_only": False}
    run_dir = _foreign(trained["opencv"], tmp_path, {"attack.optimizer": node})
    shutil.copy(tmp_path / "extra.pt", run_dir / "extra.pt")
    blank = _blank(tmp_path)
    res = subprocess.run([sys.executable, "-m", "reconattack.invert", str(run_dir), "--npz", str(blank),
                          "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "ConfigError: " in res.stderr and "has attack.optimizer._target_ = 'torch.load'" in res.stderr
    assert not marker.exists() and not (tmp_path / "out").exists()


class _Touch:
    """Pickled, it creates ``path`` when unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


@pytest.mark.parametrize("override,config,message", [
    ("attack.optimizer._target_=builtins.open", {"attack.optimizer._target_": "builtins.open"},
     "sets a Hydra instantiation key"),
    ("attack.optimizer={_target_:builtins.open,file:MARKER,mode:w}", {"attack.optimizer": "payload"},
     "sets something other than a plain value"),
    ("+extra=[{_target_:builtins.open,file:MARKER,mode:w}]", {"extra": ["payload"]},
     "sets something other than a plain value"),
    ("data.image_size=${oc.env:HOME}", {}, "sets something other than a plain value"),
    ("+experiment=../../tmp/evil", {}, "not a config of conf/experiment/"),
    ("model=nope", {}, "chooses 'nope', not a config of conf/model/"),
    ("hydra.searchpath=[file:///tmp]", {}, "sets Hydra's own settings"),
    ("seed=choice(1,2)", {}, "is a sweep"),
    ("attack.optimizer@_global_=x", {}, "sets a Hydra instantiation key"),
])
def test_run_overrides_may_only_choose_configs_and_set_plain_values(override, config, message, trained, tmp_path,
                                                                     capsys):
    """A hostile .hydra/overrides.yaml, with the same in .hydra/config.yaml (as a run made with it
    would record): refused, naming the override; nothing runs."""
    marker = tmp_path / "marker"
    nodes = {k: (_payload(marker) if v == "payload" else [_payload(marker)] if v == ["payload"] else v)
             for k, v in config.items()}
    run_dir = _foreign(trained["opencv"], tmp_path, nodes, (override.replace("MARKER", str(marker)),))
    blank = _blank(tmp_path)
    err = _refused(capsys, run_dir, "--npz", blank, "--out", tmp_path / "out")
    assert err.startswith("ConfigError: ") and "overrides.yaml: the override " in err and message in err
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_recorded_settings_must_be_those_the_overrides_give(trained, tmp_path, capsys):
    """A setting of the map changed in config.yaml alone (the picture would silently be another
    model's): refused, naming it."""
    run_dir = _foreign(trained["opencv"], tmp_path, {"threat.compress": False})
    blank = _blank(tmp_path)
    err = _refused(capsys, run_dir, "--npz", blank, "--out", tmp_path / "out")
    assert "has threat.compress = False, this checkout's conf/ with the run's overrides has True" in err


def test_nothing_of_the_run_config_is_resolved(trained, tmp_path):
    """Interpolations in the run's config.yaml, here in paths (which may differ), are never
    resolved: a resolver that would create a file is not called."""
    from omegaconf import OmegaConf

    marker = tmp_path / "marker"
    OmegaConf.register_new_resolver("test_touch", lambda p: Path(p).touch() or p)
    try:
        run_dir = _foreign(trained["opencv"], tmp_path, {"paths.data_dir": f"${{test_touch:{marker}}}"})
        blank = _blank(tmp_path)
        invert(run_dir, tmp_path / "out", npz=[blank], device="cpu")
    finally:
        OmegaConf.clear_resolver("test_touch")
    assert not marker.exists() and (tmp_path / "out" / "invert.json").exists()


@pytest.mark.parametrize("file,text,message", [
    ("config.yaml", "a: !!python/object/apply:os.system ['touch MARKER']\n", "not a readable config"),
    ("config.yaml", "a: &x [1, 2]\nb: [*x, *x]\n", "YAML aliases"),
    ("config.yaml", "a: " + "[" * 100 + "]" * 100 + "\n", "nested more than 64 levels"),
    ("config.yaml", "- 1\n", "not a config (a mapping)"),
    ("overrides.yaml", "a: b\n", "not a list of overrides"),
    ("overrides.yaml", "- 3\n", "is not a string"),
    ("overrides.yaml", None, "no .hydra/overrides.yaml"),
])
def test_damaged_run_files_are_refused(file, text, message, trained, tmp_path, capsys):
    marker = tmp_path / "marker"
    run_dir = _foreign(trained["opencv"], tmp_path)
    if text is None:
        (run_dir / ".hydra" / file).unlink()
    else:
        (run_dir / ".hydra" / file).write_text(text.replace("MARKER", str(marker)))
    blank = _blank(tmp_path)
    err = _refused(capsys, run_dir, "--npz", blank, "--out", tmp_path / "out")
    assert err.startswith("ConfigError: ") and message in err
    assert not marker.exists() and not (tmp_path / "out").exists()


# ------------------------------------------------------------------------ publishing --out
def test_a_non_empty_out_is_refused_and_force_replaces_an_earlier_inversion(trained, tmp_path, capsys):
    db = make_database(tmp_path / "database.db", _photos(tmp_path))
    args = (trained["colmap"], "--colmap", db, "--device", "cpu")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert "is not empty; --force replaces it" in _refused(capsys, *args, "--out", mine)
    assert "holds no invert.json: --force replaces only an earlier inversion's folder" in _refused(
        capsys, *args, "--out", mine, "--force")
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]

    out = tmp_path / "out"
    out.mkdir()  # an empty folder is taken as it is
    main([str(a) for a in (*args, "--out", out, "--images", "blank.jpg")])
    assert sorted(p.name for p in out.iterdir()) == ["blank.png", "invert.json"]
    assert "is not empty; --force replaces it whole" in _refused(capsys, *args, "--out", out)
    (out / "stale.png").write_bytes(b"from an earlier inversion")
    main([str(a) for a in (*args, "--out", out, "--force")])
    assert sorted(p.name for p in out.iterdir()) == ["blank.png", "invert.json", "shots_astronaut.png",
                                                     "shots_coffee.png"]
    assert len(json.loads((out / "invert.json").read_text())["images"]) == 3
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_an_out_holding_the_input_is_refused_even_with_force(trained, tmp_path, capsys):
    db = make_database(tmp_path / "database.db", _photos(tmp_path))
    (tmp_path / "invert.json").write_text("{}")
    err = _refused(capsys, trained["colmap"], "--colmap", db, "--out", tmp_path, "--force")
    assert f"holds the input {db}" in err and db.exists()
    err = _refused(capsys, trained["colmap"], "--colmap", db, "--out", db)
    assert "is a file, not a folder" in err


def test_out_appears_only_complete(trained, tmp_path, monkeypatch):
    """Every PNG is written into a hidden folder beside --out, which becomes --out once
    invert.json is written; a failure on the third image leaves neither."""
    import reconattack.invert as module

    out, seen = tmp_path / "out", []
    real = module.safe_filename

    def watching(name, taken):
        seen.append((out.exists(), sorted(p.name for p in tmp_path.glob(".out.invert-*"))))
        return real(name, taken)

    monkeypatch.setattr(module, "safe_filename", watching)
    db = make_database(tmp_path / "database.db", _photos(tmp_path))
    invert(trained["colmap"], out, colmap=db, batch_size=1, device="cpu")
    assert [exists for exists, _ in seen] == [False] * 3 and all(len(staged) == 1 for _, staged in seen)
    assert (out / "invert.json").exists() and not list(tmp_path.glob(".out.invert-*"))

    # image 3's keypoints are read after images 1 and 2 are written: its error leaves nothing
    seen.clear()
    bad = make_database(tmp_path / "bad.db", _photos(tmp_path))
    _corrupt(bad, "UPDATE cameras SET width = 1, height = 1 WHERE camera_id = 2")
    _corrupt(bad, "UPDATE images SET name = 'zz' WHERE image_id = 2")  # read last
    _corrupt(bad, "UPDATE images SET image_id = 9 WHERE image_id = 2")
    _corrupt(bad, "UPDATE keypoints SET image_id = 9 WHERE image_id = 2")
    _corrupt(bad, "UPDATE descriptors SET image_id = 9 WHERE image_id = 2")
    with pytest.raises(InvertInputError, match=r"image 'zz' \(image_id 9\): \d+ keypoints outside the 1x1 image"):
        invert(trained["colmap"], tmp_path / "other", colmap=bad, batch_size=1, device="cpu")
    assert len(seen) == 2 and not (tmp_path / "other").exists() and not list(tmp_path.glob(".other.invert-*"))


def test_a_killed_runs_hidden_folder_is_removed_by_the_next_run(trained, tmp_path):
    """SIGKILL just before the result would be published: --out is absent, the hidden folder is
    left beside it; the next run into the same --out removes it (not one a running inversion
    holds) and publishes its own."""
    db = make_database(tmp_path / "database.db", _photos(tmp_path))
    out = tmp_path / "out"
    code = ("import os, signal, sys\nimport reconattack.invert as m\n"
            "m._publish = lambda *a: os.kill(os.getpid(), signal.SIGKILL)\n"
            "m.main(sys.argv[1:])\n")
    res = subprocess.run([sys.executable, "-c", code, str(trained["colmap"]), "--colmap", str(db), "--out", str(out),
                          "--device", "cpu"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == -9 and not out.exists()
    left = list(tmp_path.glob(".out.invert-*"))
    assert len(left) == 1 and (left[0] / "invert.json").exists()
    held = tmp_path / ".out.invert-held"  # as a running inversion holds its folder
    held.mkdir()
    fd = os.open(held, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        invert(trained["colmap"], out, colmap=db, images=["blank.jpg"], device="cpu")
    finally:
        os.close(fd)
    assert sorted(p.name for p in out.iterdir()) == ["blank.png", "invert.json"]
    assert list(tmp_path.glob(".out.invert-*")) == [held]


# ------------------------------------------------------------- how far from what training saw
def _stats_file(run_dir: Path) -> dict:
    return json.loads((run_dir / "sift_stats.json").read_text())


def _at_quantile(stats: dict, key: str, q: float) -> float:
    return stats[key][stats["quantiles"].index(q)]


def test_a_run_records_the_keypoints_its_training_images_had(trained):
    """``sift_stats.json``: numpy's quantiles of the per-image counts and of the pooled scales
    (OpenCV's ``KeyPoint.size / 2``) of the training split's faces at the model's size, as
    extracted here from the split the run wrote."""
    from reconattack.data.images import lfw_faces, resize

    run_dir = trained["opencv"]
    stats = _stats_file(run_dir)
    source = lfw_faces()
    names = [source.name(i) for i in range(len(source))]
    train = json.loads((run_dir / "split.json").read_text())["split"]["train"]
    detector = cv2.SIFT_create(contrastThreshold=_contrast(run_dir))
    scales = []
    for name in train:
        grey = cv2.cvtColor(resize(source.load(names.index(name)), SIDE), cv2.COLOR_RGB2GRAY)
        scales.append([k.size / 2 for k in detector.detectAndCompute(grey, None)[0]])
    q = stats["quantiles"]
    assert stats["features"] == "opencv" and stats["image_size"] == SIDE and stats["images"] == len(train)
    np.testing.assert_allclose(stats["grid_scale"], np.quantile(np.concatenate(scales), q), rtol=1e-6)
    np.testing.assert_allclose(stats["count"], np.quantile([len(s) for s in scales], q))
    assert stats["range"] == [0.01, 0.99] and stats["keypoints"] == sum(map(len, scales))


def _colmap_database(tmp: Path, photos: dict[str, np.ndarray]) -> tuple[Path, dict]:
    """A COLMAP database of ``photos`` with COLMAP's SIFT and its affine shapes, and ``{name:
    (xy in COLMAP's convention, desc, scale)}``, the scale written out as COLMAP computes it."""
    pycolmap = _pycolmap()
    db = pycolmap.Database.open(str(tmp / "database.db"))
    kept = {}
    for name, img in photos.items():
        keypoints, desc = colmap_sift(img)
        xy = np.array([(k.x, k.y) for k in keypoints], np.float32)
        shape = np.array([(k.a11, k.a12, k.a21, k.a22) for k in keypoints], np.float32)
        _write_image(db, name, img.shape[:2], xy, desc, shape)
        a11, a12, a21, a22 = shape.astype(np.float64).T
        kept[name] = xy, desc, (np.sqrt(a11 ** 2 + a21 ** 2) + np.sqrt(a12 ** 2 + a22 ** 2)) / 2
    db.close()
    return tmp / "database.db", kept


def test_invert_json_says_how_far_each_image_lies_from_training(trained, tmp_path, caplog):
    """A database of a photo at 4x the model's size (256x256) and one at its size: per image the
    keypoint count against the training median, the 10/50/90th percentiles of the scales on the
    model's grid (scale * 64 / 256), the share outside training's [1st, 99th] percentile range,
    and the warnings those give by their definitions (the count outside training's range of
    per-image counts; more than max_outside of the keypoints outside the scales). The 4x photo,
    with many more and finer keypoints than training showed, is flagged, with a console line."""
    import logging

    run_dir = trained["colmap"]
    db, kept = _colmap_database(tmp_path, {"big.png": _astronaut(256, 256), "small.png": _astronaut()})
    with caplog.at_level(logging.WARNING, logger="reconattack.invert"):
        summary = invert(run_dir, tmp_path / "out", colmap=db, device="cpu")
    stats = _stats_file(run_dir)
    lo, hi = (_at_quantile(stats, "grid_scale", q) for q in (0.01, 0.99))
    c_lo, c_hi = (_at_quantile(stats, "count", q) for q in (0.01, 0.99))
    median = _at_quantile(stats, "count", 0.5)
    max_outside = float(compose_cfg(["threat.features=colmap"]).threat.keypoint_stats.max_outside)
    assert summary["training_stats"]["status"] == "ok" and summary["scale_filter"] is None
    assert summary["trust"] == {"range": [0.01, 0.99], "max_outside": max_outside, "count_range": [c_lo, c_hi],
                                "grid_scale_range": [lo, hi]}
    rows = {r["name"]: r for r in summary["images"]}
    for name, side in (("big.png", 256), ("small.png", SIDE)):
        _, _, scale = kept[name]
        grid = scale * SIDE / side
        n, row = len(grid), rows[name]
        outside = float(np.mean((grid < lo) | (grid > hi)))
        assert row["keypoints"] == n and row["count_ratio"] == pytest.approx(n / median)
        assert row["grid_scale"] == pytest.approx(dict(zip(("p10", "median", "p90"),
                                                           np.quantile(grid, (0.1, 0.5, 0.9)))), rel=1e-5)
        assert row["outside_training_scales"] == pytest.approx(outside, abs=1e-9)
        assert row["in_training_scales"] == int(np.sum((grid >= lo) & (grid <= hi)))
        want = ["keypoint_count"] * (not c_lo <= n <= c_hi) + ["keypoint_scale"] * (outside > max_outside)
        assert [w["check"] for w in row["warnings"]] == want
    assert [w["check"] for w in rows["big.png"]["warnings"]] == ["keypoint_count", "keypoint_scale"]
    assert summary["flagged_images"] == sum(bool(r["warnings"]) for r in rows.values())
    assert json.loads((tmp_path / "out" / "invert.json").read_text()) == summary
    logged = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("big.png: ") and "outside training's" in m for m in logged)
    assert any("images lie outside what the run trained on" in m and "--scale-filter training" in m for m in logged)


def test_the_scale_filter_keeps_the_keypoints_in_trainings_range(trained, fed, tmp_path):
    """``--scale-filter training``: of a 256x256 photo's keypoints only those whose scale on the
    model's grid lies in training's range are mapped (the written-out filter, then the paper's
    map), and invert.json records the filter and how many it kept."""
    run_dir = trained["colmap"]
    db, kept = _colmap_database(tmp_path, {"big.png": _astronaut(256, 256)})
    summary = invert(run_dir, tmp_path / "out", colmap=db, device="cpu", scale_filter="training")
    stats = _stats_file(run_dir)
    lo, hi = (_at_quantile(stats, "grid_scale", q) for q in (0.01, 0.99))
    xy, desc, scale = kept["big.png"]
    keep = [i for i in range(len(xy)) if lo <= scale[i] * SIDE / 256 <= hi]
    assert 0 < len(keep) < len(xy)
    want = paper_map(xy[keep].astype(np.float64) - 0.5, descriptor_values(desc[keep]), size=(256, 256))
    np.testing.assert_allclose(_fed_one(fed), want, rtol=0, atol=1e-6)
    assert summary["scale_filter"] == {"mode": "training", "grid_scale_range": [lo, hi], "quantiles": [0.01, 0.99]}
    row = summary["images"][0]
    assert row["kept_by_scale_filter"] == row["shared"] == len(keep) and row["keypoints"] == len(xy)
    c_lo, c_hi = (_at_quantile(stats, "count", q) for q in (0.01, 0.99))
    after = [w for w in row["warnings"] if w["check"] == "keypoint_count_after_filter"]
    assert len(after) == (not c_lo <= len(keep) <= c_hi)  # what the filter kept, against training's counts


def _npz_sizes(path: Path, xy, hw, desc, sizes) -> Path:
    """An ``.npz`` with OpenCV's keypoint ``size`` (diameters) beside its keypoints."""
    np.savez(path, keypoints=np.asarray(xy, np.float32), descriptors=desc, image_size=np.array(hw), size=sizes)
    return path


def test_a_run_without_statistics_inverts_and_says_so(trained, tmp_path, capsys):
    """A run made before the statistics were recorded: invert.json says "no training statistics"
    (and the console), nothing fails; the scale filter, which needs them, is refused (exit 2)."""
    run_dir = _foreign(trained["opencv"], tmp_path)
    (run_dir / "sift_stats.json").unlink()
    xy, desc, _ = opencv_sift(_astronaut(), 0.03)
    features = _npz(tmp_path / "a.npz", xy, (SIDE, SIDE), desc)
    summary = invert(run_dir, tmp_path / "out", npz=[features], device="cpu")
    note = summary["training_stats"]
    assert note["status"] == "missing" and note["message"].startswith("no training statistics")
    assert summary["warnings"][0] == note["message"] and summary["trust"]["grid_scale_range"] is None
    assert summary["warnings"][1].startswith("1 of 1 images hold no keypoint scales (x, y only")  # none in the file
    row = summary["images"][0]
    assert row["keypoints"] == len(xy) and row["grid_scale"] is None and "count_ratio" not in row
    assert row["warnings"] == [] and summary["flagged_images"] == 0
    err = _refused(capsys, run_dir, "--npz", features, "--out", tmp_path / "two", "--scale-filter", "training")
    assert err.startswith("ConfigError: --scale-filter training keeps the keypoints") and "no training statistics" in err
    assert not (tmp_path / "two").exists()


@pytest.mark.parametrize("text,reason", [
    ('{"schema": "reconattack.sift_stats/1", "quantiles": [0.5]}', "quantiles are not"),
    ("[" * 5000 + "]" * 5000, "not JSON"),
    (None, "statistics of colmap SIFT"),
])
def test_a_hostile_statistics_file_is_not_used(text, reason, trained, tmp_path, capsys):
    """sift_stats.json is untrusted: one that is damaged, hostile or of other features is not
    used (invert.json and the console say why; nothing fails); the scale filter is refused."""
    run_dir = _foreign(trained["opencv"], tmp_path)
    path = run_dir / "sift_stats.json"
    if text is None:
        path.write_text(path.read_text().replace('"opencv"', '"colmap"'))
    else:
        path.write_text(text)
    xy, desc, _ = opencv_sift(_astronaut(), 0.03)
    size = np.array([2.0] * len(xy), np.float32)
    features = _npz_sizes(tmp_path / "a.npz", xy, (SIDE, SIDE), desc, size)
    summary = invert(run_dir, tmp_path / "out", npz=[features], device="cpu")
    note = summary["training_stats"]
    assert note["status"] == "refused" and reason in note["message"] and summary["warnings"] == [note["message"]]
    assert summary["images"][0]["grid_scale"] == {"p10": 1.0, "median": 1.0, "p90": 1.0}  # size / 2
    err = _refused(capsys, run_dir, "--npz", features, "--out", tmp_path / "two", "--scale-filter", "training")
    assert "ConfigError: " in err and reason in err


def test_npz_scales_are_read_from_scale_or_half_the_size(trained, tmp_path):
    run_dir = trained["opencv"]
    xy, desc, _ = opencv_sift(_astronaut(256, 256), 0.03)
    n = len(xy)
    scale = np.linspace(0.5, 20, n).astype(np.float32)
    files = [_npz(tmp_path / "s.npz", xy, (256, 256), desc, scale=scale),
             _npz_sizes(tmp_path / "z.npz", xy, (256, 256), desc, 2 * scale)]
    summary = invert(run_dir, tmp_path / "out", npz=files, device="cpu")
    want = dict(zip(("p10", "median", "p90"), np.quantile(scale.astype(np.float64) * SIDE / 256, (0.1, 0.5, 0.9))))
    for row in summary["images"]:
        assert row["grid_scale"] == pytest.approx(want, rel=1e-6)
    for bad, message in ((scale[:-1], r"its scale is \(\d+,\) float32 \(expected \d+ numbers"),
                         (-scale, "a keypoint scale of -20 \\(expected >= 0\\)")):
        with pytest.raises(InvertInputError, match=message):
            invert(run_dir, tmp_path / "o", npz=[_npz(tmp_path / "b.npz", xy, (256, 256), desc, scale=bad)],
                   device="cpu")
