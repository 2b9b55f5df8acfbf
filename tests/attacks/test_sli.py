"""SLI (Wu & Zhou 2021) on the SIFT threat: the official networks' parameter counts, the stages (the
LBP stage learns the image's LBP, the image stage reads the frozen LBP net), SLI-B on the
positions-only map, strict checkpoints of each stage, the refusals, and its tiny test settings."""

from __future__ import annotations

import pytest
import torch

from reconattack.attacks.sli import SLIStage
from reconattack.data.lbp import lbp_target
from reconattack.losses.gan import sli_d_loss, sli_g_loss
from reconattack.models.common import count_parameters
from reconattack.models.sli import SLIDiscriminator, SLIUNet
from reconattack.run import run
from tests.helpers import compose_cfg, experiment_overrides, reloads_strictly


def tiny(cfg) -> list[str]:
    """Settings that make any SLI experiment run in seconds on CPU (used by tests.helpers): the
    paper's depth (eight stages at 256 px), narrow."""
    n = len(cfg.model.lbp.widths)
    return ["attack.num_samples=2", "loss.lbp.per=0", "loss.image.per=0", "loss.image.style=0",
            "model.lbp.widths=[" + ",".join(["4"] * n) + "]", "model.lbp_discriminator.widths=[4,4,4,4]"]


def test_the_official_networks_have_the_official_parameter_counts():
    assert count_parameters(SLIUNet(128, 1, up="nearest")) == 39_279_105
    assert count_parameters(SLIUNet(129, 3, up="transpose")) == 54_538_627
    assert count_parameters(SLIDiscriminator(1)) == 2_762_689
    assert count_parameters(SLIDiscriminator(3)) == 2_764_737
    net = SLIUNet(5, 3, widths=(4, 8, 8), up="transpose")
    out = net(torch.randn(2, 5, 16, 24))
    assert out.shape == (2, 3, 16, 24) and out.abs().max() <= 1
    with pytest.raises(ValueError, match="divisible by 8"):
        net(torch.zeros(1, 5, 12, 16))
    d = SLIDiscriminator(3, widths=(4, 4, 4, 4))(torch.randn(2, 3, 64, 64))
    assert d.shape == (2, 1, 6, 6) and d.min() >= 0 and d.max() <= 1  # the official sigmoid


def test_the_relativistic_losses_as_the_official_code():
    real, fake = torch.tensor([0.9, 0.7]), torch.tensor([0.2, 0.4])
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    assert torch.isclose(sli_d_loss(real, fake), bce(real - fake, torch.ones(2)))
    want = (bce(real - fake.mean(), torch.zeros(2)) + bce(fake - real.mean(), torch.ones(2))) / 2
    assert torch.isclose(sli_g_loss(real, fake), want)


def _stage(stage, lbp_net=None, in_ch=8, adv=0.2):
    net = SLIUNet(in_ch + (1 if stage == "image" and lbp_net is not None else 0), 1 if stage == "lbp" else 3,
                  widths=(4, 4), up="nearest" if stage == "lbp" else "transpose")
    disc = SLIDiscriminator(1 if stage == "lbp" else 3, widths=(4, 4, 4, 4))
    return SLIStage(stage, net, disc, {"l1": 100, "adv": adv}, lbp_net=lbp_net,
                    optimizer=lambda p: torch.optim.Adam(p, 1e-3), iterations=2)


def test_the_lbp_stage_learns_the_images_lbp_and_the_image_stage_reads_the_frozen_lbp_net():
    batch = {"input": torch.randn(2, 8, 32, 32), "target": torch.rand(2, 3, 32, 32) * 2 - 1}
    lbp = _stage("lbp")
    assert torch.equal(lbp.stage_target(batch), lbp_target(batch["target"]))
    assert lbp.reconstruct(batch).shape == (2, 3, 32, 32)  # the LBP map shown as RGB
    val = lbp.validation_step(batch, 0)
    assert torch.equal(val["target"][:, :1], lbp_target(batch["target"]))  # scored against the LBP
    image = _stage("image", lbp_net=lbp.net)
    assert not any(p.requires_grad for p in image.lbp_net.parameters())
    assert "lbp_net.down.0.0.weight" in image.state_dict()  # the frozen net travels in the checkpoint
    before = [p.clone() for p in image.lbp_net.parameters()]
    fake = image.generate(dict(batch))
    terms = image.generator_losses({**batch, "stage_target": batch["target"]}, fake)
    terms["total"].backward()
    assert all(p.grad is None for p in image.lbp_net.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, image.lbp_net.parameters()))
    assert set(terms) == {"l1", "adv", "total"}


def test_sli_demo_trains_both_stages_and_loads_each_checkpoint_strictly(tmp_path):
    over = [*experiment_overrides(None, tmp_path, extra=["attack=sli_demo"]), "attack.steps.lbp=2",
            "attack.steps.image=2", "data.image_size=32", "model.lbp.widths=[4,4,4,4,4]",
            "metrics.metrics=[mse,psnr,ssim]"]
    metrics = run(compose_cfg(over))
    assert isinstance(metrics["test/psnr"], float)
    ckpt = tmp_path / "run" / "checkpoints"
    for stage in ("lbp", "image"):
        assert (ckpt / f"{stage}.ckpt").is_file()
    # the image stage alone from its checkpoint (it holds the frozen LBP net): the same numbers;
    # another architecture refused, naming the keys
    reloads_strictly(over, tmp_path, "image", metrics, "model.lbp.widths=[8,8,8,8,8]",
                     r"does not fit SLIStage.*net\.down\.0\.0\.weight")


def test_sli_b_reads_the_occupancy_map(tmp_path):
    cfg = compose_cfg([*experiment_overrides(None, tmp_path, extra=["attack=sli_b", "threat.compress=false"]),
                       "attack.steps.image=2", "data.image_size=32", "model.lbp.widths=[4,4,4,4,4]",
                       "metrics.metrics=[mse,psnr]"])
    assert cfg.threat.occupancy and list(cfg.attack.stages) == ["image"]
    metrics = run(cfg)
    assert isinstance(metrics["test/psnr"], float)


@pytest.mark.parametrize("extra,match", [(["threat.compress=true"], "threat.compress=false"),
                                         (["data.image_size=40"], "divisible by 64")])
def test_settings_sli_cannot_take_are_refused(extra, match, tmp_path):
    cfg = compose_cfg([*experiment_overrides(None, tmp_path, extra=["attack=sli_demo"]), *extra])
    with pytest.raises(Exception, match=match):
        run(cfg)


def test_perceptual_losses_without_vgg19_weights_are_refused_not_faked(tmp_path):
    from reconattack.utils.weights import MissingWeightsError

    cfg = compose_cfg([*experiment_overrides(None, tmp_path, extra=["attack=sli_demo"]), "loss.image.per=1",
                       f"loss.vgg.weights_path={tmp_path / 'vgg19.pth'}"])
    with pytest.raises(MissingWeightsError, match="refusing to train with random ones"):
        run(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()
