"""The AVIH threat's networks: the recognition models (service, evaluation) and the victim's key
models, loaded from published checkpoints or, for the embedded demos, trained once as artifacts.

A **recognition family** (:class:`FaceModels`; re-identification: :class:`~.reid.ReidModels`)
says how a model config (``conf/face/*``, ``conf/reid/*``) becomes a network and what a demo
training keeps; :func:`recognition_model` loads or trains one role's model. :func:`key_models`
makes the victim's key models: random, loaded, or trained on the victim's own images
(:mod:`~.key_training`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from reconattack.data.avih import ImageSet
from reconattack.errors import ConfigError
from reconattack.models.face import face_model_from_config
from reconattack.models.keys import make_key_model
from reconattack.threats.base import Artifacts
from reconattack.utils.config import factory, plain
from reconattack.utils.files import file_fingerprint
from reconattack.utils.seeding import seeded

from .identity_classifier import IdentityClassifier, train_loader
from .key_training import KeyDenoiser, key_train_loader

#: configuration keys that decide a recognition model's weights and inputs (artifact specs); not
#: the description
MODEL_SPEC_KEYS = ("net", "channel_order", "mean", "std", "format", "train")


class FaceModels:
    """Face recognition models (``conf/face/*``): (B, 3, H, W) in [-1, 1] → (B, E) unit embeddings."""

    #: artifact kind of the demo's trained models
    kind = "face_model"
    #: what else decides a trained model's weights (part of its artifact spec)
    code: dict = {}

    def make(self, m: Any, checkpoint: str | None = None, seed: int | None = None,
             published: bool = True) -> nn.Module:
        """A model from its config ``m``: loaded from ``checkpoint`` — a published one in
        ``m.format``, or (``published=False``) the weights a demo training saved
        (:meth:`trained_weights`) — or built from ``seed``."""
        return face_model_from_config(m, checkpoint=checkpoint, seed=seed, published=published)

    @staticmethod
    def trained_weights(model: nn.Module) -> dict:
        """What a demo-trained model keeps (loaded back by :meth:`make` with ``published=False``)."""
        return model.backbone.state_dict()


def recognition_model(family: FaceModels, role: str, m: Any, models_train: ImageSet | None, data_spec: dict,
                      store: Artifacts, trainer: Callable) -> tuple[nn.Module, dict]:
    """``threat.<role>`` (config ``m``) frozen in eval mode, and its artifact spec: loaded from its
    checkpoint, or (embedded demo) trained as an identity classifier on ``models_train`` once,
    kept as an artifact keyed by ``data_spec`` and the model config. ``trainer(name, steps)``
    gives the Lightning Trainer."""
    spec = {k: plain(m.get(k)) for k in MODEL_SPEC_KEYS if m.get(k) is not None}
    spec.update(family.code)
    if m.get("checkpoint"):
        model = family.make(m, checkpoint=str(m.checkpoint))
        spec["checkpoint"] = file_fingerprint(m.checkpoint)
        return model.eval(), spec
    train = m.train
    if models_train is None:
        raise ConfigError(f"threat.{role}.train needs data with a split for the demo's "
                          "recognition models (the embedded demos)")
    spec["data"] = data_spec

    def build_model(tmp: Path) -> None:
        with seeded(int(train.seed), all_devices=True):  # the same model whatever ran before
            embedder = family.make(m, seed=int(train.seed))
            images, labels = models_train.images, models_train.labels
            module = IdentityClassifier(embedder, int(labels.max()) + 1, lr=float(train.lr),
                                        weight_decay=float(train.weight_decay), scale=float(train.scale),
                                        margin=float(train.margin), shift=int(train.shift),
                                        color=float(train.get("color", 0.0)))
            trainer(f"{role}_model", int(train.steps)).fit(
                module, train_loader(images, labels, int(train.steps), int(train.batch_size), int(train.seed),
                                     side=models_train.side or None))
        torch.save(family.trained_weights(embedder), tmp / "backbone.pt")

    path = store.get(family.kind, spec, build_model, what=f"{role} model")
    return family.make(m, checkpoint=str(path / "backbone.pt"), published=False).eval(), spec


#: why trained keys without the victim's images are refused
NEEDS_VICTIM = ("threat.key.train needs the victim's own images (which the attacker does not hold): set "
                "data.victim (e.g. {_target_: reconattack.data.avih.AuxiliaryFolder, path: ..., key: data.victim}), "
                "or use an embedded demo source, which has them")
#: what ``threat.key.train`` takes
KEY_TRAIN_KEYS = {"steps", "batch_size", "noise", "lr", "signal"}


def key_models(k: Any, victim: Dataset | None, victim_spec: dict, store: Artifacts,
               trainer: Callable) -> tuple[list[nn.Module], dict]:
    """The victim's key models from ``threat.key`` (``k``): ``k.count`` networks from seeds
    ``k.seed, k.seed + 1, ...`` — random, or trained once on ``victim`` (the victim's own images,
    items (3, H, W) in [-1, 1]; ``victim_spec`` identifies them in the artifact spec) when
    ``k.train`` is set (an artifact per key) — or loaded from ``k.checkpoints``. Frozen, eval mode.
    Returns ``(keys, spec)``."""
    ckpts = list(k.get("checkpoints") or [])
    count = len(ckpts) if ckpts else int(k.count)
    if count < 1:
        raise ConfigError("threat.key.count must be >= 1")
    init = {"init": str(k.get("init", "pix2pix")), "calibrate_size": k.get("calibrate_size")}
    train = plain(k.get("train")) if not ckpts else None
    if train:
        unknown = sorted(set(train) - KEY_TRAIN_KEYS)
        if unknown or int(train.get("steps", 0)) < 1:
            raise ConfigError(f"threat.key.train takes steps (>= 1), batch_size, noise, lr, signal; got {train}")
        if victim is None:
            raise ConfigError(NEEDS_VICTIM)
    keys, spec = [], {"net": plain(k.net), "keys": [], **({} if ckpts else init)}
    for i in range(count):
        seed = int(k.seed) + i
        if ckpts:
            model = make_key_model(factory(k.net), checkpoint=str(ckpts[i]))
            spec["keys"].append(file_fingerprint(ckpts[i]))
        elif train:
            key_spec = {"net": plain(k.net), "seed": seed, **init, "train": train, "victim": victim_spec}

            def build_key(tmp: Path, seed: int = seed) -> None:
                with seeded(seed, all_devices=True):  # the same key whatever ran before
                    model = make_key_model(factory(k.net), seed=seed, **init)
                    module = KeyDenoiser(model, noise=float(train.get("noise", 1.0)),
                                         lr=float(train.get("lr", 2e-4)), signal=train.get("signal"))
                    steps = int(train["steps"])
                    trainer(f"key_model_{seed}", steps).fit(
                        module, key_train_loader(victim, steps, int(train.get("batch_size", 16)), seed))
                torch.save(model.net.state_dict(), tmp / "key.pt")

            path = store.get("key_model", key_spec, build_key, what=f"key model {seed}")
            model = make_key_model(factory(k.net), checkpoint=str(path / "key.pt"))
            spec["keys"].append(key_spec)
        else:
            model = make_key_model(factory(k.net), seed=seed, **init)
            spec["keys"].append({"seed": seed})
        keys.append(model.eval().requires_grad_(False))
    return keys, spec


__all__ = ["FaceModels", "KEY_TRAIN_KEYS", "MODEL_SPEC_KEYS", "NEEDS_VICTIM", "key_models", "recognition_model"]
