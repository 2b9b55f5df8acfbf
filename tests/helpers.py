"""Test helpers: tiny datasets on disk, composing the real configs, and the overrides that make
any experiment run in seconds on CPU."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
from hydra import compose, initialize_config_dir

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
EXPERIMENTS = sorted(p.stem for p in Path(CONF_DIR, "experiment").glob("*.yaml"))
ATTACK_CONFIGS = sorted(p.stem for p in Path(CONF_DIR, "attack").glob("[!_]*.yaml"))


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


FACE_TINY = {"layers": [1, 1], "widths": [4, 8], "embedding_size": 8, "input_size": 16}
#: a TransReID of the real structure (overlapping patches, SIE, JPM), tiny
REID_TINY = {"img_size": [32, 16], "patch": 8, "stride": 4, "dim": 16, "depth": 2, "heads": 2}
#: the published configurations' SIE and heads (conf/reid/transreid_*_<dataset>.yaml)
REID_DATASETS = {"market1501": {"cameras": 6, "views": 0, "shift": 5, "num_classes": 751},
                 "veri": {"cameras": 20, "views": 8, "shift": 8, "num_classes": 576}}
# where the official TransReID runs write their checkpoints (the configs' OUTPUT_DIR, as published;
# the Market DeiT folder's name is the official config's, typo included)
TRANSREID_FOLDERS = {("market1501", "vit"): "market_vit_transreid_stride",
                     ("market1501", "deit"): "0321_market_deit_transreie",
                     ("veri", "vit"): "veri_vit_transreid_stride",
                     ("veri", "deit"): "veri_deit_transreid_stride"}


def make_reid_tree(root: Path, layout: str, seed: int = 0) -> Path:
    """A Market-1501 or VeRi-776 tree with the published file names: 4 identities seen by 5
    cameras in the gallery, one query each by a sixth camera, 2 distractors and a junk box (Market),
    a train split, VeRi's keypoint files (views)."""
    rng = np.random.default_rng(seed)
    sub = {"market1501": ("bounding_box_test", "query", "bounding_box_train"),
           "veri": ("image_test", "image_query", "image_train")}[layout]

    def name(pid: int, cam: int, k: int) -> str:
        if layout == "market1501":
            return f"{pid:04d}_c{cam}s1_{k:06d}_01.jpg" if pid >= 0 else f"-1_c{cam}s1_{k:06d}_01.jpg"
        return f"{pid:04d}_c{cam:03d}_{k:08d}_0.jpg"

    files = {sub[0]: [name(p, c, 10 * p + c) for p in range(1, 5) for c in range(1, 6)],
             sub[1]: [name(p, 6, 100 + p) for p in range(1, 5)], sub[2]: [name(p, 1, 200 + p) for p in (7, 8)]}
    if layout == "market1501":
        files[sub[0]] += [name(0, 2, 300), name(0, 4, 301), name(-1, 1, 302)]
    keypoints = {}
    for folder, names in files.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for f in names:
            cv2.imwrite(str(root / folder / f), rng.integers(0, 256, (40, 20, 3), dtype=np.uint8))
            keypoints[f"{folder}/{f}"] = int(rng.integers(0, 8))
    if layout == "veri":
        for split, folders in (("test", sub[:2]), ("train", sub[2:])):
            (root / f"keypoint_{split}.txt").write_text("".join(
                f"{k} 1 2 3 {v}\n" for k, v in keypoints.items() if k.split("/")[0] in folders))
    return root


def make_experiment_data(root: Path) -> Path:
    """Everything the paper experiments expect under ``paths.data_dir``, tiny: image folders and
    LSUN LMDBs (SIFT threat); verification .bin files, a CelebA folder and face-model checkpoints
    of tiny architectures in the published formats (AVIH threat)."""
    import torch

    from reconattack.data.faces import make_bin
    from reconattack.models.face import AdaFaceIResNet, IResNet

    make_image_folder(root / "celebahq", n=10, size=72)
    make_image_folder(root / "ffhq", n=4, size=300, seed=3)
    make_lmdb(root / "lsun" / "bird", n=10, size=80)
    make_image_folder(root / "lsun" / "dining_room", n=10, size=64, seed=5)
    rng = np.random.default_rng(0)
    for name in ("lfw", "agedb_30", "cfp_fp"):
        pics = (rng.random((16, 24, 24, 3)) * 255).astype(np.uint8)  # 24 px: resized, with a warning
        make_bin(root / "faces_emore" / f"{name}.bin", pics, [True, False] * 4)
    celeba = root / "celeba" / "img_align_celeba"
    celeba.mkdir(parents=True)
    for i in range(6):
        cv2.imwrite(str(celeba / f"{i:06d}.jpg"), (rng.random((22, 18, 3)) * 255).astype(np.uint8))
    models = root / "models"
    torch.manual_seed(0)
    for folder in ("ms1mv3_arcface_r18_fp16", "ms1mv3_arcface_r50_fp16"):  # insightface layout
        (models / folder).mkdir(parents=True)
        torch.save(IResNet(**FACE_TINY).state_dict(), models / folder / "backbone.pth")
    for name in ("adaface_ir101_webface12m.ckpt", "adaface_ir50_ms1mv2.ckpt"):  # AdaFace's .ckpt
        ada = AdaFaceIResNet(**FACE_TINY)
        torch.save({"state_dict": {f"model.{k}": v for k, v in ada.state_dict().items()}, "epoch": 3},
                   models / name)
    from reconattack.models.reid import TransReID

    for dataset, settings in REID_DATASETS.items():  # re-identification: data and TransReID checkpoints
        make_reid_tree(root / dataset, dataset)
        for backbone in ("vit", "deit"):  # as the official training saves them
            folder = models / "transreid" / TRANSREID_FOLDERS[dataset, backbone]
            folder.mkdir(parents=True)
            torch.save(TransReID(**REID_TINY, **settings).state_dict(), folder / "transformer_120.pth")
    for aux in ("lpw/scen1/view1/0001", "stanford_cars/cars_train"):
        (root / aux).mkdir(parents=True)
        for i in range(4):
            cv2.imwrite(str(root / aux / f"{i:05d}.jpg"), (rng.random((30, 24, 3)) * 255).astype(np.uint8))
    return root


def compose_cfg(overrides: list[str] | None = None, hydra_config: bool = False):
    """Compose ``conf/config.yaml`` with overrides, as the CLI does (without running Hydra)."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=list(overrides or []), return_hydra_config=hydra_config)


def base_overrides(tmp: Path, data_dir: Path | None = None) -> list[str]:
    """Run directory, caches, CPU, CSV logging, no progress bar."""
    os.environ["RECONATTACK_OFFLINE"] = "1"
    return [f"paths.output_dir={tmp / 'run'}", f"paths.cache_dir={tmp / 'cache'}",
            f"paths.data_dir={data_dir or tmp / 'data'}", "trainer=cpu", "logger=csv",
            "trainer.callbacks.progress=null"]


#: tiny settings per threat model (``threat.name``)
TINY_THREAT = {
    "sift": ["data.num_workers=0", "data.batch_size=2", "data.eval_batch_size=2"],
    "avih": ["data.image_size=16", "data.gallery_size=6", "data.pool=3", "data.num_workers=0",
             "data.batch_size=4", "data.eval_batch_size=8", "threat.key_share=0.5",
             "threat.encrypt.iterations=3", "threat.encrypt.batch_size=16", "threat.key.net.base=4",
             "threat.key.net.depth=2", "threat.num_samples=2"],
    "avih_reid": ["data.image_size=[32,16]", "data.gallery_size=16", "data.pool=6", "data.num_workers=0",
                  "data.batch_size=4", "data.eval_batch_size=8", "threat.key_share=0.5",
                  "threat.encrypt.iterations=3", "threat.encrypt.batch_size=16", "threat.key.net.base=4",
                  "threat.key.net.depth=2", "threat.num_samples=2"],
}
def tiny_attack(cfg) -> list[str]:
    """The attack's tiny settings: ``tiny(cfg)`` of the test module of its class's module,
    ``reconattack.attacks.<module>`` → ``tests/attacks/test_<module>.py`` (a new attack brings them
    with its tests; a test checks every attack config has them; variants such as SLI-B share
    their attack's)."""
    import importlib

    module = str(cfg.attack._target_).split(".")[-2]
    return list(importlib.import_module(f"tests.attacks.test_{module}").tiny(cfg))


def _face_tiny(cfg, role: str) -> list[str]:
    net = cfg.threat[role].net
    if "ConvEmbedder" in net._target_:
        return [f"threat.{role}.net.widths=[4,8]", f"threat.{role}.net.embedding_size=8",
                f"threat.{role}.net.input_size=16"] + (
            [f"threat.{role}.train.steps=2"] if cfg.threat[role].get("train") else [])
    return ([f"threat.{role}.net.{k}={v}".replace(" ", "") for k, v in FACE_TINY.items()]
            + ([f"threat.{role}.train.steps=2"] if cfg.threat[role].get("train") else []))


def _reid_tiny(cfg, role: str) -> list[str]:
    return ([f"threat.{role}.net.{k}={v}".replace(" ", "") for k, v in REID_TINY.items()]
            + ([f"threat.{role}.train.steps=2"] if cfg.threat[role].get("train") else []))


def tiny_overrides(cfg) -> list[str]:
    """Overrides that shrink the composed experiment ``cfg`` (threat, attack, networks)."""
    out = list(TINY_THREAT[cfg.threat.name])
    if cfg.threat.name == "avih":
        out += _face_tiny(cfg, "service") + _face_tiny(cfg, "evaluation")
        if "DigitsFaces" in cfg.data.source._target_:
            out += ["data.source.split.models=60", "data.source.split.auxiliary=20",
                    "data.source.split.queries=30"]
    if cfg.threat.name == "avih_reid":
        out += _reid_tiny(cfg, "service") + _reid_tiny(cfg, "evaluation")
        if "DigitPersons" in cfg.data.source._target_:
            out += ["data.source.identities.models=10", "data.source.identities.test=8",
                    "data.source.images_per_identity=8", "data.source.auxiliary=20"]
    if cfg.get("attack") is not None:
        out += tiny_attack(cfg)
    return out


def experiment_overrides(name: str | None, tmp: Path, data_dir: Path | None = None,
                         extra: list[str] | None = None) -> list[str]:
    """``+experiment=name`` (None: the default experiment) shrunk to run in seconds on CPU."""
    first = ([f"+experiment={name}"] if name else []) + list(extra or [])
    cfg = compose_cfg(first)
    return [*first, *base_overrides(tmp, data_dir), *tiny_overrides(cfg)]


def coarse_only(tmp: Path, *extra: str) -> list[str]:
    """The default experiment with its coarse stage alone, tiny networks and the GAN step
    (``loss.adv`` > 0: the discriminator step, then the generator step, is what the checkpoint
    and resume tests save and continue; the demo itself trains without it)."""
    return [*experiment_overrides(None, tmp), "attack.stages=[coarse]", "attack.steps.coarse=2", "loss.adv=0.002",
            "model.coarse.enc_channels=[8,8,8,8]", "model.coarse.dec_channels=[8,8,8,8]",
            "model.coarse.enc_mid=[8,8,8,8]", "metrics.metrics=[mse,psnr,ssim]", *extra]


def trust_weights(monkeypatch, path, key: str | None = None) -> None:
    """Pin the SHA-256 of a test's own weights file (random weights saved in a library's format
    where the library keeps them) under ``key`` (default: the file's name), in place of the
    published file's: the loading code then runs as it does for the real weights."""
    from reconattack.utils.files import sha256_file
    from reconattack.utils.weights import PINNED_SHA256

    monkeypatch.setitem(PINNED_SHA256, key or Path(path).name, sha256_file(path))


def reloads_strictly(over: list[str], tmp: Path, stage: str, metrics: dict, other: str, refusal: str) -> None:
    """The run of ``over`` (written under ``tmp/run``) again from its ``stage`` checkpoint alone
    (``attack.test_only=true``): the same test PSNR; and with the override ``other`` (another
    architecture) the checkpoint is refused, the error matching ``refusal``."""
    import pytest

    from reconattack.run import run

    ckpt = tmp / "run" / "checkpoints" / f"{stage}.ckpt"
    load = [*over, "attack.test_only=true", f"attack.checkpoints.{stage}={ckpt}"]
    again = run(compose_cfg([*load, f"paths.output_dir={tmp / 'again'}"]))
    assert again["test/psnr"] == pytest.approx(metrics["test/psnr"])
    with pytest.raises(Exception, match=refusal):
        run(compose_cfg([*load, f"paths.output_dir={tmp / 'other'}", other]))


def demo_tiny(tmp: Path) -> list[str]:
    """The AVIH demo at 16 px with 24 gallery images, in seconds."""
    return [*experiment_overrides("demo_avih", tmp), "data.gallery_size=24", "data.pool=12",
            "threat.key_share=0.1", "threat.encrypt.iterations=3", "attack.steps.attack=2"]


def tensor_storages() -> dict[int, int]:
    """``{storage address: bytes}`` of every tensor alive in this process (for peak-memory tests:
    what a pass allocates and keeps)."""
    import gc

    import torch

    out = {}
    for o in gc.get_objects():
        if issubclass(type(o), torch.Tensor):  # type(): isinstance would touch deprecated proxies
            try:
                st = o.untyped_storage()
            except (RuntimeError, NotImplementedError):
                continue
            out[st.data_ptr()] = st.nbytes()
    return out
