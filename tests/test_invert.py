"""``python -m reconattack.invert``: reconstruct from a COLMAP database (built here with pycolmap
from images the test makes: several sizes, an image without keypoints) or from OpenCV-style
``.npz`` files, with a tiny trained run; the files, names, refusals and messages."""

from __future__ import annotations

import fcntl
import json
import os
import pickle
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from reconattack.data.sift.extraction import extract
from reconattack.data.sift.maps import build_maps, grid_xy
from reconattack.invert import InvertInputError, invert, main
from reconattack.run import run
from tests.helpers import coarse_only, compose_cfg

pycolmap = pytest.importorskip("pycolmap")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny CFGAN coarse-only run on COLMAP features, and one on OpenCV's."""
    from omegaconf import OmegaConf

    out = {}
    for kind in ("colmap", "opencv"):
        tmp = tmp_path_factory.mktemp(kind)
        overrides = coarse_only(tmp, f"threat.features={kind}")
        cfg = compose_cfg(overrides)
        run(cfg)
        (tmp / "run" / ".hydra").mkdir()
        OmegaConf.save(cfg, tmp / "run" / ".hydra" / "config.yaml")  # as the command line's run keeps them
        (tmp / "run" / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        out[kind] = tmp / "run"
    return out


def _photos(tmp: Path) -> dict[str, np.ndarray]:
    from skimage import data

    return {"shots/astronaut.jpg": cv2.resize(data.astronaut(), (160, 120)),
            "shots/coffee.png": cv2.resize(data.coffee(), (90, 140)),
            "blank.jpg": np.full((50, 70, 3), 128, np.uint8)}  # no keypoints


def make_database(path: Path, photos: dict[str, np.ndarray]) -> Path:
    """A COLMAP database of ``photos`` (name: image), each with COLMAP's SIFT of it."""
    db = pycolmap.Database.open(str(path))
    for name, img in photos.items():
        xy, desc = extract(img, features="colmap")
        _write_image(db, name, img.shape[:2], xy + 0.5, desc)  # back to COLMAP's convention, as a database stores them
    db.close()
    return path


def _write_image(db, name: str, size: tuple[int, int], xy, desc: np.ndarray) -> None:
    """One image with its own camera of ``size`` (H, W) and keypoints ``xy`` in COLMAP's convention."""
    h, w = size
    cam = db.write_camera(pycolmap.Camera(model="SIMPLE_RADIAL", width=w, height=h, params=[w, w / 2, h / 2, 0]))
    image_id = db.write_image(pycolmap.Image(name=name, camera_id=cam))
    kp = np.zeros((len(xy), 6), np.float32)
    kp[:, :2] = xy
    kp[:, 2] = kp[:, 5] = 1
    db.write_keypoints(image_id, kp)
    db.write_descriptors(image_id, pycolmap.FeatureDescriptors(pycolmap.FeatureExtractorType.SIFT, desc))


def test_grid_mapping_is_that_of_resizing_the_whole_image():
    """A keypoint at a pixel centre lands where cv2.resize takes that pixel's value from."""
    xy = np.array([[0.0, 0.0], [159.0, 119.0], [79.5, 59.5]], np.float32)
    g = grid_xy(xy, (120, 160), 64)
    np.testing.assert_allclose(g[2], [31.5, 31.5], atol=1e-5)  # the centre stays the centre
    assert g[0, 0] < 0 < g[1, 0] < 64 and g[1, 1] < 64


def test_inverting_a_colmap_database(trained, tmp_path):
    db = make_database(tmp_path / "database.db", _photos(tmp_path))
    out = tmp_path / "out"
    summary = invert(trained["colmap"], out, colmap=db, batch_size=2, device="cpu")
    files = sorted(p.name for p in out.iterdir())
    assert files == ["blank.png", "invert.json", "shots_astronaut.png", "shots_coffee.png"]
    saved = json.loads((out / "invert.json").read_text())
    assert saved == summary and saved["features"] == "colmap" and not saved["other_features"]
    rows = {r["name"]: r for r in saved["images"]}
    assert rows["shots/coffee.png"]["original_size"] == [140, 90] and rows["blank.jpg"]["keypoints"] == 0
    assert 0 < rows["shots/astronaut.jpg"]["placed"] <= rows["shots/astronaut.jpg"]["keypoints"]
    img = cv2.imread(str(out / "shots_astronaut.png"))
    assert img.shape == (64, 64, 3)  # the model's size
    only = invert(trained["colmap"], tmp_path / "one", colmap=db, images=["blank.jpg"], device="cpu")
    assert [r["name"] for r in only["images"]] == ["blank.jpg"]


def test_a_database_image_at_the_models_size_gives_trainings_own_map(trained, tmp_path):
    """Extracted at the model's 64x64, the database's keypoints (COLMAP's convention) are placed
    exactly where training places COLMAP's keypoints of the same image."""
    photo = cv2.resize(_photos(tmp_path)["shots/astronaut.jpg"], (64, 64), interpolation=cv2.INTER_LINEAR)
    db = make_database(tmp_path / "database.db", {"small.png": photo})
    summary = invert(trained["colmap"], tmp_path / "out", colmap=db, device="cpu")
    xy, desc = extract(photo, features="colmap")
    np.testing.assert_allclose(grid_xy(xy, (64, 64), 64), xy, atol=1e-5)
    training = build_maps([xy], [desc], 64, compress=True)
    assert summary["images"][0]["placed"] == int((training != 0).any(1).sum()) > 0


def test_inverting_npz_files_and_the_placement_matches_training(trained, tmp_path):
    img = _photos(tmp_path)["shots/astronaut.jpg"]
    xy, desc = extract(img)
    np.savez(tmp_path / "astro.npz", keypoints=xy, descriptors=desc, image_size=np.array(img.shape[:2]))
    summary = invert(trained["opencv"], tmp_path / "out", npz=[tmp_path / "astro.npz"], device="cpu")
    assert summary["images"][0]["file"] == "astro.png" and summary["features"] == "opencv"
    maps = build_maps([grid_xy(xy, img.shape[:2], 64)], [desc], 64, compress=True)
    assert summary["images"][0]["placed"] == int((maps != 0).any(1).sum())


def test_features_of_another_kind_are_refused_unless_forced(trained, tmp_path):
    db = make_database(tmp_path / "database.db", _photos(tmp_path))
    res = subprocess.run([sys.executable, "-m", "reconattack.invert", str(trained["opencv"]), "--colmap", str(db),
                          "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "trained on opencv SIFT, the input holds colmap SIFT" in res.stderr
    assert not (tmp_path / "out").exists()
    forced = invert(trained["opencv"], tmp_path / "out", colmap=db, other_features=True, device="cpu")
    assert forced["other_features"] and forced["trained_on"] == "opencv"


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
    db = pycolmap.Database.open(str(tmp_path / "database.db"))
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


def _npz(path: Path, xy, size=(10, 10)) -> Path:
    xy = np.asarray(xy, np.float32).reshape(-1, 2)
    np.savez(path, keypoints=xy, descriptors=np.zeros((len(xy), 128), np.uint8), image_size=np.array(size))
    return path


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
    db = make_database(tmp_path / "database.db", {"blank.jpg": _photos(tmp_path)["blank.jpg"]})
    summary = invert(_foreign(trained["colmap"], tmp_path), tmp_path / "out", colmap=db, device="cpu")
    assert [r["name"] for r in summary["images"]] == ["blank.jpg"]


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

    run_dir = _foreign(trained["colmap"], tmp_path, {node: hostile(value)})
    db = make_database(tmp_path / "database.db", {"blank.jpg": _photos(tmp_path)["blank.jpg"]})
    err = _refused(capsys, run_dir, "--colmap", db, "--out", tmp_path / "out", "--device", "cpu")
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
    run_dir = _foreign(trained["colmap"], tmp_path, {"attack.optimizer": node})
    shutil.copy(tmp_path / "extra.pt", run_dir / "extra.pt")
    db = make_database(tmp_path / "database.db", {"blank.jpg": _photos(tmp_path)["blank.jpg"]})
    res = subprocess.run([sys.executable, "-m", "reconattack.invert", str(run_dir), "--colmap", str(db),
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
    run_dir = _foreign(trained["colmap"], tmp_path, nodes, (override.replace("MARKER", str(marker)),))
    db = make_database(tmp_path / "database.db", {"blank.jpg": _photos(tmp_path)["blank.jpg"]})
    err = _refused(capsys, run_dir, "--colmap", db, "--out", tmp_path / "out")
    assert err.startswith("ConfigError: ") and "overrides.yaml: the override " in err and message in err
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_recorded_settings_must_be_those_the_overrides_give(trained, tmp_path, capsys):
    """A setting of the map changed in config.yaml alone (the picture would silently be another
    model's): refused, naming it."""
    run_dir = _foreign(trained["colmap"], tmp_path, {"threat.compress": False})
    db = make_database(tmp_path / "database.db", {"blank.jpg": _photos(tmp_path)["blank.jpg"]})
    err = _refused(capsys, run_dir, "--colmap", db, "--out", tmp_path / "out")
    assert "has threat.compress = False, this checkout's conf/ with the run's overrides has True" in err


def test_nothing_of_the_run_config_is_resolved(trained, tmp_path):
    """Interpolations in the run's config.yaml, here in paths (which may differ), are never
    resolved: a resolver that would create a file is not called."""
    from omegaconf import OmegaConf

    marker = tmp_path / "marker"
    OmegaConf.register_new_resolver("test_touch", lambda p: Path(p).touch() or p)
    try:
        run_dir = _foreign(trained["colmap"], tmp_path, {"paths.data_dir": f"${{test_touch:{marker}}}"})
        db = make_database(tmp_path / "database.db", {"blank.jpg": _photos(tmp_path)["blank.jpg"]})
        invert(run_dir, tmp_path / "out", colmap=db, device="cpu")
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
    run_dir = _foreign(trained["colmap"], tmp_path)
    if text is None:
        (run_dir / ".hydra" / file).unlink()
    else:
        (run_dir / ".hydra" / file).write_text(text.replace("MARKER", str(marker)))
    db = make_database(tmp_path / "database.db", {"blank.jpg": _photos(tmp_path)["blank.jpg"]})
    err = _refused(capsys, run_dir, "--colmap", db, "--out", tmp_path / "out")
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
