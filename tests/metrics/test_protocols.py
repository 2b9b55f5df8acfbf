"""Evaluation protocols: FID with its sample count, KID beside it, and the CFGAN code's own
evaluation (``metrics=cfgan_paper``), each against an independent NumPy / SciPy / scikit-image /
OpenCV computation. Small random feature networks are injected on purpose (no weights here)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import linalg
from torch import nn

from reconattack.metrics.suite import MetricSuite


class RandomFeatures(nn.Module):
    """Stand-in feature network: (B, 3, H, W) in [0, 1] → (B, 5), fixed random weights."""

    def __init__(self, seed: int = 3) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, 5, 3)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(5, 3, 3, 3, generator=g))
            self.conv.bias.copy_(torch.randn(5, generator=g))

    def forward(self, x):
        return self.conv(x).relu().mean(dim=(2, 3))


def _uint8_batches(sizes, hw=16, seed=0):
    """Ground truth from uint8 images (as read from files) and noisy reconstructions, (B, 3, H, W)
    in [-1, 1] (reconstructions slightly outside it); also the uint8 ground truth."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in sizes:
        t8 = torch.randint(0, 256, (n, 3, hw, hw), generator=g, dtype=torch.uint8)
        target = t8.float() / 127.5 - 1
        pred = target + 0.4 * torch.randn(n, 3, hw, hw, generator=g) - 0.1
        out.append((pred.clamp(-1.1, 1.1), target, t8))
    return out


def _feats(net, imgs01):
    with torch.no_grad():
        return net(imgs01).double().numpy()


def fid_np(real, fake):
    """FID from means and covariances (N - 1) with scipy.linalg.sqrtm."""
    mu1, mu2 = real.mean(0), fake.mean(0)
    s1, s2 = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2) - 2 * np.trace(covmean))


def mmd2_unbiased_np(x, y):
    """KID of one subset: unbiased MMD² with k(a, b) = (a·b / d + 1)³ (Binkowski et al. 2018)."""
    d = x.shape[1]
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    m, n = len(x), len(y)
    return float(
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
        - 2 * kxy.mean()
    )


def _to01(t):
    return (t.clamp(-1, 1) + 1) / 2


# ------------------------------------------------------------------------- FID sample count
def test_fid_states_its_sample_count_and_matches_scipy():
    net = RandomFeatures()
    batches = _uint8_batches([4, 4, 3])
    suite = MetricSuite(metrics=("psnr", "fid"), feature_nets={"fid": net})
    for pred, target, _ in batches:
        suite.update(pred, target)
    res = suite.compute()
    assert list(res) == ["psnr", "fid", "fid_n"]
    assert res["fid_n"] == 11
    pred = torch.cat([b[0] for b in batches])
    target = torch.cat([b[1] for b in batches])
    ref = fid_np(_feats(net, _to01(target)), _feats(net, _to01(pred)))
    print(f"fid ours {res['fid']:.10f} scipy {ref:.10f}")
    assert res["fid"] == pytest.approx(ref, rel=1e-6)


def test_fid_count_is_the_reconstructions_of_this_epoch_with_kept_real_statistics():
    net = RandomFeatures()
    (p1, t1, _), (p2, t2, _) = _uint8_batches([6, 3], seed=1)
    suite = MetricSuite(metrics=("fid",), feature_nets={"fid": net})
    suite.update(p1, t1)
    assert suite.compute()["fid_n"] == 6
    suite.reset()  # real statistics of the first epoch are kept (reset_real_features=False)
    suite.update(p2, t2)
    res = suite.compute()
    assert res["fid_n"] == 3
    ref = fid_np(_feats(net, _to01(t1)), _feats(net, _to01(p2)))
    assert res["fid"] == pytest.approx(ref, rel=1e-6)


# ------------------------------------------------------------------------------------- KID
def test_kid_on_a_small_set_is_the_unbiased_mmd_of_the_whole_set():
    net = RandomFeatures()
    batches = _uint8_batches([5, 7])
    suite = MetricSuite(metrics=("fid", "kid"), feature_nets={"fid": net})
    for pred, target, _ in batches:
        suite.update(pred, target)
    res = suite.compute()
    assert list(res) == ["fid", "fid_n", "kid", "kid_std", "kid_n"]
    pred = torch.cat([b[0] for b in batches])
    target = torch.cat([b[1] for b in batches])
    ref = mmd2_unbiased_np(_feats(net, _to01(target)), _feats(net, _to01(pred)))
    print(f"kid ours {res['kid']:.12f} numpy {ref:.12f}")
    # 12 images < subset_size 1000: one subset, the whole set; no spread
    assert res["kid_n"] == res["fid_n"] == 12
    assert res["kid"] == pytest.approx(ref, rel=1e-9, abs=1e-12)
    assert res["kid_std"] == 0.0


def test_kid_subsets_are_drawn_from_the_seeded_generator():
    net = RandomFeatures()
    batches = _uint8_batches([6, 6])
    kid = {"below": 2048, "subset_size": 5, "subsets": 7, "seed": 3}
    suite = MetricSuite(metrics=("kid",), feature_nets={"fid": net}, kid=kid)
    for pred, target, _ in batches:
        suite.update(pred, target)
    torch.manual_seed(123)  # the global generator does not matter
    res = suite.compute()
    assert list(res) == ["kid", "kid_std", "kid_n"]
    real = _feats(net, _to01(torch.cat([b[1] for b in batches])))
    fake = _feats(net, _to01(torch.cat([b[0] for b in batches])))
    g = torch.Generator().manual_seed(3)  # the documented draw: real then fake, per subset
    vals = []
    for _ in range(7):
        ir = torch.randperm(12, generator=g)[:5].numpy()
        jf = torch.randperm(12, generator=g)[:5].numpy()
        vals.append(mmd2_unbiased_np(real[ir], fake[jf]))
    print(
        f"kid ours {res['kid']:.12f} ± {res['kid_std']:.12f}; "
        f"numpy {np.mean(vals):.12f} ± {np.std(vals):.12f}"
    )
    assert res["kid"] == pytest.approx(np.mean(vals), rel=1e-9, abs=1e-12)
    assert res["kid_std"] == pytest.approx(np.std(vals), rel=1e-9, abs=1e-12)  # population std
    assert res["kid_std"] > 0
    again = MetricSuite(metrics=("kid",), feature_nets={"fid": net}, kid=kid)
    for pred, target, _ in batches:
        again.update(pred, target)
    assert again.compute() == res  # reproducible


def test_kid_is_not_computed_at_and_above_the_threshold_and_stores_no_more():
    net = RandomFeatures()
    suite = MetricSuite(
        metrics=("fid", "kid"),
        feature_nets={"fid": net},
        kid={"below": 8, "subset_size": 1000, "subsets": 100, "seed": 0},
    )
    for pred, target, _ in _uint8_batches([3, 3, 3, 3]):
        suite.update(pred, target)
    res = suite.compute()
    assert res["fid_n"] == 12 and isinstance(res["fid"], float)
    assert res["kid"].startswith("missing: ") and "8" in res["kid"] and "12" in res["kid"]
    assert "kid_std" not in res and "kid_n" not in res
    assert suite._kid_stored() <= 2 * 8  # memory stays bounded by the threshold


def test_kid_and_fid_need_two_images():
    net = RandomFeatures()
    suite = MetricSuite(metrics=("fid", "kid"), feature_nets={"fid": net})
    ((pred, target, _),) = _uint8_batches([1])
    suite.update(pred, target)
    res = suite.compute()
    assert res["fid"].startswith("missing: ") and res["kid"].startswith("missing: ")
    assert "fid_n" not in res and "kid_n" not in res


def test_kid_and_fid_settings_are_checked():
    from reconattack.errors import ConfigError

    with pytest.raises(ConfigError, match="kid"):
        MetricSuite(kid={"below": 2048, "subset_size": 1, "subsets": 100, "seed": 0})
    with pytest.raises(ConfigError, match="kid"):
        MetricSuite(kid={"below": 2048, "subset": 10})
    with pytest.raises(ConfigError, match="weights.fid"):
        MetricSuite(weights={"kid": "/some/file.pth"})


# ------------------------------------------------------------- SSIM of the CFGAN official code
def _official_uint8(pred, t8):
    """What CFGAN_main.py's ``postprocess`` gives: ``img * 127.5 + 127.5`` truncated by
    ``.int()`` (here also clipped to [0, 255], as every image that is saved), HWC."""
    p = pred.permute(0, 2, 3, 1).numpy().astype(np.float32)
    p8 = np.clip((p * np.float32(127.5) + np.float32(127.5)).astype(np.int32), 0, 255)
    return p8.astype(np.uint8), t8.permute(0, 2, 3, 1).numpy()


def test_truncating_mode_matches_skimage_uniform_ssim_on_truncated_uint8():
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    ((pred, target, t8),) = _uint8_batches([3], hw=24, seed=4)
    p8, t8 = _official_uint8(pred, t8)
    ssim_ref = np.mean(
        [
            structural_similarity(
                t8[i], p8[i], gaussian_weights=False, win_size=11, data_range=255, channel_axis=-1
            )
            for i in range(3)
        ]
    )
    psnr_ref = np.mean([peak_signal_noise_ratio(t8[i], p8[i], data_range=255) for i in range(3)])
    suite = MetricSuite(metrics=("mse", "psnr", "ssim"), quantize="truncate")
    assert suite.ssim_window == "uniform"
    suite.update(pred, target)
    res = suite.compute()
    print(
        f"ssim ours {res['ssim']:.8f} skimage {ssim_ref:.8f}; "
        f"psnr ours {res['psnr']:.6f} skimage {psnr_ref:.6f}"
    )
    assert res["ssim"] == pytest.approx(ssim_ref, abs=1e-6)
    assert res["psnr"] == pytest.approx(psnr_ref, rel=1e-6)
    mse_ref = np.mean((p8 / 255.0 - t8 / 255.0) ** 2)
    assert res["mse"] == pytest.approx(mse_ref, rel=1e-5)
    # rounding instead of truncating gives another number: the test tells the two apart
    rounded = MetricSuite(metrics=("ssim", "psnr"), quantize="round")
    rounded.update(pred, target)
    other = rounded.compute()
    print(f"rounded: ssim {other['ssim']:.8f} psnr {other['psnr']:.6f}")
    assert abs(other["psnr"] - psnr_ref) > 1e-3


def test_quantize_settings():
    from reconattack.errors import ConfigError

    assert MetricSuite(quantize=True).quantize == "round"
    assert MetricSuite(quantize=False).quantize is None
    assert MetricSuite(quantize="truncate").ssim_window == "uniform"
    with pytest.raises(ConfigError, match="quantize"):
        MetricSuite(quantize="floor")


def test_paper_metrics_config_is_the_official_ssim():
    from tests.helpers import compose_cfg

    cfg = compose_cfg(["metrics=paper"]).metrics
    assert cfg.quantize == "truncate" and cfg.ssim_window == "uniform"
