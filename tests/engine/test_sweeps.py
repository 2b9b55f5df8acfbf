"""Sweeps: a failed job does not stop the others; the sweep names it and exits non-zero."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from reconattack.engine.sweeps import (
    FAILURE_FILE,
    STATUS_FILE,
    SweepStatusCallback,
    record_failure,
    sweep_status,
)


def _job(root, num, overrides, metrics=True):
    d = root / str(num)
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if metrics:
        (d / "metrics.json").write_text('{"test/psnr": 1.0}')
    return d


def test_sweep_status_names_failed_and_unfinished_jobs(tmp_path, capsys):
    _job(tmp_path, 0, ["seed=0"])
    try:
        raise ValueError("internal bug\nsecond line")
    except ValueError as exc:
        record_failure(_job(tmp_path, 1, ["seed=1"], metrics=False), exc)
    _job(tmp_path, 2, ["seed=2"], metrics=False)  # killed: neither metrics nor failure record
    _job(tmp_path, 10, ["seed=10"])
    jobs = sweep_status(tmp_path)
    assert [j["status"] for j in jobs] == ["finished", "failed", "unfinished", "finished"]  # job order
    assert jobs[1]["error"] == "ValueError: internal bug second line"
    text = (tmp_path / "1" / FAILURE_FILE).read_text()
    assert "Traceback" in text and 'raise ValueError("internal bug' in text
    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    with pytest.raises(SystemExit) as stop:
        SweepStatusCallback().on_multirun_end(cfg)
    assert stop.value.code == 1
    out = capsys.readouterr().out
    assert "2 of 4 job(s) did not finish" in out and "[seed=1] failed: ValueError: internal bug" in out
    assert "[seed=2] unfinished" in out
    assert [j["status"] for j in json.loads((tmp_path / STATUS_FILE).read_text())][1] == "failed"


def test_a_sweep_without_failures_passes(tmp_path):
    _job(tmp_path, 0, ["seed=0"])
    SweepStatusCallback().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    assert json.loads((tmp_path / STATUS_FILE).read_text())[0]["status"] == "finished"
