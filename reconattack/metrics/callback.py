"""``ReconstructionMetrics``: the metrics callback every attack uses.

Contract with LightningModules: ``validation_step`` / ``test_step`` return a dict with

- ``"pred"``: (B, 3, H, W) reconstructions in [-1, 1] (detached),
- ``"target"``: (B, 3, H, W) ground truth in [-1, 1] (detached),
- optionally ``"scores"`` (N,) similarity scores and ``"is_same"`` (N,) bool labels of
  verification pairs, for TPR@FAR;
- optionally ``"retrieval"``: ``{"features", "ids", "cams", "index", "queries"}``, the gallery
  side of a re-identification retrieval (:meth:`MetricSuite.update_retrieval`: ``rank1``,
  ``rank5``, ``map``);
- optionally ``"groups"``: ``{prefix: {"pred", "target", "scores", "is_same"}}`` — several
  named evaluations in one pass (e.g. the AVIH rows ``"ours/"``, ``"protected/"``,
  ``"key_model/"`` over the same held-out images). Each prefix gets its own suite and its
  results are keyed ``f"{prefix}{name}"`` (``"ours/psnr"``, ``"encrypt/key_psnr"``), without
  the stage name. A group may carry ``"metrics"``: the metric names its suite computes (a
  subset of the configured ones, e.g. pixel metrics only for an intermediate stage).

Steps returning ``None`` or a dict without these keys are ignored. Sanity-check batches are
skipped. Batches of several validation dataloaders are pooled.

At the end of each evaluation epoch every numeric result is logged as ``f"{stage}/{name}"``
(``sync_dist=False``: the values are already global) and the full result dict — numbers and
``"missing: <reason>"`` strings — is stored in ``self.results[stage]`` for the runner's
``metrics.json``. Under ``ddp_spawn`` the callback object of the launching process does not see
the workers' ``results``; only the logged numbers come back (``trainer.callback_metrics``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pytorch_lightning as pl

from reconattack.errors import ConfigError
from reconattack.metrics.suite import MetricSuite


class ReconstructionMetrics(pl.Callback):
    """One :class:`MetricSuite` per evaluation stage, fed from the step outputs.

    Args:
        stages: stages to evaluate, out of ``("val", "test")``.
        verification: how TPR@FAR is read off the verification scores: ``protocol``
            (``per_row`` | ``fixed`` | ``kfold``,
            :data:`~reconattack.metrics.functional.VERIFICATION_PROTOCOLS`), ``reference`` (the
            row whose pairs set the ``fixed`` threshold: group ``<family>/<reference>/`` for
            group ``<family>/<row>/``, e.g. ``service/original/`` for ``service/protected/``),
            ``folds`` (``kfold``). The results name the protocol (``verification/protocol``) and,
            for ``fixed``, the reference rows' thresholds (``<family>/verification/threshold``).
        log_prefix: prefix of the names logged to the Trainer's logger (``"coarse/"``: the
            coarse stage's validation curves are ``coarse/val/psnr``, apart from another stage's
            in the same run); :attr:`results` keep the plain names.
        **suite_kwargs: :class:`MetricSuite` arguments (``metrics``, ``ssim_window``,
            ``quantize``, ``weights``, ``download``, ``feature_nets``, ``far``, ``kid``,
            ``fid_cfgan``, ...), shared by all stages.

    Attributes:
        suites: ``{stage: MetricSuite}``.
        results: ``{stage: {f"{stage}/{name}": float | "missing: ..."}}`` of the last epoch.
        curves: ``{stage: {row: ROC}}`` of the last epoch (see the attribute).
    """

    STAGES = ("val", "test")

    def __init__(self, stages: Iterable[str] = STAGES, log_prefix: str = "",
                 verification: Mapping[str, Any] | None = None, **suite_kwargs: Any) -> None:
        super().__init__()
        self.stages = tuple(str(s) for s in stages)
        self.log_prefix = str(log_prefix)
        ver = {"protocol": "per_row", "reference": "original", "folds": 10, **dict(verification or {})}
        unknown = sorted(set(ver) - {"protocol", "reference", "folds"})
        if unknown:
            raise ConfigError(f"metrics.verification takes protocol, reference, folds; got {unknown}")
        self.protocol, self.reference = str(ver["protocol"]), str(ver["reference"])
        suite_kwargs.update(protocol=self.protocol, folds=int(ver["folds"]))
        bad = sorted(set(self.stages) - set(self.STAGES))
        if bad:
            raise ValueError(f"unknown stages {bad}; choose from {list(self.STAGES)}")
        self.suite_kwargs = dict(suite_kwargs)
        self.suites: dict[str, MetricSuite] = {s: MetricSuite(**suite_kwargs) for s in self.stages}
        # named groups: {stage: {prefix: MetricSuite}}, created at their first batch
        self.group_suites: dict[str, dict[str, MetricSuite]] = {s: {} for s in self.stages}
        self._nets: MetricSuite | None = None
        self.results: dict[str, dict[str, float | str]] = {}
        #: ``{stage: {row: {"far", "tpr", "threshold"}}}``: the exact ROC of every row with
        #: verification pairs in the last epoch (``row``: the group without its slash, or the
        #: stage for the ungrouped suite); the runner writes them as ``roc_<row>.csv``
        self.curves: dict[str, dict[str, dict]] = {}

    def flat_results(self) -> dict[str, float | str]:
        """All stages' last results in one flat dict (``{"val/psnr": ..., "test/psnr": ...}``)."""
        out: dict[str, float | str] = {}
        for stage in self.stages:
            out.update(self.results.get(stage, {}))
        return out

    # -------------------------------------------------------------------------------- shared
    def _start(self, stage: str) -> None:
        if stage in self.suites:
            self.suites[stage].reset()
            for suite in self.group_suites[stage].values():
                suite.reset()

    @staticmethod
    def _feed(suite: MetricSuite, outputs: Mapping) -> None:
        if outputs.get("pred") is not None and outputs.get("target") is not None:
            suite.update(outputs["pred"], outputs["target"])
        if outputs.get("scores") is not None and outputs.get("is_same") is not None:
            suite.update_verification(outputs["scores"], outputs["is_same"])
        if outputs.get("retrieval") is not None:
            suite.update_retrieval(**outputs["retrieval"])

    def _batch(self, stage: str, trainer: pl.Trainer, outputs: Any) -> None:
        if stage not in self.suites or trainer.sanity_checking or not isinstance(outputs, Mapping):
            return
        self._feed(self.suites[stage], outputs)
        for prefix, group in (outputs.get("groups") or {}).items():
            suites = self.group_suites[stage]
            if prefix not in suites:
                kwargs = dict(self.suite_kwargs)
                if group.get("metrics") is not None:
                    kwargs["metrics"] = [m for m in kwargs.get("metrics", group["metrics"])
                                         if m in group["metrics"]]
                suites[prefix] = MetricSuite(**kwargs)
                if self._nets is None:  # loads LPIPS / CLIP once for all groups
                    self._nets = MetricSuite(**self.suite_kwargs)
                suites[prefix].share_networks(self._nets)
            self._feed(suites[prefix], group)

    def _end(self, stage: str, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if stage not in self.suites:
            return
        suite = self.suites[stage]
        if trainer.sanity_checking:
            suite.reset()
            return
        values = suite.compute()  # collective under DDP: every process calls it
        results = {f"{stage}/{name}": value for name, value in values.items()}
        groups = self.group_suites[stage]
        thresholds: dict[str, dict] = {}  # family -> the fixed protocol's thresholds
        self.curves[stage] = {}
        for kind, roc in suite.rocs().items():
            self.curves[stage][f"{stage}/{kind}" if kind else stage] = roc
        for prefix, group in groups.items():  # same order on every process
            family = prefix.rstrip("/").rpartition("/")[0]
            family = f"{family}/" if family else ""
            if self.protocol == "fixed" and family not in thresholds:
                ref = groups.get(f"{family}{self.reference}/")
                thresholds[family] = ref.thresholds() if ref is not None else {}
                if thresholds[family].get(None) is not None:
                    results[f"{family}verification/threshold"] = thresholds[family][None]
            results.update({f"{prefix}{name}": value
                            for name, value in group.compute(thresholds.get(family)).items()})
            for kind, roc in group.rocs().items():
                row = prefix.rstrip("/")
                self.curves[stage][f"{row}/{kind}" if kind else row] = roc
            group.reset()
        if any(k.endswith("/tpr@far") or k == "tpr@far" for k in results):
            results["verification/protocol"] = self.protocol
        for key, value in results.items():
            if not isinstance(value, str):
                pl_module.log(self.log_prefix + key, float(value), sync_dist=False)
        self.results[stage] = results
        suite.reset()

    # --------------------------------------------------------------------------------- hooks
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start("val")

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._batch("val", trainer, outputs)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end("val", trainer, pl_module)

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start("test")

    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._batch("test", trainer, outputs)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end("test", trainer, pl_module)
