"""The collapse checks (reconattack/metrics/diagnostics.py) on synthetic tensors and loss histories:
each statistic against its definition written out with numpy, a flag where a collapse is and none
where the outputs read the input."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from reconattack.errors import ConfigError
from reconattack.metrics.diagnostics import (
    MARK,
    DiagnosticsConfig,
    OutputChecks,
    RowStatistics,
    loss_warnings,
    output_warnings,
    warning_lines,
    warnings_of,
)

CONF = Path(__file__).resolve().parents[2] / "conf" / "diagnostics" / "default.yaml"
CFG = DiagnosticsConfig()


def _images(n: int, seed: int = 0, size: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, size, size, generator=g) * 2 - 1).double()


def _stats(pred: torch.Tensor, target: torch.Tensor, paired: torch.Tensor | None = None,
           batches=(3, 1, 4, 2)) -> dict:
    """The statistics fed in uneven batches, as an evaluation pass feeds them."""
    m = RowStatistics(CFG.saturation_level)
    start = 0
    for b in batches:
        stop = min(start + b, len(pred))
        if stop > start:
            m.update(pred[start:stop], target[start:stop], None if paired is None else paired[start:stop])
        start = stop
    assert start == len(pred)
    return m.compute()


def _spread(x: np.ndarray, t: np.ndarray) -> float:
    """sqrt(mean over pixels of the across-image sample variance of x / the same of t)."""
    return math.sqrt(x.reshape(len(x), -1).var(0, ddof=1).mean() / t.reshape(len(t), -1).var(0, ddof=1).mean())


def _pairwise(t: np.ndarray) -> float:
    """The mean squared distance per value of two different images, over every ordered pair."""
    n = len(t)
    flat = t.reshape(n, -1)
    return float(np.mean([np.mean((flat[i] - flat[j]) ** 2) for i in range(n) for j in range(n) if i != j]))


def test_the_statistics_are_their_definitions():
    target = _images(10, 0)
    pred = 0.3 * target + 0.1 * _images(10, 1)  # reads its input, at a smaller spread
    shuffled = torch.roll(pred, 1, 0)  # image i given image i-1's input, as the SIFT control does
    got = _stats(pred, target, shuffled)
    x, t, s = pred.numpy(), target.numpy(), shuffled.numpy()
    assert got["images"] == 10
    assert got["output_spread"] == pytest.approx(_spread(x, t), rel=1e-9)
    # the denominator is the mean squared distance of two different images: 2 V(t)
    v_t = t.reshape(10, -1).var(0, ddof=1).mean()
    assert _pairwise(t) == pytest.approx(2 * v_t, rel=1e-12)
    assert got["shuffled_input"] == pytest.approx(math.sqrt(np.mean((x - s) ** 2) / _pairwise(t)), rel=1e-9)
    assert got["saturation"] == pytest.approx(np.mean(np.abs(x) > 0.98))
    assert got["target_saturation"] == pytest.approx(np.mean(np.abs(t) > 0.98))


def test_one_image_for_every_input_is_flagged_and_names_the_row():
    target = _images(8, 0)
    pred = torch.full_like(target, 0.2) + 1e-4 * _images(8, 1)  # nearly constant
    stats = _stats(pred, target, torch.roll(pred, 1, 0), batches=(5, 3))
    assert stats["output_spread"] == pytest.approx(_spread(pred.numpy(), target.numpy()), rel=1e-6)
    found = output_warnings("test", stats, CFG, "baseline/shuffled_sift")
    assert [(w["row"], w["check"]) for w in found] == [("test", "output_spread"), ("test", "shuffled_input")]
    for w in found:
        assert w["threshold"] == 0.1 and w["value"] < 1e-3
        assert f"{w['value']:.3g}"[:4] in w["message"] and "threshold 0.1" in w["message"]
    assert "baseline/shuffled_sift" in found[1]["message"]


def test_outputs_that_read_the_input_are_not_flagged():
    target = _images(12, 0)
    pred = (0.7 * target + 0.05 * _images(12, 1)).clamp(-1, 1)
    stats = _stats(pred, target, torch.roll(pred, 1, 0), batches=(4, 4, 4))
    assert stats["output_spread"] > 0.5 and stats["shuffled_input"] > 0.5
    assert output_warnings("test", stats, CFG, "baseline/shuffled_sift") == []


def test_saturation_is_flagged_beyond_the_images_own():
    target = _images(6, 0) * 0.9  # no value beyond 0.98
    target[:, :, :2] = -1.0  # a black band: a third of the values saturated in the images
    saturated = torch.sign(_images(6, 1))  # every value at ±1
    stats = _stats(saturated, target, batches=(6,))
    assert stats["target_saturation"] == pytest.approx(1 / 3)
    assert stats["saturation"] == 1.0
    found = [w for w in output_warnings("ours", stats, CFG) if w["check"] == "saturation"]
    assert len(found) == 1 and found[0]["row"] == "ours"
    assert found[0]["threshold"] == pytest.approx(1 / 3 + 0.25, abs=1e-4)
    # the images' own band reproduced, nothing more: not flagged
    assert output_warnings("ours", _stats(target.clone(), target, batches=(6,)), CFG) == []


def test_nothing_is_checked_without_a_spread_to_compare_with():
    target = _images(1, 0)
    stats = _stats(target * 0, target, batches=(1,))  # one image: no variance
    assert math.isnan(stats["output_spread"]) and math.isnan(stats["shuffled_input"])
    assert output_warnings("test", stats, CFG) == []
    same = _images(1, 0).expand(4, -1, -1, -1).clone()  # targets that do not vary
    assert math.isnan(_stats(same * 0, same, batches=(4,))["output_spread"])


def test_the_callback_reads_the_rows_of_the_evaluation_groups():
    target = _images(6, 0)
    const = torch.zeros_like(target)
    checks = OutputChecks("test", "baseline/shuffled_sift", CFG)
    checks.on_test_epoch_start(None, None)
    for i in range(0, 6, 2):
        groups = {"test/": {"pred": const[i:i + 2], "target": target[i:i + 2]},
                  "baseline/shuffled_sift/": {"pred": const[i:i + 2], "target": target[i:i + 2]},
                  "baseline/mean_image/": {"pred": const[i:i + 2], "target": target[i:i + 2]}}
        checks.on_test_batch_end(None, None, {"groups": groups}, None, i)
    checks.on_test_epoch_end(None, None)
    assert checks.stats["images"] == 6 and checks.stats["output_spread"] == 0.0
    assert {w["check"] for w in checks.warnings()} == {"output_spread", "shuffled_input"}
    assert {w["row"] for w in checks.warnings()} == {"test"}  # the mean-image control is not checked
    empty = OutputChecks("test", None, CFG)  # no attack row in the pass: nothing
    empty.on_test_epoch_start(None, None)
    empty.on_test_batch_end(None, None, {"groups": {"baseline/mean_image/": {"pred": const, "target": target}}},
                            None, 0)
    empty.on_test_epoch_end(None, None)
    assert empty.warnings() == []


# ------------------------------------------------------------------------------ losses
def _glead_like(n: int = 400) -> dict[str, np.ndarray]:
    """The issue's GleaD run: L1 from 0.30 up to 0.89 and staying; the discriminator's loss
    down to 0.002 after a quarter of the stage."""
    i = np.arange(n)
    l1 = np.where(i < 50, 0.30, 0.89) + 0.01 * np.sin(i)
    d = np.where(i < 100, 1.3, 0.002)
    return {"loss_d": d, "loss_g/l1": l1, "loss_g/adv": np.where(i < 100, 0.7, 9.0)}


def test_a_discriminator_that_wins_and_a_rising_reconstruction_are_flagged():
    history = _glead_like()
    found = loss_warnings("glead", history, CFG, "test")
    assert [(w["check"], w["term"]) for w in found] == [("discriminator_loss", "loss_d"),
                                                          ("reconstruction_loss", "loss_g/l1")]
    assert all(w["row"] == "test" and w["stage"] == "glead" for w in found)
    n, first, last = 400, math.ceil(0.1 * 400), math.ceil(0.2 * 400)  # 40 and 80 iterations
    d, l1 = history["loss_d"], history["loss_g/l1"]
    assert found[0]["value"] == pytest.approx(np.mean(d[n - last:] < 0.05)) and found[0]["threshold"] == 0.5
    ratio = l1[n - last:].mean() / l1[:first].mean()
    assert found[1]["value"] == pytest.approx(ratio, rel=1e-3) and found[1]["threshold"] == 1.25
    assert "stage glead" in found[1]["message"] and f"{ratio:.2f}x" in found[1]["message"]


def test_a_healthy_stage_is_not_flagged():
    i = np.arange(300)
    rng = np.random.default_rng(0)
    history = {"loss_d": 1.2 + 0.2 * rng.standard_normal(300),  # around the game's balance
               "loss_g/pix": 0.5 * np.exp(-i / 80) + 0.1 + 0.01 * rng.standard_normal(300),
               "loss_g/adv": 0.8 + 0.1 * rng.standard_normal(300)}
    assert loss_warnings("coarse", history, CFG, "test") == []
    # a stage that starts where it ends (initialised from a trained one): flat, with noise
    flat = {"loss_g/pix": 0.12 + 0.01 * rng.standard_normal(250)}
    assert loss_warnings("fine", flat, CFG, "test") == []


def test_the_loss_windows_and_their_limits():
    n = 60
    # the discriminator below 0.05 on 6 of the last 12 iterations: 50 %, flagged (>= share)
    d = np.full(n, 1.0)
    d[n - 12:n - 6] = 0.01
    (w,) = loss_warnings("s", {"loss_d": d}, CFG, "test")
    assert w["value"] == 0.5
    d[n - 7] = 1.0  # 5 of 12: not
    assert loss_warnings("s", {"loss_d": d}, CFG, "test") == []
    # NaN (a term not logged on every iteration) is left out of the windows
    rec = np.full(n, np.nan)
    rec[:6] = 0.4  # first 6 iterations
    rec[-12:] = [0.5] * 11 + [np.nan]
    (w,) = loss_warnings("s", {"loss_g/pix": rec}, CFG, "test")
    assert w["value"] == pytest.approx(0.5 / 0.4)
    # names the checks do not know are left alone; a short stage is not checked
    assert loss_warnings("s", {"loss_g/per": rec}, CFG, "test") == []
    assert loss_warnings("s", {k: v[:49] for k, v in _glead_like(49).items()}, CFG, "test") == []


# ------------------------------------------------------------------------------ settings, lines
def test_the_config_file_holds_the_defaults_and_bad_settings_are_refused():
    assert DiagnosticsConfig.of(yaml.safe_load(CONF.read_text())) == DiagnosticsConfig()
    assert DiagnosticsConfig.of({"losses": {"discriminator": {"terms": "d_loss"}}}).discriminator_terms == ("d_loss",)
    assert DiagnosticsConfig.of({"enabled": False}).enabled is False
    with pytest.raises(ConfigError, match="diagnostics.outputs.sprad"):
        DiagnosticsConfig.of({"outputs": {"sprad": 0.1}})
    with pytest.raises(ConfigError, match="diagnostics.outputs.spread must be a number >= 0"):
        DiagnosticsConfig.of({"outputs": {"spread": -1}})
    with pytest.raises(ConfigError, match="diagnostics.enabled must be true or false"):
        DiagnosticsConfig.of({"enabled": "no"})
    with pytest.raises(ConfigError, match="diagnostics.losses.last"):
        DiagnosticsConfig.of({"losses": {"first": 0.5, "last": 0.6}})


def test_the_console_lines():
    metrics = {"test/psnr": 5.7, "warnings": [
        {"row": "test", "check": "output_spread", "value": 0.01, "threshold": 0.1, "message": "one image"}]}
    lines = warning_lines(metrics)
    assert lines[0] == f"{MARK} test: one image"
    assert "1 warning(s)" in lines[1] and "not read them as the method's result" in lines[1]
    assert warning_lines({"test/psnr": 5.7, "warnings": []}) == [] == warning_lines({"test/psnr": 5.7})
    assert warnings_of(metrics, "test") == metrics["warnings"] and warnings_of(metrics, "other") == []
    from reconattack.run import summary

    text = summary(metrics)
    assert "  test/psnr: 5.7" in text and f"  {MARK} test: one image" in text and "warnings:" not in text
