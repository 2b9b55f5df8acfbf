"""Face-recognition networks for the AVIH attack (SPEC §3.4): IR-ResNets, a small CNN, loading.

Two IR-ResNet layouts are built by this module with the exact parameter/buffer names of the
published code, so that released checkpoints load with ``strict=True``:

- :class:`IResNet` — insightface ``arcface_torch/backbones/iresnet.py`` (plain state dicts such
  as ``ms1mv3_arcface_r18_fp16/backbone.pth``; RGB input scaled ``(x - 0.5) / 0.5``);
- :class:`AdaFaceIResNet` — AdaFace ``net.py`` (Lightning ``.ckpt`` files whose ``state_dict``
  keys are prefixed ``model.``; **BGR** input scaled ``(x - 0.5) / 0.5``).

:class:`ConvEmbedder` is a small plain CNN, a different architecture used as the demo's
evaluation model. :class:`FaceEmbedder` wraps any of them with the preprocessing that belongs
at the model boundary (resize, channel order, normalisation) and L2-normalises the output, so
the rest of the code feeds RGB images in [-1, 1] and receives unit embeddings. Checkpoint
formats are classes (:class:`InsightfaceFormat`, :class:`AdaFaceFormat`,
:class:`ReconattackFormat`) that configs name with ``_target_``.

Depths and widths are constructor arguments, so the published IR-18/50/100 at 112x112 and tiny
CPU variants (e.g. ``layers=[1, 1]``, ``widths=(8, 16)``, ``input_size=16``) share the code.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from reconattack.errors import ConfigError, InputNotFoundError
from reconattack.utils.checkpoints import (
    CheckpointFormatError,
    load_strict,
    mismatches,
    read_checkpoint,
    state_dict_of,
    sub_state,
)
from reconattack.utils.seeding import seeded

#: Blocks per stage of the published IR-ResNets ("ir101" is AdaFace's name for IR-100).
ARCHS: dict[str, list[int]] = {
    "ir18": [2, 2, 2, 2],
    "ir50": [3, 4, 14, 3],
    "ir100": [3, 13, 30, 3],
    "ir101": [3, 13, 30, 3],
}
CHANNEL_ORDERS = ("rgb", "bgr")
IR_WIDTHS = (64, 128, 256, 512)
CONV_WIDTHS = (16, 32, 64)
CHECKPOINT_KEY_HINT = "set threat.service.checkpoint / threat.evaluation.checkpoint"


def _head_size(input_size: int, n_stages: int, what: str) -> int:
    """Spatial size after ``n_stages`` halvings; ValueError unless it is a positive integer."""
    factor = 2**n_stages
    if input_size <= 0 or input_size % factor:
        raise ConfigError(f"{what}: input_size={input_size} must be a positive multiple of "
                          f"2**{n_stages} = {factor} ({n_stages} stride-2 stages)")
    return input_size // factor


def _check_stages(layers: Sequence[int], widths: Sequence[int], what: str) -> None:
    if len(layers) == 0 or len(layers) != len(widths):
        raise ConfigError(f"{what}: layers {list(layers)} and widths {list(widths)} must be "
                          "non-empty and of equal length (one entry per stage)")
    if any(int(n) < 1 for n in layers) or any(int(w) < 1 for w in widths):
        raise ConfigError(f"{what}: every stage needs >= 1 block and width >= 1, got "
                          f"layers={list(layers)}, widths={list(widths)}")


def _init_conv_bn(module: nn.Module) -> None:
    """Kaiming-normal (fan_out, ReLU gain) conv/linear weights, zero biases, BN weight 1 / bias 0.

    This is AdaFace's initialisation; insightface draws conv weights from N(0, 0.1), which makes
    the activations of a deep *untrained* network in eval mode overflow (IR-100: ~1e40). Trained
    checkpoints overwrite every value, so the choice only matters for randomly initialised models.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# ------------------------------------------------------------------------------------------------
# insightface layout
# ------------------------------------------------------------------------------------------------


class IBasicBlock(nn.Module):
    """insightface IR block: BN-conv3x3-BN-PReLU-conv3x3(stride)-BN plus shortcut, no final act.

    (B, inplanes, H, W) -> (B, planes, H/stride, W/stride). ``downsample`` (1x1 conv stride s +
    BN) is given when the shape changes.
    """

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity


class IResNet(nn.Module):
    """IR-ResNet in the insightface ``arcface_torch`` layout (same state-dict keys).

    Stem ``conv1`` 3x3 (3 -> widths[0]) - ``bn1`` - ``prelu``; stages ``layer1`` ..
    ``layerN`` of :class:`IBasicBlock` (first block of each stage has stride 2); head ``bn2``
    (BN2d) - flatten - ``dropout`` - ``fc`` Linear(widths[-1] * s * s -> embedding_size) -
    ``features`` (BN1d, weight fixed at 1, not trained) with s = input_size / 2**len(layers)
    (112 -> 7 for four stages).

    Input (B, 3, input_size, input_size), already normalised (insightface: RGB, (x - 0.5) / 0.5).
    Output (B, embedding_size) raw, not normalised, embedding.
    """

    layout = "insightface"

    def __init__(self, layers: Sequence[int], widths: Sequence[int] = IR_WIDTHS,
                 embedding_size: int = 512, input_size: int = 112, dropout: float = 0.0):
        super().__init__()
        _check_stages(layers, widths, "IResNet")
        self.layers, self.widths = [int(n) for n in layers], [int(w) for w in widths]
        self.embedding_size, self.input_size = int(embedding_size), int(input_size)
        head = _head_size(self.input_size, len(self.layers), "IResNet")

        inplanes = self.widths[0]
        self.conv1 = nn.Conv2d(3, inplanes, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.prelu = nn.PReLU(inplanes)
        for i, (blocks, planes) in enumerate(zip(self.layers, self.widths), start=1):
            setattr(self, f"layer{i}", self._make_layer(inplanes, planes, blocks, stride=2))
            inplanes = planes
        self.bn2 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(inplanes * head * head, self.embedding_size)
        self.features = nn.BatchNorm1d(self.embedding_size, eps=1e-5)
        _init_conv_bn(self)
        nn.init.ones_(self.features.weight)
        self.features.weight.requires_grad = False

    @staticmethod
    def _make_layer(inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes, eps=1e-5),
            )
        mods = [IBasicBlock(inplanes, planes, stride, downsample)]
        mods += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        for i in range(1, len(self.layers) + 1):
            x = getattr(self, f"layer{i}")(x)
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))


# ------------------------------------------------------------------------------------------------
# AdaFace layout
# ------------------------------------------------------------------------------------------------


class BasicBlockIR(nn.Module):
    """AdaFace IR block: ``shortcut_layer(x) + res_layer(x)``.

    ``shortcut_layer`` is MaxPool2d(1, stride) (a parameter-free subsampling) when
    ``in_channel == depth``, else 1x1 conv (stride) + BN; ``res_layer`` is
    BN-conv3x3-BN-PReLU-conv3x3(stride)-BN. (B, in, H, W) -> (B, depth, H/stride, W/stride).
    """

    def __init__(self, in_channel: int, depth: int, stride: int):
        super().__init__()
        if in_channel == depth:
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channel, depth, 1, stride, bias=False),
                nn.BatchNorm2d(depth),
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channel),
            nn.Conv2d(in_channel, depth, 3, 1, 1, bias=False),
            nn.BatchNorm2d(depth),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            nn.BatchNorm2d(depth),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut_layer(x) + self.res_layer(x)


class AdaFaceIResNet(nn.Module):
    """IR-ResNet in the AdaFace ``net.py`` layout (same state-dict keys).

    ``input_layer`` = conv3x3 (3 -> widths[0]) - BN - PReLU; ``body`` = one flat Sequential of
    :class:`BasicBlockIR` over all stages (first block of each stage has stride 2; IR-18 has 8
    blocks, IR-50 24); ``output_layer`` = BN2d - Dropout - Flatten - Linear(widths[-1] * s * s ->
    embedding_size) - BN1d(affine=False), s = input_size / 2**len(layers).

    Input (B, 3, input_size, input_size), already normalised (AdaFace: **BGR**, (x - 0.5) / 0.5).
    Output (B, embedding_size) raw features. The original returns ``(x / |x|, |x|)``; here the
    raw ``x`` is returned and :class:`FaceEmbedder` normalises it (same unit embedding).
    """

    layout = "adaface"

    def __init__(self, layers: Sequence[int], widths: Sequence[int] = IR_WIDTHS,
                 embedding_size: int = 512, input_size: int = 112, dropout: float = 0.0):
        super().__init__()
        _check_stages(layers, widths, "AdaFaceIResNet")
        self.layers, self.widths = [int(n) for n in layers], [int(w) for w in widths]
        self.embedding_size, self.input_size = int(embedding_size), int(input_size)
        head = _head_size(self.input_size, len(self.layers), "AdaFaceIResNet")

        in_ch = self.widths[0]
        self.input_layer = nn.Sequential(
            nn.Conv2d(3, in_ch, 3, 1, 1, bias=False), nn.BatchNorm2d(in_ch), nn.PReLU(in_ch))
        blocks = []
        for n, depth in zip(self.layers, self.widths):
            blocks.append(BasicBlockIR(in_ch, depth, 2))
            blocks += [BasicBlockIR(depth, depth, 1) for _ in range(1, n)]
            in_ch = depth
        self.body = nn.Sequential(*blocks)
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(in_ch),
            nn.Dropout(dropout),
            nn.Flatten(),
            nn.Linear(in_ch * head * head, self.embedding_size),
            nn.BatchNorm1d(self.embedding_size, affine=False),
        )
        _init_conv_bn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_layer(self.body(self.input_layer(x)))


# ------------------------------------------------------------------------------------------------
# Small plain CNN (a different architecture, used as the demo's evaluation model)
# ------------------------------------------------------------------------------------------------


class ConvEmbedder(nn.Module):
    """Plain CNN embedder: per stage (conv3x3-BN-ReLU) x 2 + MaxPool(2); Linear; BN1d.

    Input (B, 3, input_size, input_size), normalised; output (B, embedding_size) raw features.
    ``input_size`` must be divisible by 2**len(widths).
    """

    layout = "conv"

    def __init__(self, widths: Sequence[int] = CONV_WIDTHS, embedding_size: int = 64,
                 input_size: int = 32):
        super().__init__()
        if len(widths) == 0 or any(int(w) < 1 for w in widths):
            raise ConfigError(f"ConvEmbedder: widths must be non-empty positive ints, got {list(widths)}")
        self.widths = [int(w) for w in widths]
        self.layers = [2] * len(self.widths)
        self.embedding_size, self.input_size = int(embedding_size), int(input_size)
        head = _head_size(self.input_size, len(self.widths), "ConvEmbedder")
        stages, cin = [], 3
        for w in self.widths:
            stages.append(nn.Sequential(
                nn.Conv2d(cin, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
                nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
                nn.MaxPool2d(2),
            ))
            cin = w
        self.body = nn.Sequential(*stages)
        self.fc = nn.Linear(cin * head * head, self.embedding_size)
        self.bn = nn.BatchNorm1d(self.embedding_size)
        _init_conv_bn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc(torch.flatten(self.body(x), 1)))


# ------------------------------------------------------------------------------------------------
# Model-boundary wrapper
# ------------------------------------------------------------------------------------------------


def _channel_stat(value: float | Sequence[float], name: str) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=torch.float32).flatten()
    if t.numel() not in (1, 3):
        raise ConfigError(f"FaceEmbedder: {name} must be a float or 3 floats, got {value!r}")
    return t.expand(3).clone().view(1, 3, 1, 1)


class FaceEmbedder(nn.Module):
    """Backbone plus its preprocessing: RGB images in [-1, 1] -> unit-L2-norm embeddings.

    forward(images: (B, 3, H, W) RGB in [-1, 1]) -> (B, embed_dim) float32 with unit L2 norm.
    Steps, all at this model boundary: bilinear resize (align_corners=False) to ``input_size`` x
    ``input_size`` when H, W differ (non-square inputs are stretched); to [0, 1]; flip to BGR if
    ``channel_order == "bgr"``; ``(x - mean) / std`` with ``mean`` / ``std`` given on the [0, 1]
    scale in the backbone's channel order (insightface and AdaFace: 0.5 / 0.5, i.e. the package's
    [-1, 1] values themselves); backbone; L2 normalisation. Differentiable throughout (the
    attacks back-propagate through it).
    """

    def __init__(self, backbone: nn.Module, input_size: int = 112, channel_order: str = "rgb",
                 mean: float | Sequence[float] = 0.5, std: float | Sequence[float] = 0.5):
        super().__init__()
        if channel_order not in CHANNEL_ORDERS:
            raise ConfigError(f"FaceEmbedder: channel_order must be one of {CHANNEL_ORDERS}, "
                              f"got {channel_order!r}")
        if int(input_size) <= 0:
            raise ConfigError(f"FaceEmbedder: input_size must be positive, got {input_size}")
        std_t = _channel_stat(std, "std")
        if (std_t <= 0).any():
            raise ConfigError(f"FaceEmbedder: std must be > 0, got {std!r}")
        self.backbone = backbone
        self.input_size = int(input_size)
        self.channel_order = channel_order
        self.register_buffer("mean", _channel_stat(mean, "mean"), persistent=False)
        self.register_buffer("std", std_t, persistent=False)
        embed_dim = getattr(backbone, "embedding_size", None)
        if embed_dim is None:
            raise ValueError("FaceEmbedder: the backbone must expose `embedding_size`")
        self.embed_dim = int(embed_dim)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB in [-1, 1] -> (B, 3, input_size, input_size) as the backbone expects."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"FaceEmbedder expects (B, 3, H, W) images, got {tuple(images.shape)}")
        param = next(self.backbone.parameters(), None)
        x = images.to(param.dtype if param is not None else torch.float32)
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                              align_corners=False)
        x = (x + 1) / 2
        if self.channel_order == "bgr":
            x = x.flip(1)
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.backbone(self.preprocess(images)).float(), dim=1)


# ------------------------------------------------------------------------------------------------
# Checkpoint formats (configs name one with ``_target_``)
# ------------------------------------------------------------------------------------------------


def _describe(backbone: nn.Module) -> str:
    layers = getattr(backbone, "layers", None)
    arch = next((name for name, preset in ARCHS.items() if preset == layers), "custom")
    if getattr(backbone, "layout", "") == "conv":
        return f"{type(backbone).__name__}(widths={getattr(backbone, 'widths', '?')})"
    return (f"{type(backbone).__name__} {arch} (layers={layers}, widths={getattr(backbone, 'widths', '?')}, "
            f"embedding_size={getattr(backbone, 'embedding_size', '?')}, "
            f"input_size={getattr(backbone, 'input_size', '?')})")


def _guess_checkpoint_arch(sd: Mapping[str, torch.Tensor]) -> str | None:
    """Best-effort description of the network a state dict came from (for error messages)."""
    try:
        stages = sorted({int(m.group(1)) for k in sd if (m := re.match(r"layer(\d+)\.", k))})
        if stages:
            layers = [1 + max(int(m.group(1)) for k in sd
                              if (m := re.match(rf"layer{s}\.(\d+)\.", k))) for s in stages]
            widths = [int(sd[f"layer{s}.0.conv1.weight"].shape[0]) for s in stages]
            cls = "IResNet"
        elif any(k.startswith("body.") for k in sd):
            n = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"body\.(\d+)\.", k)))
            depths = [int(sd[f"body.{i}.res_layer.1.weight"].shape[0]) for i in range(n)]
            widths, layers = [], []
            for d in depths:  # consecutive blocks of equal width form a stage
                if widths and widths[-1] == d:
                    layers[-1] += 1
                else:
                    widths.append(d)
                    layers.append(1)
            cls = "AdaFaceIResNet"
        else:
            return None
    except (KeyError, ValueError, AttributeError, IndexError):
        return None
    arch = next((name for name, preset in ARCHS.items() if preset == layers), "custom")
    return f"{cls} {arch} (layers={layers}, widths={widths})"


def _strip_prefix(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items()}
    return dict(sd)


class InsightfaceFormat:
    """insightface ``backbone.pth``: a plain state dict (a DataParallel ``module.`` prefix is
    stripped)."""

    name = "insightface"

    def state_dict(self, obj: Mapping, path: str) -> dict[str, torch.Tensor]:
        return _strip_prefix(state_dict_of(obj), "module.")


class AdaFaceFormat:
    """AdaFace Lightning ``.ckpt``: ``state_dict`` with the backbone's keys prefixed ``model.``;
    other keys (``head.kernel``, ...) are ignored."""

    name = "adaface"

    def state_dict(self, obj: Mapping, path: str) -> dict[str, torch.Tensor]:
        inner = obj.get("state_dict")
        if not isinstance(inner, Mapping):
            raise CheckpointFormatError(
                f"face checkpoint {path}: an AdaFace .ckpt needs a 'state_dict' entry "
                f"(top-level keys: {', '.join(str(k) for k in list(obj)[:8])})")
        sd = sub_state({str(k): v for k, v in inner.items()}, "model.")
        if not sd:
            raise CheckpointFormatError(
                f"face checkpoint {path}: no 'model.' keys in its state_dict; is it "
                "an AdaFace checkpoint? (try format InsightfaceFormat or ReconattackFormat)")
        return sd


class ReconattackFormat:
    """What this package writes (the demo's trained face models): ``{"state_dict": sd}`` or a
    plain ``sd`` of the FaceEmbedder's backbone (``module.`` / ``backbone.`` prefixes stripped)."""

    name = "reconattack"

    def state_dict(self, obj: Mapping, path: str) -> dict[str, torch.Tensor]:
        return _strip_prefix(_strip_prefix(state_dict_of(obj), "module."), "backbone.")


def detect_format(obj: Mapping) -> InsightfaceFormat | AdaFaceFormat | ReconattackFormat:
    """AdaFace when the checkpoint has a ``state_dict`` with ``model.`` keys, else a plain dict."""
    inner = obj.get("state_dict")
    if isinstance(inner, Mapping) and any(str(k).startswith("model.") for k in inner):
        return AdaFaceFormat()
    return ReconattackFormat()


def load_face_checkpoint(backbone: nn.Module, path: str | os.PathLike, format=None) -> nn.Module:
    """Load a face checkpoint into ``backbone`` (strict) and return it.

    ``format``: an object with ``state_dict(obj, path) -> dict`` (:class:`InsightfaceFormat`,
    :class:`AdaFaceFormat`, :class:`ReconattackFormat`) or None (auto-detect). Reading is
    ``weights_only``. Raises FileNotFoundError for a missing file and ValueError (naming missing
    / unexpected / shape-mismatching keys, and what the checkpoint looks like) when it does not
    fit the built architecture.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputNotFoundError(f"face model checkpoint not found: {path} ({CHECKPOINT_KEY_HINT} "
                                 "to an existing insightface .pth / AdaFace .ckpt file)")
    obj = read_checkpoint(path, "face checkpoint")
    fmt = format if format is not None else detect_format(obj)
    sd = fmt.state_dict(obj, path)
    guess = _guess_checkpoint_arch(sd)  # from the file as read, before anything is filled in
    for key, value in backbone.state_dict().items():  # tolerate checkpoints without these counters
        if key.endswith("num_batches_tracked") and key not in sd:
            sd[key] = value.clone()
    guess = guess if mismatches(backbone, sd) else None
    return load_strict(
        backbone, sd, f"{path} (format={fmt.name})", "face checkpoint",
        hint=f"The model was built as {_describe(backbone)}. "
        + (f"The checkpoint looks like {guess}. " if guess else "")
        + "Choose the network the checkpoint was trained with (e.g. an IR-50 checkpoint needs "
        "layers [3, 4, 14, 3], IResNet for insightface .pth files, AdaFaceIResNet for AdaFace .ckpt "
        "files) and the same embedding_size / input_size.")


# ------------------------------------------------------------------------------------------------
# Factory
# ------------------------------------------------------------------------------------------------


def make_face_model(make_net: Callable[[], nn.Module], channel_order: str = "rgb",
                    checkpoint: str | os.PathLike | None = None, format=None,
                    seed: int | None = None, mean: float | Sequence[float] = 0.5,
                    std: float | Sequence[float] = 0.5) -> FaceEmbedder:
    """A :class:`FaceEmbedder` around ``make_net()`` (:class:`IResNet`, :class:`AdaFaceIResNet`,
    :class:`ConvEmbedder` or any backbone with ``embedding_size`` and ``input_size``; configs name
    it with ``_target_``).

    ``seed`` makes the random initialisation deterministic without touching the global RNG. With
    ``checkpoint`` the weights are loaded (:func:`load_face_checkpoint` with ``format``), the model
    is put in eval mode and frozen; without one it stays in train mode with random weights.
    AdaFace checkpoints want ``channel_order="bgr"``.
    """
    with seeded(seed):
        backbone = make_net()
    if checkpoint is not None:
        load_face_checkpoint(backbone, checkpoint, format)
    embedder = FaceEmbedder(backbone, input_size=int(getattr(backbone, "input_size", 112)),
                            channel_order=channel_order, mean=mean, std=std)
    if checkpoint is not None:
        embedder.eval()
        embedder.requires_grad_(False)
    return embedder


def face_model_from_config(m, checkpoint: str | os.PathLike | None = None, seed: int | None = None,
                           published: bool = True) -> FaceEmbedder:
    """:func:`make_face_model` from a ``conf/face/*`` config ``m`` (``net`` with its ``_target_``,
    ``channel_order``, ``format``): the checkpoint read in ``m.format`` when it is a published one,
    auto-detected otherwise (``published=False``: the weights a demo training saved)."""
    from reconattack.utils.config import build, factory

    fmt = build(m.format) if checkpoint and published and m.get("format") else None
    return make_face_model(factory(m.net), str(m.get("channel_order", "rgb")), checkpoint=checkpoint, format=fmt,
                           seed=seed)
