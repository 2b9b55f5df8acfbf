import pytest
import torch
from torch import nn

from reconattack.models.common import count_parameters
from reconattack.models.keys import (
    KeyModel,
    PatchGAN,
    ResnetGenerator,
    UNet,
    calibrate_batchnorm,
    load_key_checkpoint,
    make_key_model,
)
from reconattack.utils.checkpoints import CheckpointMismatchError

SMALL_UNET = dict(base=8, depth=3)
SMALL_RESNET = dict(ngf=8, n_blocks=2)


def small_unet(**kw):
    return UNet(**SMALL_UNET, **kw)


def small_resnet(**kw):
    return ResnetGenerator(**SMALL_RESNET, **kw)


def images(*shape):
    """Random RGB images in [-1, 1], the package's image convention."""
    return torch.rand(*shape) * 2 - 1


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


def test_net_ranges_are_attributes():
    assert (UNet().input_range, UNet().output_range) == ("unit", "unit")  # sigmoid
    assert UNet(output="tanh").output_range == "symmetric"
    assert UNet(output="none").output_range == "symmetric"
    assert UNet(input_range="symmetric").input_range == "symmetric"
    with pytest.raises(ValueError, match="input_range"):
        UNet(input_range="bytes")
    g = ResnetGenerator(**SMALL_RESNET)
    assert (g.input_range, g.output_range) == ("symmetric", "symmetric")


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


def test_patchgan_takes_symmetric_images_directly():
    d = PatchGAN(ndf=8, n_layers=2, norm="none")
    x = images(1, 3, 32, 32)
    torch.testing.assert_close(d.scores(x), d.model(x))  # no x * 2 - 1 inside any more
    assert not torch.allclose(d.scores(x), d.model(x * 2 - 1))


# --------------------------------------------------------------------------------- KeyModel


class _RangedIdentity(nn.Identity):
    def __init__(self, input_range, output_range):
        super().__init__()
        self.input_range, self.output_range = input_range, output_range


def test_key_model_ranges():
    # KeyModel takes and returns [-1, 1]; the net's ranges come from its attributes
    x = images(2, 3, 4, 4)
    torch.testing.assert_close(KeyModel(_RangedIdentity("unit", "unit"))(x), x)
    torch.testing.assert_close(KeyModel(_RangedIdentity("symmetric", "symmetric"))(x), x)
    # the net sees [-1, 1] values and its output is read as [0, 1]
    torch.testing.assert_close(KeyModel(_RangedIdentity("symmetric", "unit"))(x), 2 * x - 1)
    # the net sees [0, 1] values and its output is read as [-1, 1]
    torch.testing.assert_close(KeyModel(_RangedIdentity("unit", "symmetric"))(x), (x + 1) / 2)
    plain = KeyModel(nn.Identity())  # no attributes: symmetric both ways
    assert (plain.input_range, plain.output_range) == ("symmetric", "symmetric")
    torch.testing.assert_close(plain(x), x)
    with pytest.raises(ValueError):
        KeyModel(_RangedIdentity("bytes", "unit"))
    with pytest.raises(ValueError):
        KeyModel(_RangedIdentity("unit", "bytes"))


def test_key_model_converts_at_the_boundary():
    net = UNet(**SMALL_UNET).eval()  # sigmoid, fed [0, 1]
    x = images(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(KeyModel(net)(x), net((x + 1) / 2) * 2 - 1)
        g = ResnetGenerator(**SMALL_RESNET).eval()
        torch.testing.assert_close(KeyModel(g)(x), g(x))


@pytest.mark.parametrize("make_net", [small_unet, small_resnet], ids=["unet", "resnet"])
def test_make_key_model_output_in_symmetric_range(make_net):
    m = make_key_model(make_net, seed=0)
    assert isinstance(m, KeyModel) and m.training
    assert all(p.requires_grad for p in m.parameters())
    out = m(images(2, 3, 16, 16))
    assert out.shape == (2, 3, 16, 16) and out.min() >= -1 and out.max() <= 1


def test_make_key_model_seed_is_deterministic_and_keeps_global_rng():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = make_key_model(small_unet, seed=7)
    assert torch.equal(torch.random.get_rng_state(), before)
    b = make_key_model(small_unet, seed=7)
    c = make_key_model(small_unet, seed=8)
    for (ka, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(va, vb), ka
    assert not torch.equal(a.net.inc[0].weight, c.net.inc[0].weight)
    w = a.net.inc[0].weight
    assert abs(w.std().item() - 0.02) < 0.005 and abs(w.mean().item()) < 0.005  # N(0, 0.02)
    bn = a.net.inc[1]
    assert (bn.weight - 1).abs().max() < 0.1 and bn.bias.abs().max() == 0


def test_make_key_model_kaiming_and_calibration():
    before = torch.random.get_rng_state()
    m = make_key_model(small_unet, seed=0, init="kaiming", calibrate_size=16)
    assert torch.equal(torch.random.get_rng_state(), before)
    w = m.net.inc[0].weight  # He normal: std sqrt(2 / fan_in), fan_in = 3 * 3 * 3
    assert abs(w.std().item() - (2 / 27) ** 0.5) < 0.08
    bn = m.net.inc[1]
    assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and bn.running_var.ne(1).any()
    same = make_key_model(small_unet, seed=0, init="kaiming", calibrate_size=16)
    assert torch.equal(bn.running_mean, same.net.inc[1].running_mean)
    with torch.no_grad():
        out = m.eval()(images(2, 3, 16, 16))
    assert torch.isfinite(out).all() and out.std() > 0.01
    with pytest.raises(ValueError, match="init"):
        make_key_model(small_unet, init="xavier")


def test_calibrate_batchnorm_feeds_symmetric_noise():
    bn = nn.BatchNorm2d(3)
    module = nn.Sequential(bn)
    torch.manual_seed(0)
    calibrate_batchnorm(module.eval(), size=8)
    assert not module.training  # mode restored
    # uniform noise on [-1, 1]: mean 0, variance 1/3
    torch.testing.assert_close(bn.running_mean, torch.zeros(3), atol=0.05, rtol=0)
    torch.testing.assert_close(bn.running_var, torch.full((3,), 1 / 3), atol=0.05, rtol=0)


def _perturbed(sd):
    return {k: (v + 1 if v.is_floating_point() else v) for k, v in sd.items()}


@pytest.mark.parametrize("wrap", ["plain", "module", "state_dict"])
def test_make_key_model_checkpoint_round_trip(tmp_path, wrap):
    src = make_key_model(small_resnet, seed=1)
    sd = _perturbed(src.net.state_dict())
    if wrap == "module":
        obj = {f"module.{k}": v for k, v in sd.items()}
    elif wrap == "state_dict":
        obj = {"state_dict": sd, "epoch": 3}
    else:
        obj = sd
    path = tmp_path / "latest_net_G.pth"
    torch.save(obj, path)
    loaded = make_key_model(small_resnet, checkpoint=str(path))
    for k, v in loaded.net.state_dict().items():
        assert torch.equal(v, sd[k]), k
    net = load_key_checkpoint(small_resnet(), path)
    for k, v in net.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_make_key_model_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        make_key_model(small_unet, checkpoint=str(tmp_path / "nope.pth"))
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_key_checkpoint(small_unet(), tmp_path / "nope.pth")
    sd = make_key_model(small_unet, seed=0).net.state_dict()
    sd["extra.weight"] = torch.zeros(1)
    del sd["outc.bias"]
    sd["outc.weight"] = torch.zeros(5, 8, 1, 1)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointMismatchError) as err:
        make_key_model(small_unet, checkpoint=path)
    assert isinstance(err.value, ValueError)
    msg = str(err.value)
    assert "missing keys (1): outc.bias" in msg
    assert "unexpected keys (1): extra.weight" in msg
    assert "shape mismatches (checkpoint vs model) (1): outc.weight (5, 8, 1, 1) vs (3, 8, 1, 1)" in msg
    with pytest.raises(CheckpointMismatchError, match="outc.bias"):
        load_key_checkpoint(small_unet(), path)
    # a generator in place of a U-Net: many keys, listed up to 8 each
    torch.save(make_key_model(small_resnet, seed=0).net.state_dict(), path)
    with pytest.raises(CheckpointMismatchError, match=r"missing keys \(\d+\): .*\(\d+ more\)") as err:
        make_key_model(small_unet, checkpoint=path)
    assert len(str(err.value)) < 3000  # a summary, not every key


def test_pix2pix_compat_fixes(tmp_path):
    # pre-0.4.1 BatchNorm checkpoints lack num_batches_tracked; old InstanceNorm ones carry
    # running stats pix2pix drops on load
    sd = ResnetGenerator(**SMALL_RESNET).state_dict()
    sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    torch.save(sd, tmp_path / "old_bn.pth")
    net = make_key_model(small_resnet, checkpoint=tmp_path / "old_bn.pth").net
    assert net.model[2].num_batches_tracked.item() == 0
    inst = ResnetGenerator(norm="instance", **SMALL_RESNET).state_dict()
    inst["model.2.running_mean"] = torch.zeros(8)
    inst["model.2.running_var"] = torch.ones(8)
    torch.save(inst, tmp_path / "old_in.pth")
    make_key_model(lambda: small_resnet(norm="instance"), checkpoint=tmp_path / "old_in.pth")
    load_key_checkpoint(small_resnet(norm="instance"), tmp_path / "old_in.pth")
    # only those two fixes: other stray keys are still refused
    inst["model.2.weight"] = torch.ones(8)
    torch.save(inst, tmp_path / "odd_in.pth")
    with pytest.raises(CheckpointMismatchError, match=r"unexpected keys \(1\): model\.2\.weight"):
        load_key_checkpoint(small_resnet(norm="instance"), tmp_path / "odd_in.pth")
