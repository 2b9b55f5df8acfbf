"""The threat model: what a victim system shares, and what the attacker is given (SPEC §7).

A threat model is kept apart from the attack (the breaching library's "case"). It builds

- the **leak** the attacker trains on: a LightningDataModule whose training batches hold what
  the attacker sees (``"input"``: the shared features or protected images; ``"target"`` when the
  attacker can make its own (image, leak) pairs; ``"aux"``: unpaired images of the category);
- the **held-out** data with ground truth: test batches with ``"input"`` and ``"target"``
  ((B, 3, H, W) RGB in [-1, 1]) and whatever its controls and metrics need;
- its **controls** — reconstructions that do not read the leak, or read another image's — and
  the evaluation groups the shared metrics callback turns into ``metrics.json``
  (:class:`ThreatEvaluation`).

Subclasses declare :attr:`ThreatModel.provides`, the names of what the attacker is given; an
attack declares what it ``reads``, and the runner refuses a pair that does not fit before any
work. A new threat model is a new class and a YAML file in ``conf/threat/``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import pytorch_lightning as pl
import torch
from torch import nn

from reconattack.errors import ConfigError
from reconattack.utils.config import plain
from reconattack.utils.files import safe_name

Reconstruct = Callable[[dict], torch.Tensor]


class Artifacts(Protocol):
    """What a threat uses of the run's artifact store (``ctx.artifacts()``,
    :class:`reconattack.engine.artifacts.ArtifactStore`): content-addressed folders built once
    and shared by runs. The run hands it over; threats never import the engine."""

    built: list[str]

    def get(self, kind: str, spec: Mapping[str, Any], build: Callable[[Path], None],
            what: str | None = None) -> Path: ...

    def work_dir(self, kind: str, spec: Mapping[str, Any]) -> Path: ...


class ThreatEvaluation(nn.Module):
    """The threat's part of the evaluation pass (an ``nn.Module``, so that its networks and
    buffers travel to the evaluation device with the attack).

    - :meth:`controls`: ``{control name: (B, 3, H, W) in [-1, 1]}`` for a test batch; a control
      may run the attack's ``reconstruct`` on other inputs (None when there is no attack: such
      controls are left out).
    - :meth:`groups`: ``{metrics prefix: {"pred", "target", ...}}`` for the shared metrics
      callback, from ``{row: images}`` (the attack's row, its intermediate stages, the controls);
      a threat with a verification protocol adds ``"scores"`` / ``"is_same"``.
    """

    def controls(self, batch: dict, reconstruct: Reconstruct | None) -> dict[str, torch.Tensor]:
        return {}

    def groups(self, batch: dict, rows: Mapping[str, torch.Tensor]) -> dict[str, dict]:
        return {f"{row}/": {"pred": images, "target": batch["target"]} for row, images in rows.items()}


class ThreatModel:
    """Base class of threat models (see the module docstring).

    Args:
        data: the ``data`` config (datasets, splits, loader settings).
        seed: the run seed.
        name: short name (``sift``, ``avih``).
        label: human-readable name for reports.
        defence: the run's ``defence`` config (``conf/defence/``; one of :attr:`defences`).
        report: the paper layout of this threat's results (``conf/threat/*.yaml``):
            ``attack_row`` — metrics prefix of the attack's reconstructions (``test``, ``ours``);
            ``controls`` — ``{control: {"row": metrics prefix, "label": ..., "per_attack": bool}}``
            (``per_attack``: the control runs the trained attack, so it differs per attack);
            ``columns`` — ``{metric: "higher" | "lower"}``, the paper's columns in order and
            which direction is better; ``tables_by``, ``blocks_by``, ``sweep``, ``threshold``,
            ``paper`` — read by :mod:`reconattack.report` only (see there).
    """

    #: what the attacker is given (see :attr:`reconattack.attacks.base.Attack.reads`)
    provides: frozenset[str] = frozenset()
    #: the controls the threat's evaluation produces (keys of ``report.controls``)
    control_names: tuple[str, ...] = ()
    #: the defences (``defence.name``, ``conf/defence/``) the threat applies
    defences: tuple[str, ...] = ("none",)

    def __init__(self, data: Any, seed: int = 0, name: str = "threat", label: str | None = None,
                 report: Mapping | None = None, defence: Mapping | None = None) -> None:
        self.data_cfg = data
        self.seed = int(seed)
        self.name = safe_name(name, "threat.name")
        self.defence = plain(defence) or {"name": "none"}
        if self.defence.get("name", "none") not in self.defences:
            raise ConfigError(f"defence={self.defence.get('name')} does not apply to the {name} threat; "
                              f"it takes defence={' | '.join(self.defences)}")
        self.label = str(label or name)
        self.report = plain(report) or {}
        rows = self.report.get("controls") or {}
        if set(rows) != set(self.control_names):
            raise ConfigError(f"threat.report.controls of threat {self.name!r} must name exactly its "
                              f"controls {list(self.control_names)}, got {sorted(rows)}")
        self.attack_row = str(self.report.get("attack_row", "test"))

    # ------------------------------------------------------------------------ before any work
    def missing_inputs(self) -> list[str]:
        """One line per file or folder this threat needs that is not there (data, checkpoints)."""
        return []

    # --------------------------------------------------------------------------------- build
    def prepare(self, ctx) -> dict:
        """Build everything the attack and the evaluation need (data, caches, artifacts), with the
        run's services ``ctx`` (:class:`reconattack.engine.context.RunContext`); returns the threat's
        own metrics (e.g. the AVIH gallery's ``encrypt/*``)."""
        return {}

    def datamodule(self, iterations: int | None = None) -> pl.LightningDataModule:
        """The leak and the held-out data as one DataModule (see the module docstring).
        ``iterations``: how many training batches the stage will draw (threats that synthesise
        training items size their epoch with it)."""
        raise NotImplementedError

    def scoring(self) -> ThreatEvaluation:
        """How the threat scores each row: its controls and evaluation groups (after
        :meth:`prepare`). Named apart from a threat's *evaluation model* (the AVIH threats'
        ``threat.evaluation`` config role, ``evaluation_model``)."""
        return ThreatEvaluation()

    def control_rows(self) -> dict[str, str]:
        """``{control: metrics prefix}`` from the report layout."""
        return {name: str(spec["row"]) for name, spec in (self.report.get("controls") or {}).items()}

    # ------------------------------------------------------------------------------- display
    def visualise(self, batch: dict) -> torch.Tensor | None:
        """A picture of the leak for sample grids, (B, 3, H, W) in [-1, 1], or None."""
        return None

    def input_example(self, batch_size: int = 1) -> torch.Tensor:
        """A zero tensor shaped like a batch of ``"input"`` (for profiling networks)."""
        raise NotImplementedError

    def profile_models(self) -> dict[str, tuple[nn.Module, tuple[torch.Tensor, ...]]]:
        """The threat's own networks (built from the config, weights not needed) with example
        inputs: ``{name: (module, inputs)}``."""
        return {}
