"""Functional metrics against scikit-image, scikit-learn and SciPy references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import linalg
from skimage import data as skdata
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from sklearn.metrics import roc_curve

from reconattack.metrics.functional import (
    METRIC_RANGES,
    fid_from_features,
    mse,
    psnr,
    ssim,
    tpr_at_far,
)


def _pair(b=3, c=3, h=40, w=52, noise=0.15, seed=0):
    """Random images and noisy copies, (B, C, H, W) in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, c, h, w, generator=g)
    y = (x + noise * torch.randn(b, c, h, w, generator=g)).clamp(0, 1)
    return x, y


def _natural_pair():
    """Two real photographs' crops (astronaut, coffee), 1×3×64×80 in [0, 1], and a blur."""
    a = torch.from_numpy(skdata.astronaut()[100:164, 150:230].copy()).permute(2, 0, 1)
    b = torch.from_numpy(skdata.coffee()[100:164, 150:230].copy()).permute(2, 0, 1)
    x = torch.stack([a, b]).float() / 255
    y = torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    return x, y


def _np(t):
    return t.permute(1, 2, 0).numpy().astype(np.float64)


def test_mse_psnr_per_image():
    x, y = _pair()
    m = mse(x, y)
    assert m.shape == (3,)
    ref = ((x.double() - y.double()) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(m.double(), ref, rtol=1e-6, atol=0)
    p = psnr(x, y, 1.0)
    assert p.shape == (3,)
    for i in range(3):
        assert p[i].item() == pytest.approx(
            peak_signal_noise_ratio(_np(y[i]), _np(x[i]), data_range=1.0), rel=1e-5
        )
    # uint8 range with data_range 255 gives the same PSNR as [0, 1] with data_range 1
    torch.testing.assert_close(psnr(x * 255, y * 255, 255.0), p, rtol=1e-5, atol=1e-4)


def test_psnr_identical_is_inf():
    x, _ = _pair(b=2)
    assert torch.isinf(psnr(x, x, 1.0)).all()
    assert (mse(x, x) == 0).all()


@pytest.mark.parametrize("pair", [_pair, _natural_pair])
def test_ssim_gaussian_matches_skimage(pair):
    x, y = pair()
    ours = ssim(x, y, 1.0, window="gaussian")
    assert ours.shape == (x.shape[0],)
    for i in range(x.shape[0]):
        ref = structural_similarity(
            _np(x[i]),
            _np(y[i]),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
            channel_axis=-1,
        )
        assert ours[i].item() == pytest.approx(ref, abs=1e-5)


@pytest.mark.parametrize("pair", [_pair, _natural_pair])
def test_ssim_uniform_matches_skimage_uint8(pair):
    x, y = pair()
    xq, yq = (x * 255).round(), (y * 255).round()
    ours = ssim(xq, yq, 255.0, window="uniform")
    for i in range(x.shape[0]):
        ref = structural_similarity(
            xq[i].permute(1, 2, 0).numpy().astype(np.uint8),
            yq[i].permute(1, 2, 0).numpy().astype(np.uint8),
            win_size=11,
            data_range=255,
            channel_axis=-1,
        )
        assert ours[i].item() == pytest.approx(ref, abs=1e-5)


def test_ssim_single_channel_identity_and_range():
    x, y = _pair(b=2, c=1, h=11, w=11)
    assert torch.allclose(ssim(x, x, 1.0), torch.ones(2))
    v = ssim(x, 1 - x, 1.0)
    assert (v >= -1).all() and (v <= 1).all()
    ref = structural_similarity(
        x[0, 0].double().numpy(),
        y[0, 0].double().numpy(),
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1.0,
    )
    assert ssim(x, y, 1.0)[0].item() == pytest.approx(ref, abs=1e-5)


def test_ssim_rejects_small_images_and_bad_window():
    x, y = _pair(h=10, w=20)
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(x, y, 1.0)
    x, y = _pair()
    with pytest.raises(ValueError, match="window"):
        ssim(x, y, 1.0, window="box")


def _sk_tpr(scores, labels, far):
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    return tpr[fpr <= far].max()


@pytest.mark.parametrize("far", [0.0, 0.001, 0.01, 0.05, 0.1, 0.5, 1.0])
def test_tpr_at_far_random_scores(far):
    rng = np.random.default_rng(0)
    labels = rng.random(2000) < 0.5
    scores = rng.normal(size=2000) + 1.5 * labels
    assert tpr_at_far(torch.tensor(scores), torch.tensor(labels), far) == pytest.approx(
        _sk_tpr(scores, labels, far), abs=1e-12
    )


@pytest.mark.parametrize("far", [0.0, 0.01, 0.2, 0.35, 0.7])
def test_tpr_at_far_tied_scores(far):
    rng = np.random.default_rng(1)
    labels = rng.random(300) < 0.4
    scores = rng.integers(0, 6, 300).astype(np.float64) + labels  # many ties
    got = tpr_at_far(torch.tensor(scores), torch.tensor(labels), far)
    assert got == pytest.approx(_sk_tpr(scores, labels, far), abs=1e-12)


def test_tpr_at_far_ties_move_together():
    # one genuine and one impostor share the top score: accepting one accepts both (FPR 1/2)
    scores = torch.tensor([0.9, 0.9, 0.1, 0.0])
    labels = torch.tensor([True, False, True, False])
    assert tpr_at_far(scores, labels, 0.49) == 0.0  # no threshold gives TPR 1/2 at FPR 0
    assert tpr_at_far(scores, labels, 0.5) == 1.0  # threshold 0.1: TPR 2/2, FPR 1/2
    assert _sk_tpr(scores.numpy(), labels.numpy(), 0.49) == 0.0


def test_tpr_at_far_edge_cases():
    with pytest.raises(ValueError, match="impostor"):
        tpr_at_far(torch.rand(5), torch.ones(5, dtype=torch.bool))
    with pytest.raises(ValueError, match="genuine"):
        tpr_at_far(torch.rand(5), torch.zeros(5, dtype=torch.bool))
    with pytest.raises(ValueError, match="differ"):
        tpr_at_far(torch.rand(5), torch.zeros(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="NaN"):
        tpr_at_far(torch.tensor([0.1, float("nan")]), torch.tensor([True, False]))
    # perfect separation
    assert tpr_at_far(torch.tensor([0.9, 0.8, 0.2]), torch.tensor([1, 1, 0]), 0.0) == 1.0


def _fid_reference(r, f):
    """pytorch-fid's formula with scipy.linalg.sqrtm."""
    mu1, mu2 = r.mean(0), f.mean(0)
    s1, s2 = np.cov(r, rowvar=False), np.cov(f, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2)
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("n,m,d", [(200, 150, 16), (64, 80, 32)])
def test_fid_from_features_matches_scipy(n, m, d):
    rng = np.random.default_rng(d)
    mix = rng.normal(size=(d, d)) / math.sqrt(d)
    real = rng.normal(size=(n, d)) @ mix
    fake = (rng.normal(size=(m, d)) * 1.3 + 0.4) @ mix
    ours = fid_from_features(torch.tensor(real, dtype=torch.float32), torch.tensor(fake))
    assert ours == pytest.approx(
        _fid_reference(real, fake.astype(np.float32).astype(np.float64)), rel=1e-4, abs=1e-6
    )
    ours64 = fid_from_features(torch.tensor(real), torch.tensor(fake))
    assert ours64 == pytest.approx(_fid_reference(real, fake), rel=1e-8)


def test_fid_from_features_identical_and_errors():
    feats = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
    assert fid_from_features(feats, feats) == pytest.approx(0.0, abs=1e-8)
    with pytest.raises(ValueError, match="at least 2"):
        fid_from_features(feats[:1], feats)
    with pytest.raises(ValueError):
        fid_from_features(feats, feats[:, :4])


def test_metric_ranges_documented():
    for name in ("mse", "psnr", "ssim", "fid", "fid_n", "kid", "kid_std", "kid_n", "fid_cfgan",
                 "fid_cfgan_n", "lpips", "clip", "tpr@far"):
        r = METRIC_RANGES[name]
        assert r.low < r.high and r.note
    assert METRIC_RANGES["psnr"].higher_is_better and not METRIC_RANGES["fid"].higher_is_better
    assert METRIC_RANGES["ssim"].low == -1 and METRIC_RANGES["psnr"].high == math.inf
