"""Learning-rate schedules that attack configs name with ``_target_`` (``_partial_: true``).

A schedule is a partial factory called as ``schedule(optimizer, total_steps=N)`` with N the number
of steps of the stage (:class:`reconattack.attacks.base.GANStage`); ``lr_scheduler: null`` keeps
the rates constant. Training optimisers are plain ``torch.optim`` classes (``torch.optim.Adam``).
"""

from __future__ import annotations

import torch


def cosine_decay(optimizer: torch.optim.Optimizer, total_steps: int,
                 eta_min: float = 0.0) -> torch.optim.lr_scheduler.LRScheduler:
    """Cosine decay of every learning rate to ``eta_min`` over ``total_steps`` steps."""
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(int(total_steps), 1),
                                                      eta_min=eta_min)
