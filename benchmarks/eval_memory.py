"""Probe: does the final evaluation's memory grow with the number of test images? (SPEC §8)

    python benchmarks/eval_memory.py [--sizes 200 1600] [--image-size 128] [--tolerance 0.10]

Makes a folder of textured images, trains a tiny IVR for two iterations on it (which also fills
the SIFT cache), then runs ``attack.test_only=true`` on that checkpoint with ``data.test`` set to
each of ``--sizes``, every run a process of its own (``python -m reconattack.run``, the
user's command), and prints each run's peak resident memory (the kernel's ``ru_maxrss`` of that
process). Exit 1 when the largest test set's peak exceeds the smallest's by more than
``--tolerance`` of it (and by more than 32 MiB): the evaluation then holds memory per image.
Nothing but the test-set size differs between the measured runs (same images, cache, model,
batch size). ``tests/engine/test_evaluation_memory.py`` runs it (``slow``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def make_images(folder: Path, n: int, size: int, seed: int = 0) -> None:
    """``n`` PNG files of ``size`` px with blobs and edges (SIFT finds keypoints in them)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = cv2.GaussianBlur(rng.integers(0, 256, (size // 4, size // 4, 3), dtype=np.uint8), (3, 3), 0)
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_NEAREST)
        for _ in range(3):
            cv2.circle(img, tuple(int(v) for v in rng.integers(8, size - 8, 2)), int(rng.integers(3, size // 8)),
                       tuple(int(v) for v in rng.integers(0, 256, 3)), -1)
        cv2.imwrite(str(folder / f"img_{i:05d}.png"), img)


def run(overrides: list[str], log: Path) -> tuple[int, int, float]:
    """``python -m reconattack.run overrides``: (exit status, peak RSS in bytes, seconds)."""
    env = {**os.environ, "RECONATTACK_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "reconattack.run", *overrides], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, int(usage.ru_maxrss) * 1024, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[200, 1600], help="test-set sizes")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--tolerance", type=float, default=0.10,
                    help="allowed growth of the peak from the smallest to the largest size, as a fraction")
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one)")
    args = ap.parse_args(argv)
    sizes = sorted(args.sizes)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.dir or Path(tmp)
        make_images(work / "data" / "celebahq", sizes[-1] + 16, args.image_size)
        common = ["+experiment=ivr_celebahq", "model=ivr_small", "trainer=cpu", "logger=csv",
                  "trainer.callbacks.progress=null", f"paths.data_dir={work / 'data'}",
                  f"paths.cache_dir={work / 'cache'}", f"data.image_size={args.image_size}", "data.val=0",
                  "data.num_workers=0", f"data.batch_size={args.batch_size}",
                  f"data.eval_batch_size={args.batch_size}", "metrics.metrics=[mse,psnr,ssim]",
                  "model.net.enc_channels=[8,8,8]", "model.net.bottleneck=[8]",
                  "model.net.dec_channels=[8,8,8,8]", "attack.num_samples=2"]
        rc, peak, secs = run([*common, f"data.test={sizes[-1]}", "attack.steps.ivr=2",
                              f"hydra.run.dir={work / 'train'}"], work / "train.log")
        if rc != 0:
            print((work / "train.log").read_text()[-3000:])
            return 2
        ckpt = work / "train" / "checkpoints" / "ivr.ckpt"
        peaks = {}
        print(f"test images | peak RSS (MiB) | seconds   ({args.image_size}x{args.image_size}, batch {args.batch_size})")
        for n in sizes:
            rc, peak, secs = run([*common, f"data.test={n}", "attack.test_only=true",
                                  f"attack.checkpoints.ivr={ckpt}", f"hydra.run.dir={work / f'eval{n}'}"],
                                 work / f"eval{n}.log")
            if rc != 0:
                print((work / f"eval{n}.log").read_text()[-3000:])
                return 2
            peaks[n] = peak
            print(f"{n:11d} | {peak / 2**20:14.1f} | {secs:7.1f}")
    small, large = peaks[sizes[0]], peaks[sizes[-1]]
    growth = large - small
    print(f"growth from {sizes[0]} to {sizes[-1]} test images: {growth / 2**20:+.1f} MiB "
          f"({growth / small:+.1%} of {small / 2**20:.1f} MiB; allowed {args.tolerance:.0%})")
    return 1 if growth > max(args.tolerance * small, 32 * 2**20) else 0


if __name__ == "__main__":
    sys.exit(main())
