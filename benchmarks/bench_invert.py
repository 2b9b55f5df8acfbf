"""Benchmark: ``python -m reconattack.invert`` from a COLMAP database, beside the same model's
forward pass alone (SPEC §9).

    python benchmarks/bench_invert.py [--n 48] [--batch-size 16] [--threads 1]

Builds, in a temporary folder, a run directory of the CPU demo's CFGAN (coarse + fine, untrained
weights: the cost is the same) trained on COLMAP features, and a COLMAP database of ``--n`` photos
(``skimage.data``, 256x192, COLMAP's SIFT through pycolmap). Prints images/s of

(a) ``invert``: loading the run, reading the database, mapping the keypoints, building the maps,
    the network and writing the PNGs (:func:`reconattack.invert.invert`);
(b) ``forward``: the final stage's forward pass alone on the same maps, prebuilt;

and the ratio a/b (the reading and map building should cost little next to the network).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

IMAGE_NAMES = ("astronaut", "coffee", "chelsea", "rocket", "camera", "cat", "coins", "page")


def make_run(root: Path):
    import yaml
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from reconattack.engine.runner import build_attack, build_threat
    from reconattack.utils.config import CONF_DIR

    overrides = [f"paths.output_dir={root}", f"paths.cache_dir={root / 'cache'}", "threat.features=colmap"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    threat, attack = build_threat(cfg), build_attack(cfg)
    previous = None
    for stage in attack.stages:
        previous = attack.build_stage(stage, threat, previous)
    (root / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": previous.state_dict()}, root / "checkpoints" / f"{attack.stages[-1]}.ckpt")
    (root / ".hydra").mkdir()
    OmegaConf.save(cfg, root / ".hydra" / "config.yaml")
    (root / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))  # as the command line records them
    return previous


def make_database(path: Path, n: int) -> None:
    import pycolmap
    from skimage import data

    from reconattack.data.sift.extraction import extract

    db = pycolmap.Database.open(str(path))
    for i in range(n):
        img = getattr(data, IMAGE_NAMES[i % len(IMAGE_NAMES)])()
        if img.ndim == 2:
            img = np.stack([img] * 3, -1)
        img = cv2.resize(np.ascontiguousarray(img[..., :3]), (256, 192), interpolation=cv2.INTER_AREA)
        cam = db.write_camera(pycolmap.Camera(model="SIMPLE_RADIAL", width=256, height=192, params=[256, 128, 96, 0]))
        image_id = db.write_image(pycolmap.Image(name=f"photo_{i:04d}.jpg", camera_id=cam))
        xy, desc = extract(img, features="colmap")
        kp = np.zeros((len(xy), 6), np.float32)
        kp[:, :2], kp[:, 2], kp[:, 5] = xy + 0.5, 1, 1
        db.write_keypoints(image_id, kp)
        db.write_descriptors(image_id, pycolmap.FeatureDescriptors(pycolmap.FeatureExtractorType.SIFT, desc))
    db.close()


def main() -> None:
    from reconattack.data.sift.maps import build_maps, grid_xy
    from reconattack.engine.console import quiet
    from reconattack.invert import colmap_images, invert

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    quiet()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        module = make_run(tmp / "run").eval()
        make_database(tmp / "database.db", args.n)
        invert(tmp / "run", tmp / "warm", colmap=tmp / "database.db", images=["photo_0000.jpg"], device="cpu")
        t0 = time.perf_counter()
        invert(tmp / "run", tmp / "out", colmap=tmp / "database.db", batch_size=args.batch_size, device="cpu")
        whole = args.n / (time.perf_counter() - t0)
        _, stream = colmap_images(tmp / "database.db")
        feats = list(stream)
        maps = [build_maps([grid_xy(f.xy, f.size, 64) for f in feats[i:i + args.batch_size]],
                           [f.desc for f in feats[i:i + args.batch_size]], 64, True)
                for i in range(0, len(feats), args.batch_size)]
        t0 = time.perf_counter()
        with torch.no_grad():
            for m in maps:
                module.reconstruct({"input": m})
        forward = args.n / (time.perf_counter() - t0)
    print(f"invert from a COLMAP database: {args.n} images of 256x192, the CPU demo's CFGAN, batch "
          f"{args.batch_size}, {args.threads} thread(s)")
    print("| path | images/s |\n| --- | --- |")
    print(f"| invert (read, map, network, PNG) | {whole:.1f} |\n| forward pass alone | {forward:.1f} |")
    print(f"invert / forward: {whole / forward:.2f}")


if __name__ == "__main__":
    main()
