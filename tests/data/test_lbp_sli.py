"""SLI's inputs (SPEC §2.5): the LBP structure target and the collision rule of its SIFT map, each
against a direct per-pixel implementation written the way the official code loops (without its
bugs: no wrap-around of row / column -1, the moved keypoint's own descriptor)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from reconattack.data.lbp import grey_of, lbp_map, lbp_target
from reconattack.data.sift.extraction import extract
from reconattack.data.sift.maps import build_maps


def lbp_per_pixel(grey: np.ndarray) -> np.ndarray:
    h, w = grey.shape
    out = np.zeros((h, w), np.uint8)
    order = [(-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0)]  # top-right first
    for x in range(h):
        for y in range(w):
            val = 0
            for bit, (dx, dy) in enumerate(order):
                i, j = x + dx, y + dy
                if 0 <= i < h and 0 <= j < w and grey[i, j] >= grey[x, y]:
                    val += 1 << bit
            out[x, y] = val
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_lbp_matches_the_per_pixel_loop(seed):
    rng = np.random.default_rng(seed)
    grey = rng.integers(0, 256, (3, 17, 23), dtype=np.uint8)
    grey[0, 5:9, 5:9] = 77  # ties: a neighbour equal to the centre sets its bit
    got = lbp_map(grey)
    assert got.dtype == np.uint8 and got.shape == grey.shape
    for b in range(3):
        np.testing.assert_array_equal(got[b], lbp_per_pixel(grey[b]))
    assert np.array_equal(lbp_map(torch.from_numpy(grey)).numpy(), got)  # torch in, torch out
    assert got[0, 6, 6] == 255  # all eight neighbours equal
    # the corners see only their three inside neighbours (outside counts 0, no wrap-around)
    flat = np.zeros((1, 4, 4), np.uint8)
    assert lbp_map(flat)[0, 0, 0] == 2 + 4 + 8 and lbp_map(flat)[0, 3, 3] == 32 + 64 + 128


def test_lbp_target_is_the_grey_images_lbp_scaled_as_sli():
    from skimage import data

    img = cv2.resize(data.astronaut(), (64, 64), interpolation=cv2.INTER_AREA)
    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)  # the official code: cv2 BGR2GRAY of the BGR image
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 127.5 - 1
    assert np.array_equal(grey_of(x)[0].numpy(), grey)
    target = lbp_target(x)
    assert target.shape == (1, 1, 64, 64) and target.min() >= -1 and target.max() <= 1
    np.testing.assert_allclose(target[0, 0].numpy(), lbp_per_pixel(grey) / 127.5 - 1, atol=1e-6)


def sli_map_per_pixel(xy: np.ndarray, desc: np.ndarray, size: int) -> np.ndarray:
    """The official load_sift's two passes, per keypoint (own descriptors, no wrap-around)."""
    feature = np.zeros((size, size, 128))
    used = np.zeros((size, size), bool)
    values = desc.astype(float) / 127.5 - 1
    later = []
    for i in range(len(xy)):
        a = min(max(int(math.ceil(xy[i, 1]) - 1), 0), size - 1)
        b = min(max(int(math.ceil(xy[i, 0]) - 1), 0), size - 1)
        if not used[a, b]:
            feature[a, b], used[a, b] = values[i], True
        else:
            later.append((i, a, b))
    for i, a, b in later:
        for da in (-1, 0, 1):
            for db in (-1, 0, 1):
                ra, rb = a + da, b + db
                if 0 <= ra < size and 0 <= rb < size and not used[ra, rb]:
                    feature[ra, rb], used[ra, rb] = values[i], True
                    break
            else:
                continue
            break
    return feature.transpose(2, 0, 1)


def test_sli_collision_rule_matches_the_per_keypoint_loop():
    rng = np.random.default_rng(0)
    size = 12
    # crowded keypoints: many collide, some neighbourhoods fill up, some fall at the borders
    xy = np.concatenate([rng.uniform(0, size, (60, 2)), np.full((12, 2), 5.5), [[0.0, 0.0], [12.0, 12.0]] * 3])
    xy = xy.astype(np.float32)
    desc = rng.integers(0, 256, (len(xy), 128), dtype=np.uint8)
    want = sli_map_per_pixel(xy, desc, size)
    got = build_maps([xy, xy[:5]], [desc, desc[:5]], size, compress=False, placement="sli")
    np.testing.assert_allclose(got[0].numpy(), want, atol=1e-6)
    np.testing.assert_allclose(got[1].numpy(), sli_map_per_pixel(xy[:5], desc[:5], size), atol=1e-6)
    first = build_maps([xy], [desc], size, compress=False)  # the CFGAN rule drops the collisions
    occupied = lambda m: int((m != 0).any(0).sum())  # noqa: E731
    assert occupied(got[0]) > occupied(first[0]) and occupied(got[0]) == int((want != 0).any(0).sum())
    # the occupancy map (SLI-B): one channel, 1 at each kept keypoint
    pos = build_maps([xy], [desc], size, compress=False, occupancy=True)
    assert pos.shape == (1, 1, size, size) and set(pos.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(pos[0, 0] != 0, (first[0] != 0).any(0))


def test_sli_placement_on_real_sift_keeps_more_keypoints():
    from skimage import data

    img = cv2.resize(data.astronaut(), (128, 128), interpolation=cv2.INTER_AREA)
    xy, desc = extract(img)
    got = build_maps([xy], [desc], 128, compress=False, placement="sli")
    np.testing.assert_allclose(got[0].numpy(), sli_map_per_pixel(xy, desc, 128), atol=1e-6)
    with pytest.raises(ValueError, match="placement"):
        build_maps([xy], [desc], 128, compress=False, placement="nearest")
