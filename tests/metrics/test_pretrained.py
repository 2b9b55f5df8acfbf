"""Loading code of the metric networks (SPEC §5): local cache, local file, missing, offline.

Every test blocks the network and records attempts; the weights saved here are random state
dicts in each library's own format, placed where the library's cache would keep them.
"""

from __future__ import annotations

import socket
import time
import urllib.request
import warnings

import pytest
import torch

from reconattack.metrics import pretrained as P
from reconattack.utils.weights import MissingWeightsError
from tests.helpers import trust_weights

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"


@pytest.fixture
def net_calls(monkeypatch, tmp_path):
    """Block and record every network entry point; private TORCH_HOME, offline by default."""
    calls: list[str] = []

    def blocker(name):
        def _f(*args, **kwargs):
            calls.append(name)
            raise OSError(f"network access attempted in a test ({name})")

        return _f

    import torch_fidelity.feature_extractor_inceptionv3 as tf_inception

    monkeypatch.setattr(socket, "getaddrinfo", blocker("getaddrinfo"))
    monkeypatch.setattr(socket, "create_connection", blocker("create_connection"))
    monkeypatch.setattr(socket.socket, "connect", lambda self, *a, **k: blocker("connect")())
    monkeypatch.setattr(urllib.request, "urlopen", blocker("urlopen"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", blocker("download_url_to_file"))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", blocker("load_state_dict_from_url"))
    monkeypatch.setattr(tf_inception, "load_state_dict_from_url", blocker("torch_fidelity"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("RECONATTACK_OFFLINE", "1")
    return calls


def _hub_file(name):
    d = P.INCEPTION_WEIGHTS.cache_file.parent
    d.mkdir(parents=True, exist_ok=True)
    return d / name


def _assert_same_state(module_state, saved, rename=lambda k: k):
    for key, value in module_state.items():
        assert torch.equal(value.cpu(), saved[rename(key)]), key


# ---------------------------------------------------------------------------------- LPIPS
def test_lpips_missing_names_the_cache_file(net_calls):
    t = time.perf_counter()
    with pytest.raises(MissingWeightsError) as err:
        P.load_lpips()
    msg = str(err.value)
    assert str(_hub_file(ALEXNET_FILE)) in msg and P.ALEXNET_URL in msg
    assert net_calls == []
    assert time.perf_counter() - t < 30  # fails at once, no retry loop (generous for slow CI)


def test_lpips_loads_torchvision_alexnet_from_hub_cache(net_calls, monkeypatch):
    import lpips
    import torchvision

    torch.manual_seed(0)
    saved = torchvision.models.alexnet().state_dict()  # torchvision's format, random weights
    torch.save(saved, _hub_file(ALEXNET_FILE))
    trust_weights(monkeypatch, _hub_file(ALEXNET_FILE))
    dist = P.load_lpips()
    assert net_calls == []

    # trunk = the saved weights: net.slice{k}.{i}.* <- features.{i}.*
    _assert_same_state(dist.net.net.state_dict(), saved, lambda k: "features." + k.split(".", 1)[1])
    # linear layers = the ones shipped inside the lpips package
    with warnings.catch_warnings():  # lpips uses torchvision's deprecated `pretrained`
        warnings.simplefilter("ignore")
        ref = lpips.LPIPS(net="alex", version="0.1", pretrained=True, pnet_rand=True, verbose=False)
    for i in range(5):
        assert torch.equal(
            getattr(dist.net, f"lin{i}").model[1].weight, getattr(ref, f"lin{i}").model[1].weight
        )
    assert not any(p.requires_grad for p in dist.parameters())

    x = torch.rand(3, 3, 40, 40) * 2 - 1
    d = dist(x, x.flip(0))
    assert d.shape == (3,) and (d >= 0).all()
    assert dist(x, x).abs().max() < 1e-6
    # images below AlexNet's minimum size are upsampled, not rejected
    assert dist(x[:, :, :16, :16], x.flip(0)[:, :, :16, :16]).shape == (3,)


def test_lpips_local_file_and_bad_files(net_calls, tmp_path, monkeypatch):
    import torchvision

    saved = torchvision.models.alexnet().features.state_dict()
    saved = {f"features.{k}": v for k, v in saved.items()}
    local = tmp_path / "my_alexnet.pth"
    torch.save(saved, local)
    trust_weights(monkeypatch, local, ALEXNET_FILE)  # a file named in the config: the same pin
    dist = P.load_lpips(path=local)
    assert torch.equal(dist.net.net.slice5._modules["10"].weight, saved["features.10.weight"])

    with pytest.raises(MissingWeightsError, match="does not exist") as err:
        P.load_lpips(path=tmp_path / "absent.pth")
    assert str(tmp_path / "absent.pth") in str(err.value)

    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "wrong.pth")
    trust_weights(monkeypatch, tmp_path / "wrong.pth", ALEXNET_FILE)
    with pytest.raises(MissingWeightsError, match="not a torchvision AlexNet"):
        P.load_lpips(path=tmp_path / "wrong.pth")
    assert net_calls == []


# ------------------------------------------------------------------------------------ FID
def test_fid_missing_names_the_cache_file(net_calls):
    t = time.perf_counter()
    with pytest.raises(MissingWeightsError) as err:
        P.load_fid()
    assert str(_hub_file(INCEPTION_FILE)) in str(err.value)
    assert P.INCEPTION_URL in str(err.value)
    assert net_calls == []
    assert time.perf_counter() - t < 30


def test_fid_download_failure_is_missing_not_a_crash(net_calls, monkeypatch):
    monkeypatch.delenv("RECONATTACK_OFFLINE")
    with pytest.raises(MissingWeightsError, match="download") as err:
        P.load_fid(download=True)
    assert str(_hub_file(INCEPTION_FILE)) in str(err.value)
    assert net_calls == ["download_url_to_file"]  # one attempt, through our resolver only
    assert not _hub_file(INCEPTION_FILE).exists()


def _random_inception_state():
    """A torch-fidelity Inception state dict with random weights (no download)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class _Random(FeatureExtractorInceptionV3):
        def load_state_dict(self, *args, **kwargs):  # keep the random init
            return None

    import torch_fidelity.feature_extractor_inceptionv3 as tf_inception

    orig = tf_inception.load_state_dict_from_url
    tf_inception.load_state_dict_from_url = lambda *a, **k: {}
    try:
        torch.manual_seed(0)
        net = _Random("inception-v3-compat", ["2048"])
    finally:
        tf_inception.load_state_dict_from_url = orig
    return {k: v.clone() for k, v in net.state_dict().items()}


def test_fid_loads_torch_fidelity_inception_from_hub_cache(net_calls, monkeypatch):
    saved = _random_inception_state()
    torch.save(saved, _hub_file(INCEPTION_FILE))
    trust_weights(monkeypatch, _hub_file(INCEPTION_FILE))
    fid = P.load_fid()
    assert net_calls == []
    _assert_same_state(fid.inception.state_dict(), saved)
    assert fid.reset_real_features is False
    imgs = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    fid.update(imgs, real=True)
    assert fid.real_features_sum.shape == (2048,)
    assert int(fid.real_features_num_samples) == 2


def test_fid_rejects_a_foreign_file(net_calls, tmp_path, monkeypatch):
    from reconattack.utils.weights import CorruptWeightsError

    torch.save({"weight": torch.zeros(2)}, tmp_path / "foreign.pth")
    with pytest.raises(CorruptWeightsError, match="does not match its pinned SHA-256"):
        P.load_fid(path=tmp_path / "foreign.pth")
    trust_weights(monkeypatch, tmp_path / "foreign.pth", INCEPTION_FILE)  # past the hash: its keys
    with pytest.raises(MissingWeightsError, match="not a torch-fidelity Inception"):
        P.load_fid(path=tmp_path / "foreign.pth")
    with pytest.raises(MissingWeightsError, match="does not exist"):
        P.load_fid(path=tmp_path / "absent.pth")
    assert net_calls == []


# ----------------------------------------------------------------------------------- CLIP
TINY = "tiny-test-clip"
TINY_REPO = "test-org/tiny-clip"


@pytest.fixture
def tiny_clip(monkeypatch):
    """Register a tiny open_clip architecture and a pretrained tag on the HF Hub (fake)."""
    from open_clip import factory
    from open_clip import pretrained as oc_pretrained

    cfg = {
        "embed_dim": 16,
        "vision_cfg": {
            "image_size": 32,
            "layers": 1,
            "width": 32,
            "patch_size": 16,
            "head_width": 16,
        },
        "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 1, "layers": 1},
    }
    monkeypatch.setitem(factory._MODEL_CONFIGS, TINY, cfg)
    tag = oc_pretrained._pcfg(hf_hub=f"{TINY_REPO}/", mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    monkeypatch.setitem(oc_pretrained._PRETRAINED, TINY, {"tag": tag})
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model(TINY)
    return {k: v.clone().contiguous() for k, v in model.state_dict().items()}


def _fake_hf_cache(root, repo, filename, state, save=None):
    """The huggingface_hub cache layout: models--org--name/{refs/main, blobs/<sha256>,
    snapshots/<rev>/file -> ../../blobs/<sha256>} (an LFS file's blob is named by its SHA-256).
    ``save(state, path)`` writes the file (default: safetensors)."""
    from safetensors.torch import save_file

    from reconattack.utils.files import sha256_file

    rev = "0123456789abcdef0123456789abcdef01234567"
    base = root / ("models--" + repo.replace("/", "--"))
    (base / "refs").mkdir(parents=True, exist_ok=True)
    (base / "refs" / "main").write_text(rev)
    (base / "snapshots" / rev).mkdir(parents=True, exist_ok=True)
    (base / "blobs").mkdir(exist_ok=True)
    tmp = base / "blobs" / "incoming"
    (save or (lambda st, path: save_file(st, str(path))))(state, tmp)
    blob = tmp.rename(base / "blobs" / sha256_file(tmp))
    (base / "snapshots" / rev / filename).symlink_to(f"../../blobs/{blob.name}")
    return blob


def test_clip_missing_names_file_and_cache(net_calls, tmp_path):
    t = time.perf_counter()
    with pytest.raises(MissingWeightsError) as err:
        P.load_clip(cache_dir=tmp_path / "hf")
    msg = str(err.value)
    assert "laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in msg
    assert "open_clip_model.safetensors" in msg and str(tmp_path / "hf") in msg
    assert net_calls == []
    assert time.perf_counter() - t < 30


def test_clip_unreachable_hub_fails_fast(net_calls, tmp_path, monkeypatch, tiny_clip):
    from huggingface_hub import constants

    monkeypatch.delenv("RECONATTACK_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    t = time.perf_counter()
    with pytest.raises(MissingWeightsError, match="not reachable"):
        P.load_clip(model_name=TINY, pretrained="tag", cache_dir=tmp_path / "hf")
    assert net_calls  # one metadata request, blocked
    assert time.perf_counter() - t < 30  # huggingface_hub alone would retry for ~25 s per file


def test_clip_loads_from_hf_cache(net_calls, tmp_path, tiny_clip):
    _fake_hf_cache(tmp_path / "hf", TINY_REPO, "open_clip_model.safetensors", tiny_clip)
    enc = P.load_clip(model_name=TINY, pretrained="tag", cache_dir=tmp_path / "hf")
    assert net_calls == []
    _assert_same_state(enc.visual.state_dict(), tiny_clip, lambda k: "visual." + k)
    assert enc.size == (32, 32)
    torch.testing.assert_close(enc.mean.flatten(), torch.tensor([0.5, 0.4, 0.3]))
    torch.testing.assert_close(enc.std.flatten(), torch.tensor([0.2, 0.25, 0.3]))
    emb = enc(torch.rand(2, 3, 40, 48))
    assert emb.shape == (2, 16)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2))


def test_clip_loads_pytorch_bin_fallback(net_calls, tmp_path, tiny_clip):
    _fake_hf_cache(tmp_path / "hf", TINY_REPO, "open_clip_pytorch_model.bin", tiny_clip, torch.save)
    # only the .bin name (torch pickle): open_clip's fallback name
    enc = P.load_clip(model_name=TINY, pretrained="tag", cache_dir=tmp_path / "hf")
    _assert_same_state(enc.visual.state_dict(), tiny_clip, lambda k: "visual." + k)
    assert net_calls == []


def test_clip_local_file(net_calls, tmp_path, tiny_clip):
    torch.save(tiny_clip, tmp_path / "clip.pt")
    with pytest.warns(P.UnverifiedWeightsWarning, match="no pinned SHA-256"):  # a tag without pins
        enc = P.load_clip(path=tmp_path / "clip.pt", model_name=TINY, pretrained="tag")
    _assert_same_state(enc.visual.state_dict(), tiny_clip, lambda k: "visual." + k)
    with pytest.raises(MissingWeightsError, match="does not exist"):
        P.load_clip(path=tmp_path / "absent.pt", model_name=TINY)
    with pytest.raises(ValueError, match="unknown open_clip pretrained tag"):
        P.load_clip(model_name=TINY, pretrained="nope", cache_dir=tmp_path)
    assert net_calls == []


def test_clip_file_that_does_not_match_its_hash_is_never_used(net_calls, tmp_path, tiny_clip, monkeypatch):
    """A blob of the Hugging Face cache whose bytes are not its name (the hub's SHA-256), and a
    pinned tag's file (cached or named in the config) that is not the pinned one: refused, the
    message naming the file, both hashes and what to do."""
    from reconattack.utils.files import sha256_file
    from reconattack.utils.weights import PINNED_SHA256, CorruptWeightsError

    blob = _fake_hf_cache(tmp_path / "hf", TINY_REPO, "open_clip_model.safetensors", tiny_clip)
    with open(blob, "r+b") as fh:  # one byte of the tensor data flipped: a damaged download
        fh.seek(-1, 2)
        last = fh.read(1)
        fh.seek(-1, 2)
        fh.write(bytes([last[0] ^ 0xFF]))
    with pytest.raises(CorruptWeightsError) as err:
        P.load_clip(model_name=TINY, pretrained="tag", cache_dir=tmp_path / "hf")
    msg = str(err.value)
    assert str(blob.parent.parent) in msg and blob.name in msg and sha256_file(blob) in msg
    assert "Delete it to fetch it again" in msg and "place the right file" in msg
    # a pinned tag: the cached file and a file named in the config are held to the pin
    monkeypatch.setitem(PINNED_SHA256, f"{TINY_REPO}/open_clip_model.safetensors", "0" * 64)
    good = _fake_hf_cache(tmp_path / "hf2", TINY_REPO, "open_clip_model.safetensors", tiny_clip)
    with pytest.raises(CorruptWeightsError, match="expected 0{64}, found " + good.name):
        P.load_clip(model_name=TINY, pretrained="tag", cache_dir=tmp_path / "hf2")
    torch.save(tiny_clip, tmp_path / "clip.pt")
    with pytest.raises(CorruptWeightsError, match="clip.pt does not match its pinned SHA-256"):
        P.load_clip(path=tmp_path / "clip.pt", model_name=TINY, pretrained="tag")
    assert net_calls == []


def test_clip_preprocessing_matches_open_clip_transform():
    import open_clip
    from PIL import Image
    from skimage import data

    img = data.astronaut()[::2, ::2][:200, :256]  # 200×256, not square
    ref = open_clip.image_transform(224, is_train=False)(Image.fromarray(img))
    enc = P.ClipImageEncoder(torch.nn.Identity())
    ours = enc.preprocess(torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255)[0]
    assert ours.shape == ref.shape == (3, 224, 224)
    # PIL's and torch's antialiased bicubic differ slightly; normalised units (σ ≈ 0.27)
    assert (ours - ref).abs().mean() < 0.01


def test_suite_uses_the_cached_inception_once_for_fid_and_kid(net_calls, monkeypatch):
    from reconattack.metrics.suite import MetricSuite

    saved = _random_inception_state()
    torch.save(saved, _hub_file(INCEPTION_FILE))
    trust_weights(monkeypatch, _hub_file(INCEPTION_FILE))
    suite = MetricSuite(metrics=("fid", "kid"))
    g = torch.Generator().manual_seed(0)
    target = torch.rand(1, 3, 24, 24, generator=g) * 2 - 1
    pred = (target + 0.5 * torch.randn(1, 3, 24, 24, generator=g)).clamp(-1, 1)
    suite.update(pred, target)
    res = suite.compute()
    assert res["fid"].startswith("missing: ") and res["kid"].startswith("missing: ")  # 1 image
    assert net_calls == []
    net = suite._nets["fid"]
    _assert_same_state(net.inception.state_dict(), saved)
    seen = []
    net.inception.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].clone()))
    real_sum = suite._fid["real"].total.clone()
    with torch.no_grad():  # the Inception must have seen rounded uint8 images
        real = net.inception(((target + 1) / 2 * 255).round().to(torch.uint8)).double()
    torch.testing.assert_close(real_sum, real.sum(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(suite._kid["real"].compute().double(), real, rtol=1e-5, atol=1e-5)

    seen.clear()
    suite.reset()  # first epoch done: its real side is kept, reconstructions cleared
    suite.update(pred, target)
    assert len(seen) == 1 and seen[0].dtype == torch.uint8  # one pass (fake) for FID and KID
    assert int(suite._fid["real"].n) == 1 and int(suite._fid["fake"].n) == 1
    torch.testing.assert_close(suite._fid["real"].total, real_sum)
    assert suite._kid_stored() == 2
    # (the 2048-d FID itself is not computed here: slow on CPU; the formula is tested on small
    # features in test_protocols.py)


# ---------------------------------------------------- CFGAN-protocol FID (torchvision Inception)
TV_INCEPTION_FILE = "inception_v3_google-0cc3c7bd.pth"


def test_cfgan_inception_is_torchvisions_imagenet_file():
    import torchvision

    assert P.TV_INCEPTION_URL == torchvision.models.Inception_V3_Weights.IMAGENET1K_V1.url
    assert P.TV_INCEPTION_WEIGHTS.cache_file == _hub_file(TV_INCEPTION_FILE)


def test_cfgan_inception_missing_names_the_cache_file(net_calls):
    with pytest.raises(MissingWeightsError) as err:
        P.load_cfgan_inception()
    assert str(_hub_file(TV_INCEPTION_FILE)) in str(err.value)
    assert P.TV_INCEPTION_URL in str(err.value)
    assert net_calls == []


def test_cfgan_inception_download_failure_is_missing(net_calls, monkeypatch):
    monkeypatch.delenv("RECONATTACK_OFFLINE")
    with pytest.raises(MissingWeightsError, match="download"):
        P.load_cfgan_inception(download=True)
    assert net_calls == ["download_url_to_file"]
    assert not _hub_file(TV_INCEPTION_FILE).exists()


def _random_torchvision_inception():
    """A torchvision Inception-v3 state dict with random weights scaled so that the 2048-d
    features are of order 1 (He-normal convolutions, random BatchNorm statistics)."""
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return {k: v.clone() for k, v in net.state_dict().items()}


def test_cfgan_inception_features_are_the_official_codes(net_calls, monkeypatch):
    """Against torchvision's own forward pass (fc removed) on the input utils/FID.py and
    utils/inception.py build: BGR as cv2.imread gives, bilinear 299×299 (F.upsample), their
    channel-wise normalisation of [0, 1] values."""
    import torchvision

    saved = _random_torchvision_inception()
    torch.save(saved, _hub_file(TV_INCEPTION_FILE))
    trust_weights(monkeypatch, _hub_file(TV_INCEPTION_FILE))
    net = P.load_cfgan_inception()
    assert net_calls == []
    assert not any(p.requires_grad for p in net.parameters())

    g = torch.Generator().manual_seed(1)
    rgb8 = torch.randint(0, 256, (2, 40, 48, 3), generator=g, dtype=torch.uint8).numpy()
    bgr = torch.from_numpy(rgb8[..., ::-1].copy()).permute(0, 3, 1, 2).float() / 255
    x = torch.nn.functional.interpolate(bgr, size=(299, 299), mode="bilinear", align_corners=False)
    x = x.clone()
    x[:, 0] = x[:, 0] * (0.229 / 0.5) + (0.485 - 0.5) / 0.5
    x[:, 1] = x[:, 1] * (0.224 / 0.5) + (0.456 - 0.5) / 0.5
    x[:, 2] = x[:, 2] * (0.225 / 0.5) + (0.406 - 0.5) / 0.5
    ref_net = torchvision.models.inception_v3(
        weights=None, aux_logits=True, init_weights=False, transform_input=False
    )
    ref_net.load_state_dict(saved)
    ref_net.fc = torch.nn.Identity()
    with torch.no_grad():
        ref = ref_net.eval()(x)
        ours = net(torch.from_numpy(rgb8).permute(0, 3, 1, 2).float() / 255)
    assert ours.shape == (2, 2048)
    scale = ref.abs().mean().item()
    print(
        f"cfgan inception: mean |feature| {scale:.4f}, max |ours - ref| "
        f"{(ours - ref).abs().max().item():.3e}"
    )
    assert 0.01 < scale < 100 and (ref[0] - ref[1]).abs().mean() > 0.01 * scale
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5 * scale)
    # a different normalisation or channel order would show
    with torch.no_grad():
        rgb_in = torch.nn.functional.interpolate(bgr.flip(1), size=(299, 299), mode="bilinear")
        rgb_net = ref_net(rgb_in * 2 - 1)
    assert (rgb_net - ref).abs().max() > 1e-2 * scale


def test_cfgan_inception_local_file_and_foreign_files(net_calls, tmp_path, monkeypatch):
    saved = _random_torchvision_inception()
    torch.save(saved, tmp_path / "tv_inception.pth")
    trust_weights(monkeypatch, tmp_path / "tv_inception.pth", TV_INCEPTION_FILE)
    net = P.load_cfgan_inception(path=tmp_path / "tv_inception.pth")
    assert torch.equal(
        net.blocks.Mixed_7c.branch_pool.conv.weight, saved["Mixed_7c.branch_pool.conv.weight"]
    )
    # torch-fidelity's FID Inception is another network: refused by name, not half-loaded
    torch.save(_random_inception_state(), tmp_path / "fidelity.pth")
    trust_weights(monkeypatch, tmp_path / "fidelity.pth", TV_INCEPTION_FILE)
    with pytest.raises(MissingWeightsError, match="not a torchvision Inception-v3"):
        P.load_cfgan_inception(path=tmp_path / "fidelity.pth")
    with pytest.raises(MissingWeightsError, match="does not exist"):
        P.load_cfgan_inception(path=tmp_path / "absent.pth")
    assert net_calls == []
