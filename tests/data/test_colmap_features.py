"""COLMAP's SIFT as a threat's features (issue 21, item 1): pycolmap's extraction as COLMAP's
defaults make it, its coordinates in OpenCV's convention, its own cache folder, and an attack
trained on it."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from reconattack.data.sift.cache import SiftCache
from reconattack.data.sift.extraction import extract, extract_colmap
from reconattack.data.sift.maps import build_maps

pycolmap = pytest.importorskip("pycolmap")


def _image(size=128):
    from skimage import data

    return cv2.resize(data.astronaut(), (size, size), interpolation=cv2.INTER_AREA)


def test_colmap_sift_is_what_pycolmap_extracts_with_coordinates_in_opencvs_convention():
    img = _image()
    xy, desc = extract(img, features="colmap")
    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    ex = pycolmap.FeatureExtractor.create(pycolmap.FeatureExtractionOptions(), device=pycolmap.Device.cpu)
    keypoints, descriptors = ex.extract_from_uint8_array(grey)
    assert len(xy) == len(keypoints) > 50 and desc.dtype == np.uint8 and desc.shape == (len(xy), 128)
    np.testing.assert_array_equal(desc, np.asarray(descriptors.data))
    np.testing.assert_allclose(xy, np.asarray([(k.x, k.y) for k in keypoints]) - 0.5, atol=1e-6)
    assert xy.min() >= -0.5 and xy.max() <= 128  # inside the image
    # a keypoint both detectors find lands on the same map pixel: the conventions agree
    cv_xy, _ = extract(img)
    d = np.linalg.norm(xy[:, None] - cv_xy[None], axis=-1)
    assert np.median(d.min(1)) < 0.5
    maps = build_maps([xy], [desc], 128, compress=True)
    assert maps.shape == (1, 128, 64, 64) and (maps != 0).any()
    fewer, _ = extract_colmap(img, {"sift": {"max_num_features": 20}})
    assert len(fewer) <= 40  # options reach COLMAP (orientations may double a keypoint)


def test_colmap_entries_have_their_own_cache_folder_keyed_by_the_options(tmp_path):
    img = _image(64)
    cv, cm = SiftCache(tmp_path), SiftCache(tmp_path, features="colmap")
    other = SiftCache(tmp_path, features="colmap", colmap={"sift": {"max_num_features": 20}})
    assert len({cv.dir, cm.dir, other.dir}) == 3 and cm.dir.name.startswith("sift-colmap-")
    xy, desc = cm.get(img)
    again = SiftCache(tmp_path, features="colmap").get(img)
    assert np.array_equal(xy, again[0]) and np.array_equal(desc, again[1])
    assert "pycolmap" in (cm.dir / "settings.json").read_text()
    assert cv.dir.name.startswith("sift-ct0.03-")  # OpenCV's keys as before
    with pytest.raises(ValueError, match="threat.features"):
        SiftCache(tmp_path, features="kornia")


def test_an_attack_trains_on_colmap_features(tmp_path):
    from reconattack.run import run
    from tests.helpers import coarse_only, compose_cfg

    metrics = run(compose_cfg([*coarse_only(tmp_path, "threat.features=colmap")]))
    assert isinstance(metrics["test/psnr"], float)
    assert any(p.name.startswith("sift-colmap-") for p in (tmp_path / "cache" / "sift").iterdir())
