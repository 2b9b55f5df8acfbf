"""ROC at low FAR (issue 29 §2): the exact ROC against scikit-learn's, TPR at the named FARs
against a written-out threshold loop, FARs the impostor pairs cannot measure reported missing
(not extrapolated), the fixed protocol's per-FAR thresholds from the reference row, and the
``roc_<row>.csv`` files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reconattack.metrics import functional as MF
from reconattack.metrics.callback import ReconstructionMetrics
from reconattack.metrics.roc import read_rocs, roc_path, row_of, write_rocs
from reconattack.metrics.suite import MetricSuite


def _pairs(genuine: int, impostor: int, seed: int = 0, shift: float = 1.0):
    rng = np.random.default_rng(seed)
    scores = np.concatenate([rng.normal(shift, 1, genuine), rng.normal(0, 1, impostor)]).round(2)  # ties
    return scores, np.arange(genuine + impostor) < genuine


def _loop_tpr_at_far(scores, labels, far):
    """The definition: every distinct score a threshold (score >= t accepts), the threshold that
    accepts nothing too; the largest TPR among those whose FPR is at most far."""
    best = 0.0
    for t in [np.inf, *sorted(set(scores.tolist()))]:
        fpr = sum(1 for s, g in zip(scores, labels) if not g and s >= t) / sum(1 for g in labels if not g)
        tpr = sum(1 for s, g in zip(scores, labels) if g and s >= t) / sum(1 for g in labels if g)
        if fpr <= far:
            best = max(best, tpr)
    return best


def test_the_roc_is_scikit_learns():
    from sklearn.metrics import roc_curve

    scores, labels = _pairs(300, 700)
    fpr, tpr, thr = roc_curve(labels, scores, drop_intermediate=False)
    roc = MF.roc_curve(torch.tensor(scores), torch.tensor(labels))
    np.testing.assert_allclose(roc["far"], fpr, atol=1e-15)
    np.testing.assert_allclose(roc["tpr"], tpr, atol=1e-15)
    np.testing.assert_array_equal(roc["threshold"][1:], thr[1:])
    assert roc["threshold"][0] == np.inf and roc["far"][0] == roc["tpr"][0] == 0


def test_tpr_at_the_named_fars_and_what_cannot_be_measured():
    scores, labels = _pairs(400, 1200, seed=1)
    suite = MetricSuite(metrics=(), far=0.01, fars=(0.1, 0.01, 0.001))
    suite.update_verification(torch.tensor(scores), torch.tensor(labels))
    out = suite.compute()
    for far in (0.1, 0.01, 0.001):  # 1,200 impostors measure 1/1,200 < 0.001
        assert out[f"tpr@far={far:g}"] == pytest.approx(_loop_tpr_at_far(scores, labels, far), abs=1e-12)
    assert out["tpr@far"] == out["tpr@far=0.01"]
    assert out["pairs/genuine"] == 400 and out["pairs/impostor"] == 1200
    assert out["min_far"] == pytest.approx(1 / 1200)

    few = MetricSuite(metrics=(), fars=(0.1, 0.01, 0.001))
    s, lab = _pairs(300, 500, seed=2)
    few.update_verification(torch.tensor(s), torch.tensor(lab))
    out = few.compute()
    assert out["tpr@far=0.01"] == pytest.approx(_loop_tpr_at_far(s, lab, 0.01), abs=1e-12)
    assert out["tpr@far=0.001"].startswith("missing: ") and "1000 impostor pairs" in out["tpr@far=0.001"]
    assert "this row has 500" in out["tpr@far=0.001"] and "0.002" in out["tpr@far=0.001"]


def test_kfold_names_each_far_and_counts_the_training_folds():
    scores, labels = _pairs(500, 1000, seed=3)
    order = np.random.default_rng(0).permutation(scores.size)  # genuine pairs in every fold
    scores, labels = scores[order], labels[order]
    suite = MetricSuite(metrics=(), protocol="kfold", folds=10, fars=(0.01, 0.001))
    suite.update_verification(torch.tensor(scores), torch.tensor(labels))
    out = suite.compute()
    mean, _ = MF.val_at_far_kfold(torch.tensor(scores), torch.tensor(labels), 0.01, 10)
    assert out["tpr@far=0.01"] == pytest.approx(mean)
    # each fold's threshold is set on 9/10 of the 1,000 impostors: 900 cannot measure 0.001
    assert out["tpr@far=0.001"].startswith("missing: ") and "this row has 900" in out["tpr@far=0.001"]


def _step(rows: dict) -> dict:
    return {"groups": {f"service/{r}/": {"metrics": (), "scores": torch.tensor(s), "is_same": torch.tensor(lab)}
                       for r, (s, lab) in rows.items()}}


def test_the_fixed_protocol_applies_the_reference_rows_threshold_at_each_far(tmp_path):
    ref_scores, labels = _pairs(400, 2000, seed=4, shift=2.5)
    other = ref_scores + 0.3  # everything more similar: the reference's thresholds accept more
    cb = ReconstructionMetrics(stages=("test",), metrics=(), fars=(0.1, 0.001),
                               verification={"protocol": "fixed", "reference": "original"})

    class _Trainer:
        sanity_checking = False

    class _Module:
        def log(self, *a, **k):
            pass

    cb.on_test_epoch_start(_Trainer(), _Module())
    cb.on_test_batch_end(_Trainer(), _Module(), _step({"original": (ref_scores, labels),
                                                       "protected": (other, labels)}), None, 0)
    cb.on_test_epoch_end(_Trainer(), _Module())
    res = cb.results["test"]
    for far in (0.1, 0.001):
        thr = min(t for t in [np.inf, *set(ref_scores.tolist())]
                  if (ref_scores[~labels] >= t).mean() <= far)  # the reference's most accepting
        assert res[f"service/protected/tpr@far={far:g}"] == pytest.approx((other[labels] >= thr).mean(), abs=1e-12)
        assert res[f"service/original/tpr@far={far:g}"] == pytest.approx(_loop_tpr_at_far(ref_scores, labels, far))
    curves = cb.curves["test"]
    assert set(curves) == {"service/original", "service/protected"}
    paths = write_rocs(tmp_path, curves)
    assert sorted(p.name for p in paths) == ["roc_service__original.csv", "roc_service__protected.csv"]
    back = read_rocs(tmp_path)
    np.testing.assert_array_equal(back["service/protected"]["tpr"], curves["service/protected"]["tpr"])
    assert back["service/original"]["threshold"][0] == np.inf
    assert (tmp_path / "roc_service__original.csv").read_text().splitlines()[0] == "far,tpr,threshold"


def test_row_names_round_trip_through_file_names(tmp_path):
    for row in ("ours", "service/original", "id/type_ii", "test"):
        assert row_of(roc_path(tmp_path, row)) == row


def test_roc_files_someone_else_broke_are_left_out(tmp_path):
    """The report reads run directories it did not write: a truncated, edited or foreign
    roc_*.csv is skipped, the good ones are read."""
    write_rocs(tmp_path, {"ours": {"far": [0, 0.5, 1], "tpr": [0, 0.7, 1], "threshold": [float("inf"), 0.4, 0.1]}})
    (tmp_path / "roc_bad.csv").write_text("far,tpr,threshold\n0,0\n0.5,x,1\n")
    (tmp_path / "roc_foreign.csv").write_text("fpr;tpr\n0;0\n")
    (tmp_path / "roc_binary.csv").write_bytes(b"\xff\xfe\x00junk")
    (tmp_path / "roc_empty.csv").write_text("far,tpr,threshold\n")
    assert list(read_rocs(tmp_path)) == ["ours"]
