import os
import shutil

import numpy as np
import pytest

from conftest import TINY_EXPECTED, TINY_ITEMS, TINY_SIZES, coco_json_from_voc_items
from refinedet_tf import data
from refinedet_tf.data.coco import CocoReader
from refinedet_tf.data.voc import VocReader


@pytest.fixture
def tiny_coco(tiny_voc, tmp_path):
    """The tiny VOC data as COCO: images in coco/images/, categories cat=3, dog=7."""
    root = tmp_path / "coco"
    shutil.copytree(os.path.join(tiny_voc, "JPEGImages"), root / "images")
    os.makedirs(root / "annotations")
    return coco_json_from_voc_items(root / "annotations" / "instances_images.json", TINY_ITEMS, TINY_SIZES)


def test_coco_gives_the_same_examples_as_voc(tiny_voc, tiny_coco):
    voc = {e["image_id"]: e for e in VocReader(tiny_voc)}
    coco = list(CocoReader(tiny_coco))
    assert [e["image_id"] for e in coco] == ["10", "11", "12"]  # str(image id), JSON order
    for e, voc_id in zip(coco, ["a", "b", "c"]):
        boxes, classes, _ = TINY_EXPECTED[voc_id]
        np.testing.assert_array_equal(e["boxes"], np.array(boxes, np.float32))
        np.testing.assert_array_equal(e["boxes"], voc[voc_id]["boxes"])  # bit-identical
        np.testing.assert_array_equal(e["classes"], classes)  # category ids 3, 7 -> 1, 2
        np.testing.assert_array_equal(e["image"], voc[voc_id]["image"])
        assert not e["difficult"].any()


def test_image_dir_is_found_next_to_annotations_folder(tiny_coco):
    reader = CocoReader(tiny_coco)
    assert reader.image_dir.endswith(os.path.join("coco", "images"))
    assert reader.label_map.names == ("background", "cat", "dog")
    assert reader.label_map.dataset_ids == (0, 3, 7)


def test_iscrowd_kept_and_label_map_file_used(tiny_voc, tmp_path):
    def crowd(d):
        d["annotations"][0]["iscrowd"] = 1
    path = coco_json_from_voc_items(tmp_path / "c.json", TINY_ITEMS, TINY_SIZES, extra=crowd)
    shutil.copytree(os.path.join(tiny_voc, "JPEGImages"), tmp_path / "imgs")
    label_map = tmp_path / "map.pbtxt"
    label_map.write_text('item { id: 7 name: "dog" } item { id: 3 name: "cat" }')
    reader = CocoReader(path, image_dir=str(tmp_path / "imgs"), label_map=str(label_map))
    first = reader.metadata[0]
    assert first["is_crowd"].tolist() == [True, False]
    assert first["classes"].tolist() == [2, 1]  # dog is 1 in this map


def test_empty_images_skipped_unless_kept(tiny_voc, tmp_path):
    def no_annotations_for_b(d):
        d["annotations"] = [a for a in d["annotations"] if a["image_id"] != 11]
    path = coco_json_from_voc_items(tmp_path / "c.json", TINY_ITEMS, TINY_SIZES, extra=no_annotations_for_b)
    image_dir = os.path.join(tiny_voc, "JPEGImages")
    reader = CocoReader(path, image_dir=image_dir)
    assert reader.image_ids == ["10", "12"]
    assert reader.report.count("empty") == 1
    kept = CocoReader(path, image_dir=image_dir, keep_empty=True)
    assert kept.image_ids == ["10", "11", "12"]
    assert kept.metadata[1]["boxes"].shape == (0, 4)


def test_read_dataset_detects_coco(tiny_coco):
    got = list(data.read_dataset(tiny_coco).as_numpy_iterator())
    assert [g["image_id"] for g in got] == [b"10", b"11", b"12"]
    assert got[1]["classes"].tolist() == [2]
