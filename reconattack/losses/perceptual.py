"""VGG feature losses: perceptual (CFGAN paper eq. 4: VGG19, L1; INV: VGG16, MSE) and Gram-matrix
style (CFGAN Table VI ablation).

Weights: torchvision's VGG19 / VGG16 IMAGENET1K_V1 (``vgg19-dcbb9e9d.pth``,
``vgg16-397923af.pth``), obtained through the pretrained-weights policy
(:mod:`reconattack.utils.weights`): a local file named in the config, the torch hub cache, or a
download. Without them :class:`MissingWeightsError` is raised; the training code refuses a
positive perceptual/style weight then (never random VGG weights).

torchvision is imported when the pretrained VGG is built, not with this module (which the CFGAN
attack imports): ``benchmarks/gpu_check.py`` runs CFGAN, perceptual loss off, with PyTorch alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from reconattack.errors import ConfigError
from reconattack.utils.weights import WeightsSpec, load_state_dict

VGG_WEIGHTS = {
    "vgg19": WeightsSpec(name="VGG19 (torchvision IMAGENET1K_V1, for the perceptual loss)",
                         url="https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"),
    "vgg16": WeightsSpec(name="VGG16 (torchvision IMAGENET1K_V1, for the perceptual loss)",
                         url="https://download.pytorch.org/models/vgg16-397923af.pth"),
}
VGG19_WEIGHTS = VGG_WEIGHTS["vgg19"]
# relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 in torchvision's vgg19().features
DEFAULT_LAYERS = (1, 6, 11, 20, 29)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class VGGFeatures(nn.Module):
    """Frozen VGG feature taps (``arch``: ``"vgg19"`` or ``"vgg16"``).

    Input (B, 3, H, W) RGB in [-1, 1]; it is mapped to [0, 1] and ImageNet-normalised (the
    official code fed unnormalised BGR — a bug not copied). Output: list of feature maps at
    ``layers`` (indices into ``vgg19().features``, each tap taken after that layer).

    ``features`` may be injected (any ``nn.Sequential``; tests use a small random one);
    otherwise the pretrained VGG is loaded from ``weights_path`` / the torch hub cache.
    """

    def __init__(self, layers: Sequence[int] = DEFAULT_LAYERS, weights_path: str | None = None,
                 download: bool = True, features: nn.Sequential | None = None, arch: str = "vgg19"):
        super().__init__()
        if arch not in VGG_WEIGHTS:
            raise ConfigError(f"VGGFeatures: arch must be one of {sorted(VGG_WEIGHTS)}, got {arch!r}")
        if features is None:
            import torchvision

            vgg = getattr(torchvision.models, arch)(weights=None)
            vgg.load_state_dict(load_state_dict(VGG_WEIGHTS[arch], weights_path, download))
            features = vgg.features
        self.layers = tuple(layers)
        self.features = features[: max(self.layers) + 1].eval()
        for p in self.features.parameters():
            p.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> VGGFeatures:  # always frozen, BN-free, eval
        super().train(mode)
        self.features.eval()
        return self

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = ((x + 1) / 2 - self.mean) / self.std
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.layers:
                out.append(x)
        return out


def perceptual_loss(feats_pred: Sequence[torch.Tensor], feats_target: Sequence[torch.Tensor],
                    distance: str = "l1") -> torch.Tensor:
    """Feature distance summed over layers. Scalar.

    ``"l1"``: sum of the mean absolute differences (CFGAN official code); ``"mse_mean"``: mean over
    layers of the mean squared differences (InvSfM's perceptual loss)."""
    if distance == "l1":
        return sum(F.l1_loss(p, t) for p, t in zip(feats_pred, feats_target))
    if distance == "mse_mean":
        return sum(F.mse_loss(p, t) for p, t in zip(feats_pred, feats_target)) / len(feats_pred)
    raise ValueError(f"perceptual_loss distance must be 'l1' or 'mse_mean', got {distance!r}")


def gram(x: torch.Tensor) -> torch.Tensor:
    """Gram matrix (B, C, C) of features (B, C, H, W), normalised by C*H*W."""
    b, c, h, w = x.shape
    f = x.reshape(b, c, h * w)
    return f @ f.transpose(1, 2) / (c * h * w)


def style_loss(feats_pred: Sequence[torch.Tensor], feats_target: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum over layers of the mean absolute difference of Gram matrices (Table VI "w L_style"). Scalar."""
    return sum(F.l1_loss(gram(p), gram(t)) for p, t in zip(feats_pred, feats_target))
