"""The INV baseline (InvSfM's CoarseNet and RefineNet) on the SIFT threat: the U-Net's official
structure and widths, the refine stage's inputs, the discriminator threshold, and its tiny test
settings."""

from __future__ import annotations

import pytest
import torch

from reconattack.attacks.inv import INVStage, refine_input
from reconattack.models.common import count_parameters
from reconattack.models.inv import InvDiscriminator, InvNet


def tiny(cfg) -> list[str]:
    """Settings that make any INV experiment run in seconds on CPU (used by tests.helpers)."""
    n = len(cfg.model.coarse.enc_channels)
    k = len(cfg.model.coarse.dec_channels)
    widths = lambda m, w: "[" + ",".join([str(w)] * m) + "]"  # noqa: E731
    return ["attack.num_samples=2", "loss.per=0", f"model.coarse.enc_channels={widths(n, 8)}",
            f"model.coarse.dec_channels={widths(k, 8)}", f"model.discriminator.channels={widths(n - 1, 8)}",
            "model.discriminator.fc=[16]"]


def test_official_widths_give_the_official_parameter_count():
    """CoarseNet on a 128-channel input: convolution weights and biases only (the official batch
    norm has no scale or shift), summed in closed form."""
    net = InvNet(128)
    enc, dec = [256, 256, 256, 512, 512, 512], [512, 512, 512, 256, 256, 256, 128, 64, 32]
    total, cin = 0, 128
    for co in enc:
        total += 16 * cin * co + co
        cin = co
    skips = list(reversed([128, *enc]))[1:]
    for i, co in enumerate(dec):
        total += 9 * cin * co + co
        cin = co + (skips[i] if i < 6 else 0)
    total += 9 * cin * 3 + 3
    assert count_parameters(net) == total == 29_572_675


def test_shapes_skips_and_final_scale():
    net = InvNet(16, enc_channels=(8, 8), dec_channels=(8, 8, 8), skip_connections=2, final_scale=2)
    out = net(torch.randn(2, 16, 8, 8))
    assert out.shape == (2, 3, 16, 16) and out.abs().max() <= 1  # tanh
    assert InvNet(16, enc_channels=(8, 8), dec_channels=(8, 8), skip_connections=1).eval()(
        torch.zeros(1, 16, 4, 4)).shape == (1, 3, 4, 4)
    with pytest.raises(ValueError, match="multiple of"):
        net(torch.zeros(1, 16, 6, 6))
    with pytest.raises(ValueError, match="final_scale"):
        InvNet(16, enc_channels=(8, 8), dec_channels=(8, 8), skip_connections=2, final_scale=2)
    assert InvDiscriminator(10, 32, channels=(8, 8), fc=(16,))(torch.zeros(3, 10, 32, 32)).shape == (3,)


def test_refine_input_folds_the_coarse_image_to_the_map():
    sift, coarse = torch.randn(2, 128, 4, 4), torch.randn(2, 3, 8, 8)
    x = refine_input(sift, coarse, 2)
    assert x.shape == (2, 140, 4, 4) and torch.equal(x[:, :128], sift)
    torch.testing.assert_close(x[:, 128:], torch.nn.functional.pixel_unshuffle(coarse, 2))


def _refine_stage(threshold: float):
    coarse = InvNet(16, enc_channels=(8,), dec_channels=(8, 8), skip_connections=1, final_scale=2)
    refine = InvNet(16 + 12, enc_channels=(8,), dec_channels=(8, 8), skip_connections=0, final_scale=2)
    disc = InvDiscriminator(6 + 16, 8, channels=(4,), fc=(8,))
    return INVStage("refine", refine, disc, {"pix": 1.0, "adv": 1.0}, coarse=coarse, d_threshold=threshold,
                    final_scale=2, optimizer=lambda p: torch.optim.Adam(p, lr=1e-3), iterations=3)


def test_refine_stage_trains_refinenet_only_and_thresholds_the_discriminator():
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    torch.manual_seed(0)
    batch = {"input": torch.randn(2, 16, 4, 4), "target": torch.rand(2, 3, 8, 8) * 2 - 1}
    results = {}
    for threshold in (0.0, 100.0):  # 100: the discriminator's loss never exceeds it
        stage = _refine_stage(threshold)
        d0 = [p.detach().clone() for p in stage.discriminator.parameters()]
        c0 = {k: v.clone() for k, v in stage.coarse.state_dict().items()}
        trainer = pl.Trainer(accelerator="cpu", max_steps=6, logger=False, enable_progress_bar=False,
                             enable_model_summary=False, enable_checkpointing=False)
        trainer.fit(stage, DataLoader([batch] * 3, batch_size=None))
        assert trainer.global_step == 6  # 3 iterations x 2 optimizer steps, skipped updates too
        for k, v in stage.coarse.state_dict().items():  # CoarseNet frozen, BN statistics included
            assert torch.equal(v, c0[k]), k
        results[threshold] = any(not torch.equal(a, b) for a, b in zip(d0, stage.discriminator.parameters()))
        assert set(stage.intermediates(batch)) == {"coarse"}
    assert results == {0.0: True, 100.0: False}
