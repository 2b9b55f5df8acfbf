"""The AVIH evaluation's rows (threats/avih/ AVIHEvaluation, metrics/callback.py): the images
scored as saved, the service model's rows beside the evaluation model's, and the TPR@FAR
protocols applied across rows."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from reconattack.metrics import functional as MF
from reconattack.metrics.callback import ReconstructionMetrics
from reconattack.threats.avih import AVIHEvaluation


def test_images_scored_as_saved_are_what_an_image_file_holds():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    png = MF.as_saved(x, "png")
    u8 = ((x + 1) * 127.5).round()
    assert torch.equal(png, u8 / 127.5 - 1) and (png - x).abs().max() <= 1 / 255 + 1e-6
    assert MF.as_saved(x, None) is x
    jpeg = MF.as_saved(x, "jpeg", quality=50)
    img = u8[0].permute(1, 2, 0).numpy().astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", img[..., ::-1].copy(), [cv2.IMWRITE_JPEG_QUALITY, 50])
    direct = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]
    assert torch.equal(jpeg[0], torch.from_numpy(direct.copy()).permute(2, 0, 1).float() / 127.5 - 1)
    with pytest.raises(ValueError, match="saved_as"):
        MF.as_saved(x, "bmp")


class _Embed(torch.nn.Module):
    """A made face model: unit embeddings of the pooled image (a fixed random projection)."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(3 * 4 * 4, 8)
        torch.nn.init.normal_(self.proj.weight, generator=torch.Generator().manual_seed(seed))

    def forward(self, x):
        return torch.nn.functional.normalize(self.proj(torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)), dim=1)


def _batch(b=4, p=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = lambda *s: torch.rand(*s, generator=g) * 2 - 1  # noqa: E731
    target = img(b, 3, 16, 16)
    return {"target": target, "input": img(b, 3, 16, 16), "query": img(b, p, 3, 16, 16),
            "is_same": torch.tensor([[True, False]] * b), "pair_valid": torch.ones(b, p, dtype=torch.bool)}


def test_the_service_rows_score_the_original_and_the_encrypted_gallery_with_the_service_model():
    evaluation, service = _Embed(1), _Embed(2)
    batch = _batch()
    rows = {"ours": batch["target"] * 0.5, "original": batch["target"], "protected": batch["input"]}
    groups = AVIHEvaluation(evaluation, service, saved_format="png").groups(batch, rows)
    assert set(groups) == {"ours/", "original/", "protected/", "service/original/", "service/protected/"}
    q = batch["query"].flatten(0, 1)
    for row in ("original", "protected"):
        saved = MF.as_saved(rows[row], "png")
        direct = (service(q).unflatten(0, (4, 2)) * service(saved)[:, None]).sum(-1).flatten()
        torch.testing.assert_close(groups[f"service/{row}/"]["scores"], direct)
        assert groups[f"service/{row}/"]["metrics"] == () and "pred" not in groups[f"service/{row}/"]
        ev = (evaluation(q).unflatten(0, (4, 2)) * evaluation(saved)[:, None]).sum(-1).flatten()
        torch.testing.assert_close(groups[f"{row}/"]["scores"], ev)
        assert torch.equal(groups[f"{row}/"]["pred"], saved)  # every row scored as saved
    # without the service model (or without both rows) no service rows
    assert not any(k.startswith("service/") for k in AVIHEvaluation(evaluation).groups(batch, rows))


def _fed_callback(protocol: str, scores: dict[str, tuple]):
    """The callback's test pass fed ``{prefix: (scores, is_same)}`` as verification groups."""
    cb = ReconstructionMetrics(("test",), metrics=(), verification={"protocol": protocol, "folds": 4})
    cb._start("test")
    cb._batch("test", type("T", (), {"sanity_checking": False})(), {"groups": {
        prefix: {"metrics": (), "scores": torch.tensor(s), "is_same": torch.tensor(same)}
        for prefix, (s, same) in scores.items()}})
    logged = {}
    module = type("M", (), {"log": lambda self, k, v, **kw: logged.setdefault(k, v)})()
    cb._end("test", type("T", (), {"sanity_checking": False})(), module)
    return cb.results["test"]


def test_the_fixed_protocol_takes_each_familys_threshold_from_its_original_row():
    rng = np.random.default_rng(0)
    labels = np.arange(200) % 2 == 0
    made = lambda shift: (np.where(labels, shift, 0.0) + rng.normal(size=200) * 0.3, labels)  # noqa: E731
    rows = {"original/": made(1.0), "random/": made(0.1), "service/original/": made(2.0),
            "service/protected/": made(1.5)}
    res = _fed_callback("fixed", rows)
    thr = MF.threshold_at_far(torch.tensor(rows["original/"][0]), torch.tensor(labels), 0.01)
    s_thr = MF.threshold_at_far(torch.tensor(rows["service/original/"][0]), torch.tensor(labels), 0.01)
    assert res["verification/threshold"] == pytest.approx(thr)
    assert res["service/verification/threshold"] == pytest.approx(s_thr)
    assert res["random/tpr@far"] == pytest.approx(float((rows["random/"][0][labels] >= thr).mean()))
    assert res["service/protected/tpr@far"] == pytest.approx(
        float((rows["service/protected/"][0][labels] >= s_thr).mean()))
    assert res["original/tpr@far"] == pytest.approx(MF.tpr_at_far(torch.tensor(rows["original/"][0]),
                                                                   torch.tensor(labels), 0.01))
    assert res["verification/protocol"] == "fixed"
    # per row and k-fold on the same scores
    per_row = _fed_callback("per_row", rows)
    assert per_row["random/tpr@far"] == pytest.approx(
        MF.tpr_at_far(torch.tensor(rows["random/"][0]), torch.tensor(labels), 0.01))
    kfold = _fed_callback("kfold", rows)
    mean, std = MF.val_at_far_kfold(torch.tensor(rows["random/"][0]), torch.tensor(labels), 0.01, folds=4)
    assert kfold["random/tpr@far"] == pytest.approx(mean) and kfold["random/tpr@far_std"] == pytest.approx(std)


def test_the_fixed_protocol_without_its_reference_row_reports_missing():
    labels = np.arange(40) % 2 == 0
    res = _fed_callback("fixed", {"random/": (np.linspace(0, 1, 40), labels)})
    assert res["random/tpr@far"].startswith("missing: ") and "reference row" in res["random/tpr@far"]


def test_unknown_protocol_settings_are_refused():
    from reconattack.errors import ConfigError

    with pytest.raises(ConfigError, match="protocol"):
        ReconstructionMetrics(("test",), metrics=(), verification={"protocol": "roc"})
    with pytest.raises(ConfigError, match="verification takes"):
        ReconstructionMetrics(("test",), metrics=(), verification={"threshold": 0.3})
