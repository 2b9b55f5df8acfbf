"""Each paper family at its real sizes, one step per stage, on CPU, on fixture data made here
(slow: minutes and several GB). The demos run small networks; these tests make sure the paper
code paths run too: the CFGAN paper networks (76.6M coarse + 106.8M fine generator) at 256x256
with both stages, and the AVIH face setting (IR-18 service and IR-101 evaluation models in their
published checkpoint formats with random weights, 112x112 faces from a .bin, CelebA-style
auxiliary folder, U-Net keys, the DR attacker), and the AVIH re-identification setting (TransReID
ViT-B/16 service and evaluation models with SIE and JPM, official checkpoint layout, 256x128
persons from a Market-1501 tree, an LPW-style folder), and the SIFT baselines SLI (the official
networks), GleaD and EVDVAE (sized to the CFGAN paper's Table II) at 256 px."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from reconattack.run import run
from tests.helpers import TRANSREID_FOLDERS, base_overrides, compose_cfg, make_image_folder

pytestmark = pytest.mark.slow


def _params(state: dict, prefix: str) -> float:
    """Millions of parameters of the tensors under ``prefix`` (BN buffers excluded)."""
    return sum(v.numel() for k, v in state.items()
               if k.startswith(prefix) and not k.endswith(("running_mean", "running_var", "num_batches_tracked"))) / 1e6


def test_cfgan_paper_networks_at_256px_both_stages(tmp_path):
    data = tmp_path / "data"
    make_image_folder(data / "celebahq", n=14, size=260)
    cfg = compose_cfg(["+experiment=cfgan_celebahq", *base_overrides(tmp_path, data),
                       "attack.steps.coarse=1", "attack.steps.fine=1", "data.batch_size=2",
                       "data.eval_batch_size=2", "data.num_workers=0", "data.val=0", "data.test=2",
                       "metrics.metrics=[mse,psnr,ssim]",
                       # L_per / L_style need pretrained VGG19 weights (no download here); L_pix,
                       # L_adv and the dense-SIFT loss run at the paper's weights
                       "loss.per=0", "loss.style=0"])
    assert cfg.data.image_size == 256 and cfg.loss.sift > 0 and cfg.loss.adv > 0
    metrics = run(cfg)
    assert isinstance(metrics["test/psnr"], float) and isinstance(metrics["baseline/shuffled_sift/psnr"], float)
    ckpts = tmp_path / "run" / "checkpoints"
    coarse = torch.load(ckpts / "coarse.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    fine = torch.load(ckpts / "fine.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert _params(coarse, "generator.") == pytest.approx(76.6, abs=0.05)
    assert _params(fine, "generator.") == pytest.approx(106.8, abs=0.05)
    assert _params(fine, "coarse.") == pytest.approx(76.6, abs=0.05)  # the frozen trained coarse net


def test_sli_official_networks_at_256px_both_stages(tmp_path):
    """sli_celebahq at its real sizes: the uncompressed 256x256 map with SLI's collision rule,
    the official LBP (39.3M) and image (54.5M) generators and PatchGANs, one step each; the image
    checkpoint holds the frozen, trained LBP generator."""
    data = tmp_path / "data"
    make_image_folder(data / "celebahq", n=6, size=260)
    cfg = compose_cfg(["+experiment=sli_celebahq", *base_overrides(tmp_path, data),
                       "attack.steps.lbp=1", "attack.steps.image=1", "data.batch_size=1",
                       "data.eval_batch_size=2", "data.num_workers=0", "data.val=0", "data.test=2",
                       "metrics.metrics=[mse,psnr,ssim]",
                       # the perceptual and style losses need pretrained VGG19 (no download here)
                       "loss.lbp.per=0", "loss.image.per=0", "loss.image.style=0"])
    assert cfg.data.image_size == 256 and not cfg.threat.compress and cfg.threat.placement == "sli"
    metrics = run(cfg)
    assert isinstance(metrics["test/psnr"], float)
    ckpts = tmp_path / "run" / "checkpoints"
    lbp = torch.load(ckpts / "lbp.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    image = torch.load(ckpts / "image.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert _params(lbp, "net.") * 1e6 == pytest.approx(39_279_105) and _params(image, "net.") * 1e6 == pytest.approx(54_538_627)
    assert _params(image, "lbp_net.") == _params(lbp, "net.")  # the trained LBP generator, frozen
    assert _params(image, "discriminator.") * 1e6 == pytest.approx(2_764_737)


@pytest.mark.parametrize("name,stage,params_m", [("glead_celebahq", "glead", 147.8), ("evdvae_celebahq", "evdvae", 201.6)])
def test_sift_conditioned_baselines_at_their_paper_sizes(name, stage, params_m, tmp_path):
    """GleaD (147.8M generator) and EVDVAE (201.6M) at 256 px on the compressed map, one step,
    evaluated, their checkpoint holding the paper-size networks."""
    data = tmp_path / "data"
    make_image_folder(data / "celebahq", n=5, size=260)
    cfg = compose_cfg([f"+experiment={name}", *base_overrides(tmp_path, data), f"attack.steps.{stage}=1",
                       "data.batch_size=1", "data.eval_batch_size=1", "data.num_workers=0", "data.val=0",
                       "data.test=1", "metrics.metrics=[mse,psnr,ssim]", "++loss.per=0"])
    assert cfg.data.image_size == 256
    metrics = run(cfg)
    assert isinstance(metrics["test/psnr"], float)
    state = torch.load(tmp_path / "run" / "checkpoints" / f"{stage}.ckpt", map_location="cpu",
                       weights_only=True)["state_dict"]
    prefix = "generator." if stage == "glead" else "vae."
    assert _params(state, prefix) == pytest.approx(params_m, abs=0.05)


def test_avih_face_setting_at_112px(tmp_path):
    from reconattack.data.faces import make_bin
    from reconattack.models.face import AdaFaceIResNet, IResNet

    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    faces = (rng.random((40, 112, 112, 3)) * 255).astype(np.uint8)
    make_bin(data / "faces_emore" / "lfw.bin", faces, [True, False] * 10)
    make_image_folder(data / "celeba" / "img_align_celeba", n=8, size=112)  # CelebA-style folder
    paper = compose_cfg(["+experiment=avih_attack_lfw"])
    torch.manual_seed(0)
    service, evaluation = paper.threat.service.net, paper.threat.evaluation.net
    ir18 = IResNet(layers=list(service.layers), widths=list(service.widths), embedding_size=512)
    (data / "models" / "ms1mv3_arcface_r18_fp16").mkdir(parents=True)
    torch.save(ir18.state_dict(), data / "models" / "ms1mv3_arcface_r18_fp16" / "backbone.pth")  # insightface
    ir101 = AdaFaceIResNet(layers=list(evaluation.layers), widths=list(evaluation.widths), embedding_size=512)
    torch.save({"state_dict": {f"model.{k}": v for k, v in ir101.state_dict().items()}, "epoch": 1},
               data / "models" / "adaface_ir101_webface12m.ckpt")  # AdaFace's Lightning format
    assert list(service.layers) == [2, 2, 2, 2] and list(evaluation.layers) == [3, 13, 30, 3]
    cfg = compose_cfg(["+experiment=avih_attack_lfw", *base_overrides(tmp_path, data),
                       "data.gallery_size=20", "data.pool=10", "data.num_workers=0", "data.batch_size=4",
                       "data.eval_batch_size=8", "threat.key_share=0.5", "threat.encrypt.iterations=2",
                       "threat.encrypt.batch_size=8", "attack.steps.attack=2", "metrics.metrics=[mse,psnr,ssim]"])
    assert cfg.data.image_size == 112
    metrics = run(cfg)
    for row in ("ours", "original", "protected", "key_model", "random"):
        assert isinstance(metrics[f"{row}/tpr@far"], float), row
    assert isinstance(metrics["encrypt/service_cos"], float)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["attack/leaked_images"] == 5


def test_avih_reid_setting_at_256x128(tmp_path):
    from reconattack.models.reid import TransReID
    from tests.helpers import make_reid_tree

    data = tmp_path / "data"
    make_reid_tree(data / "market1501", "market1501")
    make_image_folder(data / "lpw" / "scen1", n=6, size=96)
    paper = compose_cfg(["+experiment=avih_attack_market1501"])
    net = {k: v for k, v in paper.threat.service.net.items() if k != "_target_"}
    net["img_size"] = list(net["img_size"])
    torch.manual_seed(0)
    for backbone in ("vit", "deit"):  # the official training's state dict, random weights
        folder = data / "models" / "transreid" / TRANSREID_FOLDERS["market1501", backbone]
        folder.mkdir(parents=True)
        torch.save(TransReID(**net).state_dict(), folder / "transformer_120.pth")
    cfg = compose_cfg(["+experiment=avih_attack_market1501", *base_overrides(tmp_path, data),
                       "data.gallery_size=16", "data.pool=6", "data.num_workers=0", "data.batch_size=2",
                       "data.eval_batch_size=4", "threat.key_share=0.5", "threat.encrypt.iterations=1",
                       "threat.encrypt.batch_size=4", "attack.steps.attack=1", "metrics.metrics=[mse,psnr,ssim]"])
    assert list(cfg.data.image_size) == [256, 128] and cfg.threat.service.net.dim == 768
    metrics = run(cfg)
    for row in ("ours", "original", "protected", "key_model", "random"):
        assert isinstance(metrics[f"{row}/rank1"], float) and isinstance(metrics[f"{row}/map"], float), row
    assert metrics["attack/leaked_images"] == 3 and metrics["ours/reid_gallery"] == 10
