"""Test helpers: tiny datasets on disk and composing the real configs."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
from hydra import compose, initialize_config_dir

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def textured_images(n: int, size: int = 48, seed: int = 0) -> list[np.ndarray]:
    """``n`` uint8 RGB images (size, size, 3) with blobs and edges (SIFT finds keypoints)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        img = cv2.GaussianBlur(rng.integers(0, 256, (size // 4, size // 4, 3), dtype=np.uint8), (3, 3), 0)
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_NEAREST)
        cv2.circle(img, tuple(int(v) for v in rng.integers(8, size - 8, 2)), int(rng.integers(3, 8)),
                   tuple(int(v) for v in rng.integers(0, 256, 3)), -1)
        out.append(img)
    return out


def make_image_folder(root: Path, n: int = 10, size: int = 48, seed: int = 0) -> Path:
    """A folder of PNG/JPEG files (some in a sub-folder)."""
    for i, img in enumerate(textured_images(n, size, seed)):
        sub = root / ("a" if i % 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        ext = ".png" if i % 3 else ".jpg"
        cv2.imwrite(str(sub / f"img_{i:03d}{ext}"), img[:, :, ::-1])
    return root


def make_lmdb(path: Path, n: int = 10, size: int = 48, seed: int = 1) -> Path:
    """An LMDB in the LSUN export layout: keys -> encoded image bytes (JPEG/WebP)."""
    import lmdb

    path.mkdir(parents=True, exist_ok=True)
    env = lmdb.open(str(path), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for i, img in enumerate(textured_images(n, size, seed)):
            ext = ".webp" if i % 2 else ".jpg"
            ok, buf = cv2.imencode(ext, img[:, :, ::-1])
            assert ok
            txn.put(f"{i:040x}".encode(), buf.tobytes())
    env.close()
    return path


def compose_cfg(overrides: list[str] | None = None):
    """Compose ``conf/config.yaml`` with overrides, as the CLI does (without running Hydra)."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=list(overrides or []))


def tiny_overrides(tmp: Path) -> list[str]:
    """Overrides that make any CFGAN experiment run in seconds on CPU."""
    os.environ["RECONATTACK_OFFLINE"] = "1"
    return [
        f"paths.output_dir={tmp / 'run'}",
        f"paths.cache_dir={tmp / 'cache'}",
        f"paths.data_dir={tmp / 'data'}",
        "trainer=cpu",
        "logger=csv",
        "loss.per=0",
        "loss.style=0",
        "+trainer.fast_dev_run=1",
        "trainer.callbacks.progress=null",
        "attack.num_samples=2",
        "metrics.metrics=[mse,psnr,ssim,fid,lpips,clip]",
        "data.num_workers=0",
        "data.batch_size=2",
        "data.eval_batch_size=2",
    ]
