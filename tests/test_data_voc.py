import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import TINY_EXPECTED, TINY_SIZES
from refinedet_tf import data
from refinedet_tf.data import box_conventions, example as ex
from refinedet_tf.data.report import BadExampleError
from refinedet_tf.data.voc import VocReader


def _by_id(examples):
    return {e["image_id"]: e for e in examples}


def test_voc_reader_returns_hand_known_boxes(tiny_voc):
    reader = VocReader(tiny_voc)
    examples = _by_id(reader)
    assert sorted(examples) == ["a", "b", "c"]
    for image_id, (boxes, classes, difficult) in TINY_EXPECTED.items():
        e = examples[image_id]
        ex.check_example(e, num_classes=3)
        np.testing.assert_array_equal(e["boxes"], np.array(boxes, np.float32))
        np.testing.assert_array_equal(e["classes"], classes)
        np.testing.assert_array_equal(e["difficult"], difficult)
        assert not e["is_crowd"].any()
        assert (e["height"], e["width"]) == TINY_SIZES[image_id]
        assert e["image"].shape == (*TINY_SIZES[image_id], 3)
    assert reader.report.images == 3 and reader.report.boxes == 5
    assert reader.report.per_class == {"cat": 3, "dog": 2}


def test_split_keeps_file_order_and_metadata_matches_examples(tiny_voc):
    reader = VocReader(tiny_voc, split="train")
    assert reader.image_ids == ["a", "b"]
    for meta, e in zip(reader.metadata, reader):
        for key in ex.METADATA_KEYS:
            np.testing.assert_array_equal(meta[key], e[key])
        assert meta["image_path"].endswith(f"JPEGImages/{meta['image_id']}.jpg")


def test_read_dataset_detects_voc_and_matches_python_reader(tiny_voc):
    python = list(VocReader(tiny_voc, split="train"))
    ds = data.read_dataset(tiny_voc, split="train")
    assert ds.element_spec["image"].shape.as_list() == [None, None, 3]
    assert ds.element_spec["boxes"].dtype == tf.float32
    got = list(ds.as_numpy_iterator())
    assert len(got) == 2
    for a, b in zip(python, got):
        assert b["image_id"].decode() == a["image_id"]
        for key in ("image", "boxes", "classes", "difficult", "is_crowd", "height", "width"):
            np.testing.assert_array_equal(a[key], b[key])
            assert np.asarray(a[key]).dtype == b[key].dtype, key


def test_unknown_split_lists_the_available_ones(tiny_voc):
    with pytest.raises(BadExampleError, match=r"split file not found; splits in this folder: \['train', 'val"):
        VocReader(tiny_voc, split="test")


def test_missing_label_map_is_an_error(tiny_voc):
    os.remove(os.path.join(tiny_voc, "labelmap.txt"))
    with pytest.raises(BadExampleError, match="no label map given"):
        VocReader(tiny_voc)
    reader = VocReader(tiny_voc, label_map=data.LabelMap.from_names(["dog", "cat"]))
    assert _by_id(reader)["b"]["classes"].tolist() == [1]


def test_voc_converters_invert_each_other():
    rng = np.random.default_rng(0)
    corners = np.sort(rng.integers(1, 300, (50, 2, 2)), axis=1).astype(np.float64)  # [N, min/max, y/x]
    pixels = corners.reshape(50, 4)  # ymin, xmin, ymax, xmax
    normalized = box_conventions.voc_pixels_to_normalized(pixels, 400, 300)
    assert normalized.dtype == np.float32
    np.testing.assert_allclose(box_conventions.normalized_to_voc_pixels(normalized, 400, 300), pixels, atol=1e-3)
    # Whole image, VOC style: [1, 1, H, W] <-> [0, 0, 1, 1].
    np.testing.assert_array_equal(box_conventions.voc_pixels_to_normalized([1, 1, 400, 300], 400, 300), [0, 0, 1, 1])
    np.testing.assert_array_equal(box_conventions.normalized_to_voc_pixels([0, 0, 1, 1], 400, 300), [1, 1, 400, 300])


def test_coco_converters_invert_each_other():
    xywh = np.array([[10.5, 20.0, 30.0, 40.25], [0, 0, 640, 480]])
    yxyx = box_conventions.coco_xywh_to_normalized(xywh, 480, 640)
    np.testing.assert_allclose(yxyx[1], [0, 0, 1, 1])
    np.testing.assert_allclose(yxyx[0], [20 / 480, 10.5 / 640, 60.25 / 480, 40.5 / 640], rtol=1e-6)
    np.testing.assert_allclose(box_conventions.normalized_to_coco_xywh(yxyx, 480, 640), xywh, atol=1e-4)


def test_check_example_says_what_is_off(tiny_voc):
    e = next(iter(VocReader(tiny_voc)))
    bad = dict(e, classes=e["classes"].astype(np.int64))
    with pytest.raises(ValueError, match="classes must be int32"):
        ex.check_example(bad)
    with pytest.raises(ValueError, match="missing keys \\['is_crowd'\\]"):
        ex.check_example({k: v for k, v in e.items() if k != "is_crowd"})
