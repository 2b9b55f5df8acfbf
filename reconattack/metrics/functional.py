"""Functional forms of the reconstruction metrics (pure torch, device-agnostic).

Every function takes batches and returns **per-image** values; averaging over a data set is
left to the caller (:class:`reconattack.metrics.suite.MetricSuite` reports the mean of the
per-image values, e.g. the mean PSNR, not the PSNR of the pooled MSE).

Value ranges and directions of all metrics the framework reports are listed in
:data:`METRIC_RANGES`.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


class MetricRange(NamedTuple):
    """Value range and direction of a metric.

    Attributes:
        low: smallest possible value.
        high: largest possible value (``math.inf`` when unbounded).
        higher_is_better: direction of improvement.
        note: what the value means (unit, reference).
    """

    low: float
    high: float
    higher_is_better: bool
    note: str


METRIC_RANGES: dict[str, MetricRange] = {
    "mse": MetricRange(
        0.0,
        1.0,
        False,
        "mean squared error of images scaled to [0, 1] (per image, then averaged); 0 = identical",
    ),
    "psnr": MetricRange(
        0.0,
        math.inf,
        True,
        "peak signal-to-noise ratio in dB, mean of per-image values; inf for identical images",
    ),
    "ssim": MetricRange(
        -1.0,
        1.0,
        True,
        "structural similarity (Wang et al. 2004), mean over valid windows, channels and images",
    ),
    "fid": MetricRange(
        0.0,
        math.inf,
        False,
        "Frechet Inception Distance (Inception-v3 pool3, 2048-d) between the reconstruction "
        "and ground-truth sets",
    ),
    "fid_n": MetricRange(
        0.0,
        math.inf,
        True,
        "number of reconstructions the FID was computed on (a count, not a quality measure; "
        "FID is biased upward for small sets, see kid)",
    ),
    "kid": MetricRange(
        -math.inf,
        math.inf,
        False,
        "Kernel Inception Distance (Binkowski et al. 2018): unbiased MMD^2 with the cubic "
        "polynomial kernel on the FID Inception features, mean over random subsets; 0 = same "
        "distribution, small negative values possible (unbiased estimate)",
    ),
    "kid_std": MetricRange(
        0.0,
        math.inf,
        False,
        "population standard deviation of KID over its subsets (0 when one subset is the whole set)",
    ),
    "kid_n": MetricRange(
        0.0, math.inf, True, "number of reconstructions the KID was computed on (a count)"
    ),
    "fid_cfgan": MetricRange(
        0.0,
        math.inf,
        False,
        "the CFGAN official code's FID (first 99 images, torchvision ImageNet Inception-v3 on "
        "BGR input; metrics=cfgan_paper): comparable with the CFGAN paper's tables only",
    ),
    "fid_cfgan_n": MetricRange(
        0.0, math.inf, True, "number of reconstructions fid_cfgan was computed on (a count)"
    ),
    "lpips": MetricRange(
        0.0,
        1.0,
        False,
        "LPIPS v0.1 AlexNet perceptual distance, mean of per-image values (about [0, 1]; "
        "not strictly bounded above)",
    ),
    "clip": MetricRange(
        -1.0,
        1.0,
        True,
        "cosine similarity of CLIP ViT-B-32 image embeddings of reconstruction and ground truth",
    ),
    "tpr@far": MetricRange(
        0.0,
        1.0,
        True,
        "verification true-positive rate at the given false-accept rate (exact ROC)",
    ),
}


def _check_pair(pred: Tensor, target: Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}"
        )
    if pred.dim() != 4:
        raise ValueError(f"expected (B, C, H, W) tensors, got shape {tuple(pred.shape)}")


def mse(pred: Tensor, target: Tensor) -> Tensor:
    """Per-image mean squared error.

    Args:
        pred: (B, C, H, W) images, any range.
        target: (B, C, H, W) images, same range as ``pred``.

    Returns:
        (B,) float tensor, mean over C, H, W of the squared differences; in [0, range²].
    """
    _check_pair(pred, target)
    diff = pred.double() - target.double() if pred.device.type != "mps" else pred - target
    return diff.square().flatten(1).mean(dim=1).to(torch.float32)


def psnr(pred: Tensor, target: Tensor, data_range: float) -> Tensor:
    """Per-image peak signal-to-noise ratio in dB.

    ``10 · log10(data_range² / MSE)`` for each image. Identical images (MSE = 0) give
    ``+inf``; the caller averages per-image values (an ``inf`` makes the mean ``inf``,
    which is the correct limit).

    Args:
        pred: (B, C, H, W) images in [0, data_range].
        target: (B, C, H, W) images in [0, data_range].
        data_range: the images' value range (1.0 for [0, 1], 255.0 for uint8-range values).

    Returns:
        (B,) float tensor in [0, inf) dB for images inside the range.
    """
    err = mse(pred, target)
    return 10.0 * torch.log10(data_range**2 / err)


def _gaussian_kernel(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    x = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _ssim_dtype(device: torch.device) -> torch.dtype:
    # float64 where supported, so the result matches scikit-image (which works in float64)
    return torch.float32 if device.type == "mps" else torch.float64


def ssim(
    pred: Tensor,
    target: Tensor,
    data_range: float,
    window: str = "gaussian",
    win_size: int = 11,
    sigma: float = 1.5,
) -> Tensor:
    """Per-image structural similarity (Wang et al. 2004) over the *valid* windows.

    The SSIM map is computed without padding (``(H - win_size + 1) × (W - win_size + 1)``
    windows, i.e. the 5-px borders of an 11-px window are excluded) and averaged over
    positions and channels — as scikit-image and the reference MATLAB code do.
    Constants K1 = 0.01, K2 = 0.03, ``C1 = (K1·data_range)²``, ``C2 = (K2·data_range)²``.

    Windows:
        - ``"gaussian"``: Gaussian window of ``win_size`` 11, σ 1.5, population covariance.
          Matches ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
          use_sample_covariance=False, data_range=..., channel_axis=...)``.
        - ``"uniform"``: uniform ``win_size``×``win_size`` window with sample covariance
          (N/(N-1) correction). Matches ``structural_similarity(win_size=11,
          data_range=..., channel_axis=...)`` — the CFGAN official code's setting (there on
          uint8-range images with data_range 255).

    Computed with a separable depthwise convolution, in float64 (float32 on MPS).

    Args:
        pred: (B, C, H, W) images in [0, data_range]; H, W ≥ ``win_size``.
        target: (B, C, H, W) images in [0, data_range].
        data_range: the images' value range (1.0 or 255.0).
        window: ``"gaussian"`` or ``"uniform"``.
        win_size: window side (odd).
        sigma: Gaussian σ (``"gaussian"`` only).

    Returns:
        (B,) float tensor in [-1, 1].
    """
    _check_pair(pred, target)
    if window not in ("gaussian", "uniform"):
        raise ValueError(f"window must be 'gaussian' or 'uniform', got {window!r}")
    if win_size % 2 != 1 or win_size < 3:
        raise ValueError(f"win_size must be odd and >= 3, got {win_size}")
    _, c, h, w = pred.shape
    if h < win_size or w < win_size:
        raise ValueError(
            f"SSIM with a {win_size}-px window needs images of at least "
            f"{win_size}x{win_size} px, got {h}x{w}"
        )
    dtype = _ssim_dtype(pred.device)
    # SSIM is invariant to a common rescaling of images and data range: work on [0, 1]
    x = pred.to(dtype) / data_range
    y = target.to(dtype) / data_range
    if window == "gaussian":
        k1d = _gaussian_kernel(win_size, sigma, dtype, pred.device)
        cov_norm = 1.0
    else:
        k1d = torch.full((win_size,), 1.0 / win_size, dtype=dtype, device=pred.device)
        n = win_size * win_size
        cov_norm = n / (n - 1)
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # (B, 5C, H, W)
    groups = stack.shape[1]
    kh = k1d.view(1, 1, win_size, 1).expand(groups, 1, win_size, 1)
    kw = k1d.view(1, 1, 1, win_size).expand(groups, 1, 1, win_size)
    filt = F.conv2d(F.conv2d(stack, kh, groups=groups), kw, groups=groups)
    ux, uy, uxx, uyy, uxy = filt.split(c, dim=1)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1 = 0.01**2
    c2 = 0.03**2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.flatten(1).mean(dim=1).to(torch.float32)


#: how TPR@FAR is read off a row's verification scores (``metrics.verification.protocol``); the
#: AVIH attack paper does not say which it used (SPEC §3.6)
VERIFICATION_PROTOCOLS = {
    "per_row": "each row's own exact ROC: the largest TPR at a threshold where that row's pairs "
               "have FPR <= FAR (a row without identity, Random or Protected, lands near FAR by "
               "construction)",
    "fixed": "a fixed operating point: the threshold at FAR on the reference row's pairs (the "
             "original images), applied to every row, as a deployed verifier works",
    "kfold": "insightface / AdaFace calculate_val: 10 folds; per fold, the threshold of squared "
             "distance (2 - 2 cos) interpolated at FAR on the other folds (grid 0:4:0.001), the "
             "TPR (VAL) on the held fold; mean over folds",
}


#: how images are written before they are scored (``threat.saved_as``): ``png`` (8 bits per
#: channel, lossless beyond the rounding), ``jpeg`` (OpenCV, ``quality``), or None (as computed)
SAVED_FORMATS = ("png", "jpeg")


def jpeg_roundtrip(u8: Tensor, quality: int | None) -> Tensor:
    """Images written as JPEG by OpenCV (``cv2.imencode(".jpg")``, 4:2:0, ``quality``) and read
    back (``cv2.imdecode``). (B, 3, H, W) RGB, integer values in [0, 255] → same, float32, on the
    same device; ``quality=None`` returns the input."""
    if quality is None:
        return u8
    import cv2

    arr = u8.detach().to("cpu", torch.uint8).permute(0, 2, 3, 1).numpy()
    out = []
    for img in arr:
        ok, buf = cv2.imencode(
            ".jpg", np.ascontiguousarray(img[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
        )
        if not ok:  # pragma: no cover - OpenCV refuses only malformed arrays
            raise RuntimeError("OpenCV could not encode an image as JPEG")
        out.append(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])
    back = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)
    return back.to(u8.device, torch.float32)


def as_saved(images: Tensor, fmt: str | None, quality: int = 95) -> Tensor:
    """``images`` as they are after being written to an image file and read back: 8 bits per
    channel (``round((x + 1) * 127.5)``), and for ``"jpeg"`` OpenCV's JPEG at ``quality``.
    (B, 3, H, W) in [-1, 1] → same shape and range, float32; ``fmt`` None: unchanged."""
    if fmt is None:
        return images
    if fmt not in SAVED_FORMATS:
        raise ValueError(f"saved_as must be one of {SAVED_FORMATS} or null, got {fmt!r}")
    u8 = torch.round((images.detach().float().clamp(-1, 1) + 1) * 127.5)
    if fmt == "jpeg":
        u8 = jpeg_roundtrip(u8, quality)
    return u8 / 127.5 - 1


def _verification_inputs(scores: Tensor, is_same: Tensor, far: float) -> tuple[Tensor, Tensor]:
    scores = torch.as_tensor(scores).detach().flatten().to("cpu", torch.float64)
    labels = torch.as_tensor(is_same).detach().flatten().to("cpu").bool()
    if scores.shape != labels.shape:
        raise ValueError(
            f"scores and is_same differ in length: {scores.numel()} vs {labels.numel()}"
        )
    if torch.isnan(scores).any():
        raise ValueError("scores contain NaN")
    if not 0.0 <= far <= 1.0:
        raise ValueError(f"far must be in [0, 1], got {far}")
    n_pos = int(labels.sum())
    if n_pos == 0:
        raise ValueError("TPR@FAR needs at least one genuine pair (is_same=True); got none")
    if n_pos == labels.numel():
        raise ValueError("TPR@FAR needs at least one impostor pair (is_same=False); got none")
    return scores, labels


def _roc(scores: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The exact ROC of validated inputs: (FPR, TPR, thresholds), float64, one point per distinct
    score (``score >= threshold`` accepts; tied scores move together) after the first point
    (0, 0, +inf) that accepts nothing; FPR and TPR non-decreasing, thresholds decreasing."""
    n_pos = int(labels.sum())
    n_neg = labels.numel() - n_pos
    order = torch.argsort(scores, descending=True, stable=True)
    s = scores[order]
    lab = labels[order].to(torch.float64)
    # last index of each run of equal scores = one ROC point per distinct threshold
    last = torch.nonzero(s[1:] != s[:-1]).flatten()
    last = torch.cat([last, torch.tensor([s.numel() - 1])])
    tps = torch.cumsum(lab, 0)[last]
    fps = (last + 1).to(torch.float64) - tps
    tpr = torch.cat([torch.zeros(1, dtype=torch.float64), tps / n_pos])
    fpr = torch.cat([torch.zeros(1, dtype=torch.float64), fps / n_neg])
    thresholds = torch.cat([torch.tensor([math.inf], dtype=torch.float64), s[last]])
    return fpr, tpr, thresholds


def _roc_at_far(scores: Tensor, labels: Tensor, far: float) -> tuple[float, float]:
    """(TPR, threshold) at ``far`` on the exact ROC: the largest TPR among the distinct
    thresholds with FPR <= ``far``, and the smallest such threshold — the operating point of a
    verifier set to accept ``far`` of the impostors (``inf``: the point that accepts nothing)."""
    fpr, tpr, thresholds = _roc(scores, labels)
    last_ok = int(torch.nonzero(fpr <= far).flatten()[-1])  # FPR and TPR grow along the curve
    return float(tpr[last_ok]), float(thresholds[last_ok])


def roc_curve(scores: Tensor, is_same: Tensor) -> dict[str, np.ndarray]:
    """The exact ROC of verification pairs, as ``sklearn.metrics.roc_curve(drop_intermediate=False)``
    computes it: ``{"far", "tpr", "threshold"}``, (K + 1,) float64 arrays for K distinct scores,
    starting at (FAR 0, TPR 0, threshold +inf); ``score >= threshold`` accepts. What the run
    directory's ``roc_<row>.csv`` holds. Inputs and errors as :func:`tpr_at_far`."""
    scores, labels = _verification_inputs(scores, is_same, 0.0)
    fpr, tpr, thresholds = _roc(scores, labels)
    return {"far": fpr.numpy(), "tpr": tpr.numpy(), "threshold": thresholds.numpy()}


def far_measurable(far: float, impostors: int) -> bool:
    """Whether ``impostors`` impostor pairs can measure FAR ``far``: a verifier set to it must be
    allowed at least one false accept, ``far * impostors >= 1``. Below, the ROC holds only its
    FAR-0 point and a TPR there would be an extrapolation (smallest measurable FAR: 1 / impostors)."""
    return far * impostors >= 1 - 1e-9


def unmeasurable_far(far: float, impostors: int, have: str = "there are") -> str | None:
    """Why ``impostors`` impostor pairs cannot measure FAR ``far`` (:func:`far_measurable`), for
    a metric reported missing; None when they can. ``have`` introduces the count in the text."""
    if far_measurable(far, impostors):
        return None
    return (f"FAR {far:g} needs at least {math.ceil(1 / far - 1e-9)} impostor pairs to set a threshold on; "
            f"{have} {impostors} (smallest measurable FAR {1 / max(impostors, 1):.3g}): not extrapolated")


def tpr_at_far(scores: Tensor, is_same: Tensor, far: float = 0.01) -> float:
    """True-positive rate at a false-accept rate, from the exact ROC curve (protocol
    ``per_row``).

    Every distinct score is a threshold (``score >= t`` accepts); tied scores move together,
    as in ``sklearn.metrics.roc_curve(drop_intermediate=False)``, whose first point
    (threshold +inf) is (FPR 0, TPR 0). The result is the largest TPR among the thresholds
    with FPR ≤ ``far``.

    Args:
        scores: (N,) similarity scores, higher = more likely the same identity.
        is_same: (N,) bool (or 0/1) labels, True for genuine pairs.
        far: the false-accept rate, in [0, 1] (paper: 0.01).

    Returns:
        TPR in [0, 1].

    Raises:
        ValueError: no genuine or no impostor pairs, shape mismatch, NaN scores.
    """
    scores, labels = _verification_inputs(scores, is_same, far)
    return _roc_at_far(scores, labels, far)[0]


def threshold_at_far(scores: Tensor, is_same: Tensor, far: float = 0.01) -> float:
    """The score threshold of a verifier that accepts ``far`` of the impostor pairs: the smallest
    distinct score with FPR <= ``far`` (``score >= threshold`` accepts; ``inf`` when only the point
    that accepts nothing has it); at it, ``is_same``'s TPR is :func:`tpr_at_far`'s. Protocol
    ``fixed`` sets it on the reference row's pairs. Same inputs and errors as :func:`tpr_at_far`."""
    scores, labels = _verification_inputs(scores, is_same, far)
    return _roc_at_far(scores, labels, far)[1]


def tpr_at_threshold(scores: Tensor, is_same: Tensor, threshold: float) -> float:
    """The fraction of genuine pairs with ``score >= threshold`` (protocol ``fixed``: every row
    at the reference row's threshold). scores, is_same: (N,). Returns TPR in [0, 1]."""
    scores, labels = _verification_inputs(scores, is_same, 0.0)
    return float((scores[labels] >= threshold).to(torch.float64).mean())


def val_at_far_kfold(scores: Tensor, is_same: Tensor, far: float = 0.01, folds: int = 10,
                     step: float = 0.001) -> tuple[float, float]:
    """Protocol ``kfold``: insightface's / AdaFace's ``calculate_val`` on cosine scores.

    The pairs, in their order, are cut into ``folds`` consecutive folds (``KFold(shuffle=False)``).
    Per fold, on the other folds: the FAR of every threshold ``t`` of the grid ``0, step, ..., 4``
    of the squared distance of unit embeddings ``d = 2 - 2 cos`` (``d < t`` accepts); when the
    largest FAR reaches ``far``, the threshold is interpolated linearly between the last grid
    point whose FAR is below ``far`` and the first that reaches it — what scipy's
    ``interp1d(far_train, thresholds, kind="linear")`` gives; the official ``kind="slinear"``
    raises on the flat FAR plateaus every finite set of pairs has ("Expect x to not have
    duplicates", insightface issue #2438) —, else 0 (nothing accepted). VAL = the accepted
    share of the held fold's genuine pairs at that threshold.

    Args:
        scores: (N,) cosine similarities of unit embeddings, in [-1, 1].
        is_same: (N,) bool labels.
        far: the target false-accept rate.
        folds: number of folds (official: 10); each fold needs a genuine pair.
        step: the threshold grid's step (official: 0.001).

    Returns:
        (mean VAL, population std of the folds' VAL), in [0, 1].
    """
    scores, labels = _verification_inputs(scores, is_same, far)
    if folds < 2 or folds > scores.numel():
        raise ValueError(f"kfold verification needs 2 <= folds <= pairs ({scores.numel()}), got {folds}")
    dist = (2.0 - 2.0 * scores).numpy()
    same = labels.numpy()
    grid = np.arange(0.0, 4.0, step)
    n = dist.shape[0]
    sizes = np.full(folds, n // folds) + (np.arange(folds) < n % folds)
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    vals = []
    for k in range(folds):
        test = np.zeros(n, dtype=bool)
        test[bounds[k]:bounds[k + 1]] = True
        train_neg = np.sort(dist[~test & ~same])
        if not same[test].any():
            raise ValueError(f"kfold verification: fold {k} has no genuine pair")
        if train_neg.size == 0:
            raise ValueError(f"kfold verification: the folds but {k} have no impostor pair")
        far_train = np.searchsorted(train_neg, grid, side="left") / train_neg.size  # d < t
        if far_train.max() >= far:
            hi = int(np.clip(np.searchsorted(far_train, far, side="left"), 1, grid.size - 1))
            lo = hi - 1
            x_lo, x_hi = far_train[lo], far_train[hi]
            threshold = (grid[hi] if x_hi == x_lo else
                         grid[lo] + (grid[hi] - grid[lo]) * (far - x_lo) / (x_hi - x_lo))
        else:
            threshold = 0.0
        vals.append(float((dist[test & same] < threshold).mean()))
    return float(np.mean(vals)), float(np.std(vals))


def reid_metrics(query_features: Tensor, gallery_features: Tensor, query_ids: Tensor,
                 gallery_ids: Tensor, query_cams: Tensor, gallery_cams: Tensor,
                 ranks: tuple[int, ...] = (1, 5), chunk: int = 1024) -> dict[str, float]:
    """Re-identification retrieval metrics, the Market-1501 benchmark protocol (as TransReID,
    torchreid and fast-reid compute it; SPEC §3.5).

    Features are L2-normalised and the gallery is ranked by Euclidean distance to each query
    (equal distances in gallery order). For each query, the gallery items of its identity seen by
    its camera are discarded, and so are junk items (identity < 0; distractors, identity 0, stay
    as negatives); a query with no true match left is skipped. CMC at rank k: the share of the
    remaining queries with a true match among their first k results; AP: the mean of the
    precision at each true match's rank; ``map``: the mean AP.

    Args:
        query_features, gallery_features: (Q, D) and (G, D) features, any scale.
        query_ids, gallery_ids: (Q,), (G,) int identities.
        query_cams, gallery_cams: (Q,), (G,) int camera ids.
        ranks: the CMC ranks reported (``rank1``, ``rank5``, ...).
        chunk: queries ranked at once (memory O(chunk x G)).

    Returns:
        ``{"rank<k>": float, ..., "map": float, "queries": int}`` in [0, 1] (``queries``: how many
        had a true match).

    Raises:
        ValueError: mismatched lengths, no query with a true match.
    """
    qf = F.normalize(torch.as_tensor(query_features).detach().float().cpu(), dim=1)
    gf = F.normalize(torch.as_tensor(gallery_features).detach().float().cpu(), dim=1)
    q_ids, g_ids = (torch.as_tensor(v).detach().cpu().long() for v in (query_ids, gallery_ids))
    q_cams, g_cams = (torch.as_tensor(v).detach().cpu().long() for v in (query_cams, gallery_cams))
    if not (qf.shape[0] == q_ids.numel() == q_cams.numel() and gf.shape[0] == g_ids.numel() == g_cams.numel()):
        raise ValueError("reid_metrics: features, identities and cameras differ in length")
    if qf.shape[1] != gf.shape[1]:
        raise ValueError(f"reid_metrics: query and gallery features differ in size ({qf.shape[1]} vs {gf.shape[1]})")
    hits = {k: 0 for k in ranks}
    aps = []
    for start in range(0, qf.shape[0], chunk):
        # squared Euclidean distance of unit vectors: 2 - 2 cos (same order as the distance)
        dist = 2 - 2 * qf[start:start + chunk] @ gf.T
        order = torch.sort(dist, dim=1, stable=True).indices
        for row, q in enumerate(range(start, min(start + chunk, qf.shape[0]))):
            ranked = order[row]
            ids, cams = g_ids[ranked], g_cams[ranked]
            keep = ~(((ids == q_ids[q]) & (cams == q_cams[q])) | (ids < 0))
            match = (ids[keep] == q_ids[q]).to(torch.float64)
            if not match.any():
                continue
            first = int(torch.nonzero(match)[0])
            for k in ranks:
                hits[k] += first < k
            found = torch.cumsum(match, 0)
            precision = found / torch.arange(1, match.numel() + 1, dtype=torch.float64)
            aps.append(float((precision * match).sum() / match.sum()))
    if not aps:
        raise ValueError("reid_metrics: no query has a true match in the gallery (other camera)")
    out = {f"rank{k}": hits[k] / len(aps) for k in ranks}
    out["map"] = float(np.mean(aps))
    out["queries"] = len(aps)
    return out


def _sqrtm_psd(mat: Tensor) -> Tensor:
    """Square root of a symmetric positive semi-definite matrix via eigen-decomposition."""
    vals, vecs = torch.linalg.eigh(mat)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def fid_from_moments(mu_r: Tensor, cov_r: Tensor, mu_f: Tensor, cov_f: Tensor) -> float:
    """Fréchet distance between two Gaussians ``N(μ_r, Σ_r)`` and ``N(μ_f, Σ_f)``.

    ``‖μ_r − μ_f‖² + tr(Σ_r) + tr(Σ_f) − 2·tr((Σ_r Σ_f)^½)``, computed in float64.
    ``tr((Σ_r Σ_f)^½)`` is obtained without SciPy as the sum of the square roots of the
    eigenvalues of the symmetric PSD matrix ``Σ_r^½ Σ_f Σ_r^½`` (which has the same spectrum as
    ``Σ_r Σ_f``).

    Args:
        mu_r, mu_f: (D,) means.
        cov_r, cov_f: (D, D) symmetric PSD covariances.

    Returns:
        The distance, in [0, inf); lower is better.
    """
    dev = mu_r.device if mu_r.device.type != "mps" else torch.device("cpu")
    mu_r, mu_f, cov_r, cov_f = (
        t.detach().to(dev, torch.float64) for t in (mu_r, mu_f, cov_r, cov_f)
    )
    sq = _sqrtm_psd((cov_r + cov_r.T) / 2)
    middle = sq @ cov_f @ sq
    middle = (middle + middle.T) / 2
    tr_covmean = torch.linalg.eigvalsh(middle).clamp_min(0).sqrt().sum()
    val = (mu_r - mu_f).square().sum() + cov_r.trace() + cov_f.trace() - 2 * tr_covmean
    return max(float(val), 0.0)


def fid_from_features(real: Tensor, fake: Tensor) -> float:
    """Fréchet distance between Gaussian fits of two feature sets.

    Means and unbiased covariances (N − 1) of both sets, then :func:`fid_from_moments`
    (float64).

    Args:
        real: (N, D) features of the real images, N ≥ 2.
        fake: (M, D) features of the reconstructions, M ≥ 2.

    Returns:
        The distance, in [0, inf); lower is better.
    """
    if real.dim() != 2 or fake.dim() != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"expected (N, D) and (M, D) features, got {tuple(real.shape)} and {tuple(fake.shape)}"
        )
    if real.shape[0] < 2 or fake.shape[0] < 2:
        raise ValueError(
            f"FID needs at least 2 real and 2 fake samples, got {real.shape[0]} and {fake.shape[0]}"
        )
    dev = real.device if real.device.type != "mps" else torch.device("cpu")
    r = real.detach().to(dev, torch.float64)
    f = fake.detach().to(dev, torch.float64)
    cov_r = torch.cov(r.T).reshape(r.shape[1], r.shape[1])
    cov_f = torch.cov(f.T).reshape(f.shape[1], f.shape[1])
    return fid_from_moments(r.mean(0), cov_r, f.mean(0), cov_f)


def kid_from_features(
    real: Tensor,
    fake: Tensor,
    subset_size: int = 1000,
    subsets: int = 100,
    seed: int = 0,
) -> tuple[float, float, int]:
    """Kernel Inception Distance (Binkowski et al. 2018) with torchmetrics'
    ``KernelInceptionDistance``, made deterministic and safe for small sets.

    KID is the unbiased MMD² between the two feature sets with the cubic polynomial kernel
    ``k(a, b) = (a·b / D + 1)³``, averaged over ``subsets`` random subsets of
    ``min(subset_size, N, M)`` features of each set (torchmetrics draws, per subset,
    ``torch.randperm(N)`` for the real and then ``torch.randperm(M)`` for the fake set; they come
    from a generator seeded with ``seed``, so every process and every run gets the same subsets).
    When that size takes both whole sets (N = M ≤ ``subset_size``) one subset is computed: the
    estimate on the whole set, with standard deviation 0. Computed in float64.

    Args:
        real: (N, D) features of the real images, N ≥ 2.
        fake: (M, D) features of the reconstructions, M ≥ 2.
        subset_size: largest subset size (clean-fid and torchmetrics default: 1000).
        subsets: number of subsets (default 100).
        seed: seed of the subset draws.

    Returns:
        (KID mean, population standard deviation over the subsets, subset size used).
    """
    from torchmetrics.image.kid import KernelInceptionDistance

    if real.dim() != 2 or fake.dim() != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"expected (N, D) and (M, D) features, got {tuple(real.shape)} and {tuple(fake.shape)}"
        )
    n, m = real.shape[0], fake.shape[0]
    if n < 2 or m < 2:
        raise ValueError(f"KID needs at least 2 real and 2 fake samples, got {n} and {m}")
    size = min(int(subset_size), n, m)
    whole = n == m == size
    with warnings.catch_warnings():  # "will save all extracted features" (we hand them over)
        warnings.simplefilter("ignore")
        kid = KernelInceptionDistance(
            feature=_Passthrough(),
            subsets=1 if whole else int(subsets),
            subset_size=size,
            sync_on_compute=False,  # the caller hands over all processes' features already
        )
    dev = real.device if real.device.type != "mps" else torch.device("cpu")
    kid.update(real.detach().to(dev, torch.float64), real=True)
    kid.update(fake.detach().to(dev, torch.float64), real=False)
    with torch.random.fork_rng(devices=[]):  # randperm draws on the CPU generator
        torch.manual_seed(int(seed))
        mean, std = kid.compute()
    return float(mean), float(std), size


class _Passthrough(torch.nn.Module):
    """Feature "extractor" of a torchmetrics image metric fed with features computed elsewhere."""

    def forward(self, features: Tensor) -> Tensor:
        return features


from reconattack.metrics.matching import corner_error, matching_accuracy  # noqa: E402, F401  (the matching utility's public names)
