"""End-to-end: configs compose, every experiment runs a fast_dev_run on CPU, CLI errors are clear."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reconattack.run import run
from tests.helpers import CONF_DIR, compose_cfg, make_image_folder, make_lmdb, tiny_overrides

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.stem for p in Path(CONF_DIR, "experiment").glob("cfgan_*.yaml"))  # AVIH: tests/attacks
PAPER_TINY = [  # paper depth, tiny widths: keeps the structure, runs in seconds
    "model.coarse.enc_channels=[8,8,8,8,8,8]",
    "model.coarse.dec_channels=[8,8,8,8,8,8]",
    "model.discriminator.stem=4",
    "model.discriminator.channels=[4,4,4,4,4,4]",
]


@pytest.fixture(scope="module")
def paper_data(tmp_path_factory):
    """The layouts the paper experiments expect under paths.data_dir: folders and LSUN LMDBs."""
    root = tmp_path_factory.mktemp("data")
    make_image_folder(root / "celebahq", n=10, size=72)
    make_image_folder(root / "ffhq", n=4, size=300, seed=3)
    make_lmdb(root / "lsun" / "bird", n=10, size=80)
    make_image_folder(root / "lsun" / "dining_room", n=10, size=64, seed=5)
    return root


def test_default_config_is_the_cpu_demo():
    cfg = compose_cfg()
    assert cfg.attack.name == "cfgan" and cfg.data.source.kind == "lfw_faces"
    assert cfg.trainer.accelerator == "cpu" and cfg.loss.per == 0
    assert list(cfg.attack.stages) == ["coarse", "fine"]


def test_paper_experiment_settings():
    cfg = compose_cfg(["+experiment=cfgan_lsun_bird"])
    assert cfg.data.image_size == 256 and cfg.data.batch_size == 8 and cfg.data.compress
    assert cfg.attack.optimizer.lr == 1e-4 and list(cfg.attack.optimizer.betas) == [0.9, 0.999]
    assert (cfg.loss.pix, cfg.loss.per, cfg.loss.adv, cfg.loss.sift) == (1.0, 0.01, 0.02, 0.01)
    assert list(cfg.model.coarse.enc_channels) == [256, 512, 512, 512, 512, 512]
    assert cfg.data.max_images == 50000 and cfg.data.source.path.endswith("lsun/bird")
    # command-line choices win over the experiment's
    assert compose_cfg(["+experiment=cfgan_lsun_bird", "trainer=cpu"]).trainer.accelerator == "cpu"


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_runs_fast_dev_run(name, paper_data, tmp_path):
    overrides = [f"+experiment={name}", *tiny_overrides(tmp_path), *PAPER_TINY,
                 f"paths.data_dir={paper_data}"]
    if name == "cfgan_ffhq_eval":  # needs a CelebA-HQ fine checkpoint: make one first
        first = run(compose_cfg(["+experiment=cfgan_celebahq", *tiny_overrides(tmp_path / "c"), *PAPER_TINY,
                                 f"paths.data_dir={paper_data}"]))
        assert "test/psnr" in first
        overrides.append(f"attack.fine_checkpoint={tmp_path / 'c' / 'run' / 'checkpoints' / 'fine.ckpt'}")
    cfg = compose_cfg(overrides)
    metrics = run(cfg)
    run_dir = tmp_path / "run"
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved.keys() == metrics.keys()
    for key in ("test/psnr", "test/ssim", "test/mse", "baseline/mean_image/psnr",
                "baseline/shuffled_sift/ssim"):
        assert isinstance(saved[key], float), key
    for key in ("test/fid", "test/lpips", "test/clip"):  # offline: reported missing, with a reason
        assert isinstance(saved[key], str) and saved[key].startswith("missing"), saved[key]
    assert (run_dir / "samples" / "test_grid.png").is_file()
    assert json.loads((run_dir / "split.json").read_text())["split"]["test"]
    if name != "cfgan_ffhq_eval":
        assert (run_dir / "checkpoints" / "coarse.ckpt").is_file()
        assert (run_dir / "checkpoints" / "fine.ckpt").is_file() == ("coarse_only" not in name)


def _cli(*args, env_extra=None, cwd=ROOT, timeout=300):
    env = dict(os.environ, RECONATTACK_OFFLINE="1", **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "reconattack.run", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_missing_data_stops_before_training_with_a_clear_message(tmp_path):
    res = _cli("+experiment=cfgan_lsun_bird", "trainer=cpu", "loss.per=0",
               f"hydra.run.dir={tmp_path / 'run'}", env_extra={"RECONATTACK_DATA": str(tmp_path / "nodata")})
    assert res.returncode != 0
    err = res.stdout + res.stderr
    assert str(tmp_path / "nodata" / "lsun" / "bird") in err and "data.mdb" in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_unknown_experiment_is_a_clear_error(tmp_path):
    res = _cli("+experiment=no_such_experiment", f"hydra.run.dir={tmp_path}")
    assert res.returncode != 0
    assert "no_such_experiment" in res.stderr and "cfgan_lsun_bird" in res.stderr


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    cfg = compose_cfg([*tiny_overrides(tmp_path), "attack.fine_checkpoint=/nonexistent/fine.ckpt"])
    with pytest.raises(FileNotFoundError, match="/nonexistent/fine.ckpt"):
        run(cfg)


def test_perceptual_loss_without_vgg_weights_is_refused_before_training(tmp_path):
    cfg = compose_cfg([*tiny_overrides(tmp_path), "loss.per=0.01"])
    from reconattack.utils.weights import MissingWeightsError

    with pytest.raises(MissingWeightsError, match="vgg19-dcbb9e9d.pth"):
        run(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_split_file_is_reused(tmp_path):
    first = compose_cfg([*tiny_overrides(tmp_path / "a"), "attack.stages=[coarse]", "seed=1"])
    run(first)
    split_file = tmp_path / "a" / "run" / "split.json"
    second = compose_cfg([*tiny_overrides(tmp_path / "b"), "attack.stages=[coarse]", "seed=2",
                          f"data.split_file={split_file}"])
    run(second)
    a = json.loads(split_file.read_text())["split"]
    b = json.loads((tmp_path / "b" / "run" / "split.json").read_text())["split"]
    assert a == b


CLI_TINY = ["attack.steps.coarse=2", "attack.steps.fine=2", "data.batch_size=4", "data.eval_batch_size=10",
            "loss.sift=0", "metrics.metrics=[mse,psnr,ssim]", "trainer.callbacks.progress=null",
            "attack.num_samples=2"]


@pytest.mark.parametrize("logger", ["csv", "tensorboard", "wandb", "none"])
def test_loggers(logger, tmp_path):
    cfg = compose_cfg([*tiny_overrides(tmp_path), f"logger={logger}", "attack.stages=[coarse]"])
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
    from reconattack.report import write_reports

    written = write_reports(tmp_path)
    table = (tmp_path / "report.md").read_text()
    assert "test/psnr" in table and "±" in table and "| 2 |" in table  # 2 seeds, one row
    assert not any(p.suffix == ".png" for p in written)  # only the seed varies: nothing to plot


def test_cli_ddp_cpu_two_processes(tmp_path):
    res = _cli("trainer=ddp_cpu", *CLI_TINY, f"hydra.run.dir={tmp_path / 'run'}",
               env_extra={"RECONATTACK_CACHE": str(tmp_path / "cache")}, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert isinstance(m["test/psnr"], float) and isinstance(m["baseline/shuffled_sift/psnr"], float)


def test_stage_checkpoints_and_resume(tmp_path):
    base = [*tiny_overrides(tmp_path / "a"), "attack.stages=[coarse]"]
    base = [o for o in base if "fast_dev_run" not in o]
    run(compose_cfg([*base, "attack.steps.coarse=4", "attack.checkpoint_every=2", "attack.controls=false"]))
    last = tmp_path / "a" / "run" / "checkpoints" / "coarse" / "last.ckpt"
    assert last.is_file()
    import torch

    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 8  # 4 D + 4 G steps
    resumed = [*tiny_overrides(tmp_path / "b"), "attack.stages=[coarse]", "attack.steps.coarse=6",
               "attack.controls=false", f"attack.resume.coarse={last}"]
    resumed = [o for o in resumed if "fast_dev_run" not in o]
    run(compose_cfg(resumed))
    final = torch.load(tmp_path / "b" / "run" / "checkpoints" / "coarse.ckpt", map_location="cpu",
                       weights_only=False)
    assert final["global_step"] == 12


def test_slurm_launcher_preset_composes():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["+launcher=slurm", "+experiment=cfgan_celebahq"],
                      return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.gpus_per_node == 2 and cfg.trainer.accelerator == "gpu"


def test_grad_clip_cosine_schedule_and_warm_start_options(tmp_path):
    cfg = compose_cfg([*tiny_overrides(tmp_path), "attack.grad_clip=0.5", "attack.lr_schedule=cosine",
                       "attack.fine_init_from_coarse=true"])
    assert isinstance(run(cfg)["test/psnr"], float)
    with pytest.raises(ValueError, match="lr_schedule"):
        run(compose_cfg([*tiny_overrides(tmp_path / "b"), "attack.lr_schedule=linear"]))
