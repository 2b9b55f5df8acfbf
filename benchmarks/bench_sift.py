"""Benchmark: CFGAN SIFT input pipeline, official per-sample algorithm vs ours (SPEC §2.1).

    python benchmarks/bench_sift.py [--n 16] [--batch-size 16] [--threads 1]

Measures samples/s, in one run and on the same real images (``skimage.data``, resized to
256×256 RGB, repeated to reach ``--n``), of

(a) ``official``: :func:`official_reference_map`, the official code's algorithm per sample
    (SIFT, then Python loops over a dense 256×256×128 float64 array, then a Python-loop 2×2
    compression);
(b) ``ours (no cache)``: :func:`reconattack.data.sift.extraction.extract` per image +
    :func:`reconattack.data.sift.maps.build_maps` per batch;
(c) ``ours (cached)``: :meth:`SiftCache.get` from a warm cache + ``build_maps`` per batch;

and prints the ratios b/a and c/a. Torch and OpenCV use ``--threads`` threads for all three.
Before timing, a self-check verifies that (a) and our deterministic maps agree.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
import warnings

import cv2
import numpy as np
import torch

from reconattack.data.images import SmallImageWarning, resize
from reconattack.data.sift.cache import SiftCache
from reconattack.data.sift.extraction import extract
from reconattack.data.sift.maps import build_maps, to_map

IMAGE_NAMES = ("astronaut", "coffee", "chelsea", "rocket", "camera", "cat", "coins", "page")


def official_reference_map(image: np.ndarray, contrast_threshold: float = 0.03) -> np.ndarray:
    """The official CFGAN per-sample SIFT-map algorithm, in plain Python loops (speed baseline).

    Per sample: a fresh ``cv2.SIFT_create`` runs on the grey image; a dense 256×256×128
    float64 array is filled keypoint by keypoint, a pixel being written only when it is
    empty (checked by looping over its 128 values); then a 2×2 compression loops over every
    pixel of every block, keeping the first-placed keypoint of each aligned block.

    Two deliberate differences from the official code, so that the result is comparable with
    ours: indices ``ceil(c) - 1`` are clamped to ``[0, 255]`` (the official code would wrap
    ``-1`` to the last row), and the compression uses aligned blocks (the official window is
    shifted by one pixel). Neither changes the amount of work.

    Args:
        image: uint8 ``(256, 256, 3)`` RGB in ``[0, 255]``.
        contrast_threshold: SIFT contrast threshold.

    Returns:
        float64 ``(128, 128, 128)`` channels-first map: ``desc / 127.5 - 1`` in ``[-1, 1]`` at
        kept keypoints, 0 elsewhere.
    """
    size = 256
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    sift = cv2.SIFT_create(contrastThreshold=contrast_threshold)
    keypoints, descriptors = sift.detectAndCompute(grey, None)

    dense = np.zeros((size, size, 128), dtype=np.float64)
    order = np.full((size, size), -1, dtype=np.int64)  # which keypoint was placed where
    for i, kp in enumerate(keypoints):
        x, y = kp.pt
        row = min(max(math.ceil(y) - 1, 0), size - 1)
        col = min(max(math.ceil(x) - 1, 0), size - 1)
        empty = True
        for v in range(128):
            if dense[row, col, v] != 0:
                empty = False
                break
        if empty:
            for v in range(128):
                dense[row, col, v] = descriptors[i][v] / 127.5 - 1
            order[row, col] = i

    half = size // 2
    compressed = np.zeros((half, half, 128), dtype=np.float64)
    for bi in range(half):
        for bj in range(half):
            best = None
            for dy in range(2):
                for dx in range(2):
                    y, x = 2 * bi + dy, 2 * bj + dx
                    if dense[y, x].any() and (best is None or order[y, x] < order[best]):
                        best = (y, x)
            if best is not None:
                compressed[bi, bj] = dense[best]
    return compressed.transpose(2, 0, 1)


def load_images(n: int = 16, size: int = 256) -> list[np.ndarray]:
    """``n`` real images from ``skimage.data`` (cycled), uint8 ``(size, size, 3)`` RGB."""
    import skimage.data

    base = []
    for name in IMAGE_NAMES:
        img = np.asarray(getattr(skimage.data, name)())
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=-1)
        with warnings.catch_warnings():  # "page" is 191x384: upscaled on purpose
            warnings.simplefilter("ignore", SmallImageWarning)
            base.append(resize(np.ascontiguousarray(img[..., :3], dtype=np.uint8), size))
    return [base[i % len(base)] for i in range(n)]


def self_check(image: np.ndarray) -> float:
    """Max abs difference between the official algorithm and our deterministic maps.

    Raises AssertionError when the occupied pixels differ or values differ by > 1e-6.
    """
    ref = torch.from_numpy(official_reference_map(image)).float()
    xy, desc = extract(image)
    ours = to_map(xy, desc, 256, compress=True)
    batched = build_maps([xy], [desc], 256, compress=True)[0]
    assert torch.equal(ours, batched), "build_maps differs from to_map"
    assert torch.equal(ref.abs().sum(0) > 0, ours.abs().sum(0) > 0), "occupied pixels differ"
    diff = float((ref - ours).abs().max())
    assert diff <= 1e-6, f"values differ by {diff}"
    return diff


def _batches(items: list, batch_size: int):
    for i in range(0, len(items), batch_size):
        yield items[i : i + batch_size]


def run(n: int = 16, batch_size: int = 16, threads: int = 1, min_time: float = 1.0) -> dict:
    """Run the benchmark and return the numbers.

    Args:
        n: number of samples per measurement.
        batch_size: batch size of ``build_maps``.
        threads: ``torch.set_num_threads`` and ``cv2.setNumThreads`` for all measurements.
        min_time: the fast pipelines are repeated until this many seconds have passed.

    Returns:
        dict with ``official_sps``, ``nocache_sps``, ``cached_sps`` (samples/s),
        ``ratio_nocache`` (b/a), ``ratio_cached`` (c/a), ``n``, ``batch_size``, ``threads``,
        ``self_check_max_diff``, and two ceilings: ``sift_only_sps`` (OpenCV SIFT alone, which
        (a) and (b) both run) and ``dense_output_only_sps`` (allocating the zeroed dense
        float32 output batch alone, which (b) and (c) both need).
    """
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    images = load_images(n)
    max_diff = self_check(images[0])

    # (a) official algorithm, per sample
    start = time.perf_counter()
    for img in images:
        official_reference_map(img)
    official_sps = n / (time.perf_counter() - start)

    def timed(fn) -> float:
        fn()  # warm-up
        reps, start = 0, time.perf_counter()
        while True:
            fn()
            reps += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_time:
                return reps * n / elapsed

    # (b) ours without cache
    def nocache() -> None:
        for batch in _batches(images, batch_size):
            feats = [extract(img) for img in batch]
            build_maps([f[0] for f in feats], [f[1] for f in feats], 256, compress=True)

    with tempfile.TemporaryDirectory(prefix="bench_sift_") as tmp:
        cache = SiftCache(tmp)
        cache.fill(images)

        # (c) ours from a warm cache
        def cached() -> None:
            for batch in _batches(images, batch_size):
                feats = [cache.get(img) for img in batch]
                build_maps([f[0] for f in feats], [f[1] for f in feats], 256, compress=True)

        nocache_sps = timed(nocache)
        cached_sps = timed(cached)

    # ceilings: what (b) and (c) cannot beat whatever the map building costs
    def sift_only() -> None:
        for img in images:
            extract(img)

    def dense_output_only() -> None:  # a fresh zeroed (B, 128, 128, 128) float32, all pages hit
        for batch in _batches(images, batch_size):
            out = torch.from_numpy(np.zeros((len(batch), 128, 128, 128), np.float32))
            out.view(-1)[::1024].fill_(0.0)

    sift_sps = timed(sift_only)
    dense_sps = timed(dense_output_only)

    return {
        "official_sps": official_sps,
        "nocache_sps": nocache_sps,
        "cached_sps": cached_sps,
        "ratio_nocache": nocache_sps / official_sps,
        "ratio_cached": cached_sps / official_sps,
        "n": n,
        "batch_size": batch_size,
        "threads": threads,
        "self_check_max_diff": max_diff,
        "sift_only_sps": sift_sps,
        "dense_output_only_sps": dense_sps,
    }


def format_result(r: dict) -> str:
    """The benchmark's printed lines."""
    return (
        f"sift pipeline ({r['n']} samples 256x256, batch {r['batch_size']}, "
        f"{r['threads']} thread(s); self-check max diff {r['self_check_max_diff']:.1e}):\n"
        f"sift pipeline: official {r['official_sps']:.1f} samples/s "
        f"({1000 / r['official_sps']:.0f} ms/sample) | "
        f"ours (no cache) {r['nocache_sps']:.1f} samples/s (b/a {r['ratio_nocache']:.1f}x) | "
        f"ours (cached) {r['cached_sps']:.0f} samples/s (c/a {r['ratio_cached']:.0f}x)\n"
        f"sift pipeline ceilings: SIFT alone {r['sift_only_sps']:.1f} samples/s "
        f"(b/a <= {r['sift_only_sps'] / r['official_sps']:.1f}x) | allocating the zeroed dense "
        f"float32 maps alone {r['dense_output_only_sps']:.0f} samples/s "
        f"(c/a <= {r['dense_output_only_sps'] / r['official_sps']:.0f}x)"
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16, help="samples per measurement")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch and OpenCV threads")
    args = parser.parse_args(argv)
    result = run(n=args.n, batch_size=args.batch_size, threads=args.threads)
    print(format_result(result))
    return result


if __name__ == "__main__":
    main()
