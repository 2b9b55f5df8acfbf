"""Model profile (paper Table II): ``python -m reconattack.profile [+experiment=NAME] [overrides]``.

Builds the experiment's networks from the same configs as ``reconattack.run`` — the threat
model's own (e.g. AVIH's service, evaluation and key models) and the attack's — without loading
weights or data, and prints for each the trainable parameters, the FLOPs of one forward pass on
one input (counted by ``torch.utils.flop_counter``: a multiply-add is 2 FLOPs) and, for the
attack as it reconstructs, the median inference latency per image on the configured device,
next to the reference figures the attack's config gives (``attack.reference``: the paper's
Table II and the official code's parameter counts). Writes ``profile.json`` into the run
directory.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from torch.utils.flop_counter import FlopCounterMode

from reconattack.engine.runner import build_attack, build_threat
from reconattack.models.common import count_parameters


def flops(fn, *inputs) -> int:
    """FLOPs of ``fn(*inputs)`` (forward only) counted by ``FlopCounterMode``."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn(*inputs)
    return counter.get_total_flops()


def latency(fn, *inputs, repeats: int = 10, warmup: int = 2) -> float:
    """Median seconds per call of ``fn(*inputs)`` (synchronising CUDA when used)."""
    times = []
    with torch.no_grad():
        for i in range(warmup + repeats):
            if inputs[0].is_cuda:
                torch.cuda.synchronize()
            t = time.perf_counter()
            fn(*inputs)
            if inputs[0].is_cuda:
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - t)
    return statistics.median(times)


def profile(cfg: DictConfig, device: torch.device, repeats: int) -> dict:
    """``{"models": {name: {"params", "flops", ["latency_s"], ["reference_params_M"]}},
    "reference": {...}}`` for the threat's and the attack's networks at batch size 1."""
    threat = build_threat(cfg)
    attack = build_attack(cfg)
    models = dict(threat.profile_models())
    if attack is not None:
        models.update(attack.profile_models(threat))
    reference = attack.reference if attack is not None else {}
    rows = {}
    for name, (module, inputs) in models.items():
        module = module.to(device).eval()
        inputs = tuple(x.to(device) for x in inputs)
        row = {"params": count_parameters(module), "flops": flops(module, *inputs)}
        if name.endswith("(inference)"):
            row["latency_s"] = latency(module, *inputs, repeats=repeats)
        ref = (reference.get("networks") or {}).get(name)
        if ref is not None:
            row["reference_params_M"] = float(ref)
        rows[name] = row
        module.to("cpu")
    return {"models": rows, "reference": reference}


def format_table(result: dict, device: torch.device, label: str = "") -> str:
    lines = [f"| model | params (M) | reference (M) | GFLOPs | latency / image ({device.type}) |",
             "| --- | --- | --- | --- | --- |"]
    for name, r in result["models"].items():
        lat = f"{r['latency_s']:.4f} s" if "latency_s" in r else ""
        ref = r.get("reference_params_M", "")
        lines.append(f"| {name} | {r['params'] / 1e6:.1f} | {ref} | {r['flops'] / 1e9:.1f} | {lat} |")
    ref = result["reference"]
    if ref.get("params_M") is not None:
        lines.append(f"| paper Table II ({label}{', ' + ref['device'] if ref.get('device') else ''}) | "
                     f"{ref['params_M']:.0f} | | {ref.get('gflops', '')} | {ref.get('latency_s', '')} s |")
    if ref.get("note"):  # why ours and the paper's figures differ, as far as is known
        lines += ["", str(ref["note"]).strip()]
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    accel = cfg.trainer.accelerator
    device = torch.device("cuda" if accel in ("gpu", "cuda", "auto") and torch.cuda.is_available() else "cpu")
    result = profile(cfg, device, repeats=int(cfg.get("profile_repeats", 10)))
    label = cfg.attack.get("label", "") if cfg.get("attack") is not None else ""
    print(format_table(result, device, label))
    out = Path(HydraConfig.get().runtime.output_dir) / "profile.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": str(device), **result}, indent=2))
    print(f"written {out}")


if __name__ == "__main__":
    main()
