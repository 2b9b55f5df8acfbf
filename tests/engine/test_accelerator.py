"""A run whose trainer needs devices this machine does not have (a paper experiment's
``trainer: gpu`` on a CPU machine, ``trainer=ddp``, more GPUs than are visible) is refused with
one line saying what to run instead, before the data, the caches or the artifacts are touched
(reconattack/engine/context.py: check_accelerator, called by the runner right after the config
checks)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import reconattack.run as cli
from reconattack.engine.context import check_accelerator
from reconattack.errors import ConfigError
from reconattack.run import run
from tests.helpers import base_overrides, compose_cfg, experiment_overrides

ROOT = Path(__file__).resolve().parents[2]
NO_GPU = "needs a CUDA GPU, none is visible"
ADVICE = "run with trainer=cpu (slow)"


def _visible(monkeypatch, cuda: int = 0, mps: bool = False) -> None:
    """What this process sees: ``cuda`` CUDA GPUs and an MPS device or not, whatever the machine."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


def _no_trainer(overrides: list[str]) -> list[str]:
    """``overrides`` without the test's ``trainer=cpu``: the experiment's own trainer."""
    return [o for o in overrides if o != "trainer=cpu"]


def test_a_paper_experiment_on_a_machine_without_a_gpu_is_refused_before_any_work(tmp_path, monkeypatch, caplog):
    """``avih_attack_lfw`` (its file sets ``trainer: gpu``), its data there, no GPU: exit 2 with
    the message, and nothing read or written (no cache, no run state). Without the check the same
    run loads the gallery, starts the encryption in the shared cache and then ends in Lightning's
    "No supported gpu backend found!", wrapped by Hydra (what the issue reported)."""
    from hydra.errors import InstantiationException

    from tests.helpers import make_experiment_data

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    _visible(monkeypatch, cuda=0)
    data = make_experiment_data(tmp_path / "data")
    checked, unchecked = tmp_path / "checked", tmp_path / "unchecked"
    with pytest.raises(SystemExit) as stop:
        cli.run_cli(compose_cfg(_no_trainer(experiment_overrides("avih_attack_lfw", checked, data))))
    assert stop.value.code == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].startswith("ConfigError: trainer.accelerator=gpu " + NO_GPU), errors
    assert ADVICE in errors[0]
    assert not (checked / "cache").exists() and not (checked / "run" / "state").exists()

    monkeypatch.setattr("reconattack.engine.runner.check_accelerator", lambda trainer_cfg: None)
    with pytest.raises(InstantiationException, match="No supported gpu backend found"):
        run(compose_cfg(_no_trainer(experiment_overrides("avih_attack_lfw", unchecked, data))))
    assert any(p.is_file() for p in (unchecked / "cache").rglob("*")), "the check prevents nothing here"


def test_the_gpu_experiments_are_refused_and_trainer_cpu_goes_on(tmp_path, monkeypatch):
    """Experiment files that set ``trainer: gpu`` (a SIFT, an AVIH and a re-identification one)
    are refused on a machine without a GPU, a demo is not; with ``trainer=cpu``, the advice
    given, the run goes on to the next check (here: the data, which is missing)."""
    from reconattack.data.images import DataNotFoundError

    _visible(monkeypatch, cuda=0)
    for name in ("cfgan_celebahq", "avih_encrypt_lfw", "avih_attack_market1501"):
        cfg = compose_cfg([f"+experiment={name}"])
        assert cfg.trainer.accelerator == "gpu", name
        with pytest.raises(ConfigError, match=NO_GPU):
            check_accelerator(cfg.trainer)
    check_accelerator(compose_cfg(["+experiment=demo_avih"]).trainer)

    over = ["+experiment=cfgan_celebahq", *_no_trainer(base_overrides(tmp_path, tmp_path / "nodata"))]
    with pytest.raises(ConfigError, match=NO_GPU):
        run(compose_cfg(over))
    with pytest.raises(DataNotFoundError, match="celebahq"):
        run(compose_cfg([*over, "trainer=cpu"]))


@pytest.mark.parametrize("trainer,cuda,mps,message", [
    (["trainer=gpu"], 0, False, "trainer.accelerator=gpu " + NO_GPU),
    (["trainer=ddp"], 0, False, "trainer.accelerator=gpu " + NO_GPU),
    (["trainer=ddp", "trainer.devices=2"], 1, False, "trainer.devices=2 needs 2 devices, 1 is visible; "
                                                     "run with trainer.devices=1"),
    (["trainer=gpu", "trainer.devices=[1]"], 1, False, "needs 2 devices, 1 is visible"),
    (["trainer=gpu", "trainer.devices='0,1,2'"], 2, False, "needs 3 devices, 2 are visible"),
    (["trainer=gpu", "trainer.accelerator=cuda"], 0, True, "trainer.accelerator=cuda " + NO_GPU),
    (["trainer=gpu", "trainer.accelerator=mps"], 0, False, "needs an Apple MPS device, none is visible"),
    (["trainer=ddp"], 1, False, None),  # devices -1: every visible GPU
    (["trainer=gpu"], 0, True, None),  # gpu is Apple's MPS device where there is no CUDA (Lightning's rule)
    (["trainer=cpu"], 0, False, None),
    (["trainer=ddp_cpu"], 0, False, None),
], ids=["gpu", "ddp", "ddp-2-of-1", "index-1-of-1", "3-of-2", "cuda-on-mac", "mps", "ddp-all", "gpu-mps", "cpu",
        "ddp_cpu"])
def test_the_trainer_is_checked_against_what_is_visible(trainer, cuda, mps, message, monkeypatch):
    _visible(monkeypatch, cuda=cuda, mps=mps)
    cfg = compose_cfg(trainer)
    if message is None:
        check_accelerator(cfg.trainer)
        return
    with pytest.raises(ConfigError) as err:
        check_accelerator(cfg.trainer)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_cli_names_the_experiment_that_chose_the_gpu(tmp_path):
    """As the issue's user met it: ``+experiment=cfgan_celebahq`` on a machine where no GPU is
    visible (``CUDA_VISIBLE_DEVICES=''`` hides any): exit 2, one line naming the experiment's
    trainer, no traceback and no Lightning error; nothing is read or written but Hydra's files."""
    env = {**os.environ, "RECONATTACK_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "",
           "RECONATTACK_DATA": str(tmp_path / "nodata"), "RECONATTACK_CACHE": str(tmp_path / "cache")}
    res = subprocess.run([sys.executable, "-m", "reconattack.run", "+experiment=cfgan_celebahq",
                          f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    err = res.stdout + res.stderr
    assert res.returncode == 2, err[-3000:]
    assert (f"ConfigError: +experiment=cfgan_celebahq sets trainer=gpu, which {NO_GPU} "
            f"(CUDA_VISIBLE_DEVICES=''); {ADVICE}") in err, err[-3000:]
    assert "Traceback" not in err and "Misconfiguration" not in err and "DataNotFoundError" not in err
    assert not (tmp_path / "cache").exists()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".hydra", "run.log"]
