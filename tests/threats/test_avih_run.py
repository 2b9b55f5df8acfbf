"""AVIH end to end: the demo pipeline, artifact reuse across a sweep, and the bad-input messages.
(Every AVIH experiment file runs in tests/test_run.py.)"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reconattack.run import run
from reconattack.threats.avih.encryption import AVIHEncryptor
from reconattack.threats.avih.gallery import load_encrypted_gallery
from tests.helpers import compose_cfg, demo_tiny, experiment_overrides, make_experiment_data

ROOT = Path(__file__).resolve().parents[2]
ROW_KEYS = [f"{row}/{m}" for row in ("original", "protected", "key_model", "random", "ours")
            for m in ("tpr@far", "mse", "psnr", "ssim", "lpips", "clip")]
ENCRYPT_KEYS = ["encrypt/service_cos", "encrypt/psnr", "encrypt/ssim", "encrypt/key_psnr",
                "encrypt/key_ssim", "encrypt/wrong_key_psnr"]


def test_demo_pipeline_reports_every_row_and_encryption_metric(tmp_path):
    metrics = run(compose_cfg(demo_tiny(tmp_path)))
    for key in ENCRYPT_KEYS + ROW_KEYS:
        assert key in metrics, key
    for key in ENCRYPT_KEYS + [k for k in ROW_KEYS if not k.endswith(("lpips", "clip"))]:
        assert isinstance(metrics[key], float), (key, metrics[key])
    for key in ("ours/lpips", "ours/clip", "protected/lpips"):
        assert metrics[key].startswith("missing: ")  # no weights offline: reported, not faked
    # every row's images, the Original's too, are scored as saved (8-bit PNG): computed, not assumed
    assert 0 <= metrics["original/mse"] <= (0.5 / 255) ** 2 and metrics["original/ssim"] > 0.99
    # the threat's premise: the service model's TPR@FAR with the original and the encrypted gallery
    for row in ("original", "protected"):
        assert 0 <= metrics[f"service/{row}/tpr@far"] <= 1 and f"service/{row}/mse" not in metrics
    assert metrics["verification/protocol"] == "per_row"
    assert metrics["attack/leaked_images"] == 1  # round(0.1 x 12)
    assert metrics["attack/heldout_images"] == 12
    assert metrics["artifacts/built"] == 3  # service model, evaluation model, encrypted gallery
    run_dir = tmp_path / "run"
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["ours/psnr"] == pytest.approx(metrics["ours/psnr"])
    for name in ("samples/test_grid.png", "samples/encrypt_grid.png", "checkpoints/attack.ckpt"):
        assert (run_dir / name).is_file(), name
    # every verification row keeps its exact ROC; its TPR at the run's FAR is the metric's
    from reconattack.metrics.roc import read_rocs

    rocs = read_rocs(run_dir)
    assert {"ours", "original", "protected", "key_model", "random", "service/original", "service/protected"} <= set(rocs)
    for row, roc in rocs.items():
        assert metrics[f"{row}/tpr@far"] == pytest.approx(roc["tpr"][roc["far"] <= 0.01].max()), row
        # 12 impostor pairs measure FAR down to 1/12: the lower FARs are missing, not extrapolated
        assert metrics[f"{row}/min_far"] == pytest.approx(1 / 12) and metrics[f"{row}/pairs/impostor"] == 12
        assert metrics[f"{row}/tpr@far=0.1"] == pytest.approx(roc["tpr"][roc["far"] <= 0.1].max())
        assert metrics[f"{row}/tpr@far=0.001"].startswith("missing: ")
    # retrieval of each image's own original among the 12 held-out: HOG computed, CLIP missing offline
    for row in ("ours", "original", "protected", "key_model", "random"):
        assert 0 <= metrics[f"{row}/retrieval/hog/rank1"] <= 1 and metrics[f"{row}/retrieval/hog/n"] == 12
        assert metrics[f"{row}/retrieval/clip/rank1"].startswith("missing: ")
    assert metrics["original/retrieval/hog/rank1"] == 1.0  # the originals as saved find themselves
    assert (run_dir / "samples" / "test_grid.txt").read_text().splitlines() == [
        "target | ours | original | protected | key_model | random", "tile: 16x16"]
    art, = (tmp_path / "cache" / "artifacts" / "encrypted_gallery").glob("[!.]*")
    gallery = load_encrypted_gallery(art)
    # lossless float32 storage in [-1, 1], per-image key ids and the originals' indices: the 12
    # held-out, then the 12 pool images, all under the target key (no decoys by default)
    assert gallery["encrypted"].dtype == torch.float32 and gallery["encrypted"].shape == (24, 3, 16, 16)
    assert gallery["encrypted"].min() >= -1 and gallery["encrypted"].max() <= 1
    assert gallery["index"].tolist() == list(range(12, 24)) + list(range(12))
    assert gallery["key_id"].tolist() == [0] * 24
    assert (art / "spec.json").is_file() and (art / "curve.csv").is_file()


def test_second_job_of_a_sweep_reuses_the_encrypted_gallery(tmp_path, monkeypatch):
    first = run(compose_cfg([*demo_tiny(tmp_path), "threat.key_share=0.5", "seed=0"]))
    assert first["artifacts/built"] == 3

    def no_encryption(*args, **kwargs):
        raise AssertionError("the second job encrypted again")

    monkeypatch.setattr(AVIHEncryptor, "encrypt", no_encryption)
    over = [o for o in demo_tiny(tmp_path) if not o.startswith("paths.output_dir")]
    second = run(compose_cfg([*over, f"paths.output_dir={tmp_path / 'run2'}", "threat.key_share=1.0",
                              "seed=1"]))
    assert second["artifacts/built"] == 0
    assert second["attack/leaked_images"] == 12 and first["attack/leaked_images"] == 6
    for key in ("encrypt/psnr", "encrypt/key_psnr", "encrypt/service_cos"):  # the same gallery
        assert second[key] == pytest.approx(first[key], abs=1e-5)
    # something inside the encryption spec changes: a new gallery is built
    monkeypatch.undo()
    third = run(compose_cfg([*over, f"paths.output_dir={tmp_path / 'run3'}", "threat.encrypt.loss.vc=1.0"]))
    assert third["artifacts/built"] == 1
    # reuse off: everything is rebuilt privately in the run directory
    fourth = run(compose_cfg([*over, f"paths.output_dir={tmp_path / 'run4'}", "threat.reuse_artifacts=false"]))
    assert fourth["artifacts/built"] == 3 and (tmp_path / "run4" / "artifacts").is_dir()


def _cli(*args, env_extra=None, timeout=900):
    env = {**os.environ, "RECONATTACK_OFFLINE": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "reconattack.run", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_cli_key_share_sweep_encrypts_once(tmp_path):
    over = [o for o in demo_tiny(tmp_path) if not o.startswith("paths.output_dir")]
    over = [o for o in over if not o.startswith("threat.key_share")]
    res = _cli("-m", *over, "threat.key_share=0.1,0.5", "seed=0,1", f"hydra.sweep.dir={tmp_path / 'sweep'}")
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
    assert "ours/tpr@far" in table and "threat.key_share" in table
    assert "## Paper layout" in table  # a 2-step attack is flagged by the collapse checks: the mark may follow
    assert re.search(r"^\| Ours \(threat\.key_share=0\.1\)( ⚠)? \|", table, re.M)
    assert "| tpr@far ↑ | tpr@far=0.001 ↑ | retrieval/clip/rank1 ↑ | retrieval/hog/rank1 ↑ | mse ↓ |" in table
    assert "| Key model |" in table and "missing: " not in table and "- LPIPS" in table


# ---------------------------------------------------------------- paper face setting
@pytest.fixture(scope="module")
def face_data(tmp_path_factory):
    return make_experiment_data(tmp_path_factory.mktemp("faces"))


def face_overrides(name: str, data_root: Path, tmp: Path) -> list[str]:
    return [*experiment_overrides(name, tmp, data_root), "+trainer.fast_dev_run=1"]


def test_paper_face_settings():
    cfg = compose_cfg(["+experiment=avih_attack_lfw"])
    assert cfg.threat.encrypt.iterations == 800 and cfg.threat.encrypt.loss.vc_kernel == 4
    e = cfg.threat.encrypt.loss
    assert (e.diff, e.rec, e.vc) == (0.03, 0.5, 3.0)
    assert cfg.attack.steps.attack == 1600 and cfg.data.batch_size == 32
    assert cfg.loss.identity == 30.0 and cfg.loss.augment.pad == 5
    assert cfg.loss.augment.flip and cfg.model.discriminator.last_activation == "tanh"
    assert (cfg.data.gallery_size, cfg.data.pool) == (2000, 1000)
    assert cfg.data.auxiliary.path.endswith("celeba/img_align_celeba")
    assert list(cfg.threat.service.net.layers) == [2, 2, 2, 2] and cfg.threat.service.channel_order == "rgb"
    assert cfg.threat.service.format._target_.endswith("InsightfaceFormat")
    assert list(cfg.threat.evaluation.net.layers) == [3, 13, 30, 3]
    assert cfg.threat.evaluation.net._target_.endswith("AdaFaceIResNet")
    assert cfg.threat.evaluation.channel_order == "bgr"
    assert cfg.attack.name == "dr" and compose_cfg(["+experiment=avih_encrypt_cfpfp"]).attack is None
    assert compose_cfg(["+experiment=avih_attack_agedb30_no_gan"]).loss.gan == 0
    assert compose_cfg(["+experiment=avih_attack_agedb30_no_aug"]).loss.augment is None
    both = compose_cfg(["+experiment=avih_attack_agedb30_identity_only"]).loss
    assert both.gan == 0 and both.augment is None
    swapped = compose_cfg(["+experiment=avih_attack_lfw", "face@threat.service=adaface_ir50"])
    assert swapped.threat.service.channel_order == "bgr" and list(swapped.threat.service.net.layers) == [3, 4, 14, 3]


# --------------------------------------------------------------------------- bad input
def _cli_error(args, tmp_path):
    res = _cli(*args, f"hydra.run.dir={tmp_path / 'run'}", timeout=300)
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    return res.stdout + res.stderr


def test_missing_data_and_checkpoints_are_one_message(tmp_path):
    err = _cli_error(["+experiment=avih_attack_lfw", "trainer=cpu", f"paths.data_dir={tmp_path / 'none'}"],
                     tmp_path)
    for what in ("data.source", "lfw.bin", "data.auxiliary", "img_align_celeba",
                 "threat.service.checkpoint", "backbone.pth", "threat.evaluation.checkpoint",
                 "adaface_ir101_webface12m.ckpt"):
        assert what in err, what
    assert err.count("DataNotFoundError") == 1 and "Traceback" not in err


@pytest.mark.parametrize("share,match", [("0", r"\(0, 1\]"), ("1.5", r"\(0, 1\]"),
                                         ("0.001", "leaks no image")])
def test_bad_key_share_is_refused_before_any_work(share, match, tmp_path):
    import re

    err = _cli_error(["+experiment=demo_avih", f"threat.key_share={share}",
                      f"paths.cache_dir={tmp_path / 'cache'}"], tmp_path)
    assert re.search(match, err) and "Traceback" not in err
    assert not (tmp_path / "cache").exists()


def test_wrong_architecture_checkpoint_names_the_keys(face_data, tmp_path):
    # the IR checkpoint on disk has one block per stage; the config asks for two in the first
    over = [*face_overrides("avih_encrypt_lfw", face_data, tmp_path), "threat.service.net.layers=[2,1]"]
    with pytest.raises(ValueError, match=r"layer1\.1\..*looks like IResNet custom \(layers=\[1, 1\]"):
        run(compose_cfg(over))


def test_invalid_bin_and_small_gallery_are_clear(face_data, tmp_path):
    from reconattack.data.faces import BinFormatError

    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"not a pickle at all")
    over = face_overrides("avih_encrypt_lfw", face_data, tmp_path)
    with pytest.raises(BinFormatError, match="bad.bin"):
        run(compose_cfg([*over, f"data.source.path={bad}"]))
    with pytest.raises(ValueError, match="gallery smaller than requested"):
        run(compose_cfg([*over, "data.gallery_size=2000", "data.pool=1000"]))


@pytest.mark.slow
def test_cli_ddp_cpu_two_processes_attack(tmp_path):
    """The attacker trains under DDP (2 CPU processes); artifacts are built once by rank 0."""
    over = [o for o in demo_tiny(tmp_path) if not o.startswith(("paths.output_dir", "trainer="))]
    res = _cli("trainer=ddp_cpu", *over, f"hydra.run.dir={tmp_path / 'run'}")
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert isinstance(m["ours/psnr"], float) and isinstance(m["ours/tpr@far"], float)
    assert m["artifacts/built"] == 3
    # gathered over both processes: the 12 held-out originals, once each
    assert m["ours/retrieval/hog/n"] == 12 and m["ours/pairs/impostor"] == 12
    assert (tmp_path / "run" / "roc_ours.csv").is_file()


def test_trained_demo_models_do_not_depend_on_what_ran_before(tmp_path):
    from reconattack.engine.artifacts import ArtifactStore
    from reconattack.engine.context import RunContext
    from reconattack.engine.runner import build_threat
    from reconattack.threats.avih.models import recognition_model

    cfg = compose_cfg(demo_tiny(tmp_path))
    threat = build_threat(cfg)
    threat.parts = threat._load_data()
    models = []
    for i in (1, 2):
        torch.manual_seed(i)  # another global RNG state, e.g. the service model was built or not
        ctx = RunContext(cfg, tmp_path / f"run{i}")
        model, _ = recognition_model(threat.models, "evaluation", threat.evaluation_cfg, threat.parts.models_train,
                                     threat.data_spec(), ArtifactStore(tmp_path / f"store{i}"),
                                     lambda name, steps, ctx=ctx: ctx.trainer(name, steps, single_device=True,
                                                                              logger=False))
        models.append(model.state_dict())
    for k in models[0]:
        torch.testing.assert_close(models[0][k], models[1][k], msg=k)


def test_decoy_encryptions_are_reported_apart(tmp_path):
    """With ``threat.encrypt.decoys=true`` the decoys (pool images under another key) get their
    own ``encrypt/decoy_*`` numbers and ``encrypt/*`` stays the target-key images' (equal to a
    run without decoys: the same jobs with the same seeds)."""
    plain = run(compose_cfg([*demo_tiny(tmp_path / "plain"), "threat.key.count=2"]))
    with_decoys = run(compose_cfg([*demo_tiny(tmp_path / "decoys"), "threat.key.count=2",
                                   "threat.encrypt.decoys=true"]))
    assert with_decoys["encrypt/images"] == 36 and plain["encrypt/images"] == 24
    for key in ("service_cos", "psnr", "ssim", "key_psnr", "wrong_key_psnr"):
        assert isinstance(with_decoys[f"encrypt/decoy_{key}"], float), key
        assert with_decoys[f"encrypt/{key}"] == pytest.approx(plain[f"encrypt/{key}"], abs=1e-4), key
    assert not any(k.startswith("encrypt/decoy_") for k in plain)
