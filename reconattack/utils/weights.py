"""Pretrained-weights policy (SPEC §5).

Every pretrained network the framework uses (VGG19 for the perceptual loss, the AlexNet
behind LPIPS, the FID Inception, CLIP, face models) is obtained through :func:`resolve`:

1. a local file named in the config (``path``) — it must exist;
2. the library's own cache (``$TORCH_HOME/hub/checkpoints/<filename>`` for torch hub files);
3. a download the way the library does it, when ``download`` is allowed.

When none of these works a :class:`MissingWeightsError` is raised whose message names the
file to place and where. Metrics catch it and report themselves as *missing* with that
reason; they never fall back to random weights. Downloads can be switched off globally with
the environment variable ``RECONATTACK_OFFLINE=1`` (the test suite does this).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from reconattack.errors import UserError


class MissingWeightsError(UserError, RuntimeError):
    """Pretrained weights are not available (no local file, no cache, no download)."""


def offline() -> bool:
    """True when downloads are disabled (``RECONATTACK_OFFLINE`` set to 1/true/yes)."""
    return os.environ.get("RECONATTACK_OFFLINE", "").lower() in {"1", "true", "yes"}


def hub_checkpoint_dir() -> Path:
    """Directory where torch hub keeps downloaded checkpoints (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


@dataclass(frozen=True)
class WeightsSpec:
    """Where a set of pretrained weights comes from.

    Attributes:
        name: human-readable name used in messages (e.g. ``"VGG19 (torchvision IMAGENET1K_V1)"``).
        url: download URL used by the library (torch hub style), or ``None``.
        filename: file name in the torch hub cache (defaults to the URL's basename).
    """

    name: str
    url: str | None = None
    filename: str | None = None

    @property
    def cache_file(self) -> Path | None:
        fname = self.filename or (self.url.rsplit("/", 1)[-1] if self.url else None)
        return hub_checkpoint_dir() / fname if fname else None


def resolve(spec: WeightsSpec, path: str | os.PathLike | None = None, download: bool = True) -> Path:
    """Return a local file holding the weights described by ``spec``.

    Args:
        spec: what to look for.
        path: a local file named in the config; when given it is the only place looked at.
        download: allow a download into the torch hub cache when the file is not cached
            (ignored when ``RECONATTACK_OFFLINE=1``).

    Raises:
        MissingWeightsError: with a message naming the file to place and where.
    """
    if path:
        p = Path(os.path.expanduser(str(path)))
        if not p.is_file():
            raise MissingWeightsError(f"{spec.name}: weights file {p} named in the config does not exist.")
        return p
    cached = spec.cache_file
    if cached is not None and cached.is_file():
        return cached
    where = f"place it at {cached}" if cached is not None else "name a local file in the config"
    if spec.url is None:
        raise MissingWeightsError(f"{spec.name}: no weights file given; {where}.")
    if not download or offline():
        raise MissingWeightsError(
            f"{spec.name}: weights not found and downloads are disabled; download {spec.url} and "
            f"{where} (or name the file in the config)."
        )
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(spec.url, str(cached), progress=False)
    except Exception as exc:  # network errors come in many types; all mean "not available"
        if cached.exists() and cached.stat().st_size == 0:
            cached.unlink()
        raise MissingWeightsError(
            f"{spec.name}: download of {spec.url} failed ({type(exc).__name__}: {exc}); "
            f"on a machine without internet, {where} (or name the file in the config)."
        ) from exc
    return cached


def load_state_dict(spec: WeightsSpec, path: str | os.PathLike | None = None, download: bool = True) -> dict:
    """Resolve the weights file (see :func:`resolve`) and load it on CPU as a state dict."""
    file = resolve(spec, path, download)
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise MissingWeightsError(f"{spec.name}: could not read weights file {file}: {exc}") from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    return obj
