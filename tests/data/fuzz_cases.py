"""Inputs for fuzzing the readers of untrusted bytes (used by ``tests/data/test_fuzz.py``).

- :func:`image_encodings`: small valid encodings (PNG in four pixel layouts, JPEG, WebP,
  BMP, TIFF) to truncate and corrupt;
- :func:`bin_files`: a valid insightface ``.bin`` per pickle protocol (0–5);
- :func:`crash_batch` / :func:`main`: a seeded batch of corrupted inputs run through
  ``decode_image`` (OpenCV) and ``load_bin`` (pickle + OpenCV). ``test_fuzz.py`` runs
  :func:`main` in a child process, so that a segfault, an abort or a hang inside the C code
  fails that test instead of killing pytest, and an input that makes a reader allocate
  gigabytes shows up in the child's peak memory.

This module imports only numpy, OpenCV and the readers (no torch), to keep the child small.
"""

from __future__ import annotations

import json
import os
import pickletools
import resource
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from reconattack.data.faces import BinFormatError, load_bin, make_bin
from reconattack.data.images import ImageReadError, decode_image

#: format signatures put in front of random bytes, so that they reach a specific decoder.
#: GIF is left out on purpose: a GIF declares its canvas size in 4 header bytes and OpenCV
#: allocates and fills that canvas (up to its 2^30-pixel limit, ~4 GB) and returns it — a
#: valid, if absurd, image rather than a reader defect; random bytes behind "GIF89a" hit this.
SIGNATURES: dict[str, bytes] = {
    "png": b"\x89PNG\r\n\x1a\n",
    "jpeg": b"\xff\xd8\xff",
    "webp-lossy": b"RIFF\x00\x10\x00\x00WEBPVP8 ",
    "webp-lossless": b"RIFF\x00\x10\x00\x00WEBPVP8L",
    "webp-extended": b"RIFF\x00\x10\x00\x00WEBPVP8X",
    "bmp": b"BM",
    "tiff": b"II*\x00",
}

#: the opcodes of every pickle protocol, for random opcode streams
PICKLE_OPCODES: tuple[bytes, ...] = tuple(op.code.encode("latin-1") for op in pickletools.opcodes)

#: peak memory (MB) and time (s) for one input above which the child reports a defect
MAX_RSS_MB = 1024
MAX_SECONDS_PER_INPUT = 5.0


def _pattern(h: int, w: int, seed: int = 0) -> np.ndarray:
    """uint8 (h, w, 3) with smooth gradients and some noise (compresses like a photo)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 9, yy * 7, (xx + yy) * 5], axis=-1) % 256
    img = img + rng.integers(0, 16, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _encode(ext: str, image: np.ndarray, params: tuple[int, ...] = ()) -> bytes:
    ok, buf = cv2.imencode(ext, image, list(params))
    assert ok, f"could not encode {ext}"
    return buf.tobytes()


def image_encodings() -> dict[str, bytes]:
    """Small valid encodings, by name (a few hundred bytes to ~1 KB each)."""
    bgr = _pattern(12, 10)
    grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    return {
        "png": _encode(".png", bgr),
        "png-grey": _encode(".png", grey),
        "png-rgba": _encode(".png", cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA)),
        "png-16bit": _encode(".png", bgr.astype(np.uint16) * 257),
        "jpeg": _encode(".jpg", bgr, (cv2.IMWRITE_JPEG_QUALITY, 90)),
        "jpeg-progressive": _encode(".jpg", bgr, (cv2.IMWRITE_JPEG_PROGRESSIVE, 1)),
        "webp-lossy": _encode(".webp", bgr, (cv2.IMWRITE_WEBP_QUALITY, 80)),
        "webp-lossless": _encode(".webp", bgr, (cv2.IMWRITE_WEBP_QUALITY, 101)),
        "bmp": _encode(".bmp", bgr),
        "tiff": _encode(".tiff", bgr),
    }


def bin_files() -> dict[int, bytes]:
    """A valid verification ``.bin`` (2 pairs of 8×8 PNG images) per pickle protocol."""
    images = np.stack([_pattern(8, 8, seed=k) for k in range(4)])
    with tempfile.TemporaryDirectory() as tmp:
        return {
            p: make_bin(Path(tmp) / f"p{p}.bin", images, [True, False], protocol=p).read_bytes()
            for p in range(6)
        }


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One random corruption of ``data``: truncation, byte flips (anywhere or in the first 64
    bytes, where the headers are), an inserted run, a deleted or a duplicated range."""
    b = bytearray(data)
    mode = int(rng.integers(6))
    if mode == 0:
        return bytes(b[: int(rng.integers(0, len(b)))])
    if mode in (1, 2):
        region = len(b) if mode == 1 else min(64, len(b))
        for _ in range(int(rng.integers(1, 9))):
            b[int(rng.integers(region))] ^= int(rng.integers(1, 256))
        if rng.random() < 0.3:
            b = b[: int(rng.integers(len(b) // 2, len(b) + 1))]
        return bytes(b)
    i = int(rng.integers(0, len(b) + 1))
    if mode == 3:
        b[i:i] = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
    elif mode == 4:
        del b[i : i + int(rng.integers(1, 64))]
    else:
        b[i:i] = b[i : i + int(rng.integers(1, 64))]
    return bytes(b)


def opcode_soup(rng: np.random.Generator) -> bytes:
    """A random stream of pickle opcodes with random argument bytes, ending in STOP."""
    parts = [b"\x80" + bytes([int(rng.integers(0, 6))])] if rng.random() < 0.7 else []
    for _ in range(int(rng.integers(1, 40))):
        if rng.random() < 0.6:
            parts.append(PICKLE_OPCODES[int(rng.integers(len(PICKLE_OPCODES)))])
        else:
            parts.append(rng.integers(0, 256, int(rng.integers(1, 5)), dtype=np.uint8).tobytes())
    return b"".join(parts) + b"."


def _memory_error(exc: BaseException) -> bool:
    """Whether a reader's clear error hides an allocation failure (a bomb cut short by the
    child's address-space limit)."""
    text = str(exc)
    return (
        isinstance(exc.__cause__, MemoryError)
        or "Insufficient memory" in text
        or "MemoryError" in text
        or "Failed to allocate" in text
    )


def crash_batch(seed: int = 0, per_source: int = 100, n_random: int = 300) -> dict:
    """Run a seeded batch of corrupted inputs through ``decode_image`` and ``load_bin``.

    Returns a summary (counts, peak memory, slowest input); any exception other than the
    readers' clear errors propagates.
    """
    rng = np.random.default_rng(seed)
    defects: list[str] = []
    counts = {"images": 0, "images_ok": 0, "bins": 0, "bins_ok": 0}
    slowest = (0.0, "")

    def run(kind: str, label: str, data: bytes, call) -> None:
        nonlocal slowest
        t0 = time.perf_counter()
        counts[kind] += 1
        try:
            call(data)
            counts[kind + "_ok"] += 1
        except (ImageReadError, BinFormatError) as exc:
            if _memory_error(exc):
                defects.append(f"{label}: out of memory: {exc} (input {data[:96].hex()})")
        dt = time.perf_counter() - t0
        if dt > slowest[0]:
            slowest = (dt, label)

    for name, data in image_encodings().items():
        for k in range(per_source):
            run("images", f"{name} mutation {k}", mutate(data, rng), lambda d: decode_image(d, "x"))
    prefixes = [b"", *SIGNATURES.values()]
    for k in range(n_random):
        sig = prefixes[k % len(prefixes)]
        noise = rng.integers(0, 256 if k % 3 else 4, int(rng.integers(0, 600)), dtype=np.uint8)
        run("images", f"random bytes {k}", sig + noise.tobytes(), lambda d: decode_image(d, "x"))

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.bin"

        def read_bin(data: bytes) -> None:
            path.write_bytes(data)
            load_bin(path)

        for protocol, data in bin_files().items():
            for k in range(per_source // 2):
                run("bins", f"protocol {protocol} mutation {k}", mutate(data, rng), read_bin)
        for k in range(n_random):
            run("bins", f"opcode soup {k}", opcode_soup(rng), read_bin)

    peak_mb = _peak_rss_mb()
    if peak_mb > MAX_RSS_MB:
        defects.append(f"peak memory {peak_mb:.0f} MB > {MAX_RSS_MB} MB")
    if slowest[0] > MAX_SECONDS_PER_INPUT:
        defects.append(f"{slowest[1]} took {slowest[0]:.1f} s")
    return {
        **counts,
        "peak_mb": round(peak_mb),
        "slowest_s": round(slowest[0], 3),
        "slowest": slowest[1],
        "defects": defects,
    }


def _peak_rss_mb() -> float:
    """Peak resident memory of this process image in MB: Linux's VmHWM, which starts afresh at
    exec (ru_maxrss does not: a child of a large pytest process would report the parent's size
    at fork), else ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    """Child-process entry point: a 4 GiB address-space limit (a memory bomb fails fast and
    is reported instead of swamping the machine), a C-level traceback on a fatal signal,
    OpenCV's own logging off; prints the summary as one JSON line."""
    import faulthandler

    faulthandler.enable()
    limit = 4 << 30
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    seed = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    summary = crash_batch(seed)
    sys.stdout.write(json.dumps(summary) + os.linesep)
    return 1 if summary["defects"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
