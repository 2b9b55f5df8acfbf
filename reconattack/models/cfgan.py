"""CFGAN networks (paper Figs. 2-3, SPEC §2.2): coarse generator, fine generator, discriminator.

Widths and depth are constructor arguments so that the paper model (128-channel SIFT map of
128x128, images 256x256, ~77M + ~107M + 2x4.6M parameters) and a CPU-sized model (e.g. 64x64
images, a quarter of the widths, fewer levels) are built by the same code.

Conventions: SIFT maps are (B, 128, S, S) float in [-1, 1] with 0 at empty pixels; images are
(B, 3, H, W) RGB, trained toward [-1, 1]; H = S (``compress=false``) or H = 2S (``compress=true``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from reconattack.errors import ConfigError

FUSIONS = ("paper", "official", "concat")
OUTPUT_ACTIVATIONS = ("none", "tanh")


def init_weights(module: nn.Module, gain: float = 0.02) -> None:
    """Official init: xavier_normal(gain) for conv/linear weights, zero bias, BN weight ~ N(1, gain)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_normal_(m.weight, gain=gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)


def _conv_bn_act(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel_size=k, padding=k // 2),
        nn.BatchNorm2d(cout),
        nn.LeakyReLU(0.2),
    )


class Residual(nn.Module):
    """Residual unit: 1x1 -> 3x3 (x ``n3x3``) -> 1x1 conv, each + BN + LeakyReLU(0.2).

    Shortcut: 1x1 conv without BN; output LeakyReLU(main + shortcut). The encoder unit has one
    3x3 conv, the decoder unit two. (B, in_ch, H, W) -> (B, out_ch, H, W).
    """

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, n3x3: int = 1):
        super().__init__()
        layers = [_conv_bn_act(in_ch, mid_ch, 1)]
        layers += [_conv_bn_act(mid_ch, mid_ch, 3) for _ in range(n3x3)]
        layers.append(_conv_bn_act(mid_ch, out_ch, 1))
        self.main = nn.Sequential(*layers)
        self.shortcut = nn.Conv2d(in_ch, out_ch, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.main(x) + self.shortcut(x), 0.2)


class EncoderBlock(nn.Module):
    """``Residual(in, mid, mid)``, ``Residual(mid, out, out)``, AvgPool(2).

    (B, in, H, W) -> pooled (B, out, H/2, W/2) and the pre-pool skip (B, out, H, W).
    ``res2_mid`` narrows the second unit's middle width (default ``out``, official layout).
    """

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, res2_mid: int | None = None):
        super().__init__()
        self.res1 = Residual(in_ch, mid_ch, mid_ch)
        self.res2 = Residual(mid_ch, res2_mid or out_ch, out_ch)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skip = self.res2(self.res1(x))
        return self.pool(skip), skip


class DecoderBlock(nn.Module):
    """Nearest x``scale`` upsampling, [concat skip], decoder unit, [concat skip], decoder unit.

    With a skip of ``skip_ch`` channels: (B, in, H, W) + skip (B, skip_ch, sH, sW) ->
    (B, out, sH, sW); the middle width equals ``in`` (official layout). Without skip
    (``skip_ch=0``) the two units are chained directly.
    """

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int, scale: int = 2):
        super().__init__()
        self.scale = scale
        self.skip_ch = skip_ch
        self.unit1 = Residual(in_ch + skip_ch, in_ch, in_ch, n3x3=2)
        self.unit2 = Residual(in_ch + skip_ch, out_ch, out_ch, n3x3=2)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if self.scale != 1:
            x = F.interpolate(x, scale_factor=self.scale, mode="nearest")
        if self.skip_ch:
            x = self.unit1(torch.cat([x, skip], dim=1))
            return self.unit2(torch.cat([x, skip], dim=1))
        return self.unit2(self.unit1(x))


def adain(content: torch.Tensor, style: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """AdaIN (paper eq. 2): re-normalise ``content`` to the per-channel spatial statistics of ``style``.

    Both (B, C, H, W) (spatial sizes may differ); no parameters; std = sqrt(unbiased var + eps)
    as in the official code. Returns (B, C, H, W) like ``content``.
    """
    if content.shape[:2] != style.shape[:2]:
        raise ValueError(f"AdaIN needs equal (B, C): {tuple(content.shape)} vs {tuple(style.shape)}")
    c_mean, c_std = _mean_std(content, eps)
    s_mean, s_std = _mean_std(style, eps)
    return (content - c_mean) / c_std * s_std + s_mean


def _mean_std(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    flat = x.flatten(2)
    return flat.mean(2)[..., None, None], (flat.var(2) + eps).sqrt()[..., None, None]


class _Decoder(nn.Module):
    """U-Net decoder shared by both generators: skip-connected blocks, then a last block without skip.

    ``enc_channels`` are the skip widths (shallow to deep); ``dec_channels`` the outputs of the
    skip-connected blocks (deep to shallow). The last block upsamples by ``final_scale`` (2 when
    the SIFT map is compressed to half the image size, 1 otherwise) and outputs 3 channels.
    """

    def __init__(self, enc_channels: Sequence[int], dec_channels: Sequence[int], final_scale: int,
                 output_activation: str):
        super().__init__()
        if len(dec_channels) != len(enc_channels):
            raise ConfigError("model.dec_channels must have as many entries as model.enc_channels "
                              f"(got {len(dec_channels)} and {len(enc_channels)})")
        if output_activation not in OUTPUT_ACTIVATIONS:
            raise ConfigError(f"output_activation must be one of {OUTPUT_ACTIVATIONS}, got {output_activation!r}")
        blocks, prev = [], enc_channels[-1]
        for skip_ch, out_ch in zip(reversed(enc_channels), dec_channels):
            blocks.append(DecoderBlock(prev, skip_ch, out_ch))
            prev = out_ch
        self.blocks = nn.ModuleList(blocks)
        self.last = DecoderBlock(prev, 0, 3, scale=final_scale)
        self.output_activation = output_activation

    def forward(self, x: torch.Tensor, skips: Sequence[torch.Tensor]) -> torch.Tensor:
        for block, skip in zip(self.blocks, reversed(skips)):
            x = block(x, skip)
        x = self.last(x)
        return torch.tanh(x) if self.output_activation == "tanh" else x


def _encoder(in_ch: int, enc_channels: Sequence[int], enc_mid: Sequence[int] | None = None) -> nn.ModuleList:
    """Encoder blocks; block i maps width ``prev`` to ``enc_channels[i]`` through a middle width
    ``enc_mid[i]`` (official layout: the block's input width, ``enc_mid=None``)."""
    if enc_mid is not None and len(enc_mid) != len(enc_channels):
        raise ConfigError(f"model enc_mid must have as many entries as enc_channels "
                          f"(got {len(enc_mid)} and {len(enc_channels)})")
    blocks, prev = [], in_ch
    for i, out_ch in enumerate(enc_channels):
        blocks.append(EncoderBlock(prev, prev if enc_mid is None else enc_mid[i], out_ch))
        prev = out_ch
    return nn.ModuleList(blocks)


class CoarseGenerator(nn.Module):
    """Coarse net generator: SIFT map (B, in_ch, S, S) in [-1, 1] -> image (B, 3, S*final_scale, ...).

    Paper/official sizes: in_ch 128, enc_channels (256, 512, 512, 512, 512, 512) taking 128x128
    down to 2x2x512, dec_channels (512, 512, 512, 256, 128, 64), final_scale 2 -> 256x256x3.
    ``in_ch`` is 131 for the fine net's ``fusion=concat`` variant (SIFT map + coarse image).
    ``enc_mid``: middle widths of the encoder blocks (default: each block's input width, as
    the official code; small models narrow the 128-channel first block with it).
    """

    def __init__(self, in_ch: int = 128, enc_channels: Sequence[int] = (256, 512, 512, 512, 512, 512),
                 dec_channels: Sequence[int] = (512, 512, 512, 256, 128, 64), final_scale: int = 2,
                 output_activation: str = "none", enc_mid: Sequence[int] | None = None):
        super().__init__()
        self.encoder = _encoder(in_ch, enc_channels, enc_mid)
        self.decoder = _Decoder(enc_channels, dec_channels, final_scale, output_activation)
        init_weights(self)

    def forward(self, sift: torch.Tensor) -> torch.Tensor:
        x, skips = sift, []
        for block in self.encoder:
            x, skip = block(x)
            skips.append(skip)
        return self.decoder(x, skips)


class FineGenerator(nn.Module):
    """Fine net generator: (SIFT map (B, 128, S, S), coarse image (B, 3, H, H)) -> image (B, 3, H, H).

    ``fusion`` (SPEC §2.2):
      - ``"paper"``: two encoders of the same structure, one on the SIFT map and one on the
        coarse image (first brought to (B, 128, S, S) by ``EncoderBlock(3, 128, 128)``, pooled
        ``final_scale`` times); after every down-sampling level the SIFT features are fused
        with AdaIN(sift, image) before the next SIFT level, every skip sent to the decoder is
        AdaIN(sift skip, image skip), and the decoder starts from AdaIN of the deepest features.
      - ``"official"``: the released code: the coarse image is encoded by
        ``EncoderBlock(3, 128, 128)`` and fused with the raw SIFT map (content = SIFT, style =
        image); both encoders then take that same fused tensor, and at every level both take
        AdaIN(sift features, image features).
      - ``"concat"``: no fusion (Table V "w/o fusion"): SIFT map and the coarse image (resized
        to S x S by area averaging) are concatenated (131 channels) into a coarse-style net.

    ``enc_mid`` / ``stem_mid``: middle widths of the encoder blocks / of both units of the
    image stem (default: official layout).
    """

    def __init__(self, in_ch: int = 128, enc_channels: Sequence[int] = (256, 512, 512, 512, 512, 512),
                 dec_channels: Sequence[int] = (512, 512, 512, 256, 128, 64), final_scale: int = 2,
                 output_activation: str = "none", fusion: str = "paper",
                 enc_mid: Sequence[int] | None = None, stem_mid: int | None = None):
        super().__init__()
        if fusion not in FUSIONS:
            raise ConfigError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        self.fusion = fusion
        self.final_scale = final_scale
        if fusion == "concat":
            self.net = CoarseGenerator(in_ch + 3, enc_channels, dec_channels, final_scale,
                                       output_activation, enc_mid)
            return
        self.image_stem = EncoderBlock(3, stem_mid or in_ch, in_ch, res2_mid=stem_mid)
        self.sift_encoder = _encoder(in_ch, enc_channels, enc_mid)
        self.image_encoder = _encoder(in_ch, enc_channels, enc_mid)
        self.decoder = _Decoder(enc_channels, dec_channels, final_scale, output_activation)
        init_weights(self)

    def _stem(self, coarse: torch.Tensor, size: int) -> torch.Tensor:
        pooled, full = self.image_stem(coarse)  # (B, in_ch, H/2, H/2), (B, in_ch, H, H)
        for x in (pooled, full):
            if x.shape[-1] == size:
                return x
        return F.adaptive_avg_pool2d(full, size)

    def forward(self, sift: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        if self.fusion == "concat":
            img = coarse if coarse.shape[-1] == sift.shape[-1] else F.interpolate(coarse, size=sift.shape[-2:], mode="area")
            return self.net(torch.cat([sift, img], dim=1))
        img = self._stem(coarse, sift.shape[-1])
        skips = []
        if self.fusion == "official":
            x = adain(sift, img)
            for enc_s, enc_i in zip(self.sift_encoder, self.image_encoder):
                s, s_skip = enc_s(x)
                c, c_skip = enc_i(x)
                x = adain(s, c)
                skips.append(adain(s_skip, c_skip))
        else:
            s, c = sift, img
            for enc_s, enc_i in zip(self.sift_encoder, self.image_encoder):
                s, s_skip = enc_s(s)
                c, c_skip = enc_i(c)
                s = adain(s, c)
                skips.append(adain(s_skip, c_skip))
            x = s
        return self.decoder(x, skips)


class Discriminator(nn.Module):
    """Image discriminator (official layout): (B, 3, H, H) in [-1, 1] -> logits (B,).

    A 1x1 stem conv to ``stem`` channels (LeakyReLU), then one level per entry of ``channels``:
    3x3 conv (prev->prev) and 3x3 conv (prev->out), each with BN + LeakyReLU(0.2), AvgPool(2);
    then a 3x3 conv, a 4x4 valid conv (both LeakyReLU) and a linear layer. The number of
    levels must bring H down to 4 (paper: 256 -> 4 with channels 32-64-128-256-256-256).
    The output is a logit; the sigmoid lives in the loss.
    """

    def __init__(self, image_size: int = 256, stem: int = 16,
                 channels: Sequence[int] = (32, 64, 128, 256, 256, 256)):
        super().__init__()
        if image_size // 2 ** len(channels) != 4 or image_size % 2 ** len(channels):
            raise ConfigError(
                f"discriminator: {len(channels)} levels take {image_size}px to "
                f"{image_size / 2 ** len(channels):g}px, but the last 4x4 conv needs 4px; use "
                f"{max(1, (image_size // 4).bit_length() - 1)} entries in model.discriminator.channels")
        layers: list[nn.Module] = [nn.Conv2d(3, stem, 1), nn.LeakyReLU(0.2)]
        prev = stem
        for out in channels:
            layers += [_conv_bn_act(prev, prev, 3), _conv_bn_act(prev, out, 3), nn.AvgPool2d(2)]
            prev = out
        layers += [
            nn.Conv2d(prev, prev, 3, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(prev, prev, 4), nn.LeakyReLU(0.2),
            nn.Flatten(), nn.Linear(prev, 1),
        ]
        self.net = nn.Sequential(*layers)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)
