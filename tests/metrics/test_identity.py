"""Identity leakage (issue 29 §1): type-I verification by a face recogniser the attack did not use,
the mean cosine and rank-1 identification. Expected values from the definitions written out here
(loops over the pairs), with a fixture recogniser injected; a recogniser without its checkpoint is
a missing metric with the reason."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from reconattack.metrics.identity import IdentityLeakage, crop_faces, impostor_pairs
from reconattack.metrics.suite import MetricSuite
from tests.helpers import compose_cfg


def _cos(a, b) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def _loop_tpr(genuine: list[float], impostor: list[float], far: float) -> float:
    best = 0.0
    for t in [math.inf, *sorted(set(genuine + impostor))]:
        if sum(s >= t for s in impostor) / len(impostor) <= far:
            best = max(best, sum(s >= t for s in genuine) / len(genuine))
    return best


def test_impostor_pairs_are_every_other_original_or_a_seeded_sample():
    own = np.array([0, 1, 2, 3])
    qi, gi = impostor_pairs(own, 4, per_query=10, seed=0)
    assert sorted(zip(qi.tolist(), gi.tolist())) == [(a, b) for a in range(4) for b in range(4) if a != b]
    own = np.arange(50)
    qi, gi = impostor_pairs(own, 50, per_query=7, seed=3)
    assert qi.size == 50 * 7 and not (gi == own[qi]).any()
    for a in range(50):
        assert len(set(gi[qi == a].tolist())) == 7  # without replacement
    again = impostor_pairs(own, 50, per_query=7, seed=3)
    assert np.array_equal(again[1], gi)


@pytest.mark.parametrize("seed", [0, 1])
def test_type_i_verification_cosine_and_rank1_equal_the_written_out_definitions(seed):
    rng = np.random.default_rng(seed)
    n = 40
    originals = rng.normal(size=(n, 8)).astype(np.float16).astype(np.float64)  # the stored precision
    recon = (originals + rng.normal(scale=1.2, size=(n, 8))).astype(np.float16).astype(np.float64)
    leak = IdentityLeakage(fars=(0.1, 0.01, 0.001), max_impostors=999)
    leak.update(torch.tensor(recon[:25]), torch.tensor(originals[:25]))
    leak.update(torch.tensor(recon[25:]), torch.tensor(originals[25:]))
    out = leak.compute()
    genuine = [_cos(recon[i], originals[i]) for i in range(n)]
    impostor = [_cos(recon[i], originals[j]) for i in range(n) for j in range(n) if j != i]
    assert out["id/cos"] == pytest.approx(np.mean(genuine), abs=1e-12)
    assert out["id/pairs/impostor"] == n * (n - 1) == 1560 and out["id/min_far"] == pytest.approx(1 / 1560)
    for far in (0.1, 0.01, 0.001):
        assert out[f"id/tpr@far={far:g}"] == pytest.approx(_loop_tpr(genuine, impostor, far), abs=1e-12)
    hits = []
    for i in range(n):
        sims = [_cos(recon[i], originals[j]) for j in range(n)]
        hits.append(1.0 if max(sims) == sims[i] else 0.0)  # no exact ties in normal draws
    assert out["id/rank1"] == pytest.approx(np.mean(hits)) and out["id/chance"] == pytest.approx(1 / n)
    assert leak.curve is not None and leak.curve["far"][-1] == 1.0


def test_a_far_the_impostors_cannot_measure_is_missing():
    rng = np.random.default_rng(2)
    originals = rng.normal(size=(10, 4))
    leak = IdentityLeakage(fars=(0.1, 0.001))
    leak.update(torch.tensor(originals), torch.tensor(originals))
    out = leak.compute()  # 90 impostor pairs
    assert out["id/tpr@far=0.1"] == 1.0
    assert out["id/tpr@far=0.001"].startswith("missing: ") and "90" in out["id/tpr@far=0.001"]


def test_crop_faces_takes_the_fractions_of_the_image():
    x = torch.arange(2 * 3 * 10 * 20, dtype=torch.float32).reshape(2, 3, 10, 20)
    torch.testing.assert_close(crop_faces(x, (0.1, 0.25, 0.9, 0.75)), x[..., 1:9, 5:15])
    assert crop_faces(x, None) is x
    with pytest.raises(ValueError, match="empty"):
        crop_faces(x, (0.5, 0.5, 0.5, 0.9))


class _Recogniser(torch.nn.Module):
    """A fixture recogniser: (B, 3, H, W) in [-1, 1] → mean colour per 2x2 quadrant, unit norm
    (tests only; never a face model)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1) + 2.0, dim=1)


def test_the_suite_reports_identity_rows_and_their_roc():
    g = torch.Generator().manual_seed(0)
    target = torch.rand(12, 3, 16, 16, generator=g) * 2 - 1
    suite = MetricSuite(metrics=["psnr"], feature_nets={"face": _Recogniser()}, fars=(0.1,))
    suite.update(target, target)
    out = suite.compute()
    assert out["id/rank1"] == 1.0 and out["id/cos"] == pytest.approx(1.0) and out["id/tpr@far=0.1"] == 1.0
    assert set(suite.rocs()) == {"id"}
    suite.reset()
    suite.update(target.mean(0, keepdim=True).expand_as(target), target)
    assert suite.compute()["id/rank1"] == pytest.approx(1 / 12)  # one image for all: chance


def test_a_recogniser_without_its_checkpoint_is_missing_with_the_reason():
    cfg = compose_cfg(["+face@metrics.identity.model=arcface_ir50", "paths.data_dir=/nonexistent"])
    model = cfg.metrics.identity.model
    assert "IResNet" in model.net._target_ and model.checkpoint.startswith("/nonexistent")
    with pytest.warns(UserWarning, match="id/"):
        suite = MetricSuite(metrics=["psnr"], identity={"model": model})
        suite.update(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8))
    out = suite.compute()
    assert out["id/rank1"].startswith("missing: face recogniser") and "not found" in out["id/rank1"]
    assert not any(k.startswith("id/tpr") for k in out)  # no number under its name
