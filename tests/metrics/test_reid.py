"""Re-identification metrics (metrics/functional.py reid_metrics) against a direct per-query
implementation of the Market-1501 protocol (as TransReID's / torchreid's eval_func computes it,
junk images dropped first as their dataset readers do), and scikit-learn's average precision."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reconattack.metrics.functional import reid_metrics


def _direct(qf, gf, q_ids, g_ids, q_cams, g_cams, ranks=(1, 5)):
    keep = g_ids >= 0  # junk (-1) is not part of the gallery
    gf, g_ids, g_cams = gf[keep], g_ids[keep], g_cams[keep]
    qf = qf / np.linalg.norm(qf, axis=1, keepdims=True)
    gf = gf / np.linalg.norm(gf, axis=1, keepdims=True)
    dist = ((qf[:, None, :] - gf[None, :, :]) ** 2).sum(-1)
    cmc_hits, aps = np.zeros(max(ranks)), []
    for q in range(len(qf)):
        order = np.argsort(dist[q], kind="stable")
        valid = ~((g_ids[order] == q_ids[q]) & (g_cams[order] == q_cams[q]))
        matches = (g_ids[order][valid] == q_ids[q]).astype(np.int64)
        if not matches.any():
            continue
        cmc = np.minimum(matches.cumsum(), 1)
        cmc_hits += cmc[:max(ranks)] if len(cmc) >= max(ranks) else np.pad(cmc, (0, max(ranks) - len(cmc)), mode="edge")
        precision = matches.cumsum() / np.arange(1, len(matches) + 1)
        aps.append((precision * matches).sum() / matches.sum())
    n = len(aps)
    return {**{f"rank{k}": cmc_hits[k - 1] / n for k in ranks}, "map": float(np.mean(aps)), "queries": n}


def _made(seed=0, n_ids=12, per_id=6, cams=4, dim=16, noise=0.8):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_ids, dim))
    ids = np.repeat(np.arange(1, n_ids + 1), per_id)
    cam = rng.integers(1, cams + 1, size=ids.size)
    feats = centres[ids - 1] + noise * rng.normal(size=(ids.size, dim))
    return feats, ids, cam


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_the_per_query_protocol_on_made_features(seed):
    qf, q_ids, q_cams = _made(seed)
    gf, g_ids, g_cams = _made(seed + 10)
    got = reid_metrics(*map(torch.tensor, (qf, gf, q_ids, g_ids, q_cams, g_cams)), ranks=(1, 5, 10), chunk=7)
    ref = _direct(qf, gf, q_ids, g_ids, q_cams, g_cams, ranks=(1, 5, 10))
    assert got == pytest.approx(ref, abs=1e-12)
    assert 0 < got["map"] < 1 and got["rank1"] <= got["rank5"] <= got["rank10"]


def test_average_precision_agrees_with_scikit_learn():
    from sklearn.metrics import average_precision_score

    qf, q_ids, q_cams = _made(3, n_ids=5)
    gf, g_ids, g_cams = _made(4, n_ids=5)
    q = 0
    keep = ~((g_ids == q_ids[q]) & (g_cams == q_cams[q]))
    cos = (gf[keep] / np.linalg.norm(gf[keep], axis=1, keepdims=True)) @ (qf[q] / np.linalg.norm(qf[q]))
    ref = average_precision_score(g_ids[keep] == q_ids[q], cos)
    got = reid_metrics(torch.tensor(qf[:1]), torch.tensor(gf), torch.tensor(q_ids[:1]), torch.tensor(g_ids),
                       torch.tensor(q_cams[:1]), torch.tensor(g_cams))
    assert got["map"] == pytest.approx(ref, abs=1e-12)


def test_ties_skipped_queries_junk_and_distractors():
    """Equal distances keep gallery order; a query whose identity the gallery shows only through
    its own camera is skipped; junk (-1) is ignored however close; distractors (0) count as
    misses."""
    f = lambda *rows: torch.tensor(rows, dtype=torch.float32)  # noqa: E731
    query = f([1, 0], [0, 1], [1, 1])
    q_ids, q_cams = torch.tensor([7, 8, 9]), torch.tensor([1, 1, 1])
    gallery = f([1, 0], [1, 0], [1, 0], [1, 0.1], [0, 1], [0, 1], [1, 1])
    g_ids = torch.tensor([-1, 0, 7, 7, 8, 8, 9])
    g_cams = torch.tensor([2, 2, 2, 3, 1, 1, 2])
    got = reid_metrics(query, gallery, q_ids, g_ids, q_cams, g_cams, ranks=(1, 2))
    # query 7: junk first (ignored), then the distractor and its match tie: gallery order puts the
    # distractor first -> first match at rank 2; matches at ranks 2 and 3: AP = (1/2 + 2/3) / 2
    # query 8: its only matches are under its own camera -> skipped
    # query 9: its match, from another camera, at rank 1
    assert got["queries"] == 2 and got["rank1"] == 0.5 and got["rank2"] == 1.0
    assert got["map"] == pytest.approx(((0.5 + 2 / 3) / 2 + 1.0) / 2)
    ref = _direct(*(t.numpy() for t in (query, gallery, q_ids, g_ids, q_cams, g_cams)), ranks=(1, 2))
    assert got == pytest.approx(ref)
    with pytest.raises(ValueError, match="no query has a true match"):
        reid_metrics(query[1:2], gallery, q_ids[1:2], g_ids, q_cams[1:2], g_cams)


def test_the_suite_gathers_the_gallery_counts_repeats_once_and_matches_the_function():
    """Batches of gallery items through MetricSuite.update_retrieval (one item repeated, as a DDP
    sampler pads) give the function's numbers on the whole gallery."""
    from reconattack.metrics.suite import MetricSuite

    g = torch.Generator().manual_seed(3)
    qf, gf = torch.randn(12, 8, generator=g), torch.randn(20, 8, generator=g)
    q_ids, g_ids = torch.arange(12) % 5, torch.arange(20) % 6
    q_cams, g_cams = torch.arange(12) % 2, torch.arange(20) % 3
    suite = MetricSuite(metrics=["mse"], ranks=(1, 3))
    order = torch.cat([torch.arange(20), torch.tensor([4])])  # item 4 twice
    for chunk in order.split(6):
        suite.update_retrieval(gf[chunk], g_ids[chunk], g_cams[chunk], chunk, (qf, q_ids, q_cams))
    got = suite.compute()
    want = reid_metrics(qf, gf, q_ids, g_ids, q_cams, g_cams, ranks=(1, 3))
    assert {k: got[k] for k in ("rank1", "rank3", "map")} == pytest.approx(
        {k: want[k] for k in ("rank1", "rank3", "map")})
    assert got["reid_gallery"] == 20 and got["reid_queries"] == want["queries"]
    suite.reset()
    assert "rank1" not in suite.compute()


def test_a_gallery_without_true_matches_is_reported_missing_not_zero():
    from reconattack.metrics.suite import MetricSuite

    suite = MetricSuite(metrics=["mse"])
    feats = torch.eye(3)
    suite.update_retrieval(feats, torch.tensor([1, 2, 3]), torch.zeros(3), torch.arange(3),
                           (feats, torch.tensor([7, 8, 9]), torch.ones(3)))
    out = suite.compute()
    assert out["rank1"].startswith("missing: ") and out["map"].startswith("missing: ")
