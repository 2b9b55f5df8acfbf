import pytest
import torch
from torch import nn

from reconattack.models.cfgan import count_parameters
from reconattack.models.keys import (
    KeyModel,
    PatchGAN,
    ResnetGenerator,
    UNet,
    build_key_model,
)

SMALL_UNET = dict(base=8, depth=3)
SMALL_RESNET = dict(ngf=8, n_blocks=2)


# ------------------------------------------------------------------------------------- U-Net


@pytest.mark.parametrize("upsample", ["bilinear", "transpose"])
@pytest.mark.parametrize("norm", ["batch", "instance", "none"])
def test_unet_odd_sizes_and_range(norm, upsample):
    net = UNet(norm=norm, upsample=upsample, **SMALL_UNET)
    out = net(torch.rand(2, 3, 30, 26))
    assert out.shape == (2, 3, 30, 26)
    assert out.min() >= 0 and out.max() <= 1


def test_unet_112_and_tiny_inputs_and_outputs():
    net = UNet(base=8, depth=4).eval()
    assert net(torch.rand(1, 3, 112, 112)).shape == (1, 3, 112, 112)
    assert net(torch.rand(1, 3, 5, 7)).shape == (1, 3, 5, 7)  # padding larger than the side
    tanh = UNet(output="tanh", **SMALL_UNET)(torch.rand(1, 3, 16, 16) * 100)
    assert tanh.abs().max() <= 1
    raw = UNet(output="none", in_channels=1, out_channels=2, **SMALL_UNET)(torch.rand(1, 1, 16, 16))
    assert raw.shape == (1, 2, 16, 16)


def test_unet_widths_are_capped():
    net = UNet(base=4, depth=5)
    assert [d[1][0].out_channels for d in net.downs] == [8, 16, 32, 32, 32]
    with pytest.raises(ValueError):
        UNet(norm="group")


def test_unet_gradients_reach_the_input():
    net = UNet(**SMALL_UNET)
    x = torch.rand(2, 3, 20, 18, requires_grad=True)
    net(x).sum().backward()
    assert x.grad.abs().sum() > 0


# --------------------------------------------------------------------------- ResnetGenerator


def test_resnet_generator_pix2pix_keys_and_count():
    g = ResnetGenerator()  # resnet_9blocks, batch norm, dropout (pix2pix defaults)
    assert count_parameters(g) == 11_383_427
    keys = set(g.state_dict())
    # real pix2pix numbering: 0 pad, 1 conv, 2 norm, 3 relu, 4-9 down, 10-18 blocks, 19-24 up,
    # 25 pad, 26 conv, 27 tanh; conv_block with dropout: 1 conv, 2 norm, 4 dropout, 6 conv, 7 norm
    for k in ["model.1.weight", "model.2.running_mean", "model.4.weight", "model.7.weight",
              "model.10.conv_block.1.weight", "model.10.conv_block.6.weight",
              "model.10.conv_block.7.running_var", "model.18.conv_block.6.weight",
              "model.19.weight", "model.22.weight", "model.26.weight", "model.26.bias"]:
        assert k in keys, k
    assert "model.1.bias" not in keys and "model.10.conv_block.5.weight" not in keys
    assert isinstance(g.model[27], nn.Tanh) and len(g.model) == 28
    assert isinstance(g.model[10].conv_block[4], nn.Dropout)
    nodrop = set(ResnetGenerator(use_dropout=False).state_dict())
    assert "model.10.conv_block.5.weight" in nodrop and "model.10.conv_block.6.weight" in nodrop
    assert "model.10.conv_block.6.running_mean" in nodrop  # the norm after the second conv
    inst = ResnetGenerator(norm="instance")
    assert count_parameters(inst) == 11_378_179 and "model.1.bias" in inst.state_dict()


def test_resnet_generator_shapes_and_range():
    g = ResnetGenerator(**SMALL_RESNET)
    out = g(torch.rand(2, 3, 24, 20) * 2 - 1)
    assert out.shape == (2, 3, 24, 20) and out.abs().max() <= 1
    zero = ResnetGenerator(padding_type="zero", **SMALL_RESNET)
    assert zero(torch.zeros(1, 3, 16, 16)).shape == (1, 3, 16, 16)


# ------------------------------------------------------------------------------------ PatchGAN


def test_patchgan_count_shape_and_tanh():
    d = PatchGAN()
    assert count_parameters(d) == 2_765_633  # pix2pix "basic" D, input_nc 3, batch norm
    keys = set(d.state_dict())
    assert {"model.0.weight", "model.0.bias", "model.2.weight", "model.3.running_mean",
            "model.11.weight", "model.11.bias"} <= keys and "model.2.bias" not in keys
    x = torch.rand(2, 3, 64, 64)
    s = d.scores(x)
    assert s.shape == (2, 1, 6, 6)
    out = d(x)
    torch.testing.assert_close(out, torch.tanh(s))
    assert out.abs().max() < 1
    raw = PatchGAN(ndf=8, n_layers=2, norm="instance", last_activation="none")
    torch.testing.assert_close(raw(x), raw.scores(x))


def test_patchgan_maps_unit_images_to_symmetric():
    d = PatchGAN(ndf=8, n_layers=2, norm="none")
    x = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(d.scores(x), d.model(x * 2 - 1))


# --------------------------------------------------------------------------------- KeyModel


def test_key_model_ranges():
    net = nn.Identity()
    x = torch.rand(2, 3, 4, 4)
    torch.testing.assert_close(KeyModel(net, "unit", "unit")(x), x)
    torch.testing.assert_close(KeyModel(net, "symmetric", "symmetric")(x), x)
    torch.testing.assert_close(KeyModel(net, "symmetric", "unit")(x), 2 * x - 1)
    torch.testing.assert_close(KeyModel(net, "unit", "symmetric")(x), (x + 1) / 2)
    with pytest.raises(ValueError):
        KeyModel(net, "bytes", "unit")


@pytest.mark.parametrize("arch,kw", [("unet", SMALL_UNET), ("resnet9", SMALL_RESNET)])
def test_build_key_model_output_in_unit_range(arch, kw):
    m = build_key_model(arch, seed=0, **kw)
    assert isinstance(m, KeyModel)
    out = m(torch.rand(2, 3, 16, 16))
    assert out.shape == (2, 3, 16, 16) and out.min() >= 0 and out.max() <= 1


def test_build_key_model_seed_is_deterministic_and_keeps_global_rng():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = build_key_model("unet", seed=7, **SMALL_UNET)
    assert torch.equal(torch.random.get_rng_state(), before)
    b = build_key_model("unet", seed=7, **SMALL_UNET)
    c = build_key_model("unet", seed=8, **SMALL_UNET)
    for (ka, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(va, vb), ka
    assert not torch.equal(a.net.inc[0].weight, c.net.inc[0].weight)
    w = a.net.inc[0].weight
    assert abs(w.std().item() - 0.02) < 0.005 and abs(w.mean().item()) < 0.005  # N(0, 0.02)
    bn = a.net.inc[1]
    assert (bn.weight - 1).abs().max() < 0.1 and bn.bias.abs().max() == 0


def _perturbed(sd):
    return {k: (v + 1 if v.is_floating_point() else v) for k, v in sd.items()}


@pytest.mark.parametrize("wrap", ["plain", "module", "state_dict"])
def test_build_key_model_checkpoint_round_trip(tmp_path, wrap):
    src = build_key_model("resnet9", seed=1, **SMALL_RESNET)
    sd = _perturbed(src.net.state_dict())
    if wrap == "module":
        obj = {f"module.{k}": v for k, v in sd.items()}
    elif wrap == "state_dict":
        obj = {"state_dict": sd, "epoch": 3}
    else:
        obj = sd
    path = tmp_path / "latest_net_G.pth"
    torch.save(obj, path)
    loaded = build_key_model("resnet9", checkpoint=str(path), **SMALL_RESNET)
    for k, v in loaded.net.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_build_key_model_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_key_model("unet", checkpoint=str(tmp_path / "nope.pth"), **SMALL_UNET)
    sd = build_key_model("unet", seed=0, **SMALL_UNET).net.state_dict()
    sd["extra.weight"] = torch.zeros(1)
    del sd["outc.bias"]
    sd["outc.weight"] = torch.zeros(5, 8, 1, 1)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(ValueError) as err:
        build_key_model("unet", checkpoint=path, **SMALL_UNET)
    msg = str(err.value)
    assert "missing" in msg and "outc.bias" in msg
    assert "unexpected" in msg and "extra.weight" in msg
    assert "shape" in msg and "outc.weight" in msg
    # a generator of another width: many keys, listed up to 8 each
    torch.save(build_key_model("resnet9", seed=0, **SMALL_RESNET).net.state_dict(), path)
    with pytest.raises(ValueError, match="in all"):
        build_key_model("unet", checkpoint=path, **SMALL_UNET)
    with pytest.raises(ValueError):
        build_key_model("vgg")
    with pytest.raises(ValueError, match="sigmoid"):
        build_key_model("unet", output="tanh")


def test_pix2pix_compat_fixes(tmp_path):
    # pre-0.4.1 BatchNorm checkpoints lack num_batches_tracked; old InstanceNorm ones carry
    # running stats pix2pix drops on load
    sd = ResnetGenerator(**SMALL_RESNET).state_dict()
    sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    torch.save(sd, tmp_path / "old_bn.pth")
    build_key_model("resnet9", checkpoint=tmp_path / "old_bn.pth", **SMALL_RESNET)
    inst = ResnetGenerator(norm="instance", **SMALL_RESNET).state_dict()
    inst["model.2.running_mean"] = torch.zeros(8)
    inst["model.2.running_var"] = torch.ones(8)
    torch.save(inst, tmp_path / "old_in.pth")
    build_key_model("resnet9", checkpoint=tmp_path / "old_in.pth", norm="instance", **SMALL_RESNET)
