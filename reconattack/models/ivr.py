"""IVR network (Dosovitskiy & Brox, *Inverting visual representations with convolutional
networks*, CVPR 2016), applied to SIFT maps as the CFGAN paper's IVR baseline (SPEC §2.5).

The paper inverts shallow features (HOG, SIFT, LBP) with a convolutional encoder that processes
the feature map until it is 64 times smaller than the image, then an up-convolutional decoder
(4x4 transposed convolutions of stride 2) back to the image; every layer but the last is followed
by a leaky ReLU (slope 0.2), and the network is trained with a pixel loss. No skip connections: the
decoder sees only the encoder's code.

:class:`IVRNet` builds that from widths given in the config: ``enc_channels`` (a 4x4 stride-2
convolution and a 3x3 convolution per level), ``bottleneck`` (3x3 convolutions at the smallest
resolution) and ``dec_channels`` (a 4x4 stride-2 transposed convolution and, with
``dec_convs``, a 3x3 convolution per level), then a 3x3 convolution to the image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from reconattack.errors import ConfigError
from reconattack.models.common import check_side

OUTPUTS = ("tanh", "none")


def _lrelu() -> nn.Module:
    return nn.LeakyReLU(0.2, inplace=True)


class IVRNet(nn.Module):
    """Encoder / up-convolutional decoder (see the module docstring).

    Args:
        in_ch: input channels (the 128-channel SIFT map).
        enc_channels: widths of the encoder levels (each halves the side).
        bottleneck: widths of the 3x3 convolutions at the smallest resolution.
        dec_channels: widths of the decoder levels (each doubles the side); there must be
            ``len(enc_channels) + log2(final_scale)`` of them.
        dec_convs: add a 3x3 convolution after each transposed convolution.
        out_ch: output channels.
        output: ``"none"`` (trained toward [-1, 1] with the pixel loss) or ``"tanh"``.
        final_scale: output side / input side (2 for the compressed SIFT map).

    Input (B, in_ch, S, S) with S a multiple of ``2 ** len(enc_channels)``; output
    (B, out_ch, S * final_scale, S * final_scale).
    """

    def __init__(self, in_ch: int = 128, enc_channels: Sequence[int] = (256, 512, 512, 1024, 1024),
                 bottleneck: Sequence[int] = (1024, 1024),
                 dec_channels: Sequence[int] = (1024, 512, 256, 128, 64, 32), dec_convs: bool = True,
                 out_ch: int = 3, output: str = "none", final_scale: int = 2):
        super().__init__()
        if output not in OUTPUTS:
            raise ConfigError(f"IVRNet: output must be one of {OUTPUTS}, got {output!r}")
        ups = len(dec_channels) - len(enc_channels)
        if ups < 0 or 2 ** ups != final_scale:
            raise ConfigError(f"IVRNet: {len(dec_channels)} decoder levels after {len(enc_channels)} "
                              f"encoder levels scale the side by {2.0 ** ups:g}, but final_scale is "
                              f"{final_scale}; use len(enc_channels) + log2(final_scale) decoder levels")
        self.levels, self.output = len(enc_channels), output
        layers: list[nn.Module] = []
        cin = in_ch
        for co in enc_channels:
            layers += [nn.Conv2d(cin, co, 4, 2, 1), _lrelu(), nn.Conv2d(co, co, 3, 1, 1), _lrelu()]
            cin = co
        for co in bottleneck:
            layers += [nn.Conv2d(cin, co, 3, 1, 1), _lrelu()]
            cin = co
        for co in dec_channels:
            layers += [nn.ConvTranspose2d(cin, co, 4, 2, 1), _lrelu()]
            if dec_convs:
                layers += [nn.Conv2d(co, co, 3, 1, 1), _lrelu()]
            cin = co
        layers.append(nn.Conv2d(cin, out_ch, 3, 1, 1))
        self.net = nn.Sequential(*layers)
        for m in self.modules():  # MSRA init for leaky-ReLU networks, zero biases
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, a=0.2, nonlinearity="leaky_relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_side(x, self.levels, "IVRNet")
        out = self.net(x)
        return torch.tanh(out) if self.output == "tanh" else out
