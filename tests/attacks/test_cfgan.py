"""CFGAN as an attack on the SIFT threat: its tiny test settings and the hand-over of the trained
coarse net to the fine stage (SPEC §2.3: the official fine-stage script forgets to load it)."""

from __future__ import annotations

import torch

from reconattack.run import run
from tests.helpers import compose_cfg, experiment_overrides


def _levels(n: int, width: int) -> str:
    return "[" + ",".join([str(width)] * n) + "]"


def tiny(cfg) -> list[str]:
    """Settings that make any CFGAN experiment run in seconds on CPU (used by tests.helpers)."""
    out = ["loss.per=0", "loss.style=0", "attack.num_samples=2"]
    n, d = len(cfg.model.coarse.enc_channels), len(cfg.model.discriminator.channels)
    if n > 4:  # the paper model: keep its depth, shrink its widths
        out += [f"model.coarse.enc_channels={_levels(n, 8)}", f"model.coarse.dec_channels={_levels(n, 8)}",
                "model.discriminator.stem=4", f"model.discriminator.channels={_levels(d, 4)}"]
    return out


def test_fine_stage_gets_the_trained_coarse_net_and_keeps_it_frozen(tmp_path):
    """The fine checkpoint's coarse net equals the coarse stage's checkpoint (parameters and
    BatchNorm statistics), i.e. it was handed over trained and did not change while the fine
    net trained."""
    over = [*experiment_overrides(None, tmp_path), "attack.steps.coarse=3", "attack.steps.fine=3",
            "metrics.metrics=[mse,psnr,ssim]", "attack.fine_init_from_coarse=false"]
    run(compose_cfg(over))
    ckpts = tmp_path / "run" / "checkpoints"
    coarse = torch.load(ckpts / "coarse.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    fine = torch.load(ckpts / "fine.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    trained = {k[len("generator."):]: v for k, v in coarse.items() if k.startswith("generator.")}
    frozen = {k[len("coarse."):]: v for k, v in fine.items() if k.startswith("coarse.")}
    assert trained.keys() == frozen.keys() and any("running_mean" in k for k in frozen)
    for k in trained:
        torch.testing.assert_close(frozen[k], trained[k], rtol=0, atol=0, msg=k)
    # and the coarse stage did train: its weights differ from a fresh initialisation
    from reconattack.engine.runner import build_attack, build_threat

    cfg = compose_cfg(over)
    fresh = build_attack(cfg).generator("coarse", build_threat(cfg)).state_dict()
    assert any(not torch.equal(fresh[k], trained[k]) for k in fresh if k.endswith("weight"))
