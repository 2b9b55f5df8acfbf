"""What the attacker never holds, and artifacts that are never stale (issue 27, items 2 and 3):
held-out photos apart from the pool's, keys trained on the victim's images, artifacts keyed by
their folders' listings, an encrypted gallery built with flat memory."""

from __future__ import annotations

import gc
import hashlib
import os

import numpy as np
import pytest
import torch

from reconattack.data.avih import BinGallery, DigitsFaces
from reconattack.data.faces import make_bin
from reconattack.errors import ConfigError
from reconattack.utils.files import source_fingerprint
from tests.helpers import compose_cfg, demo_tiny, tensor_storages


def _photo(image: np.ndarray) -> str:
    """A photo's identity written apart from the package: SHA-1 of its pixels."""
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


def test_held_out_pairs_share_no_photo_with_the_attackers_pool(tmp_path):
    """A pair list that reuses photos (as LFW's does): pair i is photos (i, i + 1) of 13, so each
    photo but the ends is in two pairs. No pool gallery photo appears in a held-out pair, either
    side; the pairs passed over are counted."""
    rng = np.random.default_rng(0)
    photos = (rng.random((13, 16, 16, 3)) * 255).astype(np.uint8)
    use = np.asarray([[i, i + 1] for i in range(12)]).ravel()  # pair i = photos use[2i], use[2i + 1]
    make_bin(tmp_path / "lfw.bin", photos[use], [True, False] * 6)
    pool = 3
    # expected from the definition: the seeded order's first `pool` pairs are the pool; a later
    # pair touching one of their gallery photos is passed over
    order = np.random.default_rng(0).permutation(12)
    pool_photos_ids = {int(use[2 * p]) for p in order[:pool]}
    rest = [int(p) for p in order[pool:]]
    clean = [p for p in rest if not {int(use[2 * p]), int(use[2 * p + 1])} & pool_photos_ids]
    n_gallery = pool + len(clean)  # every clean pair is needed
    passed_over = len(rest[:rest.index(clean[-1])]) - (len(clean) - 1)  # blocked ones met before the last
    assert passed_over > 0  # the fixture does reuse pool photos
    parts = BinGallery(str(tmp_path / "lfw.bin")).load(16, n_gallery, seed=0, pool=pool)
    pool_photos = {_photo(im) for im in parts.gallery.images[:pool]}
    held = {_photo(im) for im in parts.gallery.images[pool:]} | {_photo(im) for im in parts.queries.images[pool:]}
    assert len(parts.gallery) == n_gallery and not pool_photos & held
    assert parts.heldout_removed == passed_over
    with pytest.raises(ConfigError, match="share no photo with the attacker's"):  # too few clean pairs
        BinGallery(str(tmp_path / "lfw.bin")).load(16, n_gallery + 1, seed=0, pool=pool)


def test_trained_keys_learn_on_the_victims_images_never_the_auxiliary_set_nor_the_gallery(tmp_path, monkeypatch):
    import reconattack.threats.avih.models as avih_models
    from reconattack.engine.context import RunContext
    from reconattack.engine.runner import build_threat

    seen = []
    real = avih_models.key_train_loader

    def recording(images, *args, **kwargs):
        seen.extend(_photo(((images[i].numpy().transpose(1, 2, 0) + 1) * 127.5).round().astype(np.uint8))
                    for i in range(len(images)))
        return real(images, *args, **kwargs)

    monkeypatch.setattr(avih_models, "key_train_loader", recording)
    cfg = compose_cfg([*demo_tiny(tmp_path), "threat.key.train={steps: 1, batch_size: 2}", "threat.key.count=1"])
    threat = build_threat(cfg)
    threat.prepare(RunContext(cfg, tmp_path / "run"))
    aux = threat.parts.auxiliary
    held_out = {_photo(im) for im in threat.parts.gallery.images}
    auxiliary = {_photo(((aux[i].numpy().transpose(1, 2, 0) + 1) * 127.5).round().astype(np.uint8))
                 for i in range(len(aux))}
    assert seen and not set(seen) & auxiliary and not set(seen) & held_out


def test_trained_keys_without_victim_images_are_refused_before_any_work(tmp_path):
    from reconattack.engine.runner import build_threat
    from tests.helpers import experiment_overrides, make_experiment_data

    data = make_experiment_data(tmp_path / "data")
    over = [*experiment_overrides("avih_attack_lfw", tmp_path, data), "threat.key.train={steps: 1}"]
    with pytest.raises(ConfigError, match="data.victim"):
        build_threat(compose_cfg(over))
    with pytest.raises(ConfigError, match="overlaps data.auxiliary"):  # the attacker's own folder
        build_threat(compose_cfg([*over, "data.victim={_target_: reconattack.data.avih.AuxiliaryFolder, "
                                  "key: data.victim, path: '${data.auxiliary.path}/..'}"]))


def test_a_folder_is_fingerprinted_by_its_listing(tmp_path):
    folder = tmp_path / "gallery" / "id1"
    folder.mkdir(parents=True)
    (folder / "a.jpg").write_bytes(b"1234")
    first = source_fingerprint(tmp_path / "gallery")
    assert first["files"] == 1 and source_fingerprint(tmp_path / "gallery") == first
    (folder / "a.jpg").write_bytes(b"5678")  # replaced under the same name and size
    os.utime(folder / "a.jpg", ns=(1, 1))
    replaced = source_fingerprint(tmp_path / "gallery")
    assert replaced != first
    (folder / "b.jpg").write_bytes(b"9")
    assert source_fingerprint(tmp_path / "gallery")["files"] == 2
    assert source_fingerprint(tmp_path / "nowhere") is None


def test_replacing_images_under_the_same_path_rebuilds_the_artifacts(tmp_path):
    """The paper face setting on fixture data: a run, the same run again (everything reused),
    then one auxiliary image replaced under the same path: the encrypted gallery is built anew
    (before, a folder was keyed by its path alone and the old gallery was reused silently)."""
    import cv2

    from reconattack.run import run
    from tests.helpers import experiment_overrides, make_experiment_data

    data = make_experiment_data(tmp_path / "data")
    over = [*experiment_overrides("avih_encrypt_lfw", tmp_path, data), "+trainer.fast_dev_run=1"]
    assert run(compose_cfg(over))["artifacts/built"] >= 1
    assert run(compose_cfg(over))["artifacts/built"] == 0
    aux = compose_cfg(over).data.auxiliary.path
    image = sorted(p for p in __import__("pathlib").Path(aux).rglob("*") if p.is_file())[0]
    cv2.imwrite(str(image), (np.random.default_rng(1).random((30, 24, 3)) * 255).astype(np.uint8))
    os.utime(image, ns=(10**18, 10**18))
    assert run(compose_cfg(over))["artifacts/built"] >= 1


def _peak_build_bytes(tmp, gallery_size: int, monkeypatch) -> tuple[int, int]:
    """Peak bytes of tensors alive after an encryption batch while the gallery is built (what
    existed before the build is not counted): ``(the build's own, the build's plus what a control
    keeps)`` — the control keeps what the old code kept (each batch's encryptions and recoveries
    until the end, then concatenated: a second copy; four images' worth per job), so the same pass
    shows that the measurement sees a build that keeps its batches."""
    from reconattack.engine.context import RunContext
    from reconattack.engine.runner import build_threat
    from reconattack.threats.avih.encryption import AVIHEncryptor

    cfg = compose_cfg([*demo_tiny(tmp), f"data.gallery_size={gallery_size}", f"data.pool={gallery_size // 2}",
                       "threat.encrypt.batch_size=8", "threat.encrypt.iterations=1"])
    threat = build_threat(cfg)
    real, kept, own, with_kept = AVIHEncryptor.test_step, [], [], []
    before: set[int] = set()

    def measured(self, batch, batch_idx):
        out = real(self, batch, batch_idx)
        kept.extend(batch["image"].clone() for _ in range(4))
        kept_ptrs = {t.untyped_storage().data_ptr() for t in kept}
        new = {k: v for k, v in tensor_storages().items() if k not in before}
        own.append(sum(v for k, v in new.items() if k not in kept_ptrs))
        with_kept.append(sum(new.values()))
        return out

    monkeypatch.setattr(AVIHEncryptor, "test_step", measured)
    gc.collect()
    before |= set(tensor_storages())
    threat.prepare(RunContext(cfg, tmp / "run"))
    monkeypatch.undo()
    return max(own), max(with_kept)


def test_the_encrypted_gallerys_build_memory_does_not_grow_with_the_gallery(tmp_path, monkeypatch):
    small, small_leak = _peak_build_bytes(tmp_path / "small", 24, monkeypatch)
    large, large_leak = _peak_build_bytes(tmp_path / "large", 120, monkeypatch)
    print(f"peak build tensors: 24 images {small / 2**20:.2f} MiB, 120 images {large / 2**20:.2f} MiB; "
          f"with a control that keeps its batches {small_leak / 2**20:.2f} and {large_leak / 2**20:.2f} MiB")
    assert large_leak > 2 * small_leak  # the measurement sees a build that keeps its batches
    assert large <= 1.2 * small


def test_an_interrupted_build_continues_from_the_rows_it_wrote(tmp_path, monkeypatch):
    """Killed after its first batch, the build continues: the finished jobs are not encrypted
    again and the gallery equals an uninterrupted build's."""
    from reconattack.engine.context import RunContext
    from reconattack.engine.runner import build_threat
    from reconattack.threats.avih.encryption import AVIHEncryptor
    from reconattack.threats.avih.gallery import load_encrypted_gallery

    over = ["threat.encrypt.batch_size=8", "threat.encrypt.iterations=2"]
    whole_cfg = compose_cfg([*demo_tiny(tmp_path / "whole"), *over])
    build_threat(whole_cfg).prepare(RunContext(whole_cfg, tmp_path / "whole_run"))
    cfg = compose_cfg([*demo_tiny(tmp_path / "cut"), *over])
    real, calls = AVIHEncryptor.encrypt, []

    def dies_after_one(self, x, *args, **kwargs):
        calls.append(len(x))
        if len(calls) == 2:
            raise RuntimeError("killed")
        return real(self, x, *args, **kwargs)

    def counted(self, x, *args, **kwargs):
        calls.append(len(x))
        return real(self, x, *args, **kwargs)

    monkeypatch.setattr(AVIHEncryptor, "encrypt", dies_after_one)
    with pytest.raises(RuntimeError, match="killed"):
        build_threat(cfg).prepare(RunContext(cfg, tmp_path / "cut_run"))
    calls.clear()
    monkeypatch.setattr(AVIHEncryptor, "encrypt", counted)
    again = build_threat(cfg)
    again.prepare(RunContext(cfg, tmp_path / "cut_run2"))
    assert sum(calls) == 24 - 8  # the first batch's 8 jobs were kept
    art = lambda root: next((root / "cache" / "artifacts" / "encrypted_gallery").glob("[!.]*"))  # noqa: E731
    a, b = load_encrypted_gallery(art(tmp_path / "whole")), load_encrypted_gallery(art(tmp_path / "cut"))
    torch.testing.assert_close(b["encrypted"], a["encrypted"])
    torch.testing.assert_close(b["recovered"], a["recovered"])


def test_digits_roles_share_no_photo():
    parts = DigitsFaces({"models": 100, "auxiliary": 30, "queries": 50}).load(16, 40, seed=0, pool=20)
    victim = {_photo(((parts.victim[i].numpy().transpose(1, 2, 0) + 1) * 127.5).round().astype(np.uint8))
              for i in range(len(parts.victim))}
    aux = {_photo(((parts.auxiliary[i].numpy().transpose(1, 2, 0) + 1) * 127.5).round().astype(np.uint8))
           for i in range(len(parts.auxiliary))}
    gallery = {_photo(im) for im in parts.gallery.images}
    assert len(victim) == 100 and not victim & aux and not victim & gallery and not aux & gallery
