import itertools
import math

import numpy as np
import pytest
import torch

from reconattack.losses.avih import avih_loss, diff_loss, rec_loss, task_loss, vc_loss
from reconattack.losses.gan import js_d_loss, js_g_loss
from reconattack.losses.identity import augment, augmented_identity_loss


def _images(b=3, c=3, h=9, w=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, c, h, w, generator=g, dtype=torch.float64)


def _vc_direct(img: np.ndarray, k: int) -> float:
    """Independent formula: explicit loops over patch positions, np.var(ddof=1), sum over channels."""
    c, h, w = img.shape
    total = 0.0
    for ch in range(c):
        sums = [img[ch, i:i + k, j:j + k].sum() for i in range(h - k + 1) for j in range(w - k + 1)]
        total += np.var(np.array(sums), ddof=1)
    return total


# ------------------------------------------------------------------------------------------ VC


@pytest.mark.parametrize("k", [4, 3])
def test_vc_loss_matches_direct_formula(k):
    x = _images()
    out = vc_loss(x, kernel=k)
    assert out.shape == (3,)
    expected = [_vc_direct(img, k) for img in x.numpy()]
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-10)
    # torch.var on an unfold of the patches agrees too
    patches = x.unfold(2, k, 1).unfold(3, k, 1).sum((-1, -2)).flatten(2)
    torch.testing.assert_close(out, torch.var(patches, dim=2).sum(1))


def test_vc_loss_is_per_image():
    x = _images(seed=1)
    y = x.clone()
    y[1:] = torch.rand_like(y[1:]) * 5
    assert vc_loss(x)[0] == vc_loss(y)[0]
    assert vc_loss(x[:1])[0] == pytest.approx(vc_loss(x)[0].item(), rel=1e-12)


def test_vc_loss_zero_for_constant_image_and_rejects_too_few_patches():
    x = torch.full((2, 3, 8, 8), 0.37)
    assert vc_loss(x).abs().max() < 1e-10
    with pytest.raises(ValueError, match="patch positions"):
        vc_loss(torch.rand(1, 3, 4, 4), kernel=4)


# ------------------------------------------------------------------------- task / diff / rec


def _unit(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def test_task_loss_matches_numpy():
    g = torch.Generator().manual_seed(2)
    e, r = torch.randn(4, 16, generator=g, dtype=torch.float64) * 3, torch.randn(4, 16, generator=g, dtype=torch.float64)
    u, v = _unit(e.numpy()), _unit(r.numpy())
    l2 = np.sqrt(((u - v) ** 2).sum(1))
    np.testing.assert_allclose(task_loss(e, r).numpy(), l2)
    np.testing.assert_allclose(task_loss(e, r, "l2sq").numpy(), l2 ** 2)
    np.testing.assert_allclose(task_loss(e, r, "cos").numpy(), 1 - (u * v).sum(1))
    # the official code: mean((f(x') - f(x)) ** 2) of unit embeddings
    np.testing.assert_allclose(task_loss(e, r, "mse").numpy(), ((u - v) ** 2).mean(1), rtol=1e-6)
    assert task_loss(e, e * 7).abs().max() < 1e-7  # scale-invariant
    with pytest.raises(ValueError):
        task_loss(e, r, "l3")


def test_diff_and_rec_match_numpy():
    a, b = _images(seed=3), _images(seed=4)
    an, bn = a.numpy(), b.numpy()
    l2 = np.sqrt(((an - bn) ** 2).sum((1, 2, 3)))  # the paper's norms over C, H, W
    l1 = np.abs(an - bn).sum((1, 2, 3))
    np.testing.assert_allclose(diff_loss(a, b).numpy(), -l2)
    np.testing.assert_allclose(diff_loss(a, b, "l1").numpy(), -l1)
    np.testing.assert_allclose(diff_loss(a, b, "mse").numpy(), -((an - bn) ** 2).mean((1, 2, 3)))
    np.testing.assert_allclose(diff_loss(a, b, "mae").numpy(), -np.abs(an - bn).mean((1, 2, 3)))
    np.testing.assert_allclose(rec_loss(a, b).numpy(), l2)
    np.testing.assert_allclose(rec_loss(a, b, "l1").numpy(), l1)
    np.testing.assert_allclose(rec_loss(a, b, "mse").numpy(), ((an - bn) ** 2).mean((1, 2, 3)))
    np.testing.assert_allclose(rec_loss(a, b, "mae").numpy(), np.abs(an - bn).mean((1, 2, 3)))


def test_avih_loss_is_the_weighted_sum_and_skips_zero_weights():
    x, x_enc, rec = _images(seed=5), _images(seed=6), _images(seed=7)
    e1, e2 = torch.randn(3, 8, dtype=torch.float64), torch.randn(3, 8, dtype=torch.float64)
    w = {"task": 1.0, "diff": 0.03, "rec": 0.5, "vc": 3.0}
    total, terms = avih_loss(e1, e2, x_enc, x, rec, w)
    assert set(terms) == {"task", "diff", "rec", "vc"} and all(t.shape == (3,) for t in terms.values())
    torch.testing.assert_close(terms["task"], task_loss(e1, e2))
    torch.testing.assert_close(terms["diff"], diff_loss(x_enc, x))
    torch.testing.assert_close(terms["rec"], rec_loss(rec, x))
    torch.testing.assert_close(terms["vc"], vc_loss(x_enc, 4))
    torch.testing.assert_close(total, sum(w[k] * terms[k] for k in w))
    # weight 0: not computed (inputs may be None), reported as zeros
    total0, terms0 = avih_loss(None, None, x_enc, x, None, {**w, "task": 0, "rec": 0.0})
    assert terms0["task"].abs().sum() == 0 and terms0["rec"].abs().sum() == 0
    torch.testing.assert_close(total0, 0.03 * terms["diff"] + 3.0 * terms["vc"])
    with pytest.raises(ValueError, match="None"):
        avih_loss(None, e2, x_enc, x, rec, w)
    with pytest.raises(ValueError, match="missing"):
        avih_loss(e1, e2, x_enc, x, rec, {"task": 1.0})


def test_avih_loss_gradient_is_per_image():
    x = _images(seed=8)
    x_enc = _images(seed=9).requires_grad_(True)
    total, _ = avih_loss(None, None, x_enc, x, None, {"task": 0, "diff": 0.03, "rec": 0, "vc": 3.0})
    (g,) = torch.autograd.grad(total[0], x_enc)
    assert g[0].abs().sum() > 0 and g[1:].abs().sum() == 0


# ------------------------------------------------------------------------------------ augment


def test_augment_identity_without_flip_and_pad():
    x = torch.rand(4, 3, 7, 6) * 2 - 1
    assert torch.equal(augment(x, flip=False, pad=0), x)
    assert torch.equal(augment(x, flip=False, pad=5, crop=False), x)


def _shifted(img: torch.Tensor, sy: int, sx: int, fill: float = -1.0) -> torch.Tensor:
    """img shifted by (sy, sx) with ``fill`` entering (brute force; -1 is black in [-1, 1])."""
    c, h, w = img.shape
    out = torch.full_like(img, fill)
    for i in range(h):
        for j in range(w):
            if 0 <= i - sy < h and 0 <= j - sx < w:
                out[:, i, j] = img[:, i - sy, j - sx]
    return out


def test_augment_outputs_are_shifted_flipped_copies():
    pad, b = 2, 16
    x = torch.rand(b, 2, 6, 5) * 1.8 - 0.9  # in [-1, 1], no -1 (the padding value) inside
    g = torch.Generator().manual_seed(0)
    out = augment(x, flip=True, pad=pad, generator=g)
    assert out.shape == x.shape
    seen_flip, seen_shift = set(), set()
    for n in range(b):
        matches = [(f, sy, sx) for f, sy, sx in itertools.product((False, True), range(-pad, pad + 1), range(-pad, pad + 1))
                   if torch.equal(out[n], _shifted(x[n].flip(-1) if f else x[n], sy, sx))]
        assert len(matches) == 1, f"image {n}: {matches}"
        seen_flip.add(matches[0][0])
        seen_shift.add(matches[0][1:])
    assert seen_flip == {False, True} and len(seen_shift) > 3  # per-image randomness
    # same generator seed -> same augmentation; crop=False -> only flips
    torch.testing.assert_close(augment(x, pad=pad, generator=torch.Generator().manual_seed(0)), out)
    centred = augment(x, pad=pad, crop=False, generator=torch.Generator().manual_seed(1))
    for n in range(b):
        assert torch.equal(centred[n], x[n]) or torch.equal(centred[n], x[n].flip(-1))


@pytest.mark.parametrize("fill", [-1.0, 0.0, 0.25])
def test_augment_pads_with_fill(fill):
    pad, b = 3, 32
    x = torch.rand(b, 3, 5, 4) * 0.5 + 0.3  # in [0.3, 0.8]: no fill value inside
    kwargs = {} if fill == -1.0 else {"fill": fill}  # -1 (black in [-1, 1]) is the default
    out = augment(x, flip=False, pad=pad, generator=torch.Generator().manual_seed(0), **kwargs)
    outside = (out < 0.3) | (out > 0.8)
    assert outside.any()  # some images were shifted, and the entering pixels are exactly `fill`
    assert torch.equal(out[outside], torch.full_like(out[outside], fill))
    # each output is its image shifted by one offset with `fill` entering (brute force)
    for n in range(b):
        matches = [(sy, sx) for sy in range(-pad, pad + 1) for sx in range(-pad, pad + 1)
                   if torch.equal(out[n], _shifted(x[n], sy, sx, fill))]
        assert len(matches) == 1, f"image {n}: {matches}"


def test_augment_is_differentiable_and_identity_loss_uses_it():
    x = (torch.rand(3, 3, 8, 8) * 2 - 1).requires_grad_(True)
    out = augment(x, pad=3, generator=torch.Generator().manual_seed(0))
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    proj = torch.randn(3 * 8 * 8, 5, generator=torch.Generator().manual_seed(1))

    def embed(img):
        return img.flatten(1) @ proj

    recon = (torch.rand(3, 3, 8, 8) * 2 - 1).requires_grad_(True)  # [-1, 1] images
    target = torch.randn(3, 5)
    loss = augmented_identity_loss(embed, recon, target, {"pad": 3}, generator=torch.Generator().manual_seed(2))
    expected = task_loss(embed(augment(recon, pad=3, generator=torch.Generator().manual_seed(2))), target)
    torch.testing.assert_close(loss, expected)
    assert loss.shape == (3,)
    loss.sum().backward()
    assert recon.grad.abs().sum() > 0
    plain = augmented_identity_loss(embed, recon, target, {"flip": False, "pad": 0}, distance="cos")
    torch.testing.assert_close(plain, task_loss(embed(recon), target, "cos"))
    # the padding entering the service model's input is black in [-1, 1]
    seen = []
    augmented_identity_loss(lambda img: seen.append(img) or embed(img), recon.detach(), target,
                            {"flip": False, "pad": 3}, generator=torch.Generator().manual_seed(2))
    manual = augment(recon.detach(), flip=False, pad=3, generator=torch.Generator().manual_seed(2), fill=-1.0)
    torch.testing.assert_close(seen[0], manual)


# ----------------------------------------------------------------------------------- JS GAN


def test_js_losses_match_tanh_formulas():
    real = torch.tensor([-1.5, -0.2, 0.0, 0.7, 2.0], dtype=torch.float64)
    fake = torch.tensor([-2.0, -0.4, 0.3, 1.1], dtype=torch.float64)

    def p(s):
        return (1 + np.tanh(s.numpy())) / 2

    d = -np.log(p(real)).mean() - np.log(1 - p(fake)).mean()
    assert js_d_loss(real, fake).item() == pytest.approx(d, rel=1e-10)
    assert js_g_loss(fake).item() == pytest.approx(np.log(1 - p(fake)).mean(), rel=1e-10)
    assert js_g_loss(fake, "non_saturating").item() == pytest.approx(-np.log(p(fake)).mean(), rel=1e-10)
    assert js_d_loss(torch.zeros(3), torch.zeros(2)).item() == pytest.approx(2 * math.log(2), rel=1e-6)
    with pytest.raises(ValueError):
        js_g_loss(fake, "wgan")


def test_js_losses_are_stable_at_extreme_scores():
    s = torch.tensor([-50.0, 50.0], requires_grad=True)
    for loss in (js_d_loss(s, s), js_g_loss(s), js_g_loss(s, "non_saturating")):
        (g,) = torch.autograd.grad(loss, s)
        assert torch.isfinite(loss) and torch.isfinite(g).all()
    assert js_d_loss(torch.tensor([50.0]), torch.tensor([-50.0])).item() == pytest.approx(0, abs=1e-6)
    assert js_g_loss(torch.tensor([-50.0]), "non_saturating").item() == pytest.approx(100, rel=1e-6)
