import math

import pytest
import torch
import torchvision

from reconattack.losses.gan import ragan_d_loss, ragan_g_loss
from reconattack.losses.perceptual import (
    VGG19_WEIGHTS,
    VGG_WEIGHTS,
    VGGFeatures,
    gram,
    perceptual_loss,
    style_loss,
)
from reconattack.losses.sift import SiftLoss
from reconattack.utils.weights import MissingWeightsError
from tests.helpers import trust_weights


def _direct_ragan(real, fake):
    sig = torch.sigmoid
    d_real = sig(real - fake.mean())
    d_fake = sig(fake - real.mean())
    l_dis = -torch.log(d_real).mean() - torch.log(1 - d_fake).mean()
    l_adv = -torch.log(d_fake).mean() - torch.log(1 - d_real).mean()
    return l_dis, l_adv


def test_ragan_matches_paper_equations():
    torch.manual_seed(0)
    real, fake = torch.randn(8), torch.randn(8)
    l_dis, l_adv = _direct_ragan(real, fake)
    torch.testing.assert_close(ragan_d_loss(real, fake), l_dis)
    torch.testing.assert_close(ragan_g_loss(real, fake), l_adv)


def test_ragan_is_stable_for_large_logits():
    real, fake = torch.tensor([80.0, 90.0]), torch.tensor([-90.0, -80.0])
    assert math.isfinite(ragan_d_loss(real, fake).item())
    assert ragan_g_loss(real, fake).item() > 100


def test_sift_loss_is_batch_size_independent_and_zero_on_equal():
    torch.manual_seed(0)
    a, b = torch.rand(4, 3, 32, 32) * 2 - 1, torch.rand(4, 3, 32, 32) * 2 - 1
    loss = SiftLoss()
    whole = loss(a, b)
    parts = torch.stack([loss(a[i:i + 1], b[i:i + 1]) for i in range(4)]).mean()
    torch.testing.assert_close(whole, parts)
    assert loss(a, a).item() == 0


def _tiny_features():
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.ReLU())


def test_vgg_features_normalise_imagenet_and_freeze():
    feats = _tiny_features()
    vgg = VGGFeatures(layers=(1, 3), features=feats)
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    out = vgg(x)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    expected = feats[:2](((x + 1) / 2 - mean) / std)
    torch.testing.assert_close(out[0], expected)
    assert len(out) == 2 and not any(p.requires_grad for p in vgg.parameters())


def test_perceptual_and_style_losses_match_direct_formulas():
    torch.manual_seed(0)
    fp = [torch.randn(2, 3, 4, 4), torch.randn(2, 5, 2, 2)]
    ft = [torch.randn(2, 3, 4, 4), torch.randn(2, 5, 2, 2)]
    direct = sum((p - t).abs().mean() for p, t in zip(fp, ft))
    torch.testing.assert_close(perceptual_loss(fp, ft), direct)
    torch.testing.assert_close(perceptual_loss(fp, ft, distance="l1"), direct)
    f = fp[0].reshape(2, 3, 16)
    torch.testing.assert_close(gram(fp[0]), torch.einsum("bik,bjk->bij", f, f) / 48)
    assert style_loss(fp, fp).item() == 0


def test_perceptual_loss_mse_mean_matches_direct_formula():
    torch.manual_seed(1)
    fp = [torch.randn(2, 3, 4, 4), torch.randn(2, 5, 2, 2), torch.randn(2, 2, 1, 1)]
    ft = [torch.randn(2, 3, 4, 4), torch.randn(2, 5, 2, 2), torch.randn(2, 2, 1, 1)]
    direct = sum(((p - t) ** 2).mean() for p, t in zip(fp, ft)) / 3  # mean over layers of the MSE
    torch.testing.assert_close(perceptual_loss(fp, ft, distance="mse_mean"), direct)
    assert perceptual_loss(fp, fp, distance="mse_mean").item() == 0
    with pytest.raises(ValueError, match="distance"):
        perceptual_loss(fp, ft, distance="l2")


def test_vgg19_missing_weights_names_the_file():
    with pytest.raises(MissingWeightsError, match="vgg19-dcbb9e9d.pth"):
        VGGFeatures()


def test_vgg16_missing_weights_names_the_file_and_arch_is_checked():
    with pytest.raises(MissingWeightsError, match="vgg16-397923af.pth"):
        VGGFeatures(layers=(3, 8), arch="vgg16")
    with pytest.raises(ValueError, match="arch"):
        VGGFeatures(features=_tiny_features(), layers=(1,), arch="vgg11")


def test_vgg19_loads_from_torch_hub_cache_without_network(monkeypatch):
    # a VGG19 state dict in torchvision's format, placed where torch hub keeps it
    ref = torchvision.models.vgg19(weights=None)
    VGG19_WEIGHTS.cache_file.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ref.state_dict(), VGG19_WEIGHTS.cache_file)
    trust_weights(monkeypatch, VGG19_WEIGHTS.cache_file)
    vgg = VGGFeatures()
    torch.testing.assert_close(vgg.features[0].weight, ref.features[0].weight)
    torch.testing.assert_close(vgg.features[28].weight, ref.features[28].weight)


def test_vgg16_loads_from_torch_hub_cache_without_network(monkeypatch):
    # a VGG16 state dict in torchvision's format, placed where torch hub keeps it
    ref = torchvision.models.vgg16(weights=None)
    spec = VGG_WEIGHTS["vgg16"]
    assert spec.cache_file.name == "vgg16-397923af.pth"
    spec.cache_file.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ref.state_dict(), spec.cache_file)
    trust_weights(monkeypatch, spec.cache_file)
    layers = (3, 8, 15, 22)  # relu1_2, relu2_2, relu3_3, relu4_3 in vgg16().features
    vgg = VGGFeatures(layers=layers, arch="vgg16")
    assert len(vgg.features) == 23  # truncated after the last tap
    torch.testing.assert_close(vgg.features[0].weight, ref.features[0].weight)
    torch.testing.assert_close(vgg.features[21].weight, ref.features[21].weight)
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    out = vgg(x)
    assert [f.shape[1] for f in out] == [64, 128, 256, 512]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(out[0], ref.features[:4](((x + 1) / 2 - mean) / std))
