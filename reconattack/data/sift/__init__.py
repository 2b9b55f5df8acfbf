"""SIFT features as the attacks' input (SPEC §2.1, §9), a module per job:

- :mod:`~reconattack.data.sift.extraction` — SIFT of an image: OpenCV's (the CFGAN paper's) and
  COLMAP's (pycolmap), sparse keypoints and uint8 descriptors (:func:`extract`);
- :mod:`~reconattack.data.sift.cache` — those kept on disk, keyed by the image content and the
  extraction settings (:class:`SiftCache`, entry format 3);
- :mod:`~reconattack.data.sift.maps` — the dense maps: where each keypoint lands, the collision
  rules (CFGAN's, SLI's moves), 2x2 compression, descriptor or occupancy channels
  (:func:`build_maps`, :func:`to_map`, :func:`grid_xy`);
- :mod:`~reconattack.data.sift.mapper` — the one path from an image's keypoints to the model's
  input map with the run's settings and defence (:class:`SiftMapper`), used by training, the
  stored-features rows and ``python -m reconattack.invert``.

The data module every SIFT attack reads (images, splits, augmentation, batches) is
:mod:`reconattack.data.sift_data`.
"""
