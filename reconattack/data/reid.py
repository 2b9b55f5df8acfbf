"""Re-identification datasets as published (SPEC §3.5; the AVIH attack paper's Appendix A):
Market-1501 (persons) and VeRi-776 (vehicles), read from their own folder layouts and file names.

- **Market-1501** (``<root>/``): ``bounding_box_test/`` (the gallery), ``query/``,
  ``bounding_box_train/``; files ``PPPP_cCsS_FFFFFF_NN.jpg`` (person, camera 1-6, sequence,
  frame, box). Identity ``-1`` (junk boxes) is ignored, as the benchmark does; ``0000``
  (distractors) stays in the gallery as a negative.
- **VeRi-776** (``<root>/``): ``image_test/`` (the gallery), ``image_query/``,
  ``image_train/``; files ``VVVV_cCCC_TTTTTTTT_N.jpg`` (vehicle, camera 1-20, time, index).
  Views 0-7 come from ``keypoint_train.txt`` / ``keypoint_test.txt`` in the root when present
  (TransReID reads them: per line an image path first and the view last; the query images
  are test images), else view 0 with a warning.

:func:`read_reid` returns the splits as :class:`ReidSet` (file names, identities, cameras, views);
images are read on demand (:meth:`ReidSet.load`), resized to the model's (H, W) — re-id crops
are not square and are not cropped square.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from reconattack.data.images import IMAGE_EXTENSIONS, DataNotFoundError

#: split -> sub-folder, per dataset layout
LAYOUTS = {
    "market1501": {"gallery": "bounding_box_test", "query": "query", "train": "bounding_box_train"},
    "veri": {"gallery": "image_test", "query": "image_query", "train": "image_train"},
}
_NAMES = {
    "market1501": re.compile(r"^(-?\d+)_c(\d)s\d+_\d+_\d+"),
    "veri": re.compile(r"^(\d+)_c(\d+)_"),
}
#: the view file of each VeRi split (query images are test images)
_VIEW_FILES = {"gallery": "keypoint_test.txt", "query": "keypoint_test.txt", "train": "keypoint_train.txt"}


class MissingViewsWarning(UserWarning):
    """VeRi without its keypoint files: every image gets view 0."""


@dataclass
class ReidSet:
    """One split of a re-identification dataset.

    Attributes:
        files: the image files, in name order.
        ids: int64 (N,) identities (0 = distractor; junk is left out).
        cams: int64 (N,) cameras, as the file names number them (from 1).
        views: int64 (N,) viewpoints (VeRi; 0 when unknown or for persons).
    """

    files: list[Path]
    ids: np.ndarray
    cams: np.ndarray
    views: np.ndarray

    def __len__(self) -> int:
        return len(self.files)

    def load(self, i: int, size: tuple[int, int]) -> torch.Tensor:
        """Image ``i`` resized (bilinear, not cropped) to ``size`` = (H, W): float32 (3, H, W) RGB
        in [-1, 1]."""
        import cv2

        img = cv2.imread(str(self.files[i]), cv2.IMREAD_COLOR)
        if img is None:
            raise DataNotFoundError(f"{self.files[i]} is not a readable image")
        h, w = int(size[0]), int(size[1])
        if img.shape[:2] != (h, w):
            img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
        return torch.from_numpy(np.ascontiguousarray(img[:, :, ::-1])).permute(2, 0, 1).float() / 127.5 - 1


def missing(root: str | Path, layout: str) -> list[str]:
    """What of ``layout``'s folders is missing under ``root`` (one line each; empty: all there)."""
    root = Path(root)
    if not root.is_dir():
        return [f"{root}: the {layout} dataset folder ({', '.join(LAYOUTS[layout].values())})"]
    return [f"{root / sub}: the {split} images of {layout}" for split, sub in LAYOUTS[layout].items()
            if not (root / sub).is_dir()]


def _views(root: Path, split: str) -> dict[str, int] | None:
    path = root / _VIEW_FILES[split]
    if not path.is_file():
        return None
    out = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2:
            out[Path(parts[0]).name] = int(float(parts[-1]))
    return out


def read_reid(root: str | Path, layout: str) -> dict[str, ReidSet]:
    """The splits ``gallery``, ``query``, ``train`` of the dataset at ``root`` in ``layout``
    (``market1501`` | ``veri``).

    Raises:
        DataNotFoundError: a folder is missing, a split has no image, or a file name does not
            follow the layout (naming the file).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown re-identification layout {layout!r}; known: {sorted(LAYOUTS)}")
    root = Path(root)
    gone = missing(root, layout)
    if gone:
        raise DataNotFoundError("missing re-identification data:\n  " + "\n  ".join(gone))
    pattern = _NAMES[layout]
    out = {}
    warned = False
    for split, sub in LAYOUTS[layout].items():
        files, ids, cams = [], [], []
        for path in sorted((root / sub).iterdir()):
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                continue  # Thumbs.db and the like
            m = pattern.match(path.name)
            if m is None:
                raise DataNotFoundError(f"{path}: not a {layout} file name (expected "
                                        f"{'PPPP_cCsS_FFFFFF_NN.jpg' if layout == 'market1501' else 'VVVV_cCCC_TTTTTTTT_N.jpg'})")
            pid, cam = int(m.group(1)), int(m.group(2))
            if pid < 0:
                continue  # junk: not part of the benchmark
            files.append(path)
            ids.append(pid)
            cams.append(cam)
        if not files:
            raise DataNotFoundError(f"{root / sub}: no {layout} images")
        views = np.zeros(len(files), dtype=np.int64)
        if layout == "veri":
            table = _views(root, split)
            if table is None:
                if not warned:
                    warnings.warn(f"{root}: no {_VIEW_FILES[split]}; every {split} image gets view 0 "
                                  f"(TransReID's view embeddings then see one view)", MissingViewsWarning,
                                  stacklevel=2)
                    warned = True
            else:
                views = np.array([table.get(f.name, 0) for f in files], dtype=np.int64)
        out[split] = ReidSet(files, np.array(ids, dtype=np.int64), np.array(cams, dtype=np.int64), views)
    return out
