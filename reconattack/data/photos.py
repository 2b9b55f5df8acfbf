"""Real photos larger than a demo model's input, from files that ship inside installed packages
(SPEC §6: no download): scikit-image's ``skimage.data``, scikit-learn's sample images and
matplotlib's sample photo.

:func:`photo_crops` cuts square crops of ``side`` pixels from them at the photos' own resolution:
the crops of the training photos are the attacker's images (the data module resizes them to the
model's ``data.image_size``), the crops of other photos are the held-out test images, never seen
in training (the source fixes that split: ``fixed_split``). A stored-features row of ``size:
native`` then extracts SIFT from a test crop at its ``side`` pixels, as a database of photos larger
than the model's input holds it (``conf/experiment/demo_photos.yaml``).

There are 19 photos: too few for a model to learn a category; what the crops measure is how the
stored rows compare with the model's own size, not how well photos are reconstructed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from reconattack.data.images import ArraySource, DataNotFoundError
from reconattack.errors import ConfigError

__all__ = ["PHOTOS", "PhotoCrops", "packaged_photo", "photo_crops"]


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from skimage import data

        return getattr(data, name)()
    return load


def _sklearn(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return load_sample_image(name)
    return load


def _grace_hopper() -> np.ndarray:
    import matplotlib.cbook
    from matplotlib.image import imread

    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        return imread(f, format="jpg")


#: the photos, each a loader of an (H, W[, 3]) uint8 array at its own resolution (at least 300 px
#: a side): scikit-image's photographs, micrographs, astronomy and texture photos (not its
#: drawings, text or synthetic images), scikit-learn's two and matplotlib's one
PHOTOS: dict[str, Callable[[], np.ndarray]] = {
    **{n: _skimage(n) for n in ("astronaut", "brick", "camera", "cell", "chelsea", "clock", "coffee", "coins",
                                "grass", "gravel", "hubble_deep_field", "immunohistochemistry", "moon",
                                "retina", "rocket")},
    "motorcycle": lambda: _skimage("stereo_motorcycle")()[0],  # the left image of the stereo pair
    "china": _sklearn("china.jpg"), "flower": _sklearn("flower.jpg"), "grace_hopper": _grace_hopper,
}


def packaged_photo(name: str) -> np.ndarray:
    """Photo ``name`` of :data:`PHOTOS` as uint8 (H, W, 3) RGB (grey ones replicated)."""
    if name not in PHOTOS:
        raise ConfigError(f"no packaged photo {name!r}; the photos are {', '.join(PHOTOS)}")
    try:
        image = np.asarray(PHOTOS[name]())
    except (ImportError, OSError, ValueError) as exc:
        raise DataNotFoundError(f"the packaged photo {name!r} cannot be read ({type(exc).__name__}: {exc}); it ships "
                                "with scikit-image, scikit-learn or matplotlib") from None
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    return np.ascontiguousarray(image[..., :3], dtype=np.uint8)


class PhotoCrops(ArraySource):
    """Crops of photos with the split they belong to (:meth:`fixed_split`)."""

    def __init__(self, images: np.ndarray, names: Sequence[str], split: dict[str, list[str]]) -> None:
        super().__init__(images, names)
        self.split = {part: list(v) for part, v in split.items()}

    def fixed_split(self) -> dict[str, list[str]]:
        """``{"train": [...], "val": [], "test": [...]}``: the test crops come from the test photos alone."""
        return {part: list(v) for part, v in self.split.items()}


def photo_crops(side: int = 256, train_crops: int = 32, test_crops: int = 5,
                test_photos: Sequence[str] = ("astronaut", "chelsea", "coffee", "flower"), seed: int = 0) -> PhotoCrops:
    """Square crops of ``side`` px of the packaged photos (:data:`PHOTOS`) at their own
    resolution, at positions drawn with ``numpy.random.default_rng(seed)`` (photo by photo, in
    :data:`PHOTOS`' order): ``train_crops`` of each photo not in ``test_photos`` (the training
    split) and ``test_crops`` of each test photo (the test split). Names ``<photo>_<k>``."""
    unknown = [p for p in test_photos if p not in PHOTOS]
    if unknown:
        raise ConfigError(f"photo_crops: no packaged photo {unknown[0]!r}; the photos are {', '.join(PHOTOS)}")
    rng = np.random.default_rng(seed)
    images, names, split = [], [], {"train": [], "val": [], "test": []}
    for photo in PHOTOS:
        image = packaged_photo(photo)
        h, w = image.shape[:2]
        if min(h, w) < side:
            raise ConfigError(f"photo_crops: side {side} is larger than the photo {photo!r} ({w}x{h})")
        part, n = ("test", test_crops) if photo in test_photos else ("train", train_crops)
        for k in range(n):
            y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            images.append(image[y:y + side, x:x + side])
            names.append(f"{photo}_{k:03d}")
            split[part].append(names[-1])
    return PhotoCrops(np.stack(images), names, split)
