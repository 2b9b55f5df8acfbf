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

Every file found or downloaded this way is checked against its pinned SHA-256
(:data:`PINNED_SHA256`) the first time a process uses it (:func:`verify`); a file that does not
match is never used (:class:`CorruptWeightsError`, a :class:`MissingWeightsError`: a metric is
then reported missing with that reason).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from reconattack.errors import UserError
from reconattack.utils.files import sha256_file

#: SHA-256 of the weight files the project reads by their libraries' names, by file name (torch
#: hub files, whose names carry the first 8 hex digits of it) or by where the library keeps them
#: (the lpips package's calibration layers; the Hugging Face file of an open_clip tag).
PINNED_SHA256 = {
    # torchvision VGG19 / VGG16 IMAGENET1K_V1 (perceptual losses: CFGAN, INV)
    "vgg19-dcbb9e9d.pth": "dcbb9e9dad569fff7a846263a77324fc34978fea2bfb039c012d710e1776ae44",
    "vgg16-397923af.pth": "397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0",
    # torchvision AlexNet IMAGENET1K_V1 (the LPIPS trunk) and lpips 0.1's AlexNet calibration
    "alexnet-owt-7be5be79.pth": "7be5be791159472b1fbf3c69796f7cb30dca7ad8466c2df70058c37116cdee02",
    "lpips/weights/v0.1/alex.pth": "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
    # torch-fidelity's FID Inception (TF 2015-12-05 weights; the same bytes as pytorch-fid's
    # pt_inception-2015-12-05-6726825d.pth) and torchvision's Inception-v3 (metrics=cfgan_paper)
    "weights-inception-2015-12-05-6726825d.pth":
        "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2",
    "inception_v3_google-0cc3c7bd.pth": "0cc3c7bd75056d25e46cba549dc184522069b81e9787eff6df84f397bd52a5ef",
    # open_clip ViT-B-32 laion2b_s34b_b79k (CLIP similarity), revision 1a25a446
    "laion/CLIP-ViT-B-32-laion2B-s34B-b79K/open_clip_model.safetensors":
        "ac4f8c4b88af6d963118cbf40ad93176d092abbedfcb752601ae1866352656e6",
}

#: files this process has checked: (resolved path, size, mtime) -> SHA-256 found
_CHECKED: dict[tuple[str, int, int], str] = {}


class MissingWeightsError(UserError, RuntimeError):
    """Pretrained weights are not available (no local file, no cache, no download)."""


class CorruptWeightsError(MissingWeightsError):
    """A weights file does not match its pinned SHA-256: it is not used."""


def verify(name: str, file: str | os.PathLike, expected: str | tuple[str, ...] | None,
           source: str | None = None) -> Path:
    """``file`` when its SHA-256 is ``expected`` (or one of them); hashed once per process and
    file version (path, size, modification time). ``expected`` None: nothing to check.

    Raises:
        CorruptWeightsError: naming the file, the expected and the found hash, and what to do
            (delete it to fetch it again from ``source``, or place the right file there).
    """
    path = Path(file)
    if not expected:
        return path
    wanted = (expected,) if isinstance(expected, str) else tuple(expected)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    found = _CHECKED.get(key)
    if found is None:
        found = _CHECKED[key] = sha256_file(path)
    if found not in wanted:
        fetch = f" (it comes from {source})" if source else ""
        raise CorruptWeightsError(
            f"{name}: {path} does not match its pinned SHA-256 (expected {' or '.join(wanted)}, "
            f"found {found}): the file is damaged or not the published one, and is not used. "
            f"Delete it to fetch it again{fetch}, or place the right file there.")
    return path


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
    def file_name(self) -> str | None:
        return self.filename or (self.url.rsplit("/", 1)[-1] if self.url else None)

    @property
    def cache_file(self) -> Path | None:
        return hub_checkpoint_dir() / self.file_name if self.file_name else None

    @property
    def sha256(self) -> str | None:
        """The pinned SHA-256 of the file (:data:`PINNED_SHA256`), or None."""
        return PINNED_SHA256.get(self.file_name or "")


def resolve(spec: WeightsSpec, path: str | os.PathLike | None = None, download: bool = True) -> Path:
    """Return a local file holding the weights described by ``spec``.

    Args:
        spec: what to look for.
        path: a local file named in the config; when given it is the only place looked at.
        download: allow a download into the torch hub cache when the file is not cached
            (ignored when ``RECONATTACK_OFFLINE=1``).

    Raises:
        MissingWeightsError: with a message naming the file to place and where.
        CorruptWeightsError: the file found does not match its pinned SHA-256 (:func:`verify`).
    """
    if path:
        p = Path(os.path.expanduser(str(path)))
        if not p.is_file():
            raise MissingWeightsError(f"{spec.name}: weights file {p} named in the config does not exist.")
        return verify(spec.name, p, spec.sha256, spec.url)
    cached = spec.cache_file
    if cached is not None and cached.is_file():
        return verify(spec.name, cached, spec.sha256, spec.url)
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
    return verify(spec.name, cached, spec.sha256, spec.url)


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
