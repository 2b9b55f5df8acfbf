"""AVIH threat building blocks: artifacts, encryption jobs, the key share, the encryptor, the
data sources, the evaluation rows; the DR attack's stage."""

from __future__ import annotations

import multiprocessing as mp
import warnings

import cv2
import numpy as np
import pytest
import torch

from reconattack.attacks.dr import DRStage
from reconattack.data.avih import (
    ArrayImages,
    AuxiliaryFolder,
    BinGallery,
    DigitsFaces,
    EncryptionJobs,
    HeldOutRows,
    ImageSet,
    WrongSizeWarning,
)
from reconattack.data.faces import make_bin
from reconattack.data.images import DataNotFoundError
from reconattack.engine.artifacts import ArtifactStore, spec_key
from reconattack.errors import ConfigError
from reconattack.losses.avih import avih_loss
from reconattack.metrics.callback import ReconstructionMetrics
from reconattack.models.face import IResNet, make_face_model
from reconattack.models.keys import PatchGAN, UNet, make_key_model
from reconattack.threats.avih import AVIHEvaluation, Role, encryption_jobs, leaked_count
from reconattack.threats.avih.encryption import AVIHEncryptor, PerImageMomentum


def tiny_service(seed=0):
    return make_face_model(lambda: IResNet([1, 1], [4, 8], embedding_size=8, input_size=16),
                           seed=seed).eval().requires_grad_(False)


def tiny_keys(n=2):
    return [make_key_model(lambda: UNet(base=4, depth=2), seed=10 + i).eval().requires_grad_(False)
            for i in range(n)]


def images(b=4, size=16, seed=0):
    """(b, 3, size, size) in [-1, 1]."""
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


OPTIMIZERS = {"adam": lambda params: torch.optim.Adam(params, lr=0.02),
              "momentum": lambda params: PerImageMomentum(params, lr=0.02)}


WEIGHTS = {"task": 1.0, "diff": 0.03, "rec": 0.5, "vc": 3.0}


# ----------------------------------------------------------------------------- artifacts
def test_artifacts_built_another_way_are_not_shared(tmp_path):
    """The same spec built on another kind of device, in another precision or torch version is
    another artifact (a demo on CPU and a paper run on GPUs never share one); the same way, the
    same one. What built it is recorded in its spec.json."""
    import json

    from omegaconf import OmegaConf

    from reconattack.engine.context import built_with

    cpu = built_with(OmegaConf.create({"accelerator": "cpu", "precision": "32"}))
    assert cpu == built_with(OmegaConf.create({"accelerator": "cpu", "precision": "32-true"}))
    assert cpu["device"] == "cpu" and cpu["precision"] == "32-true" and cpu["torch"] == torch.__version__.split("+")[0]
    bf16 = built_with(OmegaConf.create({"accelerator": "cpu", "precision": "bf16-mixed"}))
    gpu = {**cpu, "device": "cuda"}
    paths = {name: ArtifactStore(tmp_path, built_with=b).path("encrypted_gallery", {"a": 1})
             for name, b in (("cpu", cpu), ("bf16", bf16), ("gpu", gpu))}
    assert len(set(paths.values())) == 3
    assert ArtifactStore(tmp_path, built_with=dict(cpu)).path("encrypted_gallery", {"a": 1}) == paths["cpu"]
    made = ArtifactStore(tmp_path, built_with=cpu).get("encrypted_gallery", {"a": 1}, lambda d: None)
    assert json.loads((made / "spec.json").read_text())["spec"] == {"a": 1, "built_with": cpu}


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
    index, key, role = encryption_jobs(pool=4, n_gallery=10, num_keys=3, target_key=0, decoys=True)
    assert list(index[role == 0]) == [4, 5, 6, 7, 8, 9] and (key[role == 0] == 0).all()
    assert list(index[role == 1]) == [0, 1, 2, 3] and (key[role == 1] == 0).all()
    assert list(index[role == 2]) == [0, 1, 2, 3] and list(key[role == 2]) == [1, 2, 1, 2]
    _, _, role = encryption_jobs(4, 10, 1, decoys=True)
    assert (role != Role.DECOY).all()  # one key: no decoys
    index, _, role = encryption_jobs(4, 10, 3)  # off by default
    assert len(index) == 10 and (role != Role.DECOY).all()
    assert [int(r) for r in (Role.HELD_OUT, Role.POOL, Role.DECOY)] == [0, 1, 2]
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
    enc = AVIHEncryptor(service, keys, WEIGHTS, iterations=30, optimizer=OPTIMIZERS[optimizer], seed=3)
    x = images(3)
    key_id, slot = torch.tensor([0, 1, 0]), torch.tensor([0, 1, 2])
    x_enc = enc.encrypt(x, key_id, slot)
    assert x_enc.shape == x.shape and x_enc.min() >= -1 and x_enc.max() <= 1
    with torch.no_grad():
        emb = service(x)
        x01 = (x + 1) / 2
        start, _ = enc.losses(enc.initial(x01, slot), x01, emb, key_id)
        end, _ = enc.losses((x_enc + 1) / 2, x01, emb, key_id)
    assert (end < start).all(), (start, end)
    # image 0 encrypted alone (same job number) gives the same result: no batch mixing
    alone = enc.encrypt(x[:1], key_id[:1], slot[:1])
    torch.testing.assert_close(alone, x_enc[:1], atol=1e-5, rtol=0)
    # another job number: other initial noise
    assert not torch.allclose(enc.encrypt(x[:1], key_id[:1], torch.tensor([7])), alone)


def test_encryptor_loss_is_the_weighted_avih_loss_on_the_official_scale():
    """Inside, pixels are optimised in [0, 1] (the range of the paper's weights); the models at
    the boundary get [-1, 1]."""
    service, keys = tiny_service(), tiny_keys()
    enc = AVIHEncryptor(service, keys, WEIGHTS, vc_kernel=3)
    x, xe = images(2), images(2, seed=1)
    kid = torch.tensor([1, 0])
    x01, xe01 = (x + 1) / 2, (xe + 1) / 2
    total, terms = enc.losses(xe01, x01, service(x), kid)
    rec01 = (torch.cat([keys[1](xe[:1]), keys[0](xe[1:])]) + 1) / 2
    ref, _ = avih_loss(service(xe), service(x), xe01, x01, rec01, WEIGHTS, vc_kernel=3)
    torch.testing.assert_close(total, ref)


def test_encryption_stays_float32_under_mixed_precision():
    enc = AVIHEncryptor(tiny_service(), tiny_keys(), WEIGHTS, iterations=5, seed=1)
    x, kid, slot = images(2), torch.tensor([0, 1]), torch.tensor([0, 1])
    plain = enc.encrypt(x, kid, slot)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = enc.encrypt(x, kid, slot)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, plain)


def test_momentum_step_matches_the_official_update():
    """PerImageMomentum: g / mean|g| per image, momentum 0.3, step x 0.85 after every 16 increases."""
    x = torch.zeros(2, 1, 2, 2, requires_grad=True)
    opt = PerImageMomentum([x], lr=0.1, momentum=0.3, decay=0.5, patience=2)
    grads = [torch.tensor([[[[1.0, -3.0], [2.0, 2.0]]], [[[4.0, 4.0], [4.0, 4.0]]]]),
             torch.tensor([[[[2.0, 2.0], [2.0, 2.0]]], [[[1.0, 1.0], [1.0, 1.0]]]])]
    losses = [torch.tensor([1.0, 1.0]), torch.tensor([2.0, 0.5]), torch.tensor([3.0, 0.4])]
    ref, v, step = torch.zeros(2, 1, 2, 2), torch.zeros(2, 1, 2, 2), torch.tensor([0.1, 0.1])
    for i, loss in enumerate(losses):
        g = grads[i % 2]
        x.grad = g.clone()
        opt.step(lambda loss=loss: loss)
        v = 0.3 * v + g / g.abs().mean(dim=(1, 2, 3), keepdim=True)
        ref = ref - step.view(2, 1, 1, 1) * v
        if i == 2:  # image 0's loss rose twice (1 -> 2 -> 3): its step halves once
            step = step * torch.tensor([0.5, 1.0])
        torch.testing.assert_close(x.detach(), ref)
    torch.testing.assert_close(opt.state[x]["step"].flatten(), torch.tensor([0.05, 0.1]))


def test_encryptor_rejects_bad_settings():
    with pytest.raises(ValueError, match="init"):
        AVIHEncryptor(tiny_service(), tiny_keys(), WEIGHTS, init="zeros")
    with pytest.raises(ValueError, match="iterations"):
        AVIHEncryptor(tiny_service(), tiny_keys(), WEIGHTS, iterations=0)
    with pytest.raises(ValueError, match="momentum"):
        PerImageMomentum([torch.zeros(1, requires_grad=True)], momentum=1.5)


class _Recorder:
    """An :class:`EncryptionSink` that keeps what it is handed."""

    def __init__(self):
        self.writes = []

    def write(self, slot, encrypted, recovered, curve):
        self.writes.append((slot, encrypted, recovered, list(curve)))


def test_encryptor_test_step_reports_groups_and_hands_its_results_to_the_sink():
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    gallery = (np.random.default_rng(0).random((5, 16, 16, 3)) * 255).astype(np.uint8)
    index, key, _ = encryption_jobs(2, 5, 2, decoys=True)  # two keys in play
    sink = _Recorder()
    enc = AVIHEncryptor(tiny_service(), tiny_keys(), WEIGHTS, iterations=3, log_every=1, sink=sink)
    cb = ReconstructionMetrics(stages=("test",), metrics=("mse", "psnr", "ssim"))
    trainer = pl.Trainer(accelerator="cpu", logger=False, callbacks=[cb], inference_mode=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.test(enc, DataLoader(EncryptionJobs(gallery, index, key), batch_size=3), verbose=False)
    slots = torch.cat([w[0] for w in sink.writes])
    assert slots.tolist() == list(range(7)) and len(sink.writes) == 3  # every job once, batch by batch
    encrypted = torch.cat([w[1] for w in sink.writes])
    assert encrypted.shape == (7, 3, 16, 16) and encrypted.dtype == torch.float32
    recovered = torch.cat([w[2] for w in sink.writes])
    with torch.no_grad():  # each job's recovery is its own key model applied to its encryption
        expected = enc.recover(encrypted, torch.from_numpy(key))
    torch.testing.assert_close(recovered, expected)
    res = cb.results["test"]
    for k in ("encrypt/psnr", "encrypt/ssim", "encrypt/key_psnr", "encrypt/key_ssim",
              "encrypt/wrong_key_psnr"):
        assert isinstance(res[k], float), k
    assert 0 < float(trainer.callback_metrics["encrypt/service_cos"]) <= 1
    curve = [row for w in sink.writes for row in w[3]]
    assert len(curve) == 3 * 3 and {"loss", "vc", "task"} <= set(curve[0])  # 3 iterations x 3 batches
    # evaluating the stored encryption reproduces the numbers, and encrypts nothing
    cb2 = ReconstructionMetrics(stages=("test",), metrics=("mse", "psnr", "ssim"))
    sink2 = _Recorder()
    enc2 = AVIHEncryptor(tiny_service(), tiny_keys(), WEIGHTS, iterations=3, sink=sink2)
    pl.Trainer(accelerator="cpu", logger=False, callbacks=[cb2], enable_progress_bar=False,
               enable_model_summary=False).test(
        enc2, DataLoader(EncryptionJobs(gallery, index, key, encrypted), batch_size=4),
        verbose=False)
    assert not sink2.writes  # nothing re-encrypted
    for k in ("encrypt/psnr", "encrypt/key_psnr", "encrypt/wrong_key_ssim"):
        assert cb2.results["test"][k] == pytest.approx(res[k], abs=1e-5)


def test_the_gallery_writer_streams_rows_to_disk_and_a_new_writer_continues_from_them(tmp_path):
    from reconattack.threats.avih.gallery import GalleryWriter

    w = GalleryWriter(tmp_path / "work", 5, (3, 4, 2))
    x, r = torch.randn(2, 3, 4, 2), torch.randn(2, 3, 4, 2)
    w.write(torch.tensor([3, 1]), x, r, [{"batch": 0, "loss": 1.0}])
    on_disk = np.load(tmp_path / "work" / "encrypted.npy")  # read apart from the writer
    assert on_disk.shape == (5, 3, 4, 2) and on_disk.dtype == np.float32
    np.testing.assert_array_equal(on_disk[3], x[0].numpy())
    np.testing.assert_array_equal(on_disk[1], x[1].numpy())
    np.testing.assert_array_equal(np.load(tmp_path / "work" / "recovered.npy")[1], r[1].numpy())
    assert w.done.tolist() == [False, True, False, True, False]
    again = GalleryWriter(tmp_path / "work", 5, (3, 4, 2))  # a build killed here continues
    assert again.done.tolist() == w.done.tolist() and again.curve == [{"batch": 0, "loss": 1.0}]
    torch.testing.assert_close(again.stored()[3], x[0])
    (tmp_path / "work" / "done-00000001-00000003.pt").write_bytes(b"torn")  # a torn record: redone
    assert not GalleryWriter(tmp_path / "work", 5, (3, 4, 2)).done.any()
    with pytest.raises(RuntimeError, match="undone"):
        again.publish(tmp_path)
    other = GalleryWriter(tmp_path / "work", 6, (3, 4, 2))  # another gallery's shape: started over
    assert not other.done.any() and np.load(tmp_path / "work" / "encrypted.npy").shape == (6, 3, 4, 2)


# ---------------------------------------------------------------------------- the attack
def _rows_batch(b=4, p=2):
    return {"target": images(b), "input": images(b, seed=1), "key_recovered": images(b, seed=2),
            "random": images(b, seed=3), "query": images(b * p, seed=4).view(b, p, 3, 16, 16),
            "is_same": torch.tensor([[True, False]] * b), "pair_valid": torch.ones(b, p, dtype=torch.bool)}


def test_dr_stage_training_steps_keep_the_service_model_out_of_the_checkpoint():
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    service = tiny_service()
    attacker = make_key_model(lambda: UNet(base=4, depth=2), seed=0)
    disc = PatchGAN(ndf=4, n_layers=1)
    module = DRStage(attacker, disc, service, {"identity": 30.0, "gan": 1.0},
                     {"flip": True, "pad": 2, "crop": True},
                     optimizer=lambda p: torch.optim.Adam(p, lr=1e-3), iterations=2)
    data = [{"input": x, "aux": a} for x, a in zip(images(8), images(8, seed=9))]
    before = [p.detach().clone() for p in attacker.parameters()]
    trainer = pl.Trainer(accelerator="cpu", max_steps=4, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(module, DataLoader(data, batch_size=4))
    assert trainer.global_step == 4  # 2 iterations x (D + G)
    assert any(not torch.equal(a, b) for a, b in zip(before, attacker.parameters()))
    assert all(not p.requires_grad for p in service.parameters()) and not service.training
    keys = module.state_dict().keys()
    assert any(k.startswith("attacker.") for k in keys) and not any("service" in k for k in keys)
    # without the GAN loss there is no discriminator and one optimiser
    plain = DRStage(make_key_model(lambda: UNet(base=4, depth=2), seed=0), PatchGAN(ndf=4, n_layers=1),
                    service, {"identity": 30.0, "gan": 0.0}, None, optimizer=lambda p: torch.optim.Adam(p))
    assert plain.discriminator is None and len(plain.configure_optimizers()) == 1


def test_avih_evaluation_rows_and_verification_scores():
    ev = AVIHEvaluation(tiny_service(seed=5))
    batch = _rows_batch()
    controls = ev.controls(batch, None)
    assert set(controls) == {"original", "protected", "key_model", "random"}
    groups = ev.groups(batch, {"ours": images(4, seed=7), **{f"row_{k}": v for k, v in controls.items()}})
    g = groups["row_original/"]
    assert g["scores"].shape == (8,) and g["is_same"].sum() == 4
    torch.testing.assert_close(g["pred"], g["target"])
    assert groups["ours/"]["scores"].shape == (8,)


def test_heldout_rows_pad_pairs():
    imgs = (np.random.default_rng(0).random((6, 16, 16, 3)) * 255).astype(np.uint8)
    rows = HeldOutRows(ImageSet(imgs[:4], np.arange(4)), ImageSet(imgs[4:], np.arange(2)),
                       (np.array([2, 2, 3]), np.array([0, 1, 1]), np.array([True, False, True])),
                       ArrayImages(imgs), np.array([2, 3]), torch.zeros(2, 3, 16, 16),
                       torch.zeros(2, 3, 16, 16), np.array([0, 1]))
    a, b = rows[0], rows[1]
    assert rows.P == 2 and a["pair_valid"].tolist() == [True, True] and b["pair_valid"].tolist() == [True, False]
    assert b["is_same"][0] and a["query"].shape == (2, 3, 16, 16)
    assert a["target"].min() >= -1 and a["target"].max() <= 1 and a["target"].min() < 0


# ---------------------------------------------------------------------------------- data
def test_digits_roles_are_disjoint_and_deterministic():
    parts = DigitsFaces({"models": 100, "auxiliary": 30, "queries": 50}).load(16, 40, seed=0)
    assert len(parts.gallery) == 40 and len(parts.queries) == 50 and len(parts.auxiliary) == 30
    assert parts.gallery.images.shape == (40, 16, 16, 3) and len(parts.models_train) == 100
    names = [set(s.names) for s in (parts.gallery, parts.queries, parts.models_train)]
    assert not (names[0] & names[1]) and not (names[0] & names[2]) and not (names[1] & names[2])
    same = parts.pair_same
    assert (parts.gallery.labels[parts.pair_gallery] == parts.queries.labels[parts.pair_query])[same].all()
    assert (parts.gallery.labels[parts.pair_gallery] != parts.queries.labels[parts.pair_query])[~same].all()
    again = DigitsFaces({"models": 100, "auxiliary": 30, "queries": 50}).load(16, 40, seed=0)
    assert parts.gallery.names == again.gallery.names
    with pytest.raises(ValueError, match="split asks for"):
        DigitsFaces({"models": 1000, "auxiliary": 500, "queries": 500}).load(16, 400, seed=0)


def test_bin_gallery_celeba_auxiliary_and_bad_inputs(tmp_path):
    rng = np.random.default_rng(0)
    pics = (rng.random((12, 20, 20, 3)) * 255).astype(np.uint8)
    make_bin(tmp_path / "lfw.bin", pics, [True, False] * 3)
    aux = tmp_path / "celeba"
    aux.mkdir()
    import cv2

    for i in range(3):
        cv2.imwrite(str(aux / f"{i}.png"), (rng.random((24, 20, 3)) * 255).astype(np.uint8))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        parts = BinGallery(str(tmp_path / "lfw.bin")).load(16, 4, seed=0)
        auxiliary = AuxiliaryFolder(str(aux)).load(16, seed=0)
        item = auxiliary[0]
    assert any(issubclass(x.category, WrongSizeWarning) and "resized to 16x16" in str(x.message) for x in w)
    assert parts.gallery.images.shape == (4, 16, 16, 3) and item.shape == (3, 16, 16)
    assert len(parts.pair_same) == 4 and list(parts.pair_gallery) == list(parts.pair_query) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="gallery smaller than requested.*6 pairs.*10"):
        BinGallery(str(tmp_path / "lfw.bin")).load(16, 10, seed=0)
    assert BinGallery(str(tmp_path / "lfw.bin")).missing() == []
    missing = AuxiliaryFolder(str(tmp_path / "nowhere")).missing()
    assert len(missing) == 1 and "data.auxiliary" in missing[0] and "nowhere" in missing[0]
    with pytest.raises(DataNotFoundError, match="nowhere"):
        AuxiliaryFolder(str(tmp_path / "nowhere")).load(16, seed=0)


def test_key_share_and_pool_are_checked_when_the_threat_is_built():
    from tests.helpers import compose_cfg

    cfg = compose_cfg(["+experiment=demo_avih", "data.pool=300"])
    from reconattack.engine.runner import build_threat

    with pytest.raises(ConfigError, match="pool"):
        build_threat(cfg)
    with pytest.raises(ConfigError, match="leaks no image"):
        build_threat(compose_cfg(["+experiment=demo_avih", "threat.key_share=0.001"]))
    with pytest.raises(ConfigError, match="threat.saved_as.format must be one of"):
        build_threat(compose_cfg(["+experiment=demo_avih", "threat.saved_as.format=bmp"]))


def test_auxiliary_images_are_cropped_to_the_aspect_or_resized_whole(tmp_path):
    from reconattack.data.avih import AuxiliaryFolder

    aux = tmp_path / "aux"
    aux.mkdir()
    img = np.zeros((40, 40, 3), np.uint8)
    img[:, :10] = 255  # a white band on the left quarter
    cv2.imwrite(str(aux / "a.png"), img)
    whole = AuxiliaryFolder(str(aux), crop=False).load((32, 16), seed=0)[0]
    assert whole.shape == (3, 32, 16) and whole[:, :, :4].mean() > 0.9  # the band kept, squeezed
    with pytest.warns(UserWarning, match="centre-cropped"):
        cropped = AuxiliaryFolder(str(aux)).load((32, 16), seed=0)[0]
    assert cropped.shape == (3, 32, 16) and cropped.max() < -0.9  # the centre 20 px column: no band
