"""The AVIH threat model (SPEC §3, the AVIH attack paper §III): a face gallery encrypted with
Adversarial Visual Information Hiding under private key models; the attacker has the white-box
service model, auxiliary images of the category, and the encrypted images that share the
target key (the key share).

Policy, all here:

- **Roles** (:class:`Role`): the gallery's first ``data.pool`` images are the attacker's pool,
  the rest are held out for evaluation.
- **Encryption jobs** (:func:`encryption_jobs`): every held-out and every pool image is
  encrypted with the target key; with ``encrypt.decoys`` (off by default: nothing reads them, and
  they cost +50 % of the encryption) every pool image once more with another key (the part of the
  gallery that does not share the target key), reported apart as ``encrypt/decoy_*``
  (``encrypt/*`` are always the target-key images). Independent of the key share, so one
  encryption serves a whole key-share sweep.
- **Key share** p (:func:`leaked_count`): the attacker trains on ``round(p · pool)`` pool images
  encrypted with the target key, drawn with the run ``seed``, and is evaluated on every held-out
  image (same key).

Everything that does not depend on the run seed or the key share is a content-addressed
artifact (:mod:`reconattack.engine.artifacts`) under ``paths.cache_dir/artifacts``: the demo's trained
face models and the encrypted gallery. A key-share × seed sweep encrypts once.

Controls (paper Tables I–III): ``original`` (the gallery images), ``protected`` (the encrypted
images), ``key_model`` (the true key's reconstruction) and ``random`` (auxiliary images), each
scored like the attack: pixel metrics against the original and TPR@FAR of the **evaluation**
model's cosine scores on the verification pairs.
"""

from __future__ import annotations

import enum
import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from reconattack.data.avih import (
    EncryptionJobs,
    GalleryParts,
    HeldOutRows,
    LeakedWithAuxiliary,
    RowsOf,
    to_tensor,
)
from reconattack.data.images import DataNotFoundError
from reconattack.data.sampling import (
    ResumableLoader,
    ResumableSampler,
    consumed_batches,
    loader_generator,
    trainer_rank_and_world,
)
from reconattack.defences.avih import avih_defence
from reconattack.errors import ConfigError
from reconattack.metrics.functional import SAVED_FORMATS, as_saved
from reconattack.models.face import make_face_model
from reconattack.models.keys import make_key_model
from reconattack.threats.avih_encryption import AVIHEncryptor, load_chunks
from reconattack.threats.base import Artifacts, Reconstruct, ThreatEvaluation, ThreatModel
from reconattack.threats.identity_classifier import IdentityClassifier, train_loader
from reconattack.threats.key_training import KeyDenoiser, key_train_loader
from reconattack.utils.config import as_hw, build, factory, plain
from reconattack.utils.distributed import per_process_batch, world_size_of
from reconattack.utils.files import file_fingerprint
from reconattack.utils.grids import save_grid
from reconattack.utils.seeding import seeded

log = logging.getLogger(__name__)

#: configuration keys that decide a recognition model's weights and inputs (artifact specs); not
#: the description
MODEL_SPEC_KEYS = ("net", "channel_order", "mean", "std", "format", "train")


class Role(enum.IntEnum):
    """Role of an encrypted gallery image."""

    HELD_OUT = 0  # evaluated, encrypted with the target key
    POOL = 1  # the attacker's pool, encrypted with the target key (the key share leaks some)
    DECOY = 2  # a pool image encrypted once more with another key


def leaked_count(key_share: float, pool: int) -> int:
    """round(p·N) with halves rounded up; ConfigError for p outside (0, 1] or no leaked image."""
    p = float(key_share)
    if not 0.0 < p <= 1.0:
        raise ConfigError(f"threat.key_share must be in (0, 1], got {key_share}")
    n = int(math.floor(p * pool + 0.5))
    if n < 1:
        raise ConfigError(f"threat.key_share={p} leaks no image: round({p} x {pool} pool images) = 0; "
                          f"use threat.key_share >= {0.5 / pool:.4g} or a larger data.pool")
    return n


def encryption_jobs(pool: int, n_gallery: int, num_keys: int, target_key: int = 0,
                    decoys: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which gallery image is encrypted with which key (see the module docstring).

    Returns ``(index, key_id, role)``: int64 gallery indices, int64 key ids, int8 :class:`Role`
    values. Decoys use key ``others[i mod (K-1)]`` for pool image i.
    """
    if num_keys < 1 or not 0 <= target_key < num_keys:
        raise ConfigError(f"need 0 <= threat.target_key < number of keys, got {target_key} and {num_keys}")
    held = np.arange(pool, n_gallery)
    pool_idx = np.arange(pool)
    index = [held, pool_idx]
    key = [np.full(len(held), target_key), np.full(pool, target_key)]
    role = [np.full(len(held), Role.HELD_OUT), np.full(pool, Role.POOL)]
    if decoys and num_keys > 1:
        others = [k for k in range(num_keys) if k != target_key]
        index.append(pool_idx)
        key.append(np.asarray([others[i % len(others)] for i in range(pool)]))
        role.append(np.full(pool, Role.DECOY))
    return (np.concatenate(index).astype(np.int64), np.concatenate(key).astype(np.int64),
            np.concatenate(role).astype(np.int8))


class AVIHDataModule(pl.LightningDataModule):
    """The AVIH leak and held-out data: ``train`` = leaked same-key encrypted images with
    auxiliary images (:class:`~reconattack.data.avih.LeakedWithAuxiliary`), ``test`` = the
    held-out rows (:class:`~reconattack.data.avih.HeldOutRows`)."""

    def __init__(self, train: Dataset | None, test: Dataset, batch_size: int = 32,
                 eval_batch_size: int = 64, num_workers: int = 0) -> None:
        super().__init__()
        self.train_set, self.test_set = train, test
        self.batch_size, self.eval_batch_size = int(batch_size), int(eval_batch_size)
        self.num_workers = int(num_workers)

    def train_dataloader(self) -> DataLoader:
        """The leaked items in dataset order (each item is drawn from its own seed), each process
        its share, started where a restored checkpoint left off."""
        rank, world = trainer_rank_and_world(self)
        batch = per_process_batch(self.batch_size, world)
        sampler = ResumableSampler(len(self.train_set), batch, shuffle=False, rank=rank, world_size=world,
                                   start_batch=consumed_batches(self.trainer))
        return ResumableLoader(self.train_set, batch_size=batch, sampler=sampler, drop_last=True,
                               generator=loader_generator(0),
                               num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def test_dataloader(self) -> DataLoader:
        batch = per_process_batch(self.eval_batch_size, world_size_of(self), "data.eval_batch_size", exact=False)
        return DataLoader(self.test_set, batch_size=batch, shuffle=False,
                          num_workers=self.num_workers)


class AVIHEvaluation(ThreatEvaluation):
    """The AVIH rows: controls from the batch, TPR@FAR from the evaluation model's scores; and
    the threat's premise, checked on the *service* model: its TPR@FAR on the same pairs with the
    original gallery images (``service/original/``) and with the encrypted ones
    (``service/protected/``; AVIH keeps the service's accuracy: the paper's encrypted LFW gallery
    reaches 98.40 %, the original's figure).

    Args:
        evaluation, service: face models, (B, 3, H, W) in [-1, 1] -> (B, E) unit embeddings.
        saved_format, saved_quality: every row's images are written as this kind of image file
            and read back before anything is scored (:func:`~reconattack.metrics.functional.
            as_saved`; None: scored as computed).
    """

    #: the rows whose service-model scores are reported: the gallery as it was, and as stored
    SERVICE_ROWS = ("original", "protected")

    def __init__(self, evaluation: nn.Module, service: nn.Module | None = None,
                 saved_format: str | None = None, saved_quality: int = 95) -> None:
        super().__init__()
        self.evaluation = evaluation
        self.service = service
        self.saved_format, self.saved_quality = saved_format, int(saved_quality)

    def controls(self, batch: dict, reconstruct: Reconstruct | None) -> dict[str, torch.Tensor]:
        return {"original": batch["target"], "protected": batch["input"],
                "key_model": batch["key_recovered"], "random": batch["random"]}

    def saved(self, rows: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every row's images as written to image files and read back (``saved_as``)."""
        return {name: as_saved(images, self.saved_format, self.saved_quality) for name, images in rows.items()}

    def groups(self, batch: dict, rows: Mapping[str, torch.Tensor]) -> dict[str, dict]:
        rows = self.saved(rows)
        groups = super().groups(batch, rows)
        valid = batch["pair_valid"]
        if not valid.any():
            return groups
        q = batch["query"]

        def scores(model: nn.Module, gallery: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
            return (queries * model(gallery)[:, None, :]).sum(-1)[valid]  # cosine per valid pair

        query_emb = self.evaluation(q.flatten(0, 1)).unflatten(0, q.shape[:2])  # (B, P, E)
        for group in groups.values():
            group["scores"] = scores(self.evaluation, group["pred"], query_emb)
            group["is_same"] = batch["is_same"][valid]
        if self.service is not None and all(r in rows for r in self.SERVICE_ROWS):
            service_query = self.service(q.flatten(0, 1)).unflatten(0, q.shape[:2])
            for row in self.SERVICE_ROWS:
                groups[f"service/{row}/"] = {"metrics": (), "is_same": batch["is_same"][valid],
                                             "scores": scores(self.service, rows[row], service_query)}
        return groups


class AVIHThreat(ThreatModel):
    """An AVIH-encrypted face gallery (see the module docstring).

    Args:
        data: the ``data`` config: ``source`` (gallery source, ``_target_``), ``auxiliary``
            (auxiliary source or null when the source has one), ``image_size``,
            ``gallery_size``, ``pool``, ``selection_seed``, loader settings.
        service, evaluation: face model configs (``conf/face/*``): ``net`` (``_target_``),
            ``channel_order``, ``format`` (checkpoint format, ``_target_``), ``checkpoint``, or
            ``train`` (the embedded demo trains the model once, as an artifact).
        key: key models: ``net`` (``_target_``), ``count``, ``seed`` (key i from ``seed + i``),
            ``init``, ``calibrate_size``, or ``checkpoints`` (one state dict per key).
        encrypt: ``iterations``, ``optimizer`` (partial, ``_target_``), ``init``, ``seed``,
            ``decoys``, ``batch_size``, ``log_every``, ``loss`` (``task``, ``diff``, ``rec``,
            ``vc`` weights, ``vc_kernel``, ``distances``).
        key_share: p in (0, 1] (see the module docstring).
        target_key: index of the evaluation images' key model.
        reuse_artifacts: share artifacts between runs (False: rebuild inside the run directory).
        num_samples: rows of ``samples/encrypt_grid.png``.
        saved_as: ``{format, quality}``: every row's images (the Original row's too) are written
            as image files and read back before they are scored (:func:`~reconattack.metrics.
            functional.as_saved`: ``png`` 8 bits per channel, ``jpeg`` at ``quality``), as the
            paper's were; null: scored as computed.
    """

    provides = frozenset({"encrypted_images", "auxiliary_images", "service_model"})
    control_names = ("original", "protected", "key_model", "random")
    defences = ("none", "avih")

    def __init__(self, data: Any, service: Any, evaluation: Any, key: Any, encrypt: Any,
                 key_share: float = 0.1, target_key: int = 0, reuse_artifacts: bool = True,
                 num_samples: int = 8, saved_as: Any = None, seed: int = 0, **base: Any) -> None:
        super().__init__(data, seed=seed, **base)
        saved = dict(saved_as or {})
        self.saved_format, self.saved_quality = saved.get("format"), int(saved.get("quality", 95))
        if self.saved_format not in (None, *SAVED_FORMATS):
            raise ConfigError(f"threat.saved_as.format must be one of {SAVED_FORMATS} or null, "
                              f"got {self.saved_format!r}")
        self.service_cfg, self.evaluation_cfg, self.key_cfg = service, evaluation, key
        # defence=avih sets the VC weight or the key share (reconattack/defences/avih.py)
        encrypt, key_share = avih_defence(self.defence, encrypt, key_share)
        self.encrypt_cfg = encrypt
        self.pool = int(data.pool)
        self.gallery_size = int(data.gallery_size)
        if not 0 < self.pool < self.gallery_size:
            raise ConfigError(f"data.pool must be in (0, data.gallery_size={self.gallery_size}), "
                              f"got {self.pool}")
        self.key_share = float(key_share)
        self.n_leaked = leaked_count(self.key_share, self.pool)  # refused before any work
        self.target_key = int(target_key)
        self.reuse_artifacts = bool(reuse_artifacts)
        self.num_samples = int(num_samples)
        self.image_size = as_hw(data.image_size)  # (H, W)
        self.selection_seed = int(data.get("selection_seed", 0))
        self.source = build(data.source)
        self.auxiliary_source = build(data.auxiliary) if data.get("auxiliary") else None
        self._given: dict[str, Any] = {}

    # ------------------------------------------------------------------------ before any work
    def missing_inputs(self) -> list[str]:
        missing = list(self.source.missing())
        if self.auxiliary_source is not None:
            missing += self.auxiliary_source.missing()
        for role, m in (("service", self.service_cfg), ("evaluation", self.evaluation_cfg)):
            ckpt = m.get("checkpoint")
            if ckpt:
                if not Path(str(ckpt)).expanduser().is_file():
                    missing.append(f"threat.{role}.checkpoint: {m.get('description', 'a face model')} "
                                   f"at {ckpt}")
            elif not m.get("train"):
                missing.append(f"threat.{role}.checkpoint is not set (no checkpoint and no demo training)")
        for i, ckpt in enumerate(self.key_cfg.get("checkpoints") or []):
            if not Path(str(ckpt)).expanduser().is_file():
                missing.append(f"threat.key.checkpoints[{i}]: key model weights at {ckpt}")
        return missing

    # --------------------------------------------------------------------------------- build
    def given(self, name: str) -> Any:
        """What the threat gives the attacker by name (after :meth:`prepare`): ``service_model``."""
        if name not in self._given:
            raise KeyError(f"threat {self.name!r} gives {sorted(self._given)}; {name!r} not "
                           "available (is the threat prepared?)")
        return self._given[name]

    def prepare(self, ctx) -> dict:
        store = ctx.artifacts(self.reuse_artifacts)
        self.parts = self._load_data()
        self.service, service_spec = self._recognition_model("service", store, ctx)
        self.evaluation_model, _ = self._recognition_model("evaluation", store, ctx)
        self.keys, keys_spec = self._key_models(store, ctx)
        gallery, metrics = self._encrypted_gallery(ctx, store, service_spec, keys_spec)
        self._select(gallery)
        self._given["service_model"] = self.service
        if ctx.is_global_zero:
            self._encryption_grid(gallery, ctx.run_dir / "samples" / "encrypt_grid.png")
        metrics.update({"attack/key_share": self.key_share, "attack/leaked_images": self.n_leaked,
                        "attack/heldout_images": int(len(self.held)),
                        "artifacts/built": len(store.built)})
        log.info("AVIH threat: key share %s -> %d leaked same-key images of %d; %d held-out images",
                 self.key_share, self.n_leaked, self.pool, len(self.held))
        return metrics

    def _load_data(self) -> GalleryParts:
        h, w = self.image_size
        if h != w:
            raise ConfigError(f"data.image_size: the face sources are square, got {h}x{w}")
        parts = self.source.load(h, self.gallery_size, self.selection_seed)
        if self.auxiliary_source is not None:
            parts.auxiliary = self.auxiliary_source.load(self.image_size, self.selection_seed)
        if parts.auxiliary is None:
            raise ConfigError("data.auxiliary is not set and the gallery source has no auxiliary set")
        if len(parts.auxiliary) == 0:
            raise DataNotFoundError("data.auxiliary: the auxiliary set is empty")
        log.info("AVIH data: gallery %d (%d attacker pool / %d held out), %d queries, %d pairs "
                 "(%d genuine), auxiliary %d", len(parts.gallery), self.pool,
                 len(parts.gallery) - self.pool, len(parts.queries), len(parts.pair_same),
                 int(parts.pair_same.sum()), len(parts.auxiliary))
        return parts

    def data_spec(self) -> dict:
        """The part of ``data`` that determines the image sets (not loader settings)."""
        spec = {k: v for k, v in plain(self.data_cfg).items()
                if k not in ("batch_size", "eval_batch_size", "num_workers")}
        for role in ("source", "auxiliary"):
            part = spec.get(role) or {}
            path = part.get("path")
            if path and Path(str(path)).expanduser().is_file():
                part["file"] = file_fingerprint(path)
        return spec

    # ------------------------------------------------------------------ recognition models
    #: artifact kind of the demo's trained recognition models
    model_kind = "face_model"

    def make_model(self, m: Any, checkpoint: str | None = None, seed: int | None = None,
                   published: bool = True) -> nn.Module:
        """A recognition model from its config ``m`` (``conf/face/*``): (B, 3, H, W) in [-1, 1] →
        (B, E) unit embeddings; loaded from ``checkpoint`` — a published one in ``m.format``, or
        (``published=False``) the weights a demo training saved (:meth:`trained_weights`) — or
        built from ``seed``."""
        fmt = build(m.format) if checkpoint and published and m.get("format") else None
        return make_face_model(factory(m.net), str(m.get("channel_order", "rgb")),
                               checkpoint=checkpoint, format=fmt, seed=seed)

    @staticmethod
    def trained_weights(model: nn.Module) -> dict:
        """What a demo-trained model keeps (loaded back by :meth:`make_model` with no format)."""
        return model.backbone.state_dict()

    def _recognition_model(self, role: str, store: Artifacts, ctx) -> tuple[nn.Module, dict]:
        """``threat.<role>`` frozen in eval mode: loaded from its checkpoint, or (embedded demo)
        trained as an identity classifier on the demo's model split once, kept as an artifact."""
        m = self.model_cfg(role)
        spec = {k: plain(m.get(k)) for k in MODEL_SPEC_KEYS if m.get(k) is not None}
        if m.get("checkpoint"):
            model = self.make_model(m, checkpoint=str(m.checkpoint))
            spec["checkpoint"] = file_fingerprint(m.checkpoint)
            return model, spec
        train = m.train
        if self.parts.models_train is None:
            raise ConfigError(f"threat.{role}.train needs data with a split for the demo's "
                              "recognition models (the embedded demos)")
        spec["data"] = self.data_spec()

        def build_model(tmp: Path) -> None:
            with seeded(int(train.seed), all_devices=True):  # the same model whatever ran before
                embedder = self.make_model(m, seed=int(train.seed))
                models_train = self.parts.models_train
                images, labels = models_train.images, models_train.labels
                module = IdentityClassifier(embedder, int(labels.max()) + 1, lr=float(train.lr),
                                            weight_decay=float(train.weight_decay), scale=float(train.scale),
                                            margin=float(train.margin), shift=int(train.shift),
                                            color=float(train.get("color", 0.0)))
                trainer = ctx.trainer(f"{role}_model", int(train.steps), single_device=True,
                                      logger=False)
                trainer.fit(module, train_loader(images, labels, int(train.steps), int(train.batch_size),
                                                 int(train.seed), side=models_train.side or None))
            torch.save(self.trained_weights(embedder), tmp / "backbone.pt")

        path = store.get(self.model_kind, spec, build_model, what=f"{role} model")
        model = self.make_model(m, checkpoint=str(path / "backbone.pt"), published=False)
        return model, spec

    def model_cfg(self, role: str) -> Any:
        return self.service_cfg if role == "service" else self.evaluation_cfg

    # ------------------------------------------------------------------------- key models
    def _key_models(self, store: Artifacts, ctx) -> tuple[list[nn.Module], dict]:
        """The client's key models: ``key.count`` networks from seeds ``seed, seed+1, ...`` —
        random, or trained once on the auxiliary images when ``key.train`` is set
        (:mod:`~reconattack.threats.key_training`, an artifact per key) — or loaded from
        ``key.checkpoints``. Frozen, eval mode."""
        k = self.key_cfg
        ckpts = list(k.get("checkpoints") or [])
        count = len(ckpts) if ckpts else int(k.count)
        if count < 1:
            raise ConfigError("threat.key.count must be >= 1")
        init = {"init": str(k.get("init", "pix2pix")), "calibrate_size": k.get("calibrate_size")}
        train = plain(k.get("train")) if not ckpts else None
        keys, spec = [], {"net": plain(k.net), "keys": [], **({} if ckpts else init)}
        for i in range(count):
            if ckpts:
                model = make_key_model(factory(k.net), checkpoint=str(ckpts[i]))
                spec["keys"].append(file_fingerprint(ckpts[i]))
            elif train:
                model, key_spec = self._trained_key(int(k.seed) + i, init, train, store, ctx)
                spec["keys"].append(key_spec)
            else:
                model = make_key_model(factory(k.net), seed=int(k.seed) + i, **init)
                spec["keys"].append({"seed": int(k.seed) + i})
            keys.append(model.eval().requires_grad_(False))
        return keys, spec

    def _trained_key(self, seed: int, init: dict, train: dict, store: Artifacts, ctx) -> tuple[nn.Module, dict]:
        """Key model ``seed`` trained as a blind denoiser on the auxiliary images (``key.train``:
        ``steps``, ``batch_size``, ``noise``, ``lr``, ``signal``), once, as an artifact."""
        unknown = sorted(set(train) - {"steps", "batch_size", "noise", "lr", "signal"})
        if unknown or int(train.get("steps", 0)) < 1:
            raise ConfigError(f"threat.key.train takes steps (>= 1), batch_size, noise, lr, signal; got {train}")
        spec = {"net": plain(self.key_cfg.net), "seed": seed, **init, "train": train,
                "auxiliary": self.data_spec()}

        def build(tmp: Path) -> None:
            with seeded(seed, all_devices=True):  # the same key whatever ran before
                model = make_key_model(factory(self.key_cfg.net), seed=seed, **init)
                module = KeyDenoiser(model, noise=float(train.get("noise", 1.0)), lr=float(train.get("lr", 2e-4)),
                                     signal=train.get("signal"))
                trainer = ctx.trainer(f"key_model_{seed}", int(train["steps"]), single_device=True, logger=False)
                trainer.fit(module, key_train_loader(self.parts.auxiliary, int(train["steps"]),
                                                     int(train.get("batch_size", 16)), seed))
            torch.save(model.net.state_dict(), tmp / "key.pt")

        path = store.get("key_model", spec, build, what=f"key model {seed}")
        return make_key_model(factory(self.key_cfg.net), checkpoint=str(path / "key.pt")), spec

    # ------------------------------------------------------------------------- encryption
    def encryptor(self) -> AVIHEncryptor:
        e = self.encrypt_cfg
        loss = e.loss
        return AVIHEncryptor(
            self.service, self.keys, weights={k: loss[k] for k in ("task", "diff", "rec", "vc")},
            vc_kernel=int(loss.vc_kernel), distances=plain(loss.distances),
            iterations=int(e.iterations), optimizer=build(e.optimizer), init=str(e.init),
            seed=int(e.seed), log_every=int(e.log_every))

    def _encryption_test(self, ctx, encryptor: AVIHEncryptor, jobs: EncryptionJobs) -> dict:
        cb = ctx.metric_callback(("test",))
        trainer = ctx.trainer("encrypt", callbacks=[cb], inference_mode=False, single_device=True)
        loader = DataLoader(jobs, batch_size=int(self.encrypt_cfg.batch_size), shuffle=False,
                            num_workers=int(self.data_cfg.get("num_workers", 0)))
        trainer.test(encryptor, dataloaders=loader, verbose=False)
        out = dict(cb.results.get("test", {}))
        for key in ("encrypt/service_cos", "encrypt/decoy_service_cos"):
            if key in trainer.callback_metrics:
                out[key] = float(trainer.callback_metrics[key])
        return out

    def _encrypted_gallery(self, ctx, store: Artifacts, service_spec: dict,
                           keys_spec: dict) -> tuple[dict, dict]:
        """Encrypt the gallery once (artifact) and evaluate it.

        Returns ``(gallery, metrics)``: ``gallery`` has ``encrypted`` / ``recovered`` float32
        (M, 3, H, W) in [-1, 1], ``index`` / ``key_id`` int64 (M,) and ``role`` int8 (M,)
        (:class:`Role`); ``metrics`` the ``encrypt/*`` values."""
        e = self.encrypt_cfg
        index, key_id, role = encryption_jobs(self.pool, len(self.parts.gallery), len(self.keys),
                                              self.target_key, bool(e.decoys))
        spec = {"data": self.data_spec(), "service": service_spec, "keys": keys_spec,
                "target_key": self.target_key,
                "encrypt": {k: v for k, v in plain(e).items() if k not in ("batch_size", "log_every")}}
        encryptor = self.encryptor()
        built: dict = {}
        gallery_images, side = self.parts.gallery.images, self.parts.gallery.side or None
        work = store.work_dir("encrypted_gallery", spec)

        def build_gallery(tmp: Path) -> None:
            # jobs an interrupted build of the same gallery finished are taken, not redone
            encrypted, done, curve = load_chunks(work, len(index))
            if done.any():
                log.info("encrypted gallery: continuing an interrupted build, %d of %d jobs were "
                         "encrypted before", int(done.sum()), len(index))
            encryptor.chunk_dir, encryptor.curve, encryptor.keep = work, list(curve), True
            jobs = EncryptionJobs(gallery_images, index, key_id, encrypted=encrypted,
                                  done=done if encrypted is not None else None, decoy=role == Role.DECOY,
                                  side=side)
            built["metrics"] = self._encryption_test(ctx, encryptor, jobs)
            out = encryptor.collected()
            if not torch.equal(out["index"], torch.from_numpy(index)):
                raise RuntimeError("encryption lost or reordered jobs")  # a bug, not a user error
            torch.save({"encrypted": out["encrypted"], "recovered": out["recovered"],
                        "index": out["index"], "key_id": out["key_id"], "role": torch.from_numpy(role),
                        "names": [self.parts.gallery.names[i] for i in index] if self.parts.gallery.names
                        else []}, tmp / "gallery.pt")
            (tmp / "metrics.json").write_text(json.dumps(built["metrics"], indent=2, default=str))
            _write_curve(encryptor.curve, tmp / "curve.csv")

        path = store.get("encrypted_gallery", spec, build_gallery, what="encrypted gallery")
        # memory-mapped: a large gallery (2,000 VeRi images at 256x256 are 1.5 GB a tensor) is
        # paged in as its rows are used
        gallery = torch.load(path / "gallery.pt", map_location="cpu", weights_only=True, mmap=True)
        metrics = built.get("metrics")
        if metrics is None:  # reused: evaluate the stored encryption with this run's metric settings
            jobs = EncryptionJobs(gallery_images, gallery["index"].numpy(), gallery["key_id"].numpy(),
                                  encrypted=gallery["encrypted"], decoy=gallery["role"].numpy() == Role.DECOY,
                                  side=side)
            encryptor.keep = False
            metrics = self._encryption_test(ctx, encryptor, jobs)
        metrics["encrypt/images"] = int(len(gallery["index"]))
        log.info("encrypted gallery: %s", path)
        return gallery, metrics

    @torch.no_grad()
    def _encryption_grid(self, gallery: dict, path: Path) -> None:
        held = torch.nonzero(gallery["role"] == Role.HELD_OUT).flatten()[:self.num_samples]
        x = to_tensor(self.parts.gallery.images[gallery["index"][held].numpy()])
        enc, rec = gallery["encrypted"][held], gallery["recovered"][held]
        cols = [x, enc, rec]
        if len(self.keys) > 1:
            wrong_key = (gallery["key_id"][held] + 1) % len(self.keys)
            cols.append(torch.cat([self.keys[int(k)](enc[i:i + 1]) for i, k in enumerate(wrong_key)]))
        save_grid(cols, path, max_rows=self.num_samples)
        path.with_suffix(".txt").write_text("original | encrypted | key-model recovery"
                                            + (" | wrong-key recovery" if len(self.keys) > 1 else "")
                                            + "\n")

    # ----------------------------------------------------------------------- the key share
    def _select(self, gallery: dict) -> None:
        """The leaked same-key pool images (drawn with the run seed) and the held-out rows."""
        role = gallery["role"]
        pool_slots = torch.nonzero((role == Role.POOL) & (gallery["key_id"] == self.target_key)
                                   ).flatten().numpy()
        rng = np.random.default_rng(self.seed)
        self.leaked = np.sort(rng.choice(pool_slots, self.n_leaked, replace=False))
        self.held = torch.nonzero(role == Role.HELD_OUT).flatten()
        self.gallery = gallery

    def datamodule(self, iterations: int | None = None) -> AVIHDataModule:
        g, d = self.gallery, self.data_cfg
        batch = int(d.batch_size)
        train = None
        if iterations:
            gallery_side = self.parts.gallery.side
            leaked_index = g["index"][self.leaked].numpy()
            train = LeakedWithAuxiliary(RowsOf(g["encrypted"], self.leaked), self.parts.auxiliary,
                                        int(iterations) * batch, seed=self.seed,
                                        side={k: v[leaked_index] for k, v in gallery_side.items()} or None)
        random_idx = np.random.default_rng(self.selection_seed + 2).integers(
            len(self.parts.auxiliary), size=len(self.held))
        test = HeldOutRows(self.parts.gallery, *self.verification_pairs(),
                           self.parts.auxiliary, g["index"][self.held].numpy(), RowsOf(g["encrypted"], self.held),
                           RowsOf(g["recovered"], self.held), random_idx)
        return AVIHDataModule(train, test, batch_size=batch, eval_batch_size=int(d.eval_batch_size),
                              num_workers=int(d.num_workers))

    def verification_pairs(self) -> tuple[Any, tuple[np.ndarray, ...]]:
        """The query images and the ``(gallery index, query index, is_same)`` pairs the held-out
        rows carry (face verification)."""
        p = self.parts
        return p.queries, (p.pair_gallery, p.pair_query, p.pair_same)

    def evaluation(self) -> AVIHEvaluation:
        return AVIHEvaluation(self.evaluation_model, self.service, self.saved_format, self.saved_quality)

    # ------------------------------------------------------------------------------- display
    def visualise(self, batch: dict) -> None:
        return None  # the leak is the protected image: the grid shows it as a control

    def input_example(self, batch_size: int = 1) -> torch.Tensor:
        return torch.zeros(batch_size, 3, *self.image_size)

    def profile_models(self) -> dict[str, tuple[nn.Module, tuple[torch.Tensor, ...]]]:
        out = {}
        for role in ("service", "evaluation"):
            m = self.model_cfg(role)
            model = self.make_model(m).eval()
            out[f"{role} ({m.get('description', role)})"] = (model, (self.input_example(),))
        key = make_key_model(factory(self.key_cfg.net)).eval()
        out["key model"] = (key, (self.input_example(),))
        return out


def _write_curve(rows: list[dict], path: Path) -> None:
    if not rows:
        return
    cols = list(rows[0])
    path.write_text(",".join(cols) + "\n" + "\n".join(",".join(f"{r[c]:.6g}" for c in cols)
                                                    for r in rows) + "\n")


__all__ = ["AVIHDataModule", "AVIHEvaluation", "AVIHThreat", "Role", "encryption_jobs",
           "leaked_count"]
