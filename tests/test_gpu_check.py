"""benchmarks/gpu_check.py (``make gpu-check``): its CPU smoke run, that it runs without the
framework's extra packages (a GPU machine may have PyTorch and Lightning only), that its paper
settings are the YAML configs', and its PASS / FAIL rule."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.helpers import CONF_DIR

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
EXTRAS = ("hydra", "omegaconf", "kornia", "lpips", "open_clip", "wandb")
COLUMNS = ["setting", "precision", "batch", "steps", "images/s", "ms/step", "peak GPU mem",
           "G loss (first -> last 10)", "vs fp32", "result"]
# 64 px: the smallest size the small CFGAN networks take
SMOKE = ["--small", "--image-size", "64", "--batch", "2", "--steps", "2", "--warmup", "1",
         "--device", "cpu"]


def _load():
    """The script as a module (``benchmarks`` is no package)."""
    if "gpu_check" not in sys.modules:
        spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
        mod = importlib.util.module_from_spec(spec)
        sys.modules["gpu_check"] = mod  # its dataclass looks itself up there
        spec.loader.exec_module(mod)
    return sys.modules["gpu_check"]


def _run(args: list[str], tmp_path: Path, prelude: str = "") -> subprocess.CompletedProcess:
    """The script in a subprocess (``prelude``: Python run before it), from ``tmp_path``."""
    code = f"{prelude}\nimport runpy, sys\nsys.argv = {[str(SCRIPT), *args]!r}\n" \
           f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)


def _rows(markdown: str) -> tuple[list[str], list[list[str]]]:
    lines = [ln for ln in markdown.splitlines() if ln.startswith("|")]
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    return cells[0], cells[2:]


@pytest.mark.slow
def test_cpu_smoke_run_prints_the_table(tmp_path):
    out = tmp_path / "res" / "check.md"
    proc = _run([*SMOKE, "--encrypt-iterations", "1", "--out", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    header, rows = _rows(proc.stdout)
    assert header == COLUMNS
    got = {(r[0], r[1]): r for r in rows}
    settings = ("cfgan-coarse", "cfgan-fine", "avih-dr")
    assert set(got) == {(s, p) for s in settings for p in ("32-true", "16-mixed", "bf16-mixed")} | {
        ("avih-encrypt", "32-true")}
    for s in settings:
        assert got[s, "16-mixed"][-1].startswith("SKIP: 16-mixed needs CUDA"), got[s, "16-mixed"]
        assert got[s, "32-true"][-1] == "ref" and got[s, "32-true"][8] == "ref"
        bf16 = got[s, "bf16-mixed"]
        assert bf16[-1] == "PASS" and bf16[8].endswith("%"), bf16
        assert float(bf16[4]) > 0 and bf16[6] == "n/a"  # images/s; no GPU memory on CPU
    assert got["avih-encrypt", "32-true"][-1].startswith("PASS: fp32 by design")
    # the same table in --out, the raw numbers beside it
    assert out.read_text().strip().endswith(proc.stdout.strip().splitlines()[-1])
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["final"] and len(data["rows"]) == 10
    assert data["environment"]["reconattack"] == str(ROOT / "reconattack")
    fp32 = next(r for r in data["rows"] if r["setting"] == "cfgan-coarse" and r["precision"] == "32-true")
    assert {"loss_g/pix", "loss_g/adv", "loss_g/total", "loss_d"} <= set(fp32["terms"])
    assert fp32["peak_mem_bytes"] is None and fp32["images_per_s"] > 0


def test_runs_without_hydra_kornia_lpips_open_clip_wandb(tmp_path):
    """What a bare GPU machine has: torch and Lightning, none of the framework's extras."""
    prelude = (f"import sys\nfor name in {EXTRAS!r}:\n    sys.modules[name] = None  # unimportable\n"
               f"import importlib.util\nassert importlib.util.find_spec('hydra') is None")
    proc = _run([*SMOKE, "--cfgan-stages", "coarse", "--precisions", "32-true,16-mixed",
                 "--encrypt-iterations", "0", "--steps", "1", "--warmup", "0", "--out", "c.md"],
                tmp_path, prelude)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _, rows = _rows(proc.stdout)
    assert [(r[0], r[1], r[-1].split(":")[0]) for r in rows] == [
        ("cfgan-coarse", "32-true", "ref"), ("cfgan-coarse", "16-mixed", "SKIP"),
        ("avih-dr", "32-true", "ref"), ("avih-dr", "16-mixed", "SKIP")]
    assert "sift 0: needs kornia" in proc.stdout  # --sift-loss auto without kornia
    assert f"Not installed (not needed here; the full framework needs them): {', '.join(EXTRAS)}" in proc.stdout
    assert json.loads((tmp_path / "c.json").read_text())["environment"]["reconattack"] == str(ROOT / "reconattack")


def test_paper_settings_are_the_configs():
    from hydra import compose, initialize_config_dir

    gc = _load()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cf = compose("config", overrides=["+experiment=cfgan_celebahq"])
        small = compose("config", overrides=["model=cfgan_small"])
        av = compose("config", overrides=["+experiment=avih_attack_lfw"])
        demo = compose("config", overrides=["+experiment=demo_avih"])

    def plain(node, drop=("_target_",)):
        d = OmegaConf.to_container(node, resolve=True)
        return {k: v for k, v in d.items() if k not in drop}

    for name, ref in (("paper", gc.CFGAN_PAPER), ("small", gc.CFGAN_SMALL)):
        cfg = cf if name == "paper" else small
        assert plain(cfg.model.coarse) == ref["coarse"], name
        assert plain(cfg.model.fine) == ref["fine"], name
        assert plain(cfg.model.discriminator, ("_target_", "image_size")) == ref["discriminator"], name
    assert cf.data.image_size == gc.CFGAN_PAPER["image_size"] and cf.data.batch_size == gc.CFGAN_PAPER["batch"]
    assert {k: cf.loss[k] for k in gc.CFGAN_PAPER["loss"]} == gc.CFGAN_PAPER["loss"]
    assert plain(cf.attack.optimizer, ("_target_", "_partial_")) == gc.CFGAN_PAPER["optimizer"]

    p = gc.AVIH_PAPER
    assert av.data.image_size == p["image_size"] and av.data.batch_size == p["batch"]
    assert plain(av.model.attacker.net) == p["attacker"]
    assert plain(av.model.discriminator) == p["discriminator"]
    assert plain(av.threat.service.net) == p["service"]
    assert plain(av.loss) == p["loss"]
    assert plain(av.attack.optimizer, ("_target_", "_partial_")) == p["optimizer"]
    assert plain(av.attack.optimizer_d, ("_target_", "_partial_")) == p["optimizer_d"]
    key = av.threat.key
    assert {"net": plain(key.net), "count": key.count, "seed": key.seed, "init": key.init} == p["key"]
    enc = av.threat.encrypt
    assert enc.batch_size == p["encrypt"]["batch"] and enc.optimizer.lr == p["encrypt"]["lr"]
    assert enc.init == p["encrypt"]["init"]
    assert {k: enc.loss[k] for k in p["encrypt"]["loss"]} == p["encrypt"]["loss"]
    assert plain(enc.loss.distances) == p["encrypt"]["distances"]

    s = gc.AVIH_SMALL  # the digits demo's networks
    assert plain(demo.model.attacker.net) == s["attacker"]
    assert plain(demo.model.discriminator) == s["discriminator"]
    assert plain(demo.threat.service.net) == {k: v for k, v in s["service"].items() if k != "dropout"}
    assert plain(demo.threat.key.net) == s["key"]["net"]
    assert demo.data.image_size == s["image_size"]


def test_judge_compares_mixed_precision_with_fp32():
    gc = _load()
    rows = [gc.Row("a", "16-mixed", 8, 3, loss=1.04), gc.Row("a", "32-true", 8, 3, loss=1.0),
            gc.Row("a", "bf16-mixed", 8, 3, loss=0.9), gc.Row("b", "bf16-mixed", 8, 3, loss=2.0),
            gc.Row("a", "bf16-mixed", 8, 3, skip="no bf16"), gc.Row("a", "16-mixed", 8, 3, error="boom"),
            gc.Row("c", "32-true", 8, 3, loss=float("nan")), gc.Row("c", "bf16-mixed", 8, 3, loss=1.0)]
    gc.judge(rows, 0.05)
    assert [r.status for r in rows] == ["PASS", "ref", "FAIL", "PASS", "SKIP", "FAIL", "FAIL", "PASS"]
    assert rows[0].rel_diff == pytest.approx(0.04) and rows[2].rel_diff == pytest.approx(-0.1)
    assert rows[2].note == "loss -10.0% from fp32's (tolerance 5%)"
    assert rows[3].note == rows[7].note == "no fp32 run to compare with"
    md = gc.table(rows)
    assert "| a | 16-mixed | 8 | 3 | - | - | n/a | 1.0400 | +4.00 % | PASS |" in md
    assert "| a | bf16-mixed | 8 | 3 | - | - | - | - | - | SKIP: no bf16 |" in md
