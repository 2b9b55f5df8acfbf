"""TransReID (models/reid.py): the official checkpoint's key names and shapes at the real sizes,
the JPM shuffle, strict loading with the classifier heads skippable by name, and (slow) a forward
and backward pass of both paper configurations."""

from __future__ import annotations

import hydra
import pytest
import torch
from omegaconf import OmegaConf

from reconattack.errors import ConfigError
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


def _official_order(num_patches, shift, groups=2):
    """The token indices of the official ``shuffle_unit(features, shift, group, begin=1)`` written
    out from its definition: ``cat(features[:, begin-1+shift:], features[:, begin:begin-1+shift])``
    over the tokens 0..N (class token 0), the last-but-one index appended when the count does not
    divide by the groups, then the groups interleaved."""
    tokens = list(range(num_patches + 1))
    begin = 1
    x = tokens[begin - 1 + shift:] + tokens[begin:begin - 1 + shift]
    if len(x) % groups:
        x.append(x[-2])
    size = len(x) // groups
    parts = [x[g * size:(g + 1) * size] for g in range(groups)]
    return [parts[g][i] for i in range(size) for g in range(groups)]


@pytest.mark.parametrize("num_patches,shift,start", [
    (210, 5, [5, 110, 6, 111]),  # Market 256x128: 21x10 patches, shift 5: the sequence starts at token 5
    (441, 8, [8, 229, 9, 230]),  # VeRi 256x256: 21x21 patches (odd), shift 8
    (6, 2, [2, 5, 3, 6]),
    (5, 1, [1, 4, 2, 5]),
])
def test_jpm_shift_and_shuffle_follow_the_official_rearrangement(num_patches, shift, start):
    b, d = 2, 3
    tokens = torch.arange(num_patches + 1, dtype=torch.float32).view(1, -1, 1).expand(b, -1, d)
    out = shuffle_tokens(tokens, shift=shift, groups=2)
    order = _official_order(num_patches, shift)
    assert order[:4] == start
    assert out.shape == (b, len(order), d)
    assert out[0, :, 0].long().tolist() == order
    assert 0 not in order  # the class token is not among the patches


def test_shift_below_one_is_refused():
    with pytest.raises(ConfigError, match="shift"):
        TransReID(img_size=(32, 16), shift=0, num_classes=0, dim=16, depth=2, heads=2, patch=8, stride=4)


def test_the_test_feature_follows_the_official_forward():
    """Global feature b1(tokens)[:, 0]; each of 4 parts b2(cat(class token, x[:, k*L:(k+1)*L]))[:, 0]
    with x the official rearrangement and L = N // 4 of the unpadded count; divided by 4."""
    net = TransReID(img_size=(40, 24), cameras=3, views=2, shift=3, num_classes=0, dim=16, depth=2,
                    heads=2, patch=8, stride=4).eval()  # 9x5 = 45 patches (odd)
    x = torch.randn(2, 3, 40, 24)
    cams, views = torch.tensor([0, 2]), torch.tensor([1, 0])
    with torch.no_grad():
        tokens = net.base(x, cams, views)
        n = tokens.shape[1] - 1
        assert n == 45
        order = torch.tensor(_official_order(n, 3))
        rearranged, length = tokens[:, order], n // 4
        parts = [net.b2(torch.cat([tokens[:, :1], rearranged[:, k * length:(k + 1) * length]], 1))[:, 0] / 4
                 for k in range(4)]
        expected = torch.cat([net.b1(tokens)[:, 0], *parts], dim=1)
        torch.testing.assert_close(net(x, cams, views), expected, rtol=0, atol=0)


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
