"""Defences in runs: a two-point sweep and its report, the threat's refusal of another threat's
defence, the AVIH defence setting the threat's parameters."""

import json

import pytest
from omegaconf import OmegaConf

from reconattack.defences.avih import avih_defence
from reconattack.engine.runner import build_threat
from reconattack.errors import ConfigError
from reconattack.report import write_reports
from reconattack.run import run
from tests.helpers import coarse_only, compose_cfg
from tests.test_run import CLI_TINY, _cli


def test_a_two_point_keep_sweep_and_its_report(tmp_path):
    """``-m defence=sift defence.keep=1.0,0.25``: two runs, each trained and tested through its
    defence, and a report with a row per strength and the metrics against it."""
    res = _cli("-m", "defence=sift", "defence.keep=1.0,0.25", *CLI_TINY, "attack.stages=[coarse]",
               f"hydra.sweep.dir={tmp_path}", env_extra={"RECONATTACK_CACHE": str(tmp_path / "cache")})
    assert res.returncode == 0, res.stderr[-3000:]
    for job, keep in (("0", 1.0), ("1", 0.25)):
        assert OmegaConf.load(tmp_path / job / ".hydra" / "config.yaml").defence.keep == keep
        assert isinstance(json.loads((tmp_path / job / "metrics.json").read_text())["test/psnr"], float)
    write_reports(tmp_path)  # python -m reconattack.report DIR
    report = (tmp_path / "report.md").read_text()
    layout = report[report.index("## Paper layout"):]
    assert "| CFGAN (defence.keep=0.25) |" in layout and "| CFGAN (defence.keep=1.0) |" in layout
    assert "| mean training image |" in layout
    assert (tmp_path / "report_test_psnr.png").is_file() and "report_test_psnr.png" in report


def test_a_threat_refuses_another_threats_defence(tmp_path):
    with pytest.raises(ConfigError, match="defence=avih does not apply to the sift threat"):
        run(compose_cfg(coarse_only(tmp_path, "defence=avih")))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_the_avih_defence_sets_the_vc_weight_and_the_key_share(tmp_path):
    cfg = compose_cfg(["+experiment=demo_avih", "defence=avih", "defence.vc_weight=30", "defence.key_share=0.1",
                       f"paths.cache_dir={tmp_path}"])
    threat = build_threat(cfg)
    assert threat.encrypt_cfg.loss.vc == 30.0 and threat.key_share == 0.1
    assert cfg.threat.encrypt.loss.vc == 3.0  # the config itself is left as it is
    same = build_threat(compose_cfg(["+experiment=demo_avih", "defence=avih", f"paths.cache_dir={tmp_path}"]))
    assert same.encrypt_cfg.loss.vc == 3.0 and same.key_share == 0.7  # null: the threat's own
    enc = OmegaConf.create({"loss": {"vc": 3.0}})
    assert avih_defence({"name": "none", "vc_weight": 9}, enc, 0.1) == (enc, 0.1)
    for bad in ({"name": "avih", "vc_weight": -1}, {"name": "avih", "vc": 1}):
        with pytest.raises(ConfigError):
            avih_defence(bad, enc, 0.1)
