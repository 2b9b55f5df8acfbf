"""Pretrained networks behind FID, LPIPS and CLIP similarity — the SPEC §5 weights rule.

Each loader returns a ready, frozen, eval-mode network or raises
:class:`~reconattack.utils.weights.MissingWeightsError` whose message names the file to place
and where. Nothing is ever computed with random weights under a metric's name.

Where the weights come from (checked against the installed libraries):

- **FID Inception-v3** (torchmetrics ``FrechetInceptionDistance`` → torch-fidelity
  ``FeatureExtractorInceptionV3``, "inception-v3-compat", 2048-d pool3 features): torch-fidelity
  downloads ``weights-inception-2015-12-05-6726825d.pth`` from its GitHub release
  (:data:`INCEPTION_URL`) with ``torch.hub.load_state_dict_from_url`` into
  ``$TORCH_HOME/hub/checkpoints/``. torchmetrics (1.9 here) forwards its
  ``feature_extractor_weights_path`` argument to torch-fidelity, which then reads that file
  (with ``torch.load(weights_only=False)``) instead of downloading.
  :func:`load_fid` always resolves the file first (config path → torch hub cache → download
  through :func:`reconattack.utils.weights.resolve`) and hands torchmetrics the local path, so
  torch-fidelity never downloads by itself.
- **CFGAN-protocol FID Inception-v3** (``metrics=cfgan_paper``, metric ``fid_cfgan``):
  torchvision's ImageNet Inception-v3 (``Inception_V3_Weights.IMAGENET1K_V1``,
  :data:`TV_INCEPTION_URL`), which torchvision downloads into the same torch hub cache
  (``$TORCH_HOME/hub/checkpoints/inception_v3_google-0cc3c7bd.pth``); :func:`load_cfgan_inception`
  reads it from there or from a file named in the config, or downloads it the same way.
- **LPIPS** (``lpips`` package, AlexNet, v0.1): the linear calibration layers ship inside the
  package (``lpips/weights/v0.1/alex.pth``); the AlexNet trunk is torchvision's
  ``alexnet-owt-7be5be79.pth`` (:data:`ALEXNET_URL`, torch hub cache). :func:`load_lpips`
  builds the network with a random trunk (no download) and loads the trunk from the resolved
  file.
- **CLIP** (open_clip ``ViT-B-32``, tag ``laion2b_s34b_b79k``): open_clip downloads the tag's
  weights from the Hugging Face Hub (repo ``laion/CLIP-ViT-B-32-laion2B-s34B-b79K``, file
  ``open_clip_model.safetensors``, falling back to ``open_clip_pytorch_model.bin``) into the
  HF cache (``$HF_HOME/hub`` or ``$HF_HUB_CACHE``). :func:`load_clip` looks in that cache
  without network access first, or reads a local file named in the config; a download is
  tried only when allowed, after a single short metadata request (``huggingface_hub`` would
  otherwise retry a dead connection for ~25 s per file).
"""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reconattack.errors import ConfigError
from reconattack.utils.weights import (
    PINNED_SHA256,
    MissingWeightsError,
    WeightsSpec,
    load_state_dict,
    offline,
    resolve,
    verify,
)

INCEPTION_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
    "weights-inception-2015-12-05-6726825d.pth"
)
ALEXNET_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"
#: torchvision ``Inception_V3_Weights.IMAGENET1K_V1`` (the CFGAN official code's FID network)
TV_INCEPTION_URL = "https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth"

INCEPTION_WEIGHTS = WeightsSpec(
    name="FID Inception-v3 (torch-fidelity 'inception-v3-compat', TF 2015-12-05 weights)",
    url=INCEPTION_URL,
)
TV_INCEPTION_WEIGHTS = WeightsSpec(
    name="CFGAN-protocol FID Inception-v3 (torchvision Inception_V3_Weights.IMAGENET1K_V1)",
    url=TV_INCEPTION_URL,
)
ALEXNET_WEIGHTS = WeightsSpec(
    name="LPIPS AlexNet trunk (torchvision AlexNet IMAGENET1K_V1)",
    url=ALEXNET_URL,
)

#: the lpips package's calibration layers of LPIPS v0.1 on AlexNet, inside the package
LPIPS_LINEAR = "weights/v0.1/alex.pth"

DEFAULT_CLIP_MODEL = "ViT-B-32"
DEFAULT_CLIP_TAG = "laion2b_s34b_b79k"

# torchvision AlexNet ``features`` indices → LPIPS ``net.slice{k}`` (lpips/pretrained_networks.py)
_ALEX_SLICES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 2, 5: 3, 6: 3, 7: 3, 8: 4, 9: 4, 10: 5, 11: 5}


# ----------------------------------------------------------------------------------------- FID
def _fid_inception_file(path: str | os.PathLike | None, download: bool) -> Path:
    """The torch-fidelity Inception weights file, checked with the safe loader."""
    file = resolve(INCEPTION_WEIGHTS, path, download)
    # validate with the safe loader first: torch-fidelity itself reads the file with
    # weights_only=False, which must never see an arbitrary pickle
    state = load_state_dict(INCEPTION_WEIGHTS, file, download=False)
    if "Mixed_7c.branch_pool.conv.weight" not in state:
        raise MissingWeightsError(
            f"{INCEPTION_WEIGHTS.name}: {file} is not a torch-fidelity Inception state dict; "
            f"download {INCEPTION_URL} and place it at {INCEPTION_WEIGHTS.cache_file} "
            "(or name it in the config)."
        )
    return file


def _torchmetrics_fid_class():
    import inspect

    from torchmetrics.image.fid import FrechetInceptionDistance

    params = inspect.signature(FrechetInceptionDistance.__init__).parameters
    if "feature_extractor_weights_path" not in params:  # added by torchmetrics PR #2867
        raise RuntimeError(
            "FID with local Inception weights needs torchmetrics >= 1.7 "
            "(argument `feature_extractor_weights_path`); upgrade torchmetrics."
        )
    return FrechetInceptionDistance, params


def load_fid(
    path: str | os.PathLike | None = None,
    download: bool = True,
    reset_real_features: bool = False,
    antialias: bool = False,
):
    """torchmetrics ``FrechetInceptionDistance`` (Inception-v3 pool3, 2048-d) with local weights.

    The metric's ``update`` takes ``(B, 3, H, W)`` **uint8** images in [0, 255] (``normalize``
    is False); they are resized to 299×299 inside. (:class:`~reconattack.metrics.suite.
    MetricSuite` uses the same network through :func:`load_fid_inception`, so that FID and KID
    share one forward pass.)

    Args:
        path: local weights file (torch-fidelity format) named in the config; when None the
            torch hub cache ``$TORCH_HOME/hub/checkpoints/weights-inception-2015-12-05-6726825d.pth``
            is used, or downloaded when allowed.
        download: allow a download when the file is not cached (never when
            ``RECONATTACK_OFFLINE=1``).
        reset_real_features: torchmetrics' flag; False keeps the real statistics across
            ``reset()`` (real images are evaluated once, not every epoch).
        antialias: torchmetrics' resize switch. False (default) uses torch-fidelity's
            TensorFlow-1-compatible bilinear resize, i.e. the reference FID implementation;
            True uses torch's antialiased bilinear resize.

    Raises:
        MissingWeightsError: weights unavailable or unreadable; the message says where to put
            which file.
    """
    fid_class, params = _torchmetrics_fid_class()
    file = _fid_inception_file(path, download)
    try:
        metric = fid_class(
            feature=2048,
            reset_real_features=reset_real_features,
            normalize=False,
            feature_extractor_weights_path=str(file),
            **({"antialias": antialias} if "antialias" in params else {}),
        )
    except Exception as exc:  # strict load_state_dict mismatch, corrupt file
        raise MissingWeightsError(
            f"{INCEPTION_WEIGHTS.name}: could not load {file} ({type(exc).__name__}: {exc})."
        ) from exc
    metric.inception.requires_grad_(False)
    return metric


class FIDInception(nn.Module):
    """The FID / KID Inception as a feature extractor on the package's images (frozen).

    Wraps torchmetrics' ``NoTrainInceptionV3`` (torch-fidelity "inception-v3-compat", the network
    inside ``FrechetInceptionDistance`` and ``KernelInceptionDistance``): images are rounded to
    uint8, resized to 299×299 inside, and mapped to the 2048-d pool3 features.

    Args:
        inception: the ``NoTrainInceptionV3`` module (features_list ``["2048"]``).
    """

    num_features = 2048

    def __init__(self, inception: nn.Module) -> None:
        super().__init__()
        self.inception = inception.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> FIDInception:
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) RGB in [0, 1] → (B, 2048) float32 pool3 features."""
        return self.inception((x * 255).round().to(torch.uint8)).float()


def load_fid_inception(
    path: str | os.PathLike | None = None, download: bool = True, antialias: bool = False
) -> FIDInception:
    """The Inception of torchmetrics' FID and KID with local weights, as :class:`FIDInception`.

    Same weights file, lookup and checks as :func:`load_fid`; ``antialias`` as there.

    Raises:
        MissingWeightsError: weights unavailable or unreadable; the message says where to put
            which file.
    """
    import inspect

    from torchmetrics.image.fid import NoTrainInceptionV3

    _torchmetrics_fid_class()
    file = _fid_inception_file(path, download)
    extra = (
        {"antialias": antialias}
        if "antialias" in inspect.signature(NoTrainInceptionV3.__init__).parameters
        else {}
    )
    try:
        net = NoTrainInceptionV3(
            name="inception-v3-compat",
            features_list=["2048"],
            feature_extractor_weights_path=str(file),
            **extra,
        )
    except Exception as exc:  # strict load_state_dict mismatch, corrupt file
        raise MissingWeightsError(
            f"{INCEPTION_WEIGHTS.name}: could not load {file} ({type(exc).__name__}: {exc})."
        ) from exc
    return FIDInception(net)


# ------------------------------------------------------------------- FID of the CFGAN official code
#: the blocks utils/inception.py of the CFGAN official code runs (pytorch-fid's early layout,
#: output block 3 = 2048-d final average pool), by their torchvision names
_CFGAN_BLOCKS = (
    "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1",
    "Conv2d_3b_1x1", "Conv2d_4a_3x3", "maxpool2",
    "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
    "Mixed_7a", "Mixed_7b", "Mixed_7c", "avgpool",
)  # fmt: skip


class CFGANInception(nn.Module):
    """torchvision's ImageNet Inception-v3 as the CFGAN official code's FID uses it (frozen).

    The official ``utils/FID.py`` reads images with ``cv2.imread`` (BGR), divides by 255 and runs
    ``utils/inception.py`` (an early pytorch-fid ``InceptionV3`` built on
    ``torchvision.models.inception_v3`` with ImageNet weights). This module does the same on the
    package's images:

    1. RGB → BGR (the order ``cv2.imread`` gives);
    2. bilinear resize to 299×299 (``F.upsample(mode="bilinear")``: ``align_corners=False``, no
       antialiasing);
    3. channel ``c`` ← ``x_c · (std_c / 0.5) + (mean_c − 0.5) / 0.5`` with the ImageNet
       (R, G, B) mean / std taken in that order — torchvision's ``transform_input`` formula,
       applied, as there, to [0, 1] values of a BGR image (so blue gets red's constants);
    4. ``Conv2d_1a_3x3`` … ``Mixed_7c``, global average pool → 2048 features (no dropout, no
       classifier), in eval mode.

    This is not the Inception of a standard FID (torch-fidelity / pytorch-fid TF weights): its
    FIDs are comparable only with the CFGAN paper's own.

    Args:
        net: a torchvision ``Inception3`` with the ImageNet weights loaded.
    """

    num_features = 2048
    _MEAN = (0.485, 0.456, 0.406)
    _STD = (0.229, 0.224, 0.225)

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.blocks = nn.Sequential(OrderedDict((n, getattr(net, n)) for n in _CFGAN_BLOCKS))
        self.blocks.eval().requires_grad_(False)
        scale = torch.tensor([s / 0.5 for s in self._STD]).view(1, 3, 1, 1)
        shift = torch.tensor([(m - 0.5) / 0.5 for m in self._MEAN]).view(1, 3, 1, 1)
        self.register_buffer("scale", scale, persistent=False)
        self.register_buffer("shift", shift, persistent=False)

    def train(self, mode: bool = True) -> CFGANInception:
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) RGB in [0, 1] → (B, 2048) float32 pool features."""
        bgr = x.float().flip(1)
        bgr = F.interpolate(bgr, size=(299, 299), mode="bilinear", align_corners=False)
        return self.blocks(bgr * self.scale + self.shift).flatten(1)


def load_cfgan_inception(
    path: str | os.PathLike | None = None, download: bool = True
) -> CFGANInception:
    """torchvision's ImageNet Inception-v3 (``IMAGENET1K_V1``) as :class:`CFGANInception`.

    The weights file is the one torchvision itself downloads (``inception_v3_google-0cc3c7bd.pth``
    in the torch hub cache ``$TORCH_HOME/hub/checkpoints``): ``path`` from the config, else that
    cache, else a download from :data:`TV_INCEPTION_URL` when allowed. It is read with
    ``weights_only=True`` and loaded with strict key and shape matching.

    Args:
        path: local torchvision Inception-v3 state dict named in the config.
        download: allow a download when the file is not cached (never when
            ``RECONATTACK_OFFLINE=1``).

    Raises:
        MissingWeightsError: weights unavailable or not a torchvision Inception-v3 state dict;
            the message says where to put which file.
    """
    from torchvision.models import inception_v3

    state = load_state_dict(TV_INCEPTION_WEIGHTS, path, download)
    net = inception_v3(weights=None, aux_logits=True, init_weights=False)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        src = path or TV_INCEPTION_WEIGHTS.cache_file
        first = str(exc).splitlines()[0]
        raise MissingWeightsError(
            f"{TV_INCEPTION_WEIGHTS.name}: {src} is not a torchvision Inception-v3 ImageNet state "
            f"dict ({first}); download {TV_INCEPTION_URL} and place it at "
            f"{TV_INCEPTION_WEIGHTS.cache_file} (or name it in the config: "
            "metrics.weights.fid_cfgan=...)."
        ) from exc
    return CFGANInception(net)


# --------------------------------------------------------------------------------------- LPIPS
class LPIPSDistance(nn.Module):
    """LPIPS distance per image pair (frozen, eval mode).

    Images smaller than ``min_size`` px on their shorter side (AlexNet's pooling needs ≥ 31 px)
    are upsampled bilinearly so that side becomes ``min_size``.

    Args:
        net: an ``lpips.LPIPS`` module.
        min_size: smallest image side fed to the network.
    """

    def __init__(self, net: nn.Module, min_size: int = 32) -> None:
        super().__init__()
        self.net = net.eval().requires_grad_(False)
        self.min_size = min_size

    def train(self, mode: bool = True) -> LPIPSDistance:  # always eval (dropout in lin layers)
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """Distances of ``x`` and ``y``, both (B, 3, H, W) in [-1, 1] → (B,) in [0, ~1]."""
        h, w = x.shape[-2:]
        if min(h, w) < self.min_size:
            scale = self.min_size / min(h, w)
            size = (max(self.min_size, round(h * scale)), max(self.min_size, round(w * scale)))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
        return self.net(x, y).flatten()


def load_lpips(path: str | os.PathLike | None = None, download: bool = True) -> LPIPSDistance:
    """LPIPS v0.1 with the AlexNet trunk, ready to use.

    The linear layers come from the ``lpips`` package; the trunk from torchvision's
    ``alexnet-owt-7be5be79.pth`` (``path`` from the config, else the torch hub cache
    ``$TORCH_HOME/hub/checkpoints``, else a download when allowed).

    Args:
        path: local torchvision AlexNet state dict named in the config.
        download: allow a download when the file is not cached.

    Returns:
        :class:`LPIPSDistance` mapping two (B, 3, H, W) batches in [-1, 1] to (B,) distances.

    Raises:
        MissingWeightsError: trunk weights unavailable or not an AlexNet state dict.
    """
    import lpips

    state = load_state_dict(ALEXNET_WEIGHTS, path, download)
    calibration = Path(lpips.__file__).parent / LPIPS_LINEAR
    if not calibration.is_file():
        raise MissingWeightsError(
            f"LPIPS linear layers: the lpips package's weights file {calibration} is missing; "
            "reinstall `lpips`."
        )
    verify("LPIPS linear layers (lpips v0.1, AlexNet)", calibration,
           PINNED_SHA256[f"lpips/{LPIPS_LINEAR}"], "the lpips package: reinstall `lpips`")
    with warnings.catch_warnings():  # lpips calls torchvision with the deprecated `pretrained`
        warnings.simplefilter("ignore")
        net = lpips.LPIPS(
            net="alex", version="0.1", pretrained=True, pnet_rand=True, verbose=False,
            model_path=str(calibration),
        )
    trunk = {}
    for idx, slice_no in _ALEX_SLICES.items():
        for kind in ("weight", "bias"):
            key = f"features.{idx}.{kind}"
            if key in state:
                trunk[f"slice{slice_no}.{idx}.{kind}"] = state[key]
    expected = set(net.net.state_dict())
    if set(trunk) != expected:
        src = path or ALEXNET_WEIGHTS.cache_file
        raise MissingWeightsError(
            f"{ALEXNET_WEIGHTS.name}: {src} is not a torchvision AlexNet state dict (missing "
            f"{sorted(expected - set(trunk))[:4]}); download {ALEXNET_URL} and place it at "
            f"{ALEXNET_WEIGHTS.cache_file} (or name it in the config)."
        )
    try:
        net.net.load_state_dict(trunk, strict=True)
    except RuntimeError as exc:
        raise MissingWeightsError(f"{ALEXNET_WEIGHTS.name}: could not load trunk: {exc}") from exc
    return LPIPSDistance(net)


# ---------------------------------------------------------------------------------------- CLIP
class ClipImageEncoder(nn.Module):
    """CLIP image tower with open_clip's evaluation preprocessing done in torch (frozen).

    Preprocessing as ``open_clip.image_transform(is_train=False)``: resize (shortest side to
    the model's input size and centre crop, or squash / longest-side-and-pad per the
    pretrained config) with antialiased interpolation, then the CLIP mean/std normalisation.

    Args:
        visual: the open_clip image tower (``model.visual``).
        size: (H, W) input size of the tower (224×224 for ViT-B-32).
        mean, std: per-channel normalisation.
        interpolation: ``"bicubic"`` or ``"bilinear"``.
        resize_mode: ``"shortest"``, ``"squash"`` or ``"longest"``.
    """

    def __init__(
        self,
        visual: nn.Module,
        size: tuple[int, int] = (224, 224),
        mean: tuple[float, ...] = (0.48145466, 0.4578275, 0.40821073),
        std: tuple[float, ...] = (0.26862954, 0.26130258, 0.27577711),
        interpolation: str = "bicubic",
        resize_mode: str = "shortest",
    ) -> None:
        super().__init__()
        if resize_mode not in ("shortest", "squash", "longest"):
            raise ValueError(f"unsupported resize_mode {resize_mode!r}")
        self.visual = visual.eval().requires_grad_(False)
        self.size = (int(size[0]), int(size[1]))
        self.interpolation = "bicubic" if interpolation == "bicubic" else "bilinear"
        self.resize_mode = resize_mode
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> ClipImageEncoder:
        return super().train(False)

    def _resize(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        if tuple(x.shape[-2:]) == size:
            return x
        return F.interpolate(
            x, size=size, mode=self.interpolation, align_corners=False, antialias=True
        ).clamp(0, 1)

    def preprocess(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) in [0, 1] → (B, 3, *size) normalised tower input."""
        th, tw = self.size
        h, w = x.shape[-2:]
        if self.resize_mode == "squash":
            x = self._resize(x, (th, tw))
        elif self.resize_mode == "shortest":
            side = min(th, tw)
            if h <= w:
                new = (side, int(side * w / h))
            else:
                new = (int(side * h / w), side)
            x = self._resize(x, new)
            top = round((new[0] - th) / 2.0)
            left = round((new[1] - tw) / 2.0)
            x = x[..., top : top + th, left : left + tw]
        else:  # longest: fit inside, pad with 0 (open_clip's fill_color)
            scale = min(th / h, tw / w)
            new = (round(h * scale), round(w * scale))
            x = self._resize(x, new)
            ph, pw = th - new[0], tw - new[1]
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) in [0, 1] → (B, D) unit-norm image embeddings."""
        feats = self.visual(self.preprocess(x.float()))
        if isinstance(feats, tuple):
            feats = feats[0]
        return F.normalize(feats.float(), dim=-1)


def _hf_offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}:
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:  # pragma: no cover
        return False


def _hf_candidates(hf_hub: str) -> tuple[str, list[str]]:
    """Repo id and candidate file names (safetensors first), as open_clip resolves them."""
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    repo_id, filename = os.path.split(hf_hub)  # 'org/repo/' → ('org/repo', '')
    if not filename or filename == HF_WEIGHTS_NAME:
        return repo_id, [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
    if filename.endswith((".bin", ".pth")):
        return repo_id, [filename[:-4] + ".safetensors", filename]
    return repo_id, [filename]


def _hf_cache_dir(cache_dir: str | os.PathLike | None) -> str:
    if cache_dir:
        return str(cache_dir)
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _find_or_download_clip(
    model_name: str, tag: str, cfg: dict, download: bool, cache_dir: str | os.PathLike | None
) -> str:
    name = f"CLIP {model_name} ({tag})"
    hf_hub = cfg.get("hf_hub", "")
    url = cfg.get("url", "")
    if hf_hub:
        from huggingface_hub import (
            get_hf_file_metadata,
            hf_hub_download,
            hf_hub_url,
            try_to_load_from_cache,
        )

        repo_id, files = _hf_candidates(hf_hub)
        cache = _hf_cache_dir(cache_dir)
        for fname in files:
            hit = try_to_load_from_cache(repo_id, fname, cache_dir=cache)
            if isinstance(hit, str) and os.path.isfile(hit):
                return hit
        web = f"https://huggingface.co/{repo_id}/resolve/main/{files[0]}"
        where = (
            f"on a machine with internet run `hf download {repo_id} {files[0]}` (or "
            f"`python -c \"import open_clip; open_clip.create_model('{model_name}', "
            f"pretrained='{tag}')\"`) and copy the Hugging Face cache to {cache}, or download "
            f"{web} and name the file in the config (metrics.weights.clip=...)"
        )
        if not download or offline() or _hf_offline():
            raise MissingWeightsError(
                f"{name}: weights not in the Hugging Face cache {cache} and downloads are "
                f"disabled; {where}."
            )
        from huggingface_hub.errors import EntryNotFoundError

        for fname in files:
            try:  # one short request without retries before huggingface_hub's retrying download
                get_hf_file_metadata(hf_hub_url(repo_id, fname), timeout=10)
            except EntryNotFoundError:  # e.g. no .safetensors in this repo: try the next name
                continue
            except Exception as exc:  # network errors come in many types; all mean "no access"
                raise MissingWeightsError(
                    f"{name}: the Hugging Face Hub is not reachable ({type(exc).__name__}: "
                    f"{exc}); {where}."
                ) from exc
            try:
                return hf_hub_download(repo_id, fname, cache_dir=cache)
            except Exception as exc:
                raise MissingWeightsError(
                    f"{name}: download of {fname} from {repo_id} failed ({type(exc).__name__}: "
                    f"{exc}); {where}."
                ) from exc
        raise MissingWeightsError(f"{name}: none of {files} exists in {repo_id}; {where}.")
    if url:
        cache = Path(cache_dir) if cache_dir else Path("~/.cache/clip").expanduser()
        target = cache / os.path.basename(url)
        if target.is_file():
            return str(target)
        where = f"download {url} and place it at {target} (or name it in the config)"
        if not download or offline():
            raise MissingWeightsError(
                f"{name}: weights not found and downloads are disabled; {where}."
            )
        try:
            import urllib.request

            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=10).close()
            from open_clip.pretrained import download_pretrained_from_url

            return download_pretrained_from_url(url, cache_dir=str(cache))
        except Exception as exc:
            raise MissingWeightsError(
                f"{name}: download failed ({type(exc).__name__}: {exc}); {where}."
            ) from exc
    raise MissingWeightsError(
        f"{name}: the tag has no download source; name a local file in "
        "the config (metrics.weights.clip=...)."
    )


def _verify_clip(name: str, file: str, cfg: dict, given: bool) -> None:
    """Check a CLIP weights file: against the tag's pinned SHA-256 (:data:`PINNED_SHA256`, by
    Hugging Face repo and file name; a file named in the config against any pinned file of its
    tag); else, a file in the Hugging Face cache against the hub's own hash (an LFS file's blob is
    named by its SHA-256); else it is used with a warning that nothing vouches for it."""
    repo_id = _hf_candidates(cfg["hf_hub"])[0] if cfg.get("hf_hub") else ""
    pins = {k.rsplit("/", 1)[1]: v for k, v in PINNED_SHA256.items() if repo_id and k.startswith(repo_id + "/")}
    web = f"https://huggingface.co/{repo_id}" if repo_id else "its Hugging Face repository"
    if given and pins:
        verify(name, file, tuple(pins.values()), f"{web} ({', '.join(pins)})")
        return
    if Path(file).name in pins:
        verify(name, file, pins[Path(file).name], web)
        return
    blob = Path(file).resolve()
    if blob.parent.name == "blobs" and len(blob.name) == 64 and all(c in "0123456789abcdef" for c in blob.name):
        verify(name, file, blob.name, f"{web} (its Hugging Face LFS hash)")
        return
    warnings.warn(f"{name}: no pinned SHA-256 for {file}; it is used unverified", UnverifiedWeightsWarning,
                  stacklevel=3)


class UnverifiedWeightsWarning(UserWarning):
    """A weights file is used that no pinned or published hash vouches for."""


def load_clip(
    path: str | os.PathLike | None = None,
    download: bool = True,
    model_name: str = DEFAULT_CLIP_MODEL,
    pretrained: str = DEFAULT_CLIP_TAG,
    cache_dir: str | os.PathLike | None = None,
) -> ClipImageEncoder:
    """open_clip image tower with pretrained weights, as a :class:`ClipImageEncoder`.

    Args:
        path: local open_clip checkpoint (``.safetensors``, ``.bin``, ``.pt``) named in the
            config; it must exist. When given, ``pretrained`` only selects the preprocessing
            and QuickGELU setting of that tag.
        download: allow a download from the Hugging Face Hub when not cached (never when
            ``RECONATTACK_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``).
        model_name: open_clip architecture name.
        pretrained: open_clip pretrained tag.
        cache_dir: Hugging Face hub cache directory (default: huggingface_hub's,
            ``$HF_HUB_CACHE`` / ``$HF_HOME/hub``).

    Returns:
        encoder mapping (B, 3, H, W) in [0, 1] to (B, D) unit-norm embeddings.

    Raises:
        ValueError: unknown model name or tag (a config error).
        MissingWeightsError: weights unavailable; the message says which file to put where.
    """
    import open_clip

    if model_name not in open_clip.list_models():
        raise ConfigError(f"unknown open_clip model {model_name!r}")
    cfg = open_clip.get_pretrained_cfg(model_name, pretrained) if pretrained else {}
    if path:
        file = Path(os.path.expanduser(str(path)))
        if not file.is_file():
            raise MissingWeightsError(
                f"CLIP {model_name}: weights file {file} named in the config does not exist."
            )
        file = str(file)
    else:
        if not cfg:
            raise ConfigError(
                f"unknown open_clip pretrained tag {pretrained!r} for {model_name}; available: "
                f"{open_clip.list_pretrained_tags_by_model(model_name)}"
            )
        file = _find_or_download_clip(model_name, pretrained, cfg, download, cache_dir)
    _verify_clip(f"CLIP {model_name} ({pretrained})", file, cfg, given=bool(path))
    pp = {k: cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in cfg}
    try:
        model = open_clip.create_model(
            model_name,
            pretrained=file,
            force_quick_gelu=bool(cfg.get("quick_gelu", False)),
            force_preprocess_cfg=pp or None,
            require_pretrained=True,
        )
    except Exception as exc:
        raise MissingWeightsError(
            f"CLIP {model_name}: could not load weights from {file} ({type(exc).__name__}: {exc})."
        ) from exc
    pcfg = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
    size = pcfg.get("size", getattr(model.visual, "image_size", 224))
    size = (size, size) if isinstance(size, int) else tuple(size)
    enc = ClipImageEncoder(
        model.visual,
        size=size,
        mean=tuple(pcfg.get("mean", (0.48145466, 0.4578275, 0.40821073))),
        std=tuple(pcfg.get("std", (0.26862954, 0.26130258, 0.27577711))),
        interpolation=pcfg.get("interpolation", "bicubic"),
        resize_mode=pcfg.get("resize_mode", "shortest"),
    )
    del model  # drop the text tower
    return enc
