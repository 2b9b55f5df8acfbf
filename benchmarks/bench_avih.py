"""AVIH speed, as ratios within one run (``make bench``).

1. Encryption throughput (images/s) at the paper's size: 112x112 images, IR-18 service model
   (insightface layout) and U-Net key model (base 64, depth 4) — ``--batch`` images optimised
   together against the same images one at a time. Weights are random (speed does not depend
   on them).
2. A 3-job key-share sweep of the (shrunk) digits demo: with the shared, content-addressed
   encrypted gallery (the first job encrypts, the others reuse) against the same sweep with
   ``threat.reuse_artifacts=false`` (every job re-encrypts and retrains its demo models).

    python benchmarks/bench_avih.py [--batch 64] [--iterations 2] [--single 4]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def encryption_throughput(batch: int, iterations: int, single: int, size: int) -> None:
    from reconattack.models.face import ARCHS, IResNet, make_face_model
    from reconattack.models.keys import UNet, make_key_model
    from reconattack.threats.avih.encryption import AVIHEncryptor

    service = make_face_model(lambda: IResNet(ARCHS["ir18"], input_size=size),
                              seed=0).eval().requires_grad_(False)
    key = make_key_model(lambda: UNet(base=64, depth=4), seed=1, init="kaiming",
                         calibrate_size=size).eval().requires_grad_(False)
    enc = AVIHEncryptor(service, [key], {"task": 1.0, "diff": 0.03, "rec": 0.5, "vc": 3.0},
                        iterations=iterations, log_every=0)
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    kid = torch.zeros(batch, dtype=torch.long)
    enc.encrypt(x[:1], kid[:1], torch.arange(1))  # warm-up
    t = time.perf_counter()
    enc.encrypt(x, kid, torch.arange(batch))
    batched = batch / (time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(single):
        enc.encrypt(x[i:i + 1], kid[i:i + 1], torch.arange(i, i + 1))
    one = single / (time.perf_counter() - t)
    print(f"AVIH encryption ({size}x{size}, IR-18 + U-Net key, {iterations} iterations, "
          f"{torch.get_num_threads()} threads): batched ({batch}) {batched * iterations:.2f} "
          f"image-iterations/s = {batched:.3f} images/s | one at a time {one * iterations:.2f} "
          f"image-iterations/s = {one:.3f} images/s | ratio {batched / one:.2f}x")
    print(f"  (a paper encryption is 800 iterations: {batched / 800 * 3600:.1f} images/hour batched "
          f"on this machine)")


def sweep_time(jobs: list[str]) -> None:
    os.environ["RECONATTACK_OFFLINE"] = "1"
    from hydra import compose, initialize_config_dir

    from reconattack.run import run

    base = ["+experiment=demo_avih", "trainer.callbacks.progress=null", "logger=none",
            "data.gallery_size=60", "data.pool=30", "threat.encrypt.iterations=60",
            "attack.steps.attack=20", "threat.service.train.steps=50",
            "threat.evaluation.train.steps=50"]
    times = {}
    for reuse in (True, False):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            for i, share in enumerate(jobs):
                with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
                    cfg = compose("config", overrides=[
                        *base, f"threat.key_share={share}", f"threat.reuse_artifacts={reuse}",
                        f"paths.cache_dir={tmp}/cache", f"paths.output_dir={tmp}/job{i}"])
                with contextlib.redirect_stdout(io.StringIO()):  # run() prints every metric
                    run(cfg)
            times[reuse] = time.perf_counter() - start
    print(f"3-job key-share sweep ({', '.join(jobs)}; shrunk digits demo): shared encrypted gallery "
          f"{times[True]:.1f} s | re-encrypting per job {times[False]:.1f} s | ratio "
          f"{times[False] / times[True]:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--iterations", type=int, default=2)
    ap.add_argument("--single", type=int, default=4, help="images timed one at a time")
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--skip-sweep", action="store_true")
    args = ap.parse_args()
    encryption_throughput(args.batch, args.iterations, args.single, args.size)
    if not args.skip_sweep:
        import logging

        logging.disable(logging.WARNING)
        sweep_time(["0.1", "0.3", "0.7"])


if __name__ == "__main__":
    main()
