"""Resuming a run (SPEC §8; reconattack/engine/resume.py, reconattack/data/sampling.py): the training
order as a function of the seed and the step, exact continuation from a stage's latest state,
real processes killed (SIGKILL) and preempted (SIGTERM) mid-stage and mid-encryption and then
resumed to the metrics of an uninterrupted run, the W&B run continued, a changed config refused.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from reconattack.data.sampling import ResumableSampler
from reconattack.engine.resume import rng_state, set_rng_state
from reconattack.errors import ConfigError
from reconattack.run import run
from reconattack.utils.checkpoints import AtomicCheckpointIO
from reconattack.utils.files import atomic_torch_save
from tests.helpers import coarse_only, compose_cfg, experiment_overrides

ROOT = Path(__file__).resolve().parents[2]
#: counts of what this process built (artifacts reused after a restart are not rebuilt)
BOOKKEEPING = ("artifacts/built",)


# ------------------------------------------------------------------------------ the order
@pytest.mark.parametrize("world", [1, 2])
def test_the_training_order_continues_at_any_batch_as_if_never_stopped(world):
    length, batch, epochs = 11, 2, 4

    def stream(rank: int, start: int) -> list:
        sampler = ResumableSampler(length, batch, seed=5, rank=rank, world_size=world, start_batch=start,
                                   item_seeds=True)
        out = []
        for epoch in range(epochs):  # Lightning sets the epoch before every iter()
            sampler.set_epoch(epoch)
            out += list(sampler)
        return out

    per_epoch = ResumableSampler(length, batch, world_size=world).batches_per_epoch
    assert per_epoch == (length // world) // batch
    shares = []
    for rank in range(world):
        full = stream(rank, 0)
        assert len(full) == epochs * per_epoch * batch
        for k in range(epochs * per_epoch + 1):  # every restart position, epoch boundaries included
            assert stream(rank, k) == full[k * batch:], (rank, k)
        shares.append(full)
    for epoch in range(epochs):  # the processes share each epoch without overlap
        taken = [i for share in shares for i, _ in share[epoch * per_epoch * batch:(epoch + 1) * per_epoch * batch]]
        assert len(taken) == len(set(taken))
    first = [i for i, _ in shares[0][:per_epoch * batch]]
    second = [i for i, _ in shares[0][per_epoch * batch:2 * per_epoch * batch]]
    assert first != second  # a new order every epoch
    assert stream(0, 0) == shares[0]  # a function of (seed, epoch) only
    seeds = [s for _, s in shares[0]]
    assert len(set(seeds)) == len(seeds) and all(0 <= s < 2**63 for s in seeds)


def test_random_states_travel_in_a_weights_only_checkpoint(tmp_path):
    state = rng_state()
    expected = (random.random(), float(np.random.rand()), torch.rand(3))
    atomic_torch_save({"rng": state}, tmp_path / "s.ckpt")
    loaded = torch.load(tmp_path / "s.ckpt", weights_only=True)["rng"]
    random.random(), np.random.rand(), torch.rand(7)  # the process goes on drawing
    set_rng_state(loaded)
    again = (random.random(), float(np.random.rand()), torch.rand(3))
    assert again[:2] == expected[:2] and torch.equal(again[2], expected[2])


def test_checkpoints_are_written_beside_their_target(tmp_path, monkeypatch):
    """Lightning's writer puts the temporary file in the system temp folder and moves it (a copy
    across disks); ours writes it beside the checkpoint and renames it."""
    used = []
    real = tempfile.mkstemp

    def spy(*args, **kwargs):
        used.append(Path(kwargs["dir"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", spy)
    target = tmp_path / "checkpoints" / "coarse" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"w": torch.ones(2)}, target)
    assert used == [target.parent]
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.ones(2))
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]


# ------------------------------------------------------------------------ exact continuation
def _weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _gan(tmp: Path, *extra: str) -> list[str]:
    # 80 training faces in batches of 16: 5 batches per epoch, 7 iterations cross an epoch
    return coarse_only(tmp, "data.batch_size=16", "attack.steps.coarse=7", *extra)


def test_a_stage_continued_from_its_latest_state_trains_as_if_never_stopped(tmp_path):
    """The final weights and metrics of a stage continued from its ``last.ckpt`` (mid-epoch:
    iteration 6; at an epoch's end: iteration 5) equal an uninterrupted run's: the same batches,
    augmentations, 2x2-block draws, optimiser states and random states."""
    reference = run(compose_cfg(_gan(tmp_path / "every3", "attack.checkpoint_every=3")))
    final = _weights(tmp_path / "every3" / "run" / "checkpoints" / "coarse.ckpt")
    run(compose_cfg(_gan(tmp_path / "every5", "attack.checkpoint_every=5")))
    for name, at in (("every3", 6), ("every5", 5)):
        last = tmp_path / name / "run" / "checkpoints" / "coarse" / "last.ckpt"
        assert torch.load(last, weights_only=True)["global_step"] == 2 * at  # D + G step per iteration
        resumed = run(compose_cfg(_gan(tmp_path / f"from_{at}", f"attack.resume.coarse={last}")))
        weights = _weights(tmp_path / f"from_{at}" / "run" / "checkpoints" / "coarse.ckpt")
        assert weights.keys() == final.keys()
        for key in final:
            torch.testing.assert_close(weights[key], final[key], rtol=0, atol=1e-6, msg=f"{at}: {key}")
        for key, value in reference.items():
            _assert_same(resumed[key], value, (at, key))


def test_resume_refuses_other_settings_and_a_finished_run_is_not_run_again(tmp_path, caplog):
    run(compose_cfg(coarse_only(tmp_path)))
    with pytest.raises(ConfigError, match=r"attack\.steps\.coarse: 2 -> 3"):
        run(compose_cfg(coarse_only(tmp_path, "attack.steps.coarse=3", "resume=true")))
    mtime = (tmp_path / "run" / "checkpoints" / "coarse.ckpt").stat().st_mtime_ns
    again = run(compose_cfg(coarse_only(tmp_path, "resume=true", "data.num_workers=0")))
    assert again == json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert (tmp_path / "run" / "checkpoints" / "coarse.ckpt").stat().st_mtime_ns == mtime


def test_a_resumed_run_continues_its_wandb_run(tmp_path, caplog):
    import logging

    with caplog.at_level(logging.WARNING):
        run(compose_cfg(coarse_only(tmp_path, "logger=wandb", "resume=true")))
    assert "holds no earlier run: starting from the beginning" in caplog.text
    first = json.loads((tmp_path / "run" / "state" / "logger.json").read_text())["version"]
    (tmp_path / "run" / "metrics.json").unlink()  # as if killed during the evaluation
    with caplog.at_level(logging.INFO):
        run(compose_cfg(coarse_only(tmp_path, "logger=wandb", "resume=true")))
    assert f"W&B: continuing run {first}" in caplog.text
    assert "stage coarse: finished before the run was resumed" in caplog.text
    runs = sorted((tmp_path / "run").rglob("offline-run-*"))
    assert len(runs) == 2 and all(p.name.endswith(f"-{first}") for p in runs), runs


# ---------------------------------------------------------------------- real processes
def _start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "RECONATTACK_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "reconattack.run", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(proc: subprocess.Popen, pattern: Path | str, root: Path | None = None, timeout: float = 300):
    """Poll until a file ``pattern`` exists (a glob below ``root`` when given)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        found = list(root.glob(str(pattern))) if root is not None else ([pattern] if Path(pattern).exists() else [])
        if found:
            return found
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (rc {proc.returncode}) before {pattern} appeared:\n"
                                 + proc.stdout.read()[-3000:])
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"{pattern} did not appear in {timeout} s")


def _finish(args: list[str], timeout: float = 600) -> str:
    proc = _start(args)
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def _assert_same_metrics(run_dir: Path, reference_dir: Path) -> None:
    got = json.loads((run_dir / "metrics.json").read_text())
    want = json.loads((reference_dir / "metrics.json").read_text())
    assert got.keys() == want.keys()
    for key, value in want.items():
        if key in BOOKKEEPING:
            continue
        _assert_same(got[key], value, key)


def _assert_same(got, want, key) -> None:
    """A metric to 1e-4; the collapse checks' warnings (a tiny run is flagged): the same checks of
    the same rows, their statistics to 1e-4 (a collapsed output's spread is at rounding level)."""
    if key == "warnings" or (isinstance(key, tuple) and key[-1] == "warnings"):
        ident = lambda ws: [{k: v for k, v in w.items() if k not in ("value", "message")} for w in ws]  # noqa: E731
        assert ident(got) == ident(want), key
        assert [w["value"] for w in got] == pytest.approx([w["value"] for w in want], abs=1e-4), key
    elif isinstance(want, float):
        assert got == pytest.approx(want, abs=1e-4), key
    else:
        assert got == want, key


def test_a_run_killed_mid_stage_resumes_to_the_uninterrupted_metrics(tmp_path, caplog):
    """SPEC §8 in the default suite (the two-stage kill and preemption below is ``slow``): a CLI
    process SIGKILLed during its training stage, after a ``last.ckpt`` and before the stage's
    end, then ``resume=true`` in its run directory: the stage continues from the kept state, and
    metrics.json and the final weights equal an uninterrupted run's. The uninterrupted and the
    resumed runs run in this process, on as many threads as the killed one."""
    import logging

    # 80 training faces in batches of 8: the continued stage crosses an epoch at iteration 10
    common = [*coarse_only(tmp_path, "attack.steps.coarse=12", "attack.checkpoint_every=2", "data.batch_size=8"),
              f"paths.cache_dir={tmp_path / 'cache'}"]
    over = lambda run_dir: [*[o for o in common if not o.startswith("paths.output_dir=")],  # noqa: E731
                            f"paths.output_dir={run_dir}"]
    reference, run_dir = tmp_path / "reference", tmp_path / "interrupted"
    run(compose_cfg(over(reference)))

    os.environ["OMP_NUM_THREADS"] = str(torch.get_num_threads())  # the killed run's threads, as here
    try:
        proc = _start([*over(run_dir), f"hydra.run.dir={run_dir}"])
    finally:
        del os.environ["OMP_NUM_THREADS"]
    last = run_dir / "checkpoints" / "coarse" / "last.ckpt"
    _wait_for(proc, last)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (run_dir / "checkpoints" / "coarse.ckpt").exists(), "killed after the stage: make it longer"
    killed_at = torch.load(last, weights_only=True)["global_step"]
    assert 0 < killed_at < 2 * 12  # a D and a G step per iteration

    with caplog.at_level(logging.INFO):
        run(compose_cfg([*over(run_dir), "resume=true"]))
    assert f"stage coarse: continuing from {last}" in caplog.text
    print(f"killed at global step {killed_at} of 24")
    _assert_same_metrics(run_dir, reference)
    # and the same network: at this size the metrics alone would not see a wrong batch order
    final, resumed = (_weights(d / "checkpoints" / "coarse.ckpt") for d in (reference, run_dir))
    assert resumed.keys() == final.keys()
    for key in final:
        torch.testing.assert_close(resumed[key], final[key], rtol=0, atol=1e-6, msg=key)


@pytest.mark.slow  # ~75 s: three CLI processes, two stages; the default suite kills a stage and an encryption
def test_a_killed_then_preempted_two_stage_run_resumes_to_the_uninterrupted_metrics(tmp_path):
    """SIGKILL during the coarse stage, then SIGTERM during the fine stage of the resumed run,
    then a second resume: the finished coarse stage is not trained again and metrics.json equals
    an uninterrupted run's."""
    common = [*experiment_overrides(None, tmp_path), "attack.steps.coarse=24", "attack.steps.fine=24",
              "attack.checkpoint_every=2", "data.batch_size=16", "metrics.metrics=[mse,psnr,ssim]",
              "loss.adv=0.002", "model.coarse.enc_channels=[8,8,8,8]", "model.coarse.dec_channels=[8,8,8,8]",
              "model.coarse.enc_mid=[8,8,8,8]", "model.fine.stem_mid=8", "model.discriminator.stem=4",
              "model.discriminator.channels=[4,4,4,4]", f"paths.cache_dir={tmp_path / 'cache'}"]
    reference = tmp_path / "reference"
    _finish([*common, f"hydra.run.dir={reference}"])

    run_dir = tmp_path / "interrupted"
    args = [*common, f"hydra.run.dir={run_dir}"]
    ckpt = run_dir / "checkpoints"
    proc = _start(args)
    _wait_for(proc, ckpt / "coarse" / "last.ckpt")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (ckpt / "coarse.ckpt").exists(), "killed after the coarse stage: make the stage longer"
    killed_at = torch.load(ckpt / "coarse" / "last.ckpt", weights_only=True)["global_step"]

    proc = _start([*args, "resume=true"])
    _wait_for(proc, ckpt / "fine" / "last.ckpt")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, out[-4000:]
    assert f"continuing from {ckpt / 'coarse' / 'last.ckpt'}" in out
    assert "stage fine stopped by SIGTERM at global step" in out
    assert (ckpt / "coarse.ckpt").is_file() and not (ckpt / "fine.ckpt").exists()
    preempted_at = torch.load(ckpt / "fine" / "last.ckpt", weights_only=True)["global_step"]
    coarse_written = (ckpt / "coarse.ckpt").stat().st_mtime_ns

    out = _finish([*args, "resume=true"])
    assert "stage coarse: finished before the run was resumed" in out
    assert f"continuing from {ckpt / 'fine' / 'last.ckpt'}" in out
    assert (ckpt / "coarse.ckpt").stat().st_mtime_ns == coarse_written
    print(f"killed at coarse global step {killed_at} of 48, preempted at fine global step "
          f"{preempted_at} of 48")
    _assert_same_metrics(run_dir, reference)


def test_a_run_killed_mid_encryption_continues_the_gallery_chunk_by_chunk(tmp_path):
    """SIGKILL while the AVIH gallery is being encrypted (after its first chunk), then
    ``resume=true``: the finished chunks are taken, the rest encrypted, and metrics.json equals
    an uninterrupted run's."""
    common = [*experiment_overrides("demo_avih", tmp_path), "data.gallery_size=24", "data.pool=12",
              "threat.key_share=0.5", "threat.encrypt.iterations=60", "threat.encrypt.batch_size=4",
              "attack.steps.attack=3"]
    reference = tmp_path / "reference"
    _finish([*common, f"hydra.run.dir={reference}", f"paths.cache_dir={tmp_path / 'cache_reference'}"])

    cache = tmp_path / "cache"
    run_dir = tmp_path / "interrupted"
    args = [*common, f"hydra.run.dir={run_dir}", f"paths.cache_dir={cache}"]
    proc = _start(args)
    chunks = _wait_for(proc, "artifacts/encrypted_gallery/.*.work/done-*.pt", root=cache)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not list(cache.glob("artifacts/encrypted_gallery/[!.]*")), "killed after the encryption"
    work = chunks[0].parent
    done = sum(len(torch.load(p, weights_only=True)["slot"]) for p in work.glob("done-*.pt"))

    out = _finish([*args, "resume=true"])
    assert f"continuing an interrupted build, {done} of 24 jobs were encrypted before" in out
    assert not work.exists()  # removed once the gallery is published
    print(f"killed with {done} of 24 jobs encrypted")
    _assert_same_metrics(run_dir, reference)


@pytest.mark.slow
def test_a_preempted_ddp_run_stops_every_process_after_the_same_step_and_resumes(tmp_path):
    """Two CPU processes (DDP, gloo): SIGTERM to the main process; both processes agree to stop
    after the same step, the state is saved once, the run exits 143, and ``resume=true`` ends
    with the metrics of an uninterrupted DDP run."""
    common = [*coarse_only(tmp_path, "attack.steps.coarse=30", "attack.checkpoint_every=2", "data.batch_size=16"),
              "trainer=ddp_cpu", "trainer.callbacks.progress=null", f"paths.cache_dir={tmp_path / 'cache'}"]
    common = [a for a in common if not a.startswith("paths.output_dir=")]
    reference = tmp_path / "reference"
    _finish([*common, f"hydra.run.dir={reference}"])
    run_dir = tmp_path / "preempted"
    args = [*common, f"hydra.run.dir={run_dir}"]
    proc = _start(args)
    _wait_for(proc, run_dir / "checkpoints" / "coarse" / "last.ckpt")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 128 + signal.SIGTERM, out[-4000:]
    assert out.count("stage coarse stopped by SIGTERM at global step") == 2  # both ranks, same step
    steps = {line.split("global step ")[1].split(";")[0] for line in out.splitlines()
             if "stopped by SIGTERM at global step" in line}
    assert len(steps) == 1, steps
    _finish([*args, "resume=true"])
    _assert_same_metrics(run_dir, reference)
