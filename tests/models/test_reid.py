"""TransReID (models/reid.py): the official checkpoint's key names and shapes at the real sizes,
the JPM shuffle, strict loading with the classifier heads skippable by name, and (slow) a forward
and backward pass of both paper configurations."""

from __future__ import annotations

import hydra
import pytest
import torch
from omegaconf import OmegaConf

from reconattack.models.reid import TransReID, make_reid_model, shuffle_tokens
from reconattack.utils.checkpoints import CheckpointMismatchError
from tests.helpers import CONF_DIR

CONFIGS = ["transreid_vit_market", "transreid_deit_market", "transreid_vit_veri", "transreid_deit_veri"]


def _cfg(name):
    return OmegaConf.load(f"{CONF_DIR}/reid/{name}.yaml")


def _expected_keys(depth=12):
    block = ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
             "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias",
             "mlp.fc2.weight", "mlp.fc2.bias"]
    keys = ["base.cls_token", "base.pos_embed", "base.sie_embed", "base.patch_embed.proj.weight",
            "base.patch_embed.proj.bias", "base.norm.weight", "base.norm.bias", "base.fc.weight", "base.fc.bias"]
    keys += [f"base.blocks.{i}.{k}" for i in range(depth) for k in block]
    for b in ("b1", "b2"):
        keys += [f"{b}.0.{k}" for k in block] + [f"{b}.1.weight", f"{b}.1.bias"]
    for s in ["", "_1", "_2", "_3", "_4"]:
        keys += [f"bottleneck{s}.{k}" for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]
        keys.append(f"classifier{s}.weight")
    return keys


@pytest.mark.parametrize("name,shapes", [
    ("transreid_vit_market", {"base.pos_embed": (1, 211, 768), "base.sie_embed": (6, 1, 768),
                              "classifier.weight": (751, 768)}),
    ("transreid_vit_veri", {"base.pos_embed": (1, 442, 768), "base.sie_embed": (160, 1, 768),
                            "classifier_4.weight": (576, 768)}),
])
def test_the_official_checkpoints_key_names_and_shapes(name, shapes):
    cfg = _cfg(name)
    with torch.device("meta"):  # real sizes, no memory
        net = hydra.utils.instantiate(cfg.net)
    state = net.state_dict()
    assert sorted(state) == sorted(_expected_keys())
    assert state["base.patch_embed.proj.weight"].shape == (768, 3, 16, 16)
    assert state["base.fc.weight"].shape == (1000, 768) and state["b2.1.weight"].shape == (768,)
    for key, shape in shapes.items():
        assert tuple(state[key].shape) == shape, key
    # the deit configuration is the same network
    deit = _cfg(name.replace("vit", "deit"))
    raw = lambda c: OmegaConf.to_container(c, resolve=False)["checkpoint"]  # noqa: E731
    assert deit.net == cfg.net and raw(deit) != raw(cfg)


def test_jpm_shift_and_shuffle_follow_the_official_rearrangement():
    b, n, d = 2, 7, 3  # 1 class token + 6 patches, shift 2, 2 groups
    tokens = torch.arange(b * (n + 0) * d, dtype=torch.float32).view(b, n, d)
    out = shuffle_tokens(tokens, shift=2, groups=2)
    # shifted: patches 3..6 then 1..2 -> [3,4,5,6,1,2]; in 2 groups [3,4,5],[6,1,2] interleaved
    order = [3, 6, 4, 1, 5, 2]
    assert torch.equal(out, tokens[:, order])
    odd = shuffle_tokens(tokens[:, :6], shift=1, groups=2)  # 5 patches: [2,3,4,5,1] + its last-but-one
    assert odd.shape == (b, 6, d) and torch.equal(odd, tokens[:, [2, 5, 3, 1, 4, 5]])


def _tiny(**kw):
    return TransReID(img_size=(32, 16), cameras=3, views=2, shift=1, num_classes=5, dim=16, depth=2,
                     heads=2, **kw)


def test_checkpoints_load_strictly_and_the_heads_may_differ(tmp_path):
    src = make_reid_model(_tiny, seed=0)
    path = tmp_path / "transformer_120.pth"
    torch.save(src.net.state_dict(), path)  # as the official training writes it
    x = torch.rand(2, 3, 32, 16) * 2 - 1
    cams, views = torch.tensor([0, 2]), torch.tensor([1, 0])
    same = make_reid_model(_tiny, checkpoint=path, seed=1)
    torch.testing.assert_close(same(x, cams, views), src(x, cams, views))
    other_ids = make_reid_model(lambda: TransReID(img_size=(32, 16), cameras=3, views=2, shift=1, num_classes=9,
                                                  dim=16, depth=2, heads=2), checkpoint=path, seed=1)
    torch.testing.assert_close(other_ids(x, cams, views), src(x, cams, views))  # heads skipped by name
    torch.save({f"module.{k}": v for k, v in src.net.state_dict().items()}, tmp_path / "dp.pth")
    make_reid_model(_tiny, checkpoint=tmp_path / "dp.pth")  # DataParallel prefix
    state = src.net.state_dict()
    del state["b2.1.weight"]
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointMismatchError, match="b2.1.weight"):
        make_reid_model(_tiny, checkpoint=tmp_path / "bad.pth")
    with pytest.raises(CheckpointMismatchError, match="sie_embed"):  # another camera count
        make_reid_model(lambda: TransReID(img_size=(32, 16), cameras=4, views=2, shift=1, num_classes=5,
                                          dim=16, depth=2, heads=2), checkpoint=path)


def test_features_are_unit_norm_differentiable_and_use_the_side_information():
    model = make_reid_model(_tiny, seed=0, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    x = (torch.rand(2, 3, 32, 16) * 2 - 1).requires_grad_(True)
    f = model(x, torch.tensor([0, 1]), torch.tensor([0, 1]))
    assert f.shape == (2, 5 * 16) and torch.allclose(f.norm(dim=1), torch.ones(2))
    f.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    other_cam = model(x.detach(), torch.tensor([2, 1]), torch.tensor([0, 1]))
    assert not torch.allclose(other_cam[0], f[0].detach()) and torch.allclose(other_cam[1], f[1].detach())
    with pytest.raises(ValueError, match="takes 32x16 images"):
        model(torch.zeros(1, 3, 32, 32))


@pytest.mark.slow  # ~20 s: two ViT-B/16 of 100 M parameters on the CPU
@pytest.mark.parametrize("name", ["transreid_vit_market", "transreid_vit_veri"])
def test_a_forward_and_backward_pass_at_the_real_size(name):
    cfg = _cfg(name)
    model = make_reid_model(lambda: hydra.utils.instantiate(cfg.net), seed=0, mean=cfg.mean, std=cfg.std)
    h, w = cfg.net.img_size
    x = (torch.rand(2, 3, h, w) * 2 - 1).requires_grad_(True)
    views = torch.tensor([3, 7]) if cfg.net.views else None
    f = model(x, torch.tensor([0, cfg.net.cameras - 1]), views)
    assert f.shape == (2, 3840) and torch.allclose(f.norm(dim=1), torch.ones(2), atol=1e-5)
    f[:, :768].sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
