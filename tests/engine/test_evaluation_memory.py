"""The final evaluation streams: its memory does not grow with the test set (issue: 23 GiB of
dense SIFT maps held at once for CelebA-HQ's 3,000 test images)."""

from __future__ import annotations

import gc

import pytest

import reconattack.engine.runner as runner
from reconattack.engine.context import RunContext
from tests.helpers import compose_cfg, experiment_overrides, make_image_folder, tensor_storages


def _peak_evaluation_bytes(tmp, n_test: int, monkeypatch, leak: bool = False) -> int:
    """Peak bytes of tensors allocated during the evaluation pass and alive after a test batch
    (sampled after every batch; what existed before the pass is not counted)."""
    make_image_folder(tmp / "data" / "celebahq", n=n_test + 4, size=72)
    cfg = compose_cfg([*experiment_overrides(None, tmp), "data=celebahq", "data.image_size=64",
                       "data.val=0", f"data.test={n_test}", "data.batch_size=2", "data.eval_batch_size=4",
                       "data.num_workers=0", "attack.stages=[coarse]", "metrics.metrics=[mse,psnr,ssim]"])
    ctx = RunContext(cfg, tmp / "run")
    threat, attack = runner.build_threat(cfg), runner.build_attack(cfg)
    threat.prepare(ctx)
    stage = attack.build_stage("coarse", threat, None)
    kept, peaks = [], []
    real = runner.Evaluator.test_step

    def measured(self, batch, batch_idx):
        out = real(self, batch, batch_idx)
        if leak:  # what the old code did: every batch's dense map held until the end
            kept.append(batch["input"])
        peaks.append(sum(v for k, v in tensor_storages().items() if k not in before))
        return out

    monkeypatch.setattr(runner.Evaluator, "test_step", measured)
    gc.collect()
    before = set(tensor_storages())
    metrics = runner.evaluate(ctx, threat, attack, stage)
    assert isinstance(metrics["test/psnr"], float) and len(peaks) == -(-n_test // 4)
    return max(peaks)


@pytest.mark.parametrize("leak", [False, True], ids=["streaming", "control: a leaking pass"])
def test_evaluation_memory_does_not_grow_with_the_test_set(tmp_path, monkeypatch, leak):
    small = _peak_evaluation_bytes(tmp_path / "small", 8, monkeypatch, leak)
    large = _peak_evaluation_bytes(tmp_path / "large", 64, monkeypatch, leak)
    print(f"peak evaluation tensors: 8 images {small / 2**20:.2f} MiB, 64 images {large / 2**20:.2f} MiB "
          f"(ratio {large / small:.3f})")
    if leak:  # the measurement sees a pass that keeps its batches
        assert large > 2 * small
    else:
        assert large <= 1.2 * small


@pytest.mark.slow
def test_peak_rss_of_the_evaluation_does_not_grow_with_the_test_set(tmp_path, capsys):
    """The process as a whole (benchmarks/eval_memory.py: ``python -m reconattack.run`` with
    ``attack.test_only=true``, 100 and 800 test images of 128 px, each run its own process): its
    peak resident memory stays within 10 % (glibc kept what the evaluation freed: +102 %, 1243 ->
    2507 MiB from 200 to 1,600 images, before the evaluation handed it back)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "eval_memory.py"
    spec = importlib.util.spec_from_file_location("eval_memory", path)
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    rc = probe.main(["--sizes", "100", "800", "--dir", str(tmp_path)])
    out = capsys.readouterr().out
    print(out)
    assert rc == 0, out
    assert "growth from 100 to 800 test images" in out
