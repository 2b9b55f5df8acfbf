"""What a run shows on W&B and TensorBoard (SPEC §8): who the run is, its images, its summary.

- :func:`job_identity` — the Hydra job: experiment, sweep folder, the job's overrides (the swept
  parameters). The run's logger gets them in its config (``job``), and W&B as the run's group
  (``<experiment>/<sweep>``: one W&B run per job, the jobs of a sweep together), name (the job's
  overrides) and tags (experiment, threat, attack and every override but the seed: the ablation
  switches of a sweep).
- :func:`wandb_logger` — the ``logger=wandb`` factory (offline by itself without an API key); it
  records the run's project and group in ``wandb.json`` (:data:`WANDB_FILE`).
- :func:`shift_steps` / :func:`run_step` — one step axis for the run: each stage's Trainer logs
  from the iterations of the stages before it.
- :func:`log_image` — one image to W&B (``log_image``) or TensorBoard (``add_image``), the same
  picture in both: the only way a picture reaches a logger. ``logger.images=local``
  (:func:`image_policy`, :func:`keep_images_local`) stops every one of them: a run on private
  images logs its numbers and keeps its pictures in the run directory.
- :class:`ValidationSamples` — a grid of target | reconstruction at every validation (on disk,
  ``samples/val/``, when the images stay local).
- :func:`finish` — the final metrics, the final sample grids, ``metrics.json`` as the W&B run
  summary (with the collapse checks' ``warnings``, their count, and the tag ``flagged`` on a
  flagged run: :func:`wandb_summary`); a W&B run is finished so the next job of a sweep in this
  process starts its own.
- :func:`log_report_tables` — the report's tables (``python -m reconattack.report``) as W&B
  Tables, in a ``report`` run of each group the jobs logged to.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from reconattack.metrics.diagnostics import WARNINGS_KEY, warnings_of
from reconattack.utils.files import atomic_write_text
from reconattack.utils.grids import grid, save_grid

log = logging.getLogger(__name__)

#: overrides (keys, or prefixes ending in ".") that say where a job reads and writes or how it
#: shows its progress, not what it computes
NOT_PARAMETERS = ("hydra.", "paths.", "trainer.callbacks.", "resume", "experiment")


def is_parameter(key: str) -> bool:
    """Whether an override ``key`` changes what a job computes (see :data:`NOT_PARAMETERS`)."""
    return not any(key.startswith(p) if p.endswith(".") else key == p for p in NOT_PARAMETERS)


def job_identity() -> dict[str, Any]:
    """``{"experiment", "sweep", "overrides": {key: value}}`` of the running Hydra job
    (``experiment``: the ``+experiment=`` choice or ``default``; ``sweep``: the multirun's folder
    name or None; ``overrides``: the job's command-line overrides that change what it computes,
    :func:`is_parameter`).
    Outside Hydra (tests composing a config): ``default``, None, {}."""
    from hydra.core.hydra_config import HydraConfig

    from reconattack.engine.sweeps import in_multirun

    if not HydraConfig.initialized():
        return {"experiment": "default", "sweep": None, "overrides": {}}
    hc = HydraConfig.get()
    experiment = hc.runtime.choices.get("experiment") or "default"
    sweep = Path(str(hc.sweep.dir)).name if in_multirun() else None
    overrides = {}
    for item in hc.overrides.task:
        key, _, value = str(item).partition("=")
        key = key.lstrip("+~")
        if is_parameter(key):
            overrides[key] = value
    return {"experiment": str(experiment), "sweep": sweep, "overrides": overrides}


def wandb_offline() -> bool:
    """Whether W&B must log offline: no API key configured (neither ``WANDB_API_KEY`` nor an
    api.wandb.ai entry in ``~/.netrc``, what ``wandb login`` writes) or ``WANDB_MODE=offline``."""
    netrc = Path(os.path.expanduser("~/.netrc"))
    has_key = bool(os.environ.get("WANDB_API_KEY")) or (
        netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore"))
    return not has_key or os.environ.get("WANDB_MODE") == "offline"


def wandb_logger(save_dir: str, project: str = "reconattack", name: str | None = None,
                 offline: bool | None = None, version: str | None = None, group: str | None = None,
                 tags: list[str] | tuple[str, ...] = (), **kwargs):
    """WandbLogger that goes offline by itself when no API key is configured.

    An API key counts as configured when ``WANDB_API_KEY`` is set or ``~/.netrc`` has an entry
    for api.wandb.ai (what ``wandb login`` writes). ``offline`` forces either mode. ``version``:
    the id of a W&B run to continue (a resumed run; ``resume="allow"``). ``group`` / ``name``
    default to ``<experiment>/<sweep>`` and the job's overrides (:func:`job_identity`); ``tags``
    are extended by the experiment and every override but the seed (W&B caps a tag at 64
    characters; longer ones are left out).
    """
    from pytorch_lightning.loggers import WandbLogger

    if offline is None:
        offline = wandb_offline()
        if offline:
            log.info("W&B: no API key configured, logging offline to %s (sync later with `wandb sync`)",
                     save_dir)
    job = job_identity()
    if group is None:
        group = wandb_group(job["experiment"], job["sweep"])
    if name is None and job["overrides"]:  # the seed first: it tells the runs of a group apart
        items = sorted(job["overrides"].items(), key=lambda kv: kv[0] != "seed")
        name = " ".join(f"{k}={v}" for k, v in items)[:128]
    all_tags = [str(t) for t in tags if t] + [job["experiment"]] + [
        f"{k}={v}" for k, v in job["overrides"].items() if k != "seed"]
    all_tags = list(dict.fromkeys(t for t in all_tags if len(t) <= 64))
    if version is not None:
        kwargs.setdefault("resume", "allow")
        log.info("W&B: continuing run %s", version)
    logger = WandbLogger(save_dir=save_dir, project=project, name=name, offline=offline, version=version,
                         group=group, tags=all_tags, **kwargs)
    from lightning_fabric.utilities.rank_zero import rank_zero_only

    if getattr(rank_zero_only, "rank", 0) == 0:  # where the report finds the run's group
        atomic_write_text(Path(save_dir) / WANDB_FILE,
                          json.dumps({"project": project, "group": group, "name": name}, indent=2) + "\n")
    return logger


# ---------------------------------------------------------------------------------- images
#: ``logger.images``: ``upload`` — the logger gets the sample grids (W&B uploads them);
#: ``local`` — no picture is ever given to a logger, the grids stay in the run directory
IMAGE_POLICIES = ("upload", "local")


def image_policy(logger_cfg) -> str:
    """``logger.images`` of a logger config (``upload`` when absent); anything but
    :data:`IMAGE_POLICIES` is refused, so that a misspelt ``local`` never uploads."""
    from reconattack.errors import ConfigError

    value = "upload" if logger_cfg is None else logger_cfg.get("images", "upload")
    if value not in IMAGE_POLICIES:
        raise ConfigError(f"logger.images must be one of {', '.join(IMAGE_POLICIES)} (local: no image "
                          f"leaves the run directory), got {value!r}")
    return str(value)


def keep_images_local(logger, folder: Path) -> None:
    """From now on no picture goes to ``logger`` (:func:`takes_images` is False for it, so
    :func:`log_image` and :func:`finish` give it none); :class:`ValidationSamples` writes the
    grids it would have had under ``folder`` instead."""
    logger._local_images = Path(folder)


def local_images(logger) -> Path | None:
    """Where the pictures of a logger kept local go (:func:`keep_images_local`), else None."""
    return getattr(logger, "_local_images", None) if logger else None


def _hwc_uint8(image: torch.Tensor | np.ndarray | str | Path) -> np.ndarray:
    """(H, W, 3) uint8 from a PNG path, a (3, H, W) float tensor in [0, 1] or an (H, W, 3) array."""
    if isinstance(image, (str, Path)):
        from PIL import Image

        return np.asarray(Image.open(image).convert("RGB"))
    if isinstance(image, torch.Tensor):
        return (image.detach().float().cpu().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    return np.asarray(image)


def shift_steps(logger, first_step: int) -> None:
    """From now on ``logger`` logs a Trainer's step ``s`` as the run's step ``first_step + s``.

    A run fits its stages one Trainer each, and every Trainer counts its steps from 0; shifted
    by the iterations of the stages before it, the stages' curves follow each other on one axis
    (W&B's ``trainer/global_step``, TensorBoard's step, the CSV logger's ``step``) instead of
    lying on top of each other. The run's logger is shared by its Trainers, which run one after
    the other: each sets its own first step before it starts. ``logger`` False / None: nothing."""
    if not logger:
        return
    if getattr(logger, "_first_step", None) is None:  # wrap the instance's method once
        plain_log = logger.log_metrics

        def log_metrics(metrics, step=None):
            return plain_log(metrics, step if step is None else step + logger._first_step)

        logger.log_metrics = log_metrics
    logger._first_step = int(first_step)


def run_step(trainer: pl.Trainer) -> int:
    """The run's step of ``trainer`` now: the step its logged metrics carry (Lightning logs at the
    number of training batches stepped, not at ``global_step``, which counts every optimizer's
    step), shifted as :func:`shift_steps` says."""
    loop = trainer.fit_loop.epoch_loop
    step = int(getattr(loop, "_batches_that_stepped", trainer.global_step))
    return step + first_step(trainer.logger)


def first_step(logger) -> int:
    """The run's step at which ``logger``'s current Trainer started (:func:`shift_steps`; 0 for a
    logger never shifted)."""
    return int(getattr(logger, "_first_step", None) or 0)


def shows_images(logger) -> bool:
    """Whether ``logger`` is one that can show pictures (W&B or TensorBoard)."""
    from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger

    return isinstance(logger, (TensorBoardLogger, WandbLogger))


def takes_images(logger) -> bool:
    """Whether :func:`log_image` logs to ``logger``: W&B or TensorBoard, and its pictures not kept
    local (``logger.images=local``, :func:`keep_images_local`)."""
    return shows_images(logger) and local_images(logger) is None


def log_image(logger, key: str, image: torch.Tensor | np.ndarray | str | Path, step: int | None = None) -> bool:
    """Log one picture — a PNG path, a (3, H, W) tensor in [0, 1] or an (H, W, 3) uint8 array —
    to a W&B or TensorBoard logger; returns False, logging nothing, for other loggers (CSV), none,
    or a logger whose pictures stay local (``logger.images=local``)."""
    if not takes_images(logger):
        return False
    from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger

    if isinstance(logger, WandbLogger):
        logger.log_image(key=key, images=[_hwc_uint8(image)], step=step)
        return True
    if isinstance(logger, TensorBoardLogger):
        logger.experiment.add_image(key, _hwc_uint8(image), global_step=step or 0, dataformats="HWC")
        return True
    return False


class ValidationSamples(pl.Callback):
    """At every validation, the first validation batch's target | reconstruction grid
    (``<stage>/val_samples``) to the run's W&B / TensorBoard logger, at the run's step
    (:func:`run_step`); with ``logger.images=local``, to ``samples/val/<stage>_<step>.png`` in the
    run directory instead (:func:`keep_images_local`)."""

    def __init__(self, stage: str, rows: int = 8) -> None:
        self.stage, self.rows = stage, int(rows)

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch_idx != 0 or not trainer.is_global_zero or trainer.sanity_checking:
            return
        if not isinstance(outputs, Mapping) or "pred" not in outputs or not shows_images(trainer.logger):
            return  # no picture is drawn for a logger that cannot show it
        columns, step = [outputs["target"], outputs["pred"]], run_step(trainer)
        folder = local_images(trainer.logger)
        if folder is not None:  # logger.images=local: on disk only
            save_grid(columns, folder / "val" / f"{self.stage}_{step:06d}.png", self.rows)
            return
        log_image(trainer.logger, f"{self.stage}/val_samples", grid(columns, self.rows), step=step)


def finish(logger, metrics: Mapping[str, Any], images: Mapping[str, Path] | None = None,
           status: str = "success") -> None:
    """End the run's logging: the final numeric metrics at the run's last step, the final pictures
    (``images``: key -> PNG), ``metrics`` (strings for missing ones included) as the W&B run's
    summary; the logger is finalized and a W&B run finished."""
    if not logger:
        return
    from pytorch_lightning.loggers import WandbLogger

    numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if status == "success":
        if numbers:  # at the run's last step (the evaluation's, shift_steps), not at step 0
            logger.log_metrics(numbers, step=0)
        for key, path in (images or {}).items():
            if Path(path).is_file():
                log_image(logger, key, path, step=first_step(logger))
    logger.finalize(status)
    if isinstance(logger, WandbLogger) and getattr(logger, "_experiment", None) is not None:
        if status == "success":
            logger.experiment.summary.update(wandb_summary(metrics))
            if warnings_of(metrics):  # a flagged run stands out in the project's run list
                logger.experiment.tags = (*(logger.experiment.tags or ()), FLAGGED_TAG)
        logger.experiment.finish(exit_code=0 if status == "success" else 1)


#: the W&B tag of a run whose collapse checks flagged it (:mod:`reconattack.metrics.diagnostics`)
FLAGGED_TAG = "flagged"


def wandb_summary(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The W&B run summary of a run's final ``metrics``: ``metrics.json`` as it is (its
    ``warnings`` list of the collapse checks included), and ``warnings_count``, a number W&B's run
    table can filter and sort on, when the checks ran."""
    out = dict(metrics)
    if WARNINGS_KEY in metrics:
        out["warnings_count"] = len(warnings_of(metrics))
    return out


def wandb_group(experiment: str, sweep: str | None) -> str:
    """The W&B group of a job: ``<experiment>/<sweep folder>``, the experiment alone outside a
    multirun."""
    return experiment + (f"/{sweep}" if sweep else "")


def log_report_tables(root: Path, jobs: list, tables: list[Path]) -> list[Path]:
    """The report's CSV tables (``tables``) as W&B Tables, in a run named ``report`` in each W&B
    group its jobs logged to (the group a job's run used, recorded in its :data:`WANDB_FILE`: a
    report of a parent folder or of several experiments reaches every group of its jobs), when
    the jobs logged to W&B (their ``logger._target_``); returns the W&B run folders written.
    Offline without an API key, as the jobs. A job without the record (older runs) counts in the
    group its folder would have: ``<experiment>/<root's name>``."""
    import csv

    configs = {id(j): j.config["logger"] for j in jobs if isinstance(j.config.get("logger"), Mapping)
               and "wandb" in str(j.config["logger"].get("_target_", ""))}
    if not configs or not tables:
        return []
    import wandb

    root = Path(root)
    groups: Counter[tuple[str, str]] = Counter()
    fallback = None  # the folder rule, read once if a job needs it
    for job in jobs:
        if id(job) not in configs:
            continue
        record = _read_wandb_file(Path(job.dir))
        if not record.get("group") and fallback is None:
            fallback = _folder_group(root, jobs)
        groups[(str(record.get("project") or configs[id(job)].get("project", "reconattack")),
                str(record.get("group") or fallback))] += 1
    offline = next(iter(configs.values())).get("offline")
    if offline is None:
        offline = wandb_offline()
    rows_of = {}
    for path in tables:
        with open(path, newline="") as fh:
            rows_of[Path(path).stem] = list(csv.reader(fh))
    written = []
    for (project, group), count in groups.items():
        run = wandb.init(project=project, group=group, name="report", job_type="report", dir=str(root),
                         mode="offline" if offline else "online", reinit="create_new")
        try:
            for stem, rows in rows_of.items():
                if rows:
                    run.log({f"report/{stem}": wandb.Table(columns=rows[0], data=rows[1:])})
            run.summary["report/jobs"] = len(jobs)
            run.summary["report/jobs_in_group"] = count
        finally:
            run.finish()
        if getattr(run, "dir", None):
            written.append(Path(run.dir).parent)
    return written


#: the W&B project, group and name a run logged to, in its run directory (written by
#: :func:`wandb_logger`; read by :func:`log_report_tables`)
WANDB_FILE = "wandb.json"


def _read_wandb_file(run_dir: Path) -> dict:
    try:
        data = json.loads((run_dir / WANDB_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _folder_group(root: Path, jobs: list) -> str:
    """The group of a job that did not record one: ``<experiment>/<root's name>`` for a multirun
    folder, the experiment alone for a single run (what :func:`wandb_group` gives at run time
    when ``root`` is the sweep folder)."""
    hydra_file = min(root.rglob(".hydra/hydra.yaml"), default=None)
    experiment = "default"
    if hydra_file is not None:
        import yaml

        choices = ((yaml.safe_load(hydra_file.read_text()) or {}).get("hydra", {}).get("runtime", {})
                   .get("choices", {}))
        experiment = choices.get("experiment") or "default"
    return wandb_group(experiment, root.name if any(Path(j.dir) != root for j in jobs) else None)


__all__ = ["IMAGE_POLICIES", "NOT_PARAMETERS", "ValidationSamples", "finish", "first_step", "image_policy",
           "is_parameter", "keep_images_local", "local_images", "run_step", "shift_steps", "shows_images",
           "job_identity", "log_image", "log_report_tables", "takes_images", "WANDB_FILE", "wandb_group",
           "wandb_offline", "wandb_logger"]
