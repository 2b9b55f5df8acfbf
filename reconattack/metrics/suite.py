"""``MetricSuite``: every configured reconstruction metric over a stream of batches.

One suite per stage (validation, test). ``update`` takes reconstructions and ground truth in
the package's image convention, ``(B, 3, H, W)`` in [-1, 1]; ``compute`` returns a flat dict
of final values (see :data:`reconattack.metrics.functional.METRIC_RANGES` for ranges and
directions).

Conventions:
    - Images are clamped to [-1, 1] and mapped to [0, 1]. With ``quantize`` (``"round"``, or
      ``"truncate"``: the CFGAN official code's ``(x * 127.5 + 127.5).int()`` on the
      reconstructions; ground truth is rounded, see :data:`QUANTIZE`) they are further made
      uint8-range values in [0, 255], PSNR and SSIM use data_range 255 and SSIM defaults to the
      uniform 11×11 window with sample covariance. MSE is always reported on the [0, 1] scale.
    - MSE, PSNR, SSIM, LPIPS and CLIP are means of per-image values.
    - FID and KID compare the set of reconstructions with the set of ground-truth images, on
      the features of one Inception forward pass per image (FID and KID share it). By default
      (``reset_real_features=False``) the real side is that of the first evaluated epoch and is
      kept across ``reset()``; later epochs only add reconstructions. Set
      ``reset_real_features=True`` when the evaluation images change between epochs.
    - Every FID comes with its sample count: ``fid_n``, the number of reconstructions it was
      computed on. KID (``kid``, ``kid_std``, ``kid_n``) is computed for sets of fewer than
      ``kid["below"]`` (2,048) images, where FID is biased upward; its features are kept only
      up to that many images, so memory stays bounded, and a larger set reports KID as missing
      (FID is the measure there). The count and the spread are reported only beside a
      computed value.
    - ``fid_cfgan`` (with ``fid_cfgan_n``) is the CFGAN official code's FID, a protocol of its
      own, not comparable with ``fid``: the first ``fid_cfgan["images"]`` (99) images in
      evaluation order, the reconstructions truncated to uint8 and passed through the JPEG file
      the official code writes (OpenCV, quality ``fid_cfgan["jpeg_quality"]``, 95), the ground
      truth rounded, features of torchvision's ImageNet Inception-v3 as the official code feeds
      it (:class:`~reconattack.metrics.pretrained.CFGANInception`). Under DDP the evaluation
      order is taken to be that of a ``DistributedSampler`` (process ``r`` of ``W`` holds images
      ``r, r + W, ...``), which Lightning uses for evaluation.
    - A metric whose pretrained weights are missing is reported as the string
      ``"missing: <reason>"``, never as a number computed with random weights.

Distributed (DDP): per-image values, KID features and verification scores are kept in
torchmetrics ``Metric`` list states with ``dist_reduce_fx="cat"``; FID keeps feature counts, sums
and sums of outer products (float64 sum states, constant memory). ``compute()`` therefore gathers over
all processes when ``torch.distributed`` is initialised and must be called on every process;
it returns the same global values everywhere. (A ``DistributedSampler`` pads the last batch
with repeated samples, as usual in Lightning; those repeats are counted.)
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reconattack.errors import ConfigError
from reconattack.metrics import functional as MF
from reconattack.metrics.identity import IdentityLeakage, crop_faces, load_recogniser
from reconattack.metrics.retrieval import EMBEDDINGS, ImageRetrieval
from reconattack.metrics.states import MISSING_PREFIX
from reconattack.metrics.states import Collect as _Collect
from reconattack.metrics.states import Count as _Count
from reconattack.metrics.states import Moments as _Moments
from reconattack.metrics.states import compute_state as _compute
from reconattack.utils.weights import MissingWeightsError

PIXEL_METRICS = ("mse", "psnr", "ssim")
FEATURE_METRICS = ("fid", "kid", "fid_cfgan", "lpips", "clip")
ALL_METRICS = PIXEL_METRICS + FEATURE_METRICS
#: what a suite computes unless told otherwise (conf/metrics/default.yaml): all but the CFGAN
#: official code's FID, which is a protocol of its own (metrics=cfgan_paper)
DEFAULT_METRICS = tuple(m for m in ALL_METRICS if m != "fid_cfgan")
#: pretrained network behind each feature metric: the keys of ``weights`` and ``feature_nets``
#: (FID and KID share the Inception)
NETWORK_OF = {
    "fid": "fid",
    "kid": "fid",
    "fid_cfgan": "fid_cfgan",
    "lpips": "lpips",
    "clip": "clip",
}
NETWORKS = ("fid", "fid_cfgan", "lpips", "clip", "face")
#: KID settings (conf/metrics/default.yaml ``kid``)
KID_DEFAULTS = {"below": 2048, "subset_size": 1000, "subsets": 100, "seed": 0}
#: settings of the CFGAN official code's FID (conf/metrics/default.yaml ``fid_cfgan``)
FID_CFGAN_DEFAULTS = {"images": 99, "jpeg_quality": 95}
#: ``quantize`` modes: how images become uint8-range values before PSNR / SSIM (and MSE).
#: ``"round"``: both to the nearest integer. ``"truncate"``: reconstructions truncated as the
#: CFGAN official code does (``CFGAN_main.py`` ``postprocess``: ``img * 127.5 + 127.5`` then
#: ``.int()``), after the package-wide clamp to [-1, 1] (the official SSIM / PSNR keep values
#: outside [0, 255]; they differ only for outputs outside [-1, 1]); ground truth rounded (it
#: comes from uint8 files there, on which truncating and rounding agree).
QUANTIZE = ("round", "truncate")


class MetricSuite:
    """All configured metrics of one stage.

    Args:
        metrics: names out of :data:`ALL_METRICS` (``"mse"``, ``"psnr"``, ``"ssim"``,
            ``"fid"``, ``"kid"``, ``"fid_cfgan"``, ``"lpips"``, ``"clip"``; default
            :data:`DEFAULT_METRICS`, all but ``"fid_cfgan"``). ``"fid"`` reports ``fid`` and
            ``fid_n``; ``"kid"`` reports ``kid``, ``kid_std`` and ``kid_n``; ``"fid_cfgan"``
            reports ``fid_cfgan`` and ``fid_cfgan_n``. ``"tpr@far"`` is added to the results
            automatically when :meth:`update_verification` received data.
        ssim_window: ``"gaussian"`` (Wang et al.; σ 1.5, population covariance) or
            ``"uniform"`` (11×11, sample covariance; CFGAN official code). ``None`` picks
            ``"uniform"`` when ``quantize`` is set, else ``"gaussian"``.
        quantize: evaluate on uint8-range values, data_range 255: ``"truncate"`` — the CFGAN
            official code's evaluation (scikit-image on ``.int()``-truncated images),
            ``"round"`` (or ``True``), or ``False`` / ``None`` (no quantisation); see
            :data:`QUANTIZE`.
        weights: local weight files per network (``{"fid": path, "fid_cfgan": path, "lpips":
            path, "clip": path}``; ``"fid"`` is the Inception of FID and KID, ``"fid_cfgan"``
            torchvision's; ``None`` = library cache / download).
        download: allow downloads of missing weights (never when ``RECONATTACK_OFFLINE=1``).
        feature_nets: explicit networks used instead of pretrained ones (tests, custom
            metrics): ``"fid"``: module (B, 3, H, W) in [0, 1] → (B, D) features (FID by
            :func:`~reconattack.metrics.functional.fid_from_moments`, KID by
            :func:`~reconattack.metrics.functional.kid_from_features`); ``"fid_cfgan"``: the
            same for the CFGAN protocol's FID (it gets the protocol's images); ``"lpips"``: module
            (x, y), both (B, 3, H, W) in [-1, 1] → (B,) distances; ``"clip"``: module
            (B, 3, H, W) in [0, 1] → (B, D) embeddings (cosine taken here).
        far: false-accept rate of TPR@FAR (paper: 0.01), reported as ``tpr@far``.
        fars: the low FARs reported beside it (``tpr@far=0.1``, ``tpr@far=0.01``,
            ``tpr@far=0.001``; membership-inference and face-verification practice), each under
            the run's protocol and only where the row's impostor pairs can measure it
            (:func:`~reconattack.metrics.functional.far_measurable`; else missing with the
            reason); ``min_far`` (1 / impostor pairs) and the pair counts come with them.
        ranks: the CMC ranks of re-identification retrieval (``rank1``, ``rank5``; paper: 1, 5).
        protocol: how TPR@FAR is read off the scores
            (:data:`~reconattack.metrics.functional.VERIFICATION_PROTOCOLS`): ``"per_row"`` (this
            suite's own ROC), ``"fixed"`` (at a threshold given to :meth:`compute`, set on a
            reference row's pairs by the callback), ``"kfold"`` (insightface ``calculate_val``;
            also reports ``tpr@far_std`` over the folds).
        folds: the folds of ``"kfold"`` (official: 10).
        reset_real_features: False keeps FID's and KID's real side across :meth:`reset` (it is
            taken from the first evaluated epoch); True recomputes it every epoch.
        fid_antialias: Inception resize with torch's antialiased bilinear instead of
            torch-fidelity's TF-1-compatible one (reference FID).
        clip_model, clip_pretrained: open_clip model name and pretrained tag.
        kid: KID settings (defaults :data:`KID_DEFAULTS`): ``below`` — KID is computed for
            sets of fewer images (FID's bias matters there; features are stored up to this
            many images); ``subset_size`` — at most this many features per subset (the subset
            size is ``min(subset_size, N, M)``: a set smaller than it is taken whole, as
            clean-fid does); ``subsets`` — number of subsets; ``seed`` — of the subset draws.
        retrieval: rank-1 retrieval of each reconstruction's own original among the evaluation's
            originals (:mod:`reconattack.metrics.retrieval`): ``{"embeddings": [...], "hog":
            {...}}``; embeddings out of :data:`~reconattack.metrics.retrieval.EMBEDDINGS`
            (``"clip"``: the CLIP network of the ``clip`` metric, missing with its reason when
            its weights are; ``"hog"``: :class:`~reconattack.metrics.embeddings.HOGEmbedding`
            with the ``hog`` settings, no weights). Keys ``retrieval/<embedding>/rank1``,
            ``.../chance``, ``.../n``. None or no embeddings: off.
        identity: identity leakage by a face recogniser the attack did not use
            (:mod:`reconattack.metrics.identity`): ``{"model": a conf/face config, "crop": (top,
            left, bottom, right) fractions or None, "max_impostors": int}``; keys ``id/...``
            (type-I TPR at each of ``fars``, ``cos``, ``rank1``); missing with the reason when
            the recogniser's checkpoint is not there. ``feature_nets["face"]`` injects one
            (tests). None: off.
        fid_cfgan: settings of the CFGAN official code's FID (defaults
            :data:`FID_CFGAN_DEFAULTS`): ``images`` — the first this many images are used (99);
            ``jpeg_quality`` — OpenCV JPEG quality of the written reconstructions (95, OpenCV's
            default), ``None`` for no JPEG step.
    """

    def __init__(
        self,
        metrics: Iterable[str] = DEFAULT_METRICS,
        ssim_window: str | None = None,
        quantize: bool | str | None = False,
        weights: Mapping[str, str | None] | None = None,
        download: bool = True,
        feature_nets: Mapping[str, nn.Module] | None = None,
        far: float = 0.01,
        fars: Iterable[float] = (0.1, 0.01, 0.001),
        ranks: Iterable[int] = (1, 5),
        protocol: str = "per_row",
        folds: int = 10,
        reset_real_features: bool = False,
        fid_antialias: bool = False,
        clip_model: str = "ViT-B-32",
        clip_pretrained: str = "laion2b_s34b_b79k",
        kid: Mapping[str, int] | None = None,
        fid_cfgan: Mapping[str, int | None] | None = None,
        retrieval: Mapping | None = None,
        identity: Mapping | None = None,
    ) -> None:
        self.metrics = tuple(str(m) for m in metrics)
        unknown = sorted(set(self.metrics) - set(ALL_METRICS))
        if unknown:
            raise ConfigError(f"unknown metrics {unknown}; choose from {list(ALL_METRICS)}")
        if quantize is True:
            quantize = "round"
        if quantize not in (False, None, *QUANTIZE):
            raise ConfigError(
                f"quantize must be false, true, 'round' or 'truncate', got {quantize!r}"
            )
        self.quantize: str | None = quantize or None
        self.ssim_window = ssim_window or ("uniform" if self.quantize else "gaussian")
        if self.ssim_window not in ("gaussian", "uniform"):
            raise ConfigError(f"ssim_window must be 'gaussian' or 'uniform', got {ssim_window!r}")
        self.weights = {k: (str(v) if v else None) for k, v in dict(weights or {}).items()}
        if "kid" in self.weights:
            raise ConfigError("KID uses the FID Inception: give its weights file as weights.fid")
        bad = sorted(set(self.weights) - set(NETWORKS))
        if bad:
            raise ConfigError(f"weights given for unknown networks {bad}; keys: {NETWORKS}")
        self.download = bool(download)
        self.feature_nets = dict(feature_nets or {})
        bad = sorted(set(self.feature_nets) - set(NETWORKS))
        if bad:
            raise ValueError(f"feature_nets for unknown networks {bad}; keys: {NETWORKS}")
        if not 0.0 <= far <= 1.0:
            raise ConfigError(f"far must be in [0, 1], got {far}")
        self.far = float(far)
        self.fars = tuple(float(f) for f in fars)
        if any(not 0.0 < f <= 1.0 for f in self.fars):
            raise ConfigError(f"fars must be in (0, 1], got {list(fars)}")
        self.ranks = tuple(int(k) for k in ranks)
        if not self.ranks or min(self.ranks) < 1:
            raise ConfigError(f"ranks must be CMC ranks >= 1, got {list(ranks)}")
        if protocol not in MF.VERIFICATION_PROTOCOLS:
            raise ConfigError(f"metrics.verification.protocol must be one of "
                              f"{sorted(MF.VERIFICATION_PROTOCOLS)}, got {protocol!r}")
        self.protocol, self.folds = str(protocol), int(folds)
        self.reset_real_features = bool(reset_real_features)
        self.fid_antialias = bool(fid_antialias)
        self.clip_model = clip_model
        self.clip_pretrained = clip_pretrained
        self.kid = _settings("kid", kid, KID_DEFAULTS)
        if self.kid["subset_size"] < 2 or self.kid["subsets"] < 1 or self.kid["below"] < 3:
            raise ConfigError(
                f"kid needs subset_size >= 2, subsets >= 1 and below >= 3, got {self.kid}"
            )
        self.fid_cfgan = _settings("fid_cfgan", fid_cfgan, FID_CFGAN_DEFAULTS, ("jpeg_quality",))
        quality = self.fid_cfgan["jpeg_quality"]
        if self.fid_cfgan["images"] < 2 or not (quality is None or 0 <= quality <= 100):
            raise ConfigError(
                f"fid_cfgan needs images >= 2 and jpeg_quality in [0, 100] or null, "
                f"got {self.fid_cfgan}"
            )

        retrieval = dict(retrieval or {})
        bad = sorted(set(retrieval) - {"embeddings", "hog"})
        if bad:
            raise ConfigError(f"metrics.retrieval takes embeddings and hog, got {bad}")
        self.retrieval_embeddings = tuple(str(e) for e in (retrieval.get("embeddings") or ()))
        bad = sorted(set(self.retrieval_embeddings) - set(EMBEDDINGS))
        if bad:
            raise ConfigError(f"unknown retrieval embeddings {bad}; choose from {list(EMBEDDINGS)}")
        self.hog = dict(retrieval.get("hog") or {})
        self._retr = {e: ImageRetrieval(e) for e in self.retrieval_embeddings}
        identity = dict(identity or {})
        bad = sorted(set(identity) - {"model", "crop", "max_impostors"})
        if bad:
            raise ConfigError(f"metrics.identity takes model, crop and max_impostors, got {bad}")
        self.identity_model = identity.get("model")
        self.identity_crop = identity.get("crop")
        on = self.identity_model is not None or "face" in self.feature_nets
        self._identity = IdentityLeakage(self.fars, int(identity.get("max_impostors") or 999)) if on else None
        self._images = False  # update() was called since the last reset (a row with images)

        per_image = [m for m in self.metrics if m not in ("fid", "kid", "fid_cfgan")]
        self._values: dict[str, _Collect] = {m: _Collect() for m in per_image}
        self._ver_scores = _Collect()
        self._ver_labels = _Collect()
        # retrieval: the gallery side per item (gathered), the queries once (the same everywhere)
        self._ret = {k: _Collect() for k in ("features", "ids", "cams", "index")}
        self._queries: tuple[Tensor, Tensor, Tensor] | None = None
        self._nets: dict[str, nn.Module] = {}
        self._missing: dict[str, str] = {}  # network name (or "ssim") → reason
        # FID: feature moments of each side, created at the first batch (feature size known)
        self._fid: dict[str, _Moments | None] = {"real": None, "fake": None}
        # KID: the features themselves, up to kid["below"] per process, and global counts
        self._kid: dict[str, _Collect] = {"real": _Collect(), "fake": _Collect()}
        self._kid_count: dict[str, _Count] = {"real": _Count(), "fake": _Count()}
        self._kid_local = {"real": 0, "fake": 0}
        # CFGAN-protocol FID: features of the first images and their places in evaluation order
        self._cf = {"real": _Collect(), "fake": _Collect()}
        self._cf_pos = {"real": _Collect(), "fake": _Collect()}
        self._cf_seen = {"real": 0, "fake": 0}  # images seen by this process
        self._real_frozen = False
        self._loaded = False
        self._device: torch.device | None = None

    # ------------------------------------------------------------------------------ loading
    @property
    def missing(self) -> dict[str, str]:
        """Metrics whose networks could not be loaded (or that cannot be computed) → reason."""
        return {
            m: self._missing[NETWORK_OF.get(m, m)]
            for m in self.metrics
            if NETWORK_OF.get(m, m) in self._missing
        }

    def _networks(self) -> list[str]:
        """The networks the configured metrics need, in :data:`NETWORKS` order."""
        wanted = {NETWORK_OF[m] for m in self.metrics if m in NETWORK_OF}
        wanted |= {e for e in self.retrieval_embeddings if e in NETWORKS}  # CLIP for retrieval
        if self._identity is not None:
            wanted.add("face")
        return [n for n in NETWORKS if n in wanted]

    def _load(self) -> None:
        """Load the feature networks once (lazily, at the first update)."""
        from reconattack.metrics import pretrained

        for name in self._networks():
            if name in self._nets or name in self._missing:
                continue  # shared by share_networks()
            if name in self.feature_nets:
                self._nets[name] = self.feature_nets[name].eval()
                continue
            path = self.weights.get(name)
            try:
                if name == "fid":
                    self._nets[name] = pretrained.load_fid_inception(
                        path, self.download, antialias=self.fid_antialias
                    )
                elif name == "fid_cfgan":
                    self._nets[name] = pretrained.load_cfgan_inception(path, self.download)
                elif name == "lpips":
                    self._nets[name] = pretrained.load_lpips(path, self.download)
                elif name == "face":
                    self._nets[name] = load_recogniser(self.identity_model)
                else:
                    self._nets[name] = pretrained.load_clip(
                        path, self.download, self.clip_model, self.clip_pretrained
                    )
            except MissingWeightsError as exc:
                self._missing[name] = str(exc)
                users = [m for m in self.metrics if NETWORK_OF.get(m) == name]
                users += [f"retrieval/{name}" for e in self.retrieval_embeddings if e == name]
                users += ["id/*"] * (name == "face")
                warnings.warn(
                    f"metric {', '.join(users)} will be reported as missing: {exc}", stacklevel=3
                )
        if "hog" in self.retrieval_embeddings and "hog" not in self._nets:
            from reconattack.metrics.embeddings import HOGEmbedding

            self._nets["hog"] = HOGEmbedding(**self.hog)
        self._loaded = True

    def share_networks(self, other: MetricSuite) -> None:
        """Reuse ``other``'s loaded networks (and their missing reasons) instead of loading
        another copy; for several suites evaluated side by side. Only the networks are shared:
        every suite keeps its own statistics."""
        if not other._loaded:
            other._load()
        for name in self._networks():
            if name in self.feature_nets:
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
        for r in self._retr.values():
            r.to(device)
        if self._identity is not None:
            self._identity.to(device)
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
        self._images = True
        pred = pred.detach().float()
        target = target.detach().to(pred.device, torch.float32)
        x = (pred.clamp(-1, 1) + 1) / 2
        y = (target.clamp(-1, 1) + 1) / 2
        if "fid_cfgan" in self._nets:
            self._update_cfgan(pred, y)
        if self.quantize:
            if self.quantize == "truncate":
                xq = _truncate_u8(pred)
            else:
                xq = (x * 255).round()
            yq = (y * 255).round()
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
        if self._identity is not None and "face" in self._nets:
            net = self._nets["face"]
            ex = net(crop_faces(x, self.identity_crop) * 2 - 1).float()
            ey = net(crop_faces(y, self.identity_crop) * 2 - 1).float()
            self._identity.update(ex, ey)
        # one embedding pass per image and network: CLIP's serves the clip metric and retrieval
        for name in {*self._retr, *(["clip"] if "clip" in self._values else [])} & set(self._nets):
            ex, ey = self._nets[name](x).float(), self._nets[name](y).float()
            if name in self._retr:
                self._retr[name].update(ex, ey)
            if name == "clip" and "clip" in self._values:
                self._values["clip"].update(F.cosine_similarity(ex, ey, dim=-1))
        if "fid" in self._nets:  # one Inception pass per image for FID and KID
            sides = {"fake": x} if self._real_frozen else {"fake": x, "real": y}
            for side, imgs in sides.items():
                feats = self._nets["fid"](imgs).flatten(1).float()
                if "fid" in self.metrics:
                    if self._fid[side] is None:
                        self._fid[side] = _Moments(feats.shape[1]).to(feats.device)
                    self._fid[side].update(feats)
                if "kid" in self.metrics:
                    self._kid_count[side].update(feats.shape[0])
                    room = self.kid["below"] - self._kid_local[side]
                    if room > 0:  # beyond that KID is not computed: keep nothing more
                        self._kid[side].update(feats[:room])
                        self._kid_local[side] += min(room, feats.shape[0])

    def _update_cfgan(self, pred: Tensor, y: Tensor) -> None:
        """CFGAN-protocol FID features of the images among the first ``fid_cfgan["images"]``.

        Args:
            pred: (B, 3, H, W) reconstructions in [-1, 1] (clamped here).
            y: (B, 3, H, W) ground truth in [0, 1].
        """
        rank, world = _rank_and_world()
        limit = self.fid_cfgan["images"]
        sides = {"fake": pred} if self._real_frozen else {"fake": pred, "real": y}
        for side, imgs in sides.items():
            start, b = self._cf_seen[side], imgs.shape[0]
            self._cf_seen[side] += b
            keep = imgs[: max(0, limit - start)]  # enough: the global first are among them
            if not keep.shape[0]:
                continue
            if side == "fake":  # as written by CFGAN_main.py and read back by utils/FID.py
                keep = MF.jpeg_roundtrip(_truncate_u8(keep), self.fid_cfgan["jpeg_quality"]) / 255
            else:  # the ground-truth files are uint8 images
                keep = (keep * 255).round() / 255
            self._cf[side].update(self._nets["fid_cfgan"](keep).flatten(1).float())
            local = torch.arange(start, start + keep.shape[0], device=keep.device)
            self._cf_pos[side].update(local * world + rank)  # DistributedSampler order

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

    @torch.no_grad()
    def update_retrieval(self, features: Tensor, ids: Tensor, cams: Tensor, index: Tensor,
                         queries: tuple[Tensor, Tensor, Tensor]) -> None:
        """Add gallery items of a re-identification retrieval (the Market-1501 protocol,
        :func:`~reconattack.metrics.functional.reid_metrics`: ``rank<k>`` and ``map``).

        Args:
            features: (B, D) gallery features (any scale: normalised there).
            ids, cams: (B,) int identity and camera of each gallery item.
            index: (B,) int gallery index of each item: an item seen twice (a DDP sampler's
                padding) counts once.
            queries: ``(features (Q, D), ids (Q,), cams (Q,))``, the whole query set: the same
                in every batch and on every process; kept, not accumulated.
        """
        device = self._device or features.device
        for key, value in (("features", features.float()), ("ids", ids), ("cams", cams), ("index", index)):
            self._ret[key].update(torch.as_tensor(value).detach().to(device))
        self._queries = queries

    def _retrieval(self) -> dict[str, float | str]:
        feats = _compute(self._ret["features"])
        if not feats.numel() or self._queries is None:
            return {}
        ids, cams, index = (_compute(self._ret[k]).flatten() for k in ("ids", "cams", "index"))
        feats = feats.reshape(index.numel(), -1)
        _, first = np.unique(index.cpu().numpy(), return_index=True)  # DDP padding repeats items
        keep = torch.as_tensor(np.sort(first), device=feats.device)
        qf, qi, qc = self._queries
        try:
            out = MF.reid_metrics(qf, feats[keep], qi, ids[keep], qc, cams[keep], ranks=self.ranks)
        except ValueError as exc:
            return {f"rank{k}": f"{MISSING_PREFIX}{exc}" for k in self.ranks} | {"map": f"{MISSING_PREFIX}{exc}"}
        return {**{f"rank{k}": out[f"rank{k}"] for k in self.ranks}, "map": out["map"],
                "reid_queries": out["queries"], "reid_gallery": int(keep.numel())}

    # ------------------------------------------------------------------------------ results
    def _fid_results(self) -> dict[str, float | int | str]:
        """``{"fid", "fid_n"}``, or ``{"fid": "missing: ..."}`` with fewer than 2 images."""
        stats = {
            side: (_compute(m) if m is not None else (0, None, None))
            for side, m in self._fid.items()
        }
        (n_r, mu_r, cov_r), (n_f, mu_f, cov_f) = stats["real"], stats["fake"]
        if n_r < 2 or n_f < 2:
            return {
                "fid": f"{MISSING_PREFIX}FID needs at least 2 reconstructions and 2 "
                f"ground-truth images, got {n_f} and {n_r}"
            }
        return {"fid": MF.fid_from_moments(mu_r, cov_r, mu_f, cov_f), "fid_n": n_f}

    def _kid_results(self) -> dict[str, float | int | str]:
        """``{"kid", "kid_std", "kid_n"}``, or ``{"kid": "missing: ..."}``."""
        n_r, n_f = (int(_compute(self._kid_count[side])) for side in ("real", "fake"))
        below = self.kid["below"]
        if n_r >= below or n_f >= below:
            return {
                "kid": f"{MISSING_PREFIX}KID is computed for sets of fewer than {below} "
                f"images (metrics.kid.below), where FID is biased; this one has {n_f} "
                f"reconstructions and {n_r} ground-truth images: FID is the measure"
            }
        if n_r < 2 or n_f < 2:
            return {
                "kid": f"{MISSING_PREFIX}KID needs at least 2 reconstructions and 2 "
                f"ground-truth images, got {n_f} and {n_r}"
            }
        real, fake = (_compute(self._kid[side]) for side in ("real", "fake"))
        mean, std, _ = MF.kid_from_features(
            real.reshape(n_r, -1),
            fake.reshape(n_f, -1),
            self.kid["subset_size"],
            self.kid["subsets"],
            self.kid["seed"],
        )
        return {"kid": mean, "kid_std": std, "kid_n": n_f}

    def _fid_cfgan_results(self) -> dict[str, float | int | str]:
        """``{"fid_cfgan", "fid_cfgan_n"}`` on the first images, or ``{"fid_cfgan": "missing:
        ..."}``."""
        limit = self.fid_cfgan["images"]
        picked = {}
        for side in ("real", "fake"):
            feats, pos = _compute(self._cf[side]), _compute(self._cf_pos[side])
            order = torch.argsort(pos.reshape(-1))[:limit]
            picked[side] = feats.reshape(pos.numel(), -1)[order] if pos.numel() else feats
        n_r, n_f = picked["real"].shape[0], picked["fake"].shape[0]
        if n_r < 2 or n_f < 2:
            return {
                "fid_cfgan": f"{MISSING_PREFIX}FID needs at least 2 reconstructions and 2 "
                f"ground-truth images, got {n_f} and {n_r}"
            }
        return {
            "fid_cfgan": MF.fid_from_features(picked["real"], picked["fake"]),
            "fid_cfgan_n": n_f,
        }

    def _kid_stored(self) -> int:
        """Feature rows this process keeps for KID (both sides)."""
        return sum(self._kid_local.values())

    def verification_threshold(self, far: float | None = None) -> float | None:
        """The score threshold at which this suite's pairs reach FPR ``far`` (default the suite's
        ``far``; the operating point the ``"fixed"`` protocol applies to every row), or None
        without verification data — and, for a FAR of :attr:`fars`, where these pairs cannot
        measure it. Called on every process under DDP (gathers)."""
        scores = _compute(self._ver_scores)
        if not scores.numel():
            return None
        labels = _compute(self._ver_labels).bool()
        target = self.far if far is None else float(far)
        if far is not None and not MF.far_measurable(target, int((~labels).sum())):
            return None
        try:
            return MF.threshold_at_far(scores, labels, target)
        except ValueError:
            return None

    def thresholds(self) -> dict[float | None, float | None]:
        """The ``"fixed"`` protocol's operating points set on this (the reference) row's pairs:
        ``{None: at far, f: at each of fars}`` (:meth:`verification_threshold`)."""
        return {None: self.verification_threshold(), **{f: self.verification_threshold(f) for f in self.fars}}

    def rocs(self) -> dict[str, dict[str, np.ndarray]]:
        """The exact ROCs of this suite's verification rows (:func:`~reconattack.metrics.functional.roc_curve`:
        ``far``, ``tpr``, ``threshold``): ``""`` its verification pairs, ``"id"`` the identity
        rows' type-I pairs of the last :meth:`compute`; a row without pairs of both kinds is
        left out. Every process calls it under DDP (gathers)."""
        out = {}
        scores = _compute(self._ver_scores)
        if scores.numel():
            try:
                out[""] = MF.roc_curve(scores, _compute(self._ver_labels).bool())
            except ValueError:
                pass
        if self._identity is not None and self._identity.curve is not None:
            out["id"] = self._identity.curve
        return out

    def _tpr(self, scores: Tensor, labels: Tensor, far: float, threshold: float | None) -> dict[str, float | str]:
        """``{"tpr": ..., "std": ...}`` at ``far`` under the suite's protocol (``threshold``: the
        fixed protocol's, set on the reference row)."""
        if self.protocol == "kfold":
            mean, std = MF.val_at_far_kfold(scores, labels, far, self.folds)
            return {"tpr": mean, "std": std}
        if self.protocol == "fixed":
            if threshold is None:
                return {"tpr": f"{MISSING_PREFIX}the fixed protocol's threshold comes from the reference row's "
                               "pairs, which were not evaluated or cannot measure this FAR"}
            return {"tpr": MF.tpr_at_threshold(scores, labels, threshold)}
        return {"tpr": MF.tpr_at_far(scores, labels, far)}

    def _verification(self, thresholds: Mapping[float | None, float | None] | float | None) -> dict[str, float | str]:
        scores = _compute(self._ver_scores)
        if not scores.numel():
            return {}
        labels = _compute(self._ver_labels).bool()
        if not isinstance(thresholds, Mapping):
            thresholds = {None: thresholds}
        out: dict[str, float | str] = {}
        try:
            main = self._tpr(scores, labels, self.far, thresholds.get(None))
        except ValueError as exc:
            return {"tpr@far": f"{MISSING_PREFIX}{exc}"}
        out["tpr@far"] = main["tpr"]
        if "std" in main:
            out["tpr@far_std"] = main["std"]
        impostors = int((~labels).sum())
        # kfold sets each fold's threshold on the other folds' impostors
        usable = impostors * (self.folds - 1) // self.folds if self.protocol == "kfold" else impostors
        for far in self.fars:
            key = f"tpr@far={far:g}"
            why = MF.unmeasurable_far(far, usable, "this row has")
            if why:
                out[key] = MISSING_PREFIX + why
                continue
            try:
                out[key] = self._tpr(scores, labels, far, thresholds.get(far))["tpr"]
            except ValueError as exc:
                out[key] = f"{MISSING_PREFIX}{exc}"
        out.update({"pairs/genuine": int(labels.sum()), "pairs/impostor": impostors,
                    "min_far": 1 / max(usable, 1)})
        return out

    def compute(self, threshold: Mapping[float | None, float | None] | float | None = None) -> dict[str, float | str]:
        """Final values over everything seen since the last :meth:`reset`; ``threshold``: the
        verification thresholds of the ``"fixed"`` protocol, ``{None: the one of far, f: the one of
        each of fars}`` (:meth:`thresholds`; a number: the one of ``far``).

        Returns:
            ``{name: value}`` in the order of ``metrics``, each FID followed by ``fid_n`` and
            each KID by ``kid_std`` and ``kid_n``, ``fid_cfgan`` by ``fid_cfgan_n`` (counts are
            ints), plus ``"tpr@far"`` when
            verification data was given, ``"rank<k>"``, ``"map"`` (with ``reid_queries`` and
            ``reid_gallery``, the counts) when retrieval data was given; strings ``"missing: <reason>"`` for metrics whose
            weights are missing or that could not be computed. Empty for metrics without
            data. Called on every process under DDP (gathers; same result everywhere).
        """
        out: dict[str, float | str] = {}
        if self._loaded:
            for name in self.metrics:
                net = NETWORK_OF.get(name, name)
                if net in self._missing:
                    out[name] = MISSING_PREFIX + self._missing[net]
                elif name == "fid":
                    out.update(self._fid_results())
                elif name == "kid":
                    out.update(self._kid_results())
                elif name == "fid_cfgan":
                    out.update(self._fid_cfgan_results())
                else:
                    vals = _compute(self._values[name])
                    if vals.numel():
                        out[name] = float(vals.double().mean())
            # FID / KID real statistics are complete after the first evaluated epoch
            self._real_frozen = not self.reset_real_features
            for name, retrieval in self._retr.items():
                if name not in self._missing:
                    out.update(retrieval.compute())  # collective under DDP
                elif self._images:  # a row with images whose embedding is missing
                    out[f"{retrieval.prefix}rank1"] = MISSING_PREFIX + self._missing[name]
            if self._identity is not None:
                if "face" not in self._missing:
                    out.update(self._identity.compute())  # collective under DDP
                elif self._images:
                    out["id/rank1"] = MISSING_PREFIX + self._missing["face"]
        out.update(self._verification(threshold))
        out.update(self._retrieval())
        return out

    def reset(self) -> None:
        """Clear accumulated values; keep loaded networks and (by default) the FID / KID real
        side."""
        for m in self._values.values():
            m.reset()
        self._ver_scores.reset()
        self._ver_labels.reset()
        for m in self._ret.values():
            m.reset()
        for r in self._retr.values():
            r.reset()
        if self._identity is not None:
            self._identity.reset()
        self._images = False
        sides = ("fake", "real") if self.reset_real_features else ("fake",)
        for side in sides:
            if self._fid[side] is not None:
                self._fid[side].reset()
            self._kid[side].reset()
            self._kid_count[side].reset()
            self._kid_local[side] = 0
            self._cf[side].reset()
            self._cf_pos[side].reset()
            self._cf_seen[side] = 0
        if self.reset_real_features:
            self._real_frozen = False
        self._missing.pop("ssim", None)  # image-size problems are re-checked on new data


def _settings(
    name: str, given: Mapping | None, defaults: dict, nullable: tuple[str, ...] = ()
) -> dict:
    """``defaults`` updated with ``given`` (a config node) of integers (``None`` allowed for
    ``nullable`` keys); unknown keys are a ConfigError."""
    given = dict(given or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ConfigError(f"unknown {name} settings {unknown}; keys: {sorted(defaults)}")
    out = dict(defaults)
    for key, value in given.items():
        if value is None and key in nullable:
            pass
        elif isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name}.{key} must be an integer, got {value!r}")
        out[key] = value
    return out


def _rank_and_world() -> tuple[int, int]:
    """(rank, world size) of ``torch.distributed``, (0, 1) without it."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _truncate_u8(pred: Tensor) -> Tensor:
    """CFGAN official ``postprocess``: ``(img * 127.5 + 127.5).int()`` after the clamp to
    [-1, 1] (so truncation is the floor). (B, 3, H, W) in [-1, 1] → same shape, float integer
    values in [0, 255]."""
    return torch.floor(pred.float().clamp(-1, 1) * 127.5 + 127.5)


def is_missing(value: float | str) -> bool:
    """True for a ``"missing: ..."`` result entry."""
    return isinstance(value, str)
