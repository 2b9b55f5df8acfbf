"""Flags for a run whose numbers are not the method's result: a trained attack that collapsed.

GAN and reconstruction training can fail without a NaN: the generator settles on one image for
every input, or saturates, and the discriminator wins. The run still ends with numbers, and they
read like a (bad) result of the method. The checks here say when they are not. A flagged row
keeps its numbers (they are what the run produced); ``metrics.json`` gets a ``warnings`` list
(:func:`warning`), the console summary a line per warning, the report a mark beside the row,
W&B the list in the run's summary. The thresholds are ``conf/diagnostics/default.yaml``
(:class:`DiagnosticsConfig`), where each value says why it is what it is.

**Output checks** (:class:`OutputChecks`, in the evaluation pass, memory flat in the number of
test images: per-pixel sums, :class:`RowStatistics`), on the attack's row, ``x_i`` its output for
test image ``i`` and ``t_i`` the image, ``n`` images of ``P`` values (3 x H x W) each:

- ``output_spread`` — ``sqrt(V(x) / V(t))`` with ``V(y) = 1/P sum_p 1/(n-1) sum_i (y_ip -
  mean_i y_ip)^2``, the across-image variance per pixel averaged over the pixels: how much the
  reconstructions of different images differ, relative to how much the images do. 0: one image
  for every input. Flagged below ``outputs.spread``.
- ``shuffled_input`` — the attack's output for image ``i`` against its output for another
  image's input (the threat's control that runs the trained attack on another image's leak,
  ``outputs.shuffled_control``; the SIFT threat's ``baseline/shuffled_sift``: image ``i`` gets
  image ``i - 1``'s map), ``s_i``: ``sqrt(1/(nP) sum_i sum_p (x_ip - s_ip)^2 / (2 V(t)))``. The
  denominator is the mean squared distance of two different test images
  (``1/(n(n-1)) sum_{i != j} |t_i - t_j|^2 / P = 2 V(t)``), so the value is the RMS change of the
  output when the input changes, relative to the RMS difference of two images. Flagged below
  ``outputs.shuffled``.
- ``saturation`` — the share of output values with ``|x| > level`` (in [-1, 1]), against the
  targets' share of such values (dark and bright regions are saturated in real images too):
  flagged above the targets' share plus ``outputs.saturation.excess``.

**Training-loss checks** (:func:`loss_warnings`, from each stage's per-iteration loss terms,
recorded by :class:`reconattack.engine.diagnostics.LossHistory` from
:attr:`reconattack.attacks.base.GANStage.step_losses`), for a stage of at least
``losses.min_iterations`` iterations, ``N`` of them:

- ``discriminator_loss`` — a discriminator term (``losses.discriminator.terms``) below
  ``losses.discriminator.below`` on at least the share ``losses.discriminator.share`` of the last
  ``ceil(last * N)`` iterations: the discriminator wins, the generator's adversarial gradient is
  gone.
- ``reconstruction_loss`` — a reconstruction term (``losses.reconstruction.terms``) whose mean
  over the last ``ceil(last * N)`` iterations is at least ``losses.reconstruction.ratio`` times
  its mean over the first ``ceil(first * N)``: training made the reconstruction worse.

(Non-finite losses stop a run before any update: :meth:`~reconattack.attacks.base.GANStage.check_finite`.)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor
from torchmetrics import Metric

from reconattack.errors import ConfigError

#: the checks, in the order their warnings are listed
CHECKS = ("discriminator_loss", "reconstruction_loss", "output_spread", "shuffled_input", "saturation")
#: the key of the list in ``metrics.json`` (and in the W&B run summary)
WARNINGS_KEY = "warnings"
#: the mark of a flagged row in the report's tables and in the console summary
MARK = "⚠"
#: what a flag means, said once under the lines that list them
MEANING = ("the numbers stay (they are what the run produced); do not read them as the method's result")


# ------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class DiagnosticsConfig:
    """The ``diagnostics`` config (``conf/diagnostics/default.yaml``), flattened.

    ``enabled`` false: no check, and no ``warnings`` key in ``metrics.json``.
    """

    enabled: bool = True
    spread: float = 0.1
    shuffled: float = 0.1
    shuffled_control: str | None = "shuffled_input"
    saturation_level: float = 0.98
    saturation_excess: float = 0.25
    min_iterations: int = 50
    first: float = 0.1
    last: float = 0.2
    discriminator_terms: tuple[str, ...] = ("loss_d",)
    discriminator_below: float = 0.05
    discriminator_share: float = 0.5
    reconstruction_terms: tuple[str, ...] = ("loss_g/pix", "loss_g/l1", "loss_g/recon", "loss_g/prior",
                                             "loss_g/identity")
    reconstruction_ratio: float = 1.25

    #: YAML path -> field
    PATHS = {("enabled",): "enabled", ("outputs", "spread"): "spread", ("outputs", "shuffled"): "shuffled",
             ("outputs", "shuffled_control"): "shuffled_control",
             ("outputs", "saturation", "level"): "saturation_level",
             ("outputs", "saturation", "excess"): "saturation_excess",
             ("losses", "min_iterations"): "min_iterations", ("losses", "first"): "first",
             ("losses", "last"): "last", ("losses", "discriminator", "terms"): "discriminator_terms",
             ("losses", "discriminator", "below"): "discriminator_below",
             ("losses", "discriminator", "share"): "discriminator_share",
             ("losses", "reconstruction", "terms"): "reconstruction_terms",
             ("losses", "reconstruction", "ratio"): "reconstruction_ratio"}

    @classmethod
    def of(cls, node: Any) -> DiagnosticsConfig:
        """From the ``diagnostics`` config node (None: the defaults); an unknown key or a value out
        of its range is a :class:`~reconattack.errors.ConfigError` naming it."""
        from omegaconf import OmegaConf

        if node is None:
            return cls()
        plain = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
        values: dict[str, Any] = {}

        def walk(d: Any, path: tuple[str, ...]) -> None:
            if path in cls.PATHS:
                values[cls.PATHS[path]] = d
                return
            if not isinstance(d, Mapping):
                raise ConfigError(f"diagnostics.{'.'.join(path)} is not a setting of diagnostics "
                                  f"(conf/diagnostics/default.yaml lists them)")
            for k, v in d.items():
                walk(v, (*path, str(k)))

        walk(plain, ())
        for name in ("discriminator_terms", "reconstruction_terms"):
            if name in values:
                v = values[name]
                values[name] = tuple(str(t) for t in ([] if v is None else [v] if isinstance(v, str) else v))
        out = cls(**values)
        out.check()
        return out

    def check(self) -> None:
        def bad(name: str, why: str) -> ConfigError:
            path = next(".".join(p) for p, f in self.PATHS.items() if f == name)
            return ConfigError(f"diagnostics.{path} {why}, got {getattr(self, name)!r}")

        for f in fields(self):
            v = getattr(self, f.name)
            if f.type in ("float", "int") and (isinstance(v, bool) or not isinstance(v, (int, float))
                                               or not math.isfinite(v) or v < 0):
                raise bad(f.name, "must be a number >= 0")
        if not isinstance(self.enabled, bool):
            raise bad("enabled", "must be true or false")
        for name in ("first", "last", "discriminator_share", "saturation_level"):
            if not 0 < getattr(self, name) <= 1:
                raise bad(name, "must be in (0, 1]")
        if self.first + self.last > 1:
            raise bad("last", "and losses.first must not overlap (first + last <= 1)")


# ------------------------------------------------------------------------------ warnings
def _number(x: float) -> float:
    """A statistic as ``metrics.json`` keeps it: 4 significant digits (a flag's value, not a
    metric)."""
    return float(f"{x:.4g}") if math.isfinite(x) else x


def warning(row: str, check: str, value: float, threshold: float, message: str, **more: Any) -> dict:
    """One entry of ``metrics.json``'s ``warnings``: ``row`` (the metrics prefix it flags),
    ``check`` (:data:`CHECKS`), ``value`` and ``threshold`` of the statistic, ``message`` (one line
    naming both); loss checks add ``stage`` and ``term``."""
    return {"row": row, "check": check, "value": _number(float(value)), "threshold": _number(float(threshold)),
            **more, "message": message}


def format_warning(w: Mapping[str, Any]) -> str:
    """The console line of a warning: ``⚠ <row>: <message>``."""
    return f"{MARK} {w.get('row', '?')}: {w.get('message', w.get('check', ''))}"


def warning_lines(metrics: Mapping[str, Any]) -> list[str]:
    """The console summary's lines of a run's warnings: one per warning (:func:`format_warning`)
    and one saying what a flag means; none when nothing was flagged."""
    found = warnings_of(metrics)
    if not found:
        return []
    return [format_warning(w) for w in found] + [
        f"{MARK} {len(found)} warning(s) ({WARNINGS_KEY} in metrics.json): {MEANING}"]


def warnings_of(metrics: Mapping[str, Any] | None, row: str | None = None) -> list[dict]:
    """The warnings of a run's metrics (``metrics.json``), those of ``row`` when given; entries
    that are not warnings (older or edited files) are skipped."""
    items = (metrics or {}).get(WARNINGS_KEY)
    if not isinstance(items, list):
        return []
    out = [w if isinstance(w, Mapping) else {"row": None, "message": str(w)} for w in items]
    return [w for w in out if row is None or w.get("row") == row]


# ------------------------------------------------------------------------------ loss checks
def loss_windows(values: Sequence[float] | np.ndarray, cfg: DiagnosticsConfig) -> tuple[np.ndarray, np.ndarray]:
    """The recorded (finite) values of a stage's first ``ceil(first * N)`` and last
    ``ceil(last * N)`` iterations, ``N = len(values)``."""
    v = np.asarray(values, dtype=np.float64)
    n = len(v)
    start, end = v[:math.ceil(cfg.first * n)], v[n - math.ceil(cfg.last * n):]
    return start[np.isfinite(start)], end[np.isfinite(end)]


def loss_warnings(stage: str, history: Mapping[str, Sequence[float] | np.ndarray], cfg: DiagnosticsConfig,
                  row: str) -> list[dict]:
    """The training-loss checks of one stage (module docstring). ``history``: ``{term: values}``,
    one value per iteration (NaN where none was recorded), the terms named as the stage logs
    them after its prefix (``loss_d``, ``loss_g/l1``); ``row``: the metrics row the stage's result
    reaches (the attack's)."""
    out: list[dict] = []
    for term, values in history.items():
        n = len(values)
        if n < max(cfg.min_iterations, 1):
            continue
        start, end = loss_windows(values, cfg)
        first, last = math.ceil(cfg.first * n), math.ceil(cfg.last * n)
        found = []  # (check, value, threshold, what was seen)
        if term in cfg.discriminator_terms and len(end):
            share = float((end < cfg.discriminator_below).mean())
            if share >= cfg.discriminator_share:
                found.append(("discriminator_loss", share, cfg.discriminator_share,
                              f"the discriminator's {term} was below {cfg.discriminator_below:g} on {share:.0%} "
                              f"of the last {last} iterations (threshold {cfg.discriminator_share:.0%}; mean "
                              f"{end.mean():.3g}): the discriminator wins and the generator learns nothing from it"))
        if term in cfg.reconstruction_terms and len(end) and len(start) and start.mean() > 0:
            ratio = float(end.mean() / start.mean())
            if ratio >= cfg.reconstruction_ratio:
                found.append(("reconstruction_loss", ratio, cfg.reconstruction_ratio,
                              f"the reconstruction term {term} ended at {end.mean():.3g} (mean of the last {last} "
                              f"iterations), {ratio:.2f}x its start ({start.mean():.3g}, the first {first}; "
                              f"threshold {cfg.reconstruction_ratio:g}x): training made the reconstruction worse"))
        out += [warning(row, check, value, threshold, f"stage {stage}: {seen}", stage=stage, term=term)
                for check, value, threshold, seen in found]
    return out


# ------------------------------------------------------------------------------ output checks
class RowStatistics(Metric):
    """Running sums of one row's outputs and targets over the evaluation (DDP: summed over
    processes), for :func:`output_values`: image count, per-pixel sums and the total sum of
    squares of both, saturated values of both, and the squared distance to a paired row (the
    attack on another image's input). Float64 sums on the images' device (on the CPU for Apple's
    MPS, which has no float64); a (3, H, W) tensor per series, whatever the number of images."""

    full_state_update = False

    def __init__(self, level: float = 0.98) -> None:
        super().__init__()
        self.level = float(level)
        for name in ("n", "pred_sq", "target_sq", "pred_sat", "target_sat", "values", "pair_sq", "pair_n",
                     "pred_sum", "target_sum"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor, paired: Tensor | None = None) -> None:
        device = torch.device("cpu") if pred.device.type == "mps" else pred.device
        if self.n.device != device:
            self.to(device)
        x, t = pred.detach().to(device, torch.float64), target.detach().to(device, torch.float64)
        self.n += x.shape[0]
        self.pred_sum = self.pred_sum + x.sum(0)
        self.target_sum = self.target_sum + t.sum(0)
        self.pred_sq += x.square().sum()
        self.target_sq += t.square().sum()
        self.pred_sat += (x.abs() > self.level).sum()
        self.target_sat += (t.abs() > self.level).sum()
        self.values += x.numel()
        if paired is not None:
            self.pair_sq += (x - paired.detach().to(device, torch.float64)).square().sum()
            self.pair_n += x.shape[0]

    def compute(self) -> dict[str, float]:
        return output_values(self.n, self.pred_sum, self.pred_sq, self.target_sum, self.target_sq,
                             self.pred_sat, self.target_sat, self.values, self.pair_sq, self.pair_n)


def _variance(total: Tensor, sq: Tensor, n: float, size: int) -> float:
    """Mean over the ``size`` values of an image of the across-image sample variance (n - 1),
    from the per-value sums ``total`` and the sum of squares ``sq``."""
    return max(float((sq - total.square().sum() / n) / ((n - 1) * size)), 0.0)


def output_values(n, pred_sum, pred_sq, target_sum, target_sq, pred_sat, target_sat, values, pair_sq,
                  pair_n) -> dict[str, float]:
    """The statistics of the output checks from :class:`RowStatistics`' sums (module docstring):
    ``output_spread``, ``shuffled_input`` (NaN without a paired row or fewer than 2 images, or
    targets that do not vary), ``saturation``, ``target_saturation``, ``images``."""
    n, values = float(n), float(values)
    out = {"images": n, "output_spread": math.nan, "shuffled_input": math.nan,
           "saturation": float(pred_sat) / values if values else math.nan,
           "target_saturation": float(target_sat) / values if values else math.nan}
    size = int(torch.as_tensor(pred_sum).numel())
    if n < 2 or size <= 1:
        return out
    v_target = _variance(target_sum, target_sq, n, size)
    if v_target <= 0:
        return out
    out["output_spread"] = math.sqrt(_variance(pred_sum, pred_sq, n, size) / v_target)
    if float(pair_n) > 0:
        out["shuffled_input"] = math.sqrt(float(pair_sq) / (float(pair_n) * size) / (2 * v_target))
    return out


def output_warnings(row: str, stats: Mapping[str, float], cfg: DiagnosticsConfig,
                    paired_row: str | None = None) -> list[dict]:
    """The output checks' warnings of ``row`` from :func:`output_values` (NaN: not checked)."""
    spread, shuffled = stats.get("output_spread", math.nan), stats.get("shuffled_input", math.nan)
    sat, target_sat = stats.get("saturation", math.nan), stats.get("target_saturation", math.nan)
    below = [  # (check, value, threshold: flagged below it, what was seen)
        ("output_spread", spread, cfg.spread,
         f"the reconstructions hardly depend on the input: their spread across the {stats.get('images', 0):.0f} "
         f"test images is {spread:.3g} of the images' own (RMS, threshold {cfg.spread:g}); nearly one image "
         f"for every input"),
        ("shuffled_input", shuffled, cfg.shuffled,
         f"the output hardly changes when the attack is given another image's input"
         f"{f' ({paired_row})' if paired_row else ''}: the RMS change is {shuffled:.3g} of the RMS difference "
         f"of two test images (threshold {cfg.shuffled:g})")]
    out = [warning(row, check, value, threshold, seen) for check, value, threshold, seen in below
           if math.isfinite(value) and value < threshold]
    limit = target_sat + cfg.saturation_excess
    if math.isfinite(sat) and math.isfinite(limit) and sat > limit:
        out.append(warning(
            row, "saturation", sat, limit,
            f"the outputs saturate: {sat:.1%} of their values are beyond ±{cfg.saturation_level:g}, the "
            f"images' {target_sat:.1%} (threshold {limit:.1%}: theirs + {cfg.saturation_excess:g})"))
    return out


class OutputChecks(pl.Callback):
    """The output checks in the evaluation pass: reads the ``groups`` of each test step's output
    (:class:`~reconattack.metrics.callback.ReconstructionMetrics`' contract), ``{row}/``'s
    ``pred`` and ``target``, and ``{paired_row}/``'s ``pred`` (the attack on another image's
    input) when there is one. :attr:`stats` after the pass (:func:`output_values`; every process
    computes them together under DDP), :meth:`warnings`.

    Args:
        row: the checked row (the attack's metrics prefix).
        paired_row: the row of the attack given another image's input, or None.
        cfg: the thresholds.
    """

    def __init__(self, row: str, paired_row: str | None, cfg: DiagnosticsConfig) -> None:
        self.row, self.paired_row, self.cfg = str(row), paired_row, cfg
        self.statistics = RowStatistics(cfg.saturation_level)
        self.stats: dict[str, float] = {}

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self.statistics.reset()
        self.stats = {}

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        groups = outputs.get("groups") if isinstance(outputs, Mapping) else None
        group = (groups or {}).get(f"{self.row}/") or {}
        if group.get("pred") is None or group.get("target") is None:
            return
        paired = (groups.get(f"{self.paired_row}/") or {}).get("pred") if self.paired_row else None
        self.statistics.update(group["pred"], group["target"], paired)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        if not self.statistics.update_count:
            return  # the row was in no batch (every process sees the same rows)
        self.stats = self.statistics.compute()  # collective under DDP
        self.statistics.reset()

    def warnings(self) -> list[dict]:
        return output_warnings(self.row, self.stats, self.cfg, self.paired_row) if self.stats else []
