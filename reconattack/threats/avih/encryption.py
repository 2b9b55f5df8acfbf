"""AVIH encryption (SPEC §3.2, paper eqs. 1–5) as a LightningModule: the victim's protection in
the AVIH threat model.

The encrypted images are the parameters being optimised: for each batch of gallery images the
module creates a leaf tensor x' (one image per gallery image × key job) and minimises, per
image,

    L(x') = w_task·‖f̂(x') − f̂(x)‖ + w_diff·(−‖x' − x‖) + w_rec·‖G_k(x') − x‖ + w_vc·VC(x')

(f̂: unit service embedding, G_k: the image's key model; :func:`reconattack.losses.avih.avih_loss`).
Every image's loss depends on that image only, so batch size and batch composition do not
change the result (the official code's VC variance mixes the batch; here it is per image), and
the initial noise is seeded per job.

Images enter and leave in the package's convention, (B, 3, H, W) RGB in [-1, 1]. Inside, the
pixels are optimised in [0, 1], the official range for which the paper's loss weights and the
official step sizes were set (this module is their boundary). The optimisation runs in float32
whatever the trainer's precision (autocast is switched off around it).

It runs in Lightning's **test** loop (``Trainer(inference_mode=False)``): each ``test_step``
encrypts its batch (or takes the stored encryption when the batch has ``"encrypted"``; with
``"done"``, only the jobs not done are encrypted) and
returns the evaluation groups for :class:`reconattack.metrics.callback.ReconstructionMetrics`:
``encrypt/`` (encrypted vs original), ``encrypt/key_`` (key-model recovery vs original) and
``encrypt/wrong_key_`` (recovery with another key). The service-embedding cosine similarity is
logged as ``encrypt/service_cos``. Jobs marked ``"decoy"`` (a pool image under another key) are
reported apart, as ``encrypt/decoy_*``. The module keeps nothing: each batch's fresh encryptions,
their key-model recoveries and loss-curve rows go to the ``sink`` it was given (an
:class:`EncryptionSink`, e.g. the threat's memory-mapped gallery writer, which streams them to
disk as they are made: memory stays flat whatever the gallery's size, and a build killed midway
continues from the rows it wrote).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from reconattack.errors import ConfigError
from reconattack.losses.avih import avih_loss

log = logging.getLogger(__name__)

INITS = ("normal", "uniform", "original")


class PerImageMomentum(torch.optim.Optimizer):
    """The official AVIH update of encrypted images, one problem per image.

    For a parameter x of shape (B, ...) (a batch of images): the gradient of each image is divided
    by its mean absolute value, accumulated with ``momentum``, and each image moves by its own step
    (initially ``lr``); an image's step is multiplied by ``decay`` after every ``patience`` increases
    of its loss. ``step(closure)``: the closure returns the per-image losses (B,) of the current
    iterate (gradients already in ``x.grad``); they drive the decay.
    """

    def __init__(self, params: Iterable[torch.Tensor], lr: float = 0.01, momentum: float = 0.3,
                 decay: float = 0.85, patience: int = 16) -> None:
        if lr <= 0 or not 0 <= momentum < 1 or not 0 < decay <= 1 or patience < 1:
            raise ConfigError(f"PerImageMomentum: need lr > 0, 0 <= momentum < 1, 0 < decay <= 1, "
                              f"patience >= 1; got {lr}, {momentum}, {decay}, {patience}")
        super().__init__(params, {"lr": float(lr), "momentum": float(momentum),
                                  "decay": float(decay), "patience": int(patience)})

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        losses = None
        if closure is not None:
            with torch.enable_grad():
                losses = closure()
        for group in self.param_groups:
            for x in group["params"]:
                if x.grad is None:
                    continue
                b = x.shape[0]
                state = self.state[x]
                if not state:
                    state["velocity"] = torch.zeros_like(x)
                    state["step"] = torch.full((b,) + (1,) * (x.dim() - 1), group["lr"],
                                               device=x.device, dtype=x.dtype)
                    state["last"] = torch.full((b,), float("inf"), device=x.device)
                    state["increases"] = torch.zeros(b, dtype=torch.long, device=x.device)
                g = x.grad
                g = g / g.abs().mean(dim=tuple(range(1, g.dim())), keepdim=True).clamp_min(1e-12)
                state["velocity"].mul_(group["momentum"]).add_(g)
                x.sub_(state["step"] * state["velocity"])
                if losses is not None:
                    current = losses.detach().reshape(b).to(state["last"])
                    up = current > state["last"]
                    state["increases"] += up.long()
                    shrink = up & (state["increases"] % group["patience"] == 0)
                    state["step"][shrink] *= group["decay"]
                    state["last"] = current
        return losses


class EncryptionSink(Protocol):
    """Where :class:`AVIHEncryptor` hands each batch's fresh encryptions."""

    def write(self, slot: torch.Tensor, encrypted: torch.Tensor, recovered: torch.Tensor,
              curve: list[dict]) -> None:
        """``slot`` (n,) int64 job numbers; ``encrypted`` / ``recovered`` (n, 3, H, W) float32 in
        [-1, 1] on the CPU; ``curve``: the batch's loss-curve rows."""


def _adam(params, lr: float = 0.01):
    return torch.optim.Adam(params, lr=lr)


class AVIHEncryptor(pl.LightningModule):
    """Encrypt gallery images with AVIH.

    Args:
        service: the service recognition model, (B, 3, H, W) in [-1, 1] (and an item's side
            information as keywords: ``service(x, **batch["side"])``, e.g. a re-identification
            model's cameras and views) → (B, E) unit embeddings (frozen).
        keys: the key models, (B, 3, H, W) in [-1, 1] → same (frozen); ``key_id`` indexes them.
        weights: loss weights ``{task, diff, rec, vc}``.
        vc_kernel: VC-loss patch size (paper: 4 for faces).
        distances: ``{task, diff, rec}`` distance names for :func:`avih_loss`.
        iterations: optimisation steps per image (paper: 800).
        optimizer: partial optimiser factory over ``[x']`` (``torch.optim.Adam`` with its lr, or
            :class:`PerImageMomentum`: the official AVIH step); its step is
            given a closure returning the per-image losses (B,).
        init: x' at iteration 0: ``"normal"`` (N(0, 1) clamped to [0, 1] on the [0, 1] scale,
            official), ``"uniform"`` (U(0, 1)) or ``"original"`` (x itself).
        seed: seeds each job's initial noise together with its job number (``slot``).
        log_every: record the batch-mean loss terms every this many iterations (0: never), handed
            to the sink with the batch; the threat writes them to the artifact's ``curve.csv``.
        sink: where fresh encryptions go (:class:`EncryptionSink`); None: nowhere (evaluating a
            stored gallery, whose jobs are all ``"done"``).
    """

    def __init__(self, service: nn.Module, keys: Sequence[nn.Module], weights: Mapping[str, float],
                 vc_kernel: int = 4, distances: Mapping[str, str] | None = None,
                 iterations: int = 800, optimizer: Callable | None = None, init: str = "normal",
                 seed: int = 0, log_every: int = 50, sink: EncryptionSink | None = None) -> None:
        super().__init__()
        if init not in INITS:
            raise ConfigError(f"threat.encrypt.init must be one of {INITS}, got {init!r}")
        if iterations < 1:
            raise ConfigError(f"threat.encrypt.iterations must be >= 1, got {iterations}")
        self.service = service
        self.keys = nn.ModuleList(keys)
        for p in self.parameters():
            p.requires_grad_(False)
        self.weights = {k: float(weights.get(k, 0.0)) for k in ("task", "diff", "rec", "vc")}
        self.vc_kernel = int(vc_kernel)
        d = dict(distances or {})
        self.distances = {k: d.get(k, "l2") for k in ("task", "diff", "rec")}
        self.iterations = int(iterations)
        self.optimizer_factory = optimizer or _adam
        self.init, self.seed, self.log_every = init, int(seed), int(log_every)
        self.sink = sink
        self._batch_number = 0

    def train(self, mode: bool = True):
        # the models are fixed functions: BatchNorm running statistics, no dropout
        return super().train(False)

    # --------------------------------------------------------------------------- pieces
    def recover(self, x_enc: torch.Tensor, key_id: torch.Tensor) -> torch.Tensor:
        """Apply each image's key model. x_enc (B, 3, H, W) in [-1, 1], key_id (B,) → (B, 3, H, W)."""
        out = torch.empty_like(x_enc)
        for k in torch.unique(key_id).tolist():
            sel = key_id == k
            out[sel] = self.keys[int(k)](x_enc[sel]).to(out.dtype)
        return out

    def initial(self, x01: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        """x' at iteration 0 on the [0, 1] scale; x01 (B, 3, H, W) in [0, 1], slot (B,) job numbers."""
        if self.init == "original":
            return x01.detach().clone()
        out = []
        for s in slot.tolist():
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(s))
            if self.init == "normal":
                out.append(torch.randn(x01.shape[1:], generator=g).clamp_(0, 1))
            else:
                out.append(torch.rand(x01.shape[1:], generator=g))
        return torch.stack(out).to(x01)

    def losses(self, x_enc01: torch.Tensor, x01: torch.Tensor, emb_orig: torch.Tensor,
               key_id: torch.Tensor, side: Mapping[str, torch.Tensor] | None = None,
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Per-image AVIH loss (B,) and its terms (each (B,)), images on the [0, 1] scale;
        ``side``: the images' side information for the service model ((B,) tensors)."""
        x_enc = x_enc01 * 2 - 1
        recovered = (self.recover(x_enc, key_id) + 1) / 2 if self.weights["rec"] else x_enc01
        return avih_loss(self.service(x_enc, **(side or {})), emb_orig, x_enc01, x01, recovered, self.weights,
                         vc_kernel=self.vc_kernel, task_distance=self.distances["task"],
                         diff_distance=self.distances["diff"], rec_distance=self.distances["rec"])

    @torch.enable_grad()
    def encrypt(self, x: torch.Tensor, key_id: torch.Tensor, slot: torch.Tensor,
                side: Mapping[str, torch.Tensor] | None = None, curve: list[dict] | None = None) -> torch.Tensor:
        """Encrypt a batch. x (B, 3, H, W) in [-1, 1], key_id / slot (B,), side: the service
        model's side information ((B,) tensors, or None) → x' (B, 3, H, W) in [-1, 1]. The
        batch-mean loss terms every ``log_every`` iterations are appended to ``curve``.

        Runs in float32 with autocast off: the pixels are optimised, and under mixed precision
        their small steps would be lost (SPEC §8)."""
        device_type = x.device.type if x.device.type in ("cuda", "cpu") else "cpu"
        with torch.autocast(device_type=device_type, enabled=False):
            x01 = (x.float() + 1) / 2
            with torch.no_grad():
                emb_orig = self.service(x.float(), **(side or {})).float()
            x_enc = self.initial(x01, slot).requires_grad_(True)
            opt = self.optimizer_factory([x_enc])
            for it in range(self.iterations):
                total, terms = self.losses(x_enc, x01, emb_orig, key_id, side)
                grad, = torch.autograd.grad(total.sum(), x_enc)  # sum: images independent
                x_enc.grad = grad
                opt.step(lambda total=total: total.detach())
                with torch.no_grad():
                    x_enc.clamp_(0, 1)
                if curve is not None and self.log_every and (it % self.log_every == 0
                                                             or it == self.iterations - 1):
                    curve.append({"batch": self._batch_number, "iteration": it,
                                  "loss": float(total.detach().mean()),
                                  **{k: float(v.detach().mean()) for k, v in terms.items()}})
        self._batch_number += 1
        return x_enc.detach() * 2 - 1

    # ------------------------------------------------------------------------ Lightning
    def test_step(self, batch: dict, batch_idx: int) -> dict:
        x, key_id, slot = batch["image"].float(), batch["key_id"], batch["slot"]
        side = batch.get("side") or {}
        if "encrypted" in batch:  # stored encryptions (all, or those an interrupted build finished)
            x_enc = batch["encrypted"].float().clone()
            todo = ~batch["done"].bool() if "done" in batch else torch.zeros_like(slot, dtype=torch.bool)
        else:
            x_enc, todo = torch.empty_like(x), torch.ones_like(slot, dtype=torch.bool)
        curve: list[dict] = []
        if todo.any():
            x_enc[todo] = self.encrypt(x[todo], key_id[todo], slot[todo],
                                       {k: v[todo] for k, v in side.items()}, curve).to(x_enc.dtype)
        with torch.no_grad():
            recovered = self.recover(x_enc, key_id)
            cos = F.cosine_similarity(self.service(x_enc, **side).float(), self.service(x, **side).float(), dim=-1)
            wrong = self.recover(x_enc, (key_id + 1) % len(self.keys)) if len(self.keys) > 1 else None
            decoy = batch["decoy"].bool() if "decoy" in batch else torch.zeros_like(slot, dtype=torch.bool)
            groups: dict[str, dict] = {}
            for role, rows in (("", ~decoy), ("decoy_", decoy)):  # decoys reported apart
                if not rows.any():
                    continue
                self.log(f"encrypt/{role}service_cos", cos[rows].mean(), batch_size=int(rows.sum()),
                         sync_dist=True, on_step=False, on_epoch=True)
                groups[f"encrypt/{role}"] = {"pred": x_enc[rows], "target": x[rows]}
                groups[f"encrypt/{role}key_"] = {"pred": recovered[rows], "target": x[rows]}
                if wrong is not None:
                    groups[f"encrypt/{role}wrong_key_"] = {"pred": wrong[rows], "target": x[rows]}
        if self.sink is not None and bool(todo.any()):
            self.sink.write(slot[todo].detach().cpu(), x_enc[todo].detach().float().cpu(),
                            recovered[todo].detach().float().cpu(), curve)
        return {"groups": groups}


__all__ = ["AVIHEncryptor", "EncryptionSink", "INITS", "PerImageMomentum"]
