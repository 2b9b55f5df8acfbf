"""AVIH key models and the DR attack's discriminator (SPEC §3.1, §3.3).

- :class:`UNet`: the standard U-Net (Ronneberger et al.), the paper's key model and the
  attacker's key model G_theta.
- :class:`ResnetGenerator`: the pix2pix / CycleGAN ResNet generator
  (junyanz/pytorch-CycleGAN-and-pix2pix ``networks.py``) with the same module structure and
  state-dict key names, so that a pix2pix ``latest_net_G.pth`` loads with ``strict=True``
  (the official AVIH code's frozen key model: resnet_9blocks, BatchNorm, dropout, tanh).
- :class:`KeyModel`: the package's key-model interface, images (B, 3, H, W) in [-1, 1] in and
  out, whatever range the wrapped network works in.
- :func:`make_key_model`: a fresh (seeded) or checkpoint-loaded key model around a network
  factory (configs name the network with ``_target_``).
- :class:`PatchGAN`: the pix2pix NLayerDiscriminator with an optional tanh last layer
  (paper §III-B, eqs. 11-13; losses in :mod:`reconattack.losses.gan`).

Fresh networks get pix2pix's ``init_weights(init_type="normal", gain=0.02)``.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from reconattack.errors import ConfigError
from reconattack.utils.checkpoints import load_strict, read_checkpoint, state_dict_of
from reconattack.utils.config import as_hw
from reconattack.utils.seeding import seeded

NORMS = ("batch", "instance", "none")
UPSAMPLES = ("bilinear", "transpose")
UNET_OUTPUTS = ("sigmoid", "tanh", "none")
PADDING_TYPES = ("reflect", "replicate", "zero")
RANGES = ("unit", "symmetric")
D_ACTIVATIONS = ("tanh", "none")


def _check(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {allowed}, got {value!r}")


def _norm_layer(norm: str, channels: int) -> nn.Module:
    """pix2pix ``get_norm_layer``: BatchNorm2d (affine, running stats), InstanceNorm2d (no affine,
    no running stats) or Identity."""
    if norm == "batch":
        return nn.BatchNorm2d(channels, affine=True, track_running_stats=True)
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    return nn.Identity()


def init_weights_normal(module: nn.Module, gain: float = 0.02) -> None:
    """pix2pix ``init_weights(net, "normal", gain)``: Conv*/Linear weights ~ N(0, gain), biases 0;
    BatchNorm2d weight ~ N(1, gain), bias 0. Uses the global torch RNG."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)


def init_weights_kaiming(module: nn.Module) -> None:
    """He (Kaiming) normal init for Conv*/Linear weights (ReLU gain), biases 0; BatchNorm weight 1,
    bias 0. Uses the global torch RNG. A randomly initialised key model made this way responds to
    its input across the whole image, unlike the near-constant output of the N(0, 0.02) init."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@torch.no_grad()
def calibrate_batchnorm(module: nn.Module, size: int | tuple[int, int], batches: int = 4,
                        batch_size: int = 32) -> None:
    """Set every BatchNorm's running statistics to those of uniform noise images of ``size``
    (an int: square; or (H, W))
    (global torch RNG), so a random network keeps normalised activations in eval mode. The noise
    covers the package's image range [-1, 1] (what a :class:`KeyModel` receives)."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    was_training = module.training
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    module.train()
    for _ in range(batches):
        module(torch.rand(batch_size, 3, *as_hw(size)) * 2 - 1)
    for m, mom in zip(bns, saved):
        m.momentum = mom
    module.train(was_training)


# ----------------------------------------------------------------------------------------- U-Net


class DoubleConv(nn.Sequential):
    """(conv3x3 (padding 1) -> norm -> ReLU) x 2: (B, cin, H, W) -> (B, cout, H, W).

    Convolutions carry a bias only without BatchNorm (pix2pix convention)."""

    def __init__(self, cin: int, cout: int, norm: str = "batch"):
        bias = norm != "batch"
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=bias), _norm_layer(norm, cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=bias), _norm_layer(norm, cout), nn.ReLU(inplace=True),
        )


class UpBlock(nn.Module):
    """Decoder level: up x2 to ``cskip`` channels, concat the skip, :class:`DoubleConv` -> ``cskip``.

    ``upsample="bilinear"``: bilinear x2 then a 3x3 conv (resize-conv); ``"transpose"``:
    ConvTranspose2d(k2, s2). (B, cin, h, w) + skip (B, cskip, 2h, 2w) -> (B, cskip, 2h, 2w).
    """

    def __init__(self, cin: int, cskip: int, norm: str = "batch", upsample: str = "bilinear"):
        super().__init__()
        if upsample == "bilinear":
            self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                    nn.Conv2d(cin, cskip, 3, padding=1))
        else:
            self.up = nn.ConvTranspose2d(cin, cskip, 2, stride=2)
        self.conv = DoubleConv(2 * cskip, cskip, norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNet(nn.Module):
    """Standard U-Net: (B, in_channels, H, W) -> (B, out_channels, H, W), any H, W.

    Levels: an input :class:`DoubleConv` to ``base`` channels, then ``depth`` times MaxPool(2) +
    DoubleConv, widths ``base * 2**i`` capped at ``base * 8`` (base 64, depth 4: 64-128-256-512-512);
    the decoder mirrors it with :class:`UpBlock` (up x2, concat skip, DoubleConv); a final 1x1
    conv and the ``output`` activation: ``"sigmoid"`` -> (0, 1), ``"tanh"`` -> (-1, 1), ``"none"``
    -> unbounded. Inputs whose sides are not multiples of ``2**depth`` are padded (reflect, or
    replicate when the side is too small to reflect), split evenly between the two sides, and
    the output is cropped back. ``input_range`` declares what the net is fed (``"unit"`` [0, 1]:
    the paper's key model and the official AVIH code; ``"symmetric"`` [-1, 1]) for
    :class:`KeyModel`; ``output_range`` follows from ``output`` (sigmoid: unit, tanh: symmetric).
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 3, base: int = 64, depth: int = 4,
                 norm: str = "batch", upsample: str = "bilinear", output: str = "sigmoid",
                 input_range: str = "unit"):
        super().__init__()
        _check("input_range", input_range, RANGES)
        self.input_range = input_range
        _check("norm", norm, NORMS)
        _check("upsample", upsample, UPSAMPLES)
        _check("output", output, UNET_OUTPUTS)
        if depth < 1 or base < 1:
            raise ConfigError(f"UNet needs depth >= 1 and base >= 1, got depth={depth}, base={base}")
        widths = [base * min(2 ** i, 8) for i in range(depth + 1)]
        self.depth = depth
        self.output = output
        self.output_range = "unit" if output == "sigmoid" else "symmetric"
        self.inc = DoubleConv(in_channels, widths[0], norm)
        self.downs = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), DoubleConv(widths[i], widths[i + 1], norm)) for i in range(depth)
        )
        self.ups = nn.ModuleList(
            UpBlock(widths[i + 1], widths[i], norm, upsample) for i in reversed(range(depth))
        )
        self.outc = nn.Conv2d(widths[0], out_channels, 1)
        init_weights_normal(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = 2 ** self.depth
        ph, pw = (-h) % m, (-w) % m
        pads = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
        if ph or pw:
            mode = "reflect" if max(pads[:2]) < w and max(pads[2:]) < h else "replicate"
            x = F.pad(x, pads, mode=mode)
        x = self.inc(x)
        skips = []
        for down in self.downs:
            skips.append(x)
            x = down(x)
        for up, skip in zip(self.ups, reversed(skips)):
            x = up(x, skip)
        x = self.outc(x)
        if ph or pw:
            x = x[..., pads[2]:pads[2] + h, pads[0]:pads[0] + w]
        if self.output == "sigmoid":
            return torch.sigmoid(x)
        if self.output == "tanh":
            return torch.tanh(x)
        return x


# ------------------------------------------------------------------------- pix2pix ResNet generator


def _pad_layer(padding_type: str) -> tuple[list[nn.Module], int]:
    if padding_type == "reflect":
        return [nn.ReflectionPad2d(1)], 0
    if padding_type == "replicate":
        return [nn.ReplicationPad2d(1)], 0
    return [], 1


class ResnetBlock(nn.Module):
    """pix2pix ResnetBlock: x + conv_block(x), (B, dim, H, W) -> (B, dim, H, W).

    ``conv_block`` (reflect padding): [ReflectionPad2d(1), Conv2d, norm, ReLU, (Dropout(0.5)),
    ReflectionPad2d(1), Conv2d, norm]; with dropout the second conv is ``conv_block.6``,
    without it ``conv_block.5``. ``padding_type="zero"`` drops the pad layers (conv padding 1).
    """

    def __init__(self, dim: int, padding_type: str, norm: str, use_dropout: bool, use_bias: bool):
        super().__init__()
        pad, p = _pad_layer(padding_type)
        layers: list[nn.Module] = [*pad, nn.Conv2d(dim, dim, 3, padding=p, bias=use_bias),
                                   _norm_layer(norm, dim), nn.ReLU(True)]
        if use_dropout:
            layers.append(nn.Dropout(0.5))
        pad, p = _pad_layer(padding_type)
        layers += [*pad, nn.Conv2d(dim, dim, 3, padding=p, bias=use_bias), _norm_layer(norm, dim)]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """pix2pix / CycleGAN ResnetGenerator (``resnet_9blocks`` by default), same keys as the original.

    (B, input_nc, H, W) in [-1, 1] -> (B, output_nc, H, W) in (-1, 1) (tanh); H and W must be
    multiples of 4 to come back at the same size. ``self.model`` indices (9 blocks):
    0 ReflectionPad2d(3), 1 Conv7x7, 2 norm, 3 ReLU, 4-6 and 7-9 downsampling conv(k3, s2, p1)
    + norm + ReLU, 10-18 ResnetBlocks, 19-21 and 22-24 ConvTranspose(k3, s2, p1, op1) + norm +
    ReLU, 25 ReflectionPad2d(3), 26 Conv7x7 (with bias), 27 Tanh. Convs before a norm carry a
    bias only with instance norm (``use_bias``). Parameters with ngf 64, 9 blocks, batch norm:
    11,383,427. Dropout (pix2pix default) is active only in train mode.
    """

    input_range = output_range = "symmetric"

    def __init__(self, input_nc: int = 3, output_nc: int = 3, ngf: int = 64, n_blocks: int = 9,
                 norm: str = "batch", use_dropout: bool = True, padding_type: str = "reflect"):
        super().__init__()
        _check("norm", norm, ("batch", "instance"))
        _check("padding_type", padding_type, PADDING_TYPES)
        if n_blocks < 0:
            raise ConfigError(f"n_blocks must be >= 0, got {n_blocks}")
        use_bias = norm == "instance"
        model: list[nn.Module] = [nn.ReflectionPad2d(3),
                                  nn.Conv2d(input_nc, ngf, kernel_size=7, padding=0, bias=use_bias),
                                  _norm_layer(norm, ngf), nn.ReLU(True)]
        n_down = 2
        for i in range(n_down):
            mult = 2 ** i
            model += [nn.Conv2d(ngf * mult, ngf * mult * 2, kernel_size=3, stride=2, padding=1, bias=use_bias),
                      _norm_layer(norm, ngf * mult * 2), nn.ReLU(True)]
        mult = 2 ** n_down
        model += [ResnetBlock(ngf * mult, padding_type, norm, use_dropout, use_bias) for _ in range(n_blocks)]
        for i in range(n_down):
            mult = 2 ** (n_down - i)
            model += [nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, kernel_size=3, stride=2, padding=1,
                                         output_padding=1, bias=use_bias),
                      _norm_layer(norm, ngf * mult // 2), nn.ReLU(True)]
        model += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, kernel_size=7, padding=0), nn.Tanh()]
        self.model = nn.Sequential(*model)
        init_weights_normal(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


# ------------------------------------------------------------------------------ key-model wrapper


def _to_net(x: torch.Tensor, net_range: str) -> torch.Tensor:
    return (x + 1) / 2 if net_range == "unit" else x


def _from_net(y: torch.Tensor, net_range: str) -> torch.Tensor:
    return y * 2 - 1 if net_range == "unit" else y


class KeyModel(nn.Module):
    """Key-model interface of the package: (B, 3, H, W) in [-1, 1] -> (B, 3, H, W) in [-1, 1].

    The wrapped network ``self.net`` works in its own ranges, read from its ``input_range`` /
    ``output_range`` attributes (``"unit"`` = [0, 1], ``"symmetric"`` = [-1, 1]): a
    :class:`UNet` with a sigmoid output maps [0, 1] to [0, 1] (the paper's key model; the
    official AVIH code works in [0, 1]), the pix2pix :class:`ResnetGenerator` [-1, 1] to [-1, 1].
    The conversion happens here, at the model boundary, and nowhere else. Nothing is clamped:
    the output is bounded by the net's last activation. Checkpoints hold ``self.net``'s state
    dict. Train/eval mode and freezing are left to the caller.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.input_range = getattr(net, "input_range", "symmetric")
        self.output_range = getattr(net, "output_range", "symmetric")
        _check("input_range", self.input_range, RANGES)
        _check("output_range", self.output_range, RANGES)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _from_net(self.net(_to_net(x, self.input_range)), self.output_range)

    def extra_repr(self) -> str:
        return f"net works in input={self.input_range!r}, output={self.output_range!r}"


def load_key_checkpoint(net: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a state dict of ``net`` from ``path`` strictly (``weights_only`` reading).

    Accepts a plain state dict or ``{"state_dict": ...}``; DataParallel ``module.`` prefixes are
    stripped. Two pix2pix compatibility fixes, nothing else: a missing BatchNorm
    ``num_batches_tracked`` (pre-0.4.1 checkpoints) is filled with 0, and ``running_mean`` /
    ``running_var`` / ``num_batches_tracked`` stored for InstanceNorm layers without running
    stats (pix2pix's ``__patch_instance_norm_state_dict``) are dropped. A file that does not fit
    raises :class:`~reconattack.utils.checkpoints.CheckpointMismatchError` naming the keys.
    """
    sd = state_dict_of(read_checkpoint(path, "key-model checkpoint"))
    sd = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in sd.items()}
    own = net.state_dict()
    modules = dict(net.named_modules())
    for key in list(sd):
        mod_name, _, buf = key.rpartition(".")
        if (key not in own and isinstance(modules.get(mod_name), nn.InstanceNorm2d)
                and buf in ("running_mean", "running_var", "num_batches_tracked")):
            del sd[key]
    for key in own:
        if key.endswith(".num_batches_tracked") and key not in sd:
            sd[key] = torch.zeros((), dtype=torch.long)
    return load_strict(net, sd, os.fspath(path), "key-model checkpoint")


KEY_INITS = ("pix2pix", "kaiming")


def make_key_model(make_net: Callable[[], nn.Module], seed: int | None = None, init: str = "pix2pix",
                   calibrate_size: int | tuple[int, int] | None = None,
                   checkpoint: str | os.PathLike | None = None) -> KeyModel:
    """A :class:`KeyModel` around ``make_net()`` (e.g. a Hydra ``_target_`` factory of
    :class:`UNet` or :class:`ResnetGenerator`).

    ``seed``: the network is built and initialised inside :func:`~reconattack.utils.seeding.seeded`
    (the global RNG is left untouched); ``None`` uses the global RNG. ``init``: ``"pix2pix"``
    (N(0, 0.02), for networks about to be trained) or ``"kaiming"`` (:func:`init_weights_kaiming`;
    with ``calibrate_size`` the BatchNorm statistics are then set on noise images of that size —
    a usable *random* key model). ``checkpoint``: weights of the inner network, loaded with
    :func:`load_key_checkpoint`. Returned in train mode, with gradients enabled.
    """
    _check("init", init, KEY_INITS)
    with seeded(seed):
        model = KeyModel(make_net())
        if init == "kaiming":
            init_weights_kaiming(model.net)
            if calibrate_size:
                calibrate_batchnorm(model, calibrate_size)
    if checkpoint is not None:
        load_key_checkpoint(model.net, checkpoint)
    return model


# ---------------------------------------------------------------------------------- discriminator


class PatchGAN(nn.Module):
    """pix2pix NLayerDiscriminator ("basic" D for n_layers=3) with an optional tanh last layer.

    Input (B, input_nc, H, W) in [-1, 1] (pix2pix's range). ``self.model`` (same keys as
    pix2pix): Conv(k4, s2, p1) + LeakyReLU(0.2); n_layers - 1 times Conv(k4, s2, p1) + norm +
    LeakyReLU with ndf * min(2**n, 8) channels; Conv(k4, s1, p1) + norm + LeakyReLU; Conv(k4, s1,
    p1) to 1 channel. Convs before a norm carry a bias unless the norm is BatchNorm (pix2pix has
    none with ``norm="none"`` either; here they do). ``scores(x)``: (B, 1, h, w) pre-activation
    patch scores (70x70 receptive field for n_layers=3; 256 -> 30x30). ``forward(x)``:
    tanh(scores) in (-1, 1) (the paper's "tanh last layer") or the raw scores
    (``last_activation="none"``). Parameters for ndf 64, n_layers 3, batch norm: 2,765,633.
    """

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3, norm: str = "batch",
                 last_activation: str = "tanh"):
        super().__init__()
        _check("norm", norm, NORMS)
        _check("last_activation", last_activation, D_ACTIVATIONS)
        use_bias = norm != "batch"
        kw, padw = 4, 1
        seq: list[nn.Module] = [nn.Conv2d(input_nc, ndf, kernel_size=kw, stride=2, padding=padw),
                                nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2 ** n, 8)
            seq += [nn.Conv2d(ndf * prev, ndf * mult, kernel_size=kw, stride=2, padding=padw, bias=use_bias),
                    _norm_layer(norm, ndf * mult), nn.LeakyReLU(0.2, True)]
        prev, mult = mult, min(2 ** n_layers, 8)
        seq += [nn.Conv2d(ndf * prev, ndf * mult, kernel_size=kw, stride=1, padding=padw, bias=use_bias),
                _norm_layer(norm, ndf * mult), nn.LeakyReLU(0.2, True),
                nn.Conv2d(ndf * mult, 1, kernel_size=kw, stride=1, padding=padw)]
        self.model = nn.Sequential(*seq)
        self.last_activation = last_activation
        init_weights_normal(self)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activation patch scores s, (B, 1, h, w); the JS losses take these."""
        return self.model(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scores(x)
        return torch.tanh(s) if self.last_activation == "tanh" else s
