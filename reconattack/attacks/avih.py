"""AVIH pipeline: face models → key models → encrypted gallery → DR attack → paper rows.

``attack.pipeline: reconattack.attacks.avih.run_pipeline``. ``attack.stages`` is ``[encrypt]``
(``avih_encrypt_*`` experiments: encrypt the gallery and report its metrics) or
``[encrypt, attack]`` (``avih_attack_*`` and the demo).

Everything that does not depend on the attack's own settings is a content-addressed artifact
(:mod:`reconattack.artifacts`) under ``paths.cache_dir/artifacts``: the demo's trained face
models, trained key models and the encrypted gallery. A key-share × seed sweep therefore
encrypts once; the first job builds, the others reuse (``attack.reuse_artifacts=false`` turns
the sharing off).

Key share (SPEC §3.1): with pool size N, ``attack.key_share`` p leaks ``round(p·N)`` pool images
encrypted with the target key (drawn with the run's ``seed``); the attacker trains on those only
and is evaluated on every held-out image, all encrypted with the same target key.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from reconattack.artifacts import ArtifactStore, file_fingerprint
from reconattack.attacks.avih_encrypt import AVIHEncryptor
from reconattack.attacks.avih_reconstruct import ROWS, AVIHReconstructor
from reconattack.attacks.face_classifier import FaceClassifier, train_loader
from reconattack.data.avih import (
    AVIHData,
    EncryptDataModule,
    EncryptionJobs,
    HeldOutRows,
    LeakedWithAuxiliary,
    ReconstructDataModule,
    build_avih_data,
    encryption_jobs,
    missing_inputs,
)
from reconattack.data.images import DataNotFoundError
from reconattack.models.face import build_face_model
from reconattack.models.keys import PatchGAN, build_key_model
from reconattack.runtime import (
    is_global_zero,
    make_logger,
    make_metric_callback,
    make_trainer,
    process_rank,
    save_grid,
)

log = logging.getLogger(__name__)

#: a Trainer on one device, for the artifact builders (run by rank 0 only)
SINGLE_DEVICE = {"devices": 1, "num_nodes": 1, "strategy": "auto", "sync_batchnorm": False}
FACE_MODEL_KEYS = ("arch", "layout", "layers", "widths", "embedding_size", "input_size", "dropout",
                   "channel_order", "format")


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else copy.deepcopy(node)


# ------------------------------------------------------------------------------ checking
def leaked_count(key_share: float, pool: int) -> int:
    """round(p·N) with halves rounded up; raises ValueError for p outside (0, 1] or no leak."""
    p = float(key_share)
    if not 0.0 < p <= 1.0:
        raise ValueError(f"attack.key_share must be in (0, 1], got {key_share}")
    n = int(math.floor(p * pool + 0.5))
    if n < 1:
        raise ValueError(f"attack.key_share={p} leaks no image: round({p} x {pool} pool images) = 0; "
                         f"use attack.key_share >= {0.5 / pool:.4g} or a larger data.gallery.pool")
    return n


def check_inputs(cfg: DictConfig) -> None:
    """Every missing input (data, checkpoints) in one message, before any work."""
    missing = missing_inputs(cfg.data)
    for role in ("service", "evaluation"):
        m = cfg.model[role]
        ckpt = m.get("checkpoint")
        if ckpt:
            if not Path(str(ckpt)).expanduser().is_file():
                missing.append(f"model.{role}.checkpoint: {m.get('description', 'a face model')} "
                               f"at {ckpt}")
        elif not m.get("train"):
            missing.append(f"model.{role}.checkpoint is not set (no checkpoint and no demo training)")
    for i, ckpt in enumerate(cfg.model.key.get("checkpoints") or []):
        if not Path(str(ckpt)).expanduser().is_file():
            missing.append(f"model.key.checkpoints[{i}]: key model weights at {ckpt}")
    if cfg.attack.get("checkpoint") and not Path(str(cfg.attack.checkpoint)).expanduser().is_file():
        missing.append(f"attack.checkpoint: trained attacker at {cfg.attack.checkpoint}")
    if missing:
        raise DataNotFoundError("missing inputs (nothing can be downloaded for these):\n  "
                                + "\n  ".join(missing))


def data_spec(data_cfg: DictConfig) -> dict:
    """The part of ``cfg.data`` that determines the image sets (not loader settings)."""
    spec = {k: v for k, v in _plain(data_cfg).items()
            if k not in ("batch_size", "eval_batch_size", "num_workers", "_target_")}
    for role in ("gallery", "auxiliary"):
        part = spec.get(role) or {}
        if part.get("kind") == "bin" and part.get("path"):
            part["file"] = file_fingerprint(part["path"])
    return spec


# ------------------------------------------------------------------------------ face models
def face_model(cfg: DictConfig, role: str, data: AVIHData, store: ArtifactStore, run_dir: Path):
    """The ``model.<role>`` face model (``service`` / ``evaluation``), frozen, in eval mode:
    loaded from its checkpoint, or (embedded demo) trained as an identity classifier on
    ``data.models_train`` once and kept as an artifact."""
    m = cfg.model[role]
    kwargs = {k: _plain(m[k]) for k in FACE_MODEL_KEYS if m.get(k) is not None}
    if m.get("checkpoint"):
        model = build_face_model(checkpoint=str(m.checkpoint), **kwargs)
        spec = {"model": kwargs, "checkpoint": file_fingerprint(m.checkpoint)}
    else:
        train = m.train
        if data.models_train is None:
            raise ValueError(f"model.{role}.train needs data with a models_train split (the demo)")
        spec = {"model": kwargs, "train": _plain(train), "data": data_spec(cfg.data)}

        def build(tmp: Path) -> None:
            with torch.random.fork_rng():  # the same model whatever ran before
                torch.manual_seed(int(train.seed))
                _train_face_model(tmp)

        def _train_face_model(tmp: Path) -> None:
            embedder = build_face_model(seed=int(train.seed), **kwargs)
            images, labels = data.models_train.images, data.models_train.labels
            module = FaceClassifier(embedder, int(labels.max()) + 1, lr=float(train.lr),
                                    weight_decay=float(train.weight_decay), scale=float(train.scale),
                                    margin=float(train.margin), shift=int(train.shift),
                                    color=float(train.get("color", 0.0)))
            trainer = make_trainer(cfg, run_dir, f"{role}_model", int(train.steps), logger=False,
                                   **SINGLE_DEVICE)
            trainer.fit(module, train_loader(images, labels, int(train.steps), int(train.batch_size),
                                             int(train.seed)))
            torch.save(embedder.backbone.state_dict(), tmp / "backbone.pt")

        path = store.get("face_model", spec, build, what=f"{role} model")
        model = build_face_model(checkpoint=str(path / "backbone.pt"), **{**kwargs, "format": "reconattack"})
    model.eval().requires_grad_(False)
    return model, spec


# ------------------------------------------------------------------------------ key models
def key_models(cfg: DictConfig) -> tuple[list[torch.nn.Module], dict]:
    """The client's key models: ``model.key.count`` networks from seeds ``seed, seed+1, ...`` or
    loaded from ``model.key.checkpoints``. Frozen, eval mode."""
    k = cfg.model.key
    net = _plain(k.get("net") or {})
    ckpts = list(k.get("checkpoints") or [])
    count = len(ckpts) if ckpts else int(k.count)
    if count < 1:
        raise ValueError("model.key.count must be >= 1")
    init = {"init": str(k.get("init", "pix2pix")), "calibrate_size": k.get("calibrate_size")}
    keys, spec = [], {"arch": k.arch, "net": net, "keys": [], **({} if ckpts else init)}
    for i in range(count):
        if ckpts:
            model = build_key_model(k.arch, checkpoint=str(ckpts[i]), **net)
            spec["keys"].append(file_fingerprint(ckpts[i]))
        else:
            model = build_key_model(k.arch, seed=int(k.seed) + i, **init, **net)
            spec["keys"].append({"seed": int(k.seed) + i})
        keys.append(model.eval().requires_grad_(False))
    return keys, spec


# ------------------------------------------------------------------------------ encryption
def make_encryptor(cfg: DictConfig, service, keys) -> AVIHEncryptor:
    e, w = cfg.attack.encrypt, cfg.loss.encrypt
    return AVIHEncryptor(
        service, keys, weights={k: w[k] for k in ("task", "diff", "rec", "vc")},
        vc_kernel=int(w.vc_kernel), distances=_plain(w.distances), iterations=int(e.iterations),
        optimizer=str(e.optimizer), lr=float(e.lr), momentum=float(e.momentum), decay=float(e.decay),
        patience=int(e.patience), init=str(e.init), seed=int(e.seed), log_every=int(e.log_every))


def _encryption_test(cfg: DictConfig, run_dir: Path, encryptor: AVIHEncryptor, jobs: EncryptionJobs,
                     logger) -> dict:
    cb = make_metric_callback(cfg, ("test",))
    trainer = make_trainer(cfg, run_dir, "encrypt", max_steps=-1, logger=logger, callbacks=[cb],
                           inference_mode=False, **SINGLE_DEVICE)
    dm = EncryptDataModule(jobs, batch_size=int(cfg.attack.encrypt.batch_size),
                           num_workers=int(cfg.data.num_workers))
    trainer.test(encryptor, datamodule=dm, verbose=False)
    out = dict(cb.results.get("test", {}))
    cos = trainer.callback_metrics.get("encrypt/service_cos")
    if cos is not None:
        out["encrypt/service_cos"] = float(cos)
    return out


def encrypted_gallery(cfg: DictConfig, run_dir: Path, data: AVIHData, service, service_spec: dict,
                      keys, keys_spec: dict, store: ArtifactStore, logger) -> tuple[dict, dict]:
    """Encrypt the gallery once (artifact) and evaluate it.

    Returns ``(gallery, metrics)``: ``gallery`` has ``encrypted`` / ``recovered`` float32
    (M, 3, H, W) in [0, 1], ``index`` / ``key_id`` int64 (M,) and ``role`` int8 (M,) (0 held out,
    1 pool with the target key, 2 decoy; see :func:`reconattack.data.avih.encryption_jobs`);
    ``metrics`` the ``encrypt/*`` values."""
    e = cfg.attack.encrypt
    target = int(cfg.attack.target_key)
    index, key_id, role = encryption_jobs(data.pool, len(data.gallery), len(keys), target,
                                          bool(e.decoys))
    spec = {"data": data_spec(cfg.data), "service": service_spec, "keys": keys_spec,
            "loss": _plain(cfg.loss.encrypt), "target_key": target,
            "encrypt": {k: v for k, v in _plain(e).items() if k not in ("batch_size", "log_every")}}
    encryptor = make_encryptor(cfg, service, keys)
    built: dict = {}

    def build(tmp: Path) -> None:
        jobs = EncryptionJobs(data.gallery.images, index, key_id)
        built["metrics"] = _encryption_test(cfg, run_dir, encryptor, jobs, logger)
        out = encryptor.collected()
        if not torch.equal(out["index"], torch.from_numpy(index)):
            raise RuntimeError("encryption lost or reordered jobs")  # a bug, not a user error
        torch.save({"encrypted": out["encrypted"], "recovered": out["recovered"],
                    "index": out["index"], "key_id": out["key_id"], "role": torch.from_numpy(role),
                    "names": [data.gallery.names[i] for i in index] if data.gallery.names else []},
                   tmp / "gallery.pt")
        (tmp / "metrics.json").write_text(json.dumps(built["metrics"], indent=2, default=str))
        _write_curve(encryptor.curve, tmp / "curve.csv")

    path = store.get("encrypted_gallery", spec, build, what="encrypted gallery")
    gallery = torch.load(path / "gallery.pt", map_location="cpu", weights_only=True)
    metrics = built.get("metrics")
    if metrics is None:  # reused: evaluate the stored encryption with this run's metric settings
        jobs = EncryptionJobs(data.gallery.images, gallery["index"].numpy(), gallery["key_id"].numpy(),
                              encrypted=gallery["encrypted"])
        metrics = _encryption_test(cfg, run_dir, encryptor, jobs, logger)
    metrics["encrypt/images"] = int(len(gallery["index"]))
    if is_global_zero():
        _encryption_grid(data, gallery, keys, run_dir / "samples" / "encrypt_grid.png",
                         int(cfg.attack.num_samples))
    log.info("encrypted gallery: %s", path)
    return gallery, metrics


def _write_curve(rows: list[dict], path: Path) -> None:
    if not rows:
        return
    cols = list(rows[0])
    path.write_text(",".join(cols) + "\n" + "\n".join(",".join(f"{r[c]:.6g}" for c in cols)
                                                    for r in rows) + "\n")


@torch.no_grad()
def _encryption_grid(data: AVIHData, gallery: dict, keys, path: Path, n: int) -> None:
    from reconattack.data.avih import to_tensor

    held = torch.nonzero(gallery["role"] == 0).flatten()[:n]
    x = to_tensor(data.gallery.images[gallery["index"][held].numpy()])
    enc, rec = gallery["encrypted"][held], gallery["recovered"][held]
    cols = [x, enc, rec]
    if len(keys) > 1:
        wrong_key = (gallery["key_id"][held] + 1) % len(keys)
        cols.append(torch.cat([keys[int(k)](enc[i:i + 1]) for i, k in enumerate(wrong_key)]))
    save_grid([c * 2 - 1 for c in cols], path, max_rows=n)
    path.with_suffix(".txt").write_text("original | encrypted | key-model recovery"
                                        + (" | wrong-key recovery" if len(keys) > 1 else "") + "\n")


# ------------------------------------------------------------------------------ the attack
def build_reconstructor(cfg: DictConfig, service, evaluation) -> AVIHReconstructor:
    a, lw = cfg.model.attacker, cfg.loss.attack
    attacker = build_key_model(a.arch, seed=int(cfg.seed), **_plain(a.get("net") or {}))
    gan_on = float(lw.gan) > 0
    disc = None
    if gan_on:
        with torch.random.fork_rng():
            torch.manual_seed(int(cfg.seed) + 1)
            disc = PatchGAN(**_plain(cfg.model.discriminator))
    r = cfg.attack.reconstruct
    return AVIHReconstructor(
        attacker, disc, service, evaluation, weights={"identity": float(lw.identity), "gan": float(lw.gan)},
        augment=_plain(lw.augment) if lw.get("augment") else None,
        identity_distance=str(lw.identity_distance), gan_mode=str(lw.gan_mode),
        optimizer=hydra.utils.instantiate(r.optimizer), optimizer_d=hydra.utils.instantiate(r.optimizer_d))


def attack(cfg: DictConfig, run_dir: Path, data: AVIHData, gallery: dict, service, evaluation,
           logger) -> dict:
    """Train the attacker on the leaked same-key images and evaluate the paper's rows."""
    pl.seed_everything(int(cfg.seed), workers=True)  # independent of which artifacts were built
    target, role = int(cfg.attack.target_key), gallery["role"]
    n_leak = leaked_count(cfg.attack.key_share, data.pool)
    pool_slots = torch.nonzero((role == 1) & (gallery["key_id"] == target)).flatten().numpy()
    rng = np.random.default_rng(int(cfg.seed))
    leaked = np.sort(rng.choice(pool_slots, n_leak, replace=False))
    held = torch.nonzero(role == 0).flatten()
    r = cfg.attack.reconstruct
    steps = int(r.steps)
    train_set = LeakedWithAuxiliary(gallery["encrypted"][leaked], data.auxiliary,
                                    steps * int(r.batch_size), seed=int(cfg.seed))
    random_idx = np.random.default_rng(int(cfg.data.get("selection_seed", 0)) + 2).integers(
        len(data.auxiliary), size=len(held))
    test_set = HeldOutRows(data, gallery["index"][held].numpy(), gallery["encrypted"][held],
                           gallery["recovered"][held], random_idx)
    dm = ReconstructDataModule(train_set, test_set, batch_size=int(r.batch_size),
                               eval_batch_size=int(cfg.data.eval_batch_size),
                               num_workers=int(cfg.data.num_workers))
    module = build_reconstructor(cfg, service, evaluation)
    log.info("DR attack: key share %s -> %d leaked same-key images of %d; %d held-out images",
             cfg.attack.key_share, n_leak, data.pool, len(held))
    ckpt = cfg.attack.get("checkpoint")
    if ckpt:
        state = torch.load(str(ckpt), map_location="cpu", weights_only=False)["state_dict"]
        module.load_state_dict(state, strict=False)
    else:
        per_step = 2 if module.discriminator is not None else 1
        trainer = make_trainer(cfg, run_dir, "attack", steps * per_step, logger=logger)
        trainer.fit(module, datamodule=dm)
        trainer.save_checkpoint(str(run_dir / "checkpoints" / "attack.ckpt"))
    cb = make_metric_callback(cfg, ("test",))
    tester = make_trainer(cfg, run_dir, "attack", max_steps=-1, logger=logger, callbacks=[cb])
    tester.test(module, datamodule=dm, verbose=False)
    metrics = dict(cb.results.get("test", {}))
    metrics.update({"attack/key_share": float(cfg.attack.key_share), "attack/leaked_images": n_leak,
                    "attack/heldout_images": int(len(held))})
    if is_global_zero():
        _attack_grid(module, test_set, run_dir / "samples" / "test_grid.png", int(cfg.attack.num_samples))
    return metrics


@torch.no_grad()
def _attack_grid(module: AVIHReconstructor, test_set: HeldOutRows, path: Path, n: int) -> None:
    module.eval()
    items = [test_set[i] for i in range(min(n, len(test_set)))]
    batch = {k: torch.stack([it[k] for it in items]).to(module.device)
             for k in ("original", "encrypted", "key_recovered", "random")}
    rows = module.rows(batch)
    save_grid([rows[name] * 2 - 1 for name in ROWS], path, max_rows=n)
    path.with_suffix(".txt").write_text(" | ".join(ROWS) + "\n")


# ------------------------------------------------------------------------------ pipeline
def run_pipeline(cfg: DictConfig, run_dir: Path) -> dict:
    """The AVIH experiment (see the module docstring); returns the flat metrics."""
    stages = list(cfg.attack.stages)
    if stages not in (["encrypt"], ["encrypt", "attack"]):
        raise ValueError(f"attack.stages must be [encrypt] or [encrypt, attack], got {stages}")
    if "attack" in stages:
        leaked_count(cfg.attack.key_share, int(cfg.data.gallery.pool))  # fail before any work
    check_inputs(cfg)
    store = ArtifactStore(Path(cfg.paths.cache_dir) / "artifacts",
                          reuse=bool(cfg.attack.reuse_artifacts),
                          private_root=run_dir / "artifacts", rank=process_rank())
    data = build_avih_data(cfg.data)
    logger = make_logger(cfg, run_dir)
    if logger:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    service, service_spec = face_model(cfg, "service", data, store, run_dir)
    evaluation, _ = face_model(cfg, "evaluation", data, store, run_dir)
    keys, keys_spec = key_models(cfg)
    gallery, metrics = encrypted_gallery(cfg, run_dir, data, service, service_spec, keys, keys_spec,
                                         store, logger)
    if "attack" in stages:
        metrics.update(attack(cfg, run_dir, data, gallery, service, evaluation, logger))
    metrics["artifacts/built"] = len(store.built)
    if logger:
        logger.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        logger.finalize("success")
    return metrics
