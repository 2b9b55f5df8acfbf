"""Trained key models (threat.key.train, threats/avih/key_training.py): the denoising objective, at the
paper's 112x112 size for a few steps, and as a cached artifact of a tiny AVIH run."""

from __future__ import annotations

import pytest
import torch

from reconattack.models.keys import UNet, make_key_model
from reconattack.threats.avih.key_training import KeyDenoiser, key_train_loader


def test_the_objective_is_l1_denoising_of_the_auxiliary_images():
    key = make_key_model(lambda: UNet(base=4, depth=2, output="sigmoid"), seed=0, init="pix2pix")
    module = KeyDenoiser(key, noise=0.5)
    module.log = lambda *a, **k: None  # outside a Trainer
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    torch.manual_seed(1)
    loss = module.training_step(x, 0)
    torch.manual_seed(1)  # the same noise, drawn the way corrupt() draws it
    sigma = 0.5 * torch.rand(3, 1, 1, 1)
    noisy = (x + 2 * sigma * torch.randn_like(x)).clamp(-1, 1)
    torch.testing.assert_close(loss, (key(noisy) - x).abs().mean())
    with pytest.raises(ValueError):
        KeyDenoiser(key, noise=0)
    # signal: a faint copy a x + (1 - a) u in uniform noise, a ~ U(lo, hi) per image ([0, 1] scale)
    faint = KeyDenoiser(key, signal=(0.1, 0.2))
    torch.manual_seed(2)
    got = faint.corrupt(x)
    torch.manual_seed(2)
    a = 0.1 + 0.1 * torch.rand(3, 1, 1, 1)
    torch.testing.assert_close(got, (a * (x + 1) / 2 + (1 - a) * torch.rand_like(x)) * 2 - 1)


@pytest.mark.slow  # ~50 s on two cores: the paper's U-Net at 112 px
def test_a_few_steps_at_the_papers_112_px_train_the_papers_unet():
    """The paper's key U-Net (conf/threat/_avih_base.yaml: base 64, depth 4, sigmoid) at 112x112:
    two Adam steps of the denoiser lower its loss on a fixed batch and change its weights."""
    key = make_key_model(lambda: UNet(base=64, depth=4, output="sigmoid"), seed=0, init="kaiming",
                         calibrate_size=112)
    images = [torch.rand(3, 112, 112) * 2 - 1 for _ in range(6)]
    loader = key_train_loader(images, steps=2, batch_size=2, seed=0)
    assert len(loader) == 2 and next(iter(loader)).shape == (2, 3, 112, 112)
    module = KeyDenoiser(key, noise=1.0, lr=1e-3)
    opt = module.configure_optimizers()
    before = {k: v.clone() for k, v in key.state_dict().items() if v.dtype.is_floating_point}
    batch = torch.stack(images[:2])

    def loss_on_batch():
        torch.manual_seed(0)
        return module.training_step(batch, 0).item()

    module.log = lambda *a, **k: None
    start = loss_on_batch()
    for x in loader:
        opt.zero_grad()
        module.training_step(x, 0).backward()
        opt.step()
    assert loss_on_batch() < start
    changed = [k for k, v in key.state_dict().items() if k in before and not torch.equal(v, before[k])]
    assert any("down" in k or "enc" in k or k.startswith("net.") for k in changed) and len(changed) > len(before) / 2


def test_trained_keys_are_an_artifact_that_changes_the_gallery(tmp_path):
    from reconattack.run import run
    from tests.helpers import compose_cfg
    from tests.threats.test_avih_run import demo_tiny

    train = "threat.key.train={steps:2,batch_size:4}"
    metrics = run(compose_cfg([*demo_tiny(tmp_path), train]))
    art = tmp_path / "cache" / "artifacts"
    keys = sorted((art / "key_model").glob("[!.]*"))
    assert len(keys) == 2 and all((k / "key.pt").is_file() for k in keys)  # one artifact per key
    assert isinstance(metrics["key_model/psnr"], float)
    again = run(compose_cfg([*demo_tiny(tmp_path / "b"), f"paths.cache_dir={art.parent}", train]))
    assert again["artifacts/built"] == 0  # models, keys and gallery reused
    with pytest.raises(Exception, match="threat.key.train takes"):
        run(compose_cfg([*demo_tiny(tmp_path / "c"), "threat.key.train={epochs:2}"]))
