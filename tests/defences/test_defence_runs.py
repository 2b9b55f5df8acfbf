"""Defences in runs: a two-point sweep and its report, what the attacker reads in a defended run
(every batch of its training and its test), the threat's refusal of another threat's defence, the
AVIH defence setting the threat's parameters."""

import json
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
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
    for keep in ("0.25", "1.0"):  # a row per strength (its label may carry a diagnostics flag: 2-step runs)
        assert re.search(rf"^\| CFGAN \(defence\.keep={re.escape(keep)}\)[^|]*\|", layout, re.M), layout
    assert "| mean training image |" in layout
    assert (tmp_path / "report_test_psnr.png").is_file() and "report_test_psnr.png" in report


def _batches_read(monkeypatch, tmp, *overrides: str) -> list[SimpleNamespace]:
    """Run the default experiment (coarse stage, tiny) with ``overrides`` in this process, and return
    every batch its attack read, as the data module handed it over: the stage (``train``, ``val``,
    ``test``), the items' indices and seeds, each item's keypoint count, descriptors, and the input
    maps."""
    from reconattack.data.sift_data import SiftDataModule

    seen: list[SimpleNamespace] = []
    real = SiftDataModule.on_after_batch_transfer

    def watching(self, batch, dataloader_idx):
        out = real(self, batch, dataloader_idx)
        stage = "train" if self.trainer.training else "test" if self.trainer.testing else "val"
        seen.append(SimpleNamespace(stage=stage, index=batch["index"].tolist(),
                                    seed=batch["seed"].tolist() if "seed" in batch else None,
                                    counts=[len(x) for x in batch["xy"]], desc=[d.clone() for d in batch["desc"]],
                                    maps=out["input"].detach().cpu().clone()))
        return out

    with monkeypatch.context() as m:
        m.setattr(SiftDataModule, "on_after_batch_transfer", watching)
        run(compose_cfg(coarse_only(tmp, "threat.stored.colmap=null", "threat.stored.colmap_native=null",
                                    *overrides)))
    return seen


def _blocks(maps: torch.Tensor) -> torch.Tensor:
    """(B, S, S): the map cells that hold a keypoint (a descriptor value d / 127.5 - 1 is never 0)."""
    return (maps != 0).any(1)


def test_the_attacker_trains_and_is_tested_on_defended_features(monkeypatch, tmp_path):
    """The batches that reach the attack's training and test steps of a run with ``defence=sift``
    hold the defended features: with ``keep=0.25`` a quarter of each image's keypoints (against the
    same image's in the run without a defence, batch by batch: the same seeds, the same images) and
    their map cells among the undefended map's; with ``descriptor_bits=2`` every descriptor value
    the middle of its 2-bit level; with ``positions_only`` +1 in every channel of every keypoint."""
    plain = _batches_read(monkeypatch, tmp_path / "plain")
    kept = _batches_read(monkeypatch, tmp_path / "kept", "defence=sift", "defence.keep=0.25",
                         "defence.descriptor_bits=2")
    positions = _batches_read(monkeypatch, tmp_path / "positions", "defence=sift", "defence.positions_only=true")
    stages = [b.stage for b in plain]
    assert "train" in stages and "test" in stages
    assert [b.stage for b in kept] == [b.stage for b in positions] == stages
    levels = {(32 + 64 * j) / 127.5 - 1 for j in range(4)}  # 2 bits: 32, 96, 160, 224
    for p, k, o in zip(plain, kept, positions):
        assert p.index == k.index == o.index and p.seed == k.seed == o.seed  # the same images, the same draws
        assert k.counts == [int(np.floor(0.25 * n + 0.5)) for n in p.counts] and o.counts == p.counts
        assert all(set(np.unique(d.numpy() // 64 * 64 + 32)) == set(np.unique(d.numpy())) for d in k.desc)
        assert not (_blocks(k.maps) & ~_blocks(p.maps)).any()  # a kept keypoint's cell holds one undefended too
        values = k.maps[k.maps != 0]
        assert all(any(abs(v - level) < 1e-6 for level in levels) for v in values.unique().tolist())
        torch.testing.assert_close(_blocks(o.maps), _blocks(p.maps))
        assert (o.maps[o.maps != 0] == 1).all() and (o.maps == 1).all(1)[_blocks(o.maps)].all()
    assert sum(sum(b.counts) for b in kept) < sum(sum(b.counts) for b in plain) / 2


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
