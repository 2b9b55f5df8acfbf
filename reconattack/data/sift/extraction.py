"""SIFT extraction (SPEC §2.1, §9): OpenCV's (the CFGAN paper's) and COLMAP's (pycolmap, CPU), one
detector per process, thread and setting.

:func:`extract` runs SIFT on an image as given (no resize) and returns the *sparse* result:
keypoint coordinates in OpenCV's pixel convention (the top-left pixel's centre at (0, 0)), uint8
descriptors and, on request, each keypoint's strength and scale. What the features become next lives beside
it: :mod:`~reconattack.data.sift.cache` keeps them on disk, :mod:`~reconattack.data.sift.mapper`
turns them into the model's input map.
"""

from __future__ import annotations

import json
import os
import threading

import cv2
import numpy as np

from reconattack.errors import ConfigError

__all__ = ["DESC_DIM", "FEATURES", "colmap_options_key", "extract", "extract_colmap"]

#: the length of a SIFT descriptor
DESC_DIM = 128
#: the SIFT implementations a threat can share (``threat.features``)
FEATURES = ("opencv", "colmap")

_local = threading.local()


def _detector(contrast_threshold: float) -> cv2.SIFT:
    """A SIFT detector for ``contrast_threshold``, created once per process and thread."""
    pid = os.getpid()
    cache = getattr(_local, "detectors", None)
    if cache is None or getattr(_local, "pid", None) != pid:
        cache = _local.detectors = {}
        _local.pid = pid
    key = float(contrast_threshold)
    det = cache.get(key)
    if det is None:
        det = cache[key] = cv2.SIFT_create(contrastThreshold=key)
    return det


def _colmap_extractor(options: str):
    """A pycolmap CPU SIFT extractor with COLMAP's default extraction options updated by
    ``options`` (JSON of ``FeatureExtractionOptions`` fields, nested ``sift`` as a dict), created
    once per process and thread."""
    import pycolmap

    pid = os.getpid()
    cache = getattr(_local, "colmap", None)
    if cache is None or getattr(_local, "colmap_pid", None) != pid:
        cache = _local.colmap = {}
        _local.colmap_pid = pid
    ex = cache.get(options)
    if ex is None:
        opts = pycolmap.FeatureExtractionOptions()
        if options != "{}":
            opts.mergedict(json.loads(options))
        ex = cache[options] = pycolmap.FeatureExtractor.create(opts, device=pycolmap.Device.cpu)
    return ex


def colmap_options_key(options: dict | None) -> str:
    """``threat.colmap`` (COLMAP extraction options overrides) as sorted JSON: hashable."""
    return json.dumps(dict(options or {}), sort_keys=True)


def _grey(image: np.ndarray) -> np.ndarray:
    """The grey image both extractors read: uint8 (H, W, 3) RGB → ``cv2.COLOR_RGB2GRAY``;
    ValueError for anything else."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"extract expects a uint8 (H, W, 3) RGB image, got {image.dtype} {tuple(image.shape)}"
        )
    return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)


def extract_colmap(image: np.ndarray, options: dict | None = None,
                   with_strength: bool = False, with_scale: bool = False) -> tuple[np.ndarray, ...]:
    """COLMAP's SIFT (pycolmap, CPU) on an RGB image, as given: what a structure-from-motion or
    localisation system stores in its database. The grey image is OpenCV's ``RGB2GRAY``;
    ``FeatureExtractor.create(FeatureExtractionOptions(), device=cpu).extract_from_uint8_array``
    with COLMAP's defaults (updated by ``options``: ``FeatureExtractionOptions`` fields, e.g.
    ``{"sift": {"max_num_features": 4096}}``). COLMAP puts the centre of the top-left pixel at
    (0.5, 0.5), OpenCV at (0, 0): 0.5 is subtracted so that the coordinates follow OpenCV's, as
    the maps place them. Returns ``(xy, desc)`` as :func:`extract` (COLMAP's uint8 descriptors as
    stored; with ``with_strength`` also each keypoint's scale, what COLMAP keeps first when it
    limits the number of features: it stores no detector response; with ``with_scale`` that
    scale again, as :func:`extract` returns it)."""
    grey = _grey(image)
    keypoints, descriptors = _colmap_extractor(colmap_options_key(options)).extract_from_uint8_array(grey)
    if len(keypoints) == 0:
        return _empty(with_strength, with_scale)
    xy = np.asarray([(k.x, k.y) for k in keypoints], dtype=np.float32).reshape(-1, 2) - 0.5
    desc = np.asarray(descriptors.data)
    if desc.dtype != np.uint8:  # float descriptors (other options): COLMAP's own uint8 conversion
        desc = np.clip(np.rint(desc * 512), 0, 255).astype(np.uint8)
    out = (xy, np.array(desc.reshape(-1, DESC_DIM), dtype=np.uint8))  # a writable copy
    scale = np.asarray([k.compute_scale() for k in keypoints], dtype=np.float32)
    return out + (scale,) * (int(with_strength) + int(with_scale))


def _empty(with_strength: bool, with_scale: bool = False) -> tuple[np.ndarray, ...]:
    out = (np.zeros((0, 2), np.float32), np.zeros((0, DESC_DIM), np.uint8))
    return out + (np.zeros(0, np.float32),) * (int(with_strength) + int(with_scale))


def extract(image: np.ndarray, contrast_threshold: float = 0.03, features: str = "opencv",
            colmap: dict | None = None, with_strength: bool = False,
            with_scale: bool = False) -> tuple[np.ndarray, ...]:
    """Run SIFT on an RGB image, as given (no resize): OpenCV's (``features="opencv"``, the CFGAN
    paper's) or COLMAP's (``"colmap"``, :func:`extract_colmap` with the ``colmap`` options).

    OpenCV: the image is converted with ``cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)`` and passed to
    ``cv2.SIFT_create(contrastThreshold=contrast_threshold).detectAndCompute(grey, None)``
    (other parameters default).

    Args:
        image: uint8 ``(H, W, 3)`` RGB in ``[0, 255]``.
        contrast_threshold: OpenCV SIFT contrast threshold (CFGAN: 0.03).
        features: ``"opencv"`` or ``"colmap"``.
        colmap: COLMAP extraction options overrides (``features="colmap"``).
        with_strength: also return each keypoint's strength, float32 ``(N,)``: OpenCV's detector
            response (``KeyPoint.response``); COLMAP's scale (:func:`extract_colmap`). What a
            system keeps when it shares its strongest keypoints (``defence.select=response``).
        with_scale: also each keypoint's scale, float32 ``(N,)``: the standard deviation (in
            the image's pixels) of the Gaussian it was detected at, the SIFT ``sigma``: OpenCV's
            ``KeyPoint.size / 2`` (OpenCV's size is the diameter ``2 sigma``), COLMAP's scale
            (``compute_scale``). What :mod:`~reconattack.data.sift.stats` compares.

    Returns:
        ``(xy, desc)``: ``xy`` float32 ``(N, 2)``, OpenCV keypoint coordinates ``(x, y)`` in
        pixels (``x`` along the width), in OpenCV's keypoint order; ``desc`` uint8
        ``(N, 128)`` in ``[0, 255]`` (OpenCV's float descriptors, rounded and clipped).
        ``N`` may be 0: shapes ``(0, 2)`` and ``(0, 128)``. Then the strength and the scale,
        each when asked for, in that order.
    """
    if features == "colmap":
        return extract_colmap(image, colmap, with_strength, with_scale)
    if features != "opencv":
        raise ConfigError(f"threat.features must be one of {FEATURES}, got {features!r}")
    grey = _grey(image)
    keypoints, desc = _detector(contrast_threshold).detectAndCompute(grey, None)
    if not keypoints or desc is None:
        return _empty(with_strength, with_scale)
    xy = np.asarray(cv2.KeyPoint_convert(keypoints), dtype=np.float32).reshape(-1, 2)
    desc = np.clip(np.rint(desc), 0, 255).astype(np.uint8)
    out: tuple[np.ndarray, ...] = (xy, desc)
    if with_strength:
        out += (np.asarray([k.response for k in keypoints], dtype=np.float32),)
    if with_scale:
        out += (np.asarray([k.size / 2 for k in keypoints], dtype=np.float32),)
    return out
