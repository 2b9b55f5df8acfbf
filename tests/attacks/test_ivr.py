"""The IVR baseline (Dosovitskiy & Brox) on the SIFT threat: network shapes and the paper-size
profile, a training step, and its tiny test settings."""

from __future__ import annotations

import pytest
import torch

from reconattack.attacks.ivr import IVRStage
from reconattack.models.common import count_parameters
from reconattack.models.ivr import IVRNet
from tests.helpers import compose_cfg


def tiny(cfg) -> list[str]:
    """Settings that make any IVR experiment run in seconds on CPU (used by tests.helpers)."""
    n = len(cfg.model.net.enc_channels)
    widths = lambda k, w: "[" + ",".join([str(w)] * k) + "]"  # noqa: E731
    return ["attack.num_samples=2", f"model.net.enc_channels={widths(n, 8)}", "model.net.bottleneck=[8]",
            f"model.net.dec_channels={widths(len(cfg.model.net.dec_channels), 8)}"]


def test_shapes_and_scale_checks():
    net = IVRNet(128, enc_channels=(8, 8), bottleneck=(8,), dec_channels=(8, 8, 8), final_scale=2)
    assert net(torch.zeros(2, 128, 16, 16)).shape == (2, 3, 32, 32)
    same = IVRNet(128, enc_channels=(8, 8), bottleneck=(), dec_channels=(8, 8), final_scale=1, output="tanh")
    out = same(torch.randn(1, 128, 8, 8) * 10)
    assert out.shape == (1, 3, 8, 8) and out.abs().max() <= 1
    with pytest.raises(ValueError, match="final_scale"):
        IVRNet(128, enc_channels=(8, 8), dec_channels=(8, 8), final_scale=2)
    with pytest.raises(ValueError, match="multiple of"):
        net(torch.zeros(1, 128, 6, 6))


def test_paper_size_is_the_table_ii_scale():
    """The paper config (conf/model/ivr_paper.yaml) at 256x256 from the 128x128 compressed map:
    94.6M parameters and 24.1 GFLOPs beside the CFGAN paper's 93M / 25G."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg = compose_cfg(["+experiment=ivr_celebahq"])
    net = IVRNet(128, final_scale=2, **{k: list(v) if not isinstance(v, (bool, str)) else v
                                         for k, v in cfg.model.net.items() if k != "_target_"})
    assert count_parameters(net) == pytest.approx(94.6e6, rel=0.01)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(torch.zeros(1, 128, 128, 128))
    assert counter.get_total_flops() == pytest.approx(24.1e9, rel=0.01)


def test_training_reduces_the_pixel_loss():
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    torch.manual_seed(0)
    net = IVRNet(16, enc_channels=(8,), bottleneck=(8,), dec_channels=(8, 8), final_scale=2)
    stage = IVRStage(net, pixel="l2", optimizer=lambda p: torch.optim.Adam(p, lr=1e-2), iterations=30)
    x, y = torch.randn(4, 16, 8, 8), torch.rand(4, 3, 16, 16) * 2 - 1
    batch = {"input": x, "target": y}
    before = stage.generator_losses(batch, stage.generate(batch))["total"].item()
    trainer = pl.Trainer(accelerator="cpu", max_steps=30, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(stage, DataLoader([batch] * 30, batch_size=None))
    after = stage.generator_losses(batch, stage.generate(batch))["total"].item()
    assert trainer.global_step == 30 and after < 0.5 * before
    assert stage.optimizer_steps_per_iteration == 1 and stage.discriminator is None
