"""Pretrained weights are checked against pinned SHA-256s (utils/weights.py): a file that does not
match is never used, and the message says which file, both hashes and what to do."""

from __future__ import annotations

import re

import pytest
import torch

from reconattack.metrics import pretrained as P
from reconattack.utils import weights as W
from reconattack.utils.files import sha256_file
from reconattack.utils.weights import PINNED_SHA256, CorruptWeightsError

TORCH_HUB_FILES = {  # what the project reads from the torch hub cache, by its library's name
    "vgg19-dcbb9e9d.pth", "vgg16-397923af.pth", "alexnet-owt-7be5be79.pth",
    "weights-inception-2015-12-05-6726825d.pth", "inception_v3_google-0cc3c7bd.pth"}


def test_every_pin_is_a_sha256_and_agrees_with_the_prefix_its_library_publishes():
    """torch hub file names end in the first hex digits of the file's SHA-256 (what
    ``torch.hub``'s ``check_hash`` compares): an independent check of each pinned value."""
    assert TORCH_HUB_FILES <= set(PINNED_SHA256)
    for name, digest in PINNED_SHA256.items():
        assert re.fullmatch(r"[0-9a-f]{64}", digest), name
        if name in TORCH_HUB_FILES:
            prefix = re.search(r"-([0-9a-f]{8,})\.pth$", name).group(1)
            assert digest.startswith(prefix), name
    specs = [P.INCEPTION_WEIGHTS, P.TV_INCEPTION_WEIGHTS, P.ALEXNET_WEIGHTS]
    from reconattack.losses.perceptual import VGG_WEIGHTS

    assert all(s.sha256 for s in [*specs, *VGG_WEIGHTS.values()])  # every spec has its pin


def test_the_lpips_package_ships_the_pinned_calibration_layers():
    from pathlib import Path

    import lpips

    file = Path(lpips.__file__).parent / P.LPIPS_LINEAR
    assert sha256_file(file) == PINNED_SHA256["lpips/weights/v0.1/alex.pth"]


def test_a_file_is_hashed_once_per_process_and_again_when_it_changes(tmp_path, monkeypatch):
    f = tmp_path / "w.pth"
    f.write_bytes(b"weights")
    calls = []
    real = W.sha256_file
    monkeypatch.setattr(W, "sha256_file", lambda p: calls.append(p) or real(p))
    good = real(f)
    for _ in range(3):
        assert W.verify("test weights", f, good) == f
    assert len(calls) == 1
    f.write_bytes(b"weights, changed")  # a new version of the file: checked again, refused
    with pytest.raises(CorruptWeightsError):
        W.verify("test weights", f, good)
    assert len(calls) == 2
    assert W.verify("test weights", f, None) == f  # nothing pinned: nothing to check


def test_a_corrupted_vgg19_in_the_torch_hub_cache_is_never_used(monkeypatch):
    """The perceptual loss's VGG19 file damaged in the cache: building the loss stops with one
    message naming the file, the pinned and the found hash, and what to do."""
    import torchvision

    from reconattack.losses.perceptual import VGG19_WEIGHTS, VGGFeatures

    path = VGG19_WEIGHTS.cache_file
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(torchvision.models.vgg19().state_dict(), path)  # loads fine, but not the published file
    with pytest.raises(CorruptWeightsError) as err:
        VGGFeatures()
    msg = str(err.value)
    assert str(path) in msg and VGG19_WEIGHTS.sha256 in msg and sha256_file(path) in msg
    assert "Delete it to fetch it again" in msg and VGG19_WEIGHTS.url in msg
    # the same file named in the config is held to the same pin
    with pytest.raises(CorruptWeightsError):
        VGGFeatures(weights_path=str(path))


def test_a_download_that_does_not_match_is_not_used(monkeypatch):
    """A download (allowed) that brings other bytes than the published file's: refused."""
    monkeypatch.delenv("RECONATTACK_OFFLINE")
    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda url, dst, progress=False: open(dst, "wb").write(b"<html>proxy error</html>"))
    with pytest.raises(CorruptWeightsError, match="alexnet-owt-7be5be79.pth does not match"):
        W.resolve(P.ALEXNET_WEIGHTS, download=True)


def test_a_metric_whose_weights_do_not_match_is_reported_missing_with_the_reason():
    """LPIPS with a damaged AlexNet file: the metric is ``missing: <reason>``, never computed."""
    from reconattack.metrics.suite import MetricSuite

    path = P.ALEXNET_WEIGHTS.cache_file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not the AlexNet weights")
    suite = MetricSuite(metrics=("psnr", "lpips"))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with pytest.warns(UserWarning, match="will be reported as missing"):
        suite.update(x, x.flip(0))
    res = suite.compute()
    assert isinstance(res["psnr"], float)
    assert res["lpips"].startswith("missing: ") and "does not match its pinned SHA-256" in res["lpips"]
