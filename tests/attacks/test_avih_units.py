"""AVIH building blocks: artifacts, encryption jobs, the encryptor, the reconstructor, the data."""

from __future__ import annotations

import multiprocessing as mp
import warnings

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from reconattack.artifacts import ArtifactStore, spec_key
from reconattack.attacks.avih import leaked_count
from reconattack.attacks.avih_encrypt import AVIHEncryptor
from reconattack.attacks.avih_reconstruct import ROWS, AVIHReconstructor
from reconattack.data.avih import (
    EncryptionJobs,
    HeldOutRows,
    WrongSizeWarning,
    build_avih_data,
    encryption_jobs,
)
from reconattack.data.faces import make_bin
from reconattack.data.images import DataNotFoundError
from reconattack.losses.avih import avih_loss
from reconattack.metrics.callback import ReconstructionMetrics
from reconattack.models.face import build_face_model
from reconattack.models.keys import PatchGAN, build_key_model


def tiny_service(seed=0):
    return build_face_model("custom", "insightface", layers=[1, 1], widths=[4, 8], embedding_size=8,
                            input_size=16, seed=seed).eval().requires_grad_(False)


def tiny_keys(n=2):
    return [build_key_model("unet", seed=10 + i, base=4, depth=2).eval().requires_grad_(False)
            for i in range(n)]


def images(b=4, size=16, seed=0):
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


WEIGHTS = {"task": 1.0, "diff": 0.03, "rec": 0.5, "vc": 3.0}


# ----------------------------------------------------------------------------- artifacts
def test_spec_key_is_content_addressed():
    a = spec_key("x", {"b": 1, "a": [1, 2]})
    assert a == spec_key("x", {"a": [1, 2], "b": 1})  # key order does not matter
    assert a != spec_key("x", {"a": [1, 2], "b": 2}) and a != spec_key("y", {"a": [1, 2], "b": 1})


def test_store_builds_once_and_publishes_atomically(tmp_path):
    store = ArtifactStore(tmp_path)
    calls = []

    def build(d):
        calls.append(d)
        (d / "x.txt").write_text("hi")

    p1 = store.get("k", {"a": 1}, build)
    p2 = ArtifactStore(tmp_path).get("k", {"a": 1}, build)
    assert p1 == p2 and len(calls) == 1 and (p1 / "x.txt").read_text() == "hi"
    assert (p1 / "spec.json").is_file() and store.built == [f"k/{p1.name}"]

    def fail(d):
        (d / "partial").write_text("x")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        store.get("k", {"a": 2}, fail)
    assert not store.path("k", {"a": 2}).exists()  # nothing half-built is left behind
    assert not [p for p in (tmp_path / "k").iterdir() if ".tmp" in p.name]
    private = ArtifactStore(tmp_path / "shared", reuse=False, private_root=tmp_path / "run")
    assert private.get("k", {"a": 1}, build).is_relative_to(tmp_path / "run")


def _build_in_process(root, out):
    import time

    def build(d):
        time.sleep(0.5)
        with open(out, "a") as fh:
            fh.write("built\n")
    ArtifactStore(root).get("k", {"a": 1}, build)


def test_concurrent_jobs_build_an_artifact_once(tmp_path):
    out = tmp_path / "log.txt"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_build_in_process, args=(tmp_path / "store", out)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert out.read_text().count("built") == 1


def test_non_zero_rank_waits_for_rank_zero(tmp_path):
    store = ArtifactStore(tmp_path, rank=1, wait_s=0.5)
    with pytest.raises(TimeoutError, match="rank 0"):
        store.get("k", {"a": 1}, lambda d: None)
    ArtifactStore(tmp_path).get("k", {"a": 1}, lambda d: None)
    assert store.get("k", {"a": 1}, lambda d: None).is_dir()


# ------------------------------------------------------------------------------ key share
def test_encryption_jobs_and_key_share():
    index, key, role = encryption_jobs(pool=4, n_gallery=10, num_keys=3, target_key=0)
    assert list(index[role == 0]) == [4, 5, 6, 7, 8, 9] and (key[role == 0] == 0).all()
    assert list(index[role == 1]) == [0, 1, 2, 3] and (key[role == 1] == 0).all()
    assert list(index[role == 2]) == [0, 1, 2, 3] and list(key[role == 2]) == [1, 2, 1, 2]
    _, _, role = encryption_jobs(4, 10, 1)
    assert (role < 2).all()  # one key: no decoys
    assert leaked_count(0.03, 1000) == 30 and leaked_count(0.7, 1000) == 700
    assert leaked_count(0.01, 250) == 3  # 2.5 rounds up
    assert leaked_count(1.0, 250) == 250
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"\(0, 1\]"):
            leaked_count(bad, 100)
    with pytest.raises(ValueError, match="leaks no image"):
        leaked_count(0.001, 100)


# ------------------------------------------------------------------------------ encryptor
@pytest.mark.parametrize("optimizer", ["adam", "momentum"])
def test_encryption_lowers_the_loss_and_is_per_image(optimizer):
    service, keys = tiny_service(), tiny_keys()
    enc = AVIHEncryptor(service, keys, WEIGHTS, iterations=30, optimizer=optimizer, lr=0.02, seed=3)
    x = images(3)
    key_id, slot = torch.tensor([0, 1, 0]), torch.tensor([0, 1, 2])
    x_enc = enc.encrypt(x, key_id, slot)
    assert x_enc.shape == x.shape and x_enc.min() >= 0 and x_enc.max() <= 1
    with torch.no_grad():
        emb = service(x)
        start, _ = enc.losses(enc.initial(x, slot), x, emb, key_id)
        end, _ = enc.losses(x_enc, x, emb, key_id)
    assert (end < start).all(), (start, end)
    # image 0 encrypted alone (same job number) gives the same result: no batch mixing
    alone = enc.encrypt(x[:1], key_id[:1], slot[:1])
    torch.testing.assert_close(alone, x_enc[:1], atol=1e-5, rtol=0)
    # another job number: other initial noise
    assert not torch.allclose(enc.encrypt(x[:1], key_id[:1], torch.tensor([7])), alone)


def test_encryptor_loss_is_the_weighted_avih_loss():
    service, keys = tiny_service(), tiny_keys()
    enc = AVIHEncryptor(service, keys, WEIGHTS, vc_kernel=3)
    x, xe = images(2), images(2, seed=1)
    kid = torch.tensor([1, 0])
    total, terms = enc.losses(xe, x, service(x), kid)
    rec = torch.cat([keys[1](xe[:1]), keys[0](xe[1:])])
    ref, _ = avih_loss(service(xe), service(x), xe, x, rec, WEIGHTS, vc_kernel=3)
    torch.testing.assert_close(total, ref)


def test_encryptor_rejects_bad_settings():
    with pytest.raises(ValueError, match="optimizer"):
        AVIHEncryptor(tiny_service(), tiny_keys(), WEIGHTS, optimizer="sgd")
    with pytest.raises(ValueError, match="init"):
        AVIHEncryptor(tiny_service(), tiny_keys(), WEIGHTS, init="zeros")


def test_encryptor_test_step_reports_groups_and_stores_results():
    import pytorch_lightning as pl

    from reconattack.data.avih import EncryptDataModule

    gallery = (np.random.default_rng(0).random((5, 16, 16, 3)) * 255).astype(np.uint8)
    index, key, _ = encryption_jobs(2, 5, 2)
    enc = AVIHEncryptor(tiny_service(), tiny_keys(), WEIGHTS, iterations=3, log_every=1)
    cb = ReconstructionMetrics(stages=("test",), metrics=("mse", "psnr", "ssim"))
    trainer = pl.Trainer(accelerator="cpu", logger=False, callbacks=[cb], inference_mode=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.test(enc, EncryptDataModule(EncryptionJobs(gallery, index, key), batch_size=3), verbose=False)
    out = enc.collected()
    assert torch.equal(out["index"], torch.from_numpy(index)) and out["encrypted"].shape == (7, 3, 16, 16)
    res = cb.results["test"]
    for k in ("encrypt/psnr", "encrypt/ssim", "encrypt/key_psnr", "encrypt/key_ssim",
              "encrypt/wrong_key_psnr"):
        assert isinstance(res[k], float), k
    assert 0 < float(trainer.callback_metrics["encrypt/service_cos"]) <= 1
    assert len(enc.curve) == 3 * 3 and {"loss", "vc", "task"} <= set(enc.curve[0])
    # evaluating the stored encryption reproduces the numbers
    cb2 = ReconstructionMetrics(stages=("test",), metrics=("mse", "psnr", "ssim"))
    enc2 = AVIHEncryptor(tiny_service(), tiny_keys(), WEIGHTS, iterations=3)
    pl.Trainer(accelerator="cpu", logger=False, callbacks=[cb2], enable_progress_bar=False,
               enable_model_summary=False).test(
        enc2, EncryptDataModule(EncryptionJobs(gallery, index, key, out["encrypted"]), batch_size=4),
        verbose=False)
    assert not enc2.store  # nothing re-encrypted
    for k in ("encrypt/psnr", "encrypt/key_psnr", "encrypt/wrong_key_ssim"):
        assert cb2.results["test"][k] == pytest.approx(res[k], abs=1e-5)


# ---------------------------------------------------------------------------- the attack
def _rows_batch(b=4, p=2):
    return {"original": images(b), "encrypted": images(b, seed=1), "key_recovered": images(b, seed=2),
            "random": images(b, seed=3), "query": images(b * p, seed=4).view(b, p, 3, 16, 16),
            "is_same": torch.tensor([[True, False]] * b), "pair_valid": torch.ones(b, p, dtype=torch.bool)}


def test_reconstructor_training_steps_and_rows():
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    service = tiny_service()
    attacker = build_key_model("unet", seed=0, base=4, depth=2)
    disc = PatchGAN(ndf=4, n_layers=1)
    module = AVIHReconstructor(attacker, disc, service, tiny_service(seed=5),
                               {"identity": 30.0, "gan": 1.0}, {"flip": True, "pad": 2, "crop": True})
    data = [{"encrypted": x, "aux": a} for x, a in zip(images(8), images(8, seed=9))]
    before = [p.detach().clone() for p in attacker.parameters()]
    trainer = pl.Trainer(accelerator="cpu", max_steps=4, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(module, DataLoader(data, batch_size=4))
    assert trainer.global_step == 4  # 2 steps x (D + G)
    assert any(not torch.equal(a, b) for a, b in zip(before, attacker.parameters()))
    assert all(not p.requires_grad for p in service.parameters())
    out = module.test_step(_rows_batch(), 0)
    assert set(out["groups"]) == {f"{r}/" for r in ROWS}
    g = out["groups"]["original/"]
    assert g["scores"].shape == (8,) and g["is_same"].sum() == 4
    torch.testing.assert_close(g["pred"], g["target"])
    # without the GAN loss there is no discriminator and one optimiser
    plain = AVIHReconstructor(build_key_model("unet", seed=0, base=4, depth=2), PatchGAN(ndf=4, n_layers=1),
                              service, None, {"identity": 30.0, "gan": 0.0}, None)
    assert plain.discriminator is None and len(plain.configure_optimizers()) == 1


def test_heldout_rows_pad_pairs(tmp_path):
    from reconattack.data.avih import ArrayImages, AVIHData, ImageSet

    imgs = (np.random.default_rng(0).random((6, 16, 16, 3)) * 255).astype(np.uint8)
    data = AVIHData(ImageSet(imgs[:4], np.arange(4)), 2, ImageSet(imgs[4:], np.arange(2)),
                    np.array([2, 2, 3]), np.array([0, 1, 1]), np.array([True, False, True]),
                    ArrayImages(imgs), None, 16)
    rows = HeldOutRows(data, np.array([2, 3]), torch.zeros(2, 3, 16, 16), torch.zeros(2, 3, 16, 16),
                       np.array([0, 1]))
    a, b = rows[0], rows[1]
    assert rows.P == 2 and a["pair_valid"].tolist() == [True, True] and b["pair_valid"].tolist() == [True, False]
    assert b["is_same"][0] and a["query"].shape == (2, 3, 16, 16)


# ---------------------------------------------------------------------------------- data
def _data_cfg(**over):
    cfg = {"image_size": 16, "selection_seed": 0,
           "gallery": {"kind": "digits", "size": 40, "pool": 20},
           "auxiliary": {"kind": "digits"},
           "split": {"models": 100, "auxiliary": 30, "queries": 50}}
    for k, v in over.items():
        cfg[k] = v
    return OmegaConf.create(cfg)


def test_digits_roles_are_disjoint_and_deterministic():
    d = build_avih_data(_data_cfg())
    assert len(d.gallery) == 40 and d.pool == 20 and len(d.queries) == 50 and len(d.auxiliary) == 30
    assert d.gallery.images.shape == (40, 16, 16, 3) and len(d.models_train) == 100
    names = [set(s.names) for s in (d.gallery, d.queries, d.models_train)]
    assert not (names[0] & names[1]) and not (names[0] & names[2]) and not (names[1] & names[2])
    assert (d.gallery.labels[d.pair_gallery] == d.queries.labels[d.pair_query])[d.pair_same].all()
    assert (d.gallery.labels[d.pair_gallery] != d.queries.labels[d.pair_query])[~d.pair_same].all()
    assert d.gallery.names == build_avih_data(_data_cfg()).gallery.names


def test_bin_gallery_celeba_auxiliary_and_bad_inputs(tmp_path):
    rng = np.random.default_rng(0)
    pics = (rng.random((12, 20, 20, 3)) * 255).astype(np.uint8)
    make_bin(tmp_path / "lfw.bin", pics, [True, False] * 3)
    aux = tmp_path / "celeba"
    aux.mkdir()
    import cv2

    for i in range(3):
        cv2.imwrite(str(aux / f"{i}.png"), (rng.random((24, 20, 3)) * 255).astype(np.uint8))
    cfg = _data_cfg(gallery={"kind": "bin", "path": str(tmp_path / "lfw.bin"), "size": 4, "pool": 2},
                    auxiliary={"kind": "folder", "path": str(aux), "size": None})
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        d = build_avih_data(cfg)
        d.auxiliary[0]
    assert any(issubclass(x.category, WrongSizeWarning) and "resized to 16x16" in str(x.message) for x in w)
    assert d.gallery.images.shape == (4, 16, 16, 3) and d.auxiliary[0].shape == (3, 16, 16)
    assert len(d.pair_same) == 4 and list(d.pair_gallery) == list(d.pair_query) == [0, 1, 2, 3]
    cfg.gallery.size = 10
    with pytest.raises(ValueError, match="gallery smaller than requested.*6 pairs.*10"):
        build_avih_data(cfg)
    cfg.gallery.size = 4
    cfg.auxiliary.path = str(tmp_path / "nowhere")
    with pytest.raises(DataNotFoundError, match="data.auxiliary.*nowhere"):
        build_avih_data(cfg)
    cfg.gallery.pool = 4
    with pytest.raises(ValueError, match="pool"):
        build_avih_data(cfg)
