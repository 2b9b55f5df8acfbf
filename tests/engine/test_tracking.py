"""W&B and TensorBoard (reconattack/engine/tracking.py), offline: the tests read the run files W&B
writes without a network (``offline-run-*/files``) and TensorBoard's event files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reconattack.run import run
from tests.helpers import coarse_only, compose_cfg

ROOT = Path(__file__).resolve().parents[2]


def _offline_runs(run_dir: Path) -> list[Path]:
    return sorted(run_dir.rglob("offline-run-*"))


def wandb_records(path: Path) -> list:
    """The records of an offline W&B run file (``run-<id>.wandb``): W&B's log format (a 7-byte
    header ``:W&B`` + magic + version, then 32 KiB blocks of records, each with a 7-byte header:
    CRC-32C, length (2 bytes, little-endian), type 1 full / 2 first / 3 middle / 4 last), each
    record a ``wandb_internal_pb2.Record`` protobuf."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", data[:8]
    pos, block, chunks, partial = 7, 32768, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if left < 7 or kind == 0:  # block trailer / padding
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            chunks.append(chunk)
        elif kind == 2:
            partial = chunk
        elif kind == 3:
            partial += chunk
        elif kind == 4:
            chunks.append(partial + chunk)
    records = []
    for chunk in chunks:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(chunk)
        records.append(record)
    return records


def wandb_run_contents(offline_run: Path) -> dict:
    """``{"group", "tags", "name", "config": {key: value}, "summary": {key: value}}`` of an
    offline W&B run (the last value of each summary key; nested keys joined with ``/``)."""
    out = {"config": {}, "summary": {}}
    for record in wandb_records(next(offline_run.glob("run-*.wandb"))):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out.update(group=record.run.run_group, tags=list(record.run.tags), name=record.run.display_name)
        elif kind in ("config", "summary"):
            for item in getattr(record, kind).update:
                key = item.key or "/".join(item.nested_key)
                out[kind][key] = json.loads(item.value_json)
    return out


def _grid_run(tmp: Path, *extra: str) -> dict:
    """The coarse stage, 6 iterations, with a validation split: a sample grid at every validation
    (every epoch of 4 batches) and the final ones."""
    return run(compose_cfg(coarse_only(tmp, "data.val=10", "attack.val_every_n_epochs=1", "data.batch_size=16",
                                       "attack.steps.coarse=6", *extra)))


def test_wandb_run_has_the_config_summary_and_images(tmp_path):
    metrics = _grid_run(tmp_path, "logger=wandb")
    wandb_run, = _offline_runs(tmp_path / "run")
    files = wandb_run / "files"
    contents = wandb_run_contents(wandb_run)
    summary = contents["summary"]
    for key, value in metrics.items():  # metrics.json is the run summary, missing ones included
        assert key in summary, key
        if isinstance(value, float):
            assert summary[key] == pytest.approx(value, abs=1e-6), key
        else:
            assert summary[key] == value, key
    config = contents["config"]
    assert config["attack"]["name"] == "cfgan"
    assert config["job"] == {"experiment": "default", "sweep": None, "overrides": {}}
    assert contents["group"] == "default" and {"sift", "cfgan"} <= set(contents["tags"])
    images = sorted(p.relative_to(files / "media" / "images").as_posix()
                    for p in (files / "media" / "images").rglob("*.png"))
    assert any(name.startswith("coarse/val_samples") for name in images), images
    assert any(name.startswith("samples/test_grid") for name in images), images


def test_tensorboard_gets_the_same_images(tmp_path):
    _grid_run(tmp_path, "logger=tensorboard")
    acc = _tensorboard_events(tmp_path / "run")
    tags = acc.Tags()["images"]
    assert "coarse/val_samples" in tags and "samples/test_grid" in tags, tags
    assert len(acc.Images("coarse/val_samples")) >= 1


def _tensorboard_events(run_dir: Path):
    """The run's TensorBoard events, read whole (one version folder: a stage's Trainer adds no
    other)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folders = {p.parent for p in run_dir.rglob("events.out.tfevents.*")}
    assert len(folders) == 1, folders
    acc = EventAccumulator(str(folders.pop()), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc


# ------------------------------------------------------------------ logger.images=local
#: what counts as an image file wherever a run or W&B writes
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff"}


def _image_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def _wandb_images(offline_run: Path) -> dict[str, list]:
    """``{key: [run step, ...]}`` of the pictures an offline W&B run logged (history entries whose
    ``_type`` is an image kind; the step is the ``trainer/global_step`` logged with them), and
    ``"<files>"`` when the run registered a media file."""
    out: dict[str, list[int]] = {}
    for record in wandb_records(next(offline_run.glob("run-*.wandb"))):
        kind = record.WhichOneof("record_type")
        media = [f.path for f in record.files.files] if kind == "files" else []
        if any(path.startswith("media/") for path in media):
            out.setdefault("<files>", []).append(None)
        if kind != "history":
            continue
        items = {tuple(i.nested_key) or (i.key,): json.loads(i.value_json) for i in record.history.item}
        step = items.get(("trainer/global_step",))
        for key, value in items.items():
            if key[-1] == "_type" and "image" in str(value):
                out.setdefault("/".join(key[:-1]), []).append(step)
    return out


def test_logger_images_local_gives_wandb_no_image_and_keeps_the_grids_on_disk(tmp_path, monkeypatch):
    """The same run with ``logger.images=upload`` (the default) and ``local``: uploaded, W&B's
    run holds the validation and final grids; local, no picture reaches W&B (no media file in
    anything W&B wrote, no image in its history) while its numbers do, and the validation grids it
    would have had are in ``samples/val/<stage>_<step>.png``, at the same steps, the same
    pictures."""
    import numpy as np
    from PIL import Image

    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home"))  # anything W&B writes is under tmp_path
    logged, runs = {}, {}
    for images in ("upload", "local"):
        metrics = _grid_run(tmp_path / images, "logger=wandb", f"logger.images={images}")
        runs[images], = _offline_runs(tmp_path / images / "run")
        logged[images] = _wandb_images(runs[images])
        assert wandb_run_contents(runs[images])["summary"]["test/psnr"] == pytest.approx(metrics["test/psnr"])
    assert {"coarse/val_samples", "samples/test_grid", "<files>"} <= set(logged["upload"]), logged
    uploaded = _image_files(runs["upload"])
    assert any("val_samples" in p.name for p in uploaded) and any("test_grid" in p.name for p in uploaded)

    assert logged["local"] == {}, logged["local"]
    local = tmp_path / "local"
    samples = local / "run" / "samples"
    assert _image_files(local) + _image_files(tmp_path / "wandb_home") == _image_files(samples)
    steps = logged["upload"]["coarse/val_samples"]
    assert sorted(p.name for p in _image_files(samples / "val")) == [f"coarse_{s:06d}.png" for s in sorted(steps)]
    assert (samples / "test_grid.png").is_file()
    on_wandb = sorted((p for p in uploaded if "val_samples" in p.name), key=lambda p: int(p.name.split("_")[2]))
    for wandb_png, step in zip(on_wandb, steps):
        a = np.asarray(Image.open(wandb_png).convert("RGB"), dtype=np.int16)
        b = np.asarray(Image.open(samples / "val" / f"coarse_{step:06d}.png").convert("RGB"), dtype=np.int16)
        assert a.shape == b.shape and np.abs(a - b).max() <= 1  # rounding to 8 bits may differ by 1


def test_logger_images_local_gives_tensorboard_no_image(tmp_path):
    _grid_run(tmp_path, "logger=tensorboard", "logger.images=local")
    acc = _tensorboard_events(tmp_path / "run")
    assert acc.Tags()["images"] == [] and "test/psnr" in acc.Tags()["scalars"]
    assert [p.name for p in _image_files(tmp_path / "run" / "samples" / "val")] and \
        _image_files(tmp_path / "run") == _image_files(tmp_path / "run" / "samples")


def test_a_misspelt_logger_images_is_refused_before_any_work(tmp_path):
    from reconattack.errors import ConfigError

    with pytest.raises(ConfigError, match="logger.images must be one of upload, local"):
        run(compose_cfg(coarse_only(tmp_path, "logger=wandb", "logger.images=locale")))
    assert not (tmp_path / "run" / "state").exists() and not (tmp_path / "cache").exists()


def test_every_picture_reaches_a_logger_through_log_image():
    """``logger.images=local`` holds because tracking.log_image is the one place that hands a
    picture to a logger: no other code of the package calls a logger's image methods or builds
    a ``wandb.Image``."""
    import ast

    methods = {"log_image", "add_image", "add_images", "add_figure", "log_video", "Image", "Video"}
    callers = set()
    for path in sorted((ROOT / "reconattack").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for func in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            for call in (n for n in ast.walk(func) if isinstance(n, ast.Call)):
                if isinstance(call.func, ast.Attribute) and call.func.attr in methods:
                    callers.add((path.relative_to(ROOT).as_posix(), func.name, call.func.attr))
    assert {(p, f) for p, f, _ in callers} == {("reconattack/engine/tracking.py", "log_image")}, callers


def test_a_two_stage_run_logs_as_one_run_with_its_stages_named(tmp_path):
    """CFGAN coarse (6 iterations) then fine (4): one TensorBoard run whose step goes on across
    the stages — coarse at steps 0..5, fine at 6..9, the final test metrics at 10 — each stage's
    curves under its own name (``coarse/val/psnr`` beside ``fine/val/psnr``)."""
    over = [o for o in coarse_only(tmp_path, "logger=tensorboard", "data.val=10", "attack.val_every_n_epochs=1",
                                   "data.batch_size=16", "attack.steps.coarse=6", "attack.steps.fine=4",
                                   "trainer.log_every_n_steps=1")
            if o != "attack.stages=[coarse]"]
    over += ["model.fine.stem_mid=8", "attack.fine_init_from_coarse=false"]
    run(compose_cfg(over))
    acc = _tensorboard_events(tmp_path / "run")
    scalars = acc.Tags()["scalars"]

    def steps(prefix: str, kind: str = "scalars") -> set[int]:
        tags = [t for t in acc.Tags()[kind] if t.startswith(prefix)]
        assert tags, (prefix, scalars)
        get = acc.Scalars if kind == "scalars" else acc.Images
        return {e.step for t in tags for e in get(t)}

    assert {"coarse/val/psnr", "fine/val/psnr"} <= set(scalars) and "val/psnr" not in scalars, scalars
    assert steps("coarse/train/") <= set(range(0, 6)) and max(steps("coarse/train/")) == 5
    assert steps("fine/train/") <= set(range(6, 10)) and min(steps("fine/train/")) == 6
    assert max(steps("coarse/val/")) <= 6 < min(steps("fine/val/"))
    assert max(steps("coarse/val_samples", "images")) <= 6 < min(steps("fine/val_samples", "images"))
    assert steps("test/psnr") == {10}


def test_a_report_of_several_experiments_logs_to_each_group_its_jobs_used(tmp_path, monkeypatch):
    """Jobs of two experiments' sweeps under one folder (each job's ``wandb.json``, as
    ``wandb_logger`` writes it): a ``report`` run in each of the two groups, with the tables."""
    from reconattack.engine.tracking import WANDB_FILE, log_report_tables
    from reconattack.report.runs import Job

    monkeypatch.setenv("WANDB_MODE", "offline")
    jobs = []
    for exp, sweep in (("cfgan_lsun_bird", "2026-12-01_10-00"), ("ivr_lsun_bird", "2026-12-02_11-00")):
        d = tmp_path / exp / sweep / "0"
        d.mkdir(parents=True)
        (d / WANDB_FILE).write_text(json.dumps({"project": "p", "group": f"{exp}/{sweep}"}))
        jobs.append(Job(d, str(d), [], {}, {"logger": {"_target_": "reconattack.engine.tracking.wandb_logger"}},
                        {"test/psnr": 1.0}, "finished", None))
    table = tmp_path / "report.csv"
    table.write_text("setting,runs\na,1\n")
    written = log_report_tables(tmp_path, jobs, [table])
    import wandb

    wandb.teardown()
    assert len(written) == 2
    groups = sorted(wandb_run_contents(r)["group"] for r in (tmp_path / "wandb").glob("offline-run-*"))
    assert groups == ["cfgan_lsun_bird/2026-12-01_10-00", "ivr_lsun_bird/2026-12-02_11-00"]


def test_grid_matches_the_saved_sample_grid():
    from reconattack.utils.grids import grid

    a, b = torch.rand(3, 3, 8, 8) * 2 - 1, torch.rand(3, 3, 8, 8) * 2 - 1
    picture = grid([a, b], max_rows=2)
    assert picture.shape == (3, 2 * 8 + 3 * 2, 2 * 8 + 3 * 2)
    assert 0 <= float(picture.min()) and float(picture.max()) <= 1
    torch.testing.assert_close(picture[:, 2:10, 2:10], (a[0] + 1) / 2)


def test_a_wandb_sweep_has_one_run_per_job_and_the_report_tables(tmp_path):
    """Each job of a sweep is its own W&B run in the sweep's group, with the swept parameters in
    its config; the report's CSV tables become W&B Tables in a ``report`` run of that group."""
    import csv

    from reconattack.report import write_reports

    args = [a for a in coarse_only(tmp_path) if not a.startswith("paths.output_dir=")]
    env = {**os.environ, "RECONATTACK_OFFLINE": "1", "WANDB_MODE": "offline"}
    res = subprocess.run([sys.executable, "-m", "reconattack.run", "-m", *args, "logger=wandb",
                          "seed=0,1", f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    runs = [_offline_runs(tmp_path / "sweep" / str(i)) for i in (0, 1)]
    assert [len(r) for r in runs] == [1, 1]  # one W&B run per job
    ids = {r[0].name.rsplit("-", 1)[1] for r in runs}
    assert len(ids) == 2
    for i, (wandb_run,) in enumerate(runs):
        contents = wandb_run_contents(wandb_run)
        job = contents["config"]["job"]
        assert job["experiment"] == "default" and job["sweep"] == "sweep"
        assert job["overrides"]["seed"] == str(i)  # the swept parameter is in the run config
        assert contents["group"] == "default/sweep"  # the jobs of the sweep together
        assert contents["name"].startswith(f"seed={i} ") and "paths." not in contents["name"] and not any(t.startswith("seed=") for t in contents["tags"])
        assert "attack.stages=[coarse]" in contents["tags"]  # a setting of the job as a tag
        assert isinstance(contents["summary"]["test/psnr"], float)
        recorded = json.loads((tmp_path / "sweep" / str(i) / "wandb.json").read_text())
        assert recorded["group"] == "default/sweep" and recorded["project"] == "reconattack"
    # the report of the sweep's parent folder logs to the group its jobs used, not "default/<parent>"
    written = write_reports(tmp_path)
    import wandb

    wandb.teardown()  # W&B's service writes the run file by itself; as when this process ended
    report_run, = (tmp_path / "wandb").glob("offline-run-*")
    contents = wandb_run_contents(report_run)
    assert contents.get("name") == "report" and contents.get("group") == "default/sweep", (
        [r.WhichOneof("record_type") for r in wandb_records(next(report_run.glob("run-*.wandb")))],
        sorted(p.name for p in report_run.rglob("*")))
    logged = [json.loads(t.read_text()) for t in (report_run / "files" / "media" / "table").rglob("*.table.json")]
    csvs = [p for p in written if p.suffix == ".csv"]
    assert len(logged) == len(csvs) >= 1
    for path in csvs:
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh))
        assert any(t["columns"] == rows[0] and t["data"] == rows[1:] for t in logged), path.name
