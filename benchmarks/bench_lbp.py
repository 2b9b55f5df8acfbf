"""Benchmark: SLI's LBP structure target, the official per-pixel loop vs ours (SPEC §2.5).

    python benchmarks/bench_lbp.py [--n 4] [--batch-size 16] [--threads 1]

Measures images/s, in one run and on the same real 256x256 grey images (``skimage.data``), of

(a) ``official``: :func:`official_lbp`, the official code's algorithm (``main.py`` ``load_lbp``):
    a Python loop over every pixel calling a function per pixel that reads eight neighbours,
    each in a ``try`` block;
(b) ``ours``: :func:`reconattack.data.lbp.lbp_map` on a batch (eight shifted comparisons);

and prints the ratio b/a (goal: at least 100x). Before timing, a self-check verifies that both
agree away from the top row and left column (where the official code wraps around: a bug ours
does not copy). The target is computed per batch on the training device, so it is not cached:
at these rates it costs less than reading it back from disk would.
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np
import torch

from reconattack.data.lbp import lbp_map

IMAGE_NAMES = ("astronaut", "coffee", "chelsea", "rocket", "camera", "cat", "coins", "page")


def official_lbp(grey: np.ndarray) -> np.ndarray:
    """The official per-pixel LBP (the speed baseline), including its wrap-around of index -1."""

    def get_pixel(img, center, x, y):
        new_value = 0
        try:
            if img[x][y] >= center:
                new_value = 1
        except IndexError:
            pass
        return new_value

    h, w = grey.shape
    out = np.zeros((h, w))
    for x in range(h):
        for y in range(w):
            center = grey[x][y]
            vals = [get_pixel(grey, center, x - 1, y + 1), get_pixel(grey, center, x, y + 1),
                    get_pixel(grey, center, x + 1, y + 1), get_pixel(grey, center, x + 1, y),
                    get_pixel(grey, center, x + 1, y - 1), get_pixel(grey, center, x, y - 1),
                    get_pixel(grey, center, x - 1, y - 1), get_pixel(grey, center, x - 1, y)]
            out[x][y] = sum(v * p for v, p in zip(vals, (1, 2, 4, 8, 16, 32, 64, 128)))
    return out


def images(n: int) -> np.ndarray:
    from skimage import data

    out = []
    for i in range(n):
        img = getattr(data, IMAGE_NAMES[i % len(IMAGE_NAMES)])()
        if img.ndim == 2:
            img = np.stack([img] * 3, -1)
        img = cv2.resize(np.ascontiguousarray(img[..., :3]), (256, 256), interpolation=cv2.INTER_LINEAR)
        out.append(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY))
    return np.stack(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=4, help="images timed with the official loop")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    grey = images(max(args.n, args.batch_size))
    ref = official_lbp(grey[0])
    ours = lbp_map(grey[:1])[0]
    if not np.array_equal(ours[1:, 1:], ref[1:, 1:].astype(np.uint8)):
        raise SystemExit("self-check failed: ours and the official LBP differ inside the image")
    t0 = time.perf_counter()
    for g in grey[:args.n]:
        official_lbp(g)
    official = args.n / (time.perf_counter() - t0)
    batch = torch.from_numpy(grey[:args.batch_size])
    lbp_map(batch)  # warm-up
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 1.0:
        lbp_map(batch)
        reps += 1
    fast = reps * len(batch) / (time.perf_counter() - t0)
    print(f"SLI LBP target, 256x256, {args.threads} thread(s)")
    print("| implementation | images/s |\n| --- | --- |")
    print(f"| official per-pixel loop | {official:.2f} |\n| ours (lbp_map, batch {len(batch)}) | {fast:.1f} |")
    print(f"ratio ours / official: {fast / official:.0f}x (goal >= 100x)")


if __name__ == "__main__":
    main()
