"""Identity leakage: would a face recogniser the attack did not use take the reconstruction for
the person in the original?

Face-template inversion papers judge a reconstruction by a recogniser other than the one the
attack trained with. For every row with images (the attack, each control, each stored row) the
reconstructions and their originals are embedded by that recogniser (``metrics.identity.model``:
a ``conf/face/*`` config, the crop it expects in ``metrics.identity.crop``) and compared:

- **type-I verification**: genuine pairs (a reconstruction, its own original) against impostor
  pairs (a reconstruction, another test image's original); TPR at each FAR of ``fars`` from the
  exact ROC, only where the impostor pairs can measure it (else missing, never extrapolated);
  ``id/min_far`` the smallest FAR they measure; the ROC in the run directory
  (``roc_<row>__id.csv``). With more than ``max_impostors`` other originals, each reconstruction
  is paired with a seeded sample of that many (the same for every row of a run).
- ``id/cos``: the mean cosine of each reconstruction and its original;
- ``id/rank1``: rank-1 identification of the original among the N originals by the recogniser's
  embedding (ties shared, chance ``id/chance`` = 1 / N; :func:`~reconattack.metrics.retrieval.retrieval_rank1`).

Type-II verification (a reconstruction against *another* photo of the same person) needs the
data to name identities; the SIFT data sets here do not (the AVIH rows' TPR@FAR is type-II: its
pairs are the verification set's).

Memory: one float16 embedding per image and side (512 numbers for the IR models, 1 KB); the
impostor scores, N x min(N - 1, max_impostors), at compute time only.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor

from reconattack.metrics import functional as MF
from reconattack.metrics.retrieval import EmbeddingPairs, retrieval_rank1
from reconattack.metrics.states import MISSING_PREFIX

PREFIX = "id/"


def crop_faces(images: Tensor, crop: Iterable[float] | None) -> Tensor:
    """The face region a recogniser expects: ``crop`` = (top, left, bottom, right) as fractions of
    the image's height and width (None: the whole image). (B, C, H, W) → (B, C, h, w)."""
    if crop is None:
        return images
    top, left, bottom, right = (float(c) for c in crop)
    h, w = images.shape[-2:]
    y0, y1 = round(top * h), round(bottom * h)
    x0, x1 = round(left * w), round(right * w)
    if not (0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w):
        raise ValueError(f"identity crop {list(crop)} is empty or outside a {h}x{w} image")
    return images[..., y0:y1, x0:x1]


def impostor_pairs(own: np.ndarray, n: int, per_query: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(query index, original index) of the impostor pairs: query ``a`` (its own original
    ``own[a]``, one of ``n``) with every other original when ``n - 1 <= per_query``, else with
    ``per_query`` of them drawn without replacement (numpy ``default_rng(seed)``: the same pairs
    for every row of a run)."""
    own = np.asarray(own, dtype=np.int64)
    if n < 2 or not own.size:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    if n - 1 <= per_query:
        qi = np.repeat(np.arange(own.size), n)
        gi = np.tile(np.arange(n), own.size)
        keep = gi != own[qi]
        return qi[keep], gi[keep]
    rng = np.random.default_rng(seed)
    draws = np.stack([rng.choice(n - 1, size=per_query, replace=False) for _ in range(own.size)])
    gi = draws + (draws >= own[:, None])  # skip the query's own original
    return np.repeat(np.arange(own.size), per_query), gi.reshape(-1)


def load_recogniser(model) -> torch.nn.Module:
    """The face recogniser of a ``conf/face/*`` config (``net``, ``channel_order``, ``format``,
    ``checkpoint``): (B, 3, H, W) RGB in [-1, 1] → (B, E) unit embeddings, frozen. Raises
    :class:`~reconattack.utils.weights.MissingWeightsError` when its checkpoint is not there (the
    identity rows are then missing with that reason, never computed with random weights)."""
    from pathlib import Path

    from omegaconf import OmegaConf

    from reconattack.models.face import face_model_from_config
    from reconattack.utils.weights import MissingWeightsError

    model = OmegaConf.create(model) if isinstance(model, dict) else model
    name = str(model.get("description") or model.net.get("_target_"))
    checkpoint = model.get("checkpoint")
    if not checkpoint or not Path(str(checkpoint)).is_file():
        raise MissingWeightsError(f"face recogniser {name}: checkpoint {checkpoint} not found; download it (README: "
                                  "face models) and give its path as metrics.identity.model.checkpoint")
    return face_model_from_config(model, checkpoint=str(checkpoint))


class IdentityLeakage(EmbeddingPairs):
    """Type-I verification, cosine and rank-1 identification of one row's reconstructions by a
    face recogniser (see the module docstring); ``update`` takes (B, E) recogniser embeddings of
    the reconstructions and of their originals (:class:`~reconattack.metrics.retrieval.EmbeddingPairs`).

    Args:
        fars: the FARs of ``id/tpr@far=<far>``.
        max_impostors: impostor originals per reconstruction at most.
        seed: of the impostor sample.
    """

    def __init__(self, fars: Iterable[float] = (0.1, 0.01, 0.001), max_impostors: int = 999, seed: int = 0) -> None:
        super().__init__()
        self.fars = tuple(float(f) for f in fars)
        self.max_impostors, self.seed = int(max_impostors), int(seed)
        if self.max_impostors < 1:
            raise ValueError(f"identity.max_impostors must be >= 1, got {max_impostors}")
        self.curve: dict | None = None

    def compute(self) -> dict[str, float | int | str]:
        """The ``id/...`` results over every process's images (collective under DDP); sets
        :attr:`curve` to the type-I ROC (or None)."""
        self.curve = None
        pairs = self.gathered()
        if pairs is None:
            return {}
        q, distinct, own = pairs
        q, distinct = torch.nn.functional.normalize(q, dim=1), torch.nn.functional.normalize(distinct, dim=1)
        n = int(distinct.shape[0])
        out: dict[str, float | int | str] = {f"{PREFIX}cos": float((q * distinct[own]).sum(1).mean())}
        if n < 2:
            return out | {f"{PREFIX}rank1": f"{MISSING_PREFIX}identification needs at least 2 distinct originals, got {n}"}
        out |= {f"{PREFIX}rank1": float(retrieval_rank1(q, distinct, own).mean()), f"{PREFIX}chance": 1.0 / n}
        q, distinct, own = q.cpu(), distinct.cpu(), own.cpu()
        genuine = (q * distinct[own]).sum(1)
        qi, gi = impostor_pairs(own.numpy(), n, self.max_impostors, self.seed)
        impostor = (q[torch.as_tensor(qi)] * distinct[torch.as_tensor(gi)]).sum(1)
        scores = torch.cat([genuine, impostor])
        labels = torch.cat([torch.ones_like(genuine, dtype=torch.bool), torch.zeros_like(impostor, dtype=torch.bool)])
        self.curve = MF.roc_curve(scores, labels)
        impostors = int(impostor.numel())
        for far in self.fars:
            key = f"{PREFIX}tpr@far={far:g}"
            why = MF.unmeasurable_far(far, impostors, f"{n} originals give")
            out[key] = MISSING_PREFIX + why if why else MF.tpr_at_far(scores, labels, far)
        return out | {f"{PREFIX}min_far": 1 / max(impostors, 1), f"{PREFIX}pairs/genuine": int(genuine.numel()),
                      f"{PREFIX}pairs/impostor": impostors}

    def reset(self) -> None:
        super().reset()
        self.curve = None


__all__ = ["IdentityLeakage", "crop_faces", "impostor_pairs"]
