"""Market-1501 and VeRi-776 readers (data/reid.py) on fixture trees with the published file names."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from reconattack.data.images import DataNotFoundError
from reconattack.data.reid import MissingViewsWarning, missing, read_reid


def _img(path, h=128, w=64, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full((h, w, 3), value, np.uint8)
    img[: h // 2, :, 2] = 255  # red top half (BGR on disk)
    assert cv2.imwrite(str(path), img)


def market_tree(root):
    names = {"bounding_box_test": ["0002_c1s1_000451_03.jpg", "0000_c3s1_000151_01.jpg",
                                   "-1_c1s1_000401_03.jpg", "0007_c6s4_001234_02.jpg"],
             "query": ["0002_c2s1_000301_00.jpg", "0007_c1s1_000001_00.jpg"],
             "bounding_box_train": ["0003_c4s2_010203_01.jpg"]}
    for sub, files in names.items():
        for f in files:
            _img(root / sub / f)
    (root / "bounding_box_test" / "Thumbs.db").write_bytes(b"")
    return root


def veri_tree(root, views=True):
    names = {"image_test": ["0002_c002_00030600_0.jpg", "0010_c015_00012345_1.jpg"],
             "image_query": ["0002_c003_00084270_0.jpg"], "image_train": ["0001_c001_00016450_0.jpg"]}
    for sub, files in names.items():
        for f in files:
            _img(root / sub / f, 256, 256)
    if views:
        (root / "keypoint_test.txt").write_text(
            "image_test/0002_c002_00030600_0.jpg 1 2 3 4 5\nimage_test/0010_c015_00012345_1.jpg 9 9 7\n"
            "image_query/0002_c003_00084270_0.jpg 1 1 2\n")
        (root / "keypoint_train.txt").write_text("image_train/0001_c001_00016450_0.jpg 0 0 6\n")
    return root


def test_market1501_ids_cameras_junk_and_distractors(tmp_path):
    sets = read_reid(market_tree(tmp_path / "market1501"), "market1501")
    g = sets["gallery"]
    assert [f.name for f in g.files] == ["0000_c3s1_000151_01.jpg", "0002_c1s1_000451_03.jpg",
                                         "0007_c6s4_001234_02.jpg"]  # junk (-1) left out, Thumbs.db too
    assert g.ids.tolist() == [0, 2, 7] and g.cams.tolist() == [3, 1, 6] and g.views.tolist() == [0, 0, 0]
    assert sets["query"].ids.tolist() == [2, 7] and sets["query"].cams.tolist() == [2, 1]
    assert sets["train"].ids.tolist() == [3]
    img = g.load(0, (256, 128))  # non-square, resized, not cropped
    assert img.shape == (3, 256, 128) and img.min() >= -1 and img.max() <= 1
    assert img[0, :128].mean() > 0.9 and img[0, 128:].mean() < -0.9  # red on top: RGB order kept


def test_veri_views_from_the_keypoint_files(tmp_path):
    sets = read_reid(veri_tree(tmp_path / "veri"), "veri")
    assert sets["gallery"].ids.tolist() == [2, 10] and sets["gallery"].cams.tolist() == [2, 15]
    assert sets["gallery"].views.tolist() == [5, 7] and sets["query"].views.tolist() == [2]
    assert sets["train"].views.tolist() == [6]
    with pytest.warns(MissingViewsWarning, match="view 0"):
        plain = read_reid(veri_tree(tmp_path / "veri2", views=False), "veri")
    assert plain["gallery"].views.tolist() == [0, 0]


def test_missing_folders_and_bad_names_are_named(tmp_path):
    root = market_tree(tmp_path / "m")
    assert missing(root, "market1501") == []
    (root / "query").rename(root / "queries")
    assert missing(root, "market1501") == [f"{root / 'query'}: the query images of market1501"]
    with pytest.raises(DataNotFoundError, match="query"):
        read_reid(root, "market1501")
    (root / "queries").rename(root / "query")
    _img(root / "query" / "person_01.jpg")
    with pytest.raises(DataNotFoundError, match="person_01.jpg: not a market1501 file name"):
        read_reid(root, "market1501")
    assert "veri" in missing(tmp_path / "nothing", "veri")[0]


# ------------------------------------------------------------------- the AVIH threat's sources
def test_reid_gallery_draws_resizes_and_gives_zero_based_side_information(tmp_path):
    from reconattack.data.reid import ReidGallery
    from tests.helpers import make_reid_tree

    for layout in ("market1501", "veri"):
        root = make_reid_tree(tmp_path / layout, layout)
        source = ReidGallery(str(root), layout)
        assert source.missing() == []
        parts = source.load((32, 16), 12, seed=0)
        g = parts.gallery
        assert g.images.shape == (12, 32, 16, 3) and g.images.dtype == np.uint8  # resized, not cropped
        # read when indexed (image memory O(batch)): one image, a subset, all of them
        assert g.images[3].shape == (32, 16, 3) and g.images[np.array([1, 3])].shape == (2, 32, 16, 3)
        assert np.array_equal(np.asarray(g.images)[3], g.images[3])
        assert np.array_equal(np.asarray(g.subset(np.array([3])).images)[0], g.images[3])
        assert set(g.side) == {"cams", "views"} and g.side["cams"].min() >= 0 and g.side["cams"].max() <= 4
        assert -1 not in g.labels  # junk left out
        assert parts.queries.cams.tolist() == [5] * 4 and parts.queries.ids.tolist() == [1, 2, 3, 4]
        item = parts.queries[0]
        assert item["image"].shape == (3, 32, 16) and item["side"]["cams"] == 5 and item["label"] == 1
        again = source.load((32, 16), 12, seed=0)
        assert g.names == again.gallery.names and np.array_equal(g.images, again.gallery.images)
        assert g.names != source.load((32, 16), 12, seed=1).gallery.names
    views = ReidGallery(str(tmp_path / "veri"), "veri").load((32, 16), 20, seed=0).gallery.side["views"]
    assert views.max() > 0  # from keypoint_test.txt
    with pytest.raises(ValueError, match="gallery smaller than requested"):
        ReidGallery(str(tmp_path / "veri"), "veri").load((32, 16), 21, seed=0)
    assert "data.source" in ReidGallery(str(tmp_path / "none"), "veri").missing()[0]


def test_digit_persons_give_every_role_with_disjoint_identities():
    from reconattack.data.reid import DigitPersons, digit_persons

    images, ids, cams = digit_persons((32, 16), 6, 5, 3, seed=0)
    assert images.shape == (30, 32, 16, 3) and ids.tolist() == sorted(ids.tolist()) and set(cams) <= {0, 1, 2}
    parts = DigitPersons({"models": 10, "test": 8}, images_per_identity=8, cameras=4, auxiliary=20).load(
        (32, 16), 24, seed=0)
    train_ids, gallery_ids = set(parts.models_train.labels + 1), set(parts.gallery.labels)
    assert not train_ids & gallery_ids and len(parts.auxiliary) == 20
    assert parts.gallery.images.shape == (24, 32, 16, 3) and len(parts.queries) > 0
    assert set(parts.queries.ids) <= gallery_ids | set(range(11, 19))
    gallery_names = set(parts.gallery.names)
    assert len(gallery_names) == 24  # no image twice
    # a query's identity is in the test identities, its image is not in the gallery
    for i in range(len(parts.queries)):
        assert 10 < parts.queries.ids[i] <= 18
