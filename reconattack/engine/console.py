"""What a run prints: one progress display per Trainer that names its stage and counts its own
iterations, and Lightning's tips and known-harmless warnings kept off the console.

**Progress** (``trainer.callbacks.progress``, :func:`progress_bar`). The runtime tells the bar
the name of the work its Trainer does (:func:`reconattack.engine.context.make_trainer`): an attack
stage (``coarse``), ``evaluation``, ``encrypt``, a demo face model (``service_model``). A
training bar counts the stage's *iterations* done / total (Lightning's ``global_step`` counts
optimizer steps: a GAN stage steps two optimizers per iteration, so the count is divided by the
module's ``optimizer_steps_per_iteration``), not Lightning's epochs (a stage runs for a number of
steps, so Lightning shows ``Epoch 79/-2``); a test pass counts its batches. In a terminal or a
notebook it is a Rich bar (:class:`StageProgressBar`) with the loss; anywhere else (a SLURM
log, a pipe) Rich would draw nothing until the stage ends (it redraws only on a terminal, then
prints the last frame), so there it is one log line every ``every_percent`` % of the stage
(:class:`StageProgressLines`), in the run's log as well.

**Quiet** (:func:`quiet`, applied by ``make_trainer`` to every Trainer of a run, and by the
tests' ``conftest.py`` to pytest's warning filters). Each message is named precisely (a regular
expression matched at the start of the message, and its category), with why it says nothing
about a run of this package: :data:`HARMLESS_WARNINGS` (Python warnings), :data:`DROPPED_INFO`
(Lightning's info lines never shown), :data:`ONCE_INFO` (shown for the first Trainer of the
process only, not for each of the run's Trainers). Every other warning is left as it is.
"""

from __future__ import annotations

import logging
import math
import re
import time
import warnings
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
from lightning_fabric.utilities.warnings import PossibleUserWarning
from pytorch_lightning.callbacks import ProgressBar, RichProgressBar

from reconattack.data.sampling import consumed_batches, steps_per_iteration

log = logging.getLogger(__name__)

#: the logger of the progress lines (:class:`StageProgressLines`)
PROGRESS_LOGGER = "reconattack.progress"


# ------------------------------------------------------------------------------ counting
def stage_iterations(trainer) -> tuple[int, int | float]:
    """``(done, total)`` training iterations of the Trainer's fit.

    ``done`` is ``global_step`` over the module's ``optimizer_steps_per_iteration`` (default 1);
    ``total`` the smaller of ``max_steps`` in iterations (rounded up) and ``max_epochs`` ×
    the batches of an epoch, where those are set (``fast_dev_run`` and ``limit_train_batches``
    are in them); ``math.inf`` when neither is."""
    per = steps_per_iteration(trainer)
    total: int | float = math.inf
    max_steps = getattr(trainer, "max_steps", -1)
    if max_steps is not None and max_steps >= 0:
        total = math.ceil(max_steps / per)
    epochs = getattr(trainer, "max_epochs", None)
    batches = getattr(trainer, "num_training_batches", math.inf)
    if epochs is not None and epochs >= 0 and math.isfinite(batches):
        total = min(total, int(epochs * batches))
    done = consumed_batches(trainer)
    return (min(done, total) if math.isfinite(total) else done), total


class StageProgress:
    """The stage-naming part of both progress displays (a mixin before Lightning's
    ``ProgressBar``): descriptions from :attr:`stage`, and the progress-bar metrics by short name.

    Attributes:
        stage: the name of the Trainer's work, set by :func:`reconattack.engine.context.make_trainer`
            (None outside the runtime: Lightning's plain words, ``training``, ``testing``).
    """

    stage: str | None = None

    @property
    def train_description(self) -> str:
        return self.stage or "training"

    @property
    def validation_description(self) -> str:
        return f"{self.stage} validation" if self.stage else "validation"

    @property
    def sanity_check_description(self) -> str:
        return f"{self.stage} sanity check" if self.stage else "sanity check"

    @property
    def test_description(self) -> str:
        return self.stage or "testing"

    @property
    def predict_description(self) -> str:
        return self.stage or "predicting"

    def shorten(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """The progress-bar metrics without the logger's version (``v_num``) and with the stage's
        prefix (``coarse/train/loss`` -> ``loss``, ``train/acc`` -> ``acc``)."""
        prefixes = ([f"{self.stage}/train/", f"{self.stage}/"] if self.stage else []) + ["train/"]
        out = {}
        for name, value in metrics.items():
            if name == "v_num":
                continue
            for prefix in prefixes:
                if name.startswith(prefix):
                    name = name[len(prefix):]
                    break
            out[name] = value
        return out


# ------------------------------------------------------------------------------ a terminal
class StageProgressBar(StageProgress, RichProgressBar):
    """Lightning's Rich bar, saying ``coarse ━━━━ 37/600 0:01:02 • 0:15:40 0.61it/s loss: 0.409``:
    the stage, its iterations done / total (kept across Lightning's epochs, starting where a
    resumed stage was), the loss. Evaluation and encryption passes: ``evaluation ━━ 3/10``.
    Arguments as Lightning's ``RichProgressBar``."""

    @property
    def total_train_batches(self) -> int | float:
        return stage_iterations(self.trainer)[1]

    def _get_train_description(self, current_epoch: int) -> str:
        return self.train_description

    def _initialize_train_progress_bar_id(self) -> None:
        # a resumed stage's bar starts where the stage was (its speed counts from there)
        done, total = stage_iterations(self.trainer)
        description = self.train_description
        if self.theme.description:
            description = f"[{self.theme.description}]{description}"
        self.train_progress_bar_id = self.progress.add_task(description, total=total, completed=done)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # one task for the whole stage: Lightning's epochs neither reset nor restart it
        if self.is_disabled or self.progress is None:
            return
        if self.train_progress_bar_id is None:
            self._initialize_train_progress_bar_id()
        else:
            self.progress.update(self.train_progress_bar_id, total=stage_iterations(trainer)[1])
        self.refresh()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if self.is_disabled:
            return
        if self.train_progress_bar_id is None:
            self._initialize_train_progress_bar_id()
        self._update(self.train_progress_bar_id, stage_iterations(trainer)[0])
        self._update_metrics(trainer, pl_module)
        self.refresh()

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        return self.shorten(super().get_metrics(trainer, pl_module))


# ------------------------------------------------------------------------------ a log file
def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class StageProgressLines(StageProgress, ProgressBar):
    """Progress as log lines (logger ``reconattack.progress``), for output that is not a terminal:
    ``coarse 60/600 (10%) · 2.13 it/s · 0:00:28 elapsed, 0:04:13 left · loss 0.409``.

    A training stage and a test pass log a line each time they pass a multiple of
    ``every_percent`` % of their total and when they end (0: at the end only); a validation
    pass during training one line at its end. Rank 0 only.

    Args:
        every_percent: the step between lines, in percent of a stage or pass (>= 0).
    """

    def __init__(self, every_percent: float = 10.0) -> None:
        super().__init__()
        if every_percent < 0:
            raise ValueError(f"trainer.callbacks.progress.every_percent must be >= 0, got {every_percent}")
        self.every_percent = float(every_percent)
        self._enabled = True
        self._log = logging.getLogger(PROGRESS_LOGGER)
        self._phase: dict[str, dict] = {}

    # Lightning's ProgressBar interface
    @property
    def is_enabled(self) -> bool:
        return self._enabled

    @property
    def is_disabled(self) -> bool:
        return not self._enabled

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    # ----------------------------------------------------------------------- the lines
    def _start(self, phase: str, done: int = 0) -> None:
        self._phase[phase] = {"t0": time.monotonic(), "done0": done, "next": self.every_percent,
                              "logged": None}

    def _report(self, phase: str, description: str, done: int, total: int | float,
                metrics: Callable[[], dict] | None = None, end: bool = False, percent: bool = True) -> None:
        """Log a line when ``done`` passed the next multiple of ``every_percent`` (``percent``),
        reached ``total``, or the pass ended (``end``) since the last line. ``metrics`` is called
        only for a line (reading logged tensors waits for the device)."""
        if self.is_disabled:
            return
        state = self._phase.get(phase)
        if state is None:
            self._start(phase)
            state = self._phase[phase]
        if state["logged"] == done:
            return
        finite = math.isfinite(total) and total > 0
        pct = 100.0 * done / total if finite else None
        due = end or (finite and done >= total) or (
            percent and pct is not None and self.every_percent > 0 and pct >= state["next"])
        if not due:
            return
        if pct is not None and self.every_percent > 0:
            state["next"] = (math.floor(pct / self.every_percent) + 1) * self.every_percent
        state["logged"] = done
        parts = [f"{description} {done}/{total if finite else '?'}" + (f" ({pct:.0f}%)" if finite else "")]
        elapsed = time.monotonic() - state["t0"]
        rate = (done - state["done0"]) / elapsed if elapsed > 0 else 0.0
        if rate > 0:
            parts.append(f"{1 / rate:.3g} s/it" if rate < 1 else f"{rate:.3g} it/s" if rate < 100
                         else f"{rate:.0f} it/s")
            left = f", {_clock((total - done) / rate)} left" if finite and done < total else ""
            parts.append(f"{_clock(elapsed)} elapsed{left}")
        shown = metrics() if metrics is not None else None
        if shown:
            parts.append(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                  for k, v in shown.items()))
        self._log.info(" · ".join(parts))

    def _metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict:
        items = self.shorten(self.get_metrics(trainer, pl_module))
        return {k: (v.item() if hasattr(v, "item") else v) for k, v in items.items()}

    # ----------------------------------------------------------------------- training
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start("train", stage_iterations(trainer)[0])

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        done, total = stage_iterations(trainer)
        self._report("train", self.train_description, done, total, lambda: self._metrics(trainer, pl_module))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        done, total = stage_iterations(trainer)  # a stage stopped early says where
        self._report("train", self.train_description, done, total, lambda: self._metrics(trainer, pl_module),
                     end=True)

    # ----------------------------------------------------------------------- evaluation passes
    def on_validation_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:
        if not trainer.sanity_checking and self.has_dataloader_changed(dataloader_idx):
            self._start("validation")

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if trainer.sanity_checking:
            return
        self._report("validation", self.validation_description, batch_idx + 1,
                     self.total_val_batches_current_dataloader, percent=False)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.reset_dataloader_idx_tracker()

    def on_test_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                            batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.has_dataloader_changed(dataloader_idx):
            self._start("test")

    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                          batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._report("test", self.test_description, batch_idx + 1, self.total_test_batches_current_dataloader)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.reset_dataloader_idx_tracker()

    def on_predict_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                               batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.has_dataloader_changed(dataloader_idx):
            self._start("predict")

    def on_predict_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                             batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._report("predict", self.predict_description, batch_idx + 1,
                     self.total_predict_batches_current_dataloader)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.reset_dataloader_idx_tracker()


def is_terminal(console_kwargs: dict | None = None) -> bool:
    """Whether Rich can draw a live bar on stdout: an interactive terminal (Rich's test, which
    honours ``TTY_INTERACTIVE``, ``TTY_COMPATIBLE``, ``FORCE_COLOR`` and ``TERM=dumb``) or a
    Jupyter notebook."""
    from rich.console import Console

    console = Console(**(console_kwargs or {}))
    return bool(console.is_interactive or console.is_jupyter)


def progress_bar(terminal: bool | None = None, every_percent: float = 10.0, refresh_rate: int = 10,
                 console_kwargs: dict | None = None) -> ProgressBar:
    """The progress display of a run's Trainers (``trainer.callbacks.progress``; the module
    docstring says what it shows).

    Args:
        terminal: True: the Rich bar; False: the log lines; None: the bar when stdout is a
            terminal or a notebook (:func:`is_terminal`), else the lines.
        every_percent: the lines' step, in percent of a stage or pass (0: a line at its end only).
        refresh_rate: the bar's redraws per second.
        console_kwargs: arguments of the bar's ``rich.console.Console``.
    """
    if every_percent < 0:
        raise ValueError(f"trainer.callbacks.progress.every_percent must be >= 0, got {every_percent}")
    if terminal is None:
        terminal = is_terminal(console_kwargs)
    if terminal:
        return StageProgressBar(refresh_rate=int(refresh_rate), console_kwargs=console_kwargs)
    return StageProgressLines(every_percent=every_percent)


# ------------------------------------------------------------------------------ quiet
#: Python warnings that say nothing about a run of this package: (message regex, matched at the
#: start of the message; category; why it is harmless here). No regex has a colon: they are
#: also pytest ``filterwarnings`` entries (tests/conftest.py).
HARMLESS_WARNINGS: tuple[tuple[str, type[Warning], str], ...] = (
    (r"Found \d+ module\(s\) in eval mode at the start of training", PossibleUserWarning,
     "the frozen networks of a stage (SIFT, VGG, face and key models, the earlier stages) are kept "
     "in eval mode on purpose (reconattack.attacks.base)"),
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning,
     "Lightning's own use of a torch API (pytorch_lightning/utilities/_pytree.py); nothing here "
     "calls it, and nothing changes until Lightning does"),
    (r"The number of training batches \(\d+\) is smaller than the logging interval", PossibleUserWarning,
     "a stage runs for its iterations over as many epochs as it takes, and log_every_n_steps counts "
     "steps across epochs: a small data set's losses are logged all the same"),
    (r"Using ModelCheckpoint with manual optimization and every_n_train_steps", UserWarning,
     "the GAN stages optimise by hand; their periodic checkpoint holds the state after the step, "
     "which is where a resumed stage continues (the warning is about wanting the state before it)"),
    (r"You defined a `validation_step` but have no `val_dataloader`", PossibleUserWarning,
     "every attack stage can validate; a threat model without validation data gives it none, and "
     "the runner turns validation off for it (reconattack.engine.runner.fit_stage)"),
    (r"Total length of `list` across ranks is zero", UserWarning,
     "a data module without a validation split gives an empty list (data.val=0); only "
     "trainer.fast_dev_run, a debugging run, turns validation on for it anyway"),
)

#: Lightning info lines never shown: (regex matched at the start, why)
DROPPED_INFO: tuple[tuple[str, str], ...] = (
    (r"💡 Tip: For seamless cloud .*\[lit(logger|models)\]",
     "an advertisement for Lightning's cloud services, once per Trainer"),
    (r"`Trainer\.fit` stopped: `max_steps=\d+` reached",
     "every stage ends so, when its iterations are done (the runner logs the stage's checkpoint "
     "next); other reasons to stop are still shown"),
)

#: Lightning info lines shown for the first Trainer of the process only (a run has one Trainer
#: per stage and pass, on the same devices)
ONCE_INFO: tuple[str, ...] = (
    r"GPU available: ",
    r"TPU available: ",
    r"LOCAL_RANK: \d+ - CUDA_VISIBLE_DEVICES",
    r"Using (16bit|bfloat16) Automatic Mixed Precision",
)

#: the loggers Lightning writes those lines to (rank_zero_info's, the CUDA accelerator's)
LIGHTNING_LOGGERS = ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero",
                     "pytorch_lightning.accelerators.cuda")


class _LightningInfoFilter(logging.Filter):
    """Drops :data:`DROPPED_INFO` and repeats of :data:`ONCE_INFO` (see :func:`quiet`)."""

    def __init__(self) -> None:
        super().__init__()
        self.dropped = [re.compile(p) for p, _ in DROPPED_INFO]
        self.once = [re.compile(p) for p in ONCE_INFO]
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(p.match(message) for p in self.dropped):
            return False
        for p in self.once:
            if p.match(message):
                if p.pattern in self.seen:
                    return False
                self.seen.add(p.pattern)
        return True


_INFO_FILTER = _LightningInfoFilter()


def quiet() -> None:
    """Keep the known-harmless messages off the console (the module docstring): warning filters
    for :data:`HARMLESS_WARNINGS`, put in front of the others unless they are there already (every
    change to the filters makes Python show each "once" warning again), and a logging filter on
    Lightning's loggers for its info lines. Called for every Trainer a run makes
    (:func:`reconattack.engine.context.make_trainer`), so it holds also where something (pytest, a
    notebook) resets the warning filters between runs."""
    ours = {(pattern, category) for pattern, category, _why in HARMLESS_WARNINGS}
    front = {(f[1].pattern, f[2]) for f in warnings.filters[:len(ours)]
             if f[0] == "ignore" and f[1] is not None}
    if front != ours:  # else nothing to do; a change would make every warning shown "once" again
        for pattern, category, _why in HARMLESS_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern, category=category)
    import lightning_utilities.core.rank_zero as rank_zero

    names = {*LIGHTNING_LOGGERS, rank_zero.log.name}
    for name in sorted(names):
        logger = logging.getLogger(name)
        if _INFO_FILTER not in logger.filters:
            logger.addFilter(_INFO_FILTER)


def reset_once() -> None:
    """Show the :data:`ONCE_INFO` lines again at the next Trainer (tests)."""
    _INFO_FILTER.seen.clear()


def pytest_filters() -> list[str]:
    """:data:`HARMLESS_WARNINGS` as pytest ``filterwarnings`` lines (``ignore:regex:Category``)."""
    lines = []
    for pattern, category, _why in HARMLESS_WARNINGS:
        if ":" in pattern:
            raise ValueError(f"a warning regex for pytest cannot hold a colon: {pattern!r}")
        lines.append(f"ignore:{pattern}:{category.__module__}.{category.__qualname__}")
    return lines


def iter_progress(items, total: int, desc: str, every_percent: float = 10.0):
    """``items`` with their progress shown: a bar in a terminal, else a log line every
    ``every_percent`` (SLURM logs), as the training stages show theirs."""
    if is_terminal():
        from rich.progress import track

        yield from track(items, total=total, description=desc)
        return
    step = max(1, int(total * every_percent / 100))
    logger = logging.getLogger("reconattack.progress")
    for i, item in enumerate(items, start=1):
        yield item
        if i % step == 0 or i == total:
            logger.info("%s %d/%d (%d%%)", desc, i, total, round(100 * i / max(total, 1)))
