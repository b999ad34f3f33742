import hashlib

import numpy as np
import pytest
import tensorflow as tf

from conftest import textured
from refinedet_tf import data
from refinedet_tf.data import example as ex, prepare, tfrecord
from refinedet_tf.data.label_map import LabelMap
from refinedet_tf.data.voc import VocReader


def test_voc_to_tfrecord_round_trip_is_identical(tiny_voc, tmp_path):
    """VOC -> prepare -> TFRecord -> read back equals VOC read directly (pixels and boxes)."""
    reader = VocReader(tiny_voc)
    result = prepare.prepare(reader, str(tmp_path / "t-%05d-of-%05d.tfrecord"), num_shards=2,
                             num_workers=2, progress=False)
    direct = {e["image_id"]: e for e in VocReader(tiny_voc)}
    back = list(tfrecord.TFRecordReader(result.shards))
    assert sorted(e["image_id"] for e in back) == ["a", "b", "c"]
    for e in back:
        ex.check_example(e, num_classes=3)
        d = direct[e["image_id"]]
        for key in ex.KEYS:
            np.testing.assert_array_equal(e[key], d[key], err_msg=key)
            assert np.asarray(e[key]).dtype == np.asarray(d[key]).dtype, key


def test_read_dataset_detects_tfrecord_glob_and_metadata_skips_decoding(tiny_voc, tmp_path):
    prepare.prepare(VocReader(tiny_voc), str(tmp_path / "s-%05d.tfrecord"), 2, progress=False)
    ds = data.read_dataset(str(tmp_path / "s-*.tfrecord"))
    assert ds.element_spec["image"].shape.as_list() == [None, None, 3]
    assert ds.element_spec["image_id"].dtype == tf.string
    reader = data.open_reader(str(tmp_path))  # a folder of shards
    # Shard k holds examples k, k + 2, ...: a, c in shard 0; b in shard 1.
    assert [m["image_id"] for m in reader.metadata] == ["a", "c", "b"]
    assert "image" not in reader.metadata[0]
    assert reader.report.boxes == 5


def _od_api_record(boxes, labels=None, texts=None, extra=None, drop=()):
    """A record as the TF Object Detection API writes it (no difficult/is_crowd by default)."""
    image = textured(20, 30)
    encoded = tf.io.encode_jpeg(image).numpy()
    boxes = np.array(boxes, np.float32).reshape(-1, 4)
    f = {
        "image/encoded": tfrecord._bytes([encoded]),
        "image/format": tfrecord._bytes([b"jpeg"]),
        "image/height": tfrecord._int64([20]),
        "image/width": tfrecord._int64([30]),
        "image/filename": tfrecord._bytes([b"dir/000123.jpg"]),
        "image/key/sha256": tfrecord._bytes([hashlib.sha256(encoded).hexdigest().encode()]),
    }
    for k, key in enumerate(tfrecord._BOX_KEYS):
        f[key] = tf.train.Feature(float_list=tf.train.FloatList(value=boxes[:, k]))
    if labels is not None:
        f["image/object/class/label"] = tfrecord._int64(labels)
    if texts is not None:
        f["image/object/class/text"] = tfrecord._bytes([t.encode() for t in texts])
    f.update(extra or {})
    for key in drop:
        del f[key]
    return tf.train.Example(features=tf.train.Features(feature=f)).SerializeToString()


def _write(path, records):
    with tf.io.TFRecordWriter(str(path)) as w:
        for r in records:
            w.write(r)
    return str(path)


def test_od_api_coco_record_maps_category_ids_through_the_label_map(tmp_path):
    path = _write(tmp_path / "coco.tfrecord", [
        _od_api_record([[0.1, 0.2, 0.5, 0.6], [0, 0, 1, 1]], labels=[90, 1], texts=["toothbrush", "person"])])
    label_map = LabelMap.from_names(["person", "bicycle", "toothbrush"], [1, 2, 90])
    (e,) = list(tfrecord.TFRecordReader(path, label_map))
    assert e["classes"].tolist() == [3, 1]
    assert e["image_id"] == "000123"  # no source_id: the filename stem
    assert e["difficult"].tolist() == [False, False] and e["is_crowd"].tolist() == [False, False]
    np.testing.assert_array_equal(e["boxes"][0], np.float32([0.1, 0.2, 0.5, 0.6]))
    assert e["image"].shape == (20, 30, 3)


def test_class_text_used_when_labels_absent(tmp_path):
    path = _write(tmp_path / "t.tfrecord", [_od_api_record([[0, 0, 1, 1]], texts=["bicycle"])])
    (e,) = list(tfrecord.TFRecordReader(path, LabelMap.from_names(["person", "bicycle"])))
    assert e["classes"].tolist() == [2]


def test_label_not_in_label_map_fails_naming_the_key(tmp_path):
    path = _write(tmp_path / "t.tfrecord", [_od_api_record([[0, 0, 1, 1]], labels=[55])])
    with pytest.raises(tf.errors.InvalidArgumentError, match="class/label .* not in the label map"):
        list(tfrecord.TFRecordReader(path, LabelMap.from_names(["person"])))


def test_empty_record_and_empty_shard_are_valid(tmp_path):
    empty_shard = _write(tmp_path / "e-1.tfrecord", [])
    _write(tmp_path / "e-0.tfrecord", [_od_api_record([], labels=[])])
    (e,) = list(tfrecord.TFRecordReader(str(tmp_path / "e-*.tfrecord"), keep_empty=True))
    assert e["boxes"].shape == (0, 4) and e["classes"].shape == (0,)
    assert empty_shard in tfrecord.list_files(str(tmp_path))
    # Training skips images without objects, as from a VOC folder, and counts them.
    train = tfrecord.TFRecordReader(str(tmp_path / "e-*.tfrecord"))
    assert list(train) == [] and train.report.count("empty") == 1 and len(train) == 0
    assert len(tfrecord.TFRecordReader(str(tmp_path / "e-*.tfrecord"), purpose="evaluate")) == 1


def test_serialization_is_deterministic(tiny_voc):
    reader = VocReader(tiny_voc)
    one = prepare.encode_record(reader.metadata[0], reader.label_map)[0]
    two = prepare.encode_record(reader.metadata[0], reader.label_map)[0]
    assert one == two
    parsed = tf.train.Example.FromString(one).features.feature
    assert parsed["image/object/class/text"].bytes_list.value == [b"cat", b"dog"]
    assert parsed["image/object/difficult"].int64_list.value == [0, 1]
    assert parsed["image/format"].bytes_list.value == [b"jpeg"]
