"""EVDVAE (Hazami et al.), SIFT-conditioned, on the SIFT threat: the Gaussian KL against
torch.distributions, the posterior path (training) and the conditional prior (test), a short run
with a strict checkpoint, the paper-size model against Table II, and its tiny test settings."""

from __future__ import annotations

import pytest
import torch

from reconattack.attacks.evdvae import EVDVAEStage
from reconattack.models.common import count_parameters
from reconattack.models.evdvae import EVDVAE, gaussian_kl
from reconattack.run import run
from tests.helpers import compose_cfg, experiment_overrides, reloads_strictly


def tiny(cfg) -> list[str]:
    """Settings that make any EVDVAE experiment run in seconds on CPU (used by tests.helpers): the
    configured levels, one block of width 4 each."""
    levels = ",".join(f"[{int(s)},4,1]" for s, _, _ in cfg.model.net.levels)
    return ["attack.num_samples=2", f"model.net.levels=[{levels}]", "model.net.z_ch=2"]


def test_gaussian_kl_matches_torch_distributions():
    from torch.distributions import Normal, kl_divergence

    g = torch.Generator().manual_seed(0)
    mq, mp = torch.randn(50, generator=g), torch.randn(50, generator=g)
    sq, sp = torch.rand(50, generator=g) + 0.1, torch.rand(50, generator=g) + 0.1
    torch.testing.assert_close(gaussian_kl(mq, sq, mp, sp), kl_divergence(Normal(mq, sq), Normal(mp, sp)))


def _vae():
    return EVDVAE(8, 16, [(4, 8, 1), (8, 8, 2), (16, 8, 1), (32, 8, 1)], z_ch=3)


def test_the_posterior_trains_and_the_conditional_prior_reconstructs():
    torch.manual_seed(0)
    vae = _vae()
    sift, image = torch.randn(2, 8, 16, 16), torch.rand(2, 3, 32, 32) * 2 - 1
    out, kl = vae(sift, image)
    assert out.shape == (2, 3, 32, 32) and kl.shape == (2,) and bool((kl >= 0).all())
    prior, zero = vae(sift)  # no image: the prior's means, deterministic, no KL
    assert torch.equal(prior, vae.reconstruct(sift)) and torch.equal(zero, torch.zeros(2))
    assert not torch.equal(vae.reconstruct(sift), vae.reconstruct(torch.randn(2, 8, 16, 16)))  # reads the map
    # the image reaches the reconstruction only through the posterior (training)
    stage = EVDVAEStage(vae, {"recon": 1.0, "kl": 0.5}, optimizer=lambda p: torch.optim.Adam(p), iterations=1)
    batch = {"input": sift, "target": image}
    terms = stage.generator_losses(batch, stage.generate(batch))
    assert float(terms["kl"].detach()) == pytest.approx(float(batch["kl"].detach().mean()) / (3 * 32 * 32))
    assert float(terms["total"].detach()) == pytest.approx(float((terms["recon"] + 0.5 * terms["kl"]).detach()))
    terms["total"].backward()
    assert vae.encoder.stem.weight.grad is not None and vae.condition.stem.weight.grad is not None


def test_evdvae_demo_runs_and_its_checkpoint_loads_strictly(tmp_path):
    over = [*experiment_overrides(None, tmp_path, extra=["attack=evdvae_demo"]), "attack.steps.evdvae=2",
            "model.net.levels=[[4,4,1],[8,4,1],[16,4,1],[32,4,1],[64,4,1]]", "model.net.z_ch=2",
            "metrics.metrics=[mse,psnr,ssim]"]
    metrics = run(compose_cfg(over))
    assert isinstance(metrics["test/psnr"], float)
    # the same numbers from the checkpoint (the prior's means: deterministic); another net refused
    reloads_strictly(over, tmp_path, "evdvae", metrics, "model.net.z_ch=3", "does not fit EVDVAEStage")


def test_the_paper_model_is_sized_to_table_ii():
    cfg = compose_cfg(["+experiment=evdvae_celebahq"])
    n = cfg.model.net
    with torch.device("meta"):
        vae = EVDVAE(128, 128, [list(v) for v in n.levels], int(n.z_ch))
    assert count_parameters(vae) == pytest.approx(198e6, rel=0.03)


def test_levels_that_miss_the_image_or_the_map_are_refused(tmp_path):
    cfg = compose_cfg([*experiment_overrides(None, tmp_path, extra=["attack=evdvae_demo"]),
                       "model.net.levels=[[4,4,1],[8,4,1],[16,4,1],[32,4,1]]"])
    with pytest.raises(Exception, match="change model.net.levels"):
        run(cfg)
