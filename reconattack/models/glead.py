"""GleaD's networks, SIFT-conditioned (Bai et al., *GLeaD: Improving GANs with a generator-leading
task*, CVPR 2023, read from the paper; its code is StyleGAN2-ADA under NVIDIA's non-commercial
licence and is not used). Networks only; the adaptation is described in
:mod:`reconattack.attacks.glead` and ``conf/model/glead_paper.yaml``.

- every convolution and linear layer uses StyleGAN2's *equalized learning rate*
  (:class:`EqualizedConv2d`, :class:`EqualizedLinear`: weights stored N(0, 1), scaled by
  1 / sqrt(fan_in) when used) and its activation, leaky ReLU x sqrt 2: the learning rates of
  ``conf/attack/glead.yaml`` are StyleGAN2's, which presuppose both;
- :class:`ModulatedConv2d` — StyleGAN2's convolution: weights scaled per sample by a style
  (an affine map of a latent code w) and demodulated (each output channel's weights renormalised
  to unit norm), computed as one grouped convolution over the batch.
- :class:`GleaDSynthesis` — a StyleGAN2-style synthesis network that starts from a spatial
  feature map at ``start`` resolution (not a learnt constant) and doubles it per block up to the
  image (two modulated 3x3 convolutions with noise and leaky ReLU, then a modulated 1x1 to RGB
  added to the upsampled RGB of the blocks before: the skip architecture); one w per block.
- :class:`SiftEncoder` — the SIFT map (B, C, S, S) to that spatial map and the w codes.
- :class:`GleaDGenerator` — encoder + synthesis: map → image (B, 3, H, W), trained toward
  [-1, 1] with a linear output as StyleGAN2's (no tanh: a saturated tanh stops the L1 term's
  gradient, and the demo's run never came back from one; the evaluation clamps).
- :class:`GleaDDiscriminator` — a residual discriminator (StyleGAN2's resnet architecture) with
  GLeaD's decoding heads: from its features of an image, the spatial map and the w codes that the
  generator's synthesis must turn back into that image (:meth:`GleaDDiscriminator.leading`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from reconattack.errors import ConfigError


class EqualizedConv2d(nn.Module):
    """StyleGAN2's convolution with the equalized learning rate: the weights are stored N(0, 1)
    and scaled by 1 / sqrt(fan_in) at every forward pass, so an Adam step moves every layer's
    effective weights by the same relative amount (StyleGAN2's learning rates, 2e-3 to 2.5e-3,
    presuppose it; with the scale folded into stored weights they are about sqrt(fan_in) times
    too large and the demo diverged). (B, in_ch, H, W) → (B, out_ch, H / stride, W / stride)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias else None
        self.gain, self.stride, self.padding = 1 / math.sqrt(in_ch * kernel * kernel), int(stride), kernel // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.gain, self.bias, self.stride, self.padding)


class EqualizedLinear(nn.Module):
    """StyleGAN2's fully connected layer with the equalized learning rate (weights N(0, 1) scaled
    by 1 / sqrt(in_features) at run time; the bias starts at ``bias_init``: 1 for the affine maps
    to styles). (..., in_features) → (..., out_features)."""

    def __init__(self, in_features: int, out_features: int, bias_init: float = 0.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init)))
        self.gain = 1 / math.sqrt(in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.gain, self.bias)


class ScaledLeakyReLU(nn.Module):
    """Leaky ReLU (slope 0.2) times sqrt 2: StyleGAN2's activation, which keeps unit-variance
    activations unit-variance."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x, 0.2) * math.sqrt(2)


class ModulatedConv2d(nn.Module):
    """StyleGAN2's modulated convolution (see the module docstring).

    Input x (B, in_ch, H, W) and w (B, w_dim); output (B, out_ch, H', W') with H' = 2H when ``up``
    (bilinear upsampling before the convolution). As StyleGAN2's: weights stored N(0, 1), styles
    from an equalized affine map starting at 1; without demodulation (the RGB layers) the styles
    are scaled by 1 / sqrt(fan_in).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, w_dim: int, demodulate: bool = True,
                 up: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel, kernel))
        self.affine = EqualizedLinear(w_dim, in_ch, bias_init=1.0)  # styles start near 1
        self.style_gain = 1.0 if demodulate else 1 / math.sqrt(in_ch * kernel * kernel)
        self.demodulate, self.up, self.padding = bool(demodulate), bool(up), kernel // 2

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        b, c, h, wd = x.shape
        if self.up:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            h, wd = 2 * h, 2 * wd
        style = self.affine(w) * self.style_gain  # (B, in)
        weight = self.weight[None] * style[:, None, :, None, None]  # (B, out, in, k, k)
        if self.demodulate:
            weight = weight * torch.rsqrt(weight.pow(2).sum((2, 3, 4), keepdim=True) + 1e-8)
        out = F.conv2d(x.reshape(1, b * c, h, wd), weight.reshape(-1, c, *weight.shape[-2:]),
                       padding=self.padding, groups=b)
        return out.reshape(b, -1, h, wd)


class StyledLayer(nn.Module):
    """Modulated 3x3 convolution, per-pixel noise (learnt strength; in training only: a
    reconstruction is deterministic), bias, leaky ReLU (x sqrt 2)."""

    def __init__(self, in_ch: int, out_ch: int, w_dim: int, up: bool = False) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, out_ch, 3, w_dim, up=up)
        self.noise_strength = nn.Parameter(torch.zeros(()))
        self.bias = nn.Parameter(torch.zeros(out_ch))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x = self.conv(x, w)
        if self.training:
            x = x + self.noise_strength * torch.randn(x.shape[0], 1, *x.shape[2:], device=x.device, dtype=x.dtype)
        return F.leaky_relu(x + self.bias[None, :, None, None], 0.2) * math.sqrt(2)


class SynthesisBlock(nn.Module):
    """Two styled layers (the first upsampling) and the block's RGB (modulated 1x1, no demodulation)."""

    def __init__(self, in_ch: int, out_ch: int, w_dim: int, up: bool = True) -> None:
        super().__init__()
        self.conv0 = StyledLayer(in_ch, out_ch, w_dim, up=up)
        self.conv1 = StyledLayer(out_ch, out_ch, w_dim)
        self.to_rgb = ModulatedConv2d(out_ch, 3, 1, w_dim, demodulate=False)
        self.rgb_bias = nn.Parameter(torch.zeros(3))

    def forward(self, x: torch.Tensor, rgb: torch.Tensor | None, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv1(self.conv0(x, w), w)
        y = self.to_rgb(x, w) + self.rgb_bias[None, :, None, None]
        if rgb is not None:
            y = y + F.interpolate(rgb, size=y.shape[-2:], mode="bilinear", align_corners=False)
        return x, y


class GleaDSynthesis(nn.Module):
    """The synthesis network (see the module docstring).

    Args:
        widths: channels at ``start`` resolution, then after each doubling; the image side is
            ``start * 2 ** (len(widths) - 1)``.
        w_dim: latent code size; one code per block (``num_ws = len(widths)``).

    ``forward(spatial (B, widths[0], start, start), ws (B, num_ws, w_dim))`` → (B, 3, H, W), the
    summed RGB of the blocks, linear (StyleGAN2's skip output; trained toward [-1, 1], not bounded).
    """

    def __init__(self, widths: Sequence[int], w_dim: int = 512) -> None:
        super().__init__()
        w = [int(c) for c in widths]
        self.blocks = nn.ModuleList([SynthesisBlock(w[0], w[0], w_dim, up=False)]
                                    + [SynthesisBlock(a, b, w_dim) for a, b in zip(w[:-1], w[1:])])
        self.num_ws, self.w_dim, self.in_ch = len(self.blocks), int(w_dim), w[0]

    def forward(self, spatial: torch.Tensor, ws: torch.Tensor) -> torch.Tensor:
        x, rgb = spatial, None
        for i, block in enumerate(self.blocks):
            x, rgb = block(x, rgb, ws[:, i])
        return rgb


def _down(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(EqualizedConv2d(in_ch, out_ch, 3, 2), ScaledLeakyReLU(),
                         EqualizedConv2d(out_ch, out_ch, 3), ScaledLeakyReLU())


class SiftEncoder(nn.Module):
    """SIFT map (B, in_ch, S, S) → ``spatial`` (B, widths[-1], S / 2^(len-1), ...) and ``ws``
    (B, num_ws, w_dim): a 3x3 stem at S, then a stride-2 stage per further width; the codes from
    the pooled last feature map."""

    def __init__(self, in_ch: int, widths: Sequence[int], num_ws: int, w_dim: int) -> None:
        super().__init__()
        w = [int(c) for c in widths]
        self.stem = nn.Sequential(EqualizedConv2d(in_ch, w[0], 3), ScaledLeakyReLU())
        self.stages = nn.Sequential(*[_down(a, b) for a, b in zip(w[:-1], w[1:])])
        self.to_ws = EqualizedLinear(w[-1], num_ws * w_dim)
        self.num_ws, self.w_dim = int(num_ws), int(w_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat = self.stages(self.stem(x))
        ws = self.to_ws(feat.mean((2, 3))).view(-1, self.num_ws, self.w_dim)
        return feat, ws


class GleaDGenerator(nn.Module):
    """SIFT map (B, in_ch, S, S) → image (B, 3, H, W) (linear, trained toward [-1, 1]): :class:`SiftEncoder` to the
    synthesis's start map and codes, then :class:`GleaDSynthesis`. The start resolution is the
    map's after ``len(encoder) - 1`` halvings; the image's after ``len(synthesis) - 1`` doublings
    of it."""

    def __init__(self, in_ch: int = 128, encoder: Sequence[int] = (256, 512, 512, 512),
                 synthesis: Sequence[int] = (512, 512, 512, 256, 128), w_dim: int = 512) -> None:
        super().__init__()
        if int(encoder[-1]) != int(synthesis[0]):
            raise ConfigError(f"GleaD: the encoder's last width ({encoder[-1]}) must be the synthesis's first "
                              f"({synthesis[0]})")
        self.synthesis = GleaDSynthesis(synthesis, w_dim)
        self.encoder = SiftEncoder(in_ch, encoder, self.synthesis.num_ws, w_dim)
        self.scale = 2 ** (len(synthesis) - 1) / 2 ** (len(encoder) - 1)  # image side / map side

    def forward(self, sift: torch.Tensor) -> torch.Tensor:
        return self.synthesis(*self.encoder(sift))


class _ResBlock(nn.Module):
    """StyleGAN2's residual discriminator block: two 3x3 convolutions (the second halving) and a
    1x1 halving skip, summed and scaled by 1/sqrt 2."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv0 = EqualizedConv2d(in_ch, in_ch, 3)
        self.conv1 = EqualizedConv2d(in_ch, out_ch, 3, 2)
        self.skip = EqualizedConv2d(in_ch, out_ch, 1, 2, bias=False)
        self.act = ScaledLeakyReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.conv1(self.act(self.conv0(x))))
        return (y + self.skip(x)) / math.sqrt(2)


class GleaDDiscriminator(nn.Module):
    """A residual discriminator with GLeaD's decoding heads (see the module docstring).

    Args:
        widths: channels at the image's resolution, then after each halving (to 4x4 at 256 px).
        image_size: the image side (sizes the final linear layer).
        lead_at: how many halvings down the spatial head reads (its resolution must be the
            synthesis's start); ``spatial_ch``: the synthesis's first width.
        num_ws, w_dim: the synthesis's codes.

    ``forward(x)`` → (B,) logits; :meth:`leading` → (logits, spatial, ws).
    """

    def __init__(self, widths: Sequence[int] = (128, 256, 512, 512, 512, 512, 512), lead_at: int = 4,
                 spatial_ch: int = 512, num_ws: int = 5, w_dim: int = 512, image_size: int = 256) -> None:
        super().__init__()
        w = [int(c) for c in widths]
        if not 0 < lead_at < len(w):
            raise ConfigError(f"GleaD discriminator: lead_at must be in (0, {len(w)}), got {lead_at}")
        side = int(image_size) // 2 ** (len(w) - 1)
        if side < 1 or side * 2 ** (len(w) - 1) != int(image_size):
            raise ConfigError(f"GleaD discriminator: {len(w) - 1} halvings do not divide the image side {image_size}")
        self.from_rgb = EqualizedConv2d(3, w[0], 1)
        self.blocks = nn.ModuleList(_ResBlock(a, b) for a, b in zip(w[:-1], w[1:]))
        self.lead_at = int(lead_at)
        self.out = nn.Sequential(EqualizedConv2d(w[-1], w[-1], 3), ScaledLeakyReLU(), nn.Flatten(),
                                 EqualizedLinear(w[-1] * side * side, w[-1]), ScaledLeakyReLU(),
                                 EqualizedLinear(w[-1], 1))
        self.to_spatial = EqualizedConv2d(w[lead_at], spatial_ch, 3)
        self.to_ws = EqualizedLinear(w[-1], num_ws * w_dim)
        self.num_ws, self.w_dim = int(num_ws), int(w_dim)

    def _trunk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.leaky_relu(self.from_rgb(x), 0.2) * math.sqrt(2)
        lead = None
        for i, block in enumerate(self.blocks, start=1):
            h = block(h)
            if i == self.lead_at:
                lead = h
        return h, lead

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self._trunk(x)[0]).squeeze(1)

    def leading(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits (B,), spatial (B, spatial_ch, r, r), ws (B, num_ws, w_dim)) of images x."""
        h, lead = self._trunk(x)
        ws = self.to_ws(h.mean((2, 3))).view(-1, self.num_ws, self.w_dim)
        return self.out(h).squeeze(1), self.to_spatial(lead), ws


__all__ = ["EqualizedConv2d", "EqualizedLinear", "GleaDDiscriminator", "GleaDGenerator", "GleaDSynthesis", "ModulatedConv2d", "SiftEncoder"]
