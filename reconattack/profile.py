"""Model profile (paper Table II): ``python -m reconattack.profile [+experiment=NAME] [overrides]``.

Builds the experiment's networks from the same configs as ``reconattack.run`` and prints, for
each, the trainable parameters, the FLOPs of one forward pass on one input (counted by
``torch.utils.flop_counter``: a multiply-add is 2 FLOPs) and the median inference latency per
image on the configured device, next to the paper's and the official code's numbers. Writes
``profile.json`` into the run directory.
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

from reconattack.models.cfgan import count_parameters

# paper Table II (CFGAN: params, FLOPs, seconds per image on an RTX 4090) and official code counts
PAPER = {"cfgan": {"params_M": 153.0, "gflops": 148.0, "latency_s": 0.135}}
OFFICIAL_PARAMS_M = {"coarse": 76.6, "fine": 106.8, "discriminator": 4.6}


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


def profile_cfgan(cfg: DictConfig, device: torch.device, repeats: int) -> dict:
    """Parameters, FLOPs and latency of the CFGAN networks of ``cfg`` at batch size 1."""
    size = int(cfg.data.image_size)
    map_size = size // 2 if cfg.data.compress else size
    scale = size // map_size
    coarse = hydra.utils.instantiate(cfg.model.coarse, final_scale=scale).to(device).eval()
    fine = hydra.utils.instantiate(cfg.model.fine, final_scale=scale).to(device).eval()
    disc = hydra.utils.instantiate(cfg.model.discriminator).to(device).eval()
    sift = torch.zeros(1, 128, map_size, map_size, device=device)
    image = torch.zeros(1, 3, size, size, device=device)

    def attack(s):
        return fine(s, coarse(s)) if "fine" in cfg.attack.stages else coarse(s)

    rows = {
        "coarse": {"params": count_parameters(coarse), "flops": flops(coarse, sift)},
        "fine": {"params": count_parameters(fine), "flops": flops(fine, sift, image)},
        "discriminator": {"params": count_parameters(disc), "flops": flops(disc, image)},
    }
    gens = ["coarse"] + (["fine"] if "fine" in cfg.attack.stages else [])
    rows["cfgan (inference)"] = {
        "params": sum(rows[g]["params"] for g in gens),
        "flops": sum(rows[g]["flops"] for g in gens),
        "latency_s": latency(attack, sift, repeats=repeats),
    }
    return rows


def format_table(rows: dict, device: torch.device) -> str:
    paper = PAPER["cfgan"]
    lines = [f"| model | params (M) | official (M) | GFLOPs | latency / image ({device.type}) |",
             "| --- | --- | --- | --- | --- |"]
    for name, r in rows.items():
        lat = f"{r['latency_s']:.4f} s" if "latency_s" in r else ""
        lines.append(f"| {name} | {r['params'] / 1e6:.1f} | {OFFICIAL_PARAMS_M.get(name, '')} | "
                     f"{r['flops'] / 1e9:.1f} | {lat} |")
    lines.append(f"| paper Table II (CFGAN, RTX 4090) | {paper['params_M']:.0f} | | {paper['gflops']:.0f} | "
                 f"{paper['latency_s']} s |")
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    accel = cfg.trainer.accelerator
    device = torch.device("cuda" if accel in ("gpu", "cuda", "auto") and torch.cuda.is_available() else "cpu")
    if cfg.attack.name != "cfgan":
        raise SystemExit(f"profile: no profile for attack {cfg.attack.name!r} yet")
    rows = profile_cfgan(cfg, device, repeats=int(cfg.get("profile_repeats", 10)))
    print(format_table(rows, device))
    out = Path(HydraConfig.get().runtime.output_dir) / "profile.json"
    out.write_text(json.dumps({"device": str(device), "models": rows, "paper": PAPER}, indent=2))
    print(f"written {out}")


if __name__ == "__main__":
    main()
