"""The one runner: every experiment file composes and runs a fast_dev_run on CPU; the threat and
the attack are checked against each other before any work; CLI errors are clear; stage
checkpoints, test-only runs and resume; loggers, sweeps and DDP."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.errors import InstantiationException
from omegaconf import OmegaConf

import reconattack.run as cli
from reconattack.errors import ConfigError, UserError
from reconattack.run import run
from tests.helpers import (
    ATTACK_CONFIGS,
    EXPERIMENTS,
    base_overrides,
    coarse_only,
    compose_cfg,
    experiment_overrides,
    make_experiment_data,
    tiny_attack,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_experiment_data(tmp_path_factory.mktemp("data"))


def test_default_config_is_the_cpu_demo():
    cfg = compose_cfg()
    assert cfg.threat.name == "sift" and cfg.attack.name == "cfgan"
    assert cfg.data.source._target_.endswith("lfw_faces")
    assert cfg.trainer.accelerator == "cpu" and cfg.loss.per == 0
    assert list(cfg.attack.stages) == ["coarse", "fine"]


def test_paper_experiment_settings():
    cfg = compose_cfg(["+experiment=cfgan_lsun_bird"])
    assert cfg.data.image_size == 256 and cfg.data.batch_size == 8 and cfg.threat.compress
    assert cfg.threat.contrast_threshold == 0.03
    assert cfg.attack.optimizer.lr == 1e-4 and list(cfg.attack.optimizer.betas) == [0.9, 0.999]
    assert (cfg.loss.pix, cfg.loss.per, cfg.loss.adv, cfg.loss.sift) == (1.0, 0.01, 0.02, 0.01)
    assert list(cfg.model.coarse.enc_channels) == [256, 512, 512, 512, 512, 512]
    assert cfg.data.max_images == 50000 and cfg.data.source.path.endswith("lsun/bird")
    # command-line choices win over the experiment's
    assert compose_cfg(["+experiment=cfgan_lsun_bird", "trainer=cpu"]).trainer.accelerator == "cpu"
    assert not compose_cfg(["+experiment=cfgan_celebahq_no_compression"]).threat.compress


def test_every_attack_config_has_tiny_test_settings():
    """A new attack brings ``tiny(cfg)`` in tests/attacks/test_<module>.py, else its experiments
    could not be run by the tests."""
    for name in ATTACK_CONFIGS:
        cfg = compose_cfg([f"attack={name}"])
        if cfg.attack is not None:
            assert isinstance(tiny_attack(cfg), list), name


def _sweep_jobs(name: str) -> list[list[str]]:
    """The jobs of an experiment that sweeps by itself (hydra.mode MULTIRUN), else one job."""
    cfg = compose_cfg([f"+experiment={name}"], hydra_config=True)
    params = cfg.hydra.sweeper.get("params") or {}
    jobs = [[]]
    for key, values in params.items():
        jobs = [job + [f"{key}={v}"] for job in jobs for v in str(values).split(",")]
    return jobs


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_runs_fast_dev_run(name, data_dir, tmp_path):
    for i, job in enumerate(_sweep_jobs(name)):
        tmp = tmp_path / str(i)
        extra = list(job)
        composed = compose_cfg([f"+experiment={name}", *job])
        if composed.attack is not None and composed.attack.test_only:
            extra.append(_trained_checkpoint(name, job, composed, data_dir, tmp))
        cfg = compose_cfg([*experiment_overrides(name, tmp, data_dir, extra), "+trainer.fast_dev_run=1"])
        metrics = run(cfg)
        run_dir = tmp / "run"
        saved = json.loads((run_dir / "metrics.json").read_text())
        assert saved.keys() == metrics.keys()
        row = cfg.threat.report.attack_row
        rows = [row] * (cfg.attack is not None) + [c.row for c in cfg.threat.report.controls.values()]
        for prefix in rows:
            if prefix == "baseline/mean_image" and cfg.data.get("test") == 1.0:
                assert f"{prefix}/psnr" not in saved  # no training split: not applicable
                continue
            assert isinstance(saved[f"{prefix}/mse"], float), prefix
            assert isinstance(saved[f"{prefix}/psnr"], float) or saved[f"{prefix}/psnr"] == "inf", prefix
        for key, value in saved.items():  # offline: feature metrics are reported missing
            if key.endswith(("/fid", "/lpips", "/clip")):
                assert value.startswith("missing: "), (key, value)
        assert (run_dir / "samples" / "test_grid.png").is_file()
        if cfg.attack is not None and not cfg.attack.test_only:
            for stage in cfg.attack.stages:
                assert (run_dir / "checkpoints" / f"{stage}.ckpt").is_file(), stage


def _trained_checkpoint(name: str, job: list[str], composed, data_dir: Path, tmp: Path) -> str:
    """For a test-only experiment (e.g. FFHQ with a CelebA-HQ model): train the same experiment on
    half of its test images first; returns the ``attack.checkpoints.<final stage>=PATH`` override."""
    final = composed.attack.stages[-1]
    train = ["attack.test_only=false", f"attack.checkpoints.{final}=null", "data.test=0.5"]
    run(compose_cfg([*experiment_overrides(name, tmp / "train", data_dir, [*job, *train]),
                     "+trainer.fast_dev_run=1"]))
    return f"attack.checkpoints.{final}={tmp / 'train' / 'run' / 'checkpoints' / f'{final}.ckpt'}"


# ------------------------------------------------------------------------- threat x attack
def test_an_attack_that_cannot_read_the_leak_is_refused_before_any_work(tmp_path):
    cfg = compose_cfg(["+experiment=demo_avih", "attack=cfgan_demo", *base_overrides(tmp_path)])
    with pytest.raises(ConfigError) as err:
        run(cfg)
    msg = str(err.value)
    assert "'cfgan' cannot run on threat 'avih'" in msg and "sift_map" in msg and "encrypted_images" in msg
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run" / "checkpoints").exists()


def test_nothing_in_the_runner_names_an_attack_or_a_threat():
    names = {"cfgan", "avih", "ivr", "inv", "sift", "dr", "encrypt", "coarse", "fine"}
    pkg = ROOT / "reconattack"
    modules = [pkg / "run.py", pkg / "profile.py", *sorted((pkg / "engine").glob("*.py")),
               *sorted((pkg / "report").glob("*.py"))]
    assert len(modules) > 12
    for module in modules:
        code = module.read_text().lower()
        code = "\n".join(line for line in code.splitlines() if not line.strip().startswith("#"))
        body = code.split('"""', 2)[-1]  # after the module docstring
        import re

        for name in names:
            hits = [m.group(0) for m in re.finditer(rf"[\"'.]{name}[\"'_/.]", body)]
            assert not hits, (module, name, hits[:3])


# ----------------------------------------------------------------------------- checkpoints
def test_stage_checkpoints_resume_and_test_only(tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        run(compose_cfg([*coarse_only(tmp_path / "a"), "attack.steps.coarse=4", "attack.checkpoint_every=2"]))
    assert "weights_only` was not set" not in caplog.text  # every save says what it saves
    last = tmp_path / "a" / "run" / "checkpoints" / "coarse" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 8  # 4 D + 4 G steps
    run(compose_cfg([*coarse_only(tmp_path / "b"), "attack.steps.coarse=6", f"attack.resume.coarse={last}"]))
    final = torch.load(tmp_path / "b" / "run" / "checkpoints" / "coarse.ckpt", map_location="cpu",
                       weights_only=True)
    assert final["global_step"] == 12
    # test only: the trained stage is loaded, not trained again, and gives the same numbers
    ckpt = tmp_path / "b" / "run" / "checkpoints" / "coarse.ckpt"
    first = json.loads((tmp_path / "b" / "run" / "metrics.json").read_text())
    again = run(compose_cfg([*coarse_only(tmp_path / "c"), "attack.test_only=true",
                             f"attack.checkpoints.coarse={ckpt}"]))
    assert again["test/psnr"] == pytest.approx(first["test/psnr"], abs=1e-4)
    assert not (tmp_path / "c" / "run" / "checkpoints" / "coarse.ckpt").exists()


def test_a_nan_loss_stops_the_run_naming_the_step_and_term_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    from reconattack.attacks.cfgan import CFGANStage
    from reconattack.errors import NonFiniteLossError

    real = CFGANStage.generator_losses

    def diverges(self, batch, fake):
        terms = real(self, batch, fake)
        if self.global_step // self.optimizer_steps_per_iteration >= 3:  # from iteration 3 on
            terms["pix"] = terms["pix"] * float("nan")
            terms["total"] = terms["total"] + terms["pix"]
        return terms

    monkeypatch.setattr(CFGANStage, "generator_losses", diverges)
    cfg = compose_cfg([*coarse_only(tmp_path), "attack.steps.coarse=6", "attack.checkpoint_every=2"])
    with pytest.raises(NonFiniteLossError) as err:
        run(cfg)
    msg = str(err.value)
    print(msg)
    assert "coarse" in msg and "iteration 3 " in msg and "loss_g/pix=nan" in msg and "loss_g/total=nan" in msg
    last = tmp_path / "run" / "checkpoints" / "coarse" / "last.ckpt"
    assert str(last) in msg and "attack.resume.coarse" in msg
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert state["global_step"] == 4  # iterations 0-1 (D + G steps); iteration 2 had no checkpoint
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())
    assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.parametrize("override, message", [
    ("+model.coarse.enc_chanels=[8,8]", "model.coarse.enc_chanels: reconattack.models.cfgan.CoarseGenerator does "
                                        "not take 'enc_chanels' (in its config); it takes: in_ch, enc_channels"),
    ("+attack.stepz=3", "attack.stepz: reconattack.attacks.cfgan.CFGAN does not take 'stepz'"),
    ("+data.batchsize=3", "data.batchsize: reconattack.data.sift_data.SiftDataModule does not take 'batchsize'"),
    ("loss.adv=-0.1", "loss settings must be >= 0 (weights, sizes), got loss.adv=-0.1"),
    ("data.image_size=96", "discriminator: 4 levels take 96px to 6px"),
    ("data.batch_size=500", "data.batch_size=500 is larger than the 80 training images"),
    ("attack.steps.coarse=0", "attack.steps must be >= 1"),
    # config values that become parts of paths cannot leave the run directory
    ("attack.name=../../escape", "attack.name='../../escape' becomes part of file paths"),
    ("threat.name=/tmp/x", "threat.name='/tmp/x' becomes part of file paths"),
])
def test_bad_configuration_is_refused_before_any_work(override, message, tmp_path):
    with pytest.raises(ConfigError, match=re.escape(message)):
        run(compose_cfg([*coarse_only(tmp_path), override]))
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing trained


def test_test_only_needs_the_final_stage(tmp_path):
    cfg = compose_cfg([*experiment_overrides(None, tmp_path), "attack.test_only=true"])
    with pytest.raises(ConfigError, match="attack.checkpoints.fine"):
        run(cfg)


def test_a_checkpoint_of_another_model_names_the_keys(tmp_path):
    run(compose_cfg(coarse_only(tmp_path / "a")))
    ckpt = tmp_path / "a" / "run" / "checkpoints" / "coarse.ckpt"
    cfg = compose_cfg([*coarse_only(tmp_path / "b"), "model.coarse.enc_channels=[8,8,8,16]",
                       "model.coarse.dec_channels=[16,8,8,8]", f"attack.checkpoints.coarse={ckpt}"])
    with pytest.raises(ValueError, match=r"does not fit CFGANStage: .*shape mismatches"):
        run(cfg)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    cfg = compose_cfg([*experiment_overrides(None, tmp_path), "attack.checkpoints.fine=/nonexistent/fine.ckpt"])
    with pytest.raises(FileNotFoundError, match="/nonexistent/fine.ckpt"):
        run(cfg)


def test_perceptual_loss_without_vgg_weights_is_refused_before_training(tmp_path):
    cfg = compose_cfg([*experiment_overrides(None, tmp_path), "loss.per=0.01"])
    from reconattack.utils.weights import MissingWeightsError

    with pytest.raises(MissingWeightsError, match="vgg19-dcbb9e9d.pth"):
        run(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_split_file_is_reused_and_the_run_seed_does_not_change_the_split(tmp_path):
    run(compose_cfg([*coarse_only(tmp_path / "a"), "seed=1"]))
    split_file = tmp_path / "a" / "run" / "split.json"
    run(compose_cfg([*coarse_only(tmp_path / "b"), "seed=2", "data.selection_seed=5",
                     f"data.split_file={split_file}"]))
    a = json.loads(split_file.read_text())["split"]
    b = json.loads((tmp_path / "b" / "run" / "split.json").read_text())["split"]
    assert a == b
    run(compose_cfg([*coarse_only(tmp_path / "c"), "seed=2"]))  # another run seed: same split
    assert json.loads((tmp_path / "c" / "run" / "split.json").read_text())["split"] == a
    run(compose_cfg([*coarse_only(tmp_path / "d"), "seed=1", "data.selection_seed=1"]))
    assert json.loads((tmp_path / "d" / "run" / "split.json").read_text())["split"] != a


def test_grad_clip_cosine_schedule_and_warm_start_options(tmp_path):
    cfg = compose_cfg([*experiment_overrides(None, tmp_path), "attack.grad_clip=0.5",
                       "attack.fine_init_from_coarse=true", "attack.steps.coarse=2", "attack.steps.fine=2",
                       "metrics.metrics=[mse,psnr,ssim]"])
    assert cfg.attack.lr_scheduler._target_.endswith("cosine_decay")
    assert isinstance(run(cfg)["test/psnr"], float)


# ---------------------------------------------------------------------------------- CLI
def _cli(*args, env_extra=None, cwd=ROOT, timeout=300):
    env = dict(os.environ, RECONATTACK_OFFLINE="1", **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "reconattack.run", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_missing_data_stops_before_training_with_a_clear_message(tmp_path):
    res = _cli("+experiment=cfgan_lsun_bird", "trainer=cpu", "loss.per=0",
               f"hydra.run.dir={tmp_path / 'run'}", env_extra={"RECONATTACK_DATA": str(tmp_path / "nodata")})
    assert res.returncode == 2
    err = res.stdout + res.stderr
    assert str(tmp_path / "nodata" / "lsun" / "bird") in err and "data.mdb" in err
    assert "Traceback" not in err and not (tmp_path / "run" / "checkpoints").exists()


def test_unknown_experiment_is_a_clear_error(tmp_path):
    res = _cli("+experiment=no_such_experiment", f"hydra.run.dir={tmp_path}")
    assert res.returncode != 0
    assert "no_such_experiment" in res.stderr and "cfgan_lsun_bird" in res.stderr


def _raising(exc: BaseException):
    def run_experiment(cfg, run_dir):  # stands in for reconattack.engine.runner.run_experiment
        raise exc
    return run_experiment


def _caused_by(outer: BaseException, cause: BaseException) -> BaseException:
    outer.__cause__ = cause  # as `raise outer from cause` leaves it
    return outer


@pytest.mark.parametrize("exc", [
    ConfigError("threat.x must be positive"),
    # what hydra.utils.instantiate raises for an error in a _target_'s constructor
    _caused_by(InstantiationException("Error in call to target 'x.Y':\nConfigError(...)"),
               ConfigError("threat.x must be positive")),
], ids=["direct", "wrapped-by-hydra"])
def test_a_user_error_is_one_line_and_exit_status_2(exc, tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(cli, "run_experiment", _raising(exc))
    with pytest.raises(SystemExit) as stop:
        cli.run_cli(compose_cfg(base_overrides(tmp_path)))
    assert stop.value.code == 2
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert [r.getMessage() for r in errors] == ["ConfigError: threat.x must be positive"]
    assert errors[0].exc_info is None  # no traceback
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")  # the full error on request
    with pytest.raises(InstantiationException if exc.__cause__ else ConfigError):
        cli.run_cli(compose_cfg(base_overrides(tmp_path)))


def test_a_real_config_error_exits_2_in_process(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    cfg = compose_cfg(["+experiment=demo_avih", "threat.key_share=1.5", *base_overrides(tmp_path)])
    with pytest.raises(SystemExit) as stop:
        cli.run_cli(cfg)
    assert stop.value.code == 2
    assert "ConfigError: threat.key_share must be in (0, 1], got 1.5" in caplog.text
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("exc", [
    ValueError("internal"),
    KeyError("internal"),
    _caused_by(InstantiationException("Error in call to target 'x.Y'"), ValueError("internal")),
    # a bug raised while handling a user error is still a bug
    _caused_by(RuntimeError("internal"), ConfigError("threat.x must be positive")),
], ids=["ValueError", "KeyError", "wrapped-ValueError", "RuntimeError-from-ConfigError"])
def test_an_internal_error_is_not_a_user_error_and_keeps_its_traceback(exc, tmp_path, monkeypatch,
                                                                        caplog):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(cli, "run_experiment", _raising(exc))
    with pytest.raises(type(exc)) as err:
        cli.run_cli(compose_cfg(base_overrides(tmp_path)))
    assert err.value is exc and not isinstance(err.value, UserError)
    assert err.traceback[-1].name == "run_experiment"  # raised where it happened, not re-made
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


CLI_TINY = ["attack.steps.coarse=2", "attack.steps.fine=2", "data.batch_size=4", "data.eval_batch_size=10",
            "metrics.metrics=[mse,psnr,ssim]", "trainer.callbacks.progress=null", "attack.num_samples=2"]


@pytest.mark.parametrize("logger", ["csv", "tensorboard", "wandb", "none"])
def test_loggers(logger, tmp_path):
    cfg = compose_cfg([*coarse_only(tmp_path), f"logger={logger}"])
    metrics = run(cfg)
    assert isinstance(metrics["test/psnr"], float)
    if logger == "wandb":  # no API key here: offline run files
        assert list((tmp_path / "run").rglob("offline-run-*"))


def test_cli_multirun_sweep(tmp_path):
    res = _cli("-m", "seed=0,1", *CLI_TINY, "attack.stages=[coarse]", f"hydra.sweep.dir={tmp_path}",
               env_extra={"RECONATTACK_CACHE": str(tmp_path / "cache")})
    assert res.returncode == 0, res.stderr[-3000:]
    for job in ("0", "1"):
        m = json.loads((tmp_path / job / "metrics.json").read_text())
        assert isinstance(m["test/psnr"], float)
        # the stored-features rows of conf/threat/sift.yaml (issue 21): COLMAP's SIFT, the images' own size
        assert all(isinstance(m[f"stored/{row}/psnr"], float) for row in ("colmap", "native", "colmap_native"))
    from reconattack.report import write_reports

    written = write_reports(tmp_path)
    table = (tmp_path / "report.md").read_text()
    assert "test/psnr" in table and "±" in table and "| 2 |" in table  # 2 seeds, one row
    # the attack's label may carry the collapse checks' mark: a 2-step run is flagged (test_diagnostics.py)
    assert "## Paper layout" in table and re.search(r"^\| CFGAN( ⚠)? \| ", table, re.M) and "| mean training image |" in table
    assert "| COLMAP SIFT, extracted at the test images' own size (a real database) (CFGAN) |" in table
    assert "psnr ↑" in table
    assert not any(p.suffix == ".png" for p in written)  # only the seed varies: nothing to plot


def test_a_failed_sweep_job_does_not_stop_the_others(tmp_path):
    """Job 0 fails (a config error), job 1 still runs; the sweep exits 1 naming job 0."""
    tiny = [o for o in CLI_TINY if not o.startswith("attack.steps.coarse=")]
    res = _cli("-m", "attack.steps.coarse=0,2", *tiny, "attack.stages=[coarse]", f"hydra.sweep.dir={tmp_path}",
               env_extra={"RECONATTACK_CACHE": str(tmp_path / "cache")})
    assert res.returncode == 1, res.stderr[-3000:]
    assert isinstance(json.loads((tmp_path / "1" / "metrics.json").read_text())["test/psnr"], float)
    failed = (tmp_path / "0" / "failed.txt").read_text()
    assert failed.startswith("ConfigError: attack.steps must be >= 1") and "Traceback" in failed
    assert "1 of 2 job(s) did not finish" in res.stdout and "[attack.steps.coarse=0" in res.stdout
    status = json.loads((tmp_path / "sweep_status.json").read_text())
    assert [j["status"] for j in status] == ["failed", "finished"]


def test_cli_ddp_cpu_two_processes(tmp_path):
    res = _cli("trainer=ddp_cpu", *CLI_TINY, f"hydra.run.dir={tmp_path / 'run'}",
               env_extra={"RECONATTACK_CACHE": str(tmp_path / "cache")}, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert isinstance(m["test/psnr"], float) and isinstance(m["baseline/shuffled_sift/psnr"], float)
    assert isinstance(m["stored/colmap_native/psnr"], float)


def test_slurm_launcher_preset_composes():
    cfg = compose_cfg(["+launcher=slurm", "+experiment=cfgan_celebahq"], hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.gpus_per_node == 2 and cfg.trainer.accelerator == "gpu"
    # what the DDP preset says the GAN steps need, on the launcher's GPUs
    assert cfg.trainer.strategy == "ddp_find_unused_parameters_true" and cfg.trainer.sync_batchnorm
    trainer = OmegaConf.to_container(cfg.trainer, resolve=False)  # ${hydra:...} resolves in a job
    assert trainer["devices"] == "${hydra:launcher.gpus_per_node}" and trainer["num_nodes"] == "${hydra:launcher.nodes}"


def test_demo_sift_baselines_writes_one_table(tmp_path):
    """One command trains CFGAN, IVR and INV on the demo faces (a multirun set by the experiment
    file) and prints one report: a row per attack, the mean-image control once, the shuffled-SIFT
    control per attack."""
    res = _cli("+experiment=demo_sift_baselines", "+trainer.fast_dev_run=1", "data.batch_size=4",
               "data.eval_batch_size=10", "metrics.metrics=[mse,psnr,ssim]", "trainer.callbacks.progress=null",
               f"hydra.sweep.dir={tmp_path / 'sweep'}", env_extra={"RECONATTACK_CACHE": str(tmp_path / "cache")},
               timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    report = (tmp_path / "sweep" / "report.md").read_text()
    assert report in res.stdout  # printed at the end of the sweep
    layout = report[report.index("## Paper layout"):]
    for attack in ("CFGAN", "IVR", "INV"):  # a label may carry the collapse mark: one step is no training
        assert re.search(rf"^\| {attack}( ⚠)? \|", layout, re.M), attack
    for row in ("| shuffled SIFT (another image's features) (CFGAN) |",
                "| shuffled SIFT (another image's features) (INV) |"):
        assert row in layout, row
    assert layout.count("| mean training image |") == 1
    assert "| row | ssim ↑ | psnr ↑ |" in layout
