"""AVIH end to end: the demo pipeline, artifact reuse across a sweep, every AVIH experiment file
on tiny fixtures, and the bad-input messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from reconattack.attacks.avih_encrypt import AVIHEncryptor
from reconattack.data.faces import make_bin
from reconattack.models.face import build_face_model
from reconattack.run import run
from tests.helpers import CONF_DIR, compose_cfg

ROOT = Path(__file__).resolve().parents[2]
AVIH_EXPERIMENTS = sorted(p.stem for p in Path(CONF_DIR, "experiment").glob("avih_*.yaml"))
ROW_KEYS = [f"{row}/{m}" for row in ("original", "protected", "key_model", "random", "ours")
            for m in ("tpr@far", "mse", "psnr", "ssim", "lpips", "clip")]
ENCRYPT_KEYS = ["encrypt/service_cos", "encrypt/psnr", "encrypt/ssim", "encrypt/key_psnr",
                "encrypt/key_ssim", "encrypt/wrong_key_psnr"]

TINY_NETS = [
    "model.key.net.base=4", "model.key.net.depth=2",
    "model.attacker.net.base=4", "model.attacker.net.depth=2",
    "model.discriminator.ndf=4", "model.discriminator.n_layers=1",
]


def avih_tiny(tmp: Path) -> list[str]:
    """Overrides that make an AVIH experiment run in seconds on CPU."""
    os.environ["RECONATTACK_OFFLINE"] = "1"
    return [
        f"paths.output_dir={tmp / 'run'}", f"paths.cache_dir={tmp / 'cache'}",
        "trainer=cpu", "logger=csv", "trainer.callbacks.progress=null",
        "attack.encrypt.iterations=3", "attack.encrypt.batch_size=16", "attack.reconstruct.steps=2",
        "attack.reconstruct.batch_size=4", "attack.num_samples=2", "data.eval_batch_size=8",
        *TINY_NETS,
    ]


def demo_tiny(tmp: Path) -> list[str]:
    return [
        "+experiment=demo_avih", *avih_tiny(tmp), "data.image_size=16",
        "data.gallery.size=24", "data.gallery.pool=12",
        "data.split.models=60", "data.split.auxiliary=20", "data.split.queries=30",
        "model.service.train.steps=2", "model.evaluation.train.steps=2",
        "model.service.input_size=16", "model.evaluation.input_size=16",
    ]


def test_demo_pipeline_reports_every_row_and_encryption_metric(tmp_path):
    metrics = run(compose_cfg(demo_tiny(tmp_path)))
    for key in ENCRYPT_KEYS + ROW_KEYS:
        assert key in metrics, key
    for key in ENCRYPT_KEYS + [k for k in ROW_KEYS if not k.endswith(("lpips", "clip"))]:
        assert isinstance(metrics[key], float), (key, metrics[key])
    for key in ("ours/lpips", "ours/clip", "protected/lpips"):
        assert metrics[key].startswith("missing: ")  # no weights offline: reported, not faked
    assert metrics["original/mse"] == 0.0 and metrics["original/ssim"] == pytest.approx(1.0)
    assert metrics["attack/leaked_images"] == 1  # round(0.1 x 12)
    assert metrics["artifacts/built"] == 3  # service model, evaluation model, encrypted gallery
    run_dir = tmp_path / "run"
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["ours/psnr"] == pytest.approx(metrics["ours/psnr"])
    for name in ("samples/test_grid.png", "samples/encrypt_grid.png", "checkpoints/attack.ckpt"):
        assert (run_dir / name).is_file(), name
    art, = (tmp_path / "cache" / "artifacts" / "encrypted_gallery").glob("[!.]*")
    gallery = torch.load(art / "gallery.pt", weights_only=True)
    # lossless float32 storage, per-image key ids and the originals' indices
    assert gallery["encrypted"].dtype == torch.float32 and gallery["encrypted"].shape == (36, 3, 16, 16)
    assert gallery["index"].tolist() == list(range(12, 24)) + list(range(12)) * 2
    assert gallery["key_id"].tolist() == [0] * 24 + [1] * 12
    assert (art / "spec.json").is_file() and (art / "curve.csv").is_file()


def test_second_job_of_a_sweep_reuses_the_encrypted_gallery(tmp_path, monkeypatch):
    first = run(compose_cfg([*demo_tiny(tmp_path), "attack.key_share=0.5", "seed=0"]))
    assert first["artifacts/built"] == 3

    def no_encryption(*args, **kwargs):
        raise AssertionError("the second job encrypted again")

    monkeypatch.setattr(AVIHEncryptor, "encrypt", no_encryption)
    over = [o for o in demo_tiny(tmp_path) if not o.startswith("paths.output_dir")]
    second = run(compose_cfg([*over, f"paths.output_dir={tmp_path / 'run2'}", "attack.key_share=1.0",
                              "seed=1"]))
    assert second["artifacts/built"] == 0
    assert second["attack/leaked_images"] == 12 and first["attack/leaked_images"] == 6
    for key in ("encrypt/psnr", "encrypt/key_psnr", "encrypt/service_cos"):  # the same gallery
        assert second[key] == pytest.approx(first[key], abs=1e-5)
    # something inside the encryption spec changes: a new gallery is built
    monkeypatch.undo()
    third = run(compose_cfg([*over, f"paths.output_dir={tmp_path / 'run3'}", "loss.encrypt.vc=1.0"]))
    assert third["artifacts/built"] == 1
    # reuse off: everything is rebuilt privately in the run directory
    fourth = run(compose_cfg([*over, f"paths.output_dir={tmp_path / 'run4'}", "attack.reuse_artifacts=false"]))
    assert fourth["artifacts/built"] == 3 and (tmp_path / "run4" / "artifacts").is_dir()


def _cli(*args, env_extra=None, timeout=900):
    env = {**os.environ, "RECONATTACK_OFFLINE": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "reconattack.run", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_cli_key_share_sweep_encrypts_once(tmp_path):
    over = [o for o in demo_tiny(tmp_path) if not o.startswith("paths.output_dir")]
    res = _cli("-m", *over, "attack.key_share=0.1,0.5", "seed=0,1", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert res.returncode == 0, res.stderr[-3000:]
    built = []
    for job in range(4):
        m = json.loads((tmp_path / "sweep" / str(job) / "metrics.json").read_text())
        assert isinstance(m["ours/tpr@far"], float)
        built.append(m["artifacts/built"])
    assert built == [3, 0, 0, 0]
    assert len(list((tmp_path / "cache" / "artifacts" / "encrypted_gallery").glob("[!.]*"))) == 1
    from reconattack.report import write_reports

    write_reports(tmp_path / "sweep")
    table = (tmp_path / "sweep" / "report.md").read_text()
    assert "ours/tpr@far" in table and "attack.key_share" in table
    assert "## Attack rows" in table and "| ours (" in table
    assert "| key_model |" in table and "missing: " not in table and "- LPIPS" in table


# ---------------------------------------------------------------- paper experiment files
FACE_TINY = {"layers": "[1,1]", "widths": "[4,8]", "embedding_size": "8", "input_size": "16"}


@pytest.fixture(scope="module")
def face_data(tmp_path_factory):
    """What the paper experiments expect under paths.data_dir: verification .bin files, a CelebA
    folder and face-model checkpoints (tiny architectures, in the published formats)."""
    import cv2

    root = tmp_path_factory.mktemp("faces")
    rng = np.random.default_rng(0)
    for name in ("lfw", "agedb_30", "cfp_fp"):
        pics = (rng.random((16, 24, 24, 3)) * 255).astype(np.uint8)  # 24 px: resized, with a warning
        make_bin(root / "faces_emore" / f"{name}.bin", pics, [True, False] * 4)
    celeba = root / "celeba" / "img_align_celeba"
    celeba.mkdir(parents=True)
    for i in range(6):
        cv2.imwrite(str(celeba / f"{i:06d}.jpg"), (rng.random((22, 18, 3)) * 255).astype(np.uint8))
    kw = {"layers": [1, 1], "widths": [4, 8], "embedding_size": 8, "input_size": 16}
    models = root / "models"
    ir18 = build_face_model("custom", "insightface", seed=0, **kw).backbone
    (models / "ms1mv3_arcface_r18_fp16").mkdir(parents=True)
    torch.save(ir18.state_dict(), models / "ms1mv3_arcface_r18_fp16" / "backbone.pth")
    ada = build_face_model("custom", "adaface", seed=1, **kw).backbone
    torch.save({"state_dict": {f"model.{k}": v for k, v in ada.state_dict().items()}, "epoch": 3},
               models / "adaface_ir101_webface12m.ckpt")
    return root


def face_overrides(data_root: Path, tmp: Path) -> list[str]:
    out = [*avih_tiny(tmp), f"paths.data_dir={data_root}", "data.image_size=16",
           "data.gallery.size=6", "data.gallery.pool=3", "data.num_workers=0", "attack.key_share=0.5",
           "+trainer.fast_dev_run=1"]
    for role in ("service", "evaluation"):
        out += [f"model.{role}.arch=custom"] + [f"+model.{role}.{k}={v}" if k in ("layers", "widths")
                                                 else f"model.{role}.{k}={v}" for k, v in FACE_TINY.items()]
    return out


def test_paper_face_settings():
    cfg = compose_cfg(["+experiment=avih_attack_lfw"])
    assert cfg.attack.encrypt.iterations == 800 and cfg.loss.encrypt.vc_kernel == 4
    assert (cfg.loss.encrypt.diff, cfg.loss.encrypt.rec, cfg.loss.encrypt.vc) == (0.03, 0.5, 3.0)
    assert cfg.attack.reconstruct.steps == 1600 and cfg.attack.reconstruct.batch_size == 32
    assert cfg.loss.attack.identity == 30.0 and cfg.loss.attack.augment.pad == 5
    assert cfg.loss.attack.augment.flip and cfg.model.discriminator.last_activation == "tanh"
    assert (cfg.data.gallery.size, cfg.data.gallery.pool) == (2000, 1000)
    assert cfg.data.auxiliary.path.endswith("celeba/img_align_celeba")
    assert cfg.model.service.arch == "ir18" and cfg.model.service.format == "insightface"
    assert cfg.model.evaluation.arch == "ir101" and cfg.model.evaluation.layout == "adaface"
    assert list(cfg.attack.stages) == ["encrypt", "attack"]
    assert list(compose_cfg(["+experiment=avih_encrypt_cfpfp"]).attack.stages) == ["encrypt"]
    assert compose_cfg(["+experiment=avih_attack_agedb30_no_gan"]).loss.attack.gan == 0
    assert compose_cfg(["+experiment=avih_attack_agedb30_no_aug"]).loss.attack.augment is None
    both = compose_cfg(["+experiment=avih_attack_agedb30_identity_only"]).loss.attack
    assert both.gan == 0 and both.augment is None
    swapped = compose_cfg(["+experiment=avih_attack_lfw", "face@model.service=adaface_ir50"])
    assert swapped.model.service.layout == "adaface" and swapped.model.service.arch == "ir50"


@pytest.mark.parametrize("name", AVIH_EXPERIMENTS)
def test_every_avih_experiment_runs_fast_dev_run(name, face_data, tmp_path):
    metrics = run(compose_cfg([f"+experiment={name}", *face_overrides(face_data, tmp_path)]))
    for key in ENCRYPT_KEYS:
        assert isinstance(metrics[key], float), key
    if "attack" in name:
        for key in ROW_KEYS:
            assert key in metrics, key
        assert isinstance(metrics["ours/psnr"], float)


# --------------------------------------------------------------------------- bad input
def _cli_error(args, tmp_path):
    res = _cli(*args, f"hydra.run.dir={tmp_path / 'run'}", timeout=300)
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    return res.stdout + res.stderr


def test_missing_data_and_checkpoints_are_one_message(tmp_path):
    err = _cli_error(["+experiment=avih_attack_lfw", "trainer=cpu", f"paths.data_dir={tmp_path / 'none'}"],
                     tmp_path)
    for what in ("data.gallery", "lfw.bin", "data.auxiliary", "img_align_celeba",
                 "model.service.checkpoint", "backbone.pth", "model.evaluation.checkpoint",
                 "adaface_ir101_webface12m.ckpt"):
        assert what in err, what
    assert err.count("DataNotFoundError") == 1 and "Traceback" not in err


@pytest.mark.parametrize("share,match", [("0", r"\(0, 1\]"), ("1.5", r"\(0, 1\]"),
                                         ("0.001", "leaks no image")])
def test_bad_key_share_is_refused_before_any_work(share, match, tmp_path):
    import re

    err = _cli_error(["+experiment=demo_avih", f"attack.key_share={share}",
                      f"paths.cache_dir={tmp_path / 'cache'}"], tmp_path)
    assert re.search(match, err) and "Traceback" not in err
    assert not (tmp_path / "cache").exists()


def test_wrong_architecture_checkpoint_names_the_keys(face_data, tmp_path):
    # the IR checkpoint on disk has one block per stage; the config asks for two in the first
    over = [o for o in face_overrides(face_data, tmp_path) if not o.startswith("+model.service.layers")]
    over.append("+model.service.layers=[2,1]")
    with pytest.raises(ValueError, match=r"layer1\.1\."):
        run(compose_cfg(["+experiment=avih_encrypt_lfw", *over]))


def test_invalid_bin_and_small_gallery_are_clear(face_data, tmp_path):
    from reconattack.data.faces import BinFormatError

    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"not a pickle at all")
    over = face_overrides(face_data, tmp_path)
    with pytest.raises(BinFormatError, match="bad.bin"):
        run(compose_cfg(["+experiment=avih_encrypt_lfw", *over, f"data.gallery.path={bad}"]))
    with pytest.raises(ValueError, match="gallery smaller than requested"):
        run(compose_cfg(["+experiment=avih_encrypt_lfw", *over, "data.gallery.size=2000",
                         "data.gallery.pool=1000"]))


@pytest.mark.slow
def test_cli_ddp_cpu_two_processes_attack(tmp_path):
    """The attacker trains under DDP (2 CPU processes); artifacts are built once by rank 0."""
    over = [o for o in demo_tiny(tmp_path) if not o.startswith(("paths.output_dir", "trainer="))]
    res = _cli("trainer=ddp_cpu", *over, f"hydra.run.dir={tmp_path / 'run'}")
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert isinstance(m["ours/psnr"], float) and isinstance(m["ours/tpr@far"], float)
    assert m["artifacts/built"] == 3


def test_trained_demo_models_do_not_depend_on_what_ran_before(tmp_path):
    from reconattack.artifacts import ArtifactStore
    from reconattack.attacks.avih import face_model
    from reconattack.data.avih import build_avih_data

    cfg = compose_cfg(demo_tiny(tmp_path))
    data = build_avih_data(cfg.data)
    models = []
    for i in (1, 2):
        torch.manual_seed(i)  # another global RNG state, e.g. the service model was built or not
        model, _ = face_model(cfg, "evaluation", data, ArtifactStore(tmp_path / f"store{i}"), tmp_path)
        models.append(model.state_dict())
    for k in models[0]:
        torch.testing.assert_close(models[0][k], models[1][k], msg=k)
