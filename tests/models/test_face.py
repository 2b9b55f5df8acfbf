import re

import pytest
import torch
import torch.nn.functional as F

from reconattack.models.face import (
    ARCHS,
    AdaFaceFormat,
    AdaFaceIResNet,
    ConvEmbedder,
    FaceEmbedder,
    InsightfaceFormat,
    IResNet,
    ReconattackFormat,
    load_face_checkpoint,
    make_face_model,
)
from reconattack.utils.checkpoints import CheckpointMismatchError

TINY = dict(layers=[1, 1], widths=(8, 16), embedding_size=16, input_size=16)


def tiny_ir():
    return IResNet(**TINY)


def tiny_ada():
    return AdaFaceIResNet(**TINY)


def images(*shape):
    """Random RGB images in [-1, 1], the package's image convention."""
    return torch.rand(*shape) * 2 - 1


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def closed_form_count(layers, widths, emb, size, layout):
    """Parameter count derived from the layer shapes (BN: weight + bias, PReLU: one per channel)."""
    bn = lambda c: 2 * c  # noqa: E731
    total = 3 * widths[0] * 9 + bn(widths[0]) + widths[0]  # stem conv, BN, PReLU
    cin = widths[0]
    for n, w in zip(layers, widths):
        for i in range(n):
            ci, stride = (cin, 2) if i == 0 else (w, 1)
            total += bn(ci) + 9 * ci * w + bn(w) + w + 9 * w * w + bn(w)
            has_conv_shortcut = (stride != 1 or ci != w) if layout == "insightface" else ci != w
            if has_conv_shortcut:
                total += ci * w + bn(w)
        cin = w
    s = size // 2 ** len(layers)
    total += bn(cin) + cin * s * s * emb + emb  # head BN2d, Linear
    total += bn(emb) if layout == "insightface" else 0  # features BN1d (AdaFace: affine=False)
    return total


def _randomise_bn_stats(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for name, buf in model.named_buffers():
        if name.endswith("running_mean"):
            buf.copy_(torch.randn(buf.shape, generator=g) * 0.1)
        elif name.endswith("running_var"):
            buf.copy_(torch.rand(buf.shape, generator=g) + 0.5)
    return model


def _tiny_source(layout, seed=1):
    cls = IResNet if layout == "insightface" else AdaFaceIResNet
    torch.manual_seed(seed)
    return _randomise_bn_stats(cls(**TINY)).eval()


# ------------------------------------------------------------------------------------------------
# architecture


@pytest.mark.parametrize("arch", ["ir18", "ir50", "ir100"])
@pytest.mark.parametrize("layout", ["insightface", "adaface"])
def test_parameter_counts_match_closed_form(arch, layout):
    cls = IResNet if layout == "insightface" else AdaFaceIResNet
    count = n_params(cls(ARCHS[arch]))
    assert count == closed_form_count(ARCHS[arch], (64, 128, 256, 512), 512, 112, layout)
    if (layout, arch) == ("insightface", "ir50"):
        # printed by arcface_torch's iresnet50 (512-d, 112x112) in a public fork of iresnet.py
        assert count == 43_590_848


def test_ir18_forward_shape():
    model = IResNet(ARCHS["ir18"]).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 112, 112))
    assert out.shape == (2, 512) and torch.isfinite(out).all()


def test_insightface_key_names():
    sd = IResNet(ARCHS["ir18"]).state_dict()
    for key in ["conv1.weight", "bn1.running_var", "prelu.weight", "layer1.0.downsample.0.weight",
                "layer1.0.downsample.1.running_mean", "layer1.1.bn3.bias", "layer4.1.conv2.weight",
                "bn2.weight", "fc.weight", "fc.bias", "features.weight", "features.running_mean"]:
        assert key in sd, key
    assert "layer1.1.downsample.0.weight" not in sd and "layer5.0.bn1.weight" not in sd
    assert sd["fc.weight"].shape == (512, 512 * 7 * 7)
    model = IResNet(**TINY)
    assert not model.features.weight.requires_grad
    assert torch.equal(model.features.weight, torch.ones(16))
    assert model.features.eps == 1e-5 and model.bn1.eps == 1e-5


def test_adaface_key_names():
    model = AdaFaceIResNet(ARCHS["ir18"])
    sd = model.state_dict()
    assert len(model.body) == 8
    assert isinstance(model.body[0].shortcut_layer, torch.nn.MaxPool2d)
    assert not any(k.startswith("body.0.shortcut_layer") for k in sd)
    for key in ["input_layer.0.weight", "input_layer.1.running_mean", "input_layer.2.weight",
                "body.0.res_layer.0.weight", "body.0.res_layer.3.weight", "body.7.res_layer.5.bias",
                "body.2.shortcut_layer.0.weight", "body.2.shortcut_layer.1.running_var",
                "output_layer.0.weight", "output_layer.3.weight", "output_layer.4.running_var"]:
        assert key in sd, key
    assert "output_layer.4.weight" not in sd  # BatchNorm1d(affine=False)
    assert sd["output_layer.3.weight"].shape == (512, 512 * 7 * 7)
    assert len(AdaFaceIResNet(ARCHS["ir50"], widths=(4, 4, 8, 8), input_size=16).body) == 24


def test_input_size_must_divide():
    with pytest.raises(ValueError, match="input_size"):
        IResNet([1, 1], widths=(8, 16), input_size=18)
    with pytest.raises(ValueError, match="input_size"):
        AdaFaceIResNet([1, 1, 1], widths=(8, 16, 16), input_size=20)
    with pytest.raises(ValueError, match="input_size"):
        ConvEmbedder(widths=(8, 8), input_size=10)
    with pytest.raises(ValueError, match="equal length"):
        IResNet([1, 1], widths=(8, 16, 32))


def test_conv_embedder_shapes():
    model = ConvEmbedder(widths=(8, 16), embedding_size=16, input_size=16)
    assert model(torch.randn(3, 3, 16, 16)).shape == (3, 16)
    emb = make_face_model(lambda: ConvEmbedder(widths=(8, 16), embedding_size=16, input_size=16))
    assert isinstance(emb.backbone, ConvEmbedder) and emb.channel_order == "rgb"
    assert emb.input_size == 16 and emb.embed_dim == 16
    assert emb(images(2, 3, 16, 16)).shape == (2, 16)


# ------------------------------------------------------------------------------------------------
# FaceEmbedder


def test_embedder_unit_norm_and_resize():
    emb = make_face_model(tiny_ir, seed=0).eval()
    assert emb.embed_dim == 16 and emb.input_size == 16
    x = images(3, 3, 32, 32)
    out = emb(x)
    assert out.shape == (3, 16) and out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))
    small = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, emb(small))
    out.sum().backward()  # differentiable end to end (random model keeps requires_grad)


def test_adaface_embedder_is_bgr():
    emb = make_face_model(tiny_ada, channel_order="bgr", seed=0).eval()
    assert emb.channel_order == "bgr"
    x = images(2, 3, 16, 16)
    with torch.no_grad():
        unit = (x + 1) / 2  # [-1, 1] -> [0, 1], then AdaFace's BGR, (x - 0.5) / 0.5
        expected = F.normalize(emb.backbone((unit.flip(1) - 0.5) / 0.5), dim=1)
        torch.testing.assert_close(emb(x), expected)
        rgb = FaceEmbedder(emb.backbone, input_size=16, channel_order="rgb")(x)
    assert not torch.allclose(rgb, expected, atol=1e-4)
    # no layout-based default any more: an AdaFace backbone is RGB unless told otherwise
    assert make_face_model(tiny_ada, seed=0).channel_order == "rgb"


def test_embedder_normalises_on_the_unit_scale():
    # mean / std are given on the [0, 1] scale: images in [-1, 1] are mapped to [0, 1] first
    backbone = IResNet(**TINY).eval()
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    emb = FaceEmbedder(backbone, input_size=16, mean=mean, std=std)
    x = images(2, 3, 16, 16)
    m, sd = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(emb.preprocess(x), ((x + 1) / 2 - m) / sd)
    # the default 0.5 / 0.5 leaves [-1, 1] images unchanged
    torch.testing.assert_close(FaceEmbedder(backbone, input_size=16).preprocess(x), x)


def test_embedder_validates_arguments():
    backbone = IResNet(**TINY)
    with pytest.raises(ValueError, match="channel_order"):
        FaceEmbedder(backbone, input_size=16, channel_order="rbg")
    with pytest.raises(ValueError, match="std"):
        FaceEmbedder(backbone, input_size=16, std=0.0)
    with pytest.raises(ValueError, match="channel_order"):
        make_face_model(tiny_ir, channel_order="brg")
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        FaceEmbedder(backbone, input_size=16)(torch.rand(2, 1, 16, 16))


def test_seed_is_deterministic_and_keeps_global_rng():
    state = torch.get_rng_state()
    a = make_face_model(tiny_ir, seed=3).state_dict()
    b = make_face_model(tiny_ir, seed=3).state_dict()
    c = make_face_model(tiny_ir, seed=4).state_dict()
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["backbone.conv1.weight"], c["backbone.conv1.weight"])


# ------------------------------------------------------------------------------------------------
# checkpoints


def _check_same_outputs(src, emb, channel_order):
    assert not emb.training and not any(p.requires_grad for p in emb.parameters())
    x = images(2, 3, 16, 16)
    with torch.no_grad():
        ref = FaceEmbedder(src, input_size=16, channel_order=channel_order)(x)
        torch.testing.assert_close(emb(x), ref, rtol=0, atol=0)
        z = torch.randn(2, 3, 16, 16)
        torch.testing.assert_close(emb.backbone(z), src(z), rtol=0, atol=0)


@pytest.mark.parametrize("prefix", ["", "module."])
def test_insightface_checkpoint_round_trip(tmp_path, prefix):
    src = _tiny_source("insightface")
    path = tmp_path / "backbone.pth"
    torch.save({prefix + k: v for k, v in src.state_dict().items()}, path)
    for fmt in (InsightfaceFormat(), None):
        emb = make_face_model(tiny_ir, checkpoint=path, format=fmt, seed=9)
        _check_same_outputs(src, emb, "rgb")


def test_insightface_checkpoint_without_batch_counters(tmp_path):
    src = _tiny_source("insightface")
    path = tmp_path / "old.pth"
    torch.save({k: v for k, v in src.state_dict().items() if "num_batches" not in k}, path)
    _check_same_outputs(src, make_face_model(tiny_ir, checkpoint=str(path)), "rgb")


def test_adaface_checkpoint_round_trip(tmp_path):
    src = _tiny_source("adaface")
    sd = {"model." + k: v for k, v in src.state_dict().items()}
    sd["head.kernel"] = torch.randn(16, 10)
    path = tmp_path / "adaface_ir18.ckpt"
    torch.save({"state_dict": sd, "epoch": 3, "pytorch-lightning_version": "1.8.6"}, path)
    for fmt in (AdaFaceFormat(), None):
        emb = make_face_model(tiny_ada, channel_order="bgr", checkpoint=path, format=fmt)
        _check_same_outputs(src, emb, "bgr")


@pytest.mark.parametrize("wrap", [False, True])
def test_reconattack_checkpoint_round_trip(tmp_path, wrap):
    src_emb = make_face_model(tiny_ir, seed=5)
    _randomise_bn_stats(src_emb.backbone).eval()
    sd = src_emb.backbone.state_dict()
    path = tmp_path / "face.pt"
    torch.save({"state_dict": sd} if wrap else sd, path)
    for fmt in (ReconattackFormat(), None):
        emb = make_face_model(tiny_ir, checkpoint=path, format=fmt)
        _check_same_outputs(src_emb.backbone, emb, "rgb")
    # a FaceEmbedder's own state dict (keys prefixed "backbone.") loads too
    path = tmp_path / "embedder.pt"
    torch.save(src_emb.state_dict(), path)
    _check_same_outputs(src_emb.backbone, make_face_model(tiny_ir, checkpoint=path,
                                                          format=ReconattackFormat()), "rgb")


def test_format_classes_and_auto_detection(tmp_path):
    assert (InsightfaceFormat().name, AdaFaceFormat().name, ReconattackFormat().name) == (
        "insightface", "adaface", "reconattack")
    sd = {"conv1.weight": torch.zeros(1)}
    assert InsightfaceFormat().state_dict({"module." + k: v for k, v in sd.items()}, "p") == sd
    assert ReconattackFormat().state_dict({"state_dict": {"backbone." + k: v for k, v in sd.items()}},
                                          "p") == sd
    ada = {"state_dict": {"model.conv1.weight": sd["conv1.weight"], "head.kernel": torch.ones(2)}}
    assert AdaFaceFormat().state_dict(ada, "p") == sd
    # format=None picks AdaFace for 'model.' keys: the error names the detected format
    path = tmp_path / "ada.ckpt"
    torch.save({"state_dict": {"model." + k: v for k, v in tiny_ada().state_dict().items()}}, path)
    with pytest.raises(CheckpointMismatchError, match=r"format=adaface"):
        load_face_checkpoint(tiny_ir(), path)
    path = tmp_path / "plain.pth"
    torch.save(tiny_ada().state_dict(), path)
    with pytest.raises(CheckpointMismatchError, match=r"format=reconattack"):
        load_face_checkpoint(tiny_ir(), path)


def test_missing_checkpoint_file(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth") as info:
        make_face_model(tiny_ir, checkpoint=path)
    assert "threat.service.checkpoint" in str(info.value)


def test_wrong_depth_names_missing_and_unexpected_keys(tmp_path):
    small = dict(widths=(4, 4, 8, 8), embedding_size=8, input_size=16)
    path18 = tmp_path / "ir18.pth"
    torch.save(IResNet(ARCHS["ir18"], **small).state_dict(), path18)
    with pytest.raises(CheckpointMismatchError) as info:
        make_face_model(lambda: IResNet(ARCHS["ir50"], **small), checkpoint=path18)
    assert isinstance(info.value, ValueError)
    msg = str(info.value)
    assert re.search(r"missing keys \(\d+\): ", msg) and "layer1.2.bn1.weight" in msg
    assert "The model was built as IResNet ir50 (layers=[3, 4, 14, 3]" in msg
    assert "The checkpoint looks like IResNet ir18 (layers=[2, 2, 2, 2], widths=[4, 4, 8, 8])" in msg
    assert len(msg) < 3000  # a summary, not torch's full key dump

    path50 = tmp_path / "ir50.pth"
    torch.save(IResNet(ARCHS["ir50"], **small).state_dict(), path50)
    with pytest.raises(CheckpointMismatchError, match=r"unexpected keys \(\d+\): layer1\.2\."):
        make_face_model(lambda: IResNet(ARCHS["ir18"], **small), checkpoint=path50)


def test_wrong_layout_and_shape_mismatch(tmp_path):
    path = tmp_path / "ada.pth"
    torch.save(AdaFaceIResNet(**TINY).state_dict(), path)
    with pytest.raises(CheckpointMismatchError) as info:
        make_face_model(tiny_ir, checkpoint=path)
    msg = str(info.value)
    assert re.search(r"missing keys \(\d+\): conv1\.weight", msg)
    assert re.search(r"unexpected keys \(\d+\): input_layer\.0\.weight", msg)
    assert "The model was built as IResNet custom" in msg
    assert "The checkpoint looks like AdaFaceIResNet custom (layers=[1, 1], widths=[8, 16])" in msg

    path = tmp_path / "wide.pth"
    torch.save(IResNet([1, 1], widths=(8, 32), embedding_size=16, input_size=16).state_dict(), path)
    with pytest.raises(CheckpointMismatchError, match=r"shape mismatches \(checkpoint vs model\) \(\d+\)") as info:
        make_face_model(tiny_ir, checkpoint=path)
    assert "layer2.0.conv1.weight (32, 8, 3, 3) vs (16, 8, 3, 3)" in str(info.value)


def test_adaface_format_needs_model_keys(tmp_path):
    path = tmp_path / "plain.pth"
    torch.save(IResNet(**TINY).state_dict(), path)
    with pytest.raises(ValueError, match="state_dict"):
        load_face_checkpoint(AdaFaceIResNet(**TINY), path, AdaFaceFormat())
    # a 'state_dict' without 'model.' keys: refused, pointing at the other format classes
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": IResNet(**TINY).state_dict()}, path)
    with pytest.raises(ValueError, match="no 'model.' keys.*format InsightfaceFormat"):
        load_face_checkpoint(AdaFaceIResNet(**TINY), path, AdaFaceFormat())


class _Opaque:
    pass


def test_checkpoint_with_arbitrary_objects_is_refused(tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"state_dict": IResNet(**TINY).state_dict(), "extra": _Opaque()}, path)
    with pytest.raises(ValueError, match="weights_only=True.*_Opaque"):
        load_face_checkpoint(IResNet(**TINY), path)
