"""``python -m reconattack.invert RUN_DIR --colmap DATABASE --out DIR`` (or ``--npz FILE...``):
reconstruct the images behind SIFT features a system stores, with a trained SIFT attack (SPEC §9).

- ``--colmap DATABASE``: a COLMAP database (``database.db``, SQLite): every image (or those named
  with ``--images NAME...``), each with its camera's width and height, its keypoints (float32
  rows x cols, x and y first, COLMAP's pixel convention: the top-left pixel's centre at (0.5, 0.5))
  and descriptors (uint8 rows x 128).
- ``--npz FILE...``: OpenCV-style features, one file per image: ``keypoints`` (N, >= 2) x, y in
  pixels (OpenCV's convention), ``descriptors`` (N, 128) uint8, ``image_size`` (H, W).

Each image's keypoints are mapped from its own width and height onto the model's grid the way
training mapped its images (``cv2.resize`` of the whole image to ``data.image_size``, no crop: a
pixel centre x goes to ``(x + 0.5) * S / W - 0.5``), the map is built by the training code
(:func:`reconattack.data.sift.build_maps`, with the run's compression, collision rule and
positions-only setting), and the run's final stage reconstructs it. One PNG per image, named after
it, and ``invert.json`` (the run, the checkpoint, the features, and per image: keypoints read and
placed, original size) are written to ``--out``; nothing is written there until every image has
been read and reconstructed (a bad input ends in a message naming the image, exit 2).

A run trained on other features than the input holds (``threat.features``: ``opencv`` | ``colmap``)
is refused with exit 2, naming both; ``--force`` tries anyway and ``invert.json`` says so.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sqlite3
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from reconattack.errors import ConfigError, UserError

log = logging.getLogger(__name__)


class InvertInputError(UserError, ValueError):
    """Features that cannot be inverted: not a database, a bad blob, bad coordinates, a missing
    camera (the message names the image)."""


@dataclass
class Features:
    """One image's stored features: ``xy`` float32 (N, 2) in OpenCV's pixel convention, ``desc``
    uint8 (N, 128), the image's original ``size`` (H, W)."""

    name: str
    xy: np.ndarray
    desc: np.ndarray
    size: tuple[int, int]
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------- readers
def _blob(data: bytes, rows: int, cols: int, dtype, what: str, name: str) -> np.ndarray:
    itemsize = np.dtype(dtype).itemsize
    if rows < 0 or cols < 0 or len(data or b"") != rows * cols * itemsize:
        raise InvertInputError(f"image {name!r}: the {what} blob holds {len(data or b'')} bytes, not rows x cols = "
                               f"{rows} x {cols} of {np.dtype(dtype).name} ({rows * cols * itemsize} bytes)")
    return np.frombuffer(data, dtype=dtype).reshape(rows, cols) if rows else np.zeros((0, cols), dtype)


def _check_xy(xy: np.ndarray, size: tuple[int, int], name: str) -> None:
    if not np.isfinite(xy).all():
        raise InvertInputError(f"image {name!r}: keypoint coordinates that are not finite (NaN or inf)")
    if (xy < -0.5).any():
        raise InvertInputError(f"image {name!r}: negative keypoint coordinates (min {xy.min():.3g})")
    h, w = size
    if h < 1 or w < 1:
        raise InvertInputError(f"image {name!r}: an image size of {w}x{h}")


def colmap_images(path: Path, names: list[str] | None = None) -> tuple[int, Iterator[Features]]:
    """``(count, features of each image)`` of a COLMAP database, read one image at a time."""
    if not path.is_file():
        raise InvertInputError(f"{path}: no such file")
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as exc:
        raise InvertInputError(f"{path} is not a COLMAP database (SQLite: {exc})") from None
    if not {"cameras", "images", "keypoints", "descriptors"} <= tables:
        raise InvertInputError(f"{path} is not a COLMAP database (tables: {sorted(tables)})")
    rows = con.execute("SELECT image_id, name, camera_id FROM images ORDER BY image_id").fetchall()
    if names:
        known = {r[1] for r in rows}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise InvertInputError(f"{path}: no image named {unknown} (it has {len(rows)} images)")
        wanted = set(names)
        rows = [r for r in rows if r[1] in wanted]
    cameras = {r[0]: (int(r[2]), int(r[1])) for r in con.execute("SELECT camera_id, width, height FROM cameras")}

    def read() -> Iterator[Features]:
        for image_id, name, camera_id in rows:
            if camera_id not in cameras:
                raise InvertInputError(f"image {name!r}: its camera {camera_id} is not in the database")
            size = cameras[camera_id]
            kp = con.execute("SELECT rows, cols, data FROM keypoints WHERE image_id=?", (image_id,)).fetchone()
            ds = con.execute("SELECT rows, cols, data FROM descriptors WHERE image_id=?", (image_id,)).fetchone()
            kp_arr = _blob(kp[2], int(kp[0]), int(kp[1]), np.float32, "keypoints", name) if kp else np.zeros((0, 2), np.float32)
            d_arr = _blob(ds[2], int(ds[0]), int(ds[1]), np.uint8, "descriptors", name) if ds else np.zeros((0, 128), np.uint8)
            if kp_arr.shape[1] < 2 or (len(d_arr) and d_arr.shape[1] != 128) or len(kp_arr) != len(d_arr):
                raise InvertInputError(f"image {name!r}: {kp_arr.shape} keypoints and {d_arr.shape} descriptors "
                                       "(expected N x >= 2 and N x 128)")
            xy = kp_arr[:, :2].astype(np.float32) - 0.5  # COLMAP's pixel centres -> OpenCV's
            _check_xy(kp_arr[:, :2], size, name)
            yield Features(str(name), xy, d_arr.reshape(-1, 128), size)
        con.close()

    return len(rows), read()


def npz_images(paths: list[Path]) -> tuple[int, Iterator[Features]]:
    """``(count, features of each file)`` of OpenCV-style ``.npz`` feature files."""

    def read() -> Iterator[Features]:
        for path in paths:
            name = path.stem
            try:
                with np.load(path, allow_pickle=False) as z:
                    kp, desc, size = z["keypoints"], z["descriptors"], z["image_size"]
            except (OSError, ValueError, KeyError) as exc:
                raise InvertInputError(f"image {name!r} ({path}): not a features file with keypoints, descriptors "
                                       f"and image_size ({exc})") from None
            kp = np.asarray(kp, np.float64).reshape(len(kp), -1) if len(kp) else np.zeros((0, 2))
            if kp.shape[1] < 2 or desc.shape != (len(kp), 128) or desc.dtype != np.uint8:
                raise InvertInputError(f"image {name!r} ({path}): keypoints {kp.shape} and descriptors "
                                       f"{desc.shape} {desc.dtype} (expected N x >= 2 and N x 128 uint8)")
            size = tuple(int(v) for v in np.asarray(size).reshape(-1)[:2])
            _check_xy(kp[:, :2], size, name)
            yield Features(name, kp[:, :2].astype(np.float32), np.ascontiguousarray(desc), size)

    return len(paths), read()


# ------------------------------------------------------------------------------- the model
def _zero_pretrained_losses(node) -> None:
    """Set every perceptual / style weight of a loss config to 0: inverting trains nothing, and
    an attack would otherwise load VGG weights it does not use here."""
    from omegaconf import DictConfig

    if not isinstance(node, DictConfig):
        return
    for key in list(node.keys()):
        value = node[key]
        if isinstance(value, DictConfig):
            _zero_pretrained_losses(value)
        elif key in ("per", "style") and isinstance(value, (int, float)):
            node[key] = 0.0


def load_run(run_dir: Path, device: torch.device):
    """The run's config, threat, final stage (loaded from its checkpoint, eval mode) and the
    checkpoint's path."""
    from omegaconf import OmegaConf, open_dict

    from reconattack.engine.runner import build_attack, build_threat, load_stage

    cfg_path = run_dir / ".hydra" / "config.yaml"
    if not cfg_path.is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no .hydra/config.yaml)")
    cfg = OmegaConf.load(cfg_path)
    if cfg.get("threat") is None or cfg.threat.get("name") != "sift" or cfg.get("attack") is None:
        raise ConfigError(f"{run_dir}: invert needs a run of a SIFT attack (threat sift and an attack)")
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
        if cfg.get("loss") is not None:
            _zero_pretrained_losses(cfg.loss)
    threat, attack = build_threat(cfg), build_attack(cfg)
    final = attack.stages[-1]
    ckpt = run_dir / "checkpoints" / f"{final}.ckpt"
    if not ckpt.is_file():
        raise ConfigError(f"{run_dir}: no final checkpoint {ckpt} (did the run finish?)")
    previous = None
    for stage in attack.stages:
        previous = attack.build_stage(stage, threat, previous)
    module = load_stage(previous, str(ckpt), final).to(device).eval()
    return cfg, threat, module, ckpt


def safe_filename(name: str, taken: set[str]) -> str:
    """An image name as a PNG file name: path separators and odd characters as ``_``, unique."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "image"
    stem = re.sub(r"\.(png|jpe?g|tiff?|bmp|webp)$", "", stem, flags=re.I)
    out, k = f"{stem}.png", 1
    while out in taken:
        out, k = f"{stem}_{k}.png", k + 1
    taken.add(out)
    return out


def invert(run_dir: Path, out: Path, colmap: Path | None = None, npz: list[Path] | None = None,
           images: list[str] | None = None, force: bool = False, batch_size: int = 16,
           device: str | None = None) -> dict:
    """Reconstruct every image of the input (see the module docstring); returns ``invert.json``'s
    content."""
    import cv2

    from reconattack.data.sift import build_maps, grid_xy
    from reconattack.engine.console import iter_progress

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    kind = "colmap" if colmap is not None else "opencv"
    cfg, threat, module, ckpt = load_run(run_dir, dev)
    trained = str(cfg.threat.get("features", "opencv"))
    if trained != kind and not force:
        raise ConfigError(f"the run {run_dir} was trained on {trained} SIFT, the input holds {kind} SIFT "
                          f"({colmap or 'npz files'}); --force tries anyway")
    count, stream = colmap_images(colmap, images) if colmap is not None else npz_images(list(npz or []))
    if count == 0:
        raise InvertInputError("no image to invert")
    side = threat.image_size
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".invert-", dir=out))
    records, taken, batch = [], set(), []
    try:
        def flush() -> None:
            maps = build_maps([grid_xy(f.xy, f.size, side) for f in batch], [f.desc for f in batch], side,
                              threat.compress, device=dev, placement=threat.placement,
                              positions_only=threat.positions_only)
            with torch.no_grad():
                recon = module.reconstruct({"input": maps}).clamp(-1, 1)
            placed = (maps != 0).flatten(2).any(1).sum(1).tolist()
            for f, img, n in zip(batch, recon, placed):
                file = safe_filename(f.name, taken)
                rgb = ((img.float().cpu().permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()
                if not cv2.imwrite(str(tmp / file), np.ascontiguousarray(rgb[:, :, ::-1])):
                    raise OSError(f"could not write {tmp / file}")
                records.append({"name": f.name, "file": file, "keypoints": int(len(f.xy)), "placed": int(n),
                                "original_size": list(f.size)})
            batch.clear()

        for f in iter_progress(stream, total=count, desc="invert"):
            batch.append(f)
            if len(batch) == batch_size:
                flush()
        if batch:
            flush()
        summary = {"run": str(run_dir), "checkpoint": str(ckpt), "features": kind, "trained_on": trained,
                   "forced": bool(force and trained != kind), "input": str(colmap) if colmap else [str(p) for p in npz],
                   "image_size": side, "map": {"compress": threat.compress, "placement": threat.placement,
                                                "positions_only": threat.positions_only},
                   "images": records}
        (tmp / "invert.json").write_text(json.dumps(summary, indent=2))
        for p in tmp.iterdir():  # every image read and written: move them in
            os.replace(p, out / p.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return summary


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m reconattack.invert",
                                 description="Reconstruct the images behind stored SIFT features with a trained run.")
    ap.add_argument("run_dir", type=Path, help="a run directory of a SIFT attack (its final checkpoint is used)")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--colmap", type=Path, metavar="DATABASE", help="a COLMAP database (database.db)")
    src.add_argument("--npz", type=Path, nargs="+", metavar="FILE", help="OpenCV-style feature files")
    ap.add_argument("--images", nargs="+", metavar="NAME", help="only these images of the database")
    ap.add_argument("--out", type=Path, required=True, help="where the PNGs and invert.json go")
    ap.add_argument("--force", action="store_true", help="invert features of another kind than the run's")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        summary = invert(args.run_dir, args.out, colmap=args.colmap, npz=args.npz, images=args.images,
                         force=args.force, batch_size=args.batch_size, device=args.device)
    except UserError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"{len(summary['images'])} images reconstructed into {args.out} (invert.json)")


if __name__ == "__main__":
    main()
