"""AVIH encryption loss terms (SPEC §3.2, paper eqs. 1-5), each PER IMAGE: (B,) tensors.

Images x (original), x' (encrypted) and G(x') (key-model recovery) are (B, C, H, W) RGB in
[0, 1], the official range for which the paper's weights (task 1, diff 0.03, rec 0.5,
vc 3.0) were tuned: the encryption (:mod:`reconattack.threats.avih.encryption`) optimises its
pixels in that range and converts at its boundary. Embeddings are (B, E) service-model outputs (any scale: they are
L2-normalised here). Every term of an image depends on that image only, so a batch of images
is encrypted as independent problems (the official VC loss mixes the batch; this one does not).

Eq. 1:  L = L_task + w_diff * L_diff + w_rec * L_rec + w_vc * L_vc   (:func:`avih_loss`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from reconattack.errors import ConfigError

TASK_DISTANCES = ("l2", "l2sq", "cos", "mse")
PIXEL_DISTANCES = ("l2", "l1", "mse", "mae")
WEIGHT_KEYS = ("task", "diff", "rec", "vc")


def _check(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {allowed}, got {value!r}")


def vc_loss(x: torch.Tensor, kernel: int = 4) -> torch.Tensor:
    """Variance-consistency loss (paper eq. 5), per image.

    x: (B, C, H, W) images in [0, 1]. For each channel c, the patch sums
    s_c(i, j) = sum_{u, v < kernel} x[c, i + u, j + v] over every kernel x kernel window
    (all-ones kernel, stride 1, no padding: N = (H - kernel + 1)(W - kernel + 1) positions);
    L_vc = sum_c Var_unbiased(s_c) = sum_c 1/(N - 1) sum_{i,j} (s_c(i, j) - mean(s_c))^2.
    Returns (B,); 0 for a constant image. Needs N >= 2.
    """
    if x.dim() != 4:
        raise ValueError(f"vc_loss expects (B, C, H, W), got shape {tuple(x.shape)}")
    b, c, h, w = x.shape
    if kernel < 1 or (h - kernel + 1) * (w - kernel + 1) < 2:
        raise ConfigError(f"vc_loss: kernel {kernel} leaves fewer than 2 patch positions in {h}x{w}")
    weight = x.new_ones(c, 1, kernel, kernel)
    sums = F.conv2d(x, weight, groups=c)  # (B, C, H - k + 1, W - k + 1)
    return sums.flatten(2).var(dim=2, unbiased=True).sum(dim=1)


def task_loss(emb: torch.Tensor, emb_ref: torch.Tensor, distance: str = "l2") -> torch.Tensor:
    """Task loss (paper eq. 2; also the DR attack's identity loss, eqs. 6-7), per image.

    emb, emb_ref: (B, E) embeddings (of the encrypted / original images for AVIH); both are
    L2-normalised to u, v. ``"l2"``: ||u - v||_2 in [0, 2] (the paper's norm, eq. 2);
    ``"mse"``: mean_e (u_e - v_e)^2 = (2 - 2 cos) / E (the official AVIH code's
    ``mean((f(x') - f(x))**2)`` on unit embeddings; E = 512 makes it about 1/250 of ``"l2sq"``, so
    with the paper's weights the task term all but vanishes); ``"l2sq"``: ||u - v||_2^2 =
    2 - 2 cos in [0, 4]; ``"cos"``: 1 - <u, v> in [0, 2]. Returns (B,).
    """
    _check("task distance", distance, TASK_DISTANCES)
    if emb.shape != emb_ref.shape or emb.dim() != 2:
        raise ValueError(f"task_loss expects two (B, E) embeddings of one shape, got "
                         f"{tuple(emb.shape)} and {tuple(emb_ref.shape)}")
    u, v = F.normalize(emb, dim=1), F.normalize(emb_ref, dim=1)
    if distance == "cos":
        return 1 - (u * v).sum(dim=1)
    sq = (u - v).pow(2).sum(dim=1)
    if distance == "l2sq":
        return sq
    if distance == "mse":
        return sq / u.shape[1]
    return torch.linalg.vector_norm(u - v, dim=1)


def _pixel_distance(a: torch.Tensor, b: torch.Tensor, distance: str) -> torch.Tensor:
    """Per-image distance of (B, C, H, W) tensors: ``"l2"`` the Euclidean norm over C, H, W (the
    paper's ||.||_2; it grows with the image size, as the weights assume), ``"l1"`` the sum of
    absolute values, ``"mse"`` / ``"mae"`` their per-pixel means. Returns (B,)."""
    d = (a - b).flatten(1)
    if distance == "l2":
        return torch.linalg.vector_norm(d, dim=1)
    if distance == "l1":
        return d.abs().sum(dim=1)
    return (d.pow(2) if distance == "mse" else d.abs()).mean(dim=1)


def diff_loss(x_enc: torch.Tensor, x: torch.Tensor, distance: str = "l2") -> torch.Tensor:
    """Difference loss (paper eq. 3), per image: the NEGATIVE distance of x' from x.

    x_enc, x: (B, C, H, W) in [0, 1]. ``"l2"``: -||x' - x||_2 (norm over C, H, W); ``"l1"``:
    -||x' - x||_1; ``"mse"`` / ``"mae"``: -mean (x' - x)^2 / -mean |x' - x|. Returns (B,) <= 0;
    minimising it pushes x' away from x.
    """
    _check("diff distance", distance, PIXEL_DISTANCES)
    return -_pixel_distance(x_enc, x, distance)


def rec_loss(recovered: torch.Tensor, x: torch.Tensor, distance: str = "l2") -> torch.Tensor:
    """Recovery loss (paper eq. 4), per image: distance of G(x') from x.

    recovered, x: (B, C, H, W) in [0, 1]. ``"l2"``: ||G(x') - x||_2 (norm over C, H, W);
    ``"l1"``: ||G(x') - x||_1; ``"mse"`` / ``"mae"``: the per-pixel means. Returns (B,) >= 0.
    """
    _check("rec distance", distance, PIXEL_DISTANCES)
    return _pixel_distance(recovered, x, distance)


def avih_loss(emb_enc: torch.Tensor | None, emb_orig: torch.Tensor | None, x_enc: torch.Tensor,
              x: torch.Tensor, recovered: torch.Tensor | None, weights: Mapping[str, float],
              vc_kernel: int = 4, task_distance: str = "l2", diff_distance: str = "l2",
              rec_distance: str = "l2") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """AVIH objective (paper eq. 1), per image.

    total = w.task * task_loss(emb_enc, emb_orig) + w.diff * diff_loss(x_enc, x)
            + w.rec * rec_loss(recovered, x) + w.vc * vc_loss(x_enc, vc_kernel)

    emb_enc, emb_orig: (B, E) service-model embeddings of x' and x; x_enc, x, recovered = G(x'):
    (B, C, H, W) in [0, 1]. ``weights``: mapping with exactly the keys task, diff, rec, vc
    (paper: 1, 0.03, 0.5, 3.0). A term whose weight is 0 is not computed (its inputs may then be
    None) and is reported as zeros. Returns (total (B,), {"task", "diff", "rec", "vc"} -> the
    unweighted terms, each (B,)).
    """
    missing = [k for k in WEIGHT_KEYS if k not in weights]
    unknown = [k for k in weights if k not in WEIGHT_KEYS]
    if missing or unknown:
        raise ValueError(f"avih_loss weights need exactly the keys {WEIGHT_KEYS}; "
                         f"missing {missing}, unknown {unknown}")
    zeros = x_enc.new_zeros(x_enc.shape[0])
    inputs = {"task": (emb_enc, emb_orig), "rec": (recovered,)}
    compute = {
        "task": lambda: task_loss(emb_enc, emb_orig, task_distance),
        "diff": lambda: diff_loss(x_enc, x, diff_distance),
        "rec": lambda: rec_loss(recovered, x, rec_distance),
        "vc": lambda: vc_loss(x_enc, vc_kernel),
    }
    terms: dict[str, torch.Tensor] = {}
    total = zeros
    for key in WEIGHT_KEYS:
        w = float(weights[key])
        if w == 0:
            terms[key] = zeros
            continue
        if any(t is None for t in inputs.get(key, ())):
            raise ValueError(f"avih_loss: the {key!r} term has weight {w} but an input is None")
        terms[key] = compute[key]()
        total = total + w * terms[key]
    return total, terms
