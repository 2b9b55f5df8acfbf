"""The TPR@FAR protocols (metrics.verification.protocol) against direct implementations on made
scores: scikit-learn's ROC for ``per_row`` and ``fixed``; for ``kfold`` the insightface /
AdaFace ``calculate_val`` algorithm written out with scikit-learn's KFold and scipy's
``interp1d``, including the flat FAR plateaus on which the official ``kind="slinear"`` fails."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reconattack.metrics import functional as MF


def _made_scores(n_pairs: int = 600, seed: int = 0, separation: float = 1.5):
    """Cosine scores of unit embeddings: genuine pairs are noisy copies, impostors independent;
    pairs alternate genuine / impostor as in a verification .bin."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n_pairs, 32))
    b = np.where(np.arange(n_pairs)[:, None] % 2 == 0, a + rng.normal(size=a.shape) / separation,
                 rng.normal(size=a.shape))
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(1), np.arange(n_pairs) % 2 == 0


def _sklearn_point(scores, labels, far):
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(labels, scores, drop_intermediate=False)
    ok = fpr <= far
    return tpr[ok].max(), thr[ok].min()  # the most accepting threshold within the FAR


@pytest.mark.parametrize("far", [0.01, 0.05, 0.2])
def test_per_row_and_the_fixed_threshold_match_scikit_learns_roc(far):
    scores, labels = _made_scores()
    tpr, thr = _sklearn_point(scores, labels, far)
    assert MF.tpr_at_far(torch.tensor(scores), torch.tensor(labels), far) == pytest.approx(tpr, abs=1e-12)
    assert MF.threshold_at_far(torch.tensor(scores), torch.tensor(labels), far) == pytest.approx(thr, abs=1e-12)
    # another row judged at that threshold: the share of its genuine pairs at or above it
    other, other_labels = _made_scores(seed=1, separation=0.7)
    direct = float((other[other_labels] >= thr).mean())
    got = MF.tpr_at_threshold(torch.tensor(other), torch.tensor(other_labels), thr)
    assert got == pytest.approx(direct, abs=1e-12)
    # the reference row at its own threshold: its per-row TPR
    assert MF.tpr_at_threshold(torch.tensor(scores), torch.tensor(labels), thr) == pytest.approx(tpr)


def test_a_row_without_identity_differs_between_per_row_and_fixed():
    """Scores of a row whose genuine pairs are no more alike than its impostors, but all higher
    (a blurred gallery image resembles every query a bit): per-row ROC ~ FAR, a fixed threshold
    set on the original pairs accepts many genuine pairs — the pattern the paper prints for
    Random and Protected (SPEC §3.6)."""
    original, labels = _made_scores(separation=3.0)
    thr = MF.threshold_at_far(torch.tensor(original), torch.tensor(labels), 0.01)
    rng = np.random.default_rng(3)
    blurred = 0.6 + 0.05 * rng.normal(size=labels.shape)  # identity-free, uniformly similar
    per_row = MF.tpr_at_far(torch.tensor(blurred), torch.tensor(labels), 0.01)
    fixed = MF.tpr_at_threshold(torch.tensor(blurred), torch.tensor(labels), thr)
    assert per_row < 0.1 and fixed > 0.5, (per_row, fixed, thr)


def _calculate_val_reference(scores, labels, far_target, folds=10):
    """insightface recognition/eval/verification.py ``calculate_val`` as published, on
    distances of unit embeddings (2 - 2 cos), with ``interp1d(kind="linear")`` in place of
    ``kind="slinear"`` (which raises on duplicate FARs)."""
    from scipy import interpolate
    from sklearn.model_selection import KFold

    dist = 2 - 2 * scores
    thresholds = np.arange(0, 4, 0.001)
    vals = []
    for train, test in KFold(n_splits=folds, shuffle=False).split(np.arange(len(dist))):
        def val_far(t, d, same):
            accept = d < t
            return (accept & same).sum() / same.sum(), (accept & ~same).sum() / (~same).sum()

        far_train = np.array([val_far(t, dist[train], labels[train])[1] for t in thresholds])
        if far_train.max() >= far_target:
            t = float(interpolate.interp1d(far_train, thresholds, kind="linear")(far_target))
        else:
            t = 0.0
        vals.append(val_far(t, dist[test], labels[test])[0])
    return float(np.mean(vals)), float(np.std(vals))


@pytest.mark.parametrize("seed,far", [(0, 0.01), (1, 0.05), (2, 0.1)])
def test_kfold_matches_calculate_val_written_out(seed, far):
    scores, labels = _made_scores(seed=seed)
    mean, std = MF.val_at_far_kfold(torch.tensor(scores), torch.tensor(labels), far)
    ref_mean, ref_std = _calculate_val_reference(scores, labels, far)
    assert mean == pytest.approx(ref_mean, abs=1e-12) and std == pytest.approx(ref_std, abs=1e-12)


def test_kfold_on_a_flat_far_plateau_where_the_official_interpolation_fails():
    """Few impostor pairs: the training FAR is a staircase with long flat steps. The official
    ``interp1d(kind="slinear")`` raises on them; the kfold protocol gives the linear answer,
    and a target FAR exactly on a step takes that step's smallest threshold."""
    from scipy import interpolate

    scores, labels = _made_scores(n_pairs=200, seed=4)
    dist = 2 - 2 * scores[20:]
    far_train = np.array([((dist < t) & ~labels[20:]).sum() / (~labels[20:]).sum()
                          for t in np.arange(0, 4, 0.001)])
    assert len(np.unique(far_train)) < len(far_train) / 10  # plateaus
    with pytest.raises(ValueError, match="duplicates"):
        interpolate.interp1d(far_train, np.arange(0, 4, 0.001), kind="slinear")
    for far in (0.01, 0.02, 1 / 90):  # 1/90: exactly a step of a fold's training FAR
        mean, std = MF.val_at_far_kfold(torch.tensor(scores), torch.tensor(labels), far)
        assert (mean, std) == pytest.approx(_calculate_val_reference(scores, labels, far), abs=1e-12)


def test_protocol_inputs_are_checked():
    with pytest.raises(ValueError, match="genuine"):
        MF.val_at_far_kfold(torch.zeros(20), torch.zeros(20, dtype=torch.bool))
    with pytest.raises(ValueError, match="folds"):
        MF.val_at_far_kfold(torch.rand(6), torch.tensor([1, 0] * 3).bool(), folds=10)
    assert set(MF.VERIFICATION_PROTOCOLS) == {"per_row", "fixed", "kfold"}
