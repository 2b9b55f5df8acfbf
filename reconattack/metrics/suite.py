"""``MetricSuite``: every configured reconstruction metric over a stream of batches.

One suite per stage (validation, test). ``update`` takes reconstructions and ground truth in
the package's image convention, ``(B, 3, H, W)`` in [-1, 1]; ``compute`` returns a flat dict
of final values (see :data:`reconattack.metrics.functional.METRIC_RANGES` for ranges and
directions).

Conventions:
    - Images are clamped to [-1, 1] and mapped to [0, 1]. With ``quantize=True`` (the CFGAN
      paper / official-code mode) they are further rounded to uint8-range values in
      [0, 255], PSNR and SSIM use data_range 255 and SSIM defaults to the uniform 11×11
      window with sample covariance. MSE is always reported on the [0, 1] scale.
    - MSE, PSNR, SSIM, LPIPS and CLIP are means of per-image values.
    - FID compares the set of reconstructions with the set of ground-truth images. By default
      (``reset_real_features=False``) the real statistics are those of the first evaluated
      epoch and are kept across ``reset()``; later epochs only add reconstructions. Set
      ``reset_real_features=True`` when the evaluation images change between epochs.
    - A metric whose pretrained weights are missing is reported as the string
      ``"missing: <reason>"``, never as a number computed with random weights.

Distributed (DDP): per-image values, injected-network features and verification scores are
kept in torchmetrics ``Metric`` list states with ``dist_reduce_fx="cat"``; the Inception FID is
torchmetrics' ``FrechetInceptionDistance`` (sum states). ``compute()`` therefore gathers over
all processes when ``torch.distributed`` is initialised and must be called on every process;
it returns the same global values everywhere. (A ``DistributedSampler`` pads the last batch
with repeated samples, as usual in Lightning; those repeats are counted.)
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from reconattack.errors import ConfigError
from reconattack.metrics import functional as MF
from reconattack.utils.weights import MissingWeightsError

PIXEL_METRICS = ("mse", "psnr", "ssim")
FEATURE_METRICS = ("fid", "lpips", "clip")
ALL_METRICS = PIXEL_METRICS + FEATURE_METRICS
MISSING_PREFIX = "missing: "


class _Collect(Metric):
    """Concatenating store for per-sample tensors, gathered over processes on ``compute``."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__(compute_with_cache=False)
        self.add_state("values", default=[], dist_reduce_fx="cat")

    def update(self, x: Tensor) -> None:
        self.values.append(x.detach())

    def compute(self) -> Tensor:
        if isinstance(self.values, list) and not self.values:
            return torch.empty(0)
        return dim_zero_cat(self.values)  # a list locally, one tensor after a DDP gather


def _compute(metric: Metric) -> Tensor:
    with warnings.catch_warnings():  # "compute called before update" on an empty store
        warnings.simplefilter("ignore")
        return metric.compute()


class MetricSuite:
    """All configured metrics of one stage.

    Args:
        metrics: names out of ``("mse", "psnr", "ssim", "fid", "lpips", "clip")``.
            ``"tpr@far"`` is added to the results automatically when
            :meth:`update_verification` received data.
        ssim_window: ``"gaussian"`` (Wang et al.; σ 1.5, population covariance) or
            ``"uniform"`` (11×11, sample covariance; CFGAN official code). ``None`` picks
            ``"uniform"`` when ``quantize`` is set, else ``"gaussian"``.
        quantize: evaluate on uint8-range values (rounded), data_range 255 — the CFGAN
            paper's setting (scikit-image on saved uint8 images).
        weights: local weight files per feature metric (``{"fid": path, "lpips": path,
            "clip": path}``; ``None`` = library cache / download).
        download: allow downloads of missing weights (never when ``RECONATTACK_OFFLINE=1``).
        feature_nets: explicit networks used instead of pretrained ones (tests, custom
            metrics): ``"fid"``: module (B, 3, H, W) in [0, 1] → (B, D) features (FID computed
            by :func:`~reconattack.metrics.functional.fid_from_features`); ``"lpips"``: module
            (x, y), both (B, 3, H, W) in [-1, 1] → (B,) distances; ``"clip"``: module
            (B, 3, H, W) in [0, 1] → (B, D) embeddings (cosine taken here).
        far: false-accept rate of TPR@FAR (paper: 0.01).
        reset_real_features: False keeps FID's real statistics across :meth:`reset` (they are
            taken from the first evaluated epoch); True recomputes them every epoch.
        fid_antialias: Inception resize with torch's antialiased bilinear instead of
            torch-fidelity's TF-1-compatible one (reference FID).
        clip_model, clip_pretrained: open_clip model name and pretrained tag.
    """

    def __init__(
        self,
        metrics: Iterable[str] = ALL_METRICS,
        ssim_window: str | None = None,
        quantize: bool = False,
        weights: Mapping[str, str | None] | None = None,
        download: bool = True,
        feature_nets: Mapping[str, nn.Module] | None = None,
        far: float = 0.01,
        reset_real_features: bool = False,
        fid_antialias: bool = False,
        clip_model: str = "ViT-B-32",
        clip_pretrained: str = "laion2b_s34b_b79k",
    ) -> None:
        self.metrics = tuple(str(m) for m in metrics)
        unknown = sorted(set(self.metrics) - set(ALL_METRICS))
        if unknown:
            raise ConfigError(f"unknown metrics {unknown}; choose from {list(ALL_METRICS)}")
        self.quantize = bool(quantize)
        self.ssim_window = ssim_window or ("uniform" if self.quantize else "gaussian")
        if self.ssim_window not in ("gaussian", "uniform"):
            raise ConfigError(f"ssim_window must be 'gaussian' or 'uniform', got {ssim_window!r}")
        self.weights = {k: (str(v) if v else None) for k, v in dict(weights or {}).items()}
        bad = sorted(set(self.weights) - set(FEATURE_METRICS))
        if bad:
            raise ConfigError(f"weights given for unknown metrics {bad}; keys: {FEATURE_METRICS}")
        self.download = bool(download)
        self.feature_nets = dict(feature_nets or {})
        bad = sorted(set(self.feature_nets) - set(FEATURE_METRICS))
        if bad:
            raise ValueError(f"feature_nets for unknown metrics {bad}; keys: {FEATURE_METRICS}")
        if not 0.0 <= far <= 1.0:
            raise ConfigError(f"far must be in [0, 1], got {far}")
        self.far = float(far)
        self.reset_real_features = bool(reset_real_features)
        self.fid_antialias = bool(fid_antialias)
        self.clip_model = clip_model
        self.clip_pretrained = clip_pretrained

        per_image = [m for m in self.metrics if m != "fid"]
        self._values: dict[str, _Collect] = {m: _Collect() for m in per_image}
        self._ver_scores = _Collect()
        self._ver_labels = _Collect()
        self._nets: dict[str, nn.Module] = {}
        self._missing: dict[str, str] = {}
        self._fid_metric: Metric | None = None  # torchmetrics FID (pretrained Inception)
        self._fid_real: _Collect | None = None  # features of an injected FID network
        self._fid_fake: _Collect | None = None
        self._real_frozen = False
        self._loaded = False
        self._device: torch.device | None = None

    # ------------------------------------------------------------------------------ loading
    @property
    def missing(self) -> dict[str, str]:
        """Metrics whose networks could not be loaded → reason."""
        return dict(self._missing)

    def _load(self) -> None:
        """Load the feature networks once (lazily, at the first update)."""
        from reconattack.metrics import pretrained

        for name in FEATURE_METRICS:
            if name not in self.metrics or name in self._nets or name in self._missing:
                continue  # not asked for, or shared by share_networks()
            if name in self.feature_nets:
                net = self.feature_nets[name].eval()
                if name == "fid":
                    self._fid_real, self._fid_fake = _Collect(), _Collect()
                self._nets[name] = net
                continue
            path = self.weights.get(name)
            try:
                if name == "fid":
                    self._fid_metric = pretrained.load_fid(
                        path,
                        self.download,
                        reset_real_features=self.reset_real_features,
                        antialias=self.fid_antialias,
                    )
                elif name == "lpips":
                    self._nets[name] = pretrained.load_lpips(path, self.download)
                else:
                    self._nets[name] = pretrained.load_clip(
                        path, self.download, self.clip_model, self.clip_pretrained
                    )
            except MissingWeightsError as exc:
                self._missing[name] = str(exc)
                warnings.warn(f"metric {name} will be reported as missing: {exc}", stacklevel=3)
        self._loaded = True

    def share_networks(self, other: MetricSuite) -> None:
        """Reuse ``other``'s loaded LPIPS / CLIP networks (and their missing reasons) instead of
        loading another copy; for several suites evaluated side by side. FID keeps its own
        statistics and is not shared."""
        if not other._loaded:
            other._load()
        for name in ("lpips", "clip"):
            if name not in self.metrics:
                continue
            if name in other._nets:
                self._nets[name] = other._nets[name]
            elif name in other._missing:
                self._missing[name] = other._missing[name]

    def _to(self, device: torch.device) -> None:
        if self._device == device:
            return
        for net in self._nets.values():
            net.to(device)
        if self._fid_metric is not None:
            self._fid_metric.to(device)
        self._device = device

    # ------------------------------------------------------------------------------ updates
    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch of reconstructions and their ground truth.

        Args:
            pred: (B, 3, H, W) reconstructions in [-1, 1] (clamped to it).
            target: (B, 3, H, W) ground-truth images in [-1, 1].
        """
        if pred.shape != target.shape or pred.dim() != 4:
            raise ValueError(
                f"pred and target must be equal (B, C, H, W) shapes, got "
                f"{tuple(pred.shape)} and {tuple(target.shape)}"
            )
        if not self._loaded:
            self._load()
        self._to(pred.device)
        pred = pred.detach().float()
        target = target.detach().to(pred.device, torch.float32)
        x = (pred.clamp(-1, 1) + 1) / 2
        y = (target.clamp(-1, 1) + 1) / 2
        if self.quantize:
            xq, yq = (x * 255).round(), (y * 255).round()
            x, y = xq / 255, yq / 255
            px, py, data_range = xq, yq, 255.0
        else:
            px, py, data_range = x, y, 1.0

        if "mse" in self._values:
            self._values["mse"].update(MF.mse(x, y))
        if "psnr" in self._values:
            self._values["psnr"].update(MF.psnr(px, py, data_range))
        if "ssim" in self._values and "ssim" not in self._missing:
            try:
                self._values["ssim"].update(MF.ssim(px, py, data_range, self.ssim_window))
            except ValueError as exc:  # images smaller than the window
                self._missing["ssim"] = str(exc)
        if "lpips" in self._nets:
            d = self._nets["lpips"](x * 2 - 1, y * 2 - 1)
            self._values["lpips"].update(d.reshape(-1).float())
        if "clip" in self._nets:
            ex = self._nets["clip"](x).float()
            ey = self._nets["clip"](y).float()
            self._values["clip"].update(F.cosine_similarity(ex, ey, dim=-1))
        if "fid" in self._nets:
            self._fid_fake.update(self._nets["fid"](x).flatten(1).float())
            if not self._real_frozen:
                self._fid_real.update(self._nets["fid"](y).flatten(1).float())
        elif self._fid_metric is not None:
            self._fid_metric.update((x * 255).round().to(torch.uint8), real=False)
            if not self._real_frozen:
                self._fid_metric.update((y * 255).round().to(torch.uint8), real=True)

    @torch.no_grad()
    def update_verification(self, scores: Tensor, is_same: Tensor) -> None:
        """Add verification pairs for TPR@FAR.

        Args:
            scores: (N,) similarity scores (e.g. cosine of face embeddings, in [-1, 1]).
            is_same: (N,) bool, True for genuine pairs.
        """
        scores = torch.as_tensor(scores).detach().flatten().float()
        labels = torch.as_tensor(is_same).detach().flatten().to(torch.uint8)
        if scores.numel() != labels.numel():
            raise ValueError(f"scores ({scores.numel()}) and is_same ({labels.numel()}) differ")
        device = self._device or scores.device
        self._ver_scores.update(scores.to(device))
        self._ver_labels.update(labels.to(device))

    # ------------------------------------------------------------------------------ results
    def _fid_value(self) -> float | str:
        if self._fid_metric is not None:
            try:
                return float(_compute(self._fid_metric))
            except RuntimeError as exc:  # fewer than 2 samples
                return f"{MISSING_PREFIX}{exc}"
        real = _compute(self._fid_real)
        fake = _compute(self._fid_fake)
        try:
            return MF.fid_from_features(
                real.reshape(real.shape[0], -1), fake.reshape(fake.shape[0], -1)
            )
        except ValueError as exc:
            return f"{MISSING_PREFIX}{exc}"

    def compute(self) -> dict[str, float | str]:
        """Final values over everything seen since the last :meth:`reset`.

        Returns:
            ``{name: value}`` in the order of ``metrics`` (plus ``"tpr@far"`` when
            verification data was given); strings ``"missing: <reason>"`` for metrics whose
            weights are missing or that could not be computed. Empty for metrics without
            data. Called on every process under DDP (gathers; same result everywhere).
        """
        out: dict[str, float | str] = {}
        if self._loaded:
            for name in self.metrics:
                if name in self._missing:
                    out[name] = MISSING_PREFIX + self._missing[name]
                elif name == "fid":
                    out[name] = self._fid_value()
                else:
                    vals = _compute(self._values[name])
                    if vals.numel():
                        out[name] = float(vals.double().mean())
            # FID real statistics are complete after the first evaluated epoch
            self._real_frozen = not self.reset_real_features
        scores = _compute(self._ver_scores)
        if scores.numel():
            labels = _compute(self._ver_labels).bool()
            try:
                out["tpr@far"] = MF.tpr_at_far(scores, labels, self.far)
            except ValueError as exc:
                out["tpr@far"] = f"{MISSING_PREFIX}{exc}"
        return out

    def reset(self) -> None:
        """Clear accumulated values; keep loaded networks and (by default) FID real statistics."""
        for m in self._values.values():
            m.reset()
        self._ver_scores.reset()
        self._ver_labels.reset()
        if self._fid_fake is not None:
            self._fid_fake.reset()
            if self.reset_real_features:
                self._fid_real.reset()
        if self._fid_metric is not None:
            self._fid_metric.reset()  # keeps real sums unless reset_real_features
        if self.reset_real_features:
            self._real_frozen = False
        self._missing.pop("ssim", None)  # image-size problems are re-checked on new data


def is_missing(value: float | str) -> bool:
    """True for a ``"missing: ..."`` result entry."""
    return isinstance(value, str)
