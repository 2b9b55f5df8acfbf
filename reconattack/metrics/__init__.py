"""Reconstruction metrics: functional forms, pretrained metric networks, suite and callback.

- :mod:`~reconattack.metrics.functional` — per-image PSNR/MSE/SSIM, TPR@FAR, FID and KID from
  features, and :data:`METRIC_RANGES` (value range and direction of every metric).
- :mod:`~reconattack.metrics.pretrained` — FID / KID Inception, the CFGAN official code's FID
  Inception (torchvision), LPIPS AlexNet and CLIP loaders that follow the weights policy
  (:mod:`reconattack.utils.weights`).
- :class:`MetricSuite` — all configured metrics of one stage over a stream of batches.
- :class:`ReconstructionMetrics` — the Lightning callback every attack uses.

The names below are imported lazily, so ``import reconattack.metrics.functional`` does not pull
in Lightning or the metric libraries.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "ReconstructionMetrics": "callback",
    "METRIC_RANGES": "functional",
    "MetricRange": "functional",
    "fid_from_features": "functional",
    "fid_from_moments": "functional",
    "kid_from_features": "functional",
    "mse": "functional",
    "psnr": "functional",
    "ssim": "functional",
    "tpr_at_far": "functional",
    "CFGANInception": "pretrained",
    "ClipImageEncoder": "pretrained",
    "FIDInception": "pretrained",
    "LPIPSDistance": "pretrained",
    "load_cfgan_inception": "pretrained",
    "load_clip": "pretrained",
    "load_fid": "pretrained",
    "load_fid_inception": "pretrained",
    "load_lpips": "pretrained",
    "ALL_METRICS": "suite",
    "DEFAULT_METRICS": "suite",
    "MISSING_PREFIX": "suite",
    "MetricSuite": "suite",
    "is_missing": "suite",
}

__all__ = [
    "ALL_METRICS",
    "DEFAULT_METRICS",
    "METRIC_RANGES",
    "MISSING_PREFIX",
    "CFGANInception",
    "ClipImageEncoder",
    "FIDInception",
    "LPIPSDistance",
    "MetricRange",
    "MetricSuite",
    "ReconstructionMetrics",
    "fid_from_features",
    "fid_from_moments",
    "is_missing",
    "kid_from_features",
    "load_cfgan_inception",
    "load_clip",
    "load_fid",
    "load_fid_inception",
    "load_lpips",
    "mse",
    "psnr",
    "ssim",
    "tpr_at_far",
]

if TYPE_CHECKING:
    from reconattack.metrics.callback import ReconstructionMetrics
    from reconattack.metrics.functional import (
        METRIC_RANGES,
        MetricRange,
        fid_from_features,
        fid_from_moments,
        kid_from_features,
        mse,
        psnr,
        ssim,
        tpr_at_far,
    )
    from reconattack.metrics.pretrained import (
        CFGANInception,
        ClipImageEncoder,
        FIDInception,
        LPIPSDistance,
        load_cfgan_inception,
        load_clip,
        load_fid,
        load_fid_inception,
        load_lpips,
    )
    from reconattack.metrics.suite import (
        ALL_METRICS,
        DEFAULT_METRICS,
        MISSING_PREFIX,
        MetricSuite,
        is_missing,
    )


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
