"""MetricSuite and the ReconstructionMetrics callback, with small injected feature networks."""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from reconattack.metrics import functional as MF
from reconattack.metrics import pretrained
from reconattack.metrics.callback import ReconstructionMetrics
from reconattack.metrics.suite import MetricSuite


# ------------------------------------------------------------------ small injected networks
class TinyFeatures(nn.Module):
    """FID stand-in: (B, 3, H, W) in [0, 1] → (B, 6)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.conv = nn.Conv2d(3, 6, 3)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(6, 3, 3, 3, generator=g))
            self.conv.bias.zero_()

    def forward(self, x):
        return self.conv(x).relu().mean(dim=(2, 3))


class L1Distance(nn.Module):
    """LPIPS stand-in: (x, y) in [-1, 1] → (B,)."""

    def forward(self, x, y):
        return (x - y).abs().flatten(1).mean(1)


class PoolEmbed(nn.Module):
    """CLIP stand-in: (B, 3, H, W) in [0, 1] → (B, D) (not normalised)."""

    def forward(self, x):
        return F.avg_pool2d(x - 0.4, 4).flatten(1)


def feature_nets():
    return {"fid": TinyFeatures(), "lpips": L1Distance(), "clip": PoolEmbed()}


def _images(n, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(n, 3, size, size, generator=g) * 2 - 1
    pred = (target + 0.3 * torch.randn(n, 3, size, size, generator=g)).clamp(-1.2, 1.2)
    return pred, target


def _reference(preds, targets):
    """Direct computation with the functional forms (non-quantised mode)."""
    x = (torch.cat(preds).clamp(-1, 1) + 1) / 2
    y = (torch.cat(targets).clamp(-1, 1) + 1) / 2
    nets = feature_nets()
    return {
        "mse": MF.mse(x, y).double().mean().item(),
        "psnr": MF.psnr(x, y, 1.0).double().mean().item(),
        "ssim": MF.ssim(x, y, 1.0).double().mean().item(),
        "fid": MF.fid_from_features(nets["fid"](y), nets["fid"](x)),
        "fid_n": x.shape[0],
        "kid": MF.kid_from_features(nets["fid"](y), nets["fid"](x))[0],
        "kid_n": x.shape[0],
        "lpips": nets["lpips"](x * 2 - 1, y * 2 - 1).double().mean().item(),
        "clip": F.cosine_similarity(nets["clip"](x), nets["clip"](y)).double().mean().item(),
    }


def _assert_results(got, ref, prefix=""):
    for k, v in ref.items():
        assert got[prefix + k] == pytest.approx(v, rel=1e-5, abs=1e-6), k


# ----------------------------------------------------------------------------- MetricSuite
def test_suite_matches_functional():
    suite = MetricSuite(feature_nets=feature_nets())
    batches = [_images(4, seed=s) for s in range(3)]
    for pred, target in batches:
        suite.update(pred, target)
    res = suite.compute()
    assert list(res) == [
        "mse",
        "psnr",
        "ssim",
        "fid",
        "fid_n",
        "kid",
        "kid_std",
        "kid_n",
        "lpips",
        "clip",
    ]
    assert res["fid_n"] == res["kid_n"] == 12
    _assert_results(res, _reference([b[0] for b in batches], [b[1] for b in batches]))
    assert "tpr@far" not in res


def test_suite_quantized_paper_mode_matches_skimage_uint8():
    suite = MetricSuite(metrics=("mse", "psnr", "ssim"), quantize=True)
    assert suite.ssim_window == "uniform"
    pred, target = _images(3, size=24)
    suite.update(pred, target)
    res = suite.compute()

    def u8(t):
        return ((t.clamp(-1, 1) + 1) / 2 * 255).round().permute(0, 2, 3, 1).numpy().astype(np.uint8)

    p8, t8 = u8(pred), u8(target)
    ssim_ref = np.mean(
        [
            structural_similarity(t8[i], p8[i], win_size=11, data_range=255, channel_axis=-1)
            for i in range(3)
        ]
    )
    psnr_ref = np.mean([peak_signal_noise_ratio(t8[i], p8[i], data_range=255) for i in range(3)])
    mse_ref = np.mean([((p8[i] / 255.0 - t8[i] / 255.0) ** 2).mean() for i in range(3)])
    assert res["ssim"] == pytest.approx(ssim_ref, abs=1e-5)
    assert res["psnr"] == pytest.approx(psnr_ref, rel=1e-5)
    assert res["mse"] == pytest.approx(mse_ref, rel=1e-5)


def test_suite_reports_missing_weights_once(monkeypatch, tmp_path):
    calls = []
    for name in ("load_fid_inception", "load_lpips", "load_clip"):
        orig = getattr(pretrained, name)

        def spy(*args, _orig=orig, _name=name, **kwargs):
            calls.append(_name)
            return _orig(*args, **kwargs)

        monkeypatch.setattr(pretrained, name, spy)
    absent = {m: str(tmp_path / f"absent_{m}.pth") for m in ("fid", "lpips", "clip")}
    suite = MetricSuite(metrics=("psnr", "fid", "kid", "lpips", "clip"), weights=absent)
    with pytest.warns(UserWarning, match="missing"):
        suite.update(*_images(2))
    suite.update(*_images(2, seed=1))
    res = suite.compute()
    assert isinstance(res["psnr"], float)
    for m in ("fid", "lpips", "clip"):
        assert isinstance(res[m], str) and res[m].startswith("missing: ")
        assert absent[m] in res[m]
    assert res["kid"] == res["fid"]  # the same Inception, the same reason
    assert "fid_n" not in res and "kid_n" not in res
    # loaded lazily, once (one Inception for FID and KID)
    assert sorted(calls) == ["load_clip", "load_fid_inception", "load_lpips"]
    suite.reset()
    suite.update(*_images(2))
    assert sorted(calls) == ["load_clip", "load_fid_inception", "load_lpips"]
    assert suite.compute()["lpips"].startswith("missing: ")


def test_suite_missing_from_empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    suite = MetricSuite(metrics=("mse", "fid", "lpips"), download=True)  # offline in tests
    with pytest.warns(UserWarning):
        suite.update(*_images(2))
    res = suite.compute()
    assert "weights-inception-2015-12-05-6726825d.pth" in res["fid"]
    assert "alexnet-owt-7be5be79.pth" in res["lpips"]


def to01(t):
    return (t.clamp(-1, 1) + 1) / 2


def test_suite_fid_real_statistics_kept_across_reset():
    nets = feature_nets()
    (p1, t1), (p2, t2) = _images(6, seed=1), _images(6, seed=2)
    f = TinyFeatures()

    keep = MetricSuite(metrics=("mse", "fid"), feature_nets={"fid": nets["fid"]})
    keep.update(p1, t1)
    assert keep.compute()["fid"] == pytest.approx(MF.fid_from_features(f(to01(t1)), f(to01(p1))))
    keep.reset()
    keep.update(p2, t2)
    res = keep.compute()
    assert res["fid"] == pytest.approx(MF.fid_from_features(f(to01(t1)), f(to01(p2))))
    assert res["mse"] == pytest.approx(MF.mse(to01(p2), to01(t2)).double().mean().item())

    fresh = MetricSuite(
        metrics=("fid",), feature_nets={"fid": TinyFeatures()}, reset_real_features=True
    )
    fresh.update(p1, t1)
    fresh.compute()
    fresh.reset()
    fresh.update(p2, t2)
    assert fresh.compute()["fid"] == pytest.approx(MF.fid_from_features(f(to01(t2)), f(to01(p2))))


def test_suite_verification_and_edge_cases():
    suite = MetricSuite(metrics=("psnr",), far=0.1)
    assert suite.compute() == {}
    g = torch.Generator().manual_seed(0)
    labels = torch.rand(200, generator=g) < 0.5
    scores = torch.randn(200, generator=g) + labels
    suite.update_verification(scores[:120], labels[:120])
    suite.update_verification(scores[120:], labels[120:])
    res = suite.compute()
    assert res["tpr@far"] == MF.tpr_at_far(scores, labels, 0.1) == res["tpr@far=0.1"]
    n_imp = int((~labels).sum())
    assert res["pairs/impostor"] == n_imp and res["pairs/genuine"] == 200 - n_imp and res["min_far"] == 1 / n_imp
    assert n_imp == 91  # fewer than 100 impostor pairs: FAR 0.01 and 0.001 are not extrapolated
    assert res["tpr@far=0.01"].startswith("missing: ") and res["tpr@far=0.001"].startswith("missing: ")
    suite.reset()
    suite.update_verification(torch.rand(4), torch.ones(4, dtype=torch.bool))
    assert suite.compute()["tpr@far"].startswith("missing: ")

    tiny = MetricSuite(metrics=("psnr", "ssim"))
    tiny.update(*_images(2, size=8))  # smaller than the SSIM window
    res = tiny.compute()
    assert isinstance(res["psnr"], float) and res["ssim"].startswith("missing: ")

    with pytest.raises(ValueError, match="unknown metrics"):
        MetricSuite(metrics=("psnr", "bleu"))
    with pytest.raises(ValueError, match="ssim_window"):
        MetricSuite(ssim_window="box")
    with pytest.raises(ValueError, match="shapes"):
        MetricSuite(metrics=("psnr",)).update(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 8, 8))


def _ddp_worker(rank, world, init_file, out_dir):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        pred, target = _images(10, seed=5)
        labels = torch.arange(10) % 2 == 0
        scores = torch.linspace(0, 1, 10)
        suite = MetricSuite(feature_nets=feature_nets())
        shard = slice(rank * 6, min(10, rank * 6 + 6))  # uneven: 6 and 4 images
        suite.update(pred[shard], target[shard])
        suite.update_verification(scores[shard], labels[shard])
        torch.save(suite.compute(), f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes import the stack again (~25 s on 2 cores)
def test_suite_gathers_across_processes(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    pred, target = _images(10, seed=5)
    ref = _reference([pred], [target])
    ref["tpr@far"] = MF.tpr_at_far(torch.linspace(0, 1, 10), torch.arange(10) % 2 == 0)
    for rank in range(2):
        _assert_results(torch.load(tmp_path / f"rank{rank}.pt"), ref)


# ------------------------------------------------------------------------------- callback
class TinyModule(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.seen_val = 0

    def forward(self, x):
        return torch.tanh(self.conv(x))

    def training_step(self, batch, batch_idx):
        (x,) = batch
        return F.l1_loss(self(x), x)

    def validation_step(self, batch, batch_idx):
        (x,) = batch
        return {"pred": self(x).detach(), "target": x}

    def test_step(self, batch, batch_idx):
        (x,) = batch
        pred = self(x).detach()
        return {
            "pred": pred,
            "target": x,
            "scores": F.cosine_similarity(pred.flatten(1), x.flatten(1)),
            "is_same": torch.arange(x.shape[0]) % 2 == 0,
        }

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def _loader(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(torch.rand(n, 3, 16, 16, generator=g) * 2 - 1), batch_size=4)


def _trainer(callback, **kw):
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
        **kw,
    )


def test_callback_logs_global_values(monkeypatch):
    torch.manual_seed(0)
    cb = ReconstructionMetrics(feature_nets=feature_nets())
    n_updates = {"val": 0}
    orig = cb.suites["val"].update

    def counting(*a, **k):
        n_updates["val"] += 1
        return orig(*a, **k)

    monkeypatch.setattr(cb.suites["val"], "update", counting)
    model = TinyModule()
    trainer = _trainer(cb, limit_train_batches=2, limit_val_batches=3, num_sanity_val_steps=2)
    trainer.fit(model, _loader(), _loader(seed=1))
    assert n_updates["val"] == 3  # sanity-check batches skipped

    model.eval()
    batches = [b[0] for b in list(_loader(seed=1))[:3]]
    with torch.no_grad():
        ref = _reference([model(x) for x in batches], batches)
    _assert_results(cb.results["val"], ref, prefix="val/")
    for k, v in ref.items():
        assert trainer.callback_metrics[f"val/{k}"].item() == pytest.approx(v, rel=1e-5, abs=1e-5)

    trainer.test(model, _loader(seed=2), verbose=False)
    res = cb.results["test"]
    x = torch.cat([b[0] for b in _loader(seed=2)])
    with torch.no_grad():
        pred = model(x)
    scores = F.cosine_similarity(pred.flatten(1), x.flatten(1))
    is_same = torch.cat([torch.arange(4) % 2 == 0] * 6)
    assert res["test/tpr@far"] == pytest.approx(MF.tpr_at_far(scores, is_same))
    _assert_results(res, _reference([pred], [x]), prefix="test/")
    assert set(cb.flat_results()) == set(cb.results["val"]) | set(res)


def test_callback_keeps_missing_strings_out_of_the_logger(tmp_path):
    cb = ReconstructionMetrics(
        stages=("test",), metrics=("psnr", "lpips"), weights={"lpips": str(tmp_path / "absent.pth")}
    )
    trainer = _trainer(cb, limit_test_batches=2)
    with pytest.warns(UserWarning, match="missing"):
        trainer.test(TinyModule(), _loader(), verbose=False)
    assert cb.results["test"]["test/lpips"].startswith("missing: ")
    assert "test/psnr" in trainer.callback_metrics
    assert "test/lpips" not in trainer.callback_metrics


def test_callback_ignores_steps_without_outputs():
    class Silent(TinyModule):
        def test_step(self, batch, batch_idx):
            return None

    cb = ReconstructionMetrics(metrics=("psnr",))
    _trainer(cb, limit_test_batches=2).test(Silent(), _loader(), verbose=False)
    assert cb.results["test"] == {}
    with pytest.raises(ValueError, match="unknown stages"):
        ReconstructionMetrics(stages=("train",))
