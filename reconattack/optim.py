"""Optimisers and learning-rate schedules that configs name with ``_target_`` (``_partial_: true``).

- Training optimisers are plain ``torch.optim`` classes (``torch.optim.Adam``, ...).
- :class:`PerImageMomentum`: the official AVIH code's pixel update, for the encryption.
- Learning-rate schedules are partial factories called as ``schedule(optimizer, total_steps=N)``
  with N the number of steps of the stage: :func:`cosine_decay`; ``null`` = constant.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from reconattack.errors import ConfigError


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


def cosine_decay(optimizer: torch.optim.Optimizer, total_steps: int,
                 eta_min: float = 0.0) -> torch.optim.lr_scheduler.LRScheduler:
    """Cosine decay of every learning rate to ``eta_min`` over ``total_steps`` steps."""
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(int(total_steps), 1),
                                                      eta_min=eta_min)
