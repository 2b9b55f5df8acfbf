"""InvSfM networks (Pittaluga et al., *Revealing scenes by inverting structure from motion
reconstructions*, CVPR 2019; ``francescopittaluga/invsfm`` ``models.py``), applied to SIFT maps
as the CFGAN paper's INV baseline (SPEC §2.5).

- :class:`InvNet` — the U-Net behind CoarseNet and RefineNet: an encoder of 4x4 stride-2
  convolutions (reflect padding 1, batch norm, activation), a decoder of nearest x2 upsampling +
  3x3 convolutions (reflect padding 1, batch norm, activation; dropout 0.5 on the first three in
  training) that concatenates the encoder's features ``skip_connections`` times (the deepest
  first, the input itself last), a few more 3x3 convolutions and a last 3x3 convolution to the
  output. Official widths: encoder 256-256-256-512-512-512, decoder 512-512-512-256-256-256-
  128-64-32; CoarseNet ReLU with 6 skip connections and a tanh output, RefineNet LeakyReLU with 4.
  The official batch norm has no scale or shift (a bias follows it); so here.
- :class:`InvDiscriminator` — RefineNet's adversary: 3x3 convolutions (batch norm, LeakyReLU) and
  2x2 max pooling, then fully connected layers (dropout 0.5) to one logit. The official
  discriminator also concatenates VGG16 features of the image at its first three levels; they need
  pretrained VGG16 weights and are left out here (a config without them runs offline).

``final_scale``: the SIFT threat's compressed map is half the image side; the decoder then
upsamples once more before the convolutions after the skip connections, so the output has the
image's size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from reconattack.errors import ConfigError
from reconattack.models.common import check_side

ACTIVATIONS = ("relu", "lrelu")
OUTPUTS = ("tanh", "none")


def _act(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ConfigError(f"activation must be one of {ACTIVATIONS}, got {name!r}")
    return nn.ReLU() if name == "relu" else nn.LeakyReLU(0.2)  # TF's leaky_relu: alpha 0.2


class _Conv(nn.Sequential):
    """Reflect-pad 1, conv (k, stride), batch norm without scale/shift then bias (official), act."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, act: str, bn: bool = True,
                 dropout: float = 0.0):
        layers: list[nn.Module] = [nn.ReflectionPad2d(1), nn.Conv2d(cin, cout, k, stride, bias=not bn)]
        if bn:
            layers += [nn.BatchNorm2d(cout, eps=1e-3, affine=False), _Bias(cout)]
        if dropout:
            layers.append(nn.Dropout(dropout))
        layers.append(_act(act))
        super().__init__(*layers)


class _Bias(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias.view(1, -1, 1, 1)


class InvNet(nn.Module):
    """InvSfM's U-Net (see the module docstring).

    Args:
        in_ch: input channels (CoarseNet: the 128-channel SIFT map; RefineNet: the map plus the
            coarse image).
        enc_channels: widths of the stride-2 encoder convolutions (the input side must be a
            multiple of ``2 ** len(enc_channels)``).
        dec_channels: widths of the decoder's 3x3 convolutions; the first ``len(enc_channels)``
            follow an x2 upsampling each.
        skip_connections: how many decoder convolutions get an encoder feature concatenated
            (CoarseNet 6, RefineNet 4).
        act: ``"relu"`` (CoarseNet) or ``"lrelu"`` (RefineNet).
        output: ``"tanh"`` (official) or ``"none"``.
        dropout: dropout rate on the first three decoder convolutions (official 0.5).
        out_ch: output channels.
        final_scale: output side / input side (1, or 2 for a compressed SIFT map).

    Input (B, in_ch, S, S); output (B, out_ch, S * final_scale, S * final_scale), in (-1, 1)
    with the tanh output.
    """

    def __init__(self, in_ch: int = 128, enc_channels: Sequence[int] = (256, 256, 256, 512, 512, 512),
                 dec_channels: Sequence[int] = (512, 512, 512, 256, 256, 256, 128, 64, 32),
                 skip_connections: int = 6, act: str = "relu", output: str = "tanh",
                 dropout: float = 0.5, out_ch: int = 3, final_scale: int = 1):
        super().__init__()
        n_enc = len(enc_channels)
        if len(dec_channels) < n_enc or not 0 <= skip_connections <= n_enc:
            raise ConfigError(f"InvNet: need len(dec_channels) >= len(enc_channels) = {n_enc} and "
                              f"0 <= skip_connections <= {n_enc}, got {len(dec_channels)} and "
                              f"{skip_connections}")
        if output not in OUTPUTS:
            raise ConfigError(f"InvNet: output must be one of {OUTPUTS}, got {output!r}")
        self.extra_ups = int(round(math.log2(final_scale)))
        if 2 ** self.extra_ups != final_scale or len(dec_channels) - n_enc < self.extra_ups:
            raise ConfigError(f"InvNet: final_scale must be a power of 2 with as many decoder "
                              f"convolutions after the skips, got {final_scale}")
        self.n_enc, self.skip_connections, self.output = n_enc, int(skip_connections), output
        self.final_scale = int(final_scale)
        enc_in = [in_ch, *enc_channels[:-1]]
        self.encoder = nn.ModuleList(_Conv(ci, co, 4, 2, act) for ci, co in zip(enc_in, enc_channels))
        skip_widths = list(reversed([in_ch, *enc_channels]))[1:]  # deepest encoder feature first
        self.decoder = nn.ModuleList()
        cin = enc_channels[-1]
        for i, co in enumerate(dec_channels):
            self.decoder.append(_Conv(cin, co, 3, 1, act, dropout=dropout if i < 3 else 0.0))
            cin = co + (skip_widths[i] if i < self.skip_connections else 0)
        self.head = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(cin, out_ch, 3))  # no BN, no act
        self._init()

    def _init(self) -> None:
        """Official init: conv weights U(-sqrt(3 / fan_in), +sqrt(3 / fan_in)), biases 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                bound = math.sqrt(3.0 / (m.in_channels * m.kernel_size[0] * m.kernel_size[1]))
                nn.init.uniform_(m.weight, -bound, bound)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_side(x, self.n_enc, "InvNet")
        skips = [x]
        out = x
        for layer in self.encoder:
            out = layer(out)
            skips.append(out)
        skips = list(reversed(skips))[1:]
        for i, layer in enumerate(self.decoder):
            if i < self.n_enc or self.n_enc <= i < self.n_enc + self.extra_ups:
                out = F.interpolate(out, scale_factor=2, mode="nearest")
            out = layer(out)
            if i < self.skip_connections:
                out = torch.cat((skips[i], out), dim=1)
        out = self.head(out)
        return torch.tanh(out) if self.output == "tanh" else out


class InvDiscriminator(nn.Module):
    """RefineNet's discriminator (see the module docstring): (B, in_ch, H, W) -> (B,) logits.

    Args:
        in_ch: input channels (the image and what it is conditioned on).
        image_size: input side (must be a multiple of ``2 ** len(channels)``).
        channels: widths of the 3x3 convolutions, each followed by 2x2 max pooling
            (official 256-256-256-512-512).
        fc: widths of the fully connected layers (official 1024-1024-1024, dropout 0.5).
    """

    def __init__(self, in_ch: int = 134, image_size: int = 256,
                 channels: Sequence[int] = (256, 256, 256, 512, 512), fc: Sequence[int] = (1024, 1024, 1024),
                 dropout: float = 0.5):
        super().__init__()
        side = image_size // 2 ** len(channels)
        if side < 1 or image_size % 2 ** len(channels):
            raise ConfigError(f"InvDiscriminator: image_size {image_size} must be a multiple of "
                              f"2 ** {len(channels)} (one max pooling per level)")
        layers: list[nn.Module] = []
        cin = in_ch
        for co in channels:
            layers += [nn.Conv2d(cin, co, 3, padding=1, bias=False),
                       nn.BatchNorm2d(co, eps=1e-3, affine=False), _Bias(co), nn.LeakyReLU(0.2),
                       nn.MaxPool2d(2)]
            cin = co
        layers.append(nn.Flatten())
        cin = cin * side * side
        for co in fc:
            layers += [nn.Linear(cin, co), nn.LeakyReLU(0.2), nn.Dropout(dropout)]
            cin = co
        layers.append(nn.Linear(cin, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)
