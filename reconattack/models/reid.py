"""TransReID (He et al., ICCV 2021) — the re-identification service and evaluation models of the
AVIH attack paper's Appendix A (SPEC §3.5). Networks only.

:class:`TransReID` is ``build_transformer_local`` of the official code, read as facts: a ViT-B/16
(:class:`TransReIDBackbone`, the checkpoint's ``base.*``) whose patches overlap (16x16 kernel,
stride 12: 256x128 -> 21x10 patches), with side-information embeddings (SIE: a learnt vector per
camera, or per camera x view, added to the position embedding with coefficient 3.0), the first
11 of its 12 blocks shared, then the jigsaw patch module (JPM): the last block and the final
norm, copied twice — ``b1`` on all tokens (the global feature), ``b2`` on the class token with
each of 4 groups of patch tokens after the official shift (the patches rotated by ``shift - 1``:
:func:`shuffle_tokens`) and a shuffle in 2 groups (the local features). Test feature (NECK_FEAT "before"): the global feature and the four local
ones divided by 4, concatenated before the BN necks (5 x 768 = 3,840-d). Checkpoints are the
official training's ``torch.save(model.state_dict())``: ``base.*`` (with an unused ``base.fc``),
``b1.*``, ``b2.*``, ``bottleneck[_1.._4].*``, ``classifier[_1.._4].weight``.

:class:`ReidEmbedder` is the package's interface (as :class:`reconattack.models.face.FaceEmbedder`
for faces): ``forward(images, cams=None, views=None)`` takes (B, 3, H, W) RGB in [-1, 1],
normalises with the model config's mean / std and returns unit-norm (B, 3840) features,
differentiable. :func:`make_reid_model` builds and loads it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from reconattack.errors import ConfigError
from reconattack.utils.checkpoints import load_strict, read_checkpoint


class PatchEmbedOverlap(nn.Module):
    """Overlapping patches: Conv2d(in, dim, patch, stride) → (B, num_y * num_x, dim) tokens, for
    (B, in, H, W) input of the configured (H, W)."""

    def __init__(self, img_size: Sequence[int], patch: int = 16, stride: int = 12, in_chans: int = 3,
                 dim: int = 768) -> None:
        super().__init__()
        h, w = int(img_size[0]), int(img_size[1])
        if h < patch or w < patch:
            raise ConfigError(f"TransReID: image size {h}x{w} is smaller than a patch ({patch})")
        self.img_size = (h, w)
        self.num_y, self.num_x = (h - patch) // stride + 1, (w - patch) // stride + 1
        self.num_patches = self.num_y * self.num_x
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.img_size:
            raise ValueError(f"TransReID takes {self.img_size[0]}x{self.img_size[1]} images, got "
                             f"{x.shape[-2]}x{x.shape[-1]}")
        return self.proj(x).flatten(2).transpose(1, 2)


class TransReIDBackbone(nn.Module):
    """The ViT of TransReID (``base.*``): overlapping patch embedding, class token, position
    embedding + SIE, ``depth`` blocks, final norm, an unused ``fc`` (kept: the checkpoints hold
    it). :meth:`forward` returns the tokens after all blocks but the last (B, 1 + N, dim): JPM
    applies the last one itself."""

    def __init__(self, img_size: Sequence[int] = (256, 128), patch: int = 16, stride: int = 12,
                 dim: int = 768, depth: int = 12, heads: int = 12, mlp_ratio: float = 4.0,
                 cameras: int = 0, views: int = 0, sie_coef: float = 3.0, drop_path: float = 0.1,
                 fc_classes: int = 1000) -> None:
        super().__init__()
        self.patch_embed = PatchEmbedOverlap(img_size, patch, stride, 3, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, dim))
        self.cameras, self.views, self.sie_coef = int(cameras), int(views), float(sie_coef)
        if self.cameras > 1 and self.views > 1:
            self.sie_embed = nn.Parameter(torch.zeros(self.cameras * self.views, 1, dim))
        elif self.cameras > 1:
            self.sie_embed = nn.Parameter(torch.zeros(self.cameras, 1, dim))
        elif self.views > 1:
            self.sie_embed = nn.Parameter(torch.zeros(self.views, 1, dim))
        else:
            self.sie_embed = None
        from timm.models.vision_transformer import Block

        rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]  # stochastic depth, 0 -> drop_path
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.make_block = partial(Block, dim, heads, mlp_ratio, qkv_bias=True, drop_path=rates[-1], norm_layer=norm)
        self.make_norm = partial(norm, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, qkv_bias=True, drop_path=r, norm_layer=norm)
                                    for r in rates)
        self.norm = norm(dim)
        self.fc = nn.Linear(dim, fc_classes) if fc_classes > 0 else nn.Identity()
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.sie_embed is not None:
            nn.init.trunc_normal_(self.sie_embed, std=0.02)

    def side_information(self, cams: torch.Tensor | None, views: torch.Tensor | None) -> torch.Tensor | int:
        """``sie_coef * sie_embed[index]`` (B, 1, dim): camera x view, camera or view (0-based
        ids; missing ones count as 0), or 0 without SIE."""
        if self.sie_embed is None:
            return 0
        b = None
        for t in (cams, views):
            if t is not None:
                b = t.shape[0]
        zeros = torch.zeros(b or 1, dtype=torch.long, device=self.sie_embed.device)
        cams = zeros if cams is None else cams.long()
        views = zeros if views is None else views.long()
        if self.cameras > 1 and self.views > 1:
            index = cams * self.views + views
        else:
            index = cams if self.cameras > 1 else views
        return self.sie_coef * self.sie_embed[index]

    def forward(self, x: torch.Tensor, cams: torch.Tensor | None = None,
                views: torch.Tensor | None = None) -> torch.Tensor:
        tokens = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        tokens = tokens + self.pos_embed + self.side_information(cams, views)
        for block in self.blocks[:-1]:
            tokens = block(tokens)
        return tokens


def shuffle_tokens(tokens: torch.Tensor, shift: int, groups: int) -> torch.Tensor:
    """JPM's shift and patch shuffle of the patch tokens (not the class token): (B, 1 + N, D) →
    (B, N', D), N' = N rounded up to a multiple of ``groups`` by repeating the last-but-one token
    (as the official code does when N does not divide).

    The shift is the official ``shuffle_unit(features, shift, group, begin=1)``:
    ``cat(tokens[:, shift:], tokens[:, 1:shift])`` with the class token at index 0, i.e. the
    patches rotated by ``shift - 1`` (Market, shift 5: the sequence starts at token 5). ``shift`` >= 1."""
    if shift < 1:
        raise ConfigError(f"TransReID: JPM shift must be >= 1 (the official shuffle_unit's), got {shift}")
    b, _, d = tokens.shape
    x = torch.cat([tokens[:, shift:], tokens[:, 1:shift]], dim=1)
    if x.shape[1] % groups:
        x = torch.cat([x, x[:, -2:-1].expand(-1, groups - x.shape[1] % groups, -1)], dim=1)
    return x.view(b, groups, -1, d).transpose(1, 2).reshape(b, -1, d)


class TransReID(nn.Module):
    """TransReID with JPM (see the module docstring).

    Args:
        img_size: (H, W) of the input (Market 256x128, VeRi 256x256).
        cameras, views: SIE sizes (Market: 6 cameras; VeRi: 20 cameras x 8 views); <= 1: none.
        shift: JPM shift (Market 5, VeRi 8); groups: shuffle groups (2); parts: local features (4).
        num_classes: identities of the classifier heads (Market 751, VeRi 576; unused at test).
        dim, depth, heads, patch, stride, sie_coef, drop_path: the ViT-B/16 settings.
    """

    def __init__(self, img_size: Sequence[int] = (256, 128), cameras: int = 0, views: int = 0,
                 shift: int = 5, groups: int = 2, parts: int = 4, num_classes: int = 751,
                 dim: int = 768, depth: int = 12, heads: int = 12, patch: int = 16, stride: int = 12,
                 sie_coef: float = 3.0, drop_path: float = 0.1) -> None:
        super().__init__()
        self.base = TransReIDBackbone(img_size, patch, stride, dim, depth, heads, cameras=cameras, views=views,
                                      sie_coef=sie_coef, drop_path=drop_path)
        self.b1 = self._last_layers()
        self.b2 = self._last_layers()
        self.shift, self.groups, self.parts = int(shift), int(groups), int(parts)
        if self.shift < 1:
            raise ConfigError(f"TransReID: JPM shift must be >= 1 (the official shuffle_unit's), got {shift}")
        self.dim = dim
        self.feature_dim = dim * (parts + 1)
        for suffix in ["", *(f"_{k}" for k in range(1, parts + 1))]:  # the global head, then each part's
            bn = nn.BatchNorm1d(dim)
            bn.bias.requires_grad_(False)
            setattr(self, f"bottleneck{suffix}", bn)
            setattr(self, f"classifier{suffix}", nn.Linear(dim, num_classes, bias=False) if num_classes > 0
                    else nn.Identity())

    def _last_layers(self) -> nn.Sequential:
        """A copy of the backbone's last block and final norm (same weights at construction, as
        the official ``copy.deepcopy``; built anew so that it works on the meta device too)."""
        layers = nn.Sequential(self.base.make_block(), self.base.make_norm())
        with torch.no_grad():
            for src, dst in ((self.base.blocks[-1], layers[0]), (self.base.norm, layers[1])):
                for p, q in zip(dst.parameters(), src.parameters()):
                    p.copy_(q)
        return layers

    def forward(self, x: torch.Tensor, cams: torch.Tensor | None = None,
                views: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 3, H, W), normalised as the model config says → the test feature (B, 3840): the
        global feature and the ``parts`` local features / ``parts``, before the BN necks."""
        tokens = self.base(x, cams, views)
        global_feat = self.b1(tokens)[:, 0]
        length = (tokens.shape[1] - 1) // self.parts
        patches = shuffle_tokens(tokens, self.shift, self.groups)
        token = tokens[:, :1]
        local = [self.b2(torch.cat([token, patches[:, k * length:(k + 1) * length]], dim=1))[:, 0]
                 for k in range(self.parts)]
        return torch.cat([global_feat, *(f / self.parts for f in local)], dim=1)


class ReidEmbedder(nn.Module):
    """A re-identification network as the package uses it: (B, 3, H, W) RGB in [-1, 1] (and
    0-based camera / view ids for SIE) → (B, D) unit-norm features, differentiable.

    Args:
        net: the network (e.g. :class:`TransReID`), taking normalised images.
        mean, std: the per-channel normalisation of the model's config, on the [0, 1] scale.
    """

    def __init__(self, net: nn.Module, mean: Sequence[float] = (0.5, 0.5, 0.5),
                 std: Sequence[float] = (0.5, 0.5, 0.5)) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.embed_dim = int(getattr(net, "feature_dim", 0)) or None

    @property
    def image_size(self) -> tuple[int, int]:
        return self.net.base.patch_embed.img_size

    def forward(self, images: torch.Tensor, cams: torch.Tensor | None = None,
                views: torch.Tensor | None = None) -> torch.Tensor:
        x = ((images + 1) / 2 - self.mean) / self.std
        return F.normalize(self.net(x, cams, views), dim=1)


class TransReIDFormat:
    """The official TransReID checkpoint: ``torch.save(model.state_dict())`` of the whole model
    (a ``module.`` prefix of DataParallel is dropped). Loaded strictly; the classifier heads
    (``classifier*``, which depend on the training set's identities and are unused at test) may
    be skipped by name when their shapes differ."""

    skippable = ("classifier",)

    def load(self, net: nn.Module, path: str | os.PathLike) -> nn.Module:
        state = read_checkpoint(path, "TransReID checkpoint")
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        state = {k.removeprefix("module."): v for k, v in state.items()}
        own = net.state_dict()
        heads = [k for k in {*own, *state} if k.startswith(self.skippable)
                 and (k not in state or k not in own or state[k].shape != own[k].shape)]
        state = {k: v for k, v in state.items() if k not in heads}
        state.update({k: own[k] for k in heads if k in own})  # the heads keep their own weights
        return load_strict(net, state, str(path), "TransReID checkpoint",
                           hint="Is it the official training's state dict of this configuration "
                                "(conf/reid: image size, cameras, views)?")


def make_reid_model(make_net: Callable[[], nn.Module], checkpoint: str | os.PathLike | None = None,
                    format: TransReIDFormat | None = None, mean: Sequence[float] = (0.5, 0.5, 0.5),
                    std: Sequence[float] = (0.5, 0.5, 0.5), seed: int | None = None) -> ReidEmbedder:
    """A :class:`ReidEmbedder` around ``make_net()`` (e.g. a Hydra factory of :class:`TransReID`),
    built from ``seed`` (the global RNG untouched; None: the global RNG) and loaded from
    ``checkpoint`` in ``format`` (default :class:`TransReIDFormat`). Eval mode."""
    from reconattack.utils.seeding import seeded

    with seeded(seed):
        net = make_net()
    if checkpoint is not None:
        (format or TransReIDFormat()).load(net, checkpoint)
    return ReidEmbedder(net, mean, std).eval()
