"""The AVIH threat on person and vehicle re-identification (the AVIH attack paper's Appendix A,
Tables V-VI; SPEC §3.5): the same threat as faces (:mod:`reconattack.threats.avih`) with a
re-identification gallery, TransReID service and evaluation models that take each image's camera
(and view) besides the image, and retrieval instead of verification pairs.

What differs from faces, all here:

- **Data** (:mod:`reconattack.data.reid`): ``data.source`` yields a
  :class:`~reconattack.data.reid.RetrievalParts` — the gallery images (drawn from the dataset's
  gallery split with ``data.selection_seed``; the first ``data.pool`` are the attacker's pool, the
  rest are held out, as for faces) with identities, cameras and views, and the query split. Images
  are (H, W) = ``data.image_size`` (Market 256x128, VeRi 256x256), resized whole, never cropped.
  Only queries that can match a held-out image (its identity, seen by another camera) are kept:
  the others are skipped by the protocol anyway.
- **Models** (``conf/reid/*``): :func:`~reconattack.models.reid.make_reid_model`; the encryption,
  the attack's identity loss and the evaluation give them each image's camera and view
  (``batch["side"]``).
- **Rows** (Tables V-VI): the original queries against the held-out gallery as each row shows it
  (Original, Protected, Key model, Random, Ours), ranked by the **evaluation** model's features:
  ``<row>/rank1``, ``<row>/rank5``, ``<row>/map`` (Market-1501 protocol,
  :func:`~reconattack.metrics.functional.reid_metrics`) beside the pixel metrics; and the
  threat's premise on the **service** model (``service/original/``, ``service/protected/``).
  The paper has no Random row; it is kept (unrelated images of the category: the floor).

The gallery's features are gathered over processes by the metrics (DDP); the query features are
computed once per model on each process, in batches (image memory O(batch)).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from reconattack.data.reid import QuerySet, RetrievalParts
from reconattack.errors import ConfigError
from reconattack.models.reid import make_reid_model
from reconattack.threats.base import ThreatEvaluation
from reconattack.utils.config import build, factory

from .evaluation import AVIHEvaluation
from .models import FaceModels
from .threat import AVIHThreat

log = logging.getLogger(__name__)


class ReidEvaluation(AVIHEvaluation):
    """The re-identification rows: the face threat's controls and saved images; per row, the gallery side of the
    retrieval (the evaluation model's features of that row's images, with the images' identities
    and cameras) against the original queries; the service model's retrieval with the original and
    the encrypted gallery (``service/original/``, ``service/protected/``).

    Args:
        evaluation, service: re-identification models, (B, 3, H, W) in [-1, 1] with ``cams`` /
            ``views`` (B,) → (B, D) unit features.
        queries: the query set (:class:`~reconattack.data.reid.QuerySet`).
        batch_size: queries embedded at once.
        saved_format, saved_quality: as :class:`~reconattack.threats.avih.AVIHEvaluation`.
    """

    def __init__(self, evaluation: nn.Module, service: nn.Module | None, queries: QuerySet,
                 batch_size: int = 64, saved_format: str | None = None, saved_quality: int = 95) -> None:
        super().__init__(evaluation, service, saved_format, saved_quality)
        self.queries, self.batch_size = queries, int(batch_size)
        self._query_features: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    @torch.no_grad()
    def query_features(self, role: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(features (Q, D), ids (Q,), cams (Q,))`` of the queries under ``role``'s model
        (``evaluation`` | ``service``), computed once, in batches."""
        if role not in self._query_features:
            model = self.evaluation if role == "evaluation" else self.service
            feats = []
            for batch in DataLoader(self.queries, batch_size=self.batch_size, shuffle=False):
                side = {k: v.to(device) for k, v in batch["side"].items()}
                feats.append(model(batch["image"].to(device), **side).float())
            self._query_features[role] = (torch.cat(feats), torch.as_tensor(self.queries.ids, device=device),
                                          torch.as_tensor(self.queries.cams, device=device))
        return self._query_features[role]

    def groups(self, batch: dict, rows: Mapping[str, torch.Tensor]) -> dict[str, dict]:
        rows = self.saved(rows)
        groups = ThreatEvaluation.groups(self, batch, rows)  # pixel metrics; retrieval, not pairs
        side = batch["side"]
        device = batch["target"].device
        gallery = {"ids": batch["label"], "cams": side["cams"], "index": batch["index"]}
        with torch.no_grad():
            queries = self.query_features("evaluation", device)
            for group in groups.values():
                group["retrieval"] = {"features": self.evaluation(group["pred"], **side), **gallery,
                                      "queries": queries}
            if self.service is not None and all(r in rows for r in self.SERVICE_ROWS):
                queries = self.query_features("service", device)
                for row in self.SERVICE_ROWS:
                    groups[f"service/{row}/"] = {"metrics": (), "retrieval": {
                        "features": self.service(rows[row], **side), **gallery, "queries": queries}}
        return groups


class ReidModels(FaceModels):
    """Re-identification models (``conf/reid/*``: ``net``, ``mean``, ``std``, ``format``,
    ``checkpoint`` or ``train``): (B, 3, H, W) in [-1, 1] with ``cams`` / ``views`` → (B, D) unit
    features (:func:`~reconattack.models.reid.make_reid_model`)."""

    kind = "reid_model"
    # demo models trained before JPM's shift followed the official shuffle_unit are not reused
    code = {"jpm_shift": "official"}

    def make(self, m: Any, checkpoint: str | None = None, seed: int | None = None,
             published: bool = True) -> nn.Module:
        fmt = build(m.format) if checkpoint and published and m.get("format") else None
        return make_reid_model(factory(m.net), checkpoint=checkpoint, format=fmt,
                               mean=tuple(m.get("mean", (0.5, 0.5, 0.5))), std=tuple(m.get("std", (0.5, 0.5, 0.5))),
                               seed=seed)

    @staticmethod
    def trained_weights(model: nn.Module) -> dict:
        return model.net.state_dict()  # the official checkpoint's layout (TransReIDFormat)


class ReidAVIHThreat(AVIHThreat):
    """An AVIH-encrypted re-identification gallery (see the module docstring). Takes the
    arguments of :class:`~reconattack.threats.avih.AVIHThreat`; ``service`` / ``evaluation`` are
    re-identification model configs (:class:`ReidModels`)."""

    models = ReidModels()

    def load_gallery(self) -> RetrievalParts:
        parts = self.source.load(self.image_size, self.gallery_size, self.selection_seed, pool=self.pool)
        if not isinstance(parts, RetrievalParts):
            raise ConfigError(f"data.source {type(self.source).__name__} is not a re-identification source "
                              "(reconattack.data.reid.ReidGallery, DigitPersons)")
        return parts

    def describe(self, parts: RetrievalParts) -> None:
        """Keeps the queries that can match a held-out image (the others are skipped by the
        protocol anyway), and logs the parts."""
        held = slice(self.pool, None)
        ids, cams = parts.gallery.labels[held], parts.gallery.side["cams"][held]
        seen = {}
        for pid, cam in zip(ids.tolist(), cams.tolist()):
            seen.setdefault(pid, set()).add(cam)
        q = parts.queries
        keep = np.flatnonzero([bool(seen.get(int(pid), set()) - {int(cam)}) for pid, cam in zip(q.ids, q.cams)])
        if not len(keep):
            raise ConfigError("no query can match a held-out gallery image (same identity, another camera): "
                              "raise data.gallery_size - data.pool")
        parts.queries = q.subset(keep)
        log.info("AVIH re-id data: gallery %d (%d attacker pool / %d held out, %d identities), %d of %d "
                 "queries can match a held-out image, auxiliary %d, victim %s", len(parts.gallery), self.pool,
                 len(parts.gallery) - self.pool, len(seen), len(keep), len(q), len(parts.auxiliary),
                 len(parts.victim) if parts.victim is not None else "none")

    def verification_pairs(self) -> tuple[Any, tuple[np.ndarray, ...]]:
        return None, ()  # retrieval: the queries are the evaluation's

    def scoring(self) -> ReidEvaluation:
        return ReidEvaluation(self.evaluation_model, self.service, self.parts.queries,
                              int(self.data_cfg.eval_batch_size), self.saved_format, self.saved_quality)


__all__ = ["ReidAVIHThreat", "ReidEvaluation", "ReidModels"]
