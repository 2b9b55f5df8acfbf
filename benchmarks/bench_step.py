"""Lightning overhead: one CFGAN training step of the demo model under Lightning vs a bare loop.

``python benchmarks/bench_step.py [--steps N]`` builds the demo's coarse stage from the real
configs, feeds the same batch (real faces with their SIFT keypoints) to (a) a bare PyTorch loop
doing exactly the work of ``CFGANStage.training_step`` (map building, D step, G step) and
(b) ``Trainer.fit`` of the same module, and prints the time per step of each and their ratio
(target: Lightning / bare <= 1.15). Both run in this process, interleaved, so the ratio is
measured under the same conditions.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from torch.utils.data import DataLoader, Dataset

from reconattack.data.images import lfw_faces, resize
from reconattack.data.sift.cache import SiftCache
from reconattack.data.sift_data import collate_sift
from reconattack.engine.runner import build_attack, build_threat
from reconattack.losses.gan import ragan_d_loss

CONF = str(Path(__file__).resolve().parents[1] / "conf")


class _Repeat(Dataset):
    def __init__(self, items, n):
        self.items, self.n = items, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.items[i % len(self.items)]


class _Timer(pl.Callback):
    def __init__(self):
        self.times, self._t = [], 0.0

    def on_train_batch_start(self, *args):
        self._t = time.perf_counter()

    def on_train_batch_end(self, *args):
        self.times.append(time.perf_counter() - self._t)


def _items(cfg, n):
    src = lfw_faces()
    cache = SiftCache(tempfile.mkdtemp(prefix="bench-sift-"))
    items = []
    for i in range(n):
        img = resize(src.load(i), cfg.data.image_size)
        xy, desc = cache.get(img)
        items.append({"image": torch.from_numpy(img.transpose(2, 0, 1).copy()),
                      "xy": torch.from_numpy(xy), "desc": torch.from_numpy(desc), "index": i})
    return items


def bare_loop(module, dm, batch, steps: int) -> list[float]:
    """The work of one training step without Lightning; returns per-step seconds."""
    opt_g = module.optimizer_factory(module.generator.parameters())
    opt_d = module.optimizer_factory(module.discriminator.parameters())
    module.train()
    gen = torch.Generator().manual_seed(0)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        b = dm.device_batch(batch, "cpu", gen)
        real, sift = b["target"], b["input"]
        fake = module(sift)
        d_loss = ragan_d_loss(module.discriminator(real), module.discriminator(fake.detach()))
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        for p in module.discriminator.parameters():
            p.requires_grad_(False)
        terms = module.generator_losses(b, fake)
        opt_g.zero_grad(set_to_none=True)
        terms["total"].backward()
        opt_g.step()
        for p in module.discriminator.parameters():
            p.requires_grad_(True)
        _ = {k: v.detach() for k, v in terms.items()}
        times.append(time.perf_counter() - t)
    return times


class _Repeated(pl.LightningDataModule):
    """The same items over and over, turned into device batches by the threat's DataModule."""

    def __init__(self, dm, items, batch_size: int, steps: int):
        super().__init__()
        self.dm, self.items, self.batch_size, self.steps = dm, items, batch_size, steps

    def train_dataloader(self):
        return DataLoader(_Repeat(self.items, self.batch_size * self.steps), batch_size=self.batch_size,
                          collate_fn=collate_sift)

    def on_after_batch_transfer(self, batch, dataloader_idx):
        self.dm.trainer = self.trainer
        return self.dm.on_after_batch_transfer(batch, dataloader_idx)


def lightning_loop(module, dm, items, batch_size: int, steps: int) -> list[float]:
    timer = _Timer()
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=2 * steps, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[timer], num_sanity_val_steps=0,
                         limit_val_batches=0)
    trainer.fit(module, datamodule=_Repeated(dm, items, batch_size, steps))
    return timer.times


def measure(steps: int = 20, warmup: int = 3, rounds: int = 3) -> dict:
    os.environ.setdefault("RECONATTACK_OFFLINE", "1")
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=["loss.per=0"])
    torch.manual_seed(0)
    threat = build_threat(cfg)
    template = build_attack(cfg).build_stage("coarse", threat, None)
    items = _items(cfg, cfg.data.batch_size)
    batch = collate_sift(items)
    bare, light = [], []
    for _ in range(rounds):  # interleave to share machine conditions
        bare += bare_loop(copy.deepcopy(template), threat.dm, batch, steps + warmup)[warmup:]
        light += lightning_loop(copy.deepcopy(template), threat.dm, items, cfg.data.batch_size,
                                steps + warmup)[warmup:]
    b, l_ = statistics.median(bare), statistics.median(light)
    return {"bare_s": b, "lightning_s": l_, "ratio": l_ / b, "batch_size": cfg.data.batch_size}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    r = measure(args.steps)
    print(f"training step (demo coarse stage, batch {r['batch_size']}): bare PyTorch "
          f"{r['bare_s'] * 1000:.1f} ms | Lightning {r['lightning_s'] * 1000:.1f} ms | "
          f"ratio {r['ratio']:.3f} (target <= 1.15)")


if __name__ == "__main__":
    main()
