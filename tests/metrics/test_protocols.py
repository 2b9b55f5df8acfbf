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


# ------------------------------------------------------------- FID of the CFGAN official code
def _official_saved_fakes(pred, jpeg=True):
    """The reconstructions as utils/FID.py reads them back: CFGAN_main.py writes
    ``(img * 127.5 + 127.5).int()`` with ``cv2.imwrite('Io_%06d.jpg')`` (saturated to uint8,
    OpenCV's default JPEG quality) and FID.py reads them with ``cv2.imread``; RGB, (B, 3, H, W)
    in [0, 1]."""
    import cv2

    p8, _ = _official_uint8(pred, torch.zeros(1, 3, 1, 1, dtype=torch.uint8))
    out = []
    for img in p8:
        bgr = np.ascontiguousarray(img[..., ::-1])
        if jpeg:
            ok, buf = cv2.imencode(".jpg", bgr)  # cv2.imwrite's defaults
            assert ok
            bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
        out.append(bgr[..., ::-1].astype(np.float32) / 255)
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)


def _cfgan_suite(net, **kw):
    return MetricSuite(metrics=("psnr", "fid_cfgan"), feature_nets={"fid_cfgan": net}, **kw)


def test_cfgan_fid_takes_the_first_99_images_as_the_official_code_saves_them():
    net = RandomFeatures(seed=5)
    batches = _uint8_batches([40, 40, 40, 30], seed=6)
    # images after the 99th are very different: they would show in the FID if counted
    batches[2][0][19:] = 1.0
    batches[3][0][:] = -1.0
    suite = _cfgan_suite(net)
    for pred, target, _ in batches:
        suite.update(pred, target)
    res = suite.compute()
    assert list(res) == ["psnr", "fid_cfgan", "fid_cfgan_n"]
    assert res["fid_cfgan_n"] == 99
    pred = torch.cat([b[0] for b in batches])[:99]
    t8 = torch.cat([b[2] for b in batches])[:99]
    real = _feats(net, t8.float() / 255)
    ref = fid_np(real, _feats(net, _official_saved_fakes(pred)))
    all150 = fid_np(
        _feats(net, torch.cat([b[2] for b in batches]).float() / 255),
        _feats(net, _official_saved_fakes(torch.cat([b[0] for b in batches]))),
    )
    no_jpeg = fid_np(real, _feats(net, _official_saved_fakes(pred, jpeg=False)))
    print(
        f"fid_cfgan ours {res['fid_cfgan']:.10f} scipy {ref:.10f} "
        f"(all 150 images: {all150:.6f}; without the JPEG step: {no_jpeg:.6f})"
    )
    assert res["fid_cfgan"] == pytest.approx(ref, rel=1e-6)
    assert abs(all150 - ref) > 0.1 * ref and abs(no_jpeg - ref) > 1e-4 * ref

    plain = _cfgan_suite(net, fid_cfgan={"images": 99, "jpeg_quality": None})
    for pred, target, _ in batches:
        plain.update(pred, target)
    assert plain.compute()["fid_cfgan"] == pytest.approx(no_jpeg, rel=1e-6)


def test_cfgan_fid_on_a_smaller_set_uses_all_of_it():
    net = RandomFeatures(seed=5)
    batches = _uint8_batches([7, 5], seed=7)
    suite = _cfgan_suite(net, fid_cfgan={"images": 99, "jpeg_quality": 95})
    for pred, target, _ in batches:
        suite.update(pred, target)
    res = suite.compute()
    pred = torch.cat([b[0] for b in batches])
    t8 = torch.cat([b[2] for b in batches])
    ref = fid_np(_feats(net, t8.float() / 255), _feats(net, _official_saved_fakes(pred)))
    assert res["fid_cfgan_n"] == 12
    assert res["fid_cfgan"] == pytest.approx(ref, rel=1e-6)
    # the real side is that of the first epoch (reset_real_features=False)
    suite.reset()
    for pred, target, _ in batches:
        suite.update(pred, target.flip(0))
    assert suite.compute()["fid_cfgan"] == pytest.approx(ref, rel=1e-6)


def test_cfgan_fid_settings_are_checked():
    from reconattack.errors import ConfigError

    with pytest.raises(ConfigError, match="fid_cfgan"):
        MetricSuite(fid_cfgan={"images": 1, "jpeg_quality": 95})
    with pytest.raises(ConfigError, match="fid_cfgan"):
        MetricSuite(fid_cfgan={"images": 99, "jpeg_quality": 101})
    with pytest.raises(ConfigError, match="fid_cfgan"):
        MetricSuite(fid_cfgan={"first": 99})


def test_cfgan_fid_without_weights_is_missing_offline():
    suite = MetricSuite(metrics=("ssim", "fid_cfgan"))  # empty torch hub cache, offline
    with pytest.warns(UserWarning, match="fid_cfgan"):
        suite.update(*_uint8_batches([2])[0][:2])
    res = suite.compute()
    assert isinstance(res["ssim"], float)
    assert res["fid_cfgan"].startswith("missing: ")
    assert "inception_v3_google-0cc3c7bd.pth" in res["fid_cfgan"]
    assert "fid_cfgan_n" not in res


def test_cfgan_paper_config_composes():
    import hydra

    from tests.helpers import compose_cfg

    cfg = compose_cfg(["metrics=cfgan_paper"]).metrics
    assert list(cfg.metrics) == ["mse", "psnr", "ssim", "fid", "kid", "fid_cfgan", "lpips", "clip"]
    assert cfg.quantize == "truncate" and cfg.ssim_window == "uniform"  # metrics=paper's SSIM
    assert cfg.fid_cfgan.images == 99 and cfg.fid_cfgan.jpeg_quality == 95
    assert cfg.weights.fid_cfgan is None
    cb = hydra.utils.instantiate(cfg, stages=("test",))
    suite = cb.suites["test"]
    assert suite.quantize == "truncate" and suite.fid_cfgan == {"images": 99, "jpeg_quality": 95}


def test_default_experiment_with_cfgan_paper_metrics_reports_the_keys(tmp_path):
    import json

    from reconattack.run import run
    from tests.helpers import compose_cfg, experiment_overrides

    cfg = compose_cfg(
        [
            *experiment_overrides(None, tmp_path, extra=["metrics=cfgan_paper"]),
            "+trainer.fast_dev_run=1",
        ]
    )
    with pytest.warns(UserWarning, match="missing"):
        metrics = run(cfg)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved.keys() == metrics.keys()
    for key in ("test/mse", "test/psnr", "test/ssim"):
        assert isinstance(saved[key], float), key
    for key in ("test/fid", "test/kid", "test/fid_cfgan", "test/lpips", "test/clip"):
        assert saved[key].startswith("missing: "), key  # offline: no weights
    assert "weights-inception-2015-12-05-6726825d.pth" in saved["test/kid"]
    assert "inception_v3_google-0cc3c7bd.pth" in saved["test/fid_cfgan"]
    assert not {"test/fid_n", "test/kid_n", "test/fid_cfgan_n"} & saved.keys()


# ------------------------------------------------------------------------ across processes
_DDP_SETTINGS = {"fid_cfgan": {"images": 7, "jpeg_quality": 95}}


def _ddp_suite():
    return MetricSuite(
        metrics=("fid", "kid", "fid_cfgan"),
        feature_nets={"fid": RandomFeatures(), "fid_cfgan": RandomFeatures(seed=5)},
        **_DDP_SETTINGS,
    )


def _ddp_first_images_worker(rank, world, init_file, out_dir):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        ((pred, target, _),) = _uint8_batches([10], seed=8)
        mine = torch.arange(rank, 10, world)  # a DistributedSampler's share, in its order
        suite = _ddp_suite()
        for chunk in mine.split(2):
            suite.update(pred[chunk], target[chunk])
        torch.save(suite.compute(), f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes import the stack again (~25 s on 2 cores)
def test_counts_kid_and_the_first_images_across_processes(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_first_images_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    ((pred, target, _),) = _uint8_batches([10], seed=8)
    one = _ddp_suite()
    for chunk in torch.arange(10).split(3):
        one.update(pred[chunk], target[chunk])
    ref = one.compute()
    assert ref["fid_n"] == ref["kid_n"] == 10 and ref["fid_cfgan_n"] == 7
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got.keys() == ref.keys()
        for key, value in ref.items():
            assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-9), (rank, key)
