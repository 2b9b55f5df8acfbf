"""Retrieval leakage (issue 29): each reconstruction's own original among the evaluation's
originals, ties shared. Expected values from a loop written out here, never from the code's
output."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage import data as skdata

from reconattack.metrics import retrieval as R
from reconattack.metrics.suite import MetricSuite


def _loop_rank1(queries: np.ndarray, gallery: np.ndarray, own: list[int]) -> list[float]:
    """The definition: cosine similarity to every original; a query scores 1/k when no original
    is strictly nearer than its own and k originals (its own included) are exactly as near."""
    out = []
    for i, q in enumerate(queries):
        sims = []
        for g in gallery:
            dot = sum(float(a) * float(b) for a, b in zip(q, g))
            sims.append(dot / (math.sqrt(sum(float(a) ** 2 for a in q)) * math.sqrt(sum(float(b) ** 2 for b in g))))
        mine = sims[own[i]]
        nearer = sum(s > mine for s in sims)
        ties = sum(s == mine for s in sims)
        out.append(1.0 / ties if nearer == 0 else 0.0)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rank1_equals_the_written_out_loop_with_ties(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    gallery = rng.integers(-2, 3, size=(12, 4)).astype(np.float64)  # small integers: exact ties
    gallery[5] = 2 * gallery[3]  # the same direction: a cosine tie
    queries = gallery + rng.integers(-1, 2, size=gallery.shape) * (rng.random((12, 1)) < 0.5)
    queries[0] = gallery[7]  # the wrong original exactly: scores 0
    own = list(range(12))
    expected = _loop_rank1(queries, gallery, own)
    monkeypatch.setattr(R, "BLOCK", 5)  # several blocks of queries
    got = R.retrieval_rank1(torch.tensor(queries), torch.tensor(gallery))
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-12)
    assert got[0] == 0.0
    assert got[3] <= 0.5 and got[5] <= 0.5  # their originals tie with each other


def test_a_constant_query_scores_exactly_chance():
    rng = np.random.default_rng(3)
    gallery = torch.tensor(rng.normal(size=(20, 16)))
    constant = torch.tensor(rng.normal(size=(1, 16))).repeat(20, 1)
    assert float(R.retrieval_rank1(constant, gallery).mean()) == pytest.approx(1 / 20, abs=1e-15)
    tied = gallery.clone()
    tied[4] = tied[9] * 2  # two originals equally near every query (a power of 2: exactly)
    scores = R.retrieval_rank1(tied[9:10].repeat(20, 1), tied)
    assert float(scores.mean()) == pytest.approx(1 / 20, abs=1e-15) and scores[4] == scores[9] == 0.5


def _images(n: int = 10, size: int = 64) -> torch.Tensor:
    """n distinct natural 64x64 crops of skimage's astronaut and coffee, (n, 3, H, W) in [-1, 1]."""
    crops = []
    for img in (skdata.astronaut(), skdata.coffee()):
        for k in range(n // 2):
            y, x = 40 + 37 * k, 60 + 29 * k
            crops.append(torch.tensor(img[y:y + 2 * size:2, x:x + 2 * size:2]).permute(2, 0, 1).float() / 127.5 - 1)
    return torch.stack(crops)


def _suite(**kw) -> MetricSuite:
    return MetricSuite(metrics=["psnr"], retrieval={"embeddings": ["hog"]}, **kw)


def test_the_suite_reports_retrieval_with_its_embedding_chance_and_count():
    target = _images()
    suite = _suite()
    for part in target.split(3):  # batches
        suite.update(part, part)
    out = suite.compute()
    assert out["retrieval/hog/rank1"] == 1.0 and out["retrieval/hog/n"] == 10
    assert out["retrieval/hog/chance"] == pytest.approx(0.1)
    suite.reset()
    for part in target.split(4):  # the mean image: exactly chance
        suite.update(target.mean(0, keepdim=True).expand_as(part), part)
    out = suite.compute()
    assert out["retrieval/hog/rank1"] == pytest.approx(0.1, abs=1e-12)
    suite.reset()
    shuffled = target.roll(1, 0)  # another image's reconstruction: its original is that image
    suite.update(shuffled, target)
    assert suite.compute()["retrieval/hog/rank1"] == 0.0


def test_a_padded_repeat_is_one_original():
    """A DDP sampler repeats images to fill its last batch: the repeat is one gallery item."""
    target = _images()
    suite = _suite()
    suite.update(target, target)
    suite.update(target[:2], target[:2])  # the padding
    out = suite.compute()
    assert out["retrieval/hog/n"] == 10 and out["retrieval/hog/rank1"] == 1.0


class _Tower(torch.nn.Module):
    """A fixture embedding injected as CLIP (mean colour per quadrant): tests only."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)


def test_clip_retrieval_uses_the_clip_network_and_is_missing_without_it(monkeypatch):
    target = _images()
    suite = MetricSuite(metrics=["psnr", "clip"], retrieval={"embeddings": ["clip", "hog"]},
                        feature_nets={"clip": _Tower()})
    suite.update(target, target)
    out = suite.compute()
    assert out["retrieval/clip/rank1"] == 1.0 and out["retrieval/hog/rank1"] == 1.0
    assert out["clip"] == pytest.approx(1.0)  # the CLIP metric from the same embedding pass

    monkeypatch.setenv("RECONATTACK_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-reconattack-test")
    with pytest.warns(UserWarning, match="retrieval/clip"):
        offline = MetricSuite(metrics=["psnr"], retrieval={"embeddings": ["clip", "hog"]}, download=False,
                              weights={"clip": "/nonexistent/open_clip_model.safetensors"})
        offline.update(target, target)
    out = offline.compute()
    assert out["retrieval/clip/rank1"].startswith("missing: ")
    assert out["retrieval/hog/rank1"] == 1.0  # the one that needs no weights still counts
    rows_without_images = MetricSuite(metrics=(), retrieval={"embeddings": ["clip"]}, download=False,
                                      weights={"clip": "/nonexistent/open_clip_model.safetensors"})
    rows_without_images.update_verification(torch.tensor([0.9, 0.1]), torch.tensor([True, False]))
    assert not any(k.startswith("retrieval/") for k in rows_without_images.compute())


def test_unknown_retrieval_settings_are_refused():
    from reconattack.errors import ConfigError

    with pytest.raises(ConfigError, match="embeddings"):
        MetricSuite(retrieval={"embeddings": ["inception"]})
    with pytest.raises(ConfigError, match="retrieval takes"):
        MetricSuite(retrieval={"embedding": ["hog"]})
