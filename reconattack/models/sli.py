"""SLI's networks (Wu & Zhou, *Privacy leakage of SIFT features via deep generative model based image
reconstruction*, IEEE TIFS 2021; the official code ``HighwayWu/SIFT_Reconstruction`` ``main.py``
read as facts, SPEC §2.5). Networks only.

- :class:`SLIUNet` — both of SLI's generators: a U-Net of ``len(widths)`` stride-2 stages
  (official: 8 at 256², widths 64, 128, 256, 512, 512, 512, 512, 512). Encoder: a 4x4 stride-2
  convolution, then per stage LeakyReLU(0.2) → 4x4 stride-2 convolution → InstanceNorm (none on
  the first); the innermost stage adds ReLU → up-step → InstanceNorm. Decoder: per stage ReLU →
  up-step on the concatenation with the encoder's feature of the same size → InstanceNorm (none
  on the last), then tanh. The **LBP generator** (``up="nearest"``: nearest upsampling and a 3x3
  convolution; SIFT map 128 → LBP 1 channel; 39,279,105 parameters at the official sizes) and the
  **image generator** (``up="transpose"``: 4x4 stride-2 transposed convolutions; SIFT map + LBP
  129 → RGB 3 channels; 54,538,627).
- :class:`SLIDiscriminator` — a PatchGAN: 4x4 convolutions of stride 2, 2, 2, 1, 1 (widths 64,
  128, 256, 512, then 1 channel), LeakyReLU(0.2), no normalisation, and (official) a sigmoid on
  the output (2,762,689 parameters on the 1-channel LBP; 2,764,737 on RGB).

Weights are initialised as the official ``init_weights``: Xavier-normal with gain 0.02 on
convolutions, biases 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from reconattack.errors import ConfigError

#: the official sizes at 256x256 (8 stride-2 stages)
OFFICIAL_WIDTHS = (64, 128, 256, 512, 512, 512, 512, 512)
UP_MODES = ("nearest", "transpose")


def init_xavier(module: nn.Module, gain: float = 0.02) -> None:
    """The official ``init_weights('xavier', 0.02)``: conv / linear weights Xavier-normal, biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.xavier_normal_(m.weight, gain=gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _up(in_ch: int, out_ch: int, mode: str) -> list[nn.Module]:
    if mode == "nearest":
        return [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(in_ch, out_ch, 3, 1, 1)]
    return [nn.ConvTranspose2d(in_ch, out_ch, 4, 2, 1)]


class SLIUNet(nn.Module):
    """SLI's U-Net generator (see the module docstring).

    Args:
        in_ch: input channels (LBP net: the map's 128; image net: 128 + 1, or 1 for SLI-B).
        out_ch: output channels (LBP 1, image 3).
        widths: encoder widths, one stride-2 stage each; the input side must be divisible by
            ``2 ** len(widths)``.
        up: ``"nearest"`` (LBP generator) or ``"transpose"`` (image generator).

    Input (B, in_ch, H, W); output (B, out_ch, H, W) in [-1, 1] (tanh).
    """

    def __init__(self, in_ch: int = 128, out_ch: int = 1, widths: Sequence[int] = OFFICIAL_WIDTHS,
                 up: str = "nearest") -> None:
        super().__init__()
        if up not in UP_MODES:
            raise ConfigError(f"SLIUNet up must be one of {UP_MODES}, got {up!r}")
        w = [int(c) for c in widths]
        if len(w) < 2:
            raise ConfigError(f"SLIUNet needs at least two stages, got widths={list(widths)}")
        self.depth = len(w)
        down = [nn.Sequential(nn.Conv2d(in_ch, w[0], 4, 2, 1))]
        for i in range(1, len(w) - 1):
            down.append(nn.Sequential(nn.LeakyReLU(0.2, True), nn.Conv2d(w[i - 1], w[i], 4, 2, 1),
                                      nn.InstanceNorm2d(w[i])))
        self.down = nn.ModuleList(down)
        # innermost: down to the last width, straight back up to the one before
        self.inner = nn.Sequential(nn.LeakyReLU(0.2, True), nn.Conv2d(w[-2], w[-1], 4, 2, 1), nn.ReLU(True),
                                   *_up(w[-1], w[-2], up), nn.InstanceNorm2d(w[-2]))
        ups = []
        for i in range(len(w) - 2, 0, -1):  # concatenation with the encoder feature of width w[i]
            ups.append(nn.Sequential(nn.ReLU(True), *_up(2 * w[i], w[i - 1], up), nn.InstanceNorm2d(w[i - 1])))
        ups.append(nn.Sequential(nn.ReLU(True), *_up(2 * w[0], out_ch, up)))
        self.up = nn.ModuleList(ups)
        init_xavier(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        side = 2 ** self.depth
        if x.shape[-1] % side or x.shape[-2] % side:
            raise ValueError(f"SLIUNet with {self.depth} stages takes sides divisible by {side}, got "
                             f"{tuple(x.shape[-2:])}")
        feats = []
        for layer in self.down:
            x = layer(x)
            feats.append(x)
        x = self.inner(x)
        for layer, skip in zip(self.up, reversed(feats)):
            x = layer(torch.cat([x, skip], dim=1))
        return torch.tanh(x)


class SLIDiscriminator(nn.Module):
    """SLI's PatchGAN (see the module docstring).

    Args:
        in_ch: 1 (LBP) or 3 (RGB).
        widths: the four hidden widths (official 64, 128, 256, 512).
        sigmoid: a sigmoid on the output, as the official code (whose relativistic loss then
            takes these probabilities as logits); False gives raw scores.

    Input (B, in_ch, H, W) in [-1, 1]; output (B, 1, h, w) patch scores (h = H/8 - 2).
    """

    def __init__(self, in_ch: int = 3, widths: Sequence[int] = (64, 128, 256, 512), sigmoid: bool = True) -> None:
        super().__init__()
        w = [int(c) for c in widths]
        if len(w) != 4:
            raise ConfigError(f"SLIDiscriminator takes four widths, got {list(widths)}")
        strides = (2, 2, 2, 1)
        layers, prev = [], in_ch
        for c, s in zip(w, strides):
            layers += [nn.Conv2d(prev, c, 4, s, 1), nn.LeakyReLU(0.2, True)]
            prev = c
        layers.append(nn.Conv2d(prev, 1, 4, 1, 1))
        self.model = nn.Sequential(*layers)
        self.sigmoid = bool(sigmoid)
        init_xavier(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return torch.sigmoid(out) if self.sigmoid else out


class SLIPipeline(nn.Module):
    """The whole SLI at inference: SIFT map (B, 128, S, S) → image net(map, LBP net(map))."""

    def __init__(self, lbp: nn.Module, image: nn.Module) -> None:
        super().__init__()
        self.lbp, self.image = lbp, image

    def forward(self, sift: torch.Tensor) -> torch.Tensor:
        return self.image(torch.cat([self.lbp(sift), sift], dim=1))


__all__ = ["OFFICIAL_WIDTHS", "SLIDiscriminator", "SLIPipeline", "SLIUNet", "init_xavier"]
