"""How the AVIH threat scores a reconstruction: the rows (paper Tables I–III) and the threat's
premise on the service model."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from reconattack.metrics.functional import as_saved
from reconattack.threats.base import Reconstruct, ThreatEvaluation


class AVIHEvaluation(ThreatEvaluation):
    """The AVIH rows: controls from the batch, TPR@FAR from the evaluation model's scores; and
    the threat's premise, checked on the *service* model: its TPR@FAR on the same pairs with the
    original gallery images (``service/original/``) and with the encrypted ones
    (``service/protected/``; AVIH keeps the service's accuracy: the paper's encrypted LFW gallery
    reaches 98.40 %, the original's figure).

    Args:
        evaluation, service: face models, (B, 3, H, W) in [-1, 1] -> (B, E) unit embeddings.
        saved_format, saved_quality: every row's images are written as this kind of image file
            and read back before anything is scored (:func:`~reconattack.metrics.functional.
            as_saved`; None: scored as computed).
    """

    #: the rows whose service-model scores are reported: the gallery as it was, and as stored
    SERVICE_ROWS = ("original", "protected")

    def __init__(self, evaluation: nn.Module, service: nn.Module | None = None,
                 saved_format: str | None = None, saved_quality: int = 95) -> None:
        super().__init__()
        self.evaluation = evaluation
        self.service = service
        self.saved_format, self.saved_quality = saved_format, int(saved_quality)

    def controls(self, batch: dict, reconstruct: Reconstruct | None) -> dict[str, torch.Tensor]:
        return {"original": batch["target"], "protected": batch["input"],
                "key_model": batch["key_recovered"], "random": batch["random"]}

    def saved(self, rows: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every row's images as written to image files and read back (``saved_as``)."""
        return {name: as_saved(images, self.saved_format, self.saved_quality) for name, images in rows.items()}

    def groups(self, batch: dict, rows: Mapping[str, torch.Tensor]) -> dict[str, dict]:
        rows = self.saved(rows)
        groups = super().groups(batch, rows)
        valid = batch["pair_valid"]
        if not valid.any():
            return groups
        q = batch["query"]

        def scores(model: nn.Module, gallery: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
            return (queries * model(gallery)[:, None, :]).sum(-1)[valid]  # cosine per valid pair

        query_emb = self.evaluation(q.flatten(0, 1)).unflatten(0, q.shape[:2])  # (B, P, E)
        for group in groups.values():
            group["scores"] = scores(self.evaluation, group["pred"], query_emb)
            group["is_same"] = batch["is_same"][valid]
        if self.service is not None and all(r in rows for r in self.SERVICE_ROWS):
            service_query = self.service(q.flatten(0, 1)).unflatten(0, q.shape[:2])
            for row in self.SERVICE_ROWS:
                groups[f"service/{row}/"] = {"metrics": (), "is_same": batch["is_same"][valid],
                                             "scores": scores(self.service, rows[row], service_query)}
        return groups


__all__ = ["AVIHEvaluation"]
