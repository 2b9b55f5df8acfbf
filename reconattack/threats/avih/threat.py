"""The AVIH threat model (SPEC §3, the AVIH attack paper §III): a face gallery encrypted with
Adversarial Visual Information Hiding under the victim's private key models; the attacker has the
white-box service model, auxiliary images of the category, and the encrypted images that share
the target key (the key share).

:class:`AVIHThreat` puts the rooms of this package together: the data (:mod:`reconattack.data.avih`),
who holds what (:mod:`.roles`), the networks (:mod:`.models`), the encrypted gallery
(:mod:`.gallery`, built by :mod:`.encryption`), the attacker's data (:mod:`.datamodule`) and the
rows it is scored by (:mod:`.evaluation`).

What the attacker never holds: the held-out gallery images (a source whose photos repeat keeps
them apart from the pool by content: ``data/heldout_removed`` counts the candidates it passed
over), and the victim's own images that train its key models (``threat.key.train``: ``data.victim``
or the embedded demos' victim split, never the auxiliary set).

Everything that does not depend on the run seed or the key share is a content-addressed
artifact (:mod:`reconattack.engine.artifacts`) under ``paths.cache_dir/artifacts``, keyed by what it
was built from (configs, and each input file or folder by its listing: :func:`~reconattack.utils.
files.source_fingerprint`): the demo's trained recognition models, the key models and the
encrypted gallery. A key-share x seed sweep encrypts once.

**Seeds**, each for one thing:

========================== ===================================================================
``data.selection_seed``    which images: the gallery draw and its pool / held-out order; the
                           auxiliary (and victim) folder draw (``+ 1``, :class:`~reconattack.data.
                           avih.AuxiliaryFolder`); the Random row's images (``+ RANDOM_ROW_DRAW``)
``seed`` (the run's)       which pool images the key share leaks; the attack's training
``threat.key.seed``        key model i is built (and trained) from ``key.seed + i``
``threat.encrypt.seed``    each encryption job's initial noise (with its job number)
``threat.<role>.train.seed`` a demo recognition model's weights and training
========================== ===================================================================

Controls (paper Tables I–III): ``original`` (the gallery images), ``protected`` (the encrypted
images), ``key_model`` (the true key's reconstruction) and ``random`` (auxiliary images), each
scored like the attack: pixel metrics against the original and TPR@FAR of the **evaluation**
model's cosine scores on the verification pairs.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from reconattack.data.avih import (
    EncryptionJobs,
    GalleryParts,
    HeldOutRows,
    LeakedWithAuxiliary,
    RowsOf,
)
from reconattack.data.images import DataNotFoundError
from reconattack.defences.avih import avih_defence
from reconattack.errors import ConfigError
from reconattack.metrics.functional import SAVED_FORMATS
from reconattack.models.keys import make_key_model
from reconattack.threats.base import Artifacts, ThreatModel
from reconattack.utils.config import as_hw, build, factory, plain
from reconattack.utils.files import source_fingerprint

from .datamodule import AVIHDataModule
from .encryption import AVIHEncryptor, EncryptionSink
from .evaluation import AVIHEvaluation
from .gallery import (
    GalleryWriter,
    encryption_grid,
    load_encrypted_gallery,
    save_jobs,
    write_build_record,
)
from .models import NEEDS_VICTIM, FaceModels, key_models, recognition_model
from .roles import Role, draw_leaked, encryption_jobs, leaked_count

log = logging.getLogger(__name__)

#: the Random row's auxiliary images are drawn with ``data.selection_seed`` + this
RANDOM_ROW_DRAW = 2
#: data config keys that name where images come from (fingerprinted in artifact specs)
SOURCES = ("source", "auxiliary", "victim")


class AVIHThreat(ThreatModel):
    """An AVIH-encrypted face gallery (see the module docstring).

    Args:
        data: the ``data`` config: ``source`` (gallery source, ``_target_``), ``auxiliary``
            (auxiliary source or null when the source has one), ``victim`` (the victim's own
            images for trained key models, an :class:`~reconattack.data.avih.AuxiliaryFolder`, or
            null when the source has them), ``image_size``, ``gallery_size``, ``pool``,
            ``selection_seed``, loader settings.
        service, evaluation: recognition model configs (``conf/face/*``): ``net`` (``_target_``),
            ``channel_order``, ``format`` (checkpoint format, ``_target_``), ``checkpoint``, or
            ``train`` (the embedded demo trains the model once, as an artifact).
        key: key models: ``net`` (``_target_``), ``count``, ``seed`` (key i from ``seed + i``),
            ``init``, ``calibrate_size``, ``train`` (trained on the victim's own images), or
            ``checkpoints`` (one state dict per key).
        encrypt: ``iterations``, ``optimizer`` (partial, ``_target_``), ``init``, ``seed``,
            ``decoys``, ``batch_size``, ``log_every``, ``loss`` (``task``, ``diff``, ``rec``,
            ``vc`` weights, ``vc_kernel``, ``distances``).
        key_share: p in (0, 1] (:mod:`.roles`).
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
    #: how a recognition model config becomes a network (:mod:`.models`)
    models = FaceModels()

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
        self.victim_source = build(data.victim) if data.get("victim") else None
        self._check_victim_apart(data)
        if key.get("train") and not key.get("checkpoints") and self.victim_source is None \
                and not getattr(self.source, "has_victim", False):
            raise ConfigError(NEEDS_VICTIM)
        self._given: dict[str, Any] = {}

    @staticmethod
    def _check_victim_apart(data: Any) -> None:
        """``data.victim`` must not be, hold or lie inside the attacker's auxiliary folder or the
        gallery source (the key would be fitted to images the attacker holds)."""
        victim = (data.get("victim") or {}).get("path")
        if not victim:
            return
        v = Path(os.path.expanduser(str(victim))).resolve()
        for role in ("auxiliary", "source"):
            other = (data.get(role) or {}).get("path")
            if not other:
                continue
            o = Path(os.path.expanduser(str(other))).resolve()
            if v == o or o in v.parents or v in o.parents:
                raise ConfigError(f"data.victim.path={v} overlaps data.{role}.path={o}: the victim's key "
                                  "models must be trained on images the attacker does not hold")

    # ------------------------------------------------------------------------ before any work
    def missing_inputs(self) -> list[str]:
        missing = list(self.source.missing())
        for source in (self.auxiliary_source, self.victim_source):
            if source is not None:
                missing += source.missing()
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

        def trainer(name: str, steps: int):
            return ctx.trainer(name, steps, single_device=True, logger=False)

        data_spec = self.data_spec()
        self.service, service_spec = recognition_model(self.models, "service", self.service_cfg,
                                                       self.parts.models_train, data_spec, store, trainer)
        self.evaluation_model, _ = recognition_model(self.models, "evaluation", self.evaluation_cfg,
                                                     self.parts.models_train, data_spec, store, trainer)
        self.keys, keys_spec = key_models(self.key_cfg, self.parts.victim, self.victim_spec(data_spec),
                                          store, trainer)
        gallery, metrics = self._encrypted_gallery(ctx, store, service_spec, keys_spec, data_spec)
        self.gallery = gallery
        self.leaked, self.held = draw_leaked(gallery["role"].numpy(), gallery["key_id"].numpy(),
                                             self.target_key, self.n_leaked, self.seed)
        self._given["service_model"] = self.service
        if ctx.is_global_zero:
            encryption_grid(gallery, self.parts.gallery.images, self.keys,
                            ctx.run_dir / "samples" / "encrypt_grid.png", self.num_samples)
        metrics.update({"attack/key_share": self.key_share, "attack/leaked_images": self.n_leaked,
                        "attack/heldout_images": int(len(self.held)),
                        "data/heldout_removed": int(self.parts.heldout_removed),
                        "artifacts/built": len(store.built)})
        log.info("AVIH threat: key share %s -> %d leaked same-key images of %d; %d held-out images",
                 self.key_share, self.n_leaked, self.pool, len(self.held))
        return metrics

    # ----------------------------------------------------------------------------- the data
    def _load_data(self) -> GalleryParts:
        """The gallery source's parts, with the auxiliary and victim sets of their own sources."""
        parts = self.load_gallery()
        if self.auxiliary_source is not None:
            parts.auxiliary = self.auxiliary_source.load(self.image_size, self.selection_seed)
        if parts.auxiliary is None:
            raise ConfigError("data.auxiliary is not set and the gallery source has no auxiliary set")
        if len(parts.auxiliary) == 0:
            raise DataNotFoundError("data.auxiliary: the auxiliary set is empty")
        if self.victim_source is not None:
            parts.victim = self.victim_source.load(self.image_size, self.selection_seed)
        self.describe(parts)
        return parts

    def load_gallery(self) -> GalleryParts:
        h, w = self.image_size
        if h != w:
            raise ConfigError(f"data.image_size: the face sources are square, got {h}x{w}")
        return self.source.load(h, self.gallery_size, self.selection_seed, pool=self.pool)

    def describe(self, parts: GalleryParts) -> None:
        log.info("AVIH data: gallery %d (%d attacker pool / %d held out; %d held-out candidates passed over: "
                 "they share a photo with the pool), %d queries, %d pairs (%d genuine), auxiliary %d, victim %s",
                 len(parts.gallery), self.pool, len(parts.gallery) - self.pool, parts.heldout_removed,
                 len(parts.queries), len(parts.pair_same), int(parts.pair_same.sum()), len(parts.auxiliary),
                 len(parts.victim) if parts.victim is not None else "none")

    def data_spec(self) -> dict:
        """The part of ``data`` that determines the image sets (not loader settings), every
        source's file or folder identified by its fingerprint (listing: names, sizes, times)."""
        spec = {k: v for k, v in plain(self.data_cfg).items()
                if k not in ("batch_size", "eval_batch_size", "num_workers")}
        for role in SOURCES:
            part = spec.get(role) or {}
            if part.get("path"):
                part["fingerprint"] = source_fingerprint(part["path"])
        return spec

    def victim_spec(self, data_spec: dict) -> dict:
        """What identifies the victim's images in the key models' artifact spec."""
        return {"source": data_spec.get("source"), "victim": data_spec.get("victim"),
                "image_size": data_spec.get("image_size"), "selection_seed": data_spec.get("selection_seed")}

    # ------------------------------------------------------------------------- encryption
    def encryptor(self, sink: EncryptionSink | None = None) -> AVIHEncryptor:
        e = self.encrypt_cfg
        loss = e.loss
        return AVIHEncryptor(
            self.service, self.keys, weights={k: loss[k] for k in ("task", "diff", "rec", "vc")},
            vc_kernel=int(loss.vc_kernel), distances=plain(loss.distances),
            iterations=int(e.iterations), optimizer=build(e.optimizer), init=str(e.init),
            seed=int(e.seed), log_every=int(e.log_every), sink=sink)

    def _encryption_test(self, ctx, encryptor: AVIHEncryptor, jobs: EncryptionJobs) -> dict:
        cb = ctx.metric_callback(("test",), leakage=False)  # the encryption's image metrics, streamed
        trainer = ctx.trainer("encrypt", callbacks=[cb], inference_mode=False, single_device=True)
        loader = DataLoader(jobs, batch_size=int(self.encrypt_cfg.batch_size), shuffle=False,
                            num_workers=int(self.data_cfg.get("num_workers", 0)))
        trainer.test(encryptor, dataloaders=loader, verbose=False)
        out = dict(cb.results.get("test", {}))
        for key in ("encrypt/service_cos", "encrypt/decoy_service_cos"):
            if key in trainer.callback_metrics:
                out[key] = float(trainer.callback_metrics[key])
        return out

    def _encrypted_gallery(self, ctx, store: Artifacts, service_spec: dict, keys_spec: dict,
                           data_spec: dict) -> tuple[dict, dict]:
        """Encrypt the gallery once (artifact, :mod:`.gallery`) and evaluate it.

        Returns ``(gallery, metrics)``: ``gallery`` as :func:`~.gallery.load_encrypted_gallery`
        (memory-mapped ``encrypted`` / ``recovered``); ``metrics`` the ``encrypt/*`` values."""
        e = self.encrypt_cfg
        images, side = self.parts.gallery.images, self.parts.gallery.side or None
        index, key_id, role = encryption_jobs(self.pool, len(images), len(self.keys),
                                              self.target_key, bool(e.decoys))
        decoy = role == Role.DECOY
        spec = {"data": data_spec, "service": service_spec, "keys": keys_spec, "target_key": self.target_key,
                "encrypt": {k: v for k, v in plain(e).items() if k not in ("batch_size", "log_every")}}
        work = store.work_dir("encrypted_gallery", spec)
        built: dict = {}

        def build_gallery(tmp: Path) -> None:
            # rows streamed to disk as they are made; those an interrupted build wrote are kept
            writer = GalleryWriter(work, len(index), (3, *self.image_size))
            resumed = bool(writer.done.any())
            if resumed:
                log.info("encrypted gallery: continuing an interrupted build, %d of %d jobs were "
                         "encrypted before", int(writer.done.sum()), len(index))
            jobs = EncryptionJobs(images, index, key_id, encrypted=writer.stored() if resumed else None,
                                  done=writer.done.copy() if resumed else None, decoy=decoy, side=side)
            built["metrics"] = self._encryption_test(ctx, self.encryptor(sink=writer), jobs)
            writer.publish(tmp)
            names = self.parts.gallery.names
            save_jobs(tmp, index, key_id, role, [names[i] for i in index] if names else [])
            write_build_record(tmp, built["metrics"], writer.curve)

        path = store.get("encrypted_gallery", spec, build_gallery, what="encrypted gallery")
        gallery = load_encrypted_gallery(path)
        metrics = built.get("metrics")
        if metrics is None:  # reused: evaluate the stored encryption with this run's metric settings
            jobs = EncryptionJobs(images, gallery["index"].numpy(), gallery["key_id"].numpy(),
                                  encrypted=gallery["encrypted"], decoy=gallery["role"].numpy() == Role.DECOY,
                                  side=side)
            metrics = self._encryption_test(ctx, self.encryptor(), jobs)
        metrics["encrypt/images"] = int(len(gallery["index"]))
        log.info("encrypted gallery: %s", path)
        return gallery, metrics

    # ----------------------------------------------------------------------- the key share
    def datamodule(self, iterations: int | None = None) -> AVIHDataModule:
        g, d = self.gallery, self.data_cfg
        batch = int(d.batch_size)
        train = None
        if iterations:
            gallery_side = self.parts.gallery.side
            leaked_index = g["index"][torch.from_numpy(self.leaked)].numpy()
            train = LeakedWithAuxiliary(RowsOf(g["encrypted"], self.leaked), self.parts.auxiliary,
                                        int(iterations) * batch, seed=self.seed,
                                        side={k: v[leaked_index] for k, v in gallery_side.items()} or None)
        random_idx = np.random.default_rng(self.selection_seed + RANDOM_ROW_DRAW).integers(
            len(self.parts.auxiliary), size=len(self.held))
        test = HeldOutRows(self.parts.gallery, *self.verification_pairs(), self.parts.auxiliary,
                           g["index"][torch.from_numpy(self.held)].numpy(), RowsOf(g["encrypted"], self.held),
                           RowsOf(g["recovered"], self.held), random_idx)
        return AVIHDataModule(train, test, batch_size=batch, eval_batch_size=int(d.eval_batch_size),
                              num_workers=int(d.num_workers))

    def verification_pairs(self) -> tuple[Any, tuple[np.ndarray, ...]]:
        """The query images and the ``(gallery index, query index, is_same)`` pairs the held-out
        rows carry (face verification)."""
        p = self.parts
        return p.queries, (p.pair_gallery, p.pair_query, p.pair_same)

    def scoring(self) -> AVIHEvaluation:
        return AVIHEvaluation(self.evaluation_model, self.service, self.saved_format, self.saved_quality)

    # ------------------------------------------------------------------------------- display
    def visualise(self, batch: dict) -> None:
        return None  # the leak is the protected image: the grid shows it as a control

    def input_example(self, batch_size: int = 1) -> torch.Tensor:
        return torch.zeros(batch_size, 3, *self.image_size)

    def profile_models(self) -> dict[str, tuple[nn.Module, tuple[torch.Tensor, ...]]]:
        out = {}
        for role, m in (("service", self.service_cfg), ("evaluation", self.evaluation_cfg)):
            out[f"{role} ({m.get('description', role)})"] = (self.models.make(m).eval(), (self.input_example(),))
        key = make_key_model(factory(self.key_cfg.net)).eval()
        out["key model"] = (key, (self.input_example(),))
        return out


__all__ = ["AVIHThreat"]
