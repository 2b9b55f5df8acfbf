"""The collapse checks in a run (reconattack/engine/diagnostics.py): a collapsed attack is flagged in
metrics.json, the console summary and W&B, one that reads its input is not; each stage's losses
are recorded at every iteration (as the CSV logger has them), across a continued stage too."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from reconattack.attacks.cfgan import CFGANStage
from reconattack.metrics.diagnostics import MARK
from reconattack.run import run, summary
from tests.helpers import base_overrides, coarse_only, compose_cfg


def _constant(monkeypatch) -> None:
    """The trained attack outputs one grey image for every input (what 30 + 15 steps of the CFGAN
    demo does), also given another image's SIFT."""
    monkeypatch.setattr(CFGANStage, "reconstruct", lambda self, batch: torch.full_like(batch["target"], -0.1))


def _perfect(monkeypatch) -> None:
    """A perfect attack: the image of the SIFT map it is given (another image's for the shuffled
    control, within the batch)."""
    def reconstruct(self, batch):
        if batch["input"] is batch.get("shuffled_input"):
            return torch.roll(batch["target"], 1, 0)
        return batch["target"]

    monkeypatch.setattr(CFGANStage, "reconstruct", reconstruct)


def test_a_collapsed_attack_is_flagged_and_its_numbers_stay(tmp_path, monkeypatch, capsys):
    _constant(monkeypatch)
    metrics = run(compose_cfg(coarse_only(tmp_path)))
    warnings = metrics["warnings"]
    assert {(w["row"], w["check"]) for w in warnings} >= {("test", "output_spread"), ("test", "shuffled_input")}
    for w in warnings:
        assert w["row"] == "test" and w["value"] < w["threshold"] and w["message"]
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["warnings"] == warnings and isinstance(saved["test/psnr"], float)  # the numbers stay
    # the shuffled-SIFT control equals the attack's row: the same constant image
    assert saved["baseline/shuffled_sift/psnr"] == pytest.approx(saved["test/psnr"])
    printed = capsys.readouterr().out
    assert f"  {MARK} test: the reconstructions hardly depend on the input" in printed
    assert "not read them as the method's result" in printed
    assert summary(metrics) in printed


def test_an_attack_that_reads_its_input_is_not_flagged(tmp_path, monkeypatch):
    _perfect(monkeypatch)
    metrics = run(compose_cfg(coarse_only(tmp_path)))
    assert metrics["warnings"] == []
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["warnings"] == []
    # the statistics are kept, flagged or not: the targets themselves have the targets' spread
    record = json.loads((tmp_path / "run" / "diagnostics" / "evaluation.json").read_text())
    assert record["row"] == "test" and record["paired_row"] == "baseline/shuffled_sift"
    assert record["statistics"]["output_spread"] == pytest.approx(1.0)
    assert record["statistics"]["shuffled_input"] > 0.5 and record["warnings"] == []


def test_the_checks_can_be_turned_off(tmp_path, monkeypatch):
    _constant(monkeypatch)
    metrics = run(compose_cfg(coarse_only(tmp_path, "diagnostics.enabled=false")))
    assert "warnings" not in metrics and not (tmp_path / "run" / "diagnostics").exists()


def test_a_threat_without_an_attack_has_no_warnings(tmp_path):
    metrics = run(compose_cfg([*base_overrides(tmp_path), "attack=none", "data.num_workers=0",
                               "metrics.metrics=[mse,psnr,ssim]"]))
    assert metrics["warnings"] == []  # the mean image is one image for every input: a control, not checked


# ------------------------------------------------------------------------------ losses
def _logged(run_dir: Path, stage: str) -> dict[str, dict[int, float]]:
    """``{term: {step: value}}`` of the CSV logger's ``<stage>/train/*`` columns."""
    out: dict[str, dict[int, float]] = {}
    for path in sorted(run_dir.glob("logs/version_*/metrics.csv")):
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                for key, value in row.items():
                    if key.startswith(f"{stage}/train/") and value:
                        out.setdefault(key[len(f"{stage}/train/"):], {})[int(row["step"])] = float(value)
    return out


LOSS_RUN = ("attack.steps.coarse=12", "trainer.log_every_n_steps=1", "diagnostics.losses.min_iterations=10",
            # every term flagged, so that the warnings carry the statistics to compare
            "diagnostics.losses.reconstruction.ratio=0", "diagnostics.losses.discriminator.below=1000")


def test_the_loss_checks_read_every_iteration_as_logged(tmp_path):
    metrics = run(compose_cfg(coarse_only(tmp_path, *LOSS_RUN)))
    run_dir = tmp_path / "run"
    logged = _logged(run_dir, "coarse")
    assert {"loss_d", "loss_g/pix", "loss_g/adv"} <= logged.keys()
    assert sorted(logged["loss_d"]) == list(range(12))  # one value per iteration
    record = json.loads((run_dir / "diagnostics" / "coarse.json").read_text())
    first, last = math.ceil(0.1 * 12), math.ceil(0.2 * 12)  # 2 and 3 iterations
    for term, values in logged.items():
        v = np.array([values[i] for i in range(12)])
        stats = record["terms"][term]
        assert stats["iterations"] == 12
        assert stats["first_mean"] == pytest.approx(v[:first].mean(), rel=1e-6), term
        assert stats["last_mean"] == pytest.approx(v[-last:].mean(), rel=1e-6), term
    d = np.array([logged["loss_d"][i] for i in range(12)])
    pix = np.array([logged["loss_g/pix"][i] for i in range(12)])
    found = {(w["check"], w["term"]): w for w in metrics["warnings"] if w["check"].endswith("_loss")}
    assert set(found) == {("discriminator_loss", "loss_d"), ("reconstruction_loss", "loss_g/pix")}
    assert found["discriminator_loss", "loss_d"]["value"] == pytest.approx(np.mean(d[-last:] < 1000))
    assert found["reconstruction_loss", "loss_g/pix"]["value"] == pytest.approx(
        pix[-last:].mean() / pix[:first].mean(), rel=1e-3)
    assert all(w["stage"] == "coarse" and w["row"] == "test" for w in found.values())
    assert record["warnings"] == [w for w in metrics["warnings"] if w.get("stage") == "coarse"]


def test_a_continued_stage_keeps_the_losses_before_its_restart(tmp_path):
    """A stage continued from its ``last.ckpt`` (iteration 10 of 12) has the history of the
    iterations before it (kept in the checkpoint's callback state): the same loss statistics as
    the uninterrupted stage. A resumed run whose stage had finished reads its warnings from
    ``diagnostics/<stage>.json``."""
    over = coarse_only(tmp_path / "whole", *LOSS_RUN, "attack.checkpoint_every=5")
    whole = run(compose_cfg(over))
    last = tmp_path / "whole" / "run" / "checkpoints" / "coarse" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 2 * 10
    continued = run(compose_cfg(coarse_only(tmp_path / "continued", *LOSS_RUN, f"attack.resume.coarse={last}")))
    records = [json.loads((tmp_path / d / "run" / "diagnostics" / "coarse.json").read_text())
               for d in ("whole", "continued")]
    for term, stats in records[0]["terms"].items():
        for key, value in stats.items():
            assert records[1]["terms"][term][key] == pytest.approx(value, rel=1e-5), (term, key)
    assert [w["check"] for w in continued["warnings"]] == [w["check"] for w in whole["warnings"]]

    # resumed after the stage had finished: the stage is loaded, its loss warnings read back
    (tmp_path / "whole" / "run" / "metrics.json").unlink()
    again = run(compose_cfg([*over, "resume=true"]))
    assert [w for w in again["warnings"] if w.get("stage")] == [w for w in whole["warnings"] if w.get("stage")]


# ------------------------------------------------------------------------------ W&B
def test_wandb_gets_the_warnings_in_the_summary_and_a_tag(tmp_path, monkeypatch):
    from tests.engine.test_tracking import _offline_runs, wandb_run_contents

    _constant(monkeypatch)
    metrics = run(compose_cfg(coarse_only(tmp_path, "logger=wandb")))
    (wandb_run,) = _offline_runs(tmp_path / "run")
    contents = wandb_run_contents(wandb_run)
    assert contents["summary"]["warnings"] == metrics["warnings"] != []
    assert contents["summary"]["warnings_count"] == len(metrics["warnings"])
    assert "flagged" in contents["tags"]


def test_wandb_summary_of_a_run_not_flagged(tmp_path, monkeypatch):
    from tests.engine.test_tracking import _offline_runs, wandb_run_contents

    _perfect(monkeypatch)
    run(compose_cfg(coarse_only(tmp_path, "logger=wandb")))
    contents = wandb_run_contents(_offline_runs(tmp_path / "run")[0])
    assert contents["summary"]["warnings"] == [] and contents["summary"]["warnings_count"] == 0
    assert "flagged" not in contents["tags"]


# ------------------------------------------------------------------------------ the real demo
@pytest.mark.slow  # ~60-90 s on one thread: the CFGAN demo's data and networks, 30 + 15 steps
def test_the_cfgan_demo_trained_30_plus_15_steps_is_flagged(tmp_path):
    """The default experiment cut to 30 coarse and 15 fine steps outputs one grey image for every
    input (the issue's collapsing run): the attack's row is flagged as input-independent, against
    its spread and against its shuffled-SIFT control."""
    metrics = run(compose_cfg([*base_overrides(tmp_path), "attack.steps.coarse=30", "attack.steps.fine=15",
                               "data.num_workers=0", "metrics.metrics=[mse,psnr,ssim]", "threat.stored=null"]))
    checks = {(w["row"], w["check"]) for w in metrics["warnings"]}
    assert {("test", "output_spread"), ("test", "shuffled_input")} <= checks, metrics["warnings"]
    assert (tmp_path / "run" / "diagnostics" / "coarse.json").is_file()
    assert (tmp_path / "run" / "diagnostics" / "fine.json").is_file()
