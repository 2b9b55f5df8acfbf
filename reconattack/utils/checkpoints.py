"""Reading checkpoints safely and loading them strictly (SPEC §8: files users exchange are
untrusted).

- :func:`read_checkpoint` — ``torch.load(weights_only=True)``: tensors and plain containers only
  (Lightning's checkpoints pass; a pickle that would run code is refused with a clear message).
- :func:`load_strict` — load a state dict into a module with strict key matching; a file made for
  another architecture raises :class:`CheckpointMismatchError` naming the missing, unexpected and
  shape-mismatched keys (never a silently half-loaded network).
- :func:`sub_state` — the entries under a prefix (``"generator."``), prefix removed.
- :class:`AtomicCheckpointIO` — Lightning's checkpoint writer, atomic on the checkpoint's disk.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from lightning_fabric.plugins.io import TorchCheckpointIO
from torch import nn

from reconattack.errors import InputNotFoundError, UserError
from reconattack.utils.files import atomic_torch_save


class CheckpointMismatchError(UserError, ValueError):
    """A checkpoint's keys or shapes do not fit the configured network."""


class CheckpointFormatError(UserError, ValueError):
    """A checkpoint file cannot be read, holds more than tensors and plain containers, or does
    not have the layout its reader expects."""


def _first_reason(err: Exception) -> str:
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln).strip() for ln in str(err).splitlines()]
    lines = [ln for ln in lines if ln]
    return next((ln for ln in lines if "Unsupported global" in ln or "GLOBAL" in ln),
                lines[0] if lines else type(err).__name__)


def read_checkpoint(path: str | os.PathLike, what: str = "checkpoint") -> Mapping:
    """Load ``path`` on the CPU with ``weights_only=True`` and return the mapping it holds.

    Lightning checkpoints may carry an ``argparse.Namespace`` of hyper-parameters; that plain
    attribute container is admitted. Raises :class:`~reconattack.errors.InputNotFoundError` (a
    FileNotFoundError) for a missing file and :class:`CheckpointFormatError` (a ValueError; saying
    what was refused and how to re-save the file) for anything else that is not tensors and plain
    containers.
    """
    p = Path(os.path.expanduser(str(path)))
    if not p.is_file():
        raise InputNotFoundError(f"{what} not found: {p}")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointFormatError(
            f"{what} {p} holds objects other than tensors and plain containers, refused by "
            f"torch.load(weights_only=True): {_first_reason(err)}. Re-save its state dict with "
            "torch.save(model.state_dict(), path).") from None
    except (RuntimeError, EOFError) as err:
        raise CheckpointFormatError(f"{what} {p} could not be read ({type(err).__name__}: {err}); "
                                    "is it a complete PyTorch checkpoint?") from None
    if not isinstance(obj, Mapping):
        raise CheckpointFormatError(f"{what} {p}: expected a state dict or a dict with "
                                    f"'state_dict', got {type(obj).__name__}")
    return obj


def state_dict_of(obj: Mapping) -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint mapping: ``obj["state_dict"]`` when present, else ``obj``."""
    inner = obj.get("state_dict")
    return dict(inner) if isinstance(inner, Mapping) else dict(obj)


def sub_state(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Entries of ``state`` whose key starts with ``prefix``, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _listed(keys: list[str], limit: int = 8) -> str:
    return ", ".join(keys[:limit]) + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def mismatches(module: nn.Module, state: Mapping[str, torch.Tensor]) -> list[str]:
    """Human-readable differences between ``state`` and ``module.state_dict()`` (empty: it fits)."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != v.shape]
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    return [f"{name} ({len(keys)}): {_listed(keys)}" for name, keys in (
        ("missing keys", missing), ("unexpected keys", unexpected),
        ("shape mismatches (checkpoint vs model)", shapes), ("non-tensor entries", not_tensors)) if keys]


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str, what: str,
                hint: str = "") -> nn.Module:
    """Load ``state`` into ``module`` with strict key and shape matching; returns ``module``.

    Raises :class:`CheckpointMismatchError` ("<what> <source> does not fit <Module>: missing keys
    (n): ...; unexpected keys (n): ...") followed by ``hint`` when anything differs.
    """
    problems = mismatches(module, state)
    if problems:
        raise CheckpointMismatchError(f"{what} {source} does not fit {type(module).__name__}: "
                                      + "; ".join(problems) + (f". {hint}" if hint else ""))
    module.load_state_dict(dict(state), strict=True)
    return module



class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` with every local save atomic in the checkpoint's own
    folder (:func:`~reconattack.utils.files.atomic_torch_save`). Lightning's own save writes a
    temporary file in the system's temp folder and moves it there, which is a copy, not a rename,
    when that is another disk (a node's ``/tmp`` and a cluster's shared file system): a job
    killed during the copy leaves half a checkpoint under the real name. Remote paths
    (``s3://...``) keep Lightning's writer."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError("storage_options is not supported by the atomic checkpoint writer")
        atomic_torch_save(checkpoint, path)
