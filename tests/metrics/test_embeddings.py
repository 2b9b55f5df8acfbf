"""HOG embedding: functional ``hog`` against scikit-image, and the ``HOGEmbedding`` module."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reconattack.metrics.embeddings import HOGEmbedding, hog, hog_dim

skfeature = pytest.importorskip("skimage.feature")
skdata = pytest.importorskip("skimage.data")


def _sk_hog(img: np.ndarray, orientations: int = 9, cell: int = 8, block: int = 2) -> np.ndarray:
    return skfeature.hog(
        img,
        orientations=orientations,
        pixels_per_cell=(cell, cell),
        cells_per_block=(block, block),
        block_norm="L2-Hys",
        transform_sqrt=False,
        feature_vector=True,
        channel_axis=None,
    )


def _camera() -> np.ndarray:
    return skdata.camera().astype(np.float64) / 255.0  # (512, 512) in [0, 1]


def _images() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    cam = _camera()
    return {
        "camera_crop_64": cam[100:164, 200:264],
        "camera_mean8_64": cam.reshape(64, 8, 64, 8).mean(axis=(1, 3)),  # whole image, 64x64
        "camera_48x40": cam[300:348, 120:160],
        "camera_53x45": cam[10:63, 400:445],  # sizes not multiples of the cell
        "random_64": rng.random((64, 64)),
        # few grey levels: many gradients exactly on bin borders (0, 45, 90, 135 deg, ...)
        "quantised_64": rng.integers(0, 3, (64, 64)).astype(np.float64),
        "constant_64": np.full((64, 64), 0.3),
    }


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", list(_images()))
def test_hog_matches_skimage(name: str, dtype) -> None:
    img = _images()[name].astype(dtype)
    ref = _sk_hog(img)
    got = hog(torch.from_numpy(np.ascontiguousarray(img))[None])
    assert got.shape == (1, ref.size) == (1, hog_dim(*img.shape))
    assert got.dtype == (torch.float64 if dtype == np.float64 else torch.float32)
    np.testing.assert_allclose(got[0].numpy(), ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "shape,orientations,cell,block",
    [((37, 29), 7, 5, 3), ((40, 40), 4, 6, 2), ((64, 64), 12, 8, 2), ((64, 64), 4, 8, 2)],
)
def test_hog_matches_skimage_other_parameters(shape, orientations, cell, block) -> None:
    rng = np.random.default_rng(1)
    imgs = [rng.random(shape), rng.integers(0, 3, shape).astype(np.float64)]
    got = hog(torch.from_numpy(np.stack(imgs)), orientations, cell, block)
    for i, img in enumerate(imgs):
        np.testing.assert_allclose(
            got[i].numpy(), _sk_hog(img, orientations, cell, block), rtol=0, atol=1e-5
        )


def test_hog_batch_equals_single_and_rejects_small_or_bad_shapes() -> None:
    imgs = torch.from_numpy(np.stack([v for v in _images().values() if v.shape == (64, 64)]))
    batch = hog(imgs)
    for i in range(imgs.shape[0]):
        torch.testing.assert_close(batch[i : i + 1], hog(imgs[i : i + 1]), rtol=0, atol=0)
    with pytest.raises(ValueError, match="too small"):
        hog(torch.rand(1, 15, 64))
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        hog(torch.rand(64, 64))


def _rgb_batch(b: int = 4, size: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    cam = torch.from_numpy(_camera()).float()
    x = torch.rand(b, 3, size, size, generator=g)
    x[0] = cam[:size, :size]  # a natural image, grey
    x[1] = cam[200 : 200 + size, 100 : 100 + size] * torch.tensor([1.0, 0.8, 0.5]).view(3, 1, 1)
    return x


def test_module_is_skimage_hog_of_bt601_gray() -> None:
    x = _rgb_batch().double()
    emb = HOGEmbedding()
    got = emb(x)
    assert got.dtype == torch.float32 and got.shape == (4, emb.dim) == (4, 1764)
    for i in range(x.shape[0]):
        rgb = x[i].float().numpy()
        gray = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
        np.testing.assert_allclose(got[i].numpy(), _sk_hog(gray), rtol=0, atol=1e-5)


def test_module_resizes_with_antialiased_bilinear() -> None:
    x = _rgb_batch(b=2, size=96)
    emb = HOGEmbedding(size=64)
    y = F.interpolate(x, size=(64, 64), mode="bilinear", antialias=True, align_corners=False)
    gray = 0.299 * y[:, 0] + 0.587 * y[:, 1] + 0.114 * y[:, 2]
    torch.testing.assert_close(emb(x), hog(gray), rtol=0, atol=1e-6)
    # non-square input is resized to a square
    assert emb(torch.rand(2, 3, 80, 50)).shape == (2, 1764)


def test_module_batch_equals_per_image_and_deterministic() -> None:
    x = _rgb_batch(b=5, size=72)
    emb = HOGEmbedding()
    batch = emb(x)
    for i in range(x.shape[0]):
        torch.testing.assert_close(batch[i : i + 1], emb(x[i : i + 1]), rtol=0, atol=1e-6)
    torch.testing.assert_close(emb(x), batch, rtol=0, atol=0)
    assert torch.isfinite(batch).all() and batch.min() >= 0 and batch.max() <= 1


@pytest.mark.parametrize(
    "size,orientations,cell,block", [(64, 9, 8, 2), (32, 9, 8, 2), (48, 6, 6, 3), (64, 12, 16, 2)]
)
def test_module_dimension(size, orientations, cell, block) -> None:
    emb = HOGEmbedding(size, orientations, cell, block)
    expected = orientations * block**2 * (size // cell - block + 1) ** 2
    assert emb.dim == expected == hog_dim(size, size, orientations, cell, block)
    assert emb(torch.rand(2, 3, 40, 40)).shape == (2, expected)


def test_module_float64_input_and_batch_of_one() -> None:
    x = _rgb_batch(b=2)
    emb = HOGEmbedding()
    f64 = emb(x.double())
    assert f64.dtype == torch.float32
    torch.testing.assert_close(f64, emb(x), rtol=0, atol=1e-6)
    one = emb(x[:1])
    assert one.shape == (1, 1764)
    torch.testing.assert_close(one, emb(x)[:1], rtol=0, atol=1e-6)


def test_constant_image_gives_zero_vector() -> None:
    emb = HOGEmbedding()
    out = emb(torch.full((2, 3, 64, 64), 0.5))
    assert not torch.isnan(out).any()
    assert torch.equal(out, torch.zeros_like(out))
    assert torch.equal(
        hog(torch.zeros(1, 16, 16, dtype=torch.float64)), torch.zeros(1, 36, dtype=torch.float64)
    )


def test_name_and_description() -> None:
    emb = HOGEmbedding()
    assert emb.name == HOGEmbedding.name == "hog"
    text = emb.describe()
    assert text == (
        "HOG (Dalal-Triggs; 64x64 gray, 9 orientations, 8-px cells, 2x2 blocks, L2-Hys), "
        "no learnt weights"
    )
    assert "clip" not in text.lower()
    assert list(emb.parameters()) == []
    with pytest.raises(ValueError, match="too small"):
        HOGEmbedding(size=8)
    with pytest.raises(ValueError, match="RGB"):
        emb(torch.rand(1, 1, 64, 64))
