"""What a run prints: a progress display per stage that names the stage and counts its
iterations (a Rich bar in a terminal, log lines elsewhere), and Lightning's tips and
known-harmless warnings kept off the console."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from reconattack.engine import console
from reconattack.engine.console import (
    StageProgressBar,
    StageProgressLines,
    progress_bar,
    stage_iterations,
)
from reconattack.engine.context import make_trainer
from tests.helpers import compose_cfg

ROOT = Path(__file__).resolve().parents[2]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class TwoOptimizerToy(pl.LightningModule):
    """A GAN-like stage: two optimizer steps per iteration (manual optimisation), a frozen network
    in eval mode, the loss logged to the progress bar as ``toy/train/loss``; 4 batches an epoch."""

    optimizer_steps_per_iteration = 2

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.g, self.d = nn.Linear(2, 1), nn.Linear(2, 1)
        self.frozen = nn.Linear(2, 2).eval().requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.frozen.eval()
        return self

    def training_step(self, batch, batch_idx):
        (x,) = batch
        for opt, net in zip(self.optimizers(), (self.g, self.d)):
            opt.zero_grad()
            loss = net(self.frozen(x)).pow(2).mean()
            self.manual_backward(loss)
            opt.step()
        self.log("toy/train/loss", loss, prog_bar=True)

    def test_step(self, batch, batch_idx):
        return None

    def configure_optimizers(self):
        return [torch.optim.SGD(self.g.parameters(), lr=0.1), torch.optim.SGD(self.d.parameters(), lr=0.1)]

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=2)

    def test_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(6, 2)), batch_size=2)


def _trainer(tmp_path, stage: str, max_steps: int, bar) -> pl.Trainer:
    """A Trainer from the real ``trainer=cpu`` config through the runtime, with ``bar``."""
    cfg = compose_cfg(["trainer=cpu", "trainer.callbacks.progress=null"])
    return make_trainer(cfg, tmp_path, stage, max_steps, callbacks=[bar])


@pytest.fixture
def rich_console_restored():
    """RichProgressBar reconfigures Rich's global console; give it back a plain one after."""
    yield
    import rich

    rich.reconfigure()


# ------------------------------------------------------------------------------ counting
def test_a_stage_counts_iterations_not_optimizer_steps():
    module = SimpleNamespace(optimizer_steps_per_iteration=2)
    trainer = SimpleNamespace(lightning_module=module, global_step=74, max_steps=1200, max_epochs=-1,
                              num_training_batches=50)
    assert stage_iterations(trainer) == (37, 600)
    # a module without the attribute steps once per iteration; an epoch limit caps the total
    trainer = SimpleNamespace(lightning_module=SimpleNamespace(), global_step=3, max_steps=-1, max_epochs=2,
                              num_training_batches=5)
    assert stage_iterations(trainer) == (3, 10)
    # fast_dev_run: one batch, max_steps=1 although the batch steps two optimizers
    trainer = SimpleNamespace(lightning_module=module, global_step=2, max_steps=1, max_epochs=1,
                              num_training_batches=1)
    assert stage_iterations(trainer) == (1, 1)


def test_the_descriptions_name_the_stage():
    bar = StageProgressBar()
    bar.stage = "coarse"
    assert bar.train_description == "coarse"
    assert bar.validation_description == "coarse validation"
    assert bar.test_description == "coarse"
    lines = StageProgressLines()
    lines.stage = "encrypt"
    assert lines.test_description == "encrypt"
    # outside the runtime (no stage given): Lightning's words, never an epoch counter
    assert StageProgressBar().train_description == "training"
    assert StageProgressBar().test_description == "testing"


def test_the_progress_metrics_are_short_names_without_the_logger_version():
    bar = StageProgressBar()
    bar.stage = "coarse"
    assert bar.shorten({"v_num": 0, "coarse/train/loss": 0.4, "train/acc": 0.9}) == {"loss": 0.4, "acc": 0.9}


def test_a_terminal_gets_a_bar_and_anything_else_lines():
    assert isinstance(progress_bar(terminal=True), StageProgressBar)
    assert isinstance(progress_bar(terminal=False, every_percent=25), StageProgressLines)
    # pytest captures stdout: not a terminal
    assert isinstance(progress_bar(), StageProgressLines)
    with pytest.raises(ValueError, match="every_percent"):
        progress_bar(terminal=False, every_percent=-1)


# ------------------------------------------------------------------------------ a real fit
def test_the_rich_bar_names_the_stage_and_counts_its_iterations(tmp_path, rich_console_restored):
    out = io.StringIO()
    bar = StageProgressBar(console_kwargs={"file": out, "force_terminal": True, "width": 120})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # then the runtime's filters
        trainer = _trainer(tmp_path, "toy", 10, bar)  # 5 iterations of 2 optimizer steps, 2 epochs
        trainer.fit(TwoOptimizerToy())
    assert bar.stage == "toy"  # told by the runtime
    text = ANSI.sub("", out.getvalue())
    assert re.search(r"toy\s.*\s5/5\s", text), text
    assert "loss" in text and "v_num" not in text and "Epoch" not in text, text
    # the frozen network in eval mode is intended: Lightning's warning about it is not shown
    assert not [w for w in caught if "eval mode" in str(w.message)], [str(w.message) for w in caught]


def test_without_a_terminal_a_line_every_few_percent(tmp_path, caplog):
    bar = StageProgressLines(every_percent=50)
    trainer = _trainer(tmp_path, "toy", 10, bar)
    with caplog.at_level(logging.INFO, logger="reconattack.progress"):
        trainer.fit(TwoOptimizerToy())
    lines = [r.getMessage() for r in caplog.records if r.name == "reconattack.progress"]
    assert len(lines) == 2, lines  # 60 % and 100 % of 5 iterations
    assert lines[0].startswith("toy 3/5 (60%)") and lines[1].startswith("toy 5/5 (100%)"), lines
    assert "loss" in lines[1]
    caplog.clear()
    trainer = _trainer(tmp_path, "evaluation", -1, StageProgressLines(every_percent=0))
    with caplog.at_level(logging.INFO, logger="reconattack.progress"):
        trainer.test(TwoOptimizerToy(), verbose=False)
    lines = [r.getMessage() for r in caplog.records if r.name == "reconattack.progress"]
    assert len(lines) == 1 and lines[0].startswith("evaluation 3/3"), lines  # 0: at the end only


def test_a_resumed_stage_counts_on_from_where_it_stopped(tmp_path, caplog, rich_console_restored):
    first = _trainer(tmp_path, "toy", 8, StageProgressLines())  # 4 of 5 iterations: one epoch
    first.fit(TwoOptimizerToy())
    first.save_checkpoint(tmp_path / "four.ckpt")
    out = io.StringIO()
    bar = StageProgressBar(console_kwargs={"file": out, "force_terminal": True, "width": 120})
    _trainer(tmp_path, "toy", 10, bar).fit(TwoOptimizerToy(), ckpt_path=tmp_path / "four.ckpt")
    frames = ANSI.sub("", out.getvalue())
    assert re.search(r"toy\s.*\s4/5\s", frames) and re.search(r"toy\s.*\s5/5\s", frames), frames
    assert not re.search(r"\s[0-3]/5\s", frames), frames
    with caplog.at_level(logging.INFO, logger="reconattack.progress"):
        _trainer(tmp_path, "toy", 10, StageProgressLines(every_percent=50)).fit(
            TwoOptimizerToy(), ckpt_path=tmp_path / "four.ckpt")
    lines = [r.getMessage() for r in caplog.records if r.name == "reconattack.progress"]
    assert [line.split(" · ")[0] for line in lines] == ["toy 5/5 (100%)"], lines


# ------------------------------------------------------------------------------ filtering
@pytest.mark.parametrize("message, category", [
    ("Found 327 module(s) in eval mode at the start of training. This may lead to unexpected "
     "behavior during training.", "PossibleUserWarning"),
    ("`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec) and "
     "treespec.is_leaf()` instead.", "FutureWarning"),
    ("The number of training batches (5) is smaller than the logging interval "
     "Trainer(log_every_n_steps=10).", "PossibleUserWarning"),
    ("Using ModelCheckpoint with manual optimization and every_n_train_steps, but no "
     "pre-optimization state was saved.", "UserWarning"),
    ("You defined a `validation_step` but have no `val_dataloader`. Skipping val loop.",
     "PossibleUserWarning"),
    ("Total length of `list` across ranks is zero. Please make sure this was your intention.", "UserWarning"),
])
def test_known_harmless_warnings_are_not_shown_and_others_are(message, category):
    from lightning_fabric.utilities.warnings import PossibleUserWarning

    cls = {"PossibleUserWarning": PossibleUserWarning, "FutureWarning": FutureWarning,
           "UserWarning": UserWarning}[category]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        console.quiet()
        warnings.warn(message, cls, stacklevel=1)
        warnings.warn("Found a real problem with your data", cls, stacklevel=1)
    assert [str(w.message) for w in caught] == ["Found a real problem with your data"]


def test_lightnings_tip_is_dropped_and_the_device_lines_shown_once():
    import lightning_utilities.core.rank_zero as rank_zero

    emitting = rank_zero.log  # the logger Lightning's rank_zero_info writes to
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    handler = Keep(level=logging.INFO)
    emitting.addHandler(handler)
    old_level = emitting.level
    emitting.setLevel(logging.INFO)
    try:
        console.reset_once()  # earlier Trainers of this process showed them
        console.quiet()
        console.quiet()  # idempotent
        for _ in range(2):
            emitting.info("💡 Tip: For seamless cloud logging and experiment tracking, try installing "
                          "[litlogger](https://pypi.org/project/litlogger/) to enable LitLogger")
            emitting.info("GPU available: False, used: False")
            emitting.info("TPU available: False, using: 0 TPU cores")
            emitting.info("`Trainer.fit` stopped: `max_steps=3` reached.")
            emitting.info("`Trainer.fit` stopped: `max_epochs=3` reached.")
    finally:
        emitting.removeHandler(handler)
        emitting.setLevel(old_level)
        console.reset_once()
    assert seen == ["GPU available: False, used: False", "TPU available: False, using: 0 TPU cores",
                    "`Trainer.fit` stopped: `max_epochs=3` reached.",
                    "`Trainer.fit` stopped: `max_epochs=3` reached."]


# ------------------------------------------------------------------------------ a real run
def test_a_run_prints_its_stages_and_none_of_the_known_noise(tmp_path):
    tiny = ["attack.steps.coarse=2", "attack.steps.fine=2", "data.batch_size=4", "data.eval_batch_size=4",
            "data.max_images=24", "data.test=8", "metrics.metrics=[mse,psnr,ssim]", "attack.num_samples=2",
            f"hydra.run.dir={tmp_path / 'run'}"]
    env = {**os.environ, "RECONATTACK_OFFLINE": "1", "RECONATTACK_CACHE": str(tmp_path / "cache"),
           "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "reconattack.run", *tiny], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    # not a terminal: a line per stage (2 iterations, every 10 %: one line per iteration)
    for line in ("coarse 1/2 (50%)", "coarse 2/2 (100%)", "fine 2/2 (100%)"):
        assert line in out, out
    assert re.search(r"evaluation (\d+)/\1 \(100%\)", out), out
    for noise in ("litlogger", "Epoch 0/-2", "eval mode at the start of training", "LeafSpec",
                  "smaller than the logging interval", "`Trainer.fit` stopped", "━"):
        assert noise not in out, (noise, out)
    assert out.count("GPU available") == 1, out  # the device, once


def test_the_summary_gives_each_missing_reason_once():
    from reconattack.run import summary

    why = "missing: CLIP ViT-B-32: the Hugging Face Hub is not reachable"
    text = summary({"test/psnr": 13.98061, "test/clip": why, "ours/clip": why, "ours/fid": "missing: no FID weights",
                    "attack/leaked_images": 8})
    assert text.splitlines() == ["  attack/leaked_images: 8", "  ours/clip: missing (1)", "  ours/fid: missing (2)",
                                 "  test/clip: missing (1)", "  test/psnr: 13.9806",
                                 "  (1) missing: CLIP ViT-B-32: the Hugging Face Hub is not reachable",
                                 "  (2) missing: no FID weights"]
