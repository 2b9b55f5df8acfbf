"""AVIH on re-identification end to end (the AVIH attack paper's Appendix A): an encrypt + attack
run of avih_attack_market1501 at tiny settings on a fixture tree with made TransReID checkpoints,
the side information reaching the service model, the missing-data message, the demo's settings.
(Every experiment file also runs a fast_dev_run in tests/test_run.py.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from torch import nn

from reconattack.run import run
from reconattack.threats.avih.gallery import load_encrypted_gallery
from tests.helpers import compose_cfg, experiment_overrides, make_experiment_data

ROOT = Path(__file__).resolve().parents[2]
ROWS = ("original", "protected", "key_model", "random", "ours")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_experiment_data(tmp_path_factory.mktemp("reid"))


@pytest.mark.parametrize("name", ["avih_attack_market1501", "avih_attack_veri"])
def test_encrypt_and_attack_on_a_fixture_tree_with_made_checkpoints(name, data_dir, tmp_path):
    metrics = run(compose_cfg([*experiment_overrides(name, tmp_path, data_dir), "attack.steps.attack=2"]))
    for row in ROWS:
        for m in ("rank1", "rank5", "map", "mse", "psnr", "ssim"):
            assert isinstance(metrics[f"{row}/{m}"], float), (row, m, metrics.get(f"{row}/{m}"))
        assert 0 <= metrics[f"{row}/rank1"] <= metrics[f"{row}/rank5"] <= 1
        assert metrics[f"{row}/reid_gallery"] == 10  # the held-out images, each once
        assert "tpr@far" not in "".join(metrics)  # retrieval, not verification pairs
    assert metrics["ours/reid_queries"] >= 1
    for row in ("original", "protected"):  # the threat's premise, on the service model
        assert 0 <= metrics[f"service/{row}/rank1"] <= 1 and f"service/{row}/psnr" not in metrics
    assert metrics["attack/leaked_images"] == 3 and metrics["attack/heldout_images"] == 10
    run_dir = tmp_path / "run"
    assert (run_dir / "samples" / "test_grid.txt").read_text().splitlines()[1] == "tile: 32x16"
    art, = (tmp_path / "cache" / "artifacts" / "encrypted_gallery").glob("[!.]*")
    gallery = load_encrypted_gallery(art)
    assert gallery["encrypted"].shape == (16, 3, 32, 16)  # (H, W) kept through the encryption
    assert gallery["names"][0].endswith(".jpg")  # provenance: the dataset's file names


def test_the_service_model_gets_each_images_camera_and_view():
    """Encryption calls the service model with the batch's side information (0-based)."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    from reconattack.data.avih import EncryptionJobs
    from reconattack.threats.avih.encryption import AVIHEncryptor

    seen = []

    class Spy(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 4)

        def forward(self, x, cams=None, views=None):
            seen.append((cams.tolist(), views.tolist()))
            return nn.functional.normalize(self.lin(x.mean((2, 3))), dim=1)

    gallery = np.zeros((3, 8, 4, 3), np.uint8)
    side = {"cams": np.array([0, 5, 2]), "views": np.array([1, 0, 7])}
    enc = AVIHEncryptor(Spy(), [nn.Identity()], {"task": 1.0, "rec": 0.5}, vc_kernel=2, iterations=2)
    jobs = EncryptionJobs(gallery, np.array([2, 0, 1]), np.zeros(3, np.int64), side=side)
    pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, inference_mode=False).test(
        enc, DataLoader(jobs, batch_size=3), verbose=False)
    assert seen and all(s == ([2, 0, 5], [7, 1, 0]) for s in seen)


def test_missing_reid_data_and_checkpoints_are_one_message(tmp_path):
    res = subprocess.run([sys.executable, "-m", "reconattack.run", "+experiment=avih_attack_veri", "trainer=cpu",
                          f"paths.data_dir={tmp_path / 'none'}", f"hydra.run.dir={tmp_path / 'run'}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    err = res.stdout + res.stderr
    assert res.returncode == 2, err[-2000:]
    for what in ("veri", "stanford_cars", "threat.service.checkpoint", "veri_vit_transreid_stride/transformer_120.pth",
                 "threat.evaluation.checkpoint", "veri_deit_transreid_stride/transformer_120.pth"):
        assert what in err, what
    assert "Traceback" not in err


def test_paper_reid_settings():
    cfg = compose_cfg(["+experiment=avih_attack_veri"])
    assert cfg.threat.encrypt.loss.vc_kernel == 8 and cfg.attack.steps.attack == 800  # vehicles
    assert list(cfg.data.image_size) == [256, 256] and cfg.threat.service.net.views == 8
    assert list(cfg.threat.evaluation.mean) == [0.485, 0.456, 0.406]  # VeRi DeiT: the defaults, ImageNet's
    assert list(cfg.threat.service.mean) == list(cfg.threat.service.std) == [0.5] * 3  # VeRi ViT: 0.5
    m = compose_cfg(["+experiment=avih_attack_market1501"])
    assert m.threat.encrypt.loss.vc_kernel == 4 and list(m.data.image_size) == [256, 128]
    assert m.threat.encrypt.iterations == 800 and (m.data.gallery_size, m.data.pool) == (2000, 1000)
    assert m.threat.service.checkpoint.endswith("/market_vit_transreid_stride/transformer_120.pth")
    assert m.threat.evaluation.checkpoint.endswith("/0321_market_deit_transreie/transformer_120.pth")
    assert m.data.auxiliary.path.endswith("lpw") and not m.data.auxiliary.crop
    assert list(m.metrics.ranks) == [1, 5]


@pytest.mark.slow
def test_retrieval_under_ddp_gathers_the_whole_gallery(data_dir, tmp_path):
    """Two CPU processes: each evaluates half of the held-out gallery; the rows that do not depend
    on the training (Original, Protected, Key model, Random) score exactly as in one process."""
    import json

    over = [o for o in experiment_overrides("avih_attack_market1501", tmp_path, data_dir)
            if not o.startswith(("paths.output_dir", "trainer="))] + ["attack.steps.attack=2"]
    single = run(compose_cfg([*over, f"paths.output_dir={tmp_path / 'one'}", "trainer=cpu"]))
    res = subprocess.run([sys.executable, "-m", "reconattack.run", "trainer=ddp_cpu", *over,
                          f"hydra.run.dir={tmp_path / 'ddp'}"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    ddp = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    for row in ("original", "protected", "key_model", "random"):
        assert ddp[f"{row}/reid_gallery"] == 10
        for m in ("rank1", "rank5", "map"):
            assert ddp[f"{row}/{m}"] == pytest.approx(single[f"{row}/{m}"]), (row, m)
