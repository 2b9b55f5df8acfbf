"""``python -m reconattack.profile`` works for every experiment: the threat's networks and the
attack's, with the reference figures its config gives."""

from __future__ import annotations

import pytest
import torch

from reconattack.profile import format_table, profile
from tests.helpers import EXPERIMENTS, compose_cfg, experiment_overrides

#: one experiment per threat x attack in the fast suite; every other experiment file with `slow`
FAST = {"demo_avih", "demo_sift_baselines", "avih_encrypt_lfw", "cfgan_celebahq", "ivr_celebahq",
        "inv_celebahq", "demo_reid"}


@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow)
                                  for n in EXPERIMENTS])
def test_every_experiment_profiles(name, tmp_path):
    cfg = compose_cfg(experiment_overrides(name, tmp_path))
    result = profile(cfg, torch.device("cpu"), repeats=1)
    rows = result["models"]
    assert rows and all(r["params"] > 0 and r["flops"] > 0 for r in rows.values()), rows
    if cfg.threat.name.startswith("avih"):  # the threat's own networks
        assert any(k.startswith("service") for k in rows) and any(k.startswith("evaluation") for k in rows)
        assert "key model" in rows
    if cfg.attack is not None:
        whole = [k for k in rows if k.endswith("(inference)")]
        assert whole == [f"{cfg.attack.label} (inference)"] and rows[whole[0]]["latency_s"] > 0
    table = format_table(result, torch.device("cpu"), cfg.attack.label if cfg.attack is not None else "")
    assert table.count("\n") >= len(rows) + 1


def test_paper_face_setting_profile_at_real_size():
    """avih_attack_lfw at 112x112: insightface IR-18 service model, AdaFace IR-101 evaluation model,
    U-Net key and attacker (base 64, depth 4), PatchGAN (ndf 64, 3 layers)."""
    cfg = compose_cfg(["+experiment=avih_attack_lfw", "trainer=cpu"])
    rows = profile(cfg, torch.device("cpu"), repeats=1)["models"]
    service = next(v for k, v in rows.items() if k.startswith("service"))
    evaluation = next(v for k, v in rows.items() if k.startswith("evaluation"))
    assert service["params"] == pytest.approx(24.0e6, rel=0.02)  # IR-18, 512-d embedding
    assert evaluation["params"] > 60e6  # IR-101
    assert rows["discriminator"]["params"] == 2_765_633
    assert rows["attacker"]["params"] == rows["key model"]["params"]


def test_cfgan_reference_figures_come_from_the_attack_config():
    cfg = compose_cfg(["+experiment=cfgan_celebahq", "trainer=cpu"])
    from reconattack.engine.runner import build_attack

    ref = build_attack(cfg).reference
    assert (ref["params_M"], ref["gflops"], ref["networks"]["coarse"]) == (153.0, 148.0, 76.6)


def test_paper_reid_setting_profile_at_real_size():
    """avih_attack_market1501 at 256x128: TransReID ViT-B/16 (stride 12, JPM) as service and
    evaluation models, on the non-square input; U-Net key and attacker, PatchGAN."""
    cfg = compose_cfg(["+experiment=avih_attack_market1501", "trainer=cpu"])
    rows = profile(cfg, torch.device("cpu"), repeats=1)["models"]
    service = next(v for k, v in rows.items() if k.startswith("service"))
    assert 90e6 < service["params"] < 130e6  # ViT-B/16 with the JPM branch's extra block
    assert rows["key model"]["params"] > 0 and rows["discriminator"]["flops"] > 0
